"""Exact sums in the hot tier (issue 10 item 5; tiers/hot_sums.py, tiers/hot_pairs.lua): values sent to
one key in separate requests — 1e15, 0.1, -1e15 gives 0.1, not 0.125 — give the compensated sum
of the raw values whatever the order of batches, folds (compact_hot) and unions (ranges, sliding
windows): in series, stream totals, top-K and rank by sum, and the all-time leaderboard."""
from __future__ import annotations

import math
import random

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings as hsettings, strategies as st

from rollups.cover import cover
from rollups.timeutil import G1M, HOUR_MS, MINUTE_MS, TimeRange, format_time, now_ms, parse_time
from tests.api_support import isolated_settings, redis_db_url, run_job, served, unique_stream
from tiers.base import EVENT_SCHEMA
from tiers.hot import RedisHotTier

H4 = 4 * HOUR_MS


@pytest.fixture(scope="module")
def api(settings):
    yield from served(isolated_settings(settings, "hot_exact_sums", redis_db=96))


@pytest.fixture(scope="module")
def hot(settings):
    url = redis_db_url(settings, "hot_exact_sums_tier", 97)
    tier = RedisHotTier.from_url(url, 24 * HOUR_MS, settings.grace_period, settings.dedup_window,
                                 cluster=settings.redis_mode == "cluster")
    yield tier
    tier.close()


def post(api, stream: str, events: list[tuple[str, int, float]]) -> None:
    """Each (key, ts, value) in its own request."""
    for key, ts, value in events:
        r = api.post("/v1/events", json=[{"stream": stream, "key": key, "ts": ts, "value": value}])
        assert r.status_code == 202, r.text


def q(api, path: str, **params) -> dict:
    r = api.get(path, params)
    assert r.status_code == 200, r.text
    return r.json()


