"""GET /v1/query/trending against the raw-event oracle: every score within the stated bucket-start
approximation of the exact per-event decayed sum, with data in the hot and warm tiers (minute and
hour rollups), and `min_change` hysteresis keeping the order until the margin is crossed."""
from __future__ import annotations

import random
import types

import pytest

from rollups import trending as tr
from rollups.errors import ClockOverrideDisabled
from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, TimeRange, ceil_to, now_ms, parse_duration, parse_time
from rollups.clock import check_clock
from tests.api_support import ApiServer, Oracle, isolated_settings, redis_db_url, run_jobs, served, unique_stream

KEYS = [f"song_{i:02d}" for i in range(25)] + ["é", "🎵"]


@pytest.fixture(scope="module")
def api(settings):
    yield from served(isolated_settings(settings, "trending", redis_db=56))


def send(api: ApiServer, oracle: Oracle, batch: list[dict]) -> None:
    for pos in range(0, len(batch), 2000):
        part = batch[pos:pos + 2000]
        r = api.post("/v1/events", json=part)
        assert r.status_code == 202, r.text
        oracle.add(part)


def trending(api: ApiServer, **params) -> dict:
    r = api.get("/v1/query/trending", params)
    assert r.status_code == 200, r.text
    return r.json()


def exact_scores(oracle: Oracle, ref: int, half_life: int) -> dict[str, float]:
    out: dict[str, list[tuple[int, float]]] = {}
    for key, ts, value in oracle.events:
        out.setdefault(key, []).append((ts, value))
    return {key: tr.exact_score(ev, ref, half_life) for key, ev in out.items()}


def check_against_oracle(body: dict, oracle: Oracle, half_life: str, k: int) -> None:
    ref = parse_time(body["as_of"])
    hl = parse_duration(half_life)
    exact = exact_scores(oracle, ref, hl)
    err = body["meta"]["trending"]["max_relative_error"]
    assert 0 < err <= 0.05 and body["meta"]["trending"]["weighting"] == "bucket_start"
    items = body["items"]
    assert [i["rank"] for i in items] == list(range(1, len(items) + 1))
    assert len(items) == min(k, sum(1 for v in exact.values() if v > 0))
    floor = sum(abs(v) for _, _, v in oracle.events) * tr.CUTOFF  # what the cutoff may leave out
    for item in items:
        want = exact[item["key"]]
        # weighted at bucket start: exact / (1 + e) <= score <= exact
        assert want / (1 + err) - floor - 1e-9 * want <= item["score"] <= want * (1 + 1e-9) + floor, (item, want, err)
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True)  # min_change 0: by score
    if len(items) == k:  # nobody left out could beat the k-th by more than the error
        listed = {i["key"] for i in items}
        for key, want in exact.items():
            if key not in listed:
                assert want <= (1 + err) * scores[-1] * (1 + 1e-9) + floor, (key, want, scores[-1])


def test_scores_match_the_oracle_in_hot_and_warm(api):
    rnd = random.Random(14)
    stream = unique_stream("trend")
    oracle = Oracle()
    b_warm = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
    now = now_ms()
    assert now - b_warm < 30 * HOUR_MS, "the window must reach below b_warm"
    heavy = KEYS[:5]  # a few keys take most events, so the order means something
    events = []
    for window, n in ((TimeRange(now - 4 * DAY_MS, b_warm), 3000), (TimeRange(b_warm, now - MINUTE_MS), 5000)):
        for _ in range(n):
            key = rnd.choice(heavy) if rnd.random() < 0.5 else rnd.choice(KEYS)
            events.append({"stream": stream, "key": key, "ts": rnd.randrange(window.start, window.end),
                           "value": rnd.choice([1.0, 1.0, 2.0, 5.0, 0.5])})
    send(api, oracle, events)
    run_jobs(api, ("flush", "refresh"))

    for half_life, k in (("1h", 10), ("6h", 5), ("1d", 20), ("15m", 3)):
        body = trending(api, stream=stream, k=k, half_life=half_life)
        check_against_oracle(body, oracle, half_life, k)
        tiers = {s["tier"] for s in body["meta"]["segments"]}
        reaches_warm = parse_time(body["meta"]["trending"]["window_from"]) < b_warm
        assert tiers == ({"hot", "warm"} if reaches_warm else {"hot"}), body["meta"]["segments"]
        assert reaches_warm or half_life == "15m"
        if half_life == "1d":  # 1h slices: hour rollups further back
            assert any(s["granularity"] == "1h" for s in body["meta"]["segments"]), body["meta"]["segments"]
    # as_of in the past: the same guarantee
    as_of = now - 3 * HOUR_MS
    body = trending(api, stream=stream, k=10, half_life="1h", as_of=as_of)
    assert parse_time(body["as_of"]) == ceil_to(as_of, MINUTE_MS)
    check_against_oracle(body, oracle, "1h", 10)
    # a second call reads the same pieces (cached) and says the same
    again = trending(api, stream=stream, k=10, half_life="1h", as_of=as_of)
    assert again["items"] == body["items"]


