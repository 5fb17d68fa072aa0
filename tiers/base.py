"""The contract every tier implements.

A tier stores events for the part of the time line the catalog gives it, and answers with partial
aggregates (see rollups.partials) so the router can merge tiers exactly. All times are epoch
milliseconds, UTC (`rollups.timeutil.TimeRange` gives timezone-aware datetimes when needed).
Every method translates driver errors into `TierUnavailable(self.name)`; nothing else escapes
but the errors documented here.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Iterator, Literal, Sequence

import pyarrow as pa

from rollups.cover import Piece
from rollups.timeutil import Granularity, TimeRange

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


class Tier(ABC):
    """One storage tier (hot, warm, cold, archive) behind one interface."""

    #: "hot" | "warm" | "cold" | "archive" — the name in API meta and errors.
    name: ClassVar[str]

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

    @abstractmethod
    def read_raw(self, tenant: str, stream: str, rng: TimeRange) -> Iterator[pa.RecordBatch]:
        """The raw events of `stream` in `rng`, as record batches of EVENT_SCHEMA (ordered by ts).

        Tiers that keep no raw events (hot) raise NotImplementedError.
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
