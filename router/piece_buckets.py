"""Closed multi-bucket pieces cut into one piece per bucket for the rank path (router/rank_pieces.py).

A closed hot piece of several hours is read and cached one hour at a time: one Redis script never
unions many large zsets (with 500k keys and 4M hot events a 23-hour union held Redis 6-12 s under
load: BUSY for ingest and every other client), and a sliding window re-reads only its new hours.
A closed hot day is read one hour at a time too: until compaction has folded every hour into it
(hot_compact.lua), a day bucket is the union of its hours in one script (bench/query.py, 1M keys,
10M hot events: one day's 757k keys took 7-12 s and made the other reads of the same request
BUSY, so the id merge gave up and the string merge read everything again; its 24 hours read
apart took 0.3 s each and are cached).
"""
from __future__ import annotations

from rollups.cover import Piece
from rollups.timeutil import G1H, TimeRange
from router.planner import Plan, PlannedPiece

#: tiers whose closed multi-bucket pieces are read one bucket at a time, and those granularities
_PER_BUCKET = {"hot": ("1h", "1d")}
#: granularities read one finer bucket at a time instead, per tier (hot: a day as its hours)
_AS_FINER = {"hot": {"1d": G1H}}


def per_bucket(plan: Plan, now: int, closed_ms: int) -> tuple[Plan, list[int]]:
    """The plan with every hot piece of several hour buckets, or of one or more days, cut into one
    piece per closed hour (ending `closed_ms` or more before `now`, epoch ms) and one piece of the
    hours after them (not closed yet: read, not cached), and for each resulting piece the index of
    the piece it came from (the plan itself when nothing is cut). A piece ending within
    `closed_ms` of now is cut too: in the first minutes of every hour the window's closed hours
    were otherwise read as one union (28 hours of 2,000 keys: 70-140 ms, every request)."""
    pieces: list[PlannedPiece] = []
    origin: list[int] = []
    for i, pp in enumerate(plan.pieces):
        g, rng = pp.piece.granularity, pp.piece.range
        finer = _AS_FINER.get(pp.tier, {}).get(g.name)
        step = finer or g
        cut = g.name in _PER_BUCKET.get(pp.tier, ()) and rng.end - rng.start > step.ms and (
            rng.start % g.ms == 0 and rng.end % g.ms == 0)
        cut_end = min(rng.end, (now - closed_ms) // step.ms * step.ms) if cut else rng.start  # closed ones end there
        if cut and cut_end > rng.start:
            for start in range(rng.start, cut_end, step.ms):
                pieces.append(PlannedPiece(pp.tier, Piece(step, TimeRange(start, start + step.ms))))
                origin.append(i)
            if cut_end < rng.end:  # the buckets not closed yet: one read, as before
                pieces.append(PlannedPiece(pp.tier, Piece(step, TimeRange(cut_end, rng.end))))
                origin.append(i)
        else:
            pieces.append(pp)
            origin.append(i)
    if len(pieces) == len(plan.pieces):
        return plan, origin
    return Plan(plan.spec, plan.snapshot, pieces, list(plan.absent)), origin


__all__ = ["per_bucket"]
