"""Compensated summation for merging partial sums whose order must not matter.

Sums are float64. Summed naively, 1e16 + 1 - 1e16 gives 0 and the result depends on the order
the terms came in. Python code sums with math.fsum (exact, correctly rounded). Grouped sums over
Arrow/numpy arrays use `grouped_sum`: Neumaier's compensated summation, vectorised over groups
one "layer" at a time (the j-th term of every group together), so there is no Python work per
key: a merge of tens of pieces runs tens of numpy passes.
"""
from __future__ import annotations

import numpy as np


def grouped_sum(groups: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group g in 0..n_groups-1, the compensated sum of values[groups == g] (0.0 when empty).

    `groups`: int array of group indices; `values`: float64 array of the same length. The error
    is at most a couple of ulps of the result whatever the cancellation (Neumaier), e.g.
    1e16 + 1 - 1e16 = 1.
    """
    groups = np.asarray(groups, np.int64)
    values = np.asarray(values, np.float64)
    s = np.zeros(n_groups)
    c = np.zeros(n_groups)
    if len(groups) == 0:
        return s
    order = np.argsort(groups, kind="stable")
    g, x = groups[order], values[order]
    first = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]]))
    layer = np.arange(len(g)) - np.repeat(first, np.diff(np.concatenate([first, [len(g)]])))
    for j in range(int(layer.max()) + 1):
        at = layer == j
        gi, xi = g[at], x[at]
        si = s[gi]
        t = si + xi
        c[gi] += np.where(np.abs(si) >= np.abs(xi), (si - t) + xi, (xi - t) + si)
        s[gi] = t
    return s + c


def sums_by(columns: list[np.ndarray], values: np.ndarray) -> np.ndarray:
    """Compensated sums of `values` grouped by the tuple of `columns`, one per distinct tuple in
    ascending (lexicographic) order of the tuples — the order of a group-by sorted by its keys."""
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        return np.zeros(0)
    order = np.lexsort([np.asarray(c) for c in columns][::-1])
    cols = [np.asarray(c)[order] for c in columns]
    change = np.zeros(len(values) - 1, bool)
    for c in cols:
        change |= c[1:] != c[:-1]
    gid = np.concatenate([[0], np.cumsum(change)])
    return grouped_sum(gid, values[order], int(gid[-1]) + 1)
