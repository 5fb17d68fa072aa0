"""Exact sums in the warm tier's SQL (postgres mode; issue 10 item 5): pairs hi + lo as the hot
tier's (rollups/pairsum.py), so 1e15, 0.1, -1e15 sent apart sums to 0.1, not 0.125.

Every stored sum is a pair: `sum` (hi, the float nearest the exact sum of the raw values) and
`sum_lo` (what hi could not hold) in warm_delta, rollup_1m/1h/1d and total_1m/1h/1d
(sql/migrations/warm_postgres/0104_exact_sums.sql). Inserts compute each delta's pair in numpy
(rollups.pairsum.grouped_pair_sum); folds add two pairs with TwoSum written out as plain float8
expressions here (`pair_add`: a few dozen float operations per row, no function call, never
float8::numeric, which rounds to 15 digits); sums over many rows (`pair_sum`) take
 - a plain sum() of the rows on the grid (sum_lo 0, |hi| < 2**32, a multiple of 2**-8: their sums
   are exact in any order while a group's sum of magnitudes stays below 2**45, the same assumption
   as the hot tier's grid, tiers/hot_sums.py);
 - the aggregates tierstore_pair_hi / _lo (one plpgsql TwoSum per row but a group's first) of the others,
and add the two results as pairs. Readers hand the router `sum` = hi and `sum_lo` = lo
(rollups.partials.merge_partials and router/series_values.py keep the low parts).

Reads sum as pairs only for streams marked off the grid (`needs_pairs`: an insert holding a value
off the grid marks its stream in warm_offgrid_streams, in its transaction); every sum of any other
stream is exact as a plain float sum, so integer-valued streams run the statements they ran before
(plus one indexed lookup, ~0.1 ms). Measured (PostgreSQL 15, 2 shared cores under load, 200k keys
x 3 hour buckets in rollup_1h, best of 3 medians of 5; plain -> pairs): per-key aggregate 770 ->
1750 ms, top_k(100) 460 -> 1490 ms, key_values 400 -> 1190 ms — the plpgsql transition costs ~1 us
a row. Refresh of 600k decimal events (200k keys, new buckets / folded into existing ones): 21 -> 24 s
and 31 -> 45 s (delta temp tables and stream totals pair-summed); integer streams within noise.
Timescale mode keeps one float per sum (its continuous aggregates have no sum_lo): WarmTier.exact_sums
is False there and statements read as before.
"""
from __future__ import annotations

import numpy as np
import psycopg
from sqlalchemy import Column, Integer, MetaData, Table, and_, bindparam, exists, func, literal_column, not_, select
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION, array, insert
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement

from rollups.pairsum import off_grid
from tiers.warm_sql import Statement

#: rows whose sum is a multiple of 1/GRID_SCALE below GRID_MAX in magnitude (and sum_lo 0) sum plainly
GRID_SCALE = 256.0
GRID_MAX = 2.0 ** 32


def _f(x) -> ColumnElement:
    """A float8 SQL constant (repr: exact) for a Python number; expressions as they are."""
    return x if isinstance(x, ColumnElement) else literal_column(f"CAST({float(x)!r} AS float8)", DOUBLE_PRECISION)


ZERO = _f(0.0)


class _Paren(ColumnElement):
    """A float8 expression in parentheses, always: SQLAlchemy drops them around b + c in
    a + (b + c) (+ being associative for it), and float addition is not."""
    inherit_cache = False
    type = DOUBLE_PRECISION()

    def __init__(self, element: ColumnElement):
        self.element = element


@compiles(_Paren)
def _compile_paren(element, compiler, **kw) -> str:
    return "(" + compiler.process(element.element, **kw) + ")"


def _p(x: ColumnElement) -> ColumnElement:
    return x if isinstance(x, _Paren) else _Paren(x)


def two_sum(a, b) -> tuple[ColumnElement, ColumnElement]:
    """(s, e): s = fl(a + b) and a + b = s + e exactly (Knuth), as float8 SQL expressions."""
    a, b = _p(_f(a)), _p(_f(b))
    s = _p(a + b)
    bb = _p(s - a)
    return s, _p(_p(a - _p(s - bb)) + _p(b - bb))


