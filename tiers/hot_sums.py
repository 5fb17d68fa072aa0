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

A batch's per-key sums are pairs too (rollups.pairsum.pair_reduceat), so 1e16, 1, -1e16 in one request
gives 1 as well. Values on GRID (multiples of 2**-8 below 2**20 in magnitude: counts, integers,
halves, the usual mixed values) add exactly in any order until 2**44: a bucket holding only
such values has no compensation zset and costs nothing extra, its unions stay ZUNIONSTOREs. A
bucket that met a value off the grid gets one (with hot_pairs.lua's PAIR_MARK member, scored by
its largest |lo|), which marks it "inexact": a union of sums that meets one is computed exactly
instead — per member in Lua where the work is bounded (one key, the threshold algorithm's
candidates, a compaction step over minutes), else in Python from the zsets' rows returned by
the same script (`exact_union`, here: an atomic read, numpy work, no Lua per member).

Reads return the low parts where the router merges further (`sum_lo` of aggregate's tables,
`value_lo` of key_values; rollups.partials.merge_partials keeps them), so a series point or a
rank over several hot buckets is exact too. Costs and limits: no materialised window union
(hot_window.lua) holds pairs — runs meeting an inexact bucket are read bucket by bucket (the
exact union above costs several times a ZUNIONSTORE); an hour with pairs is not folded into its
day (hot_compact.lua); the grid's exactness assumes a union's |sums| stay below 2**44.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rollups import pairsum
from rollups.pairsum import pair_add
from rollups.partials import partial_schema

#: scale and bound of the grid whose values add exactly (see the module docstring)
GRID_SCALE = 256.0
GRID_MAX = 2.0 ** 20
#: hot_pairs.lua PAIR_MARK: the compensation zsets' marker member (not UTF-8: never a key)
PAIR_MARK = b"\xff"


def off_grid(values: np.ndarray) -> np.ndarray:
    """Per value: not a multiple of 1/GRID_SCALE below GRID_MAX in magnitude (hot_pairs.lua
    keeps such a bucket's sums as pairs)."""
    return pairsum.off_grid(values, GRID_MAX, GRID_SCALE)


def exact_union(sources: list) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """The per-key exact sums of sum zsets as hot_query.lua returns them for an exact union:
    `sources`, per zset, [its rows, its comp zset's rows] (each member, score, ... as ZRANGE
    WITHSCORES gives them, joined by NUL: keys hold none; the comp zset's PAIR_MARK included).
    Returns (keys as an Arrow string array sorted by key bytes, hi, lo: float64 pairs, hi the
    float nearest each key's exact sum). Vectorised: one pass of pair additions per zset (a key
    is once in each), no sort of the rows."""
    blobs = [rows for rows, _ in sources if rows] + [comp for _, comp in sources if comp]
    if not blobs:
        return pa.array([], pa.string()), np.zeros(0), np.zeros(0)
    # one parse of every zset's rows (a parse costs ~0.07 ms however small its input: per zset,
    # that was most of a 25-minute union), then each zset's rows by its count of NULs
    members, values = _rows(b"\0".join(blobs))
    codes = pc.dictionary_encode(members)
    ids = codes.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    n = len(codes.dictionary)
    hi, lo = np.zeros(n), np.zeros(n)
    at = 0
    for blob in blobs:
        rows = (blob.count(b"\0") + 1) // 2
        idx = ids[at:at + rows]
        hi[idx], lo[idx] = pair_add(hi[idx], lo[idx], values[at:at + rows], 0.0)
        at += rows
    real = pc.not_equal(codes.dictionary, pa.scalar(PAIR_MARK, pa.binary()))
    keys = pc.filter(codes.dictionary, real)
    keep = np.flatnonzero(real.to_numpy(zero_copy_only=False))
    by_key = pc.sort_indices(keys).to_numpy()  # Redis orders equal scores by member bytes
    return keys.take(pa.array(by_key)).cast(pa.string()), hi[keep][by_key], lo[keep][by_key]


def _rows(data: bytes) -> tuple[pa.Array, np.ndarray]:
    """(members as binary, scores float64) of NUL-joined ZRANGE WITHSCORES rows (b"" for none)."""
    if not data:
        return pa.array([], pa.binary()), np.zeros(0)
    buf = np.frombuffer(data, np.uint8)
    cuts = np.flatnonzero(buf == 0)
    ends = np.append(cuts, len(buf)) - np.arange(len(cuts) + 1)
    offsets = np.concatenate([[0], ends]).astype(np.int64)
    body = data.replace(b"\0", b"")
    rows = pa.Array.from_buffers(pa.large_binary(), len(offsets) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(body)])
    members = rows.take(pa.array(np.arange(0, len(rows), 2))).cast(pa.binary())
    scores = rows.take(pa.array(np.arange(1, len(rows), 2))).cast(pa.large_string()).cast(pa.float64())
    return members, scores.to_numpy(zero_copy_only=False)


def exact_partials(sources: list) -> pa.Table:
    """exact_union of `sources` as a partial table (rollups.partials, group "key") for
    rollups.topk: count 1 stands for "has events" (top_k and rank_of by sum read the sum)."""
    keys, hi, _ = exact_union(sources)
    n = len(keys)
    return pa.Table.from_arrays([keys, pa.array(np.ones(n, np.int64)), pa.array(hi), pa.array(hi), pa.array(hi)],
                                schema=partial_schema("key"))


def with_exact_sums(t: pa.Table, sources: list) -> pa.Table:
    """The partial table `t` (group "key") with its sum column replaced by the exact_union of
    `sources` (every key of t is in them), and their low parts as `sum_lo` when any is not 0."""
    keys, hi, lo = exact_union(sources)
    at = pc.index_in(t["key"], value_set=keys).to_numpy(zero_copy_only=False)
    t = t.set_column(t.schema.get_field_index("sum"), "sum", pa.array(hi[at]))
    return with_lows(t, "sum_lo", lo[at])


def with_lows(t: pa.Table, name: str, lows) -> pa.Table:
    """t with the column `name` of low parts (rollups.pairsum) appended when any is not 0."""
    lows = np.asarray(lows, np.float64)
    return t.append_column(name, pa.array(lows)) if len(lows) and lows.any() else t


def concat_with_lows(tables: list[pa.Table], name: str) -> pa.Table:
    """pa.concat_tables of tables of which some carry the low-parts column `name` (0 for the others)."""
    if any(name in t.column_names for t in tables):
        tables = [t if name in t.column_names else t.append_column(name, pa.array(np.zeros(t.num_rows))) for t in tables]
    return pa.concat_tables(tables)
