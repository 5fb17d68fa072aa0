"""Exact top-K across tiers by the threshold algorithm (TA) of Fagin, Lotem and Naor ("Optimal
aggregation algorithms for middleware", PODS 2001; J. Comput. Syst. Sci. 66, 2003).

Each tier offers sorted access (its per-key partials, best first, in one or more lists) and
random access (the exact partial of given keys): tiers.base.RankedAccess. A key's total is the
sum of its partials over all tiers. TA reads every list in rounds of growing chunks; every key
seen for the first time gets its exact total by random access to every tier; after each round,
F = the sum over all lists of the value where sorted access stopped. With every value >= 0
(counts; sums of non-negative values) a key not seen yet totals at most F, so once the k-th best
exact total exceeds F (by more than the ordering tolerance, rollups.topk.REL_TOL: an unseen key
then cannot even tie) the seen keys hold the exact top k, ranked as rollups.topk ranks.

Pure: no I/O beyond the accesses it is given. Returns None (the caller merges every key) when a
value can be negative or when the data is so flat that TA would touch too many keys.
"""
from __future__ import annotations

import math
from typing import Protocol, Sequence

import numpy as np

from rollups.topk import REL_TOL, Ranked, rank_order

#: TA gives up (the caller does the full merge) after touching this many distinct keys
MAX_TOUCHED = 60_000
FIRST_CHUNK = 128
MAX_CHUNK = 16_384
# an unseen key must be out of reach even as a tie within the ordering tolerance, allowing for
# the rounding of F and of the totals (a few ulps of each)
_SLACK = 4 * REL_TOL


class Access(Protocol):  # tiers.base.RankedAccess, structurally
    min_value: float
    exhausted: bool

    def sorted_access(self, n: int) -> tuple[list[str], np.ndarray]: ...
    def frontier(self) -> float: ...
    def exact(self, keys: Sequence[str]) -> np.ndarray: ...


def threshold_top_k(accesses: Sequence[Access], k: int, *, max_touched: int = MAX_TOUCHED,
                    stats: dict | None = None) -> list[Ranked] | None:
    """The exact top k keys over the sum of the accesses' partials, or None (do the full merge).

    Ordering as rollups.topk.top_k. `stats`, when given, receives rounds, touched (distinct keys
    given random access) and read (entries read by sorted access)."""
    if k <= 0:
        return []
    if any(a.min_value < 0 for a in accesses):
        return None
    seen: dict[str, float] = {}
    chunk = max(FIRST_CHUNK, k)
    rounds = read = 0
    while True:
        rounds += 1
        new: dict[str, None] = {}
        for a in accesses:
            if a.exhausted:
                continue
            keys, _ = a.sorted_access(chunk)
            read += len(keys)
            for key in keys:
                if key not in seen:
                    new[key] = None
        if new:
            fresh = list(new)
            parts = np.vstack([a.exact(fresh) for a in accesses])
            for key, column in zip(fresh, parts.T):
                seen[key] = math.fsum(column)
        bound = math.fsum(a.frontier() for a in accesses)
        done = all(a.exhausted for a in accesses)
        if len(seen) >= k and not done:
            values = np.fromiter(seen.values(), np.float64, len(seen))
            kth = float(np.partition(values, len(values) - k)[len(values) - k])
            done = kth > bound * (1 + _SLACK) and kth > 0
        if stats is not None:
            stats.update(rounds=rounds, touched=len(seen), read=read)
        if done:
            break
        if len(seen) > max_touched:
            return None
        chunk = min(chunk * 2, MAX_CHUNK)
    keys = list(seen)
    values = list(seen.values())
    order = rank_order(keys, values)[:k]
    return [Ranked(r + 1, keys[i], values[i]) for r, i in enumerate(order)]
