"""meta.watermarks (issue 11, part 2): every query answer says per tier up to which ingest time it
includes every acknowledged event. A late event (ts warm owns) is acknowledged at once but shows in
warm's rollups only after flush AND refresh: until then meta.watermarks.warm stays at or below its
ingest time (its event-log entry's time), then rises past it and the answer equals the oracle.
The flush job refreshes by itself when it wrote late events, bounding that lag by one flush.
Real Redis (database 31) and PostgreSQL (its own database)."""
from __future__ import annotations

import time

import pytest
import redis

from rollups.timeutil import HOUR_MS, MINUTE_MS, floor_to, format_time, now_ms, parse_time
from router.freshness import CACHE_S
from scheduler import steps
from tests.api_support import Oracle, check_series, check_topk, isolated_settings, run_job, served, unique_stream
from tiers.eventlog import entry_id, latest_entries
from tiers.warm import WarmTier

TIERS = {"hot", "warm", "cold", "archive"}


@pytest.fixture(scope="module")
def f_settings(settings):
    return isolated_settings(settings, "freshness", redis_db=31)


@pytest.fixture(scope="module")
def api(f_settings):
    yield from served(f_settings)


@pytest.fixture(scope="module")
def log_redis(f_settings):
    client = redis.Redis.from_url(f_settings.redis_url)
    yield client
    client.close()


def post(api, events: list[dict], oracle: Oracle, log_redis) -> int:
    """POST the batch; returns its ingest time (the time of the event-log entry it became)."""
    r = api.post("/v1/events", json=events)
    assert r.status_code == 202, r.text
    oracle.add(events)
    return entry_id(latest_entries(log_redis)[0][0])[0]


def watermarks(api, stream: str, start: int, end: int) -> dict:
    time.sleep(CACHE_S + 0.1)  # past the router's watermark cache
    body = api.get("/v1/query/series", {"stream": stream, "from": format_time(start), "to": format_time(end),
                                        "step": "1h", "agg": "count"}).json()
    marks = body["meta"]["watermarks"]
    assert set(marks) == TIERS, marks
    return marks


def late_window(api) -> tuple[int, int]:
    """[start, end): two hours warm owns, ending an hour below b_warm."""
    b_warm = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
    end = floor_to(b_warm, HOUR_MS) - HOUR_MS
    return end - 2 * HOUR_MS, end


def check_answers(api, oracle: Oracle, stream: str, start: int, end: int) -> None:
    check_series(api, oracle, stream, format_time(start), format_time(end), "1h", "sum")
    check_series(api, oracle, stream, format_time(start), format_time(end), "1m", "count")
    check_topk(api, oracle, stream, format_time(start), format_time(end), 5, "sum")


def test_a_late_event_is_behind_the_warm_watermark_until_flush_and_refresh_ran(api, f_settings, log_redis):
    stream, oracle = unique_stream("fresh"), Oracle()
    start, end = late_window(api)
    run_job(api, "flush")
    run_job(api, "refresh")
    ingested = post(api, [{"stream": stream, "key": k, "ts": start + 17 * MINUTE_MS + i, "value": 2.5 + i}
                          for i, k in enumerate(("a", "b", "a"))], oracle, log_redis)
    assert watermarks(api, stream, start, end)["warm"] <= ingested  # acknowledged, not flushed

    warm = WarmTier.from_settings(f_settings)
    try:
        steps.flush(log_redis, warm)  # the plain step: no refresh chained
    finally:
        warm.close()
    behind = watermarks(api, stream, start, end)["warm"]
    assert behind is None or behind <= ingested  # flushed, not folded into the rollups

    run = run_job(api, "refresh")
    assert run["status"] == "done", run
    assert run["stats"]["watermark"] > ingested
    assert watermarks(api, stream, start, end)["warm"] > ingested
    check_answers(api, oracle, stream, start, end)


