"""Exact sums in the hot tier: pairs hi + lo, so its answers do not depend on summation order.

Sums are float64; added naively, 1e15 + 0.1 - 1e15 gives 0.125 and a top-K or rank may flip
with the order in which batches, folds and unions added them. The hot tier keeps every sum as a
pair (hi, lo) whose exact sum tracks the exact sum of the raw values to ~eps^2 of their
magnitudes (double-double arithmetic: TwoSum, then renormalised), so:

  - hi, the score of the sum zset, is the float nearest the pair (|lo| <= ulp(hi) / 2): a
    reader of one zset (one bucket, one total, the all-time board) needs nothing else;
  - lo lives in a compensation zset next to the sum zset (`<zp>sumc`, `<g>:total:sumc`,
    `all:sumc`), only for members where it is not 0. Additions of pairs (ingest adding a batch
    to a bucket, a fold of minutes into an hour, a union of buckets for a query) read it.

A batch's per-key sums are pairs too (`pair_reduceat`, below), so 1e16, 1, -1e16 in one request
gives 1 as well. Values on GRID (multiples of 2**-8 below 2**20 in magnitude: counts, integers,
halves, the usual mixed values) add exactly in any order until 2**44: a bucket holding only
such values has no compensation zset and costs nothing extra, its unions stay ZUNIONSTOREs. A
bucket that met a value off the grid gets one (with hot_pairs.lua's PAIR_MARK member, scored by
its largest |lo|), which marks it "inexact": a union of sums that meets one is computed exactly
instead — per member in Lua where the work is bounded (one key, the threshold algorithm's
candidates, a compaction step over minutes), else in Python from the zsets' rows returned by
the same script (`exact_union`, here: an atomic read, numpy work, no Lua per member).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rollups.exactsum import exactly_summable
from rollups.partials import partial_schema

#: scale and bound of the grid whose values add exactly (see the module docstring)
GRID_SCALE = 256.0
GRID_MAX = 2.0 ** 20
#: hot_pairs.lua PAIR_MARK: the compensation zsets' marker member (not UTF-8: never a key)
PAIR_MARK = b"\xff"


def two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s, e) with s = fl(a + b) and a + b = s + e exactly (Knuth), elementwise."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def pair_add(h1, l1, h2, l2) -> tuple[np.ndarray, np.ndarray]:
    """(h1 + l1) + (h2 + l2) as normalised pairs (hi nearest the pair), elementwise."""
    s, e = two_sum(h1, h2)
    return two_sum(s, (l1 + l2) + e)


def on_grid(values: np.ndarray) -> bool:
    """Whether every value is a multiple of 1/GRID_SCALE below GRID_MAX in magnitude."""
    if not len(values):
        return True
    scaled = values * GRID_SCALE
    return bool(np.all(np.abs(values) < GRID_MAX) and np.array_equal(scaled, np.rint(scaled)))


def pair_reduceat(hi: np.ndarray, lo: np.ndarray | None, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per run [starts[i], starts[i+1]) of the pairs (hi, lo): their sum as a normalised pair
    (H, L). `lo` None: all 0. Exact values (exactly_summable, lo 0) take one np.add.reduceat;
    others a pairwise tree over the runs, ceil(log2(longest run)) numpy passes."""
    hi = np.asarray(hi, np.float64)
    if not len(starts):
        return np.zeros(0), np.zeros(0)
    if (lo is None or not lo.any()) and exactly_summable(hi):
        return np.add.reduceat(hi, starts), np.zeros(len(starts))
    lo = np.zeros(len(hi)) if lo is None else np.asarray(lo, np.float64)
    run = np.zeros(len(hi), np.int64)
    run[starts[1:]] = 1
    run = np.cumsum(run)
    h, l = hi, lo
    while len(h) > len(starts):
        first = np.concatenate([[True], run[1:] != run[:-1]])
        offset = np.arange(len(h)) - np.flatnonzero(first)[np.cumsum(first) - 1]
        even = offset % 2 == 0
        has_next = np.zeros(len(h), bool)
        has_next[:-1] = run[1:] == run[:-1]
        pair = even & has_next
        keep = np.flatnonzero(even)
        nh, nl = h[keep].copy(), l[keep].copy()
        at = np.flatnonzero(pair[keep])
        src = keep[at]
        nh[at], nl[at] = pair_add(h[src], l[src], h[src + 1], l[src + 1])
        h, l, run = nh, nl, run[keep]
    return two_sum(h, l)


def exact_union(sources: list) -> tuple[pa.Array, np.ndarray]:
    """The per-key exact sums of sum zsets as hot_query.lua returns them for an exact union:
    `sources`, per zset, [members, scores, comp members, comp scores] (flat lists of bytes, the
    comp zset's PAIR_MARK included). Returns (keys as an Arrow string array, sorted by key bytes,
    values float64: each the float nearest the key's exact sum)."""
    members, his, los = [], [], []
    for rows in sources:
        m, s, cm, cs = rows
        members += m
        his.append(np.array(s, dtype=np.bytes_).astype(np.float64) if s else np.zeros(0))
        los.append(np.zeros(len(m)))
        keep = [i for i, x in enumerate(cm) if x != PAIR_MARK]
        if keep:
            members += [cm[i] for i in keep]
            his.append(np.array([cs[i] for i in keep], dtype=np.bytes_).astype(np.float64))
            los.append(np.zeros(len(keep)))
    if not members:
        return pa.array([], pa.string()), np.zeros(0)
    keys = pa.array(members, pa.binary())
    hi = np.concatenate(his)
    codes = pc.dictionary_encode(keys)
    ids = codes.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    dictionary = codes.dictionary
    order = np.argsort(ids, kind="stable")
    ids, hi = ids[order], hi[order]
    starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    h, l = pair_reduceat(hi, None, starts)
    total = h + l
    by_key = pc.sort_indices(dictionary)  # Redis orders equal scores by member bytes
    return dictionary.take(by_key).cast(pa.string()), total[by_key.to_numpy()]


def exact_partials(sources: list) -> pa.Table:
    """exact_union of `sources` as a partial table (rollups.partials, group "key") for
    rollups.topk: count 1 stands for "has events" (top_k and rank_of by sum read the sum)."""
    keys, values = exact_union(sources)
    n = len(keys)
    return pa.Table.from_arrays([keys, pa.array(np.ones(n, np.int64)), pa.array(values), pa.array(values),
                                 pa.array(values)], schema=partial_schema("key"))


def with_exact_sums(t: pa.Table, sources: list) -> pa.Table:
    """The partial table `t` (group "key") with its sum column replaced by the exact_union of
    `sources` (every key of t is in them)."""
    keys, values = exact_union(sources)
    at = pc.index_in(t["key"], value_set=keys).to_numpy(zero_copy_only=False)
    return t.set_column(t.schema.get_field_index("sum"), "sum", pa.array(values[at]))
