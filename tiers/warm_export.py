"""Warm's raw events in bulk, for export_cold: one binary COPY per range of days, read by numpy.

`WarmTier.read_raw` yields one stream's rows through a cursor (a Python tuple per row, keys joined
in SQL); export_cold needs every stream's rows of many days, so it reads them here instead:
    read_range   the events' columns as arrays in ONE binary COPY row (tiers.warm_binary: no
                 float or epoch printed as text, no message per row), then the texts of the
                 distinct key ids the same way (not a join per event), taken into the rows by
                 Arrow; both in one read-only snapshot
    day_totals   warm's own count and sum per (stream, day), one aggregate statement (the
                 independent figure every exported day is verified against)
    stream_names {stream_id: (tenant, stream)}
Times are epoch ms (bounds clamped to warm's range); the bounds are bound parameters (psycopg
binds COPY's client-side), never pasted into the SQL text.
"""
from __future__ import annotations


import numpy as np
import pyarrow as pa

from tiers.parquet_layout import VerifyFailed
from tiers.warm_binary import columns, copy_out
from tiers.warm_sql import clamp

_BOUNDS = ("ts >= timestamptz 'epoch' + %s * interval '1 millisecond' "
           "AND ts < timestamptz 'epoch' + %s * interval '1 millisecond'")
_COPY = ("COPY (SELECT array_agg(stream_id), array_agg(key_id), array_agg(ts), array_agg(value), "
         f"array_agg(coalesce(octet_length(id), -1)), string_agg(id, '') FROM events WHERE {_BOUNDS}) "
         "TO STDOUT (FORMAT binary)")
_EVENT_KINDS = ["int4", "int8", "ts", "float8", "int4", ("text", 4)]
_KEYS = ("COPY (SELECT array_agg(id), array_agg(octet_length(key)), string_agg(key, '') FROM keys "
         "WHERE id = ANY(%s::bigint[])) TO STDOUT (FORMAT binary)")
_KEY_KINDS = ["int8", "int4", ("text", 1)]
# days by date_bin (timestamp arithmetic) per row, epoch ms per group: extract(epoch) per row is numeric
_TOTALS = ("SELECT stream_id, CAST(extract(epoch FROM d) AS bigint) * 1000, n, s FROM (SELECT stream_id, "
           "date_bin('1 day', ts, timestamptz 'epoch') AS d, count(*) AS n, sum(value) AS s "
           f"FROM events WHERE {_BOUNDS} GROUP BY 1, 2) AS per_day")
RANGE_SCHEMA = pa.schema([("stream_id", pa.int32()), ("key_id", pa.int64()), ("key", pa.string()),
                          ("ts", pa.int64()), ("value", pa.float64()), ("id", pa.string())])


def read_range(warm, lo: int, hi: int, *, in_file_order: bool = False) -> pa.Table:
    """Every raw event with ts in [lo, hi) of every stream (RANGE_SCHEMA, in no order; with
    in_file_order: sorted by (stream_id, ts, key_id), stable, i.e. each stream-day's rows in the
    order of its raw file, ties in warm's order).

    Raises TierUnavailable("warm") when PostgreSQL fails."""
    with warm._translate(), warm.pool.connection() as conn:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            sid, key_id, ts, value, _, ids = columns(copy_out(conn, _COPY, (clamp(lo), clamp(hi))), _EVENT_KINDS)
            wanted, at = _ranks(key_id)
            kid, _, texts = columns(copy_out(conn, _KEYS, ("{" + ",".join(map(str, wanted.tolist())) + "}",)),
                                    _KEY_KINDS) if len(wanted) else (wanted, None, pa.array([], pa.string()))
    order = np.argsort(kid, kind="stable")
    kid, texts = kid[order], texts.take(pa.array(order))
    if len(kid) != len(wanted) or not np.array_equal(kid, wanted):  # the join this replaces would drop them
        raise VerifyFailed(f"warm events reference {len(wanted) - len(kid)} unknown key ids")
    if in_file_order and len(ts):
        order = _file_order(sid, ts, at)
        sid, key_id, ts, value, at, ids = sid[order], key_id[order], ts[order], value[order], at[order], ids.take(order)
    return pa.table([pa.array(sid, pa.int32()), pa.array(key_id, pa.int64()), texts.take(pa.array(at)),
                     pa.array(ts, pa.int64()), pa.array(value, pa.float64()), ids], schema=RANGE_SCHEMA)


def _ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values ascending, each value's index among them): np.unique(return_inverse),
    in linear time when the values are dense."""
    if len(values) == 0:
        return values, np.zeros(0, np.int64)
    lo, hi = int(values.min()), int(values.max())
    if hi - lo > 4 * len(values) + 1024:
        wanted, at = np.unique(values, return_inverse=True)
        return wanted, at.reshape(-1)
    present = np.zeros(hi - lo + 1, bool)
    present[values - lo] = True
    rank = np.cumsum(present) - 1
    return np.flatnonzero(present) + lo, rank[values - lo]


def _file_order(sid: np.ndarray, ts: np.ndarray, key_rank: np.ndarray) -> np.ndarray:
    """The stable order by (stream id, ts, key id): one argsort of a combined int64 key when the
    ranges allow (key_rank orders as the key ids do), else a lexsort."""
    spans = [int(c.max()) - int(c.min()) + 1 for c in (sid, ts, key_rank)]
    if spans[0] * spans[1] * spans[2] < 2**62:
        code = ((sid.astype(np.int64) - int(sid.min())) * spans[1] + (ts - int(ts.min()))) * spans[2] \
            + (key_rank - int(key_rank.min()))
        return np.argsort(code, kind="stable")
    return np.lexsort((key_rank, ts, sid))


def day_totals(warm, lo: int, hi: int) -> dict[tuple[int, int], tuple[int, float]]:
    """{(stream_id, day start ms): (count, sum)} of warm's events in [lo, hi)."""
    with warm._translate(), warm.pool.connection() as conn:
        rows = conn.execute(_TOTALS, (clamp(lo), clamp(hi))).fetchall()
    return {(int(s), int(d)): (int(c), float(v)) for s, d, c, v in rows}


def stream_names(warm) -> dict[int, tuple[str, str]]:
    """{stream_id: (tenant, stream)} of every stream warm has interned."""
    with warm._translate(), warm.pool.connection() as conn:
        return {int(i): (t, s) for i, t, s in conn.execute("SELECT id, tenant, stream FROM streams")}


__all__ = ["read_range", "day_totals", "stream_names", "RANGE_SCHEMA"]
