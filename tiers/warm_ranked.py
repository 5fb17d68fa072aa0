"""Sorted and random access to the warm tier's partials (tiers.base.RankedAccess) for the
router's threshold algorithm.

Lists: every 1h and 1d bucket of the pieces, read best first through the rollups' value index
(stream_id, bucket, count|sum DESC, key_id), plus one list of the edges (1m and raw pieces),
held in memory: each edge piece aggregated once per data version (tiers/warm_edges.py). One statement per round reads the next n rows of
every 1h and 1d bucket still open (LATERAL ... LIMIT n OFFSET its position) and returns them
already folded: each key's sum over the buckets of the rows read (one row per key, not one per
bucket row) and, per bucket, how many rows it gave and the last (least) value — so a round is
one round trip and the Python side is vectorised (numpy), whatever the number of buckets.
Random access: the keys' exact partials over every piece, probing the per-key indexes (key ids
from the shared dictionary; keys warm never saw are 0 without a query). Everything runs on one
pooled connection, held until close().

Measured (bench/query.py data: 2M events, 100k keys; warm holds 28 days, ~87k 1d rows, ~20k
keys; load average 7-10 on 2 cores; old/new interleaved, medians): warm's part of a 30-day
top-100 (open, 2 TA rounds, 2 lookups) 82 -> 53 ms by count, 104 -> 77 ms by sum — the former
one statement per granularity and one Python row per bucket row spent two thirds of a round in
Python; what is left is PostgreSQL's. One list per piece instead (a GROUP BY key over the whole
cover, read through a server-side cursor) was tried and is slower: its first chunk costs 46-80 ms
(the aggregate of every rollup row of the range), more than both rounds of bucket heads.
"""
from __future__ import annotations

import functools
import math
from contextlib import ExitStack
from typing import Sequence

import numpy as np
import pyarrow as pa
from sqlalchemy import BigInteger, Integer, bindparam, cast, func, literal, literal_column, select, union_all
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION

from rollups.cover import Piece
from rollups.timeutil import G1D, G1H
from tiers import warm_queries as q
from tiers.base import RankedAccess
from tiers.errors import translate
from tiers.ranked_access import ArrayList
from tiers.warm_edges import edge_list
from tiers.warm_pairs import needs_pairs
from tiers.warm_sql import Statement, epoch_ms, rollup

_HEADS = (G1H, G1D)


def _heads(g: str, by: str):
    """(i, key_id, v) of the next n rows of each bucket starts_<g>[j] after offsets_<g>[j] rows,
    i = index_<g>[j] (the bucket's index in the access)."""
    r = rollup[g]
    b = func.unnest(bindparam(f"starts_{g}", type_=ARRAY(BigInteger)),
                    bindparam(f"offsets_{g}", type_=ARRAY(BigInteger)),
                    bindparam(f"index_{g}", type_=ARRAY(Integer))) \
        .table_valued("ms", "off", "i").render_derived(name=f"b_{g}")
    head = (select(r.c.key_id, r.c[by].label("v"))
            .where(r.c.stream_id == bindparam("sid", type_=Integer), r.c.bucket == epoch_ms(b.c.ms))
            .order_by(r.c[by].desc(), r.c.key_id).limit(bindparam("n", type_=Integer)).offset(b.c.off)
            .lateral(f"h_{g}"))
    return select(b.c.i, head.c.key_id, cast(head.c.v, DOUBLE_PRECISION).label("v")) \
        .select_from(b.join(head, literal_column("true")))


@functools.lru_cache(maxsize=4)
def round_statement(by: str) -> Statement:
    """One round over the 1h and 1d buckets (binds sid, n, starts_/offsets_/index_ 1h and 1d):
    rows (0, key_id, sum of its values read, NULL) per key and (1, i, rows read, least value)
    per bucket that gave rows."""
    heads = union_all(*(_heads(g.name, by) for g in _HEADS)).cte("heads")
    per_key = select(literal(0, Integer).label("kind"), heads.c.key_id.label("id"),
                     func.sum(heads.c.v).label("a"), cast(literal_column("NULL"), DOUBLE_PRECISION).label("b")) \
        .group_by(heads.c.key_id)
    per_bucket = select(literal(1, Integer), cast(heads.c.i, BigInteger), cast(func.count(), DOUBLE_PRECISION),
                        func.min(heads.c.v)).group_by(heads.c.i)
    return Statement.of(union_all(per_key, per_bucket))


@functools.lru_cache(maxsize=1024)
def exact_statement(shape: q.Shape, by: str, exact: bool = False) -> Statement:
    """(key_id, v, v_lo) of the keys key_ids over the pieces of `shape` (binds sid, lo<i>/hi<i>,
    key_ids); `exact`: sums as exact pairs (postgres mode): v the float nearest each key's exact
    sum and v_lo the rest (v + v_lo exact); else v_lo 0."""
    pairs = exact and by == "sum"
    a = q._per_key(shape, "probe", pairs)
    lo = a.c.sl if pairs else literal(0.0, DOUBLE_PRECISION)
    return Statement.of(select(a.c.key_id, q._rank_value(a, by), cast(lo, DOUBLE_PRECISION)))


