"""The threshold algorithm across tiers (rollups.threshold), the ranking order with float-rounding
ties (rollups.topk) and compensated merges (rollups.exactsum): pure, hypothesis-driven.

Each "tier" is an in-memory tiers.ranked_access access over its own partials, some split over
several lists; TA over them must equal the full merge, whatever the order of tiers and pieces.
"""
from __future__ import annotations

import math
import random
from unittest.mock import patch

import numpy as np
import pyarrow as pa
from hypothesis import given, settings, strategies as st

from rollups.exactsum import grouped_sum, layered_sum
from rollups.partials import merge_partials
from rollups.threshold import threshold_top_k
from rollups.topk import rank_order, top_k
from tiers.ranked_access import ArrayList, ListsAccess, TableAccess, lookup

KEYS = ["a", "b", "c", "d", "e", "f", "g", "h", "B", "é", "k10", "k2"]
# sums of these make float-rounding near-ties (0.7 + 0.1 vs 0.8, 0.1 + 0.2 vs 0.3)
VALUES = [0.1, 0.2, 0.3, 0.7, 0.8, 1.0, 2.0, 0.0, 1e-3, 3.0]


def partials(rows: list[tuple[str, float]]) -> pa.Table:
    return pa.table({"key": [k for k, _ in rows], "count": [1] * len(rows), "sum": [v for _, v in rows],
                     "min": [v for _, v in rows], "max": [v for _, v in rows]})


def split_access(rows: list[tuple[str, float]], lists: int, by: str) -> ListsAccess:
    """One tier whose partials are spread over `lists` sorted lists (like buckets)."""
    parts = [rows[i::lists] for i in range(lists)]
    tables = [merge_partials([partials(p)], "key") for p in parts if p]
    whole = merge_partials([partials(rows)], "key")
    col = "count" if by == "count" else "sum"
    arrays = [ArrayList(t["key"], t[col].to_numpy().astype(np.float64)) for t in tables]
    values = whole[col].to_numpy().astype(np.float64)
    return ListsAccess(arrays, lookup(whole["key"], values), min([0.0, *(a.min_value for a in arrays)]))


tier_rows = st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(VALUES)), min_size=0, max_size=40)


@given(tiers=st.lists(tier_rows, min_size=1, max_size=4), lists=st.integers(1, 5), k=st.integers(1, 12),
       by=st.sampled_from(["count", "sum"]), seed=st.integers(0, 1000))
@settings(max_examples=300, deadline=None)
def test_threshold_equals_the_full_merge_with_ties_and_near_ties(tiers, lists, k, by, seed):
    merged = merge_partials([partials(rows) for rows in tiers], "key")
    want = top_k(merged, k, by)
    got = threshold_top_k([split_access(rows, lists, by) for rows in tiers], k)
    assert got is not None
    assert [r.key for r in got] == [r.key for r in want]
    assert all(math.isclose(g.value, w.value, rel_tol=1e-12) for g, w in zip(got, want))
    # the order does not depend on the order tiers, lists or rows came in
    rnd = random.Random(seed)
    shuffled = [rnd.sample(rows, len(rows)) for rows in rnd.sample(tiers, len(tiers))]
    again = threshold_top_k([split_access(rows, lists, by) for rows in shuffled], k)
    assert [r.key for r in again] == [r.key for r in got]


def test_float_rounding_ties_order_by_key():
    a = 0.7 + 0.1  # 0.7999999999999999
    assert a != 0.8
    keys, values = ["b", "a", "c"], [0.8, a, 0.5]
    assert [keys[i] for i in rank_order(keys, values)] == ["a", "b", "c"]
    merged = merge_partials([partials([("b", 0.8), ("a", 0.7)]), partials([("a", 0.1)])], "key")
    assert [r.key for r in top_k(merged, 2, "sum")] == ["a", "b"]
    got = threshold_top_k([TableAccess.of(partials([("b", 0.8), ("a", 0.7)]), "sum"),
                           TableAccess.of(partials([("a", 0.1)]), "sum")], 2)
    assert [r.key for r in got] == ["a", "b"]


