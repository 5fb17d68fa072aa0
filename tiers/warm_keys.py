"""The warm tier's key column and one value column (tiers.base.Tier.key_values, distinct_keys).

One statement per shape (cached, as tiers.warm_queries): the rows of every piece — rollup rows,
raw events for the edges — with only key_id and the one value (count or sum), grouped by key_id
(or DISTINCT key_id), streamed out by COPY ... TO STDOUT (text, parsed by Arrow's CSV reader: no
Python object per row). Key ids become strings through the shared dictionary's cache
(tiers.cold_keys.PgKeyDictionary), vectorised.
"""
from __future__ import annotations

import functools
import io
from typing import Sequence

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from sqlalchemy import BigInteger, Integer, bindparam, cast, func, literal_column, select, union_all
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION

from rollups.cover import Piece
from tiers import warm_queries as q
from tiers.base import KEY_VALUES_SCHEMA
from tiers.ranked_access import check_by
from tiers.hot_sums import with_lows
from tiers.warm_pairs import ZERO, needs_pairs, pair_sum
from tiers.warm_sql import Statement, events, rollup

_SID = bindparam("sid", type_=Integer)


def _rows(shape: q.Shape, by: str | None, exact: bool = False):
    """UNION ALL of (g key_id, x the count or sum; no x when by is None) over the pieces; with
    `exact` (by sum, postgres mode) also xl, the sums' low parts (tiers/warm_pairs.py)."""
    parts = []
    for i, g in enumerate(shape):
        if g == "raw":
            t, time = events, events.c.ts
            x = cast(literal_column("1"), BigInteger) if by == "count" else t.c.value
        else:
            t = rollup[g]
            time = t.c.bucket
            x = t.c[by] if by is not None else None
        cols = [t.c.key_id.label("g")] + ([x.label("x")] if by is not None else [])
        if exact:
            cols.append((ZERO if g == "raw" else t.c["sum_lo"]).label("xl"))
        parts.append(select(*cols).where(t.c.stream_id == _SID, *q._bounds(i, time)))
    return (union_all(*parts) if len(parts) > 1 else parts[0]).subquery("u")


@functools.lru_cache(maxsize=1024)
def values_statement(shape: q.Shape, by: str, exact: bool = False, with_lo: bool = False) -> Statement:
    """(key_id, v float8) per key over the pieces of `shape` (binds sid, lo<i>/hi<i>); `exact`
    (by sum): v the float nearest the exact pair sum, and `with_lo` a third column, its low part."""
    if exact and by == "sum":
        u = _rows(shape, by, True)
        hi, lo = pair_sum(u.c.x, u.c.xl)
        return Statement.of(select(u.c.g, hi, *([lo] if with_lo else [])).group_by(u.c.g))
    u = _rows(shape, by)
    return Statement.of(select(u.c.g, cast(func.sum(u.c.x), DOUBLE_PRECISION), *([ZERO] if with_lo else []))
                        .group_by(u.c.g))


@functools.lru_cache(maxsize=1024)
def distinct_statement(shape: q.Shape) -> Statement:
    """key_id of every key over the pieces of `shape` (binds sid, lo<i>/hi<i>)."""
    u = _rows(shape, None)
    return Statement.of(select(u.c.g).distinct())


def _copy(conn: psycopg.Connection, stmt: Statement, values: dict, types: list[pa.DataType]) -> pa.Table:
    """The rows of `stmt` as an Arrow table of `types` (columns c0, c1, ...), through COPY TO STDOUT."""
    sql = psycopg.ClientCursor(conn).mogrify(stmt.sql, stmt.params(values))
    buf = io.BytesIO()
    with conn.cursor().copy(f"COPY ({sql}) TO STDOUT (FORMAT csv)") as copy:
        for chunk in copy:
            buf.write(chunk)
    names = [f"c{i}" for i in range(len(types))]
    if buf.tell() == 0:
        return pa.schema(list(zip(names, types))).empty_table()
    buf.seek(0)
    return pacsv.read_csv(buf, read_options=pacsv.ReadOptions(column_names=names, use_threads=False),
                          convert_options=pacsv.ConvertOptions(column_types=dict(zip(names, types))))


def key_values(warm, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> pa.Table:
    """Tier.key_values for `warm` (tiers.warm.WarmTier). Raises ValueError for another `by`."""
    check_by(by)
    sid = warm.keys.stream_id(tenant, stream)
    shape, params = q.shape_of(pieces)
    if sid is None or not shape:
        return KEY_VALUES_SCHEMA.empty_table()
    with warm.pool.connection() as conn:
        t = _copy(conn, values_statement(shape, by, needs_pairs(warm, conn, sid), True), {**params, "sid": sid},
                  [pa.int64(), pa.float64(), pa.float64()])
    names = warm.key_names().keys(tenant, stream, t["c0"]) if t.num_rows else pa.array([], pa.string())
    out = pa.Table.from_arrays([names, t["c1"].combine_chunks()], schema=KEY_VALUES_SCHEMA)
    return with_lows(out, "value_lo", t["c2"].to_numpy()) if t.num_rows else out


def distinct_keys(warm, tenant: str, stream: str, pieces: Sequence[Piece]) -> pa.Array:
    """Tier.distinct_keys for `warm` (tiers.warm.WarmTier)."""
    sid = warm.keys.stream_id(tenant, stream)
    shape, params = q.shape_of(pieces)
    if sid is None or not shape:
        return pa.array([], pa.string())
    with warm.pool.connection() as conn:
        t = _copy(conn, distinct_statement(shape), {**params, "sid": sid}, [pa.int64()])
    return warm.key_names().keys(tenant, stream, t["c0"]) if t.num_rows else pa.array([], pa.string())
