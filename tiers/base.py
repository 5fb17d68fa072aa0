"""The contract every tier implements.

A tier stores events for the part of the time line the catalog gives it, and answers with partial
aggregates (see rollups.partials) so the router can merge tiers exactly. All times are epoch
milliseconds, UTC (`rollups.timeutil.TimeRange` gives timezone-aware datetimes when needed).
Every method translates driver errors into `TierUnavailable(self.name)` (tiers.errors.translate);
nothing else escapes but the errors documented here.

Optional capabilities (`CAPABILITIES`): a tier lists those it implements in `capabilities`; the
router asks `supports(name)` and never calls one a tier lacks. The defaults raise NotSupported.

Ranking across tiers (`ranked_access`, every tier): sorted and random access to the tier's
per-key partials, which the router's threshold algorithm (rollups.threshold) combines over all
tiers without shipping every key.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Hashable, Iterator, Literal, Sequence, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rollups.cover import Piece
from rollups.errors import TierstoreError
from rollups.timeutil import Granularity, TimeRange
from rollups.topk import RankResult, Ranked

#: Columns of an event batch: stream (string), key (string), ts (int64 epoch ms),
#: value (float64), id (string, nullable). One batch belongs to one tenant.
EVENT_SCHEMA = pa.schema([
    ("stream", pa.string()),
    ("key", pa.string()),
    ("ts", pa.int64()),
    ("value", pa.float64()),
    ("id", pa.string()),
])

Group = Literal["key", "bucket"]

#: Columns of Tier.key_values: one row per key with events, its partial count or sum.
KEY_VALUES_SCHEMA = pa.schema([("key", pa.string()), ("value", pa.float64())])

#: What a ranking orders by (the API's `by`); every tier with top_k / rank accepts both.
RankBy = Literal["count", "sum"]
RANK_BY: tuple[str, ...] = ("count", "sum")

Capability = Literal["top_k", "rank", "data_versions", "stats"]
CAPABILITIES: tuple[str, ...] = ("top_k", "rank", "data_versions", "stats")


class NotSupported(TierstoreError, NotImplementedError):
    """A tier was asked for an optional capability it does not have (a caller's bug: 500)."""

    def __init__(self, tier: str, capability: str):
        super().__init__(f"The {tier} tier does not support {capability}.", [{"tier": tier, "capability": capability}])
        self.tier = tier
        self.capability = capability


class TierStats(TypedDict):
    """What a tier holds: `rows` raw events (an estimate where counting is costly), `bytes` on disk."""

    rows: int
    bytes: int


class RankedAccess(ABC):
    """Sorted and random access to one tier's per-key partial `by` (count or sum) over a set of
    pieces — the two accesses of Fagin's threshold algorithm (Fagin, Lotem, Naor: "Optimal
    aggregation algorithms for middleware", PODS 2001), which the router runs over every tier.

    The tier's partial of a key is split over one or more sorted lists (a bucket, a
    materialised union, a value-sorted file, the small edges aggregated whole): it is the sum of
    the key's values in the lists (0 where a list does not hold it). Every list holds each key
    with events in its part exactly once, best first. Keys are strings here: tiers with a key
    dictionary (warm, cold, archive) translate only the keys read or asked for, never all.
    Raises TierUnavailable(tier) when the service is down; close() releases what it holds.
    """

    #: a lower bound of every value of every list (and of `exact`); rank by sorted access
    #: (router/rank_ta.py) needs >= 0, the threshold algorithm does not (frontier() clamps)
    min_value: float = 0.0

    @abstractmethod
    def sorted_access(self, n: int) -> tuple[list[str], np.ndarray]:
        """The next (up to) n entries of each list not yet exhausted, concatenated: keys and their
        values in that list (float64). Within one list values never increase from call to call;
        after enough calls every entry of every list has been returned once. A tier may return a
        key's entries of one call summed into one (warm does): sums over calls and bounds hold."""

    @abstractmethod
    def frontier(self) -> float:
        """The sum over the lists of max(b, 0), b a bound on the values not read yet in that list
        (0 for an exhausted list): a list not holding a key adds 0 to its partial, so whatever
        the signs of the values, no key the sorted accesses have not returned totals more than
        this, and a key returned totals at most its values read plus this. Never increases."""

    @property
    @abstractmethod
    def exhausted(self) -> bool:
        """Whether every list has been read to its end."""

    @abstractmethod
    def exact(self, keys: Sequence[str]) -> np.ndarray:
        """Random access: the tier's exact partial of each key (float64, same order; 0.0 for a key
        without events in the pieces) — equal to value_column(aggregate(pieces, "key"), by)."""

    def exact_parts(self, keys: Sequence[str]) -> np.ndarray:
        """Random access for summing across tiers: float64 rows of shape (m, len(keys)) whose
        exact sum per column (math.fsum) is the key's partial. Default: exact() as one row; a
        tier that keeps sums as exact pairs (warm, postgres mode: tiers/warm_pairs.py) returns
        (hi, lo), so a total over tiers such as 1e16 + 1 (warm) + 1 (hot) stays 1e16 + 2."""
        return np.asarray(self.exact(keys), np.float64).reshape(1, -1)

    def close(self) -> None:
        """Release scratch state (default: nothing)."""


class Tier(ABC):
    """One storage tier (hot, warm, cold, archive) behind one interface."""

    #: "hot" | "warm" | "cold" | "archive" — the name in API meta and errors.
    name: ClassVar[str]

    #: The optional capabilities (CAPABILITIES) this tier implements.
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def supports(self, capability: Capability) -> bool:
        """Whether this tier implements the optional `capability` (one of CAPABILITIES)."""
        return capability in self.capabilities

    @property
    @abstractmethod
    def granularities(self) -> Sequence[Granularity]:
        """The granularities `aggregate` can read, RAW included where raw events are kept.

        The router builds each segment's cover from these.
        """

    @abstractmethod
    def write(self, tenant: str, events: pa.Table) -> int:
        """Store a batch of events (EVENT_SCHEMA) exactly once; return how many were stored.

        Makes them visible to `aggregate` and `read_raw` at every granularity before returning
        (tiers whose rollups are refreshed by a job document what a test must call). Raises
        TierUnavailable when the backing service is down; a failed call stores nothing.
        """

    @abstractmethod
    def aggregate(self, tenant: str, stream: str, pieces: Sequence[Piece], group: Group,
                  key: str | None = None) -> pa.Table:
        """Partial aggregates over the union of `pieces`, each read at its granularity.

        group="key": one row per key with events in the pieces (columns key, count, sum, min, max).
        group="bucket": one row per non-empty bucket of each piece's granularity, `bucket` being
        the bucket start (for RAW pieces, the event's ts floored to the minute).
        `key` restricts to that one key. Rows may repeat a group value (the caller merges with
        rollups.partials.merge_partials). Unknown streams give an empty table.
        """

    def aggregate_each(self, tenant: str, stream: str, pieces: Sequence[Piece],
                       key: str | None = None) -> list[pa.Table]:
        """Per-key partials of each piece on its own: a list parallel to `pieces`, each what
        `aggregate(tenant, stream, [piece], "key", key)` returns (which this default calls once per
        piece). For callers that weight pieces apart (trending: hundreds of slices); a tier that
        reads many pieces in one statement overrides it (warm). Raises as `aggregate`."""
        return [self.aggregate(tenant, stream, [p], "key", key) for p in pieces]

    @abstractmethod
    def read_raw(self, tenant: str, stream: str, rng: TimeRange) -> Iterator[pa.RecordBatch]:
        """The raw events of `stream` in `rng`, as record batches of EVENT_SCHEMA (ordered by ts).

        Exactly the events with rng.start <= ts < rng.end (epoch ms, not rounded to any bucket).
        Tiers that keep no raw events (hot) raise NotSupported (a NotImplementedError).
        """

    @abstractmethod
    def delete_range(self, tenant: str | None, stream: str | None, rng: TimeRange) -> int:
        """Delete everything this tier holds in `rng` (None = every tenant / stream).

        Used by migrations after the grace period and by tests to reset. Returns rows (or
        aggregate members) deleted where the tier can tell, else 0.
        """

    @abstractmethod
    def streams(self, tenant: str) -> list[str]:
        """Streams this tier holds any data for."""

    @abstractmethod
    def health(self) -> None:
        """Return if the backing service answers; raise TierUnavailable(self.name) if not."""

    @abstractmethod
    def close(self) -> None:
        """Release clients and connections. Idempotent."""

    def ranked_access(self, tenant: str, stream: str, pieces: Sequence[Piece], by: RankBy) -> RankedAccess:
        """Sorted and random access (RankedAccess) to the per-key partial `by` ("count" or "sum")
        over the union of `pieces`; an unknown stream has no entries.

        The default reads `aggregate(..., "key")` once and serves both accesses from it in memory
        (correct for every tier; tiers override it to read only the heads of value-sorted data).
        Raises ValueError for another `by`, TierUnavailable(self.name) when the service is down.
        """
        from tiers.ranked_access import TableAccess

        return TableAccess.of(self.aggregate(tenant, stream, pieces, "key"), by)

    def key_values(self, tenant: str, stream: str, pieces: Sequence[Piece], by: RankBy) -> pa.Table:
        """The tier's per-key partial `by` ("count" or "sum") over the union of `pieces`: a table
        (key string, value float64), one row per key with events in the pieces (any order) —
        equal to value_column(merge_partials([aggregate(..., "key")]), by) on the rows with count > 0.
        Reads only the key and that value (the router's vectorised rank merge, router/rank_merge.py).
        A tier keeping exact sums as pairs (the hot tier: rollups.pairsum) may append a column
        `value_lo`, the values' low parts (value + value_lo is the exact sum): a merge adds them as
        more terms (router/rank_merge.py, router/rank_pieces.py); `aggregate` likewise `sum_lo`.

        The default reads `aggregate(..., "key")` (every column); tiers override it to read only the
        key and value columns. An unknown stream gives an empty table. Raises ValueError for another
        `by`, TierUnavailable(self.name) when the service is down.
        """
        from tiers.ranked_access import check_by
        from rollups.partials import merge_partials, value_column

        check_by(by)
        t = merge_partials([self.aggregate(tenant, stream, pieces, "key")], "key")
        t = t.filter(pc.greater(t["count"], 0))
        return pa.table({"key": t["key"], "value": value_column(t, by).cast(pa.float64())}, schema=KEY_VALUES_SCHEMA)

    def distinct_keys(self, tenant: str, stream: str, pieces: Sequence[Piece]) -> pa.Array:
        """The distinct keys (strings, any order, each once) with events in the union of `pieces`:
        the key column of aggregate(..., "key") on its rows with count > 0 (the rank's total_keys).

        The default is key_values(..., "count")'s key column; tiers override it to read the key
        column only. An unknown stream gives an empty array. Raises TierUnavailable(self.name)
        when the service is down.
        """
        return self.key_values(tenant, stream, pieces, "count")["key"].combine_chunks()

    # ---- optional capabilities: override, and list the name in `capabilities` -------------------

    def top_k(self, tenant: str, stream: str, pieces: Sequence[Piece], k: int, by: RankBy, *,
              stats: dict | None = None) -> list[Ranked]:
        """Capability "top_k": the exact k best keys over the union of `pieces`, value descending then
        key ascending — equal to rollups.topk.top_k over the merged `aggregate(..., "key")`.

        `by`: "count" or "sum" (RANK_BY: what the API accepts) in every tier; hot, warm and archive
        also take the other rollups.partials.AGGS (avg, min, max), cold does not. A value the tier
        does not take raises ValueError. `stats`, when given, receives
        {"method": "tput" | "merge", "lists": n} where the tier can tell (cold, archive).
        An unknown stream gives []. Raises TierUnavailable(self.name) when the service is down.
        """
        raise NotSupported(self.name, "top_k")

    def rank(self, tenant: str, stream: str, pieces: Sequence[Piece], key: str, by: RankBy,
             around: int = 0) -> RankResult:
        """Capability "rank": the 1-based rank and value of `key` over the union of `pieces`, the total
        number of keys and `around` neighbours each side — equal to rollups.topk.rank_of.

        `by` as for top_k. A key without events gives RankResult(None, None, total, []).
        Raises TierUnavailable(self.name) when the service is down.
        """
        raise NotSupported(self.name, "rank")

    def data_versions(self, tenant: str, stream: str, pieces: Sequence[Piece]) -> list[Hashable]:
        """Capability "data_versions": one hashable version per piece (same order) that changes with
        every change to what `aggregate` returns for it (the router's results-cache key,
        router/cache.py; tiers/versions.py has the argument). Per stream for cold and archive
        (every piece the same version), per piece for warm and hot.

        Raises TierUnavailable(self.name) when the service is down (the router reads uncached).
        """
        raise NotSupported(self.name, "data_versions")

    def stats(self) -> TierStats:
        """Capability "stats": raw events and bytes this tier holds, cheaply (GET /v1/tiers).

        Raises TierUnavailable(self.name) when the service is down.
        """
        raise NotSupported(self.name, "stats")
