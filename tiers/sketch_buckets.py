"""The sketches of whole buckets of a tier: warm's from the store when their version is current;
cold's and archive's 1d, 1w and 1mo buckets from their partitions' sketch files
(tiers/sketch_files.py, written by export_cold and carried to S3 by the archive job); anything else
built from the tier's rollup of the bucket (an exact read of the bucket) — and stored
(tiers/sketch_store.py) for warm and hot (closed hot hours, at their hot version) only: cold and
archive sketches live with their partitions, so `approx_sketches` holds nothing that has left
warm. Decoded sketches of every tier are memoised in-process at their bucket's version.

Used by the router's approx path (router/approx.py) on demand and by the refresh job
(scheduler/sketches.py), which builds warm's day and hour sketches as it refreshes the rollups,
and hot's closed hours.
"""
from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from rollups import sketches
from rollups.cover import Piece
from rollups.errors import TierUnavailable
from rollups.timeutil import HOUR_MS, TimeRange
from tiers import sketch_files
from tiers.sketch_versions import bucket_versions
from tiers.sketch_store import SketchKey, SketchStore, StoredSketch, version_digest


#: bytes a memo entry costs beyond its serialized sketch (keys, tuples, the decoded object's header)
MEMO_OVERHEAD = 512
#: tiers whose bucket sketches are stored in approx_sketches (cold and archive: in sketch files)
STORED_TIERS = ("warm", "hot")
#: tiers whose partitions carry sketch files (tiers/sketch_files.py)
FILE_TIERS = ("cold", "archive")
#: the tier whose minute pieces are sketched as one run each (memoised, never stored: the table
#: keys a bucket by its start); hot's minutes are its open edge, read exactly by the router
RUN_MINUTES_TIER = "warm"
#: memo version prefix of a file tier's bucket built from its rollup (no sketch file)
BUILT = "built:"


@dataclass
class BucketSketch:
    """One whole bucket of one tier and, once filled, its sketch (or why it has none)."""

    tier: str
    piece: Piece          # one bucket (a file tier's hours: a run of them in one day, buckets_of)
    index: int = 0        # the caller's tag (the router: the planned piece it belongs to)
    version: str | None = None
    sketch: sketches.KeySketch | None = None
    refused: str | None = None
    stored: bool = False  # came from the store or a sketch file (nothing read from the tier now)
    source: str | None = None  # store | file | memo | built (from the tier's rollup: an exact read)

    @property
    def key(self) -> SketchKey:
        g, rng = self.piece.granularity, self.piece.range
        return SketchKey(self.tier, g.name, rng.start, 0 if g.next(rng.start) == rng.end else rng.end)


def buckets_of(tier: str, piece: Piece, index: int = 0) -> list[BucketSketch]:
    """The whole buckets of a piece at its granularity (1h, 1d, 1w, 1mo). A file tier's hours
    (the partial days at a range's ends: no sketch file; they lie in one day, one partition) are
    one run sketched whole — one read of the day's hour rollup, not one per hour; so are warm's
    minutes (RUN_MINUTES_TIER: a piece of them lies within one hour)."""
    g = piece.granularity
    if (tier in FILE_TIERS and g not in sketch_files.FILE_GRANULARITIES) or \
            (tier == RUN_MINUTES_TIER and g.ms < HOUR_MS):
        return [BucketSketch(tier, piece, index)]
    return [BucketSketch(tier, Piece(g, TimeRange(b, g.next(b))), index) for b in g.buckets(piece.range)]


@dataclass
class Filled:
    stored: int           # buckets whose current sketch came from the store
    built: int            # buckets built from the tier's rollups now (and stored)
    empty: int            # buckets read now that hold no events (not stored: cheap to read again)
    failed: dict[str, TierUnavailable]  # tiers that were down (their buckets stay unfilled)
    files: int = 0        # buckets read from cold or archive sketch files (or their memo)


def fill(store: SketchStore | None, tiers: Mapping[str, Any], tenant: str, stream: str, by: str, lg_k: int,
         buckets: list[BucketSketch], submit: Callable[..., cf.Future] | None = None,
         tables: dict | None = None) -> Filled:
    """Give every bucket its sketch (or `refused`), reading the store first and building the rest
    (concurrently through `submit`, e.g. an executor's submit). A tier that is down is listed in
    Filled.failed; a store that is down only costs the rebuild (nothing is stored then).
    `tables`: the tier tables read, by (bucket key, version), shared between calls (the builders'
    by=count and by=sum passes read each bucket once; a table is reused only at the version it
    was read after). Other errors propagate."""
    failed: dict[str, TierUnavailable] = {}
    _versions(tiers, tenant, stream, buckets, failed)
    files = _from_files(store, tiers, tenant, stream, by, lg_k, buckets, failed, submit or _now)
    stored = _stored(store, tenant, stream, by, lg_k,
                     [b for b in buckets if b.tier in STORED_TIERS and b.sketch is None and b.refused is None])
    todo = [b for b in buckets if b.tier not in failed and b.sketch is None and b.refused is None]

    def one(b: BucketSketch) -> None:
        table = None if tables is None else tables.get((b.key, b.version))
        if table is None:
            table = tiers[b.tier].aggregate(tenant, stream, [b.piece], "key")
            if tables is not None and b.version is not None:
                tables[(b.key, b.version)] = table
        b.source = "built"
        try:
            b.sketch = sketches.build(table, by, lg_k)
        except sketches.NotSketchable as exc:
            b.refused = str(exc)

    futures = {(submit or _now)(one, b): b for b in todo}
    for fut in cf.as_completed(futures):
        exc = fut.exception()
        if isinstance(exc, TierUnavailable):
            failed.setdefault(futures[fut].tier, exc)
        elif exc is not None:
            raise exc
    if store is not None:
        rows = [(b.key, StoredSketch(b.version, None if b.sketch is None else sketches.serialize(b.sketch),
                                     b.refused), b.tier)
                for b in todo if b.version is not None and b.tier not in failed
                and (b.sketch is None or not b.sketch.sketch.is_empty())]  # empty: cheap to rebuild
        for key, row, tier in rows:  # a file tier's built sketch: memo tagged, so it is reported as exact
            store.remember(tenant, stream, by, lg_k, key, row.version if tier in STORED_TIERS else BUILT + row.version,
                           (None if row.sketch is None else sketches.deserialize(row.sketch), row.refused),
                           len(row.sketch or b"") + MEMO_OVERHEAD)
        try:
            store.put_many(tenant, stream, by, lg_k, [(k, r) for k, r, t in rows if t in STORED_TIERS and not k.end])
        except TierUnavailable:
            pass  # built and used now; stored by a later build
    empty = sum(1 for b in todo if b.sketch is not None and b.sketch.sketch.is_empty())
    return Filled(stored, len(todo) - empty, empty, failed, files)


