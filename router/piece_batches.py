"""Reading many pieces of one tier in few calls: calendar series (local days, weeks, months).

A local day that is not a UTC day is covered piece by piece (hours, minutes at :30/:45 edges),
so a year of local days is hundreds of pieces; one tier call per piece would cost a round trip
(and a DuckDB query or SQL statement) each. The pieces of a tier are read BATCH_PIECES per
`aggregate` call instead, and the answer — partials by bucket, every bucket inside one piece —
is split back per piece, so the results cache and meta.segments still see single pieces.
Dense runs of one granularity (the hours of local days) are read as their hull (see `read`).
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import pyarrow as pa

from rollups.cover import Piece
from rollups.errors import TierUnavailable
from rollups.timeutil import TimeRange
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
    """Partials by bucket of each piece, from few `aggregate` calls over all of them.

    The pieces of one granularity that cover at least half of their hull (hours between the
    :30 edges of Kolkata days) are read as the hull, one piece, and its buckets outside them are
    dropped; the others (minute and raw edges) are read together, as they are. Returns (a table
    per piece, or the TierUnavailable a call raised for each; the calls' took_ms for each).
    """
    started = time.perf_counter()
    by_gran: dict[str, list[int]] = {}
    for i, p in enumerate(pieces):
        by_gran.setdefault(p.granularity.name, []).append(i)
    reads: list[tuple[list[Piece], list[int]]] = []
    sparse: list[int] = []
    for idx in by_gran.values():
        first, last = pieces[idx[0]], pieces[idx[-1]]
        hull = TimeRange(first.range.start, last.range.end)
        covered = sum(pieces[i].range.end - pieces[i].range.start for i in idx)
        if len(idx) > 1 and not first.granularity.is_raw and 2 * covered >= hull.end - hull.start:
            reads.append(([Piece(first.granularity, hull)], idx))
        else:
            sparse.extend(idx)
    if sparse:
        sparse.sort()
        reads.append(([pieces[i] for i in sparse], sparse))
    out: list[pa.Table | TierUnavailable] = [None] * len(pieces)  # type: ignore[list-item]
    try:
        for read_pieces, idx in reads:
            table = tier.aggregate(spec.tenant, spec.stream, read_pieces, "bucket", spec.key)
            for i, part in zip(idx, split(table, [pieces[i] for i in idx])):
                out[i] = part
    except TierUnavailable as exc:
        took = (time.perf_counter() - started) * 1000
        return [exc] * len(pieces), [took] * len(pieces)
    took = (time.perf_counter() - started) * 1000
    return out, [took] * len(pieces)


def split(table: pa.Table, pieces: Sequence[Piece]) -> list[pa.Table]:
    """The rows of a bucket-grouped partial table per piece (bucket within the piece's range).

    Exact because every bucket a tier returns lies inside the piece it was read for (a raw
    piece's buckets are minutes, and pieces are minute-aligned)."""
    table = table.sort_by("bucket")
    buckets = table["bucket"].to_numpy()
    starts = np.searchsorted(buckets, [p.range.start for p in pieces], side="left")
    ends = np.searchsorted(buckets, [p.range.end for p in pieces], side="left")
    return [table.slice(int(a), int(b - a)) for a, b in zip(starts, ends)]
