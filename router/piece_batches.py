"""Reading many pieces of one tier in few calls: calendar series (local days, weeks, months).

A local day that is not a UTC day is covered piece by piece (hours, minutes at :30/:45 edges),
so a year of local days is hundreds of pieces; one tier call per piece would cost a round trip
(and a DuckDB query or SQL statement) each. The pieces of a tier are read BATCH_PIECES per
`aggregate` call instead, and the answer — partials by bucket, every bucket inside one piece —
is split back per piece, so the results cache and meta.segments still see single pieces.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pyarrow as pa

from rollups.cover import Piece
from rollups.errors import TierUnavailable
from router.protocols import PieceReader

#: pieces per tier call: the warm tier compiles one statement per shape (the granularities in
#: order), so the bound also bounds what one shape costs to compile and to plan
BATCH_PIECES = 48


def batches(pieces: Sequence, todo: Sequence[int]) -> list[list[int]]:
    """`todo` (indices of planned pieces, in time order) grouped by tier, BATCH_PIECES at most."""
    by_tier: dict[str, list[int]] = {}
    for i in todo:
        by_tier.setdefault(pieces[i].tier, []).append(i)
    return [idx[a:a + BATCH_PIECES] for idx in by_tier.values() for a in range(0, len(idx), BATCH_PIECES)]


def read(tier: PieceReader, spec, pieces: list[Piece]) -> tuple[list[pa.Table | TierUnavailable], list[float]]:
    """Partials by bucket of each piece, from one `aggregate` call over all of them.

    Returns (a table per piece, or the TierUnavailable the call raised for each; the call's
    took_ms for each).
    """
    started = time.perf_counter()
    try:
        table = tier.aggregate(spec.tenant, spec.stream, pieces, "bucket", spec.key)
    except TierUnavailable as exc:
        took = (time.perf_counter() - started) * 1000
        return [exc] * len(pieces), [took] * len(pieces)
    took = (time.perf_counter() - started) * 1000
    return split(table, pieces), [took] * len(pieces)


def split(table: pa.Table, pieces: Sequence[Piece]) -> list[pa.Table]:
    """The rows of a bucket-grouped partial table per piece (bucket within the piece's range).

    Exact because every bucket a tier returns lies inside the piece it was read for (a raw
    piece's buckets are minutes, and pieces are minute-aligned)."""
    table = table.sort_by("bucket")
    buckets = table["bucket"].to_numpy()
    starts = np.searchsorted(buckets, [p.range.start for p in pieces], side="left")
    ends = np.searchsorted(buckets, [p.range.end for p in pieces], side="left")
    return [table.slice(int(a), int(b - a)) for a, b in zip(starts, ends)]
