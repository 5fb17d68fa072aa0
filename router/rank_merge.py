"""The rank of a key by a vectorised merge of every tier's key and value columns, and the number
of distinct keys of a plan (the rank's `total_keys`) from every tier's key column.

Each tier reads only what the rank needs (tiers.base.Tier.key_values / distinct_keys: the key
and its count or sum, never min and max), all tiers concurrently. The tables are concatenated
and grouped by key on Arrow dictionary indices (counts: numpy bincount; sums: compensated,
rollups.exactsum, one bincount when every addition is exact), never Python objects per key. The rank is then a
vectorised count of the keys strictly above the key's group of near-equal values
(rollups.topk.ordered: values within REL_TOL of a neighbour tie, then key order), plus the keys of
its group before it by key: only the values within relative SPAN of the key's value are sorted
(numpy), keys only compared; a chain of near-ties reaching out of that band, or `around`
neighbours, order the whole table instead (rollups.topk.ordered, vectorised).

A tier that fails raises TierUnavailable: the caller answers through the planner's full merge,
which reports it (503, or missing segments with allow_partial).
"""
from __future__ import annotations

import concurrent.futures as cf
import time
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rollups.errors import TierUnavailable
from rollups.exactsum import layered_sum
from rollups.partials import empty_partials
from rollups.topk import REL_TOL, RankResult, Ranked, ordered
from router.planner import Outcome, PieceRun, Plan, Planner
from tiers.base import KEY_VALUES_SCHEMA

#: relative half-width of the band of values sorted around the key's value
SPAN = 1e-9


def _by_tier(plan: Plan) -> dict[str, list]:
    out: dict[str, list] = {}
    for pp in plan.pieces:
        out.setdefault(pp.tier, []).append(pp.piece)
    return out


def _per_tier(planner: Planner, plan: Plan, call: Callable) -> tuple[dict[str, object], dict[str, float]]:
    """call(reader, pieces) on every tier of the plan, concurrently on the planner's pool:
    ({tier: result}, {tier: took_ms}). Raises the first error (TierUnavailable; a tier that does
    not answer within the query timeout: TierUnavailable too)."""
    groups = _by_tier(plan)

    def timed(name: str):
        started = time.perf_counter()
        result = call(planner.tiers[name], groups[name])
        return result, (time.perf_counter() - started) * 1000

    if len(groups) == 1:
        name = next(iter(groups))
        result, took = timed(name)
        return {name: result}, {name: took}
    futures = {name: planner.pool.submit(timed, name) for name in groups}
    done = {}
    try:
        for name, fut in futures.items():
            try:
                done[name] = fut.result(timeout=planner.timeout_s)
            except cf.TimeoutError:
                raise TierUnavailable(name, f"The {name} tier did not answer within {planner.timeout_s:g} s.") from None
    finally:
        for fut in futures.values():
            fut.cancel()
    return {n: r for n, (r, _) in done.items()}, {n: t for n, (_, t) in done.items()}


def _key_values(reader, spec, pieces, by: str) -> pa.Table:
    if hasattr(reader, "key_values"):
        return reader.key_values(spec.tenant, spec.stream, pieces, by)
    from tiers.base import Tier  # a stand-in reader without the contract's default
    return Tier.key_values(reader, spec.tenant, spec.stream, pieces, by)


def _distinct_keys(reader, spec, pieces) -> pa.Array:
    if hasattr(reader, "distinct_keys"):
        return reader.distinct_keys(spec.tenant, spec.stream, pieces)
    return _key_values(reader, spec, pieces, "count")["key"].combine_chunks()


def outcome_of(planner: Planner, plan: Plan, took: dict[str, float]) -> Outcome:
    """The Outcome for meta of an answer read per tier (each piece: its tier's time)."""
    runs = [PieceRun(pp.tier, pp.piece, False, took.get(pp.tier)) for pp in plan.pieces]
    if planner.on_piece is not None:
        for run in runs:
            planner.on_piece(run.tier, run.piece.granularity.name, False)
    return Outcome(empty_partials("key"), runs, [])


def count_keys(planner: Planner, plan: Plan) -> int:
    """The number of distinct keys with events in the plan's pieces: every tier's key column
    (Tier.distinct_keys, concurrently), counted distinct on Arrow. Raises TierUnavailable."""
    spec = plan.spec
    found, _ = _per_tier(planner, plan, lambda reader, pieces: _distinct_keys(reader, spec, pieces))
    arrays = [a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in found.values()]
    arrays = [a.cast(pa.string()) for a in arrays if len(a)]
    if len(arrays) == 1:
        return len(arrays[0])
    return pc.count_distinct(pa.concat_arrays(arrays)).as_py() if arrays else 0


