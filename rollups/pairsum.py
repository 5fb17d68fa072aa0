"""Sums as pairs hi + lo (double-double arithmetic), for sums that must not depend on the order
of additions even across merges: hi is the float nearest the pair, lo (|lo| <= ulp(hi) / 2) what
it could not hold. A pair carries the exact sum of its terms to ~eps^2 of their magnitudes, so
1e15 + 0.1 in one place and -1e15 in another still give 0.1 once merged (rollups.exactsum rounds
each merge to one float: enough for one merge, not for a chain of them). The hot tier keeps its
sums so (tiers/hot_sums.py); partial tables may carry the low parts in a `sum_lo` column
(rollups.partials.merge_partials keeps it).
"""
from __future__ import annotations

import numpy as np

from rollups.exactsum import exactly_summable


def off_grid(values: np.ndarray, grid_max: float, grid_scale: float = 256.0) -> np.ndarray:
    """Per value: not a multiple of 1/grid_scale below grid_max in magnitude. Values on such a
    grid add exactly in any order while their sums of magnitudes stay below 2**53 / grid_scale,
    so their sums need no low parts (the hot tier's grid: tiers/hot_sums.py; warm's:
    tiers/warm_pairs.py)."""
    scaled = values * grid_scale
    return ~((np.abs(values) < grid_max) & (scaled == np.rint(scaled)))


def two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s, e) with s = fl(a + b) and a + b = s + e exactly (Knuth), elementwise."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def pair_add(h1, l1, h2, l2) -> tuple[np.ndarray, np.ndarray]:
    """(h1 + l1) + (h2 + l2) as normalised pairs (hi nearest the pair), elementwise."""
    s, e = two_sum(h1, h2)
    return two_sum(s, (l1 + l2) + e)


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


def grouped_pair_sum(groups: np.ndarray, terms: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group g in 0..n_groups-1, the pair (hi, lo) summing terms[groups == g] (0, 0 when
    empty): hi the float nearest the exact sum (to ~eps^2 of the terms' magnitudes)."""
    groups = np.asarray(groups, np.int64)
    terms = np.asarray(terms, np.float64)
    hi, lo = np.zeros(n_groups), np.zeros(n_groups)
    if not len(groups):
        return hi, lo
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    starts = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]]))
    h, l = pair_reduceat(terms[order], None, starts)
    hi[g[starts]], lo[g[starts]] = h, l
    return hi, lo
