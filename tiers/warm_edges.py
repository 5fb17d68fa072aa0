"""Warm's edge list for the threshold algorithm (tiers/warm_ranked.py): the (key, value) of every
key over the 1m and raw pieces at a range's edges, each edge piece aggregated once per data
version and kept in process.

The edge next to the hot boundary is 1m buckets up to b_warm: with dense data (500k keys, ~2.8k
events a minute) it holds ~100k keys, and aggregating it cost 240-410 ms on every 7 d .. 2 y
top-100 (bench/query.py at 7M events). That piece stays the same while b_warm stays; its data
version (tiers/versions.py: every insert, refresh and delete that changes what it reads changes
it in the same transaction) is read BEFORE its rows, so a cached entry is at least as new as its
key and a stale one is never looked up again. The moving edge at a range's start is aggregated
each time, as before (one piece, small unless dense).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from rollups.cover import Piece
from tiers import versions
from tiers import warm_queries as q
from tiers.byte_lru import ByteLRU
from tiers.warm_pairs import needs_pairs

#: bytes of edge lists kept per warm tier (tiers/byte_lru.py; keys' bytes + 8 per value + 64 per entry)
MAX_BYTES = 64 << 20


class _Edge:
    """One edge piece's list: keys (Arrow strings) and values (float64), unsorted."""

    __slots__ = ("keys", "values", "nbytes")

    def __init__(self, keys: pa.Array, values: np.ndarray) -> None:
        self.keys, self.values = keys, values
        self.nbytes = keys.nbytes + values.nbytes + 64


def edge_list(warm, conn, sid: int, edges: Sequence[Piece], by: str) -> tuple[pa.Array, np.ndarray]:
    """(keys, values): every key's count (by=count) or sum (by=sum) over the edge pieces, one row a
    key, unsorted. Read on `conn` (a pooled psycopg connection); raises what psycopg raises."""
    cache = getattr(warm, "_edge_cache", None)
    if cache is None:
        cache = warm._edge_cache = ByteLRU(MAX_BYTES)
    found = versions.warm_versions(conn, sid, edges)
    parts = []
    for piece, version in zip(edges, found):
        key = (sid, piece.granularity.name, piece.range.start, piece.range.end, by, version)
        hit = cache.get(key)
        if hit is None:
            shape, params = q.shape_of([piece])
            exact = needs_pairs(warm, conn, sid)
            rows = q.aggregate(shape, "key", False, exact).run(conn, {**params, "sid": sid}).fetchall()
            hit = _Edge(pa.array([r[0] for r in rows], pa.string()),
                        np.array([float(r[1] if by == "count" else r[2]) for r in rows], np.float64))
            if hit.nbytes <= MAX_BYTES // 4:  # one dense edge never fills the cache
                cache.put(key, hit)
        parts.append((hit.keys, hit.values))
    if len(parts) == 1:
        return parts[0]
    keys = pa.concat_arrays([k for k, _ in parts]) if parts else pa.array([], pa.string())
    values = np.concatenate([v for _, v in parts]) if parts else np.zeros(0)
    if len(keys) == 0:
        return keys, values
    t = pa.table({"key": keys, "v": values}).group_by("key").aggregate([("v", "sum")])
    return t["key"].combine_chunks(), t["v_sum"].to_numpy()


__all__ = ["edge_list"]
