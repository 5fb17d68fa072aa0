"""mode=approx top-K against the raw-event oracle: per-bucket frequent-items sketches merged over
the cover of every tier (hot, warm, cold, archive placed by running the jobs with as_of, as
tests/test_oracle_all_tiers.py does).

Guarantees checked on every answer (rollups/sketches.py): every item's true value lies within
[lower_bound, upper_bound]; no_false_negatives leaves out no key whose true value beats
max(k-th item's lower bound, meta.approx.max_error); no_false_positives lists only keys whose
true value exceeds max_error. The sketches are small (lg_k 4: 12 keys a bucket) and the keys many
and Zipf-distributed, so the bounds are wide and actually exercised.
"""
from __future__ import annotations

import math
import random
import time

import pyarrow as pa
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from rollups import sketches
from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, TimeRange, format_time, now_ms, parse_time
from tests.api_support import ApiServer, Oracle, isolated_settings, query_range, run_jobs, served, unique_stream

LG_K = 4
N_KEYS = 400
DAYS = 430
TOL = 1e-6


def _zipf_key(rnd: random.Random) -> str:
    return f"k{min(int(rnd.paretovariate(0.9)), N_KEYS) - 1:03d}"


# ---- pure: the sketch module -------------------------------------------------------------------

def _table(per_key: dict[str, tuple[int, float]]) -> pa.Table:
    keys = sorted(per_key)
    return pa.table({"key": pa.array(keys, pa.string()),
                     "count": pa.array([per_key[k][0] for k in keys], pa.int64()),
                     "sum": pa.array([per_key[k][1] for k in keys], pa.float64()),
                     "min": pa.array([0.0] * len(keys)), "max": pa.array([0.0] * len(keys))})


def _check_answer(ans: sketches.ApproxAnswer, truth: dict[str, float], k: int) -> None:
    tol = TOL * max(1.0, max(truth.values(), default=1.0))
    for item in ans.items:
        v = truth.get(item.key, 0.0)
        assert item.lower_bound - tol <= v <= item.upper_bound + tol, (item, v)
        assert math.isclose(item.error_bound, item.upper_bound - item.lower_bound)
    listed = {i.key for i in ans.items}
    if ans.error_type == "no_false_negatives":
        kth = ans.items[k - 1].lower_bound if len(ans.items) >= k else 0.0
        bar = max(kth, ans.max_error)
        assert math.isclose(ans.threshold, bar, rel_tol=1e-12, abs_tol=1e-12)
        left_out = {key: v for key, v in truth.items() if key not in listed and v > bar + tol}
        assert not left_out, (left_out, bar)
    else:
        assert len(ans.items) <= k
        assert all(truth[i.key] > ans.max_error - tol for i in ans.items)
    assert [(-i.value, i.key.encode()) for i in ans.items] == sorted((-i.value, i.key.encode()) for i in ans.items)


@hsettings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), buckets=st.integers(1, 12), per_bucket=st.integers(1, 400),
       lg_k=st.integers(3, 6), k=st.integers(1, 20), by=st.sampled_from(["count", "sum"]),
       error_type=st.sampled_from(sketches.ERROR_TYPES))
def test_merged_bucket_sketches_keep_their_bounds(seed, buckets, per_bucket, lg_k, k, by, error_type):
    rnd = random.Random(seed)
    merged = sketches.KeySketch.empty(lg_k)
    truth: dict[str, float] = {}
    for _ in range(buckets):
        per_key: dict[str, tuple[int, float]] = {}
        for _ in range(per_bucket):
            key, v = _zipf_key(rnd), rnd.choice([0.25, 1.0, 3.5, 0.1, 7.0])
            n, s = per_key.get(key, (0, 0.0))
            per_key[key] = (n + 1, s + v)
        for key, (n, s) in per_key.items():
            truth[key] = truth.get(key, 0.0) + (n if by == "count" else s)
        blob = sketches.serialize(sketches.build(_table(per_key), by, lg_k))
        merged.merge(sketches.deserialize(blob))
    _check_answer(sketches.answer(merged, k, by, error_type), truth, k)


def test_exact_when_the_sketch_holds_every_key():
    per_key = {f"k{i}": (i + 1, 0.5 * (i + 1)) for i in range(30)}
    ans = sketches.answer(sketches.build(_table(per_key), "count", 8), 5, "count", "no_false_negatives")
    assert ans.max_error == 0
    assert [(i.key, i.value, i.error_bound) for i in ans.items] == [(f"k{i}", float(i + 1), 0.0)
                                                                     for i in (29, 28, 27, 26, 25)]


