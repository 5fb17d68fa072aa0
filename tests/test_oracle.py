"""The raw-event oracle through HTTP: random events in, random ranges out, every answer compared
with the same aggregate computed in Python from the events the API accepted.

Most ranges lie in what the hot tier owns; one test moves data to warm through the jobs API
(flush, refresh, expire_hot with as_of) and queries ranges straddling b_warm. The comparison
helpers (tests/api_support.py) take any range, for oracles over more tiers.
"""
from __future__ import annotations

import random
import uuid

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from rollups.timeutil import HOUR_MS, MINUTE_MS, TimeRange, format_time, now_ms, parse_time
from tests.api_support import (AGGS, STEPS, ApiServer, Oracle, check_rank, check_series, check_topk, hot_window,
                               isolated_settings, ndjson, run_job, served, unique_stream)

KEYS = [f"k{i:02d}" for i in range(30)] + ["é", "Z", "a b", "ключ", "🎵", "k"]
VALUES = [0.0, 0.5, 1.0, 1.0, 2.0, 3.0, 7.5, -1.0, -2.5, 100.0]


@pytest.fixture(scope="module")
def api(settings):
    yield from served(isolated_settings(settings, "oracle", redis_db=7))


def send(api: ApiServer, oracle: Oracle, batch: list[dict], rnd: random.Random) -> None:
    if rnd.random() < 0.5:
        r = api.post("/v1/events", json=batch)
    else:
        r = api.post("/v1/events", data=ndjson(batch), headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["accepted"], body["duplicates"]) == oracle.add(batch)


def random_events(rnd: random.Random, stream: str, window: TimeRange, n: int, tag: str) -> list[dict]:
    out = []
    for i in range(n):
        ts = rnd.randrange(window.start, window.end)
        e = {"stream": stream, "key": rnd.choice(KEYS), "ts": ts if rnd.random() < 0.5 else format_time(ts)}
        if rnd.random() < 0.8:
            e["value"] = rnd.choice(VALUES)
        if rnd.random() < 0.3:
            e["id"] = f"{tag}-{i}"
        out.append(e)
    return out


def random_range(rnd: random.Random, window: TimeRange) -> tuple[int, int]:
    """Minute-aligned most of the time; sometimes not (the API rounds: from down, to up)."""
    a = rnd.randrange(window.start, window.end - MINUTE_MS)
    b = rnd.randrange(a + 1, min(window.end, a + rnd.choice([10, 90, 600, 1500]) * MINUTE_MS) + 1)
    if rnd.random() < 0.7:
        a, b = a - a % MINUTE_MS, b - b % MINUTE_MS + (MINUTE_MS if b % MINUTE_MS else 0)
    return a, b


def check_random_queries(api: ApiServer, oracle: Oracle, stream: str, window: TimeRange, rnd: random.Random,
                         n: int) -> None:
    whole = (window.start, window.end)
    for i in range(n):
        start, end = whole if i == 0 else random_range(rnd, window)
        check_topk(api, oracle, stream, start, end, rnd.choice([1, 3, 10, 50]), rnd.choice(["count", "sum"]))
        key = rnd.choice(KEYS + ["absent"])
        check_rank(api, oracle, stream, start, end, key, rnd.choice(["count", "sum"]), rnd.choice([0, 1, 3]))
        step = rnd.choice(STEPS)
        check_series(api, oracle, stream, start, end, step, rnd.choice(AGGS),
                     rnd.choice([None, None, rnd.choice(KEYS)]))


def test_random_batches_match_the_oracle(api):
    rnd = random.Random(20261122)
    stream = unique_stream("oracle")
    window = hot_window(api)
    oracle = Oracle()
    tag = uuid.uuid4().hex
    events = random_events(rnd, stream, window, 6000, tag)
    pos = 0
    while pos < len(events):
        size = rnd.choice([1, 7, 100, 500, 2000])
        send(api, oracle, events[pos:pos + size], rnd)
        pos += size
    retry = [e for e in events[:800] if "id" in e]
    send(api, oracle, retry, rnd)  # a client retry: every id is a duplicate
    check_random_queries(api, oracle, stream, window, rnd, 40)