def _from_files(store: SketchStore | None, tiers: Mapping[str, Any], tenant: str, stream: str, by: str,
                lg_k: int, buckets: list[BucketSketch], failed: dict, submit: Callable[..., cf.Future]) -> int:
    """Fill cold and archive buckets of 1d/1w/1mo from their partitions' sketch files (memo first).
    A bucket whose partition has no sketch file (written before sketch files existed) is left
    for the rollup build. Returns the buckets filled."""
    want = [b for b in buckets if b.tier in FILE_TIERS and b.tier not in failed]
    hits = 0
    todo = []
    for b in want:
        memo, source = None, "memo"
        if store is not None and b.version is not None:
            memo = store.recall(tenant, stream, by, lg_k, b.key, b.version)
            if memo is None:
                memo, source = store.recall(tenant, stream, by, lg_k, b.key, BUILT + b.version), "built"
        if memo is None:
            if b.piece.granularity in sketch_files.FILE_GRANULARITIES:
                todo.append(b)  # hours have no sketch file: built from the rollup
            continue
        b.sketch, b.refused = memo
        b.stored, b.source = True, source
        hits += source == "memo"

    def one(b: BucketSketch) -> None:
        g, start = b.piece.granularity, b.piece.range.start
        tier = tiers[b.tier]
        table = (sketch_files.read_cold(tier, tenant, stream, g, start) if b.tier == "cold"
                 else sketch_files.read_archive(tier, tenant, stream, g, start))
        if table is None:
            return
        entry = sketch_files.decode(table).get(by)
        if entry is None:
            return
        if isinstance(entry, str):
            b.refused = entry
        else:
            b.sketch = entry
        b.stored, b.source = True, "file"
        if store is not None and b.version is not None:
            store.remember(tenant, stream, by, lg_k, b.key, b.version, (b.sketch, b.refused),
                           table.nbytes + MEMO_OVERHEAD)

    futures = {submit(one, b): b for b in todo}
    for fut in cf.as_completed(futures):
        exc = fut.exception()
        if isinstance(exc, TierUnavailable):
            failed.setdefault(futures[fut].tier, exc)
        elif exc is not None:
            raise exc
    return hits + sum(1 for b in todo if b.source == "file")


def _now(fn, *args) -> cf.Future:
    fut: cf.Future = cf.Future()
    try:
        fut.set_result(fn(*args))
    except Exception as exc:  # handed to the caller through the future, like an executor
        fut.set_exception(exc)
    return fut


def _versions(tiers: Mapping[str, Any], tenant: str, stream: str, buckets: list[BucketSketch], failed: dict) -> None:
    by_tier: dict[str, list[BucketSketch]] = {}
    for b in buckets:
        by_tier.setdefault(b.tier, []).append(b)
    for name, group in by_tier.items():
        try:
            found = bucket_versions(name, tiers[name], tenant, stream, [b.piece for b in group])
        except TierUnavailable as exc:
            failed.setdefault(name, exc)
            continue
        for b, v in zip(group, found):
            b.version = None if v is None else version_digest(v)


def _stored(store: SketchStore | None, tenant: str, stream: str, by: str, lg_k: int,
            buckets: list[BucketSketch]) -> int:
    if store is None:
        return 0
    keyed: dict = {}
    hits = 0
    for b in buckets:
        if b.version is None:
            continue
        memo = store.recall(tenant, stream, by, lg_k, b.key, b.version)
        if memo is None:
            if not b.key.end:  # a run is never stored
                keyed[b.key] = b
            continue
        hits += 1
        b.stored, b.source = True, "memo"
        b.sketch, b.refused = memo
    try:
        rows = store.get_many(tenant, stream, by, lg_k, list(keyed))
    except TierUnavailable:
        return hits  # the store is an optimisation: build from the tiers
    for key, row in rows.items():
        b = keyed.get(key)
        if b is None:
            continue
        if row.version != b.version:
            continue
        hits += 1
        b.stored, b.source = True, "store"
        if row.sketch is None:
            b.refused = row.refused or "not sketchable"
        else:
            b.sketch = sketches.deserialize(row.sketch)
        store.remember(tenant, stream, by, lg_k, key, b.version, (b.sketch, b.refused),
                       len(row.sketch or b"") + MEMO_OVERHEAD)
    return hits