def test_negative_sums_are_not_sketchable():
    with pytest.raises(sketches.NotSketchable):
        sketches.build(_table({"a": (1, -2.0), "b": (1, 3.0)}), "sum", 6)
    sketches.build(_table({"a": (1, -2.0), "b": (1, 3.0)}), "count", 6)


# ---- through the API, across the tiers ------------------------------------------------------------

@pytest.fixture(scope="module")
def api(settings):
    isolated = isolated_settings(settings, "approx", redis_db=54)
    yield from served(isolated.model_copy(update={"approx_sketch_lg_k": LG_K}))


def _send(api: ApiServer, oracle: Oracle, events: list[dict], size: int = 5000) -> None:
    for pos in range(0, len(events), size):
        batch = events[pos:pos + size]
        r = api.post("/v1/events", json=batch)
        assert r.status_code == 202, r.text
        oracle.add(batch)


def _events(rnd: random.Random, stream: str, lo: int, hi: int, n: int, values=(1.0, 0.5, 2.0, 4.0)) -> list[dict]:
    return [{"stream": stream, "key": _zipf_key(rnd), "ts": rnd.randrange(lo, hi), "value": rnd.choice(values)}
            for _ in range(n)]


def _approx(api: ApiServer, stream: str, start: int, end: int, k: int, by: str, error_type: str) -> dict:
    r = api.get("/v1/query/topk", {"stream": stream, "from": format_time(start), "to": format_time(end), "k": k,
                                   "by": by, "mode": "approx", "error_type": error_type})
    assert r.status_code == 200, r.text
    return r.json()


def _check_api(api: ApiServer, oracle: Oracle, stream: str, start: int, end: int, k: int, by: str,
               error_type: str) -> dict:
    body = _approx(api, stream, start, end, k, by, error_type)
    rng = query_range(format_time(start), format_time(end))
    truth = dict(oracle.ordered(rng, by))
    info = body["meta"]["approx"]
    assert "fallback" not in info, info
    assert info["error_type"] == error_type and info["sketch_size"] == 2 ** LG_K
    items = [sketches.ApproxItem(i["rank"], i["key"], i["value"], i["lower_bound"], i["upper_bound"])
             for i in body["items"]]
    assert [i["rank"] for i in body["items"]] == list(range(1, len(items) + 1))
    assert all(math.isclose(i["error_bound"], i["upper_bound"] - i["lower_bound"]) for i in body["items"])
    _check_answer(sketches.ApproxAnswer(items, info["max_error"], info["threshold"], error_type), truth, k)
    return body


def _ranges(rnd: random.Random, bounds: dict[str, int], lo: int, hi: int, n: int) -> list[tuple[int, int]]:
    marks = [b for b in bounds.values() if lo < b < hi]
    out = [(lo, hi)]
    for b in marks:
        for width in (37 * MINUTE_MS, 5 * HOUR_MS, 3 * DAY_MS, 40 * DAY_MS):
            out.append((max(lo, b - width), min(hi, b + width)))
    while len(out) < n:
        a, b = sorted(rnd.randrange(lo, hi) for _ in range(2))
        out.append((a, max(b, a + MINUTE_MS)))
    return [(a - a % MINUTE_MS, b + (-b) % MINUTE_MS) for a, b in out]


def _boundaries(api: ApiServer) -> dict[str, int]:
    return {k: parse_time(v) for k, v in api.get("/v1/tiers").json()["boundaries"].items()}


def _check_all(api: ApiServer, oracle: Oracle, stream: str, rnd: random.Random, lo: int, hi: int, n: int) -> int:
    wide = 0
    for start, end in _ranges(rnd, _boundaries(api), lo, hi, n):
        for error_type in sketches.ERROR_TYPES:
            body = _check_api(api, oracle, stream, start, end, rnd.choice([1, 3, 10]), rnd.choice(["count", "sum"]),
                              error_type)
            wide += body["meta"]["approx"]["max_error"] > 0
    return wide


def _job(api: ApiServer, name: str, as_of: str) -> None:
    run_jobs(api, name, as_of, timeout_s=900)