class WarmRankedAccess(RankedAccess):
    """RankedAccess over one stream's warm pieces (`warm`: tiers.warm.WarmTier, `sid` its stream id,
    `names(ids: np.ndarray[int64]) -> list[str]` the key strings of key ids).

    sorted_access(n) returns each key at most once per call: its values in the rows read from
    every list in that call, summed (the sum over calls is still the key's partial, and no
    returned value exceeds the frontier before the call). Raises TierUnavailable("warm")."""

    def __init__(self, warm, sid: int, pieces: Sequence[Piece], by: str, names):
        self._warm, self._sid, self._by, self._names = warm, sid, by, names
        self._shape, self._params = q.shape_of(pieces)
        starts = [(g.name, s) for g in _HEADS for p in pieces if p.granularity == g for s in g.buckets(p.range)]
        self._gran = np.array([g for g, _ in starts], dtype=object)
        self._starts = np.array([s for _, s in starts], np.int64)
        self._pos = np.zeros(len(starts), np.int64)
        self._last = np.full(len(starts), math.inf)
        self._done = np.zeros(len(starts), bool)
        self._stack = ExitStack()
        edges = [p for p in pieces if p.granularity not in _HEADS and not p.range.empty]
        try:
            with translate("warm"):
                self._conn = self._stack.enter_context(warm.pool.connection())
                # the least event value: when it is negative, so may be sums, by any amount
                negative = by == "sum" and warm._range_min(self._conn, sid, pieces) < 0
                self.min_value = -math.inf if negative else 0.0
                names, values = pa.array([], pa.string()), np.zeros(0)
                if edges:  # each edge piece aggregated once per data version (tiers/warm_edges.py)
                    names, values = edge_list(warm, self._conn, sid, edges, by)
        except BaseException:
            self.close()
            raise
        self._edges = ArrayList(names, values)

    def sorted_access(self, n: int) -> tuple[list[str], np.ndarray]:
        out_keys: list[str] = []
        out_values = [np.zeros(0)]
        if not self._edges.exhausted:
            k, v = self._edges.read(n)
            out_keys += k
            out_values.append(v)
        todo = np.flatnonzero(~self._done)
        if len(todo) and n > 0:
            params = {"sid": self._sid, "n": n}
            for g in _HEADS:
                j = todo[self._gran[todo] == g.name]
                params.update({f"starts_{g.name}": self._starts[j].tolist(), f"offsets_{g.name}": self._pos[j].tolist(),
                               f"index_{g.name}": j.tolist()})
            with translate("warm"):
                rows = round_statement(self._by).run(self._conn, params).fetchall()
                kind = np.fromiter((r[0] for r in rows), np.int8, len(rows))
                ids = np.fromiter((r[1] for r in rows), np.int64, len(rows))
                a = np.fromiter((r[2] for r in rows), np.float64, len(rows))
                keyed = kind == 0
                out_keys += self._names(ids[keyed])
            out_values.append(a[keyed])
            got = np.zeros(len(self._starts), np.int64)
            least = np.full(len(self._starts), math.inf)
            b = ~keyed
            got[ids[b]] = a[b].astype(np.int64)
            least[ids[b]] = np.fromiter((r[3] for r, is_b in zip(rows, b) if is_b), np.float64, int(b.sum()))
            self._pos[todo] += got[todo]
            self._done[todo] = got[todo] < n
            read = todo[got[todo] > 0]
            self._last[read] = least[read]
        return out_keys, np.concatenate(out_values)

    def frontier(self) -> float:
        return math.fsum([max(self._edges.bound(), 0.0), *np.maximum(self._last[~self._done], 0.0).tolist()])

    @property
    def exhausted(self) -> bool:
        return self._edges.exhausted and bool(self._done.all())

    def exact(self, wanted: Sequence[str]) -> np.ndarray:
        return self.exact_parts(wanted)[0]

    def exact_parts(self, wanted: Sequence[str]) -> np.ndarray:
        """(2, n): each key's partial as the float nearest it and the rest (0 unless a sum kept
        as an exact pair, tiers/warm_pairs.py), so the router's fsum over tiers stays exact."""
        out = np.zeros((2, len(wanted)))
        if not wanted or not self._shape:
            return out
        with translate("warm"):
            ids = self._warm.keys.key_ids(self._sid, wanted, create=False)
            if not ids:
                return out
            exact = needs_pairs(self._warm, self._conn, self._sid)
            rows = exact_statement(self._shape, self._by, exact).run(
                self._conn, {**self._params, "sid": self._sid, "key_ids": list(ids.values())}).fetchall()
        by_id = {key_id: (float(v), float(v_lo or 0.0)) for key_id, v, v_lo in rows}
        for j, k in enumerate(wanted):
            hit = by_id.get(ids.get(k))
            if hit is not None:
                out[:, j] = hit
        return out

    def close(self) -> None:
        """Give the connection back to the pool."""
        self._stack.close()
