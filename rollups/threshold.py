"""Exact top-K across tiers by the threshold algorithm (TA) of Fagin, Lotem and Naor ("Optimal
aggregation algorithms for middleware", PODS 2001; J. Comput. Syst. Sci. 66, 2003).

Each tier offers sorted access (its per-key partials, best first, in one or more lists) and
random access (the exact partial of given keys): tiers.base.RankedAccess. A key's total is the
sum of its partials over all tiers. TA reads every list in rounds of growing chunks; every key
seen for the first time gets its exact total by random access to every tier; after each round,
F = the sum over all lists of max(0, the value where sorted access stopped) — a list that does
not hold a key adds 0 to its total, so whatever the signs of the values, a key not seen yet
totals at most F. Once the k-th best exact total exceeds F (by more than the ordering tolerance,
rollups.topk.REL_TOL: an unseen key then cannot even tie) the seen keys hold the exact top k,
ranked as rollups.topk ranks.

Negative values (sums): F stops falling at 0, so TA proves a top k whose k-th total is > 0;
when every list's next value is <= 0 and the k-th total is < 0, every key could matter and
TA hands over to the full merge at once.

Pure: no I/O beyond the accesses it is given. Returns None (the caller merges every key) when
the k-th total is negative or when the data is so flat that TA would touch too many keys.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from rollups.exactsum import column_fsum
from rollups.topk import REL_TOL, Ranked, rank_order

#: TA gives up (the caller does the full merge) after touching this many distinct keys
MAX_TOUCHED = 60_000
FIRST_CHUNK = 32
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
    def exact_parts(self, keys: Sequence[str]) -> np.ndarray: ...


def _in_turn(calls: list[Callable[[], Any]]) -> list[Any]:
    return [call() for call in calls]


def threshold_top_k(accesses: Sequence[Access], k: int, *, max_touched: int = MAX_TOUCHED,
                    stats: dict | None = None,
                    run_all: Callable[[list[Callable[[], Any]]], list[Any]] = _in_turn) -> list[Ranked] | None:
    """The exact top k keys over the sum of the accesses' partials, or None (do the full merge).

    Random access is spent only where it can matter (Fagin et al.'s combined algorithm): a key
    read by sorted access but not looked up yet has a lower bound L (its values read so far) and
    an upper bound L + F; it is looked up once L + F reaches the k-th best exact total (the best
    2k by L are looked up first, to have one). It stops when the k-th best exact total beats F and
    every key not looked up has L + F below it (both beyond the ordering tolerance).

    Ordering as rollups.topk.top_k. `stats`, when given, receives rounds, touched (keys given
    random access), read (entries read by sorted access) and seen (distinct keys read).
    `run_all(calls)` runs one call per access and returns their results in order (the router
    runs them concurrently: the tiers are separate services)."""
    if k <= 0:
        return []
    exact: dict[str, float] = {}
    pending: dict[str, float] = {}
    chunk = max(FIRST_CHUNK, k)
    rounds = read = 0

    def look_up(keys: list[str]) -> None:
        if not keys:
            return
        parts = np.vstack(run_all([lambda a=a: a.exact_parts(keys) for a in accesses]))
        for key, total in zip(keys, column_fsum(parts).tolist()):
            exact[key] = total
            pending.pop(key, None)

    while True:
        rounds += 1
        open_ = [a for a in accesses if not a.exhausted]
        for keys, values in run_all([lambda a=a: a.sorted_access(chunk) for a in open_]):
            read += len(keys)
            for key, v in zip(keys, values.tolist()):
                if key not in exact:
                    pending[key] = pending.get(key, 0.0) + v
        bound = math.fsum(a.frontier() for a in accesses)
        exhausted = all(a.exhausted for a in accesses)
        if len(exact) < k and pending:  # the best by what was read so far, to have a k-th total
            best = sorted(pending, key=pending.__getitem__, reverse=True)[:2 * k]
            look_up(best)
        kth = _kth(exact, k)
        if bound <= 0 and not exhausted and not kth > 0:
            # every entry > 0 has been read, so a key totalling > 0 has read more than 0: know them
            # all, to tell whether the k-th total is negative (with a k-th total > 0 already known,
            # a key's unread entries are <= 0 and `wanted` below asks only keys read up to it)
            look_up([key for key, low in pending.items() if low > 0])
            kth = _kth(exact, k)
            if -math.inf < kth < 0:
                if stats is not None:
                    stats.update(rounds=rounds, touched=len(exact), read=read, seen=len(exact) + len(pending))
                return None  # the k-th total is negative: any key may matter (the full merge)
        reach = kth / (1 + _SLACK) if kth > 0 else -math.inf
        wanted = [key for key, low in pending.items() if low + bound >= reach]
        if wanted and (exhausted or len(wanted) <= 4 * k + len(exact) // 4):
            look_up(wanted)
            kth = _kth(exact, k)
            reach = kth / (1 + _SLACK) if kth > 0 else -math.inf
            wanted = [key for key, low in pending.items() if low + bound >= reach]
        if stats is not None:
            stats.update(rounds=rounds, touched=len(exact), read=read, seen=len(exact) + len(pending))
        if not wanted and (exhausted or (kth > 0 and kth > bound * (1 + _SLACK))):
            break
        if exhausted:
            continue  # the wanted keys get looked up above
        if len(exact) + len(pending) > max_touched:
            return None
        chunk = min(chunk * 2, MAX_CHUNK)
    keys = list(exact)
    values = list(exact.values())
    order = rank_order(keys, values)[:k]
    return [Ranked(r + 1, keys[i], values[i]) for r, i in enumerate(order)]


def _kth(exact: dict[str, float], k: int) -> float:
    """The k-th best exact total, or -inf with fewer than k."""
    if len(exact) < k:
        return -math.inf
    values = np.fromiter(exact.values(), np.float64, len(exact))
    return float(np.partition(values, len(values) - k)[len(values) - k])
