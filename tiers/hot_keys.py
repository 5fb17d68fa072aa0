"""The hot tier's key column and one value column (tiers.base.Tier.key_values, distinct_keys).

One script call (hot_query.lua mode `column`) unions the pieces' count (or sum) zsets only — runs
of buckets through their materialised window unions — and returns every member joined by NUL
(keys never hold U+0000, router/models.py) and, for key_values, the scores joined by NUL. The
replies become Arrow arrays without a Python object per key: the separators' positions give the
string offsets, and the scores (as Redis formats them: exact) are cast from strings to float64.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from rollups.cover import Piece
from tiers.base import KEY_VALUES_SCHEMA
from tiers.hot_sums import exact_union, with_lows
from tiers.ranked_access import check_by


def nul_joined(data: bytes) -> pa.Array:
    """The strings of `data` (non-empty strings joined by NUL; b"" for none) as an Arrow array."""
    if not data:
        return pa.array([], pa.string())
    buf = np.frombuffer(data, np.uint8)
    cuts = np.flatnonzero(buf == 0)
    ends = np.append(cuts, len(buf)) - np.arange(len(cuts) + 1)
    offsets = np.concatenate([[0], ends]).astype(np.int32 if len(buf) < 2 ** 31 else np.int64)
    body = data.replace(b"\0", b"")
    kind = pa.string() if offsets.dtype == np.int32 else pa.large_string()
    arr = pa.Array.from_buffers(kind, len(offsets) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(body)])
    return arr.cast(pa.string())


def key_values(tier, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> pa.Table:
    """(key, value) of every key with events in the pieces (Tier.key_values) for the hot tier
    `tier` (tiers.hot.RedisHotTier). Raises ValueError for another `by`; the tier's read errors."""
    check_by(by)
    if not pieces:
        return KEY_VALUES_SCHEMA.empty_table()
    members, scores = tier._query(tenant, stream, pieces, "column", by, 1)
    if members == b"exact":  # a union of sums as pairs, in Python (tiers/hot_sums.py)
        keys, hi, lo = exact_union(scores)  # value_lo: the low parts (rollups.pairsum), when any
        return with_lows(pa.Table.from_arrays([keys, pa.array(hi)], schema=KEY_VALUES_SCHEMA), "value_lo", lo)
    keys = nul_joined(members)
    values = nul_joined(scores).cast(pa.float64()) if len(keys) else pa.array([], pa.float64())
    return pa.Table.from_arrays([keys, values], schema=KEY_VALUES_SCHEMA)


def distinct_keys(tier, tenant: str, stream: str, pieces: Sequence[Piece]) -> pa.Array:
    """Every key with events in the pieces, once (Tier.distinct_keys), for the hot tier `tier`."""
    if not pieces:
        return pa.array([], pa.string())
    members, _ = tier._query(tenant, stream, pieces, "column", "count", 0)
    return nul_joined(members)