def test_a_table_access_keeps_the_low_parts_of_its_sums():
    """The default ranked access (TableAccess.of a partial table) of a table that carries `sum_lo`:
    1e16 (+ low part 1) and 1 elsewhere total 1e16 + 2, not 1e16 (1e16 + 1 rounds to even)."""
    with_low = partials([("x", 1e16), ("y", 3.0)]).append_column("sum_lo", pa.array([1.0, 0.0]))
    got = threshold_top_k([TableAccess.of(with_low, "sum"), TableAccess.of(partials([("x", 1.0)]), "sum")], 2)
    assert [(r.key, r.value) for r in got] == [("x", 1e16 + 2), ("y", 3.0)]


def test_values_apart_by_more_than_rounding_keep_their_order():
    keys, values = ["a", "b"], [1.0, 1.0 + 1e-9]
    assert [keys[i] for i in rank_order(keys, values)] == ["b", "a"]


SIGNED = [-3.0, -0.7, -0.1, 0.1, 0.2, 0.3, 0.7, 0.8, 1.0, 2.0, 0.0, 3.0]
signed_rows = st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(SIGNED)), min_size=0, max_size=40)


@given(tiers=st.lists(signed_rows, min_size=1, max_size=4), lists=st.integers(1, 5), k=st.integers(1, 12),
       seed=st.integers(0, 1000))
@settings(max_examples=400, deadline=None)
def test_threshold_with_negative_values_equals_the_full_merge(tiers, lists, k, seed):
    """Sums of values of both signs (a key's partial may be negative in one list, positive in
    another, absent from a third): TA answers whenever the k-th total is positive (each list's
    frontier counts at least 0: a list without the key adds 0), and equals the full merge; it
    hands over (None) only when the k-th total is not positive."""
    merged = merge_partials([partials(rows) for rows in tiers], "key")
    want = top_k(merged, k, "sum")
    rnd = random.Random(seed)
    ordered = [rnd.sample(rows, len(rows)) for rows in rnd.sample(tiers, len(tiers))]
    with patch("rollups.threshold.FIRST_CHUNK", 1):  # rounds of 1, 2, 4... entries (at least k)
        got = threshold_top_k([split_access(rows, lists, "sum") for rows in ordered], k)
    if got is None:
        assert len(want) == k and want[-1].value <= 0
        return
    assert [r.key for r in got] == [r.key for r in want]
    assert all(math.isclose(g.value, w.value, rel_tol=1e-12, abs_tol=1e-12) for g, w in zip(got, want))


def test_negative_values_in_other_lists_do_not_hide_a_key():
    """Lists [a 3, c -10] and [c 6, b 5]: totals b 5, a 3, c -4. After one entry of each list,
    the first list's next value is -10, but b (absent there) loses nothing to it: the frontier
    counts that list as 0 (F = 5, go on), not as -10 (F = -5 would crown a)."""
    for first, k in ((1, 1), (1, 2), (2, 1), (32, 3)):
        t1 = TableAccess.of(partials([("a", 3.0), ("c", -10.0)]), "sum")
        t2 = TableAccess.of(partials([("c", 6.0), ("b", 5.0)]), "sum")
        with patch("rollups.threshold.FIRST_CHUNK", first):
            got = threshold_top_k([t1, t2], k)
        assert [(r.key, r.value) for r in got] == [("b", 5.0), ("a", 3.0), ("c", -4.0)][:k]


def test_a_negative_kth_total_leaves_it_to_the_full_merge():
    rows = [(f"k{i}", -1.0 - i) for i in range(50)] + [("p", 4.0)]
    stats: dict = {}
    assert threshold_top_k([TableAccess.of(partials(rows), "sum")], 3, stats=stats) is None
    assert stats["read"] < 51  # handed over once the frontier reached 0, not after reading it all


def test_flat_data_gives_up_beyond_the_touch_budget():
    rows = [(f"k{i}", 1.0) for i in range(500)]
    accesses = [TableAccess.of(partials(rows), "count"), TableAccess.of(partials(rows), "count")]
    assert threshold_top_k(accesses, 3, max_touched=100) is None


def test_merge_sums_are_compensated_whatever_the_order():
    pieces = [partials([("x", 1e16)]), partials([("x", 1.0)]), partials([("x", -1e16)])]
    for order in ([0, 1, 2], [2, 0, 1], [0, 2, 1], [1, 0, 2]):
        merged = merge_partials([pieces[i] for i in order], "key")
        assert merged.to_pylist()[0]["sum"] == 1.0


