"""Top-K across hot and warm through HTTP: the threshold algorithm (router/ranking.py) answers
exactly, float-rounding ties order by key whatever tier holds which part, and signed sums are
merged with compensation (1e16 + 1 - 1e16 = 1)."""
from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from rollups.topk import rank_order
from rollups.timeutil import HOUR_MS, MINUTE_MS, floor_to, now_ms, parse_time
from tests.api_support import isolated_settings, run_job, served, unique_stream


@pytest.fixture(scope="module")
def api(settings):
    yield from served(isolated_settings(settings, "readpath_ranking", redis_db=58))


def post(api, events):
    r = api.post("/v1/events", json=events)
    assert r.status_code == 202, r.text


def settle(api):
    for job in ("flush", "refresh"):
        assert run_job(api, job)["status"] == "done"


def topk(api, stream, start, end, k, by):
    body = api.get("/v1/query/topk", {"stream": stream, "from": start, "to": end, "k": k, "by": by}).json()
    assert not body["meta"]["partial"], body
    return body


def test_near_ties_across_tiers_order_by_key_and_ta_is_exact(api):
    stream = unique_stream("near")
    b_warm = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
    warm_ts, hot_ts = b_warm - 2 * HOUR_MS, floor_to(now_ms(), MINUTE_MS) - 3 * MINUTE_MS
    ev = lambda key, ts, value: {"stream": stream, "key": key, "ts": ts, "value": value}  # noqa: E731
    # a = 0.7 (warm) + 0.1 (hot) = 0.7999999999999999, b = 0.8 (hot): equal for ordering
    # d = 0.8 (warm), c = 0.1 (warm) + 0.7 (hot): the same tie with the tiers swapped
    post(api, [ev("a", warm_ts, 0.7), ev("d", warm_ts, 0.8), ev("c", warm_ts, 0.1),
               ev("a", hot_ts, 0.1), ev("b", hot_ts, 0.8), ev("c", hot_ts, 0.7)])
    # a long tail so that TA has something to skip
    post(api, [ev(f"tail{i:03d}", warm_ts + i, 0.01) for i in range(300)]
         + [ev(f"tail{i:03d}", hot_ts, 0.01) for i in range(0, 300, 3)])
    settle(api)
    start, end = warm_ts - HOUR_MS, hot_ts + 2 * MINUTE_MS
    body = topk(api, stream, start, end, 4, "sum")
    assert [i["key"] for i in body["items"]] == ["a", "b", "c", "d"], body["items"]
    assert all(abs(i["value"] - 0.8) < 1e-12 for i in body["items"])
    assert body["meta"]["ranking"]["method"] == "threshold", body["meta"]
    assert {s["tier"] for s in body["meta"]["segments"]} == {"warm", "hot"}
    top = topk(api, stream, start, end, 2, "count")
    assert [(i["key"], i["value"]) for i in top["items"]] == [("a", 2.0), ("c", 2.0)]
    assert top["meta"]["ranking"]["method"] == "threshold"
    third = topk(api, stream, start, end, 10, "count")["items"]
    assert [i["key"] for i in third[:4]] == ["a", "c", "tail000", "tail003"]


def test_signed_sums_across_pieces_are_compensated(api):
    stream = unique_stream("fsum")
    b_warm = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
    hour = floor_to(now_ms(), HOUR_MS) - 3 * HOUR_MS
    assert hour > b_warm + 10 * MINUTE_MS, "the hot tier must own the last few hours"
    ev = lambda ts, value: {"stream": stream, "key": "x", "ts": ts, "value": value}  # noqa: E731
    post(api, [ev(b_warm - HOUR_MS, 1e15) for _ in range(10)])        # warm: +1e16
    post(api, [ev(hour + 10 * MINUTE_MS, -1e15) for _ in range(10)])  # hot, in whole hours: -1e16
    post(api, [ev(hour + HOUR_MS + 2 * MINUTE_MS, 1.0)])                # hot, the 1m edge piece: +1
    post(api, [{"stream": stream, "key": "y", "ts": hour + MINUTE_MS, "value": 0.5}])
    settle(api)
    body = topk(api, stream, b_warm - 2 * HOUR_MS, hour + HOUR_MS + 5 * MINUTE_MS, 2, "sum")
    assert [(i["key"], i["value"]) for i in body["items"]] == [("x", 1.0), ("y", 0.5)], body
    # negative values no longer turn the threshold algorithm off: its random access adds the pairs
    assert body["meta"]["ranking"]["method"] == "threshold", (body["meta"]["ranking"], body["meta"]["segments"])


NEAR = [0.1, 0.2, 0.3, 0.7, 0.8, 1.0, 0.0, 2.0]  # sums of these tie up to float rounding
KEYS = ["a", "b", "c", "d", "é", "B", "k1", "k10"]


@given(data=st.data())
@hsettings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
def test_hypothesis_near_ties_split_across_hot_and_warm(api, data):
    stream = unique_stream("hypnear")
    b_warm = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
    warm_ts, hot_ts = b_warm - 2 * HOUR_MS, floor_to(now_ms(), MINUTE_MS) - 3 * MINUTE_MS
    rows = data.draw(st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(NEAR), st.booleans()),
                              min_size=1, max_size=30))
    post(api, [{"stream": stream, "key": key, "ts": (warm_ts if in_warm else hot_ts) + i, "value": v}
               for i, (key, v, in_warm) in enumerate(rows)])
    settle(api)
    totals: dict[str, list[float]] = {}
    for key, v, _ in rows:
        totals.setdefault(key, []).append(v)
    keys = list(totals)
    values = [math.fsum(vs) for vs in totals.values()]
    want = [keys[i] for i in rank_order(keys, values)]
    k = data.draw(st.integers(1, len(keys)))
    body = topk(api, stream, warm_ts - HOUR_MS, hot_ts + 2 * MINUTE_MS, k, "sum")
    assert [i["key"] for i in body["items"]] == want[:k], (rows, body["items"])
    assert body["meta"]["ranking"]["method"] == "threshold"
