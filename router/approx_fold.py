"""The cheap parts of a mode=approx run (router/approx.py): merging the buckets' sketches through a
memo of merged groups, and reading the hot tier's open edge minutes.

Merged groups. The buckets of one tier in a cover, each filled at its data version
(tiers/sketch_buckets.py), are merged once and the merge is memoised in-process (the sketch
store's memo, SketchStore.recall/remember) under a digest of every (bucket, version) of the group:
the same versions are the same data, so the merge is the same; any bucket whose version changes
(a late event, an import, a delete, a new partition file) gives another digest, and the group is
merged again from its buckets. A query then merges one sketch per tier instead of one per bucket
(a 2 y range: four instead of ~100). The memoised sketch is never mutated: it is merged into the
run's own sketch.

Hot edges. The hot tier's minute pieces (the range's open edges) are read exactly, but through
the tier's RankedAccess lists (tiers/base.py: their values per key sum to the pieces' count or
sum) read whole, instead of its key aggregate (which computes count, sum, min and max of every key
in Redis); values are summed per key with compensated sums (rollups/exactsum.py).
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa

from rollups import sketches
from rollups.cover import Piece
from rollups.exactsum import sums_by
from tiers.sketch_buckets import MEMO_OVERHEAD, BucketSketch
from tiers.sketch_store import SketchKey, SketchStore

#: memo key tier prefix of a merged group (never a real tier name)
MERGED = "merged:"
#: entries asked of every list per sorted access when draining the hot edges (one round: whole lists)
DRAIN = 1 << 30


def group_digest(group: Sequence[BucketSketch]) -> str | None:
    """A digest of the group's (granularity, start, end, version); None when a bucket has no version."""
    parts = []
    for b in sorted(group, key=lambda b: (b.piece.granularity.ms, b.piece.range.start)):
        if b.version is None:
            return None
        parts.append((b.piece.granularity.name, b.piece.range.start, b.piece.range.end, b.version))
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def merge_buckets(store: SketchStore | None, tenant: str, stream: str, by: str, lg_k: int,
                  buckets: Iterable[BucketSketch]) -> tuple[sketches.KeySketch, int]:
    """(the merge of the buckets' sketches, how many tier groups came from the memo). Buckets
    without a sketch (refused, failed tier) must be left out by the caller."""
    groups: dict[str, list[BucketSketch]] = {}
    for b in buckets:
        if b.sketch is not None:
            groups.setdefault(b.tier, []).append(b)
    merged = sketches.KeySketch.empty(lg_k)
    hits = 0
    for tier, group in sorted(groups.items()):
        digest = group_digest(group) if store is not None else None
        key = SketchKey(MERGED + tier, digest or "", 0)
        part = None if digest is None else store.recall(tenant, stream, by, lg_k, key, digest)
        if part is not None:
            hits += 1
        else:
            part = sketches.KeySketch.empty(lg_k)
            for b in group:
                part.merge(b.sketch)
            if digest is not None:
                size = len(sketches.serialize(part)) + MEMO_OVERHEAD
                store.remember(tenant, stream, by, lg_k, key, digest, part, size)
        merged.merge(part)
    return merged, hits


def drained(tier: Any, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> pa.Table:
    """Exact per-key `by` (count or sum) of a tier's pieces, read through its RankedAccess lists
    whole: a table (key, <by>) with one row per key. Raises TierUnavailable when the tier is down."""
    ra = tier.ranked_access(tenant, stream, list(pieces), by)
    keys: list[str] = []
    values: list[np.ndarray] = []
    try:
        while not ra.exhausted:
            k, v = ra.sorted_access(DRAIN)
            if not k and not len(v):
                break
            keys += k
            values.append(np.asarray(v, np.float64))
    finally:
        ra.close()
    if not keys:
        col = pa.array([], pa.int64() if by == "count" else pa.float64())
        return pa.table({"key": pa.array([], pa.string()), by: col})
    enc = pa.array(keys, pa.string()).dictionary_encode()
    idx = np.asarray(enc.indices.to_numpy(zero_copy_only=False), np.int64)
    order = np.unique(idx)
    sums = sums_by([idx], np.concatenate(values))
    col = pa.array(np.rint(sums).astype(np.int64)) if by == "count" else pa.array(sums, pa.float64())
    return pa.table({"key": enc.dictionary.take(pa.array(order)), by: col})


def can_drain(tier: Any) -> bool:
    """Whether `tier` reads its exact edges through drained lists (the hot tier: its key aggregate
    computes every aggregate of every key, the lists only the one ranked by)."""
    return getattr(tier, "name", None) == "hot" and hasattr(tier, "ranked_access")
