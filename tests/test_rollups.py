"""Property tests of the pure domain: times, covers, partial merges, rankings."""
from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from rollups.cover import cover, series_granularities
from rollups.errors import BadRequest
from rollups.partials import Agg, merge_partials
from rollups.timeutil import (DAY_MS, G1D, G1H, G1M, G1MO, G1W, MINUTE_MS, RAW, TimeRange, format_time,
                              parse_time)
from rollups.topk import rank_of, top_k

T0 = parse_time("2024-01-01T00:00:00Z")
minutes = st.integers(min_value=0, max_value=2 * 366 * 24 * 60)


def test_parse_time_forms():
    assert parse_time("2026-11-22T10:00:00Z") == parse_time("2026-11-22T11:00:00+01:00")
    assert parse_time("2026-11-22T10:00:00.123Z") % 1000 == 123
    assert parse_time(1795341600000) == 1795341600000
    assert parse_time("now-15m", now=1_000_000_000) == 1_000_000_000 - 15 * MINUTE_MS
    assert parse_time("now", now=5) == 5
    assert format_time(parse_time("2026-11-22T10:00:00.5+00:00")) == "2026-11-22T10:00:00.500Z"


@pytest.mark.parametrize("bad", ["", "²", "٣", "now-٣m", "yesterday", "2026-11-22", "2026-11-22T10:00:00", "now-5x", True, None, 1.5, [], "2026-13-01T00:00:00Z"])
def test_parse_time_refuses(bad):
    with pytest.raises(BadRequest):
        parse_time(bad)


@given(st.integers(min_value=-10**12, max_value=4 * 10**12))
def test_format_parse_roundtrip(ms):
    assert parse_time(format_time(ms)) == ms


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(timezone.utc)))
def test_parse_matches_datetime(dt):
    dt = dt.replace(microsecond=(dt.microsecond // 1000) * 1000)
    assert parse_time(dt.isoformat()) == (dt - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


@settings(max_examples=300)
@given(minutes, minutes, st.sets(st.sampled_from([G1H, G1D, G1W, G1MO]), max_size=4))
def test_cover_tiles_range_with_whole_buckets(a, b, coarse):
    lo, hi = sorted((a, b))
    rng = TimeRange(T0 + lo * MINUTE_MS, T0 + hi * MINUTE_MS)
    pieces = cover(rng, [G1M, *coarse])
    # tiles exactly, in order
    pos = rng.start
    for p in pieces:
        assert p.range.start == pos
        assert p.granularity.floor(p.range.start) == p.range.start
        assert p.granularity.floor(p.range.end) == p.range.end
        pos = p.range.end
    assert pos == rng.end
    # coarsest first: no piece could be read at a coarser available granularity in its middle
    for p in pieces:
        for g in coarse:
            if g.ms > p.granularity.ms:
                whole = g.buckets(p.range)
                assert not whole or p.range != TimeRange(whole[0], g.next(whole[-1]))


@given(minutes, minutes)
def test_cover_without_minute_needs_raw(a, b):
    lo, hi = sorted((a, b))
    rng = TimeRange(T0 + lo * MINUTE_MS + 17, T0 + hi * MINUTE_MS + 17)
    pieces = cover(rng, [RAW, G1M, G1H])
    assert sum(p.range.end - p.range.start for p in pieces) == rng.end - rng.start
    # only the unaligned edges are raw: under a minute each, so under two minutes in all
    assert sum(p.range.end - p.range.start for p in pieces if p.granularity == RAW) < 2 * MINUTE_MS


def test_series_granularities_nest_in_step():
    assert series_granularities(5 * MINUTE_MS, [G1M, G1H, G1D]) == [G1M]
    assert series_granularities(2 * DAY_MS, [G1M, G1H, G1D, G1MO]) == [G1M, G1H, G1D]


def test_month_buckets_are_calendar_months():
    rng = TimeRange(parse_time("2024-01-31T00:00:00Z"), parse_time("2024-04-01T00:00:00Z"))
    starts = [format_time(t) for t in G1MO.buckets(rng)]
    assert starts == ["2024-02-01T00:00:00.000Z", "2024-03-01T00:00:00.000Z"]


events = st.lists(st.tuples(st.sampled_from("abcdefg"), st.integers(-5, 50).map(float)), max_size=80)


def _partials(evs, splits):
    """Split events into `splits` partial tables, as tiers would return them."""
    tables = []
    for part in range(splits):
        aggs: dict[str, Agg] = {}
        for i, (k, v) in enumerate(evs):
            if i % splits == part:
                aggs.setdefault(k, Agg()).add(v)
        tables.append(pa.table({"key": list(aggs), "count": [a.count for a in aggs.values()],
                                "sum": [a.sum for a in aggs.values()], "min": [a.min for a in aggs.values()],
                                "max": [a.max for a in aggs.values()]}))
    return tables


def _oracle(evs):
    aggs: dict[str, Agg] = {}
    for k, v in evs:
        aggs.setdefault(k, Agg()).add(v)
    return aggs


@given(events, st.integers(1, 4))
def test_merge_partials_equals_raw(evs, splits):
    merged = merge_partials(_partials(evs, splits), "key")
    got = {r["key"]: (r["count"], r["sum"], r["min"], r["max"]) for r in merged.to_pylist()}
    want = {k: (a.count, a.sum, a.min, a.max) for k, a in _oracle(evs).items()}
    assert got.keys() == want.keys()
    for k in want:
        assert got[k][0] == want[k][0] and got[k][2:] == want[k][2:]
        assert math.isclose(got[k][1], want[k][1], rel_tol=1e-12, abs_tol=1e-12)


@given(events, st.integers(1, 4), st.integers(1, 10), st.sampled_from(["count", "sum"]))
def test_top_k_and_rank_order_value_desc_key_asc(evs, splits, k, by):
    merged = merge_partials(_partials(evs, splits), "key")
    want = sorted(((-a.value(by), key) for key, a in _oracle(evs).items()))
    got = top_k(merged, k, by)
    assert [(r.key, r.value) for r in got] == [(key, -v) for v, key in want[:k]]
    assert [r.rank for r in got] == list(range(1, len(got) + 1))
    for pos, (_, key) in enumerate(want):
        res = rank_of(merged, key, by, around=1)
        assert res.rank == pos + 1 and res.total_keys == len(want)
        assert [r.key for r in res.around] == [kk for _, kk in want[max(0, pos - 1):pos + 2]]
    assert rank_of(merged, "zz-missing", by).rank is None


def test_ties_break_by_utf8_key_order():
    t = pa.table({"key": ["b", "a", "é", "Z"], "count": [1, 1, 1, 1], "sum": [1.0] * 4,
                  "min": [1.0] * 4, "max": [1.0] * 4})
    assert [r.key for r in top_k(t, 4, "count")] == sorted(["b", "a", "é", "Z"], key=lambda s: s.encode())


def test_random_cover_sums_match_bucket_sums():
    rnd = random.Random(7)
    ts = [T0 + rnd.randrange(0, 40 * DAY_MS) for _ in range(2000)]
    for _ in range(50):
        a, b = sorted(rnd.randrange(0, 40 * 24 * 60) for _ in range(2))
        rng = TimeRange(T0 + a * MINUTE_MS, T0 + b * MINUTE_MS)
        pieces = cover(rng, [G1M, G1H, G1D])
        by_cover = sum(1 for t in ts for p in pieces if p.range.contains(t))
        assert by_cover == sum(1 for t in ts if rng.contains(t))