@given(st.lists(st.lists(st.tuples(st.integers(0, 5), st.floats(-1e15, 1e15)), max_size=12), max_size=6))
def test_layered_sum_equals_grouped_sum_of_the_layers_concatenated(layers):
    """The rank merge's sum over pieces (rollups.exactsum.layered_sum; a layer may repeat a group):
    as accurate as grouped_sum over the same terms, and exact for cancellations across layers."""
    arrays = [(np.array([g for g, _ in rows], np.int64), np.array([v for _, v in rows], np.float64)) for rows in layers]
    got = layered_sum(arrays, 6)
    for g in range(6):
        terms = [v for rows in layers for gg, v in rows if gg == g]
        assert abs(got[g] - math.fsum(terms)) <= 4e-16 * math.fsum(abs(v) for v in terms) + 1e-300
    assert layered_sum([(np.array([0, 1]), np.array([1e16, 1e15])), (np.array([1, 1]), np.array([0.1, 0.2])),
                        (np.array([0, 1]), np.array([1.0, -1e15]))], 2).tolist() == [1e16 + 1, math.fsum([0.1, 0.2])]


@given(st.lists(st.tuples(st.integers(0, 5), st.floats(-1e15, 1e15)), max_size=60))
def test_grouped_sum_is_close_to_fsum(rows):
    groups = np.array([g for g, _ in rows], np.int64)
    values = np.array([v for _, v in rows], np.float64)
    got = grouped_sum(groups, values, 6)
    for g in range(6):
        want = math.fsum(v for gg, v in rows if gg == g)
        scale = math.fsum(abs(v) for gg, v in rows if gg == g)
        assert abs(got[g] - want) <= 4e-16 * scale + 1e-300


@given(st.lists(st.lists(st.tuples(st.integers(0, 5), st.floats(-1e15, 1e15)), max_size=12), max_size=6),
       st.integers(0, 6))
def test_a_pair_sum_of_some_layers_then_the_rest_is_as_accurate(layers, cut):
    """router/rank_pieces caches the closed pieces' merge as (sum, compensation)
    (rollups.exactsum.layered_pair_sum) and adds the open pieces later: as accurate as one merge
    of every layer, cancellations across the two included (1e15 + 0.1 cached, -1e15 later: 0.1)."""
    from rollups.exactsum import layered_pair_sum

    arrays = [(np.array([g for g, _ in rows], np.int64), np.array([v for _, v in rows], np.float64)) for rows in layers]
    hi, lo = layered_pair_sum(arrays[:cut], 6)
    ids = np.arange(6)
    got = layered_sum([(ids, hi), (ids, lo), *arrays[cut:]], 6)
    for g in range(6):
        terms = [v for rows in layers for gg, v in rows if gg == g]
        assert abs(got[g] - math.fsum(terms)) <= 8e-16 * math.fsum(abs(v) for v in terms) + 1e-300
    hi, lo = layered_pair_sum([(np.array([0]), np.array([1e15])), (np.array([0]), np.array([0.1]))], 1)
    assert layered_sum([(np.array([0]), hi), (np.array([0]), lo), (np.array([0]), np.array([-1e15]))], 1)[0] == 0.1


def test_signed_sums_with_a_positive_kth_total_look_up_only_keys_that_can_reach_it():
    """Sums around zero (profit and loss): once every list's frontier is <= 0 and a k-th total
    > 0 is known, a key's unread entries can only lower it, so only keys read up to the k-th
    total are looked up — not every key read above 0 (that was ~1,800 of 2,000 keys)."""
    rnd = random.Random(3)
    tiers = [[(f"k{rnd.randrange(2000)}", round(rnd.gauss(0, 100), 2)) for _ in range(6000)] for _ in range(3)]
    merged = merge_partials([partials(rows) for rows in tiers], "key")
    want = top_k(merged, 10, "sum")
    stats: dict = {}
    got = threshold_top_k([split_access(rows, 4, "sum") for rows in tiers], 10, stats=stats)
    assert [r.key for r in got] == [r.key for r in want]
    assert all(math.isclose(g.value, w.value, rel_tol=1e-12) for g, w in zip(got, want))
    assert stats["touched"] < stats["seen"] / 4, stats
