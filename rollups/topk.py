"""Ranking over merged per-key partials: exact top-K and the rank of a key.

Ordering everywhere: value descending, then key ascending (by UTF-8 bytes, which equals code
point order, and equals Redis' lexicographic order).
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from rollups.partials import value_column


@dataclass(frozen=True)
class Ranked:
    rank: int
    key: str
    value: float


def order(t: pa.Table, by: str) -> pa.Table:
    """Table of (key, value) sorted by value desc, key asc; keys with no events are dropped."""
    t = t.filter(pc.greater(t["count"], 0))
    ranked = pa.table({"key": t["key"], "value": value_column(t, by)})
    return ranked.sort_by([("value", "descending"), ("key", "ascending")])


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
