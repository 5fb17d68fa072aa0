"""Warm's raw events in bulk, for export_cold: one COPY per range of days, parsed by Arrow.

`WarmTier.read_raw` yields one stream's rows through a cursor (a Python tuple per row, keys joined
in SQL); export_cold needs every stream's rows of many days, so it reads them here instead:
    read_range   COPY (SELECT stream_id, key_id, key, epoch ms, value, id ...) TO STDOUT as CSV,
                 keys joined in SQL (a hash join, not a lookup per id), parsed by pyarrow.csv
                 (text quoted by PostgreSQL where needed, NULL unquoted and empty)
    day_totals   warm's own count and sum per (stream, day), one aggregate statement (the
                 independent figure every exported day is verified against)
    stream_names {stream_id: (tenant, stream)}
Times are epoch ms (bounds clamped to warm's range); the bounds are bound parameters (psycopg
binds COPY's client-side), never pasted into the SQL text.
"""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.csv as pacsv

from tiers.warm_sql import clamp

_BOUNDS = ("ts >= timestamptz 'epoch' + %s * interval '1 millisecond' "
           "AND ts < timestamptz 'epoch' + %s * interval '1 millisecond'")
_COPY = ("COPY (SELECT events.stream_id, events.key_id, keys.key, CAST(extract(epoch FROM ts) * 1000 AS bigint), "
         f"value, events.id FROM events JOIN keys ON keys.id = events.key_id WHERE {_BOUNDS}) TO STDOUT (FORMAT csv)")
_TOTALS = ("SELECT stream_id, CAST(floor(extract(epoch FROM ts) / 86400) AS bigint) * 86400000 AS day, "
           f"count(*), sum(value) FROM events WHERE {_BOUNDS} GROUP BY 1, 2")
RANGE_SCHEMA = pa.schema([("stream_id", pa.int32()), ("key_id", pa.int64()), ("key", pa.string()),
                          ("ts", pa.int64()), ("value", pa.float64()), ("id", pa.string())])


def read_range(warm, lo: int, hi: int) -> pa.Table:
    """Every raw event with ts in [lo, hi) of every stream (RANGE_SCHEMA, in no order).

    Raises TierUnavailable("warm") when PostgreSQL fails."""
    buf = io.BytesIO()
    with warm._translate(), warm.pool.connection() as conn:
        with conn.cursor().copy(_COPY, (clamp(lo), clamp(hi))) as copy:
            for block in copy:
                buf.write(block)
    if buf.tell() == 0:
        return RANGE_SCHEMA.empty_table()
    buf.seek(0)
    return pacsv.read_csv(buf, read_options=pacsv.ReadOptions(column_names=RANGE_SCHEMA.names,
                                                              block_size=1 << 24),
                          parse_options=pacsv.ParseOptions(newlines_in_values=True),  # keys may hold any text
                          convert_options=pacsv.ConvertOptions(
                              column_types=dict(zip(RANGE_SCHEMA.names, RANGE_SCHEMA.types)),
                              # PostgreSQL's CSV NULL is an unquoted empty field; keys such as
                              # NULL, NaN or N/A are text (Arrow's default null spellings are not)
                              null_values=[""], strings_can_be_null=True,
                              quoted_strings_can_be_null=False)).cast(RANGE_SCHEMA)


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
