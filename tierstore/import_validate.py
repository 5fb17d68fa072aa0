"""Vectorised validation of imported events (Arrow compute over whole columns, no per-row Python).

The rules are the ingest API's (router.models): stream matches STREAM_RE; key present; key and id
1..256 UTF-8 bytes without U+0000; value present and |value| <= 1e15 (finite). The first bad row
is found by one mask over the table; its message comes from the one per-row statement of the rules
(`row_problem`), so the wording is the same as the ingest API's and the row is the first bad one.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from router.models import (MAX_ABS_VALUE, MAX_ID_BYTES, MAX_KEY_BYTES, STREAM_PROBLEM, STREAM_RE, text_problem,
                           value_problem)


def first_bad_row(events: pa.Table) -> int | None:
    """The 0-based index of the first row the ingest API would refuse, or None when every row passes."""
    bad = _bad_text(events["key"], MAX_KEY_BYTES, required=True)
    bad = pc.or_(bad, _bad_text(events["id"], MAX_ID_BYTES, required=False))
    value = events["value"]
    ok_value = pc.and_(pc.greater_equal(value, -MAX_ABS_VALUE), pc.less_equal(value, MAX_ABS_VALUE))
    bad = pc.or_(bad, pc.invert(pc.fill_null(ok_value, False)))  # NaN compares false: refused too
    stream = events["stream"]
    bad_streams = [s for s in pc.unique(stream).to_pylist() if s is None or not STREAM_RE.fullmatch(s)]
    if bad_streams:
        in_bad = pc.is_in(stream, value_set=pa.array([s for s in bad_streams if s is not None], pa.string()))
        if None in bad_streams:
            in_bad = pc.or_(pc.fill_null(in_bad, True), pc.is_null(stream))
        bad = pc.or_(bad, pc.fill_null(in_bad, True))
    if not pc.any(bad).as_py():
        return None
    return int(pc.index(bad, True).as_py())


def _bad_text(col: pa.ChunkedArray, max_bytes: int, *, required: bool) -> pa.ChunkedArray:
    if col.null_count == len(col):
        return pa.chunked_array([pa.array([required] * len(col), pa.bool_())]) if len(col) else \
            pa.chunked_array([], pa.bool_())
    size = pc.binary_length(col)
    bad = pc.or_(pc.or_(pc.less(size, 1), pc.greater(size, max_bytes)), pc.match_substring(col, "\x00"))
    return pc.fill_null(bad, required)


def row_problem(row: dict) -> str | None:
    """What the ingest API would refuse in this row ("field: problem"), or None."""
    if row["stream"] is None or not STREAM_RE.fullmatch(row["stream"]):
        return f"stream: {STREAM_PROBLEM}"
    if row["key"] is None:
        return "key: missing"
    for field, limit in (("key", MAX_KEY_BYTES), ("id", MAX_ID_BYTES)):
        problem = None if row[field] is None else text_problem(row[field], limit)
        if problem:
            return f"{field}: {problem}"
    problem = "missing" if row["value"] is None else value_problem(row["value"])
    return f"value: {problem}" if problem else None