def test_bounds_hold_across_all_four_tiers_through_every_migration(api):
    rnd = random.Random(1414)
    stream = unique_stream("approx")
    oracle = Oracle()
    now = now_ms()
    lo, hi = now - DAYS * DAY_MS, now - now % MINUTE_MS - MINUTE_MS
    _send(api, oracle, _events(rnd, stream, lo, hi, 20_000))
    as_of = format_time(now)
    assert _check_all(api, oracle, stream, rnd, hi - 20 * HOUR_MS, hi, 4)  # hot (and warm) only

    for name in ("flush", "refresh"):
        _job(api, name, as_of)
    # refresh built warm's day sketches with the rollups: a whole-day warm range reads only stored ones
    b_warm = _boundaries(api)["warm"]
    day_end = b_warm - b_warm % DAY_MS
    body = _check_api(api, oracle, stream, day_end - 6 * DAY_MS, day_end, 5, "sum", "no_false_negatives")
    assert body["meta"]["approx"]["buckets"] == 6 and body["meta"]["approx"]["stored"] == 6, body["meta"]
    assert body["meta"]["approx"]["built"] == 0 and all(s["cached"] for s in body["meta"]["segments"])

    for name in ("expire_hot", "export_cold", "archive"):
        _job(api, name, as_of)
    body = api.get("/v1/query/topk", {"stream": stream, "from": format_time(lo), "to": format_time(hi),
                                      "explain": 1}).json()
    assert {s["tier"] for s in body["meta"]["segments"]} == {"archive", "cold", "warm", "hot"}
    assert _check_all(api, oracle, stream, rnd, lo, hi, 12) > 0  # the small sketches did purge

    # the second time every whole bucket comes from the sketch store
    again = _check_api(api, oracle, stream, lo, hi, 10, "count", "no_false_negatives")
    assert again["meta"]["approx"]["built"] == 0 and again["meta"]["approx"]["stored"] > 0
    assert again["meta"]["approx"]["files"] > 0  # cold and archive buckets: their partitions' sketch files
    assert any(s["cached"] and s["tier"] == "archive" for s in again["meta"]["segments"])

    # late events into warm change its buckets' versions: their sketches are rebuilt (by the refresh
    # or the query), never reused stale — a stale sketch would miss k399's 400 new events
    b = _boundaries(api)
    late = [{"stream": stream, "key": "k399", "ts": rnd.randrange(b["cold"], b["warm"]), "value": 3.0}
            for _ in range(400)]
    _send(api, oracle, late)
    for name in ("flush", "refresh"):
        _job(api, name, as_of)
    body = _check_api(api, oracle, stream, b["cold"], b["warm"], 3, "count", "no_false_negatives")
    assert "k399" in {i["key"] for i in body["items"]}
    _check_all(api, oracle, stream, rnd, lo, hi, 6)

    # cold sketches are versioned per partition file: exporting more days keeps the older ones
    cold_lo, cold_hi = b["archive"] + (-b["archive"]) % DAY_MS, b["cold"] - b["cold"] % DAY_MS
    _check_api(api, oracle, stream, cold_lo, cold_hi, 5, "count", "no_false_negatives")
    _job(api, "export_cold", format_time(now + 2 * DAY_MS))
    assert _boundaries(api)["cold"] > b["cold"]
    body = _check_api(api, oracle, stream, cold_lo, cold_hi, 5, "count", "no_false_negatives")
    info = body["meta"]["approx"]
    assert info["built"] == 0 and info["files"] > 0 and info["exact"] == [], body["meta"]


def test_large_sketch_is_exact_and_equals_the_exact_answer(api, settings):
    rnd = random.Random(7)
    stream = unique_stream("approx-small")
    oracle = Oracle()
    hi = now_ms() - now_ms() % MINUTE_MS - MINUTE_MS
    # fewer keys than a 16-slot sketch holds (12): nothing purges, the answer is exact
    events = [{"stream": stream, "key": f"s{rnd.randrange(10)}", "ts": rnd.randrange(hi - 10 * HOUR_MS, hi),
               "value": 2.0} for _ in range(500)]
    _send(api, oracle, events)
    params = {"stream": stream, "from": format_time(hi - 10 * HOUR_MS), "to": format_time(hi), "k": 5, "by": "sum"}
    exact = api.get("/v1/query/topk", params).json()
    approx = api.get("/v1/query/topk", {**params, "mode": "approx"}).json()
    assert approx["meta"]["approx"]["max_error"] <= 5 * sketches.SUM_QUANTUM
    # sums carry half a quantum of rounding per part: a key tied with the 5th may follow it
    head, tail = approx["items"][:5], approx["items"][5:]
    assert [i["key"] for i in head] == [i["key"] for i in exact["items"]]
    assert all(math.isclose(a["value"], e["value"]) for a, e in zip(head, exact["items"]))
    assert all(math.isclose(i["value"], head[-1]["value"]) for i in tail)
    counted = api.get("/v1/query/topk", {**params, "by": "count", "mode": "approx"}).json()
    assert counted["meta"]["approx"]["max_error"] == 0 and all(i["error_bound"] == 0 for i in counted["items"])
    assert [(i["key"], i["value"]) for i in counted["items"]] == \
        [(i["key"], i["value"]) for i in api.get("/v1/query/topk", {**params, "by": "count"}).json()["items"]]