def test_ties_order_by_key(api):
    stream = unique_stream("ties")
    window = hot_window(api)
    oracle = Oracle()
    batch = [{"stream": stream, "key": k, "ts": window.start + i, "value": 2.0}
             for i, k in enumerate(["b", "a", "é", "c", "B", "🎵", "a b"])]
    send(api, oracle, batch, random.Random(1))
    for by in ("count", "sum"):
        check_topk(api, oracle, stream, window.start, window.end, 10, by)
        check_topk(api, oracle, stream, window.start, window.end, 3, by)
        for key in ("a", "c", "🎵"):
            check_rank(api, oracle, stream, window.start, window.end, key, by, 2)


@given(data=st.data())
@hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_hypothesis_events_and_ranges(api, data):
    window = hot_window(api)
    stream = unique_stream("hyp")
    oracle = Oracle()
    minutes = (window.end - window.start) // MINUTE_MS
    event = st.fixed_dictionaries(
        {"stream": st.just(stream), "key": st.sampled_from(KEYS[:8] + KEYS[-4:]),
         "ts": st.integers(0, minutes * MINUTE_MS - 1).map(lambda off: window.start + off)},
        optional={"value": st.sampled_from(VALUES), "id": st.sampled_from([f"{stream}-{i}" for i in range(20)])})
    batches = data.draw(st.lists(st.lists(event, min_size=1, max_size=60), min_size=1, max_size=4))
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    for batch in batches:
        send(api, oracle, batch, rnd)
    offsets = st.integers(0, minutes)
    for _ in range(3):
        a, b = sorted(data.draw(st.lists(offsets, min_size=2, max_size=2, unique=True)))
        start, end = window.start + a * MINUTE_MS, window.start + b * MINUTE_MS
        by = data.draw(st.sampled_from(["count", "sum"]))
        check_topk(api, oracle, stream, start, end, data.draw(st.integers(1, 15)), by)
        check_rank(api, oracle, stream, start, end, data.draw(st.sampled_from(KEYS[:8] + ["absent"])), by,
                   data.draw(st.integers(0, 3)))
        check_series(api, oracle, stream, start, end, data.draw(st.sampled_from(STEPS)),
                     data.draw(st.sampled_from(AGGS)), data.draw(st.sampled_from([None, KEYS[0]])))


@pytest.fixture(scope="module")
def api_for_migrations(settings):
    yield from served(isolated_settings(settings, "oracle_tiers", redis_db=9))


def test_ranges_across_hot_and_warm_through_the_jobs_api(api_for_migrations):
    api = api_for_migrations
    rnd = random.Random(5)
    stream = unique_stream("tiers")
    oracle = Oracle()
    b_warm = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
    now = now_ms()
    late = TimeRange(b_warm - 6 * HOUR_MS, b_warm)  # owned by warm: reaches it through the log
    fresh = TimeRange(b_warm, now - MINUTE_MS)
    tag = uuid.uuid4().hex
    for window, n in ((late, 1500), (fresh, 4000)):
        events = random_events(rnd, stream, window, n, f"{tag}-{window.start}")
        for pos in range(0, n, 500):
            send(api, oracle, events[pos:pos + 500], rnd)
    everything = TimeRange(late.start, fresh.end)

    for job in ("flush", "refresh"):
        assert run_job(api, job)["status"] == "done"
    check_random_queries(api, oracle, stream, everything, rnd, 15)

    run = run_job(api, "expire_hot", as_of=now + 8 * HOUR_MS)
    assert run["status"] == "done", run
    moved = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
    assert moved > b_warm
    body = api.get("/v1/query/topk", {"stream": stream, "from": moved - HOUR_MS, "to": moved + HOUR_MS}).json()
    assert [s["tier"] for s in body["meta"]["segments"]][::len(body["meta"]["segments"]) - 1] == ["warm", "hot"]
    check_random_queries(api, oracle, stream, everything, rnd, 25)

    newly_late = random_events(rnd, stream, TimeRange(moved - 2 * HOUR_MS, moved), 300, f"{tag}-late")
    send(api, oracle, newly_late, rnd)
    for job in ("flush", "refresh"):
        assert run_job(api, job)["status"] == "done"
    check_random_queries(api, oracle, stream, everything, rnd, 15)
