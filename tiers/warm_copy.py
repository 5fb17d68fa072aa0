"""PostgreSQL's binary COPY format for the warm tier's bulk inserts (raw events, postgres-mode deltas)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

# PostgreSQL's binary COPY: signature, flags, header extension; each row: field count, then per
# field its length (-1 = NULL) and big-endian bytes; timestamptz = microseconds since 2000-01-01.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
_PG_EPOCH_MS = 946_684_800_000


def pg_us(ms: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Epoch milliseconds (int64 or timestamp) as PostgreSQL's binary timestamptz."""
    return (ms.cast(pa.int64()).to_numpy() - _PG_EPOCH_MS) * 1000


def binary_copy(columns: list[tuple[str, Any]], null_columns: int = 0, text: pa.Array | pa.ChunkedArray | None = None
                ) -> bytes:
    """A binary COPY payload of fixed-width columns (numpy dtype, values) plus trailing NULL columns,
    or (`text`, null_columns 0) one trailing text column (UTF-8, nulls allowed), all vectorised."""
    if text is not None:
        return _with_text(binary_copy(columns, 1)[len(_COPY_HEADER):-len(_COPY_TRAILER)], len(columns[0][1]), text)
    n = len(columns[0][1])
    fields = [("n", ">i2")]
    for i, (dtype, _) in enumerate(columns):
        fields += [(f"l{i}", ">i4"), (f"v{i}", dtype)]
    fields += [(f"z{j}", ">i4") for j in range(null_columns)]
    rows = np.empty(n, dtype=np.dtype(fields))
    rows["n"] = len(columns) + null_columns
    for i, (dtype, values) in enumerate(columns):
        rows[f"l{i}"] = np.dtype(dtype).itemsize
        rows[f"v{i}"] = values.to_numpy() if hasattr(values, "to_numpy") else values
    for j in range(null_columns):
        rows[f"z{j}"] = -1
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


def _with_text(fixed: bytes, n: int, text: pa.Array | pa.ChunkedArray) -> bytes:
    """Rows of `fixed` (n rows of equal width, each ending in a 4-byte length field) each followed
    by its text value: the length field becomes the value's byte length (-1 for NULL)."""
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    text = text.cast(pa.large_string())  # int64 offsets
    width = len(fixed) // n if n else 0
    rows = np.frombuffer(fixed, np.uint8).reshape(n, width).copy()
    offsets = np.frombuffer(text.buffers()[1], np.int64, n + 1, text.offset * 8)
    valid = text.is_valid().to_numpy(zero_copy_only=False)
    lengths = np.where(valid, np.diff(offsets), 0)
    if n and text.null_count == 0 and (lengths == lengths[0]).all():  # ids of one length (UUIDs): no scatter
        size = int(lengths[0])
        rows[:, width - 4:] = np.array([size], ">i4").view(np.uint8)
        data = np.frombuffer(text.buffers()[2], np.uint8, n * size, int(offsets[0])).reshape(n, size)
        return _COPY_HEADER + np.hstack([rows, data]).tobytes() + _COPY_TRAILER
    rows[:, width - 4:] = np.where(valid, lengths, -1).astype(">i4").view(np.uint8).reshape(n, 4)
    starts = np.zeros(n + 1, np.int64)
    np.cumsum(width + lengths, out=starts[1:])
    out = np.empty(int(starts[-1]), np.uint8)
    out[(starts[:-1, None] + np.arange(width)).ravel()] = rows.ravel()
    total = int(lengths.sum())
    if total:
        within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        data = np.frombuffer(text.buffers()[2], np.uint8)
        out[np.repeat(starts[:-1] + width, lengths) + within] = data[np.repeat(offsets[:-1], lengths) + within]
    return _COPY_HEADER + out.tobytes() + _COPY_TRAILER