def merge_values(tables: Sequence[pa.Table], by: str) -> tuple[pa.Array, np.ndarray]:
    """The per-key totals of key_values tables (each with unique keys): (keys, values float64),
    keys unique. Counts add exactly (integers below 2**53); sums add compensated (rollups.exactsum:
    1e16 + 1 - 1e16 = 1), in one bincount when every addition is exact."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return pa.array([], pa.string()), np.zeros(0)
    if len(tables) == 1:
        t = tables[0]
        return t["key"].combine_chunks().cast(pa.string()), t["value"].to_numpy().astype(np.float64)
    keys = pa.concat_arrays([c.cast(pa.string()) for t in tables for c in t["key"].chunks])
    values = np.concatenate([t["value"].to_numpy().astype(np.float64) for t in tables])
    lows = [t for t in tables if "value_lo" in t.column_names]  # the hot tier's exact sums (rollups.pairsum)
    if lows:
        keys = pa.concat_arrays([keys, *(c.cast(pa.string()) for t in lows for c in t["key"].chunks)])
        values = np.concatenate([values, *(t["value_lo"].to_numpy().astype(np.float64) for t in lows)])
    codes = pc.dictionary_encode(keys)
    ids = codes.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    n = len(codes.dictionary)
    if by == "count" or len(values) == 0:
        totals = np.bincount(ids, weights=values, minlength=n)
    else:  # compensated whatever the signs (low parts: 5e14 + 1/32 + 1/32 is 5e14 summed plainly);
        # one bincount when every addition is exact (rollups.exactsum)
        totals = layered_sum([(ids, values)], n)
    return codes.dictionary, totals


def _apart(a: float, b: float) -> bool:
    """Whether a (>= b) and b are in different groups of near-equal values (rollups.topk.ordered)."""
    return a - b > REL_TOL * max(abs(a), abs(b))


def rank_in(keys: pa.Array, values: np.ndarray, key: str, around: int = 0) -> RankResult:
    """The rank of `key` among (keys unique, values): as rollups.topk.rank_of on the same totals
    (RankResult(None, None, n, []) for a key not among them)."""
    n = len(values)
    at = pc.index(keys, pa.scalar(key, pa.string())).as_py() if n else -1
    if at < 0:
        return RankResult(None, None, n, [])
    v = float(values[at])
    if around <= 0:
        rank = _band_rank(keys, values, key, v)
        if rank is not None:
            return RankResult(rank, v, n, [Ranked(rank, key, v)])
    t = ordered(pa.table({"key": keys, "value": pa.array(values, pa.float64())}))
    idx = pc.index(t["key"], pa.scalar(key, pa.string())).as_py()
    lo, hi = max(0, idx - around), min(n, idx + around + 1)
    window = t.slice(lo, hi - lo)
    near = [Ranked(lo + i + 1, k, x) for i, (k, x) in
            enumerate(zip(window["key"].to_pylist(), window["value"].to_pylist()))]
    return RankResult(idx + 1, v, n, near)


def _band_rank(keys: pa.Array, values: np.ndarray, key: str, v: float) -> int | None:
    """The rank of `key` (value v): the keys above its group of near-equal values plus those of
    the group before it by key, counted vectorised (no string sort). The groups are found on the
    values within relative SPAN of v, sorted; None when the key's group may chain on to a value
    outside that band (the caller orders the whole table)."""
    lo, hi = v - SPAN * abs(v), v + SPAN * abs(v)
    above = values > hi
    below = values < lo
    band = np.sort(values[~(above | below)])[::-1]
    if len(band) > 1:
        gap = band[:-1] - band[1:]
        breaks = np.flatnonzero(gap > REL_TOL * np.maximum(np.abs(band[:-1]), np.abs(band[1:])))
    else:
        breaks = np.zeros(0, np.int64)
    i = int(np.searchsorted(-band, -v, side="left"))  # the first position of v
    before, after = breaks[breaks < i], breaks[breaks >= i]
    top = int(before[-1]) + 1 if len(before) else 0
    bottom = int(after[0]) if len(after) else len(band) - 1
    gmax, gmin = float(band[top]), float(band[bottom])
    # the group must not chain on to a value outside the band
    if top == 0 and above.any() and not _apart(float(values[above].min()), gmax):
        return None
    if bottom == len(band) - 1 and below.any() and not _apart(gmin, float(values[below].max())):
        return None
    group = (values >= gmin) & (values <= gmax)
    ahead = pc.sum(pc.less(pc.filter(keys, pa.array(group)), pa.scalar(key, pa.string()))).as_py() or 0
    return int(np.count_nonzero(values > gmax)) + int(ahead) + 1


def merged_rank(planner: Planner, plan: Plan, key: str, by: str, around: int) -> tuple[RankResult, Outcome]:
    """The exact rank of `key` over the plan by the vectorised merge of every tier's key_values:
    (RankResult as rollups.topk.rank_of, the outcome for meta). Raises TierUnavailable."""
    spec = plan.spec
    if not plan.pieces:
        return RankResult(None, None, 0, []), outcome_of(planner, plan, {})
    found, took = _per_tier(planner, plan, lambda reader, pieces: _key_values(reader, spec, pieces, by))
    keys, values = merge_values([t for t in found.values()], by)
    return rank_in(keys, values, key, around), outcome_of(planner, plan, took)


__all__ = ["KEY_VALUES_SCHEMA", "count_keys", "merge_values", "merged_rank", "rank_in"]
