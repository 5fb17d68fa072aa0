"""The bucket cover of a range: the coarsest whole buckets that fit, finer at the edges."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from rollups.timeutil import RAW, Granularity, TimeRange


@dataclass(frozen=True)
class Piece:
    """A sub-range read at one granularity; for fixed granularities its ends are bucket-aligned."""

    granularity: Granularity
    range: TimeRange


def cover(rng: TimeRange, granularities: Sequence[Granularity]) -> list[Piece]:
    """Split rng into pieces, each read at the coarsest granularity whose whole buckets fit.

    `granularities` are those available (any order). What no granularity covers in whole buckets
    is read raw when RAW is among them; otherwise ValueError (query ranges are minute-aligned, so
    a cover with 1m never needs raw). Pieces come back in time order, adjacent pieces of the same
    granularity merged, and together they tile rng exactly.
    """
    grans = sorted((g for g in granularities if not g.is_raw), key=lambda g: g.ms, reverse=True)
    pieces: list[Piece] = []
    _cover(rng.start, rng.end, grans, RAW in granularities, pieces)
    return _merge_adjacent(pieces)


def _cover(start: int, end: int, grans: list[Granularity], raw_ok: bool, out: list[Piece]) -> None:
    if start >= end:
        return
    for i, g in enumerate(grans):
        a, b = g.ceil(start), g.floor(end)
        if a < b:
            _cover(start, a, grans[i + 1:], raw_ok, out)
            out.append(Piece(g, TimeRange(a, b)))
            _cover(b, end, grans[i + 1:], raw_ok, out)
            return
    if not raw_ok:
        raise ValueError(f"range [{start}, {end}) is not aligned to any available granularity")
    out.append(Piece(RAW, TimeRange(start, end)))


def _merge_adjacent(pieces: list[Piece]) -> list[Piece]:
    merged: list[Piece] = []
    for p in pieces:
        if merged and merged[-1].granularity == p.granularity and merged[-1].range.end == p.range.start:
            merged[-1] = Piece(p.granularity, TimeRange(merged[-1].range.start, p.range.end))
        else:
            merged.append(p)
    return merged


def disjoint_runs(pieces: Sequence[Piece]) -> list[list[int]]:
    """The non-empty pieces' indices split into runs of pieces that do not overlap, each in time
    order (first fit by start: one run for a cover or trending's slices, a second only for a piece
    overlapping another). For tiers reading many pieces apart in one statement per run."""
    runs: list[list[int]] = []
    ends: list[int] = []
    for i in sorted((i for i, p in enumerate(pieces) if not p.range.empty), key=lambda i: pieces[i].range.start):
        r = next((n for n, end in enumerate(ends) if end <= pieces[i].range.start), None)
        if r is None:
            runs.append([i])
            ends.append(pieces[i].range.end)
        else:
            runs[r].append(i)
            ends[r] = pieces[i].range.end
    return runs


def granularity_runs(pieces: Sequence[Piece]) -> list[list[int]]:
    """The non-empty pieces' indices grouped by granularity, each group split by `disjoint_runs`:
    every run holds pieces of one granularity, in time order, that do not overlap — what a tier
    reading many pieces apart needs to answer each run with one statement or query."""
    by_gran: dict[str, list[int]] = {}
    for i, p in enumerate(pieces):
        by_gran.setdefault(p.granularity.name, []).append(i)
    return [[idx[j] for j in run] for idx in by_gran.values() for run in disjoint_runs([pieces[i] for i in idx])]


def series_granularities(step_ms: int, available: Sequence[Granularity]) -> list[Granularity]:
    """Granularities usable for a series with this step: whole buckets nest inside step buckets."""
    return [g for g in available if g.is_raw or (not g.calendar and step_ms % g.ms == 0)]


def cover_buckets(rng: TimeRange, bounds: Sequence[int], granularities: Sequence[Granularity]) -> list[Piece]:
    """The cover of rng when series buckets have irregular edges (calendar steps, local days):
    each bucket [bounds[i], bounds[i+1]) ∩ rng is covered on its own, so every piece's buckets
    nest in one series bucket; adjacent pieces of one granularity merge as in `cover`.

    `bounds` are increasing bucket edges (epoch ms); the parts of rng outside them are covered too.
    """
    edges = [b for b in bounds if rng.start < b < rng.end]
    pieces: list[Piece] = []
    start = rng.start
    for edge in [*edges, rng.end]:
        pieces.extend(cover(TimeRange(start, edge), granularities))
        start = edge
    return _merge_adjacent(pieces)