def pair_add(h1, l1, h2, l2) -> tuple[ColumnElement, ColumnElement]:
    """(h1 + l1) + (h2 + l2) as a normalised pair (hi, lo) of SQL expressions (rollups.pairsum.pair_add)."""
    s, e = two_sum(h1, h2)
    return two_sum(s, _p(_p(_p(_f(l1)) + _p(_f(l2))) + e))


def fold_set(t, new) -> dict:
    """ON CONFLICT's SET folding the row `new` (excluded) into table t's (a rollup or total):
    counts add, sums add as pairs (pair_add), min and max combine."""
    hi, lo = pair_add(t.c["sum"], t.c["sum_lo"], new["sum"], new["sum_lo"])
    return {"count": t.c["count"] + new["count"], "sum": hi, "sum_lo": lo,
            "min": func.least(t.c["min"], new["min"]), "max": func.greatest(t.c["max"], new["max"])}


def on_grid(s, lo) -> ColumnElement:
    """Rows a plain sum() adds exactly (see the module docstring)."""
    scaled = (_f(s) * _f(GRID_SCALE)).self_group()
    return and_(_f(lo) == ZERO, func.abs(s) < _f(GRID_MAX), scaled == func.round(scaled))


def pair_sum(s, lo=None) -> tuple[ColumnElement, ColumnElement]:
    """Aggregate expressions (hi, lo) of the exact sum of the pairs (s, lo) (lo None: plain values)
    of a group: a plain sum of the rows on the grid, tierstore_pair_hi / _lo of the others, added."""
    lo = ZERO if lo is None else lo
    grid = on_grid(s, lo)
    fast = func.coalesce(func.sum(s).filter(grid), ZERO)
    # two aggregates sharing one transition state (sql/migrations/common/0097_pair_sum_aggregates.sql)
    state = array([_f(1.0), _p(_f(s)), ZERO, _p(_f(lo)), ZERO, ZERO], type_=DOUBLE_PRECISION)
    slow_hi = func.coalesce(func.tierstore_pair_hi(state, type_=DOUBLE_PRECISION).filter(not_(grid)), ZERO)
    slow_lo = func.coalesce(func.tierstore_pair_lo(state, type_=DOUBLE_PRECISION).filter(not_(grid)), ZERO)
    return pair_add(fast, ZERO, slow_hi, slow_lo)


def pair_sum_or_plain(s, lo, exact: bool) -> tuple[ColumnElement, ColumnElement]:
    """pair_sum when `exact` (postgres mode), else (sum(s), 0) as before (timescale mode)."""
    return pair_sum(s, lo) if exact else (func.sum(s), ZERO)


# ---- which streams need pairs -----------------------------------------------------------------

#: streams that ever received a value off the grid (postgres mode; 0104_exact_sums.sql)
offgrid_streams = Table("warm_offgrid_streams", MetaData(), Column("stream_id", Integer, primary_key=True))
_MARK = Statement.of(insert(offgrid_streams).from_select(
    ["stream_id"], select(func.unnest(bindparam("sids", type_=ARRAY(Integer))))).on_conflict_do_nothing())
_IS_OFF_GRID = Statement.of(select(exists().where(offgrid_streams.c.stream_id == bindparam("sid", type_=Integer))))


def mark_off_grid(conn: psycopg.Connection, stream_ids, values) -> None:
    """Mark the streams of the values off the grid (Arrow or numpy columns of one batch), in the
    caller's transaction: from then on their sums are read as pairs."""
    v = np.asarray(values.to_numpy() if hasattr(values, "to_numpy") else values, np.float64)
    off = off_grid(v, GRID_MAX, GRID_SCALE)
    if off.any():
        sids = np.asarray(stream_ids.to_numpy() if hasattr(stream_ids, "to_numpy") else stream_ids)
        _MARK.run(conn, {"sids": np.unique(sids[off]).astype(int).tolist()})


def needs_pairs(warm, conn: psycopg.Connection, sid: int) -> bool:
    """Whether reads of stream `sid` must sum as pairs: postgres mode and the stream marked off
    the grid (a mark is never removed, so a True is cached on `warm`)."""
    if not warm.exact_sums:
        return False
    marked = warm.__dict__.setdefault("_offgrid_sids", set())
    if sid in marked:
        return True
    if _IS_OFF_GRID.run(conn, {"sid": sid}).fetchone()[0]:
        marked.add(sid)
        return True
    return False
