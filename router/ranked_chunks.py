"""The sorted and random accesses (tiers.base.RankedAccess) of warm, cold and the archive through the
shared results cache (router/cache.py), so a dashboard that asks the same range again — its whole
answer missed because the hot part moved — reads those tiers' closed pieces from Redis or memory,
not PostgreSQL, Parquet files or S3.

Keys carry the tier's name and its data version of every piece (Tier.data_versions,
tiers/versions.py: every insert, refresh, export, archive, import and delete that changes what a
piece reads changes it, in the same transaction or rename), read once when the access opens (one
query), so an entry is never stale:
  (CHUNK_TAG, tier, tenant, stream, by, pieces with versions, "sorted", n of every call so far) ->
      the call's (key, value) table, the frontier and exhausted after it (schema metadata);
  (CHUNK_TAG, tier, tenant, stream, by, pieces with versions, "exact") -> (key, value, value_lo) of
      every key looked up so far (value, value_lo: the key's exact partial as a pair, from the
      tier's exact_parts) (merged on write; a lost race only costs a later miss).
The wrapped access opens lazily, at the first miss; it then replays the earlier calls (their
answers are the cached ones, so its position matches). Off when the results cache is disabled,
the tier lacks the "data_versions" capability or its versions cannot be read (then the plain
access answers).

Measured (bench/topk_ta.py moving phase: the cache on, 20 new hot events before every ask, 1M
events, 50k keys): a 365-day top-100 (cold + warm + hot) p50 52-62 ms with cold's accesses cached
here, 77-142 ms with warm's alone (cold's value-sorted files were read on every ask).
"""
from __future__ import annotations

import json
import logging
import math
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from tiers.base import RankedAccess

log = logging.getLogger("tierstore.router.ranked_chunks")
CHUNK_TAG = "ranked_chunks/4"  # /3: frontiers clamped at 0 per list (negative values); /4: the tier in the key
TIERS = ("warm", "cold", "archive")


def wrap(planner, tier, name: str, tenant: str, stream: str, pieces: Sequence, by: str,
         open_: Callable[[], RankedAccess]) -> RankedAccess:
    """open_() wrapped in CachedAccess when `name` is cached here and the results cache is on;
    else open_(). Raises what open_ raises."""
    cache = planner.cache
    if name not in TIERS or not cache.enabled or not pieces or not (
            hasattr(tier, "supports") and tier.supports("data_versions")):
        return open_()
    try:
        versions = tier.data_versions(tenant, stream, list(pieces))
    except Exception:  # the plain access reports an outage
        log.warning("%s tier: data versions failed; ranked access uncached", name, exc_info=True)
        return open_()
    if len(versions) != len(pieces) or any(v is None for v in versions):
        return open_()
    prefix = (CHUNK_TAG, name, tenant, stream, by,
              tuple((p.granularity.name, p.range.start, p.range.end, v) for p, v in zip(pieces, versions)))
    return CachedAccess(cache, prefix, open_)


class CachedAccess(RankedAccess):
    """A RankedAccess answered from `cache` under `prefix` (module doc), opening open_() only on a miss."""

    def __init__(self, cache, prefix: tuple, open_: Callable[[], RankedAccess]):
        self._cache, self._prefix, self._open = cache, prefix, open_
        self._inner: RankedAccess | None = None
        self._calls: list[int] = []
        self._frontier, self._exhausted = float("inf"), False
        self.min_value = 0.0
        meta = cache.get_many([(*prefix, "min_value")])[0]
        if meta is None:
            self._ensure()
            self.min_value = self._inner.min_value
            cache.put_many([((*prefix, "min_value"), pa.table({"v": [self.min_value]}))])
        else:
            self.min_value = float(meta["v"][0].as_py())

    def _ensure(self) -> RankedAccess:
        if self._inner is None:
            self._inner = self._open()
            for n in self._calls:  # replay: the position must match the cached calls
                self._inner.sorted_access(n)
        return self._inner

    def sorted_access(self, n: int) -> tuple[list[str], np.ndarray]:
        key = (*self._prefix, "sorted", *self._calls, n)
        if self._inner is None:
            hit = self._cache.get_many([key])[0]
            if hit is not None:
                self._calls.append(n)
                meta = json.loads(hit.schema.metadata[b"chunk"])
                self._frontier, self._exhausted = float(meta["frontier"]), bool(meta["exhausted"])
                return hit["key"].to_pylist(), hit["value"].to_numpy().astype(np.float64)
        inner = self._ensure()  # replays the calls before this one
        self._calls.append(n)
        keys, values = inner.sorted_access(n)
        self._frontier, self._exhausted = inner.frontier(), inner.exhausted
        meta = {"frontier": self._frontier, "exhausted": self._exhausted}
        table = pa.table({"key": pa.array(keys, pa.string()), "value": pa.array(np.asarray(values, np.float64))})
        self._cache.put_many([(key, table.replace_schema_metadata({"chunk": json.dumps(meta)}))])
        return keys, values

    def frontier(self) -> float:
        return self._frontier

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def exact(self, keys: Sequence[str]) -> np.ndarray:
        return self.exact_parts(keys)[0]

    def exact_parts(self, keys: Sequence[str]) -> np.ndarray:
        """(2, n): the wrapped access's exact_parts as one pair per key (hi, lo), cached as columns
        value and value_lo. Warm, cold and the archive give at most two rows (a pair); more rows
        are folded exactly (math.fsum: hi the correctly rounded sum, lo what it leaves out)."""
        if not len(keys):
            return np.zeros((2, 0))
        key = (*self._prefix, "exact")
        hit = self._cache.get_many([key])[0]
        known: dict[str, tuple[float, float]] = {}
        if hit is not None and "value_lo" in hit.column_names:
            known = dict(zip(hit["key"].to_pylist(), zip(hit["value"].to_pylist(), hit["value_lo"].to_pylist())))
        missing = [k for k in dict.fromkeys(keys) if k not in known]
        if missing:
            parts = np.atleast_2d(self._ensure().exact_parts(missing))
            if len(parts) > 2:
                parts = _as_pairs(parts)
            lo = parts[1] if len(parts) > 1 else np.zeros(len(missing))
            known.update(zip(missing, zip(parts[0].tolist(), lo.tolist())))
            self._cache.put_many([(key, pa.table({"key": pa.array(list(known), pa.string()),
                                                  "value": pa.array([v for v, _ in known.values()], pa.float64()),
                                                  "value_lo": pa.array([w for _, w in known.values()], pa.float64())}))])
        return np.array([known[k] for k in keys], np.float64).T.reshape(2, len(keys))

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


def _as_pairs(parts: np.ndarray) -> np.ndarray:
    """(m, n) rows whose column sums are the exact values -> (2, n): hi = math.fsum(column), lo =
    math.fsum(column - hi) (hi + lo is the column's exact sum to within lo's rounding)."""
    hi = np.array([math.fsum(col) for col in parts.T], np.float64)
    lo = np.array([math.fsum([*col, -h]) for col, h in zip(parts.T, hi)], np.float64)
    return np.vstack([hi, lo])