def test_hysteresis_keeps_the_order_until_the_margin_is_crossed(api):
    stream = unique_stream("hyst")
    oracle = Oracle()
    t = ceil_to(now_ms(), MINUTE_MS) - 10 * MINUTE_MS
    as_of = t + 5 * MINUTE_MS
    ask = {"stream": stream, "k": 3, "half_life": "1h", "as_of": as_of, "min_change": 0.1}
    send(api, oracle, [{"stream": stream, "key": "a", "ts": t, "value": 100.0},
                       {"stream": stream, "key": "b", "ts": t, "value": 95.0},
                       {"stream": stream, "key": "c", "ts": t, "value": 10.0}])
    assert [i["key"] for i in trending(api, **ask)["items"]] == ["a", "b", "c"]
    send(api, oracle, [{"stream": stream, "key": "b", "ts": t, "value": 8.0}])  # b 103 vs a 100: < 10 %
    body = trending(api, **ask)
    assert [i["key"] for i in body["items"]] == ["a", "b", "c"], body
    assert body["items"][1]["score"] > body["items"][0]["score"]  # kept although b scores more
    assert body["meta"]["hysteresis"] == {"min_change": 0.1, "previous": 3}
    # without hysteresis (another k, so another stored order) the answer is by score
    plain = {**ask, "k": 2, "min_change": 0}
    assert [i["key"] for i in trending(api, **plain)["items"]] == ["b", "a"]
    send(api, oracle, [{"stream": stream, "key": "b", "ts": t, "value": 8.0}])  # b 111 vs a 100: > 10 %
    assert [i["key"] for i in trending(api, **ask)["items"]] == ["b", "a", "c"]
    send(api, oracle, [{"stream": stream, "key": "a", "ts": t, "value": 5.0}])  # a 105: b stays ahead
    assert [i["key"] for i in trending(api, **ask)["items"]] == ["b", "a", "c"]
    # a newcomer enters the top 3 only by beating the last one by the margin
    send(api, oracle, [{"stream": stream, "key": "d", "ts": t, "value": 10.5}])
    assert [i["key"] for i in trending(api, **ask)["items"]] == ["b", "a", "c"]
    send(api, oracle, [{"stream": stream, "key": "d", "ts": t, "value": 1.0}])  # d 11.5 > 11
    assert [i["key"] for i in trending(api, **ask)["items"]] == ["b", "a", "d"]


def test_stable_order_changes_only_by_the_margin():
    rnd = random.Random(3)
    keys = [f"k{i}" for i in range(40)]
    previous: list[str] = []
    for _ in range(200):
        scores = {k: rnd.uniform(0, 100) for k in rnd.sample(keys, 30)}
        order = tr.stable_order(scores, previous, 10, 0.2)
        assert len(order) == 10 and len(set(order)) == 10
        old = [k for k in previous if k in scores]
        for i, a in enumerate(order):  # a pair swapped against the previous order: by the margin
            for b in order[i + 1:]:
                if a in old and b in old and old.index(b) < old.index(a):
                    assert tr.beats(scores[a], scores[b], 0.2)
        previous = order
    assert tr.stable_order({"a": 1.0, "b": 2.0}, ["a", "b"], 5, 0) == ["b", "a"]


def test_parameters_are_checked(api):
    stream = unique_stream("bad")
    for params in ({"half_life": "30s"}, {"half_life": "31d"}, {"half_life": "1x"}, {"k": 0}, {"k": 10001},
                   {"min_change": -1}, {"by": "max"}, {"as_of": "soon"}):
        r = api.get("/v1/query/trending", {"stream": stream, **params})
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"]["code"] in ("validation_failed", "bad_request"), r.text
    r = api.get("/v1/query/trending", {"stream": stream})  # never existed: as series, top-K and rank
    assert r.status_code == 404 and r.json()["error"]["code"] == "stream_not_found", r.text
    assert api.request("PUT", f"/v1/streams/{stream}", json={}).status_code == 201
    body = trending(api, stream=stream)  # known and empty
    assert body["items"] == [] and body["half_life"] == "1h" and body["k"] == 10


def test_as_of_respects_the_guarded_clock():
    now = now_ms()
    guarded = types.SimpleNamespace(allow_clock_override=False, clock_skew=5 * MINUTE_MS)
    check_clock(now + 4 * MINUTE_MS, guarded, now)
    with pytest.raises(ClockOverrideDisabled) as info:
        check_clock(now + 6 * MINUTE_MS, guarded, now)
    assert info.value.status == 422 and info.value.code == "clock_override_disabled"
    check_clock(now + DAY_MS, types.SimpleNamespace(allow_clock_override=True, clock_skew=0), now)


def test_future_as_of_is_refused_over_http_without_the_override(settings):
    from router.app import create_app

    class Catalog:
        def snapshot(self):
            raise AssertionError("not reached")

    guarded = settings.model_copy(update={"allow_clock_override": False,
                                          "redis_url": redis_db_url(settings, "trending", 56, empty=False)})
    app = create_app(guarded, tiers={}, catalog=Catalog())
    server = ApiServer(app)
    try:
        r = server.get("/v1/query/trending", {"stream": "s", "as_of": "now+1d"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "clock_override_disabled", r.text
    finally:
        server.close()
