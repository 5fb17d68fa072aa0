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


def binary_copy(columns: list[tuple[str, Any]], null_columns: int = 0) -> bytes:
    """A binary COPY payload of fixed-width columns (numpy dtype, values) plus trailing NULL columns."""
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
