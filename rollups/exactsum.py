"""Compensated summation for merging partial sums whose order must not matter.

Sums are float64. Summed naively, 1e16 + 1 - 1e16 gives 0 and the result depends on the order
the terms came in. Python code sums with math.fsum (exact, correctly rounded). Grouped sums over
Arrow/numpy arrays use `grouped_sum`: Neumaier's compensated summation, vectorised over groups
one "layer" at a time (the j-th term of every group together), so there is no Python work per
key: a merge of tens of pieces runs tens of numpy passes.
"""
from __future__ import annotations

import math

import numpy as np


def grouped_sum(groups: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group g in 0..n_groups-1, the compensated sum of values[groups == g] (0.0 when empty).

    `groups`: int array of group indices; `values`: float64 array of the same length. The error
    is at most a couple of ulps of the result whatever the cancellation (Neumaier), e.g.
    1e16 + 1 - 1e16 = 1.
    """
    groups = np.asarray(groups, np.int64)
    values = np.asarray(values, np.float64)
    if len(groups) and _exactly_summable(values):  # every addition exact: Neumaier's c stays 0.0
        return np.bincount(groups, weights=values, minlength=n_groups)
    s = np.zeros(n_groups)
    c = np.zeros(n_groups)
    if len(groups) == 0:
        return s
    order = np.argsort(groups, kind="stable")
    g, x = groups[order], values[order]
    first = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]]))
    sizes = np.diff(np.concatenate([first, [len(g)]]))
    # groups by size, largest first: layer j touches only the groups longer than j (a prefix), so
    # the layers together cost O(len(values)), however large the largest group
    by_size = np.argsort(-sizes, kind="stable")
    starts, neg_sizes, gid = first[by_size], -sizes[by_size], g[first[by_size]]
    acc, comp = np.zeros(len(starts)), np.zeros(len(starts))
    for j in range(int(sizes.max())):
        k = int(np.searchsorted(neg_sizes, -j, side="left"))  # groups with more than j terms
        if k <= _SEQUENTIAL_GROUPS:  # a few long groups left: finish each in a plain loop
            for i in range(k):
                acc[i], comp[i] = _neumaier(float(acc[i]), float(comp[i]),
                                            x[starts[i] + j:starts[i] - neg_sizes[i]].tolist())
            break
        si, xi = acc[:k], x[starts[:k] + j]
        t = si + xi
        comp[:k] += np.where(np.abs(si) >= np.abs(xi), (si - t) + xi, (xi - t) + si)
        acc[:k] = t
    s[gid] = acc
    c[gid] = comp
    return s + c


def column_fsum(rows: np.ndarray) -> np.ndarray:
    """Per column of `rows` (float64, shape (m, n)), the exact sum of its m values correctly
    rounded (math.fsum): a key's partial from tiers.base.RankedAccess.exact_parts rows."""
    rows = np.asarray(rows, np.float64)
    return np.array([math.fsum(col) for col in rows.T]) if len(rows) > 1 else rows[0].copy()


def layered_sum(layers: list[tuple[np.ndarray, np.ndarray]], n_groups: int) -> np.ndarray:
    """Per group g in 0..n_groups-1, the compensated (Neumaier) sum of the values of every layer
    (groups, values) at g, 0.0 when absent: what grouped_sum gives for the layers concatenated,
    without its sort. A layer whose groups are unique (a merge's piece: one row per key) is one
    numpy pass; one with repeated groups is split into passes of unique groups first. Cost
    O(total length), so a rank merge of tens of pieces of 100k keys takes tens of ms, not the
    hundreds grouped_sum's argsort of a million entries does (router/rank_pieces.py)."""
    acc, comp = layered_pair_sum(layers, n_groups)
    return acc + comp


def layered_pair_sum(layers: list[tuple[np.ndarray, np.ndarray]], n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """layered_sum as Neumaier's (sum, compensation) per group, both float64 of n_groups, before
    they are added: kept apart, they are two layers of a later layered_sum that stays compensated
    (a cached merge of closed pieces plus the open edges: 1e15 + 0.1 cached, -1e15 later, is 0.1).
    Exactly summable values (integers, halves): (the plain sum, zeros)."""
    if layers and all(len(g) == len(v) for g, v in layers):
        values = np.concatenate([np.asarray(v, np.float64) for _, v in layers])
        if len(values) and _exactly_summable(values):  # every addition exact: any order, one pass
            groups = np.concatenate([np.asarray(g, np.int64) for g, _ in layers])
            return np.bincount(groups, weights=values, minlength=n_groups), np.zeros(n_groups)
    acc, comp = np.zeros(n_groups), np.zeros(n_groups)
    stamp = np.full(n_groups, -1, np.int64)  # last position writing each group: finds repeats in O(len)
    todo = [(np.asarray(g, np.int64), np.asarray(v, np.float64)) for g, v in layers]
    while todo:
        g, v = todo.pop()
        if not len(g):
            continue
        at = np.arange(len(g))
        stamp[g] = at  # with repeats, the last occurrence wins
        last = stamp[g] == at
        if not last.all():  # the earlier occurrences form another layer
            todo.append((g[~last], v[~last]))
            g, v = g[last], v[last]
        a = acc[g]
        t = a + v
        comp[g] += np.where(np.abs(a) >= np.abs(v), (a - t) + v, (v - t) + a)
        acc[g] = t
    return acc, comp


def _exactly_summable(values: np.ndarray) -> bool:
    """True when every partial sum of `values`, in any order, is exact in float64: all are
    multiples of one 2**-k and their magnitudes add up below 2**52 * 2**-k (e.g. integers,
    halves). Then each of Neumaier's additions is exact, his compensation stays +0.0, and his
    result is the plain sum bit for bit (the sign of a zero included: sums start at +0.0)."""
    total = float(np.abs(values).sum())
    if not math.isfinite(total):
        return False
    for k in _SCALES:
        if total * 2.0 ** k >= 2.0 ** 52:
            return False
        scaled = values * 2.0 ** k  # a power of two: exact
        if np.array_equal(scaled, np.rint(scaled)):
            return True
    return False


def _dense_code(columns: list[np.ndarray]) -> np.ndarray | None:
    """One small non-negative int per row, ascending in the rows' tuples' lexicographic order
    (mixed radix over each integer column's range, or its values' ranks when sparse; ranked
    again when the tuples are sparse), or None when a column is not integer."""
    n = len(columns[0])
    code, span = np.zeros(n, np.int64), 1
    for c in columns:
        if c.dtype.kind not in "iu":
            return None
        lo, hi = int(c.min()), int(c.max())
        width = hi - lo + 1
        if width > 4 * n + 1024:  # sparse values (e.g. hour starts in ms): their ranks
            uniq, rank = np.unique(c, return_inverse=True)
            width, rel = len(uniq), rank.reshape(-1).astype(np.int64)
        else:
            rel = c.astype(np.int64) - lo
        span *= width
        if span >= 2**62:
            return None
        code = code * width + rel
    if span > 4 * n + 1024:  # sparse tuples: their ranks (one sort of one int64 column)
        code = np.unique(code, return_inverse=True)[1].reshape(-1).astype(np.int64)
    return code


exactly_summable = _exactly_summable  # public name (tiers.parquet_layout's totals)
_SCALES = (0, 1, 2, 3, 4, 6, 8, 10, 12, 16, 20)
_SEQUENTIAL_GROUPS = 64  # below this many groups a numpy pass costs more than a Python loop over them


def _neumaier(s: float, c: float, xs: list[float]) -> tuple[float, float]:
    """The same steps as grouped_sum's numpy passes (IEEE float64 both), one group at a time."""
    for x in xs:
        t = s + x
        if abs(s) >= abs(x):
            c += (s - t) + x
        else:
            c += (x - t) + s
        s = t
    return s, c


def sums_by(columns: list[np.ndarray], values: np.ndarray) -> np.ndarray:
    """Compensated sums of `values` grouped by the tuple of `columns`, one per distinct tuple in
    ascending (lexicographic) order of the tuples — the order of a group-by sorted by its keys."""
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        return np.zeros(0)
    if _exactly_summable(values):  # any order of additions gives the same sums: no lexsort
        code = _dense_code([np.asarray(c) for c in columns])
        if code is not None:
            present = np.bincount(code) > 0
            return np.bincount(code, weights=values, minlength=len(present))[present]
    order = np.lexsort([np.asarray(c) for c in columns][::-1])
    cols = [np.asarray(c)[order] for c in columns]
    change = np.zeros(len(values) - 1, bool)
    for c in cols:
        change |= c[1:] != c[:-1]
    gid = np.concatenate([[0], np.cumsum(change)])
    return grouped_sum(gid, values[order], int(gid[-1]) + 1)
