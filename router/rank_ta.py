"""The rank of a key across tiers by sorted access down to its value, the full merge beyond.

A key's rank is one plus the number of keys before it in the API's order (rollups.topk.ordered:
value descending, values within REL_TOL of a neighbour one group, then key ascending). With every
value >= 0 (counts; sums of non-negative values) the keys before it all total at least about its
value, and sorted access finds them all without reading the tail (threshold-algorithm bounds, as
rollups.threshold):
  1. random access over every tier gives the key's exact total v;
  2. sorted access on every tier's lists until the sum of their frontiers F is below
     lo = v / (1 + SPAN): a key no list has returned yet totals <= F < lo. A key returned with
     partial sum L (a lower bound of its total) and L + F (an upper bound) is before the key when
     L > hi = v * (1 + SPAN), out of reach when L + F < lo, and looked up exactly otherwise;
  3. the exact totals in [lo, hi] are ordered with the key (rollups.topk.ordered); the group of
     near-equal values holding it must lie well inside the window (otherwise — a chain of
     near-ties longer than SPAN — the merge answers).
`around` neighbours: the nearest keys before it are looked up exactly in increasing order of L
until the nearest `around` are proven; the ones after it by sorted access further down.
`total_keys` needs every key's presence: every tier's key column only (Tier.distinct_keys), counted
distinct on Arrow (router/rank_merge.py), run concurrently with the sorted access.
Used only with THRESHOLD on (see there; by default every tier's key and value columns are merged,
router/rank_merge.py). It returns None — the merge answers — when a value can be negative, when
the sum of a key is 0 (no way to tell it from an absent key without its count), when a tier fails, or
when sorted access has read more than `max_keys` distinct keys (a rank far down the list): then
every tier's key and value columns only are merged vectorised (router/rank_merge.py).
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import pyarrow as pa

from rollups.exactsum import column_fsum
from rollups.errors import TierUnavailable
from rollups.threshold import FIRST_CHUNK, MAX_CHUNK
from rollups.topk import REL_TOL, Ranked, RankResult, ordered, rank_of
from router import ranking_cache
from router.planner import Outcome, Plan, Planner
from router.rank_merge import count_keys, merged_rank
from router.rank_pieces import fast_rank
from router.ranking import concurrently, opened, ranked_outcome

#: the sorted access gives up (the full merge answers) after this many distinct keys read (or
#: twice as many entries: many lists each read down to the key's share of the value)
MAX_KEYS = 10_000
#: Whether rank tries the sorted access first (off: the merge answers every rank). The exact
#: total_keys needs every tier's key column whatever the rank, and reading the value beside the
#: key costs little more (router/rank_merge.py), so the merge is never much slower than the
#: sorted access plus the key count, and the sorted access alone is cheap only at the very top:
#: with L lists (buckets, window unions, files) it reads each down to about the key's value / L,
#: some L * L * rank entries (rank 1k over ~60 lists: millions, far past MAX_KEYS).
THRESHOLD = False
#: relative half-width of the window of exact totals around the key's value
SPAN = 1e-9
_EDGE = 4 * REL_TOL
# total_keys is counted on its own threads (it reads pieces on the planner's pool: never nest)
_COUNTING = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rank-count")


def ranked_rank(planner: Planner, plan: Plan, key: str, by: str, around: int, *,
                allow_partial: bool, max_keys: int = MAX_KEYS) -> tuple[RankResult, Outcome, dict]:
    """The exact rank of `key` over the plan: (RankResult as rollups.topk.rank_of, the outcome for
    meta, {"method": "threshold" | "merge", "cached": bool, "read", "touched", "seen"}), answered
    from the results cache when it holds the answer for the pieces' current data versions
    (router/ranking_cache.py).

    Raises what Planner.execute raises (TierUnavailable unless allow_partial)."""
    return ranking_cache.cached(planner, plan, ("rank", by, key, around),
                                lambda: _ranked_rank(planner, plan, key, by, around,
                                                     allow_partial=allow_partial, max_keys=max_keys),
                                ranking_cache.encode_rank, ranking_cache.decode_rank)


def _ranked_rank(planner: Planner, plan: Plan, key: str, by: str, around: int, *,
                 allow_partial: bool, max_keys: int) -> tuple[RankResult, Outcome, dict]:
    info: dict = {"method": "threshold"}
    if THRESHOLD and not plan.absent and plan.pieces and by in ("count", "sum"):
        found = total = None
        with opened(planner, plan, by) as accesses:
            if accesses is not None:
                counted = _COUNTING.submit(count_keys, planner, plan)
                try:
                    found = _rank(list(accesses.values()), key, by, around, max_keys, concurrently(planner), info)
                    total = counted.result(timeout=planner.timeout_s) if found is not None else None
                except TierUnavailable:
                    found = None
                finally:
                    if found is None:
                        counted.cancel()
        if found is not None and total is not None:
            rank, value, neighbours = found
            result = RankResult(rank, value, total, neighbours) if rank else RankResult(None, None, total, [])
            return result, ranked_outcome(planner, plan, accesses), info
    if not plan.absent and by in ("count", "sum"):
        fast = fast_rank(planner, plan, key, by, around)  # merged on key ids (router/rank_pieces.py)
        if fast is not None:
            return fast[0], fast[1], {**info, **fast[2]}
    if not plan.absent and by in ("count", "sum"):
        try:  # every tier's key and value columns, merged vectorised (router/rank_merge.py)
            result, outcome = merged_rank(planner, plan, key, by, around)
            return result, outcome, {**info, "method": "merge"}
        except TierUnavailable:
            pass  # the planner's full merge reports it (503, or missing with allow_partial)
    outcome = planner.execute(plan, allow_partial=allow_partial)
    return rank_of(outcome.partials, key, by, around), outcome, {**info, "method": "merge"}


class _Reader:
    """Sorted access over every tier in rounds of growing chunks: `low` (the sum of a key's values
    read so far: a lower bound of its total), `bound` (F: no key totals more than low + F), and
    the exact totals looked up so far (`known`)."""

    def __init__(self, accesses: Sequence, run_all):
        self.accesses, self.run_all = accesses, run_all
        self.low: dict[str, float] = {}
        self.known: dict[str, float] = {}
        self.chunk = FIRST_CHUNK
        self.read = 0
        self.bound = math.inf

    @property
    def exhausted(self) -> bool:
        return all(a.exhausted for a in self.accesses)

    def settle(self, floor: float, hi: float, max_keys: int) -> bool:
        """Read until no unread key can total >= floor, then look up every key read that can
        (low + F >= floor) and is not surely above hi; False when over the budget."""
        while not (self.exhausted or self.bound < floor):
            if len(self.low) > max_keys or self.read > 2 * max_keys:
                return False
            todo = [a for a in self.accesses if not a.exhausted]
            for keys, values in self.run_all([lambda a=a: a.sorted_access(self.chunk) for a in todo]):
                self.read += len(keys)
                for k, v in zip(keys, values.tolist()):
                    self.low[k] = self.low.get(k, 0.0) + v
            self.bound = math.fsum(a.frontier() for a in self.accesses)
            self.chunk = min(self.chunk * 2, MAX_CHUNK, max(FIRST_CHUNK, max_keys // 8))
        if self.exhausted:
            self.bound = 0.0
        self.exact([k for k, low in self.low.items()
                    if k not in self.known and low <= hi and low + self.bound >= floor])
        return True

    def exact(self, keys: list[str]) -> dict[str, float]:
        if keys:
            parts = np.vstack(self.run_all([lambda a=a: a.exact_parts(keys) for a in self.accesses]))
            self.known.update(zip(keys, column_fsum(parts).tolist()))
        return {k: self.known[k] for k in keys}


def _ordered(values: dict[str, float]) -> tuple[list[str], list[float]]:
    t = ordered(pa.table({"key": pa.array(list(values), pa.string()),
                          "value": pa.array(list(values.values()), pa.float64())}))
    return t["key"].to_pylist(), t["value"].to_pylist()


def _rank(accesses: Sequence, key: str, by: str, around: int, max_keys: int, run_all,
          info: dict) -> tuple[int | None, float | None, list[Ranked]] | None:
    if any(a.min_value < 0 for a in accesses):
        return None
    r = _Reader(accesses, run_all)
    v = r.exact([key])[key]
    if v <= 0:  # a count of 0: no events; a sum of 0 may have events (the merge tells)
        return (None, None, []) if v == 0 and by == "count" else None
    lo, hi = v / (1 + SPAN), v * (1 + SPAN)
    if not r.settle(lo, hi, max_keys):
        return None
    above = [k for k, low in r.low.items() if low > hi and k != key]
    surely = set(above)
    window = {k: x for k, x in r.known.items() if lo <= x and k not in surely}
    keys, values = _ordered(window)
    i = keys.index(key)
    top, bottom = _group(values, i)
    # the key's group of near-equal values must lie inside the window, away from its edges
    if values[top] * (1 + _EDGE) >= hi or values[bottom] <= lo * (1 + _EDGE):
        return None
    rank = len(above) + i + 1
    info.update(read=r.read, touched=len(r.known), seen=len(r.low))
    if around <= 0:
        return rank, v, [Ranked(rank, key, v)]  # as rank_of: the key itself
    before = _before(r, above, keys[:top], around)
    after = _after(r, lo, hi, min(values[top:bottom + 1]), set(keys[top:bottom + 1]), around, max_keys)
    if after is None:
        return None
    group = list(zip(keys[top:bottom + 1], values[top:bottom + 1]))
    near = before + group + after
    at = len(before) + (i - top)
    lo_i = max(0, at - around)
    return rank, v, [Ranked(rank - at + j, k, x) for j, (k, x) in enumerate(near[lo_i:at + around + 1], lo_i)]


def _group(values: list[float], i: int) -> tuple[int, int]:
    """First and last index of the group of near-equal values (rollups.topk.ordered) holding i."""
    def apart(a: float, b: float) -> bool:
        return a - b > REL_TOL * max(abs(a), abs(b))
    top = bottom = i
    while top > 0 and not apart(values[top - 1], values[top]):
        top -= 1
    while bottom + 1 < len(values) and not apart(values[bottom], values[bottom + 1]):
        bottom += 1
    return top, bottom


def _before(r: _Reader, above: list[str], near: list[str], around: int) -> list[tuple[str, float]]:
    """The `around` keys ranked just before the key's group, in order (fewer at the top).

    `near`: the keys of the window before the group (exact); `above`: keys surely before it,
    looked up nearest first (by their lower bound) until no other can come between."""
    rest = sorted(above, key=r.low.__getitem__)
    chosen = {k: r.known[k] for k in near}
    pos = 0
    while True:
        keys, values = _ordered(chosen) if chosen else ([], [])
        first = max(0, len(keys) - around)
        if pos >= len(rest):
            break
        if len(keys) >= around and r.low[rest[pos]] > values[_group(values, first)[0]] * (1 + _EDGE):
            break
        batch = rest[pos:pos + max(2 * around, 64)]
        pos += len(batch)
        chosen.update(r.exact(batch))
    return list(zip(keys[first:], values[first:]))


def _after(r: _Reader, lo: float, hi: float, bottom: float, group: set[str], around: int,
           max_keys: int) -> list[tuple[str, float]] | None:
    """The `around` keys ranked just after the key's `group` (value < `bottom`), in order (fewer at
    the end), or None over the budget. Every key totalling >= floor is known after settle(floor)."""
    floor = lo
    while True:
        done = r.exhausted and r.bound == 0.0
        if done:  # every key has been read: know them all
            r.settle(0.0, hi, max_keys)
        below = {k: x for k, x in r.known.items() if x < bottom and k not in group and (done or x >= floor)}
        keys, values = _ordered(below) if below else ([], [])
        if done:
            break
        if len(keys) >= around and values[_group(values, around - 1)[1]] > floor * (1 + _EDGE):
            break
        # next floor: low enough to know the best around + 1 keys read below the group (their
        # partial sums bound their totals from below), else a quarter of the last one
        lows = sorted((low for k, low in r.low.items() if low < bottom and (k not in r.known or r.known[k] < floor)),
                      reverse=True)
        guess = lows[around] * (1 - SPAN) if len(lows) > around else 0.0
        floor = max(guess, floor / 4) if guess < floor and floor > 1e-300 else floor / 4
        if not r.settle(floor, hi, max_keys):
            return None
    return list(zip(keys[:around], values[:around]))
