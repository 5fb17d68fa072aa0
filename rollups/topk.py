"""Ranking over merged per-key partials: exact top-K and the rank of a key.

Ordering everywhere: value descending, then key ascending (by UTF-8 bytes, which equals code
point order, and equals Redis' lexicographic order). Values that differ only by float rounding
are equal (API.md): after the exact sort, neighbours within REL_TOL of each other (relative) form
one group, ordered by key — so 0.7 + 0.1 and 0.8 tie whatever order the sums were taken in.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rollups.partials import value_column


@dataclass(frozen=True)
class Ranked:
    rank: int
    key: str
    value: float


#: values whose difference is at most this share of the larger magnitude are equal for ordering
REL_TOL = 1e-12


def order(t: pa.Table, by: str) -> pa.Table:
    """Table of (key, value) sorted by value desc, key asc; keys with no events are dropped."""
    t = t.filter(pc.greater(t["count"], 0))
    return ordered(pa.table({"key": t["key"], "value": value_column(t, by)}))


def ordered(ranked: pa.Table) -> pa.Table:
    """A (key string, value float64) table in ranking order: value descending, values within
    REL_TOL of their neighbour equal (one group), then key ascending."""
    ranked = ranked.sort_by([("value", "descending"), ("key", "ascending")])
    v = ranked["value"].to_numpy()
    if len(v) < 2:
        return ranked
    gap = v[:-1] - v[1:]
    apart = gap > REL_TOL * np.maximum(np.abs(v[:-1]), np.abs(v[1:]))
    if not np.any((gap > 0) & ~apart):  # no near-ties: the exact order is the order
        return ranked
    group = np.concatenate([[0], np.cumsum(apart)])
    return ranked.append_column("_group", pa.array(group)).sort_by(
        [("_group", "ascending"), ("key", "ascending")]).drop_columns(["_group"])


def rank_order(keys: list[str], values) -> list[int]:
    """Indices of (keys, values) in ranking order (see `ordered`); for small candidate sets."""
    t = pa.table({"key": pa.array(keys, pa.string()), "value": pa.array(np.asarray(values, np.float64)),
                  "i": pa.array(np.arange(len(keys)))})
    return ordered(t)["i"].to_pylist()


def top_k(t: pa.Table, k: int, by: str) -> list[Ranked]:
    """Exact top-k of a merged per-key partial table."""
    head = order(t, by).slice(0, k)
    return [Ranked(i + 1, key, value) for i, (key, value) in
            enumerate(zip(head["key"].to_pylist(), head["value"].to_pylist()))]


@dataclass(frozen=True)
class RankResult:
    rank: int | None
    value: float | None
    total_keys: int
    around: list[Ranked]


def rank_of(t: pa.Table, key: str, by: str, around: int = 0) -> RankResult:
    """1-based rank of `key` (None when it has no events in the range) and `around` neighbours each side."""
    ordered = order(t, by)
    n = ordered.num_rows
    idx = pc.index(ordered["key"], key).as_py()
    if idx < 0:
        return RankResult(None, None, n, [])
    lo, hi = max(0, idx - around), min(n, idx + around + 1)
    window = ordered.slice(lo, hi - lo)
    neighbours = [Ranked(lo + i + 1, k, v) for i, (k, v) in
                  enumerate(zip(window["key"].to_pylist(), window["value"].to_pylist()))]
    return RankResult(idx + 1, ordered["value"][idx].as_py(), n, neighbours)
