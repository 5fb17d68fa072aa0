"""Columns out of PostgreSQL in a few messages: aggregated arrays in binary COPY, read by numpy.

export_cold reads every raw event of a range of days (tiers.warm_export). A COPY of the rows
costs one protocol message per row (a Python iteration each in the client) and, as CSV, the
server prints every float and epoch as text. Instead the server aggregates each column into one
array (array_agg over the same scan: every aggregate sees the rows in the same order) and sends
the single row in binary COPY format; a text column travels as its byte lengths (an int4 array,
-1 for NULL) beside its values concatenated (string_agg(col, '')), so an Arrow string array is
built from them without a loop. `columns(buf, kinds)` reads such a row:
    kinds: "int4", "int8", "float8", "ts" (timestamptz -> epoch ms, rounded half away from zero
    like CAST(extract(epoch FROM ts) * 1000 AS bigint)), ("text", i) (the text whose lengths are
    column i; the lengths column itself is returned as is).
Every array must be one-dimensional without NULL elements; a NULL field (no rows) gives empty
columns. Raises CopyFormatError on anything else.
"""
from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970-01-01
_TYPES = {"int4": ">i4", "int8": ">i8", "float8": ">f8", "ts": ">i8"}
_NATIVE = {"int4": np.int32, "int8": np.int64, "float8": np.float64, "ts": np.int64}


class CopyFormatError(ValueError):
    """The bytes are not the expected one-row binary COPY."""


def copy_out(conn, sql: str, params: tuple) -> bytes:
    """The whole output of `COPY (...) TO STDOUT` (sql with its %s params) on a psycopg connection."""
    buf = bytearray()
    with conn.cursor().copy(sql, params) as copy:
        for block in copy:
            buf += block
    return bytes(buf)


def columns(buf, kinds: list) -> list:
    """The columns (numpy arrays; pa.string() arrays for ("text", i)) of a one-row binary COPY."""
    raw = memoryview(buf).cast("B")
    if bytes(raw[:11]) != SIGNATURE:
        raise CopyFormatError("no binary COPY signature")
    (ext,) = struct.unpack_from(">i", raw, 15)
    p = 19 + ext
    (nfields,) = struct.unpack_from(">h", raw, p)
    if nfields != len(kinds):
        raise CopyFormatError(f"{nfields} fields, expected {len(kinds)}")
    p += 2
    fields = []
    for _ in kinds:
        (size,) = struct.unpack_from(">i", raw, p)
        p += 4
        fields.append(None if size < 0 else raw[p:p + size])
        p += max(size, 0)
    if bytes(raw[p:p + 2]) != b"\xff\xff":
        raise CopyFormatError("more than one row")
    out: list = [None] * len(kinds)
    for i, kind in enumerate(kinds):
        if not isinstance(kind, tuple):
            out[i] = _array(fields[i], kind)
    for i, kind in enumerate(kinds):
        if isinstance(kind, tuple):
            out[i] = _text(fields[i], out[kind[1]])
    return out


def _array(field, kind: str) -> np.ndarray:
    """A one-dimensional binary array (array_send) of fixed-width elements as numpy."""
    if field is None:
        return np.zeros(0, _NATIVE[kind])
    ndim, has_null, _oid = struct.unpack_from(">iii", field, 0)
    if ndim == 0:
        return np.zeros(0, _NATIVE[kind])
    if ndim != 1 or has_null:
        raise CopyFormatError("expected a one-dimensional array without NULLs")
    (n,) = struct.unpack_from(">i", field, 12)
    width = np.dtype(_TYPES[kind]).itemsize
    elems = np.frombuffer(field, np.dtype([("len", ">i4"), ("v", _TYPES[kind])]), count=n, offset=20)
    if len(field) != 20 + n * (4 + width) or (n and not np.all(elems["len"] == width)):
        raise CopyFormatError("unexpected array element widths")
    v = elems["v"].astype(_NATIVE[kind])
    if kind == "ts":
        us = v + _PG_EPOCH_US
        v = np.where(us >= 0, (us + 500) // 1000, -((-us + 500) // 1000))
    return v


def _text(field, lengths: np.ndarray) -> pa.Array:
    """A string array from the values concatenated and their byte lengths (-1: NULL)."""
    data = bytes(field) if field is not None else b""
    valid = lengths >= 0
    ends = np.concatenate([[0], np.cumsum(np.where(valid, lengths, 0).astype(np.int64))])
    if int(ends[-1]) != len(data):
        raise CopyFormatError("text lengths do not add up to the text")
    n = len(lengths)
    large = len(data) >= 2**31
    offsets = ends if large else ends.astype(np.int32)
    mask = None if valid.all() else pa.array(valid).buffers()[1]
    arr = pa.Array.from_buffers(pa.large_string() if large else pa.string(), n,
                                [mask, pa.py_buffer(offsets), pa.py_buffer(data)], null_count=int(n - valid.sum()))
    arr.validate(full=True)  # UTF-8 (the database's encoding)
    return arr.cast(pa.string()) if large else arr


__all__ = ["columns", "CopyFormatError", "SIGNATURE"]