def test_sum_over_negative_values_falls_back_to_exact(api):
    rnd = random.Random(9)
    stream = unique_stream("approx-neg")
    oracle = Oracle()
    hi = now_ms() - now_ms() % MINUTE_MS - MINUTE_MS
    _send(api, oracle, _events(rnd, stream, hi - 5 * HOUR_MS, hi, 2000, values=(1.0, -3.0, 2.5)))
    params = {"stream": stream, "from": format_time(hi - 5 * HOUR_MS), "to": format_time(hi), "k": 5, "by": "sum"}
    body = api.get("/v1/query/topk", {**params, "mode": "approx"}).json()
    assert body["meta"]["approx"]["fallback"] == "exact", body["meta"]
    exact = api.get("/v1/query/topk", params).json()
    assert [(i["key"], i["value"]) for i in body["items"]] == [(i["key"], i["value"]) for i in exact["items"]]
    assert all(i["error_bound"] == 0 for i in body["items"])
    by_count = api.get("/v1/query/topk", {**params, "by": "count", "mode": "approx"}).json()
    assert "fallback" not in by_count["meta"]["approx"]


def test_unknown_error_type_is_refused(api):
    r = api.get("/v1/query/topk", {"stream": "x", "from": "now-1h", "to": "now", "mode": "approx",
                                   "error_type": "sometimes"})
    assert r.status_code == 400 and r.json()["error"]["code"]


# ---- a tier down: 503 naming it, or allow_partial with the missing range ---------------------------

@pytest.fixture(scope="module")
def s3_cut(settings):
    """An app whose S3 is reached through a forwarder this test cuts (tests/outage.py), with
    16 days of events moved down by the jobs: archive < now-8d <= cold < now-3d <= warm/hot."""
    from tests.outage import Outage

    outage = Outage(settings.s3_endpoint)
    isolated = isolated_settings(settings, "approx_outage", redis_db=55).model_copy(update={
        "s3_endpoint": outage.url, "hot_age": DAY_MS, "warm_age": 3 * DAY_MS, "cold_age": 8 * DAY_MS,
        "grace_period": 0, "approx_sketch_lg_k": LG_K})
    for api in served(isolated):
        yield api, outage


def test_archive_down_is_503_or_a_partial_answer_with_bounds(s3_cut):
    api, outage = s3_cut
    rnd = random.Random(5)
    stream, oracle = unique_stream("approx-s3"), Oracle()
    now = now_ms()
    lo, hi = now - now % DAY_MS - 16 * DAY_MS, now - now % MINUTE_MS - 10 * MINUTE_MS
    _send(api, oracle, _events(rnd, stream, lo, hi, 4000))
    for name in ("flush", "refresh", "export_cold", "archive"):
        _job(api, name, format_time(now))
    b = _boundaries(api)
    assert lo < b["archive"] < b["cold"]
    _check_api(api, oracle, stream, lo, hi, 5, "count", "no_false_negatives")  # archive sketches stored

    outage.cut()
    time.sleep(2.5)  # the archive trusts a health check for 2 s (tiers/archive.py _require_s3), as the cache does
    params = {"stream": stream, "from": format_time(lo), "to": format_time(hi), "k": 5, "mode": "approx"}
    r = api.get("/v1/query/topk", params)
    assert r.status_code == 503 and r.json()["error"]["code"] == "tier_unavailable", r.text
    assert r.json()["error"]["details"][0]["tier"] == "archive"
    body = api.get("/v1/query/topk", {**params, "allow_partial": 1}).json()
    assert body["meta"]["partial"] is True
    assert [(m["tier"], parse_time(m["from"]), parse_time(m["to"])) for m in body["meta"]["missing"]] == \
        [("archive", lo, b["archive"])]
    assert "archive" not in {s["tier"] for s in body["meta"]["segments"]}
    truth = dict(oracle.ordered(TimeRange(b["archive"], hi), "count"))
    info = body["meta"]["approx"]
    items = [sketches.ApproxItem(i["rank"], i["key"], i["value"], i["lower_bound"], i["upper_bound"])
             for i in body["items"]]
    _check_answer(sketches.ApproxAnswer(items, info["max_error"], info["threshold"], info["error_type"]), truth, 5)
