"""Sorted and random access to the warm tier's partials (tiers.base.RankedAccess) for the
router's threshold algorithm.

Lists: every 1h and 1d bucket of the pieces, read best first through the rollups' value index
(stream_id, bucket, count|sum DESC, key_id) — one statement per granularity and round reads the
next n rows of every bucket still open (LATERAL ... LIMIT n OFFSET its position) — plus one
list of the edges (1m and raw pieces), small, aggregated whole and held in memory. Random
access: the keys' exact partials over every piece, probing the per-key indexes (key ids from the
shared dictionary; keys warm never saw are 0 without a query).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import pyarrow as pa
from sqlalchemy import BigInteger, Integer, bindparam, cast, func, literal_column, select
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION

from rollups.cover import Piece
from rollups.timeutil import G1D, G1H
from tiers import warm_queries as q
from tiers.base import RankedAccess
from tiers.errors import translate
from tiers.ranked_access import ArrayList
from tiers.warm_sql import Statement, epoch_ms, rollup

_HEADS = (G1H, G1D)


@functools.lru_cache(maxsize=16)
def heads_statement(g: str, by: str) -> Statement:
    """(bucket ms, key_id, v) of the next n rows (binds n) of each bucket starts[i] (epoch ms) after
    offsets[i] rows, by `by` descending then key id; rows grouped by bucket, best first."""
    r = rollup[g]
    b = func.unnest(bindparam("starts", type_=ARRAY(BigInteger)), bindparam("offsets", type_=ARRAY(BigInteger))) \
        .table_valued("ms", "off").render_derived(name="b")
    head = (select(r.c.key_id, r.c[by].label("v"))
            .where(r.c.stream_id == bindparam("sid", type_=Integer), r.c.bucket == epoch_ms(b.c.ms))
            .order_by(r.c[by].desc(), r.c.key_id).limit(bindparam("n", type_=Integer)).offset(b.c.off)
            .lateral("h"))
    return Statement.of(select(b.c.ms, head.c.key_id, cast(head.c.v, DOUBLE_PRECISION))
                        .select_from(b.join(head, literal_column("true")))
                        .order_by(b.c.ms, head.c.v.desc(), head.c.key_id))


@functools.lru_cache(maxsize=1024)
def exact_statement(shape: q.Shape, by: str) -> Statement:
    """(key_id, v) of the keys key_ids over the pieces of `shape` (binds sid, lo<i>/hi<i>, key_ids)."""
    a = q._per_key(shape, "probe")
    return Statement.of(select(a.c.key_id, q._rank_value(a, by)))


class _Bucket:
    __slots__ = ("start", "pos", "last", "exhausted")

    def __init__(self, start: int):
        self.start, self.pos, self.last, self.exhausted = start, 0, math.inf, False

    def bound(self) -> float:
        return 0.0 if self.exhausted else self.last


class WarmRankedAccess(RankedAccess):
    """RankedAccess over one stream's warm pieces (`warm`: tiers.warm.WarmTier, `sid` its stream id)."""

    def __init__(self, warm, sid: int, pieces: Sequence[Piece], by: str, names):
        self._warm, self._sid, self._by = warm, sid, by
        self._names = names  # key id -> key string for the entries read (cached per process)
        self._shape, self._params = q.shape_of(pieces)
        self._heads = {g.name: [_Bucket(s) for p in pieces if p.granularity == g for s in g.buckets(p.range)]
                       for g in _HEADS}
        edges = [p for p in pieces if p.granularity not in _HEADS and not p.range.empty]
        with translate("warm"), warm.pool.connection() as conn:
            # the least event value: when it is negative, so may be sums, by any amount
            negative = by == "sum" and warm._range_min(conn, sid, pieces) < 0
            self.min_value = -math.inf if negative else 0.0
            rows = []
            if edges:
                shape, params = q.shape_of(edges)
                rows = q.aggregate(shape, "key", False).run(conn, {**params, "sid": sid}).fetchall()
        names = pa.array([r[0] for r in rows], pa.string())
        values = np.array([float(r[1] if by == "count" else r[2]) for r in rows], np.float64)
        self._edges = ArrayList(names, values)

    def sorted_access(self, n: int) -> tuple[list[str], np.ndarray]:
        out_keys, out_values = [], []
        if not self._edges.exhausted:
            k, v = self._edges.read(n)
            out_keys += k
            out_values.append(v)
        with translate("warm"), self._warm.pool.connection() as conn:
            for g, buckets in self._heads.items():
                todo = [b for b in buckets if not b.exhausted]
                if not todo:
                    continue
                rows = heads_statement(g, self._by).run(conn, {
                    "sid": self._sid, "n": n, "starts": [b.start for b in todo],
                    "offsets": [b.pos for b in todo]}).fetchall()
                names = self._names(np.array([r[1] for r in rows], np.int64))
                by_start: dict[int, list] = {}
                for (ms, _, v), key in zip(rows, names):
                    by_start.setdefault(int(ms), []).append((key, v))
                for b in todo:
                    got = by_start.get(b.start, [])
                    b.pos += len(got)
                    b.exhausted = len(got) < n
                    if got:
                        b.last = float(got[-1][1])
                    out_keys += [key for key, _ in got]
                    out_values.append(np.array([v for _, v in got], np.float64))
        return out_keys, (np.concatenate(out_values) if out_values else np.zeros(0))

    def frontier(self) -> float:
        return math.fsum([self._edges.bound(), *(b.bound() for bs in self._heads.values() for b in bs)])

    @property
    def exhausted(self) -> bool:
        return self._edges.exhausted and all(b.exhausted for bs in self._heads.values() for b in bs)

    def exact(self, wanted: Sequence[str]) -> np.ndarray:
        out = np.zeros(len(wanted))
        if not wanted or not self._shape:
            return out
        with translate("warm"):
            ids = self._warm.keys.key_ids(self._sid, wanted, create=False)
            if not ids:
                return out
            with self._warm.pool.connection() as conn:
                rows = exact_statement(self._shape, self._by).run(
                    conn, {**self._params, "sid": self._sid, "key_ids": list(ids.values())}).fetchall()
        by_id = {key_id: float(v) for key_id, v in rows}
        return np.array([by_id.get(ids.get(k), 0.0) for k in wanted])
