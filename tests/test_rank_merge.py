"""The vectorised rank merge (router/rank_merge.py) against rollups.topk.rank_of on the merged
partials: per-tier key_values tables merged (counts, signed sums compensated), ranks with ties
within relative 1e-12 (ordered by key), negative sums, a key absent from the range, neighbours,
and chains of near-ties longer than the band the rank sorts."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from rollups.partials import merge_partials
from rollups.topk import rank_of
from router.rank_merge import SPAN, _band_rank, merge_values, rank_in
from tiers.base import KEY_VALUES_SCHEMA

KEYS = [f"k{i}" for i in range(25)] + ["a", "b", "é", "B", "日本"]
NEAR = [0.1, 0.2, 0.3, 0.7, 0.8, 1.0, 2.0, 3.0, -0.1, -0.3, 0.0, 1e16, -1e16]


def _table(d: dict[str, float]) -> pa.Table:
    return pa.table({"key": pa.array(list(d), pa.string()), "value": pa.array(list(d.values()), pa.float64())},
                    schema=KEY_VALUES_SCHEMA)


def _oracle(tiers: list[dict[str, float]], key: str, by: str, around: int):
    """rank_of over exact (fsum) totals, as partial tables (count = 1 marks a key with events)."""
    rows: dict[str, list[float]] = {}
    for d in tiers:
        for k, v in d.items():
            rows.setdefault(k, []).append(v)
    keys = list(rows)
    vals = [math.fsum(v) for v in rows.values()]
    counts = vals if by == "count" else [1] * len(keys)
    t = pa.table({"key": pa.array(keys, pa.string()), "count": pa.array([int(c) for c in counts], pa.int64()),
                  "sum": pa.array(vals, pa.float64()), "min": pa.array(vals, pa.float64()),
                  "max": pa.array(vals, pa.float64())})
    return rank_of(merge_partials([t], "key"), key, by, around)


def _check(tiers, key, by, around):
    keys, values = merge_values([_table(d) for d in tiers], by)
    assert len(set(keys.to_pylist())) == len(keys)
    got = rank_in(keys, values, key, around)
    want = _oracle(tiers, key, by, around)
    assert (got.rank, got.total_keys) == (want.rank, want.total_keys), (key, got, want)
    if want.rank is not None:
        assert got.value == want.value or abs(got.value - want.value) <= 1e-12 * abs(want.value)
    assert [(n.rank, n.key) for n in got.around] == [(n.rank, n.key) for n in want.around], (key, got, want)
    return got


@st.composite
def _tiers(draw, by):
    n = draw(st.integers(1, 4))
    value = (st.integers(1, 40).map(float) if by == "count"
             else st.one_of(st.sampled_from(NEAR), st.floats(-50, 50, allow_nan=False)))
    return [draw(st.dictionaries(st.sampled_from(KEYS), value, max_size=len(KEYS))) for _ in range(n)]


@hsettings(max_examples=300, deadline=None)
@given(st.data())
def test_rank_in_equals_rank_of_over_random_tiers(data):
    by = data.draw(st.sampled_from(["count", "sum"]))
    tiers = data.draw(_tiers(by))
    key = data.draw(st.sampled_from(KEYS + ["absent"]))
    _check(tiers, key, by, data.draw(st.sampled_from([0, 0, 1, 3])))


def test_near_ties_across_tiers_order_by_key():
    # 0.7 + 0.1 != 0.8 in float64, yet they tie (relative 1e-12), then key order decides
    tiers = [{"b": 0.8, "a": 0.7, "c": 5.0}, {"a": 0.1}]
    assert _check(tiers, "a", "sum", 0).rank == 2
    assert _check(tiers, "b", "sum", 1).rank == 3


def test_cancellation_is_compensated():
    tiers = [{"x": 1e16, "y": 0.5}, {"x": 1.0}, {"x": -1e16}]
    keys, values = merge_values([_table(d) for d in tiers], "sum")
    assert dict(zip(keys.to_pylist(), values.tolist()))["x"] == 1.0
    assert _check(tiers, "x", "sum", 0).rank == 1


def test_negative_and_zero_sums_rank_below_positive_ones():
    tiers = [{"a": -3.0, "b": 0.0, "c": 2.0, "d": -0.5}, {"a": 1.0, "e": 0.0}]
    for k in "abcde":
        _check(tiers, k, "sum", 2)


def test_absent_key_counts_every_key():
    got = _check([{"a": 1.0, "b": 2.0}, {"b": 1.0, "c": 4.0}], "zz", "count", 0)
    assert (got.rank, got.value, got.total_keys, got.around) == (None, None, 3, [])
    assert rank_in(pa.array([], pa.string()), np.zeros(0), "a").total_keys == 0


def test_a_chain_of_near_ties_longer_than_the_band_orders_everything():
    # 400 values each 0.5e-12 (relative) below the previous: one group by chaining, far wider
    # than the band sorted around the key (SPAN), so the whole table is ordered
    base = 1000.0
    vals = [base * (1 - 0.5e-12 * i) for i in range(400)]
    assert vals[0] - vals[-1] > 0 and (vals[0] - vals[-1]) / vals[0] < SPAN
    wide = [base * (1 - 0.9e-12 * i) for i in range(3000)]
    assert (wide[0] - wide[-1]) / wide[0] > SPAN
    for values in (vals, wide):
        d = {f"k{i:05d}": v for i, v in enumerate(reversed(values))}
        d["top"], d["low"] = 2 * base, base / 2
        for key in ("k00000", "k00200", f"k{len(values) - 1:05d}", "top", "low"):
            _check([d], key, "sum", 0)
        keys, totals = merge_values([_table(d)], "sum")
        band = _band_rank(keys, totals, "k00200", d["k00200"])
        assert (band is None) == (values is wide)  # the wide chain leaves the band: ordered whole


def test_many_keys_vectorised():
    rng = np.random.default_rng(7)
    n = 20_000
    tiers = []
    for _ in range(3):
        ids = rng.choice(n, size=n // 2, replace=False)
        tiers.append({f"k{i}": float(v) for i, v in zip(ids, rng.integers(1, 30, size=len(ids)))})
    for key in ("k1", "k77", "k19999", "nope"):
        _check(tiers, key, "count", 0)