def test_the_flush_job_refreshes_at_once_after_late_events(api, log_redis):
    stream, oracle = unique_stream("fresh"), Oracle()
    start, end = late_window(api)
    ingested = post(api, [{"stream": stream, "key": f"k{i % 4}", "ts": start + i * 7 * MINUTE_MS, "value": i - 3.25}
                          for i in range(12)], oracle, log_redis)
    assert watermarks(api, stream, start, end)["warm"] <= ingested
    run = run_job(api, "flush")
    assert run["status"] == "done", run
    assert run["stats"]["late_refresh"]["watermark"] > ingested, run["stats"]
    assert watermarks(api, stream, start, end)["warm"] > ingested
    check_answers(api, oracle, stream, start, end)


def test_hot_events_are_visible_at_once_and_the_hot_watermark_is_the_request_start(api, log_redis):
    stream, oracle = unique_stream("fresh"), Oracle()
    now = now_ms()
    start, end = floor_to(now, HOUR_MS) - 2 * HOUR_MS, floor_to(now, MINUTE_MS) - MINUTE_MS
    ingested = post(api, [{"stream": stream, "key": f"h{i % 3}", "ts": start + i * MINUTE_MS, "value": 1.5 * i}
                          for i in range(30)], oracle, log_redis)
    asked = now_ms()
    body = api.get("/v1/query/topk", {"stream": stream, "from": format_time(start), "to": format_time(end),
                                      "k": 3, "by": "sum"}).json()
    hot = body["meta"]["watermarks"]["hot"]
    assert ingested <= asked <= hot <= now_ms()
    check_answers(api, oracle, stream, start, end)  # no job ran: hot holds every event already


def test_cold_and_archive_are_null_while_they_own_nothing_and_every_query_answer_has_watermarks(api):
    stream = unique_stream("fresh")
    api.post("/v1/events", json=[{"stream": stream, "key": "x", "ts": now_ms() - 5 * MINUTE_MS}])
    rng = {"stream": stream, "from": "now-1h", "to": "now"}
    answers = [api.get("/v1/query/series", {**rng, "step": "5m", "agg": "sum"}),
               api.get("/v1/query/topk", rng), api.get("/v1/query/rank", {**rng, "key": "x"}),
               api.get("/v1/query/topk", {**rng, "explain": 1}),
               api.get("/v1/query/trending", {"stream": stream, "k": 3, "half_life": "1h"})]
    for r in answers:
        assert r.status_code == 200, r.text
        marks = r.json()["meta"]["watermarks"]
        assert marks["cold"] is None and marks["archive"] is None and marks["hot"] > 0, marks
        assert marks["warm"] is not None, marks
    schema = api.get("/openapi.json").json()["components"]["schemas"]
    assert "watermarks" in schema["Meta"]["properties"] and "Watermarks" in schema


def test_hot_is_null_while_expire_hot_hands_minutes_to_warm(api, log_redis):
    """The hot floor above b_warm (expire_hot between raising it and moving b_warm): events for
    those minutes acknowledged meanwhile skip hot, so hot cannot claim them."""
    from tiers.eventlog import HOT_FLOOR_KEY

    b_warm = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
    floor = log_redis.get(HOT_FLOOR_KEY)
    log_redis.set(HOT_FLOOR_KEY, b_warm + MINUTE_MS)
    try:
        stream = unique_stream("fresh")
        api.post("/v1/events", json=[{"stream": stream, "key": "x", "ts": now_ms() - 5 * MINUTE_MS}])
        assert watermarks(api, stream, b_warm, floor_to(now_ms(), MINUTE_MS))["hot"] is None
    finally:
        if floor is None:
            log_redis.delete(HOT_FLOOR_KEY)
        else:
            log_redis.set(HOT_FLOOR_KEY, floor)
    time.sleep(CACHE_S + 0.1)
    assert watermarks(api, stream, b_warm, floor_to(now_ms(), MINUTE_MS))["hot"] is not None