def cases(now: int) -> dict[str, tuple[list[int], TimeRange, bool]]:
    """name -> (three timestamps for x's 1e15, 0.1, -1e15; the query range; compact first)."""
    base = (now // H4) * H4 - H4  # a closed 4-hour step, its hours closed for 2 h or more
    m = G1M.floor(now)
    return {
        "same_minute": ([base + 5 * MINUTE_MS + i * 1000 for i in range(3)], TimeRange(base, base + H4), False),
        "hours_folded": ([base + 5 * MINUTE_MS, base + 20 * MINUTE_MS, base + 70 * MINUTE_MS],
                         TimeRange(base, base + H4), True),
        "open_edge": ([m - 50 * MINUTE_MS, m - 30 * MINUTE_MS, m - 3 * MINUTE_MS], TimeRange(m - 3 * HOUR_MS, m), False),
    }


@pytest.mark.parametrize("case", ["same_minute", "hours_folded", "open_edge"])
def test_cancelling_sums_sent_apart_are_exact_everywhere(api, case):
    """x gets 1e15, 0.1, -1e15 in three requests (y, z sent alongside): its sum is 0.1 (float
    order gives 0.125) in the series by key and the stream totals, top-K and rank by sum order it
    below y (0.11), and the all-time score is 0.1."""
    stream = unique_stream("exact")
    ts, rng, compact = cases(now_ms())[case]
    post(api, stream, [("x", ts[0], 1e15), ("y", ts[0], 0.11), ("z", ts[0], 0.2), ("x", ts[1], 0.1),
                       ("x", ts[2], -1e15)])
    if compact:
        run_job(api, "compact_hot")
    frm, to = format_time(rng.start), format_time(rng.end)
    step = H4 if case != "open_edge" else 24 * HOUR_MS  # one point holds them all (unless midnight splits)
    sent = {"x": [(ts[0], 1e15), (ts[1], 0.1), (ts[2], -1e15)], "y": [(ts[0], 0.11)], "z": [(ts[0], 0.2)]}
    for key in ("x", None):
        body = q(api, "/v1/query/series", stream=stream, **{"from": frm, "to": to}, step=f"{step // HOUR_MS}h",
                 agg="sum", **({"key": key} if key else {}))
        rows = sent[key] if key else [e for es in sent.values() for e in es]
        want = {}
        for t, v in rows:  # fsum per point: 0.1 for x (0.1 + 0.11 + 0.2 for the totals) when one holds them
            want.setdefault((t // step) * step, []).append(v)
        got = {parse_time(p["t"]): p["value"] for p in body["points"] if p["value"] is not None}
        assert got == {t: math.fsum(vs) for t, vs in want.items()}, (key, got)
    top = q(api, "/v1/query/topk", stream=stream, **{"from": frm, "to": to}, k=3, by="sum")
    assert [(i["key"], i["value"]) for i in top["items"]] == [("z", 0.2), ("y", 0.11), ("x", 0.1)]
    rank = q(api, "/v1/query/rank", stream=stream, **{"from": frm, "to": to}, key="x", by="sum", around=1)
    assert (rank["rank"], rank["value"], rank["total_keys"]) == (3, 0.1, 3)
    assert [(n["key"], n["value"]) for n in rank["around"]] == [("y", 0.11), ("x", 0.1)]
    score = api.post(f"/v1/streams/{stream}/keys/x/score", json={"delta": 0}).json()
    assert (score["score"], score["rank"]) == (0.1, 3)


def test_a_tie_by_float_rounding_orders_by_key(api):
    """a gets 0.7 then 0.1 in two requests (0.7999999999999999 in float), b gets 0.8: they tie
    (API.md: relative 1e-12), so a ranks before b, in the hot tier's top-K and rank alike."""
    stream = unique_stream("tie")
    base = (now_ms() // H4) * H4 - H4
    post(api, stream, [("b", base + MINUTE_MS, 0.8), ("a", base + MINUTE_MS, 0.7), ("a", base + 2 * MINUTE_MS, 0.1),
                       ("c", base + 3 * MINUTE_MS, 0.5)])
    frm, to = format_time(base), format_time(base + H4)
    for k in (1, 3):
        top = q(api, "/v1/query/topk", stream=stream, **{"from": frm, "to": to}, k=k, by="sum")
        assert [i["key"] for i in top["items"]] == ["a", "b", "c"][:k]
    rank = q(api, "/v1/query/rank", stream=stream, **{"from": frm, "to": to}, key="b", by="sum")
    assert rank["rank"] == 2


# ---- the tier itself: values beyond the API's 1e15, and any order of batches and folds --------------

def _table(stream: str, rows: list[tuple[str, int, float]]) -> pa.Table:
    return pa.table({"stream": [stream] * len(rows), "key": [r[0] for r in rows], "ts": [r[1] for r in rows],
                     "value": [float(r[2]) for r in rows], "id": [None] * len(rows)}, schema=EVENT_SCHEMA)


def _check(hot, stream: str, rows: list[tuple[str, int, float]], rng: TimeRange) -> None:
    want = {}
    for key in sorted({r[0] for r in rows}):
        xs = [v for k, t, v in rows if k == key and rng.start <= t < rng.end]
        if xs:
            want[key] = (math.fsum(xs), math.fsum(abs(x) for x in xs), len(xs))

    def close(got: float, key: str) -> bool:  # Neumaier's bound: a couple of ulps + n eps^2 sum|x|
        exact, mags, n = want[key]
        return abs(got - exact) <= 2 * math.ulp(exact) + n * 2.0 ** -104 * mags

    pieces = cover(rng, hot.granularities)
    t = hot.aggregate("t", stream, pieces, "key").to_pylist()
    assert {r["key"] for r in t} == set(want) and all(close(r["sum"], r["key"]) for r in t), (t, want)
    for r in t:
        one = hot.aggregate("t", stream, pieces, "key", key=r["key"]).to_pylist()
        assert close(one[0]["sum"], r["key"]), (one, want[r["key"]])
    top = hot.top_k("t", stream, pieces, len(want), "sum")
    assert all(close(i.value, i.key) for i in top), (top, want)
    kv = hot.key_values("t", stream, pieces, "sum").to_pylist()
    assert all(close(r["value"], r["key"]) for r in kv), (kv, want)
    for key in want:
        got = hot.rank("t", stream, pieces, key, "sum")
        assert close(got.value, key), (got, want[key])
    totals = hot.aggregate("t", stream, pieces, "bucket")  # stream totals, with their low parts (sum_lo)
    terms = totals["sum"].to_pylist() + (totals["sum_lo"].to_pylist() if "sum_lo" in totals.column_names else [])
    exact = math.fsum(v for _, t_, v in rows if rng.start <= t_ < rng.end)
    assert abs(math.fsum(terms) - exact) <= 2 * math.ulp(exact) + len(rows) * 2.0 ** -104 * math.fsum(
        abs(v) for *_, v in rows), (terms, exact)


def test_1e16_plus_1_minus_1e16_is_1_in_the_tier(hot):
    """Three batches to one key, in the same minute, then across hours folded by compaction."""
    now = now_ms()
    base = (now // H4) * H4 - H4
    for spread in (0, 40 * MINUTE_MS):
        stream = unique_stream("e16")
        rows = [("x", base + i * spread + i * 1000, v) for i, v in enumerate((1e16, 1.0, -1e16))]
        for row in rows:
            hot.ingest("t", _table(stream, [row]), now_ms=now)
        rng = TimeRange(base, base + H4)
        _check(hot, stream, rows, rng)
        hot.compact("t", stream, now_ms=now)
        _check(hot, stream, rows, rng)
        assert hot.aggregate("t", stream, cover(rng, hot.granularities), "key", key="x").to_pylist()[0]["sum"] == 1.0


VALUES = st.sampled_from([1e15, -1e15, 1e16, -1e16, 0.1, -0.3, 0.7, 1e-3, 7.5, -2.0, 1e12 + 0.5, 3.3e-5])


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 150), VALUES), min_size=1, max_size=30),
       cuts=st.lists(st.integers(1, 29), max_size=6), compact_after=st.sets(st.integers(0, 7), max_size=3),
       seed=st.integers(0, 10 ** 6))
@example(values=[("a", 0, 1e15), ("a", 1, 0.1), ("a", 70, -1e15), ("b", 3, 0.7)], cuts=[1, 2], compact_after={0, 1},
         seed=0)  # the trial user's case, across a fold
def test_any_order_of_batches_and_folds_gives_fsum_per_key(hot, values, cuts, compact_after, seed):
    """Random mixed-sign values over a few keys and 150 minutes, in random batches and orders, with
    compaction between some batches: every read by sum equals math.fsum per key (Neumaier's bound)."""
    now = now_ms()
    base = (now // H4) * H4 - 2 * H4
    stream = unique_stream("prop")
    rows = [(k, base + m * MINUTE_MS + i, v) for i, (k, m, v) in enumerate(values)]
    random.Random(seed).shuffle(rows)
    edges = sorted({0, len(rows), *[c for c in cuts if c < len(rows)]})
    for b, (lo, hi) in enumerate(zip(edges, edges[1:])):
        hot.ingest("t", _table(stream, rows[lo:hi]), now_ms=now)
        if b in compact_after:
            hot.compact("t", stream, now_ms=now)
    _check(hot, stream, rows, TimeRange(base, base + 3 * HOUR_MS))
    _check(hot, stream, rows, TimeRange(base + 7 * MINUTE_MS, base + 143 * MINUTE_MS))


def test_the_threshold_algorithms_hot_lists_read_exact_values(hot):
    """hot.ranked_access (the router's threshold algorithm): random access adds each list's low
    parts, so a key's value over many minutes is its exact sum, and the TA's top-K equals fsum."""
    from rollups.threshold import threshold_top_k

    now = now_ms()
    base = (now // H4) * H4 - H4
    stream = unique_stream("ta")
    rows = [("a", base + MINUTE_MS, 1e15)] + [("a", base + (2 + i) * MINUTE_MS, 0.1) for i in range(7)] \
        + [("b", base + i * MINUTE_MS, 0.3) for i in range(1, 9)] + [("c", base + 5 * MINUTE_MS, 2.4)]
    for i in range(0, len(rows), 3):
        hot.ingest("t", _table(stream, rows[i:i + 3]), now_ms=now)
    hot.compact("t", stream, now_ms=now)
    pieces = cover(TimeRange(base, base + H4), hot.granularities)
    want = {k: math.fsum(v for key, _, v in rows if key == k) for k in "abc"}
    access = hot.ranked_access("t", stream, pieces, "sum")
    assert dict(zip("abc", access.exact(list("abc")).tolist())) == want
    top = threshold_top_k([access], 3)
    assert [(r.key, r.value) for r in top] == sorted(want.items(), key=lambda kv: -kv[1])


def test_the_all_time_rebuild_swaps_in_exact_pairs(hot):
    """A rebuild's swap adds the tiers' totals (1e16) and what ingest counted aside meanwhile (1)
    as pairs (TwoSum in ZUNIONSTOREs): a later -1e16 leaves the all-time score at 1, not 0."""
    now = now_ms()
    stream = unique_stream("swap")
    ts = (now // H4) * H4 - H4
    hot.ingest("t", _table(stream, [("x", ts, 0.5)]), now_ms=now)  # the stream exists; the totals replace it
    hot.begin_alltime_rebuild([("t", stream)], "tok", 60_000)
    hot.ingest("t", _table(stream, [("x", ts + 1, 1.0), ("y", ts + 2, 0.1)]), now_ms=now)  # counted aside
    totals = pa.table({"key": ["x", "y"], "count": [1, 1], "sum": [1e16, 0.2]})
    assert hot.replace_alltime("t", stream, "tok", totals)
    score, rank = hot.score("t", stream, "x", -1e16, ts + 3, now)
    assert (score, rank) == (1.0, 1)
    score, _ = hot.score("t", stream, "y", -0.3, ts + 4, now)
    assert score == math.fsum([0.2, 0.1, -0.3])


def test_positive_decimals_rank_on_the_float_union_within_the_ordering_tolerance(hot, monkeypatch):
    """A rank over hot alone where no bucket read holds a negative value takes the float union of the
    pairs' hi parts (hot_query.lua `inexact`: no cancellation, relative error (buckets + 1) x eps),
    as fast as before; one negative value in a bucket read sends it through the exact path again."""
    from tiers import hot_sums

    calls = []
    real = hot_sums.exact_partials
    monkeypatch.setattr(hot_sums, "exact_partials", lambda sources: calls.append(1) or real(sources))
    now = now_ms()
    base = (now // H4) * H4 - H4
    rnd = random.Random(5)
    stream = unique_stream("posdec")
    rows = [(rnd.choice("abcdefg"), base + rnd.randrange(0, 3 * HOUR_MS), round(rnd.uniform(0.01, 99.99), 2))
            for _ in range(400)]
    for i in range(0, len(rows), 40):
        hot.ingest("t", _table(stream, rows[i:i + 40]), now_ms=now)
    hot.compact("t", stream, now_ms=now)
    pieces = cover(TimeRange(base, base + H4), hot.granularities)

    def check() -> None:
        want = {k: math.fsum(v for kk, _, v in rows if kk == k) for k in "abcdefg"}
        order = sorted(want, key=lambda k: (-want[k], k))
        for key in "adg":
            r = hot.rank("t", stream, pieces, key, "sum", 0)
            assert r.rank == order.index(key) + 1 and math.isclose(r.value, want[key], rel_tol=1e-13), (key, r)

    check()
    assert calls == []  # the float union
    hot.ingest("t", _table(stream, [("a", base + 10 * MINUTE_MS, -0.37)]), now_ms=now)
    rows.append(("a", base + 10 * MINUTE_MS, -0.37))
    check()
    assert calls  # the exact union
