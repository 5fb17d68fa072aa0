"""Top-K across tiers by the threshold algorithm (rollups.threshold) over every tier's
sorted and random access (tiers.base.RankedAccess), with the full merge as the fallback.

The plan's pieces are grouped by tier; each tier opens one RankedAccess over its pieces (all
tiers concurrently), TA reads them in rounds and proves the answer exact. When TA declines
(the k-th total is negative, the data is flat), every key's total is merged on integer key ids with
each closed piece's (id, value) column cached by data version (router/rank_pieces.fast_top_k,
the path rank takes); when that cannot answer either (a tier fails mid-way, no warm tier) the
planner's full merge answers: it reads every piece (through the results cache), merges the
partials vectorised (Arrow group_by, compensated sums) and handles unavailable tiers and
allow_partial.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np

from rollups.errors import TierUnavailable
from rollups.partials import empty_partials
from rollups.threshold import threshold_top_k
from rollups.topk import Ranked, top_k
from router import ranked_chunks, ranking_cache
from router.planner import Outcome, PieceRun, Plan, Planner
from router.rank_pieces import fast_top_k, few_keys
from tiers.base import RankedAccess
from tiers.ranked_access import TableAccess


class _Timed:
    """A RankedAccess that adds up the time spent in its calls."""

    def __init__(self, access: RankedAccess, opened_ms: float):
        self.access = access
        self.min_value = access.min_value
        self.took_ms = opened_ms

    def _timed(self, call, *args):
        started = time.perf_counter()
        try:
            return call(*args)
        finally:
            self.took_ms += (time.perf_counter() - started) * 1000

    def sorted_access(self, n: int) -> tuple[list[str], np.ndarray]:
        return self._timed(self.access.sorted_access, n)

    def frontier(self) -> float:
        return self.access.frontier()

    @property
    def exhausted(self) -> bool:
        return self.access.exhausted

    def exact(self, keys: Sequence[str]) -> np.ndarray:
        return self._timed(self.access.exact, keys)

    def exact_parts(self, keys: Sequence[str]) -> np.ndarray:
        return self._timed(self.access.exact_parts, keys)


def concurrently(planner: Planner):
    """run_all for rollups.threshold: one call per tier, on the planner's pool when several."""
    def run_all(calls):
        if len(calls) < 2:
            return [call() for call in calls]
        futures = [planner.pool.submit(call) for call in calls]
        return [fut.result(timeout=planner.timeout_s) for fut in futures]
    return run_all


def ranked_top_k(planner: Planner, plan: Plan, k: int, by: str, *,
                 allow_partial: bool) -> tuple[list[Ranked], Outcome, dict]:
    """The exact top k of the plan: (ranked, outcome for meta, {"method": "threshold" | "merge",
    "cached": bool, ...}), answered from the results cache when it holds the answer for the
    pieces' current data versions (router/ranking_cache.py).

    Raises what Planner.execute raises (TierUnavailable unless allow_partial)."""
    return ranking_cache.cached(planner, plan, ("top_k", by, k),
                                lambda: _top_k(planner, plan, k, by, allow_partial=allow_partial),
                                ranking_cache.encode_top_k, ranking_cache.decode_top_k)


def _top_k(planner: Planner, plan: Plan, k: int, by: str, *,
           allow_partial: bool) -> tuple[list[Ranked], Outcome, dict]:
    keys = None if plan.absent else few_keys(planner, plan, by)
    if keys is not None:  # a small dictionary: the id merge, its pieces cached (rank_pieces.few_keys)
        fast = fast_top_k(planner, plan, k, by)
        if fast is not None:
            return fast[0], fast[1], {"method": "merge", "keys": keys, **fast[2]}
    info: dict = {"method": "threshold"}
    ranked = None if plan.absent else _threshold(planner, plan, k, by, info)
    if ranked is not None:
        return ranked, info.pop("outcome"), info
    info = {**{k_: v for k_, v in info.items() if k_ != "outcome"}, "method": "merge"}
    fast = fast_top_k(planner, plan, k, by)  # every key merged on ids, pieces cached by version
    if fast is not None:
        return fast[0], fast[1], {**info, **fast[2]}
    outcome = planner.execute(plan, allow_partial=allow_partial)
    return top_k(outcome.partials, k, by), outcome, info


def _threshold(planner: Planner, plan: Plan, k: int, by: str, info: dict) -> list[Ranked] | None:
    if not plan.pieces:
        return []
    with opened(planner, plan, by) as accesses:
        if accesses is None:
            return None  # the full merge reports it (503, or missing with allow_partial)
        try:
            ranked = threshold_top_k(list(accesses.values()), k, stats=info, run_all=concurrently(planner))
        except TierUnavailable:
            return None
    if ranked is None:
        return None
    info["outcome"] = ranked_outcome(planner, plan, accesses)
    return ranked


@contextmanager
def opened(planner: Planner, plan: Plan, by: str) -> Iterator[dict[str, _Timed] | None]:
    """One timed RankedAccess per tier of the plan's pieces (opened concurrently, by tier name),
    or None when a tier is unavailable; every access is closed on exit."""
    spec = plan.spec
    by_tier: dict[str, list] = {}
    for pp in plan.pieces:
        by_tier.setdefault(pp.tier, []).append(pp.piece)

    def open_access(name: str) -> _Timed:
        started = time.perf_counter()
        reader = planner.tiers[name]
        if hasattr(reader, "ranked_access"):
            access = ranked_chunks.wrap(planner, reader, name, spec.tenant, spec.stream, by_tier[name], by,
                                        lambda: reader.ranked_access(spec.tenant, spec.stream, by_tier[name], by))
        else:  # a reader without the contract's default (a stand-in): serve it from its partials
            access = TableAccess.of(reader.aggregate(spec.tenant, spec.stream, by_tier[name], "key"), by)
        return _Timed(access, (time.perf_counter() - started) * 1000)

    if len(by_tier) == 1:  # one tier (a hot "last 24 h"): opened here, no hop through the pool
        name = next(iter(by_tier))
        try:
            access = open_access(name)
        except TierUnavailable:
            yield None
            return
        try:
            yield {name: access}
        finally:
            access.access.close()
        return
    futures = {name: planner.pool.submit(open_access, name) for name in by_tier}
    accesses: dict[str, _Timed] = {}
    try:
        failed = False
        for name, fut in futures.items():
            try:
                accesses[name] = fut.result(timeout=planner.timeout_s)
            except TierUnavailable:
                failed = True
                break
        yield None if failed else accesses
    finally:
        for name, fut in futures.items():
            if name not in accesses and not fut.cancel() and fut.exception() is None:
                fut.result().access.close()
        for acc in accesses.values():
            acc.access.close()


def ranked_outcome(planner: Planner, plan: Plan, accesses: dict[str, _Timed]) -> Outcome:
    """The Outcome for meta of an answer read through `accesses` (each piece: its tier's time)."""
    runs = [PieceRun(pp.tier, pp.piece, False, accesses[pp.tier].took_ms) for pp in plan.pieces]
    if planner.on_piece is not None:
        for run in runs:
            planner.on_piece(run.tier, run.piece.granularity.name, False)
    return Outcome(empty_partials("key"), runs, [])
