"""The rank by sorted access (router/rank_ta.py) against rollups.topk.rank_of on the merged partials:
random partials split over several accesses of several lists, near-ties by float rounding, keys
absent, neighbours, negative values and the budget (the merge answers: None)."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from rollups.partials import merge_partials
from rollups.topk import rank_of
from router.rank_ta import _rank
from tiers.ranked_access import ArrayList, ListsAccess, lookup


def _access(lists: list[dict[str, float]]) -> ListsAccess:
    """One tier: several lists (key -> value); random access sums them exactly."""
    arrays = [ArrayList(pa.array(list(d), pa.string()), np.array(list(d.values()), np.float64)) for d in lists if d]
    keys = sorted({k for d in lists for k in d})

    def exact(wanted):
        return np.array([math.fsum(d.get(k, 0.0) for d in lists) for k in wanted])
    low = min([0.0] + [a.min_value for a in arrays])
    return ListsAccess(arrays, exact if keys else lookup(pa.array([], pa.string()), np.zeros(0)), low)


def _merged(parts: list[list[dict[str, float]]], by: str) -> pa.Table:
    rows: dict[str, list[float]] = {}
    for tier in parts:
        for d in tier:
            for k, v in d.items():
                rows.setdefault(k, []).append(v)
    keys = list(rows)
    vals = [math.fsum(v) for v in rows.values()]
    t = pa.table({"key": pa.array(keys, pa.string()), "count": pa.array([1] * len(keys), pa.int64()),
                  "sum": pa.array(vals, pa.float64()), "min": pa.array(vals, pa.float64()),
                  "max": pa.array(vals, pa.float64())})
    return merge_partials([t], "key")


def _check(parts, key, around, by="sum", max_keys=20_000):
    accesses = [_access(tier) for tier in parts]
    info: dict = {}
    got = _rank(accesses, key, by, around, max_keys, lambda calls: [c() for c in calls], info)
    want = rank_of(_merged(parts, by), key, "sum", around)
    if got is not None:
        rank, value, near = got
        assert rank == want.rank, (key, got, want)
        if rank is not None:
            assert value == want.value or abs(value - want.value) <= 1e-12 * abs(want.value)
        assert [(n.rank, n.key) for n in near] == [(n.rank, n.key) for n in want.around], (key, near, want.around)
    return got, info


NEAR = [0.1, 0.2, 0.3, 0.7, 0.8, 1.0, 2.0, 3.0, 5.0]
KEYS = [f"k{i}" for i in range(30)] + ["a", "b", "é", "B"]


@given(data=st.data())
@hsettings(max_examples=150, deadline=None)
def test_rank_equals_the_merge_over_random_lists(data):
    n_tiers = data.draw(st.integers(1, 4))
    parts = [[data.draw(st.dictionaries(st.sampled_from(KEYS), st.sampled_from(NEAR), max_size=25))
              for _ in range(data.draw(st.integers(1, 3)))] for _ in range(n_tiers)]
    key = data.draw(st.sampled_from(KEYS + ["absent"]))
    got, _ = _check(parts, key, data.draw(st.sampled_from([0, 1, 3])))
    present = any(key in d for t in parts for d in t)
    assert got is not None or not present or True  # None is allowed (the merge answers)


def test_top_ranks_need_only_the_heads():
    rnd = np.random.default_rng(5)
    # 50k keys, Zipf-like counts, split over 3 tiers of 4 lists each
    n = 50_000
    totals = np.floor(1e6 / (np.arange(n) + 1) ** 1.1) + 1
    parts = []
    for _ in range(3):
        tier = []
        for _ in range(4):
            tier.append({})
        parts.append(tier)
    share = rnd.integers(0, 12, size=n)
    for i in range(n):
        parts[share[i] // 4][share[i] % 4][f"key{i:06d}"] = float(totals[i])
    for r in (1, 10, 1000):
        got, info = _check(parts, f"key{r - 1:06d}", 2, by="count")
        assert got is not None
        assert info["seen"] < 20 * r + 2000, info
    # far down: over the budget, the merge answers
    got, _ = _check(parts, f"key{40_000:06d}", 0, by="count", max_keys=5_000)
    assert got is None


def test_near_ties_across_tiers_order_by_key():
    # a = 0.7 + 0.1 (two tiers), b = 0.8: equal for ordering, so a ranks before b
    parts = [[{"a": 0.7, "c": 5.0}], [{"a": 0.1, "b": 0.8, "d": 0.3}]]
    for key, rank in (("c", 1), ("a", 2), ("b", 3), ("d", 4)):
        got, _ = _check(parts, key, 1)
        assert got is not None and got[0] == rank


def test_ties_of_counts_order_by_key():
    parts = [[{f"t{i:02d}": 3.0 for i in range(20)}], [{f"t{i:02d}": 1.0 for i in range(0, 20, 2)}]]
    for i in range(20):
        got, _ = _check(parts, f"t{i:02d}", 2, by="count")
        assert got is not None


def test_absent_and_negative():
    parts = [[{"a": 2.0, "b": 1.0}], [{"b": 1.0}]]
    got, _ = _check(parts, "zz", 1, by="count")
    assert got == (None, None, [])
    assert _check(parts, "zz", 1, by="sum")[0] is None  # a sum of 0 may have events: merge
    neg = [[{"a": 2.0, "b": -1.0}], [{"b": 1.0}]]
    assert _check(neg, "a", 0)[0] is None
