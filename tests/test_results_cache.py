"""The results cache through HTTP, on real Redis and PostgreSQL: two router instances share it, and
no change to a closed piece — late events into hot hours, late events flushed into warm and
folded into its rollups, deletes — is ever answered from a stale entry. Every answer is compared
with the raw-event oracle on BOTH instances.
"""
from __future__ import annotations

import random
import socket

import pytest

from rollups.timeutil import HOUR_MS, MINUTE_MS, TimeRange, floor_to, format_time, now_ms, parse_time
from tests.api_support import (AGGS, ApiServer, Oracle, check_rank, check_series, check_topk, isolated_settings,
                               ndjson, run_job, served_replicas, unique_stream)
from tierstore.app import build_app, close_app

KEYS = [f"k{i:02d}" for i in range(25)] + ["é", "🎵", "a b"]
VALUES = [1.0, 1.0, 2.0, 0.5, 3.0, 10.0, -1.0]


@pytest.fixture(scope="module")
def base(settings):
    return isolated_settings(settings, "results_cache", redis_db=30)


@pytest.fixture(scope="module")
def replicas(base):
    """Two router instances (two build_app) on the same Redis and PostgreSQL."""
    yield from served_replicas(base)


def send(api: ApiServer, oracle: Oracle, batch: list[dict]) -> None:
    r = api.post("/v1/events", data=ndjson(batch), headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == oracle.add(batch)[0]


def events(rnd: random.Random, stream: str, window: TimeRange, n: int) -> list[dict]:
    return [{"stream": stream, "key": rnd.choice(KEYS), "ts": rnd.randrange(window.start, window.end),
             "value": rnd.choice(VALUES)} for _ in range(n)]


def segments(api: ApiServer, stream: str, rng: TimeRange) -> list[dict]:
    """meta.segments of a series over rng (read piece by piece, through the cache; top-K and rank
    across tiers run the threshold algorithm over the tiers' sorted access instead, and their whole
    answers are cached apart: router/ranking_cache.py)."""
    body = api.get("/v1/query/series", {"stream": stream, "from": rng.start, "to": rng.end, "step": "1h"}).json()
    return body["meta"]["segments"]


def check_all(apis: list[ApiServer], oracle: Oracle, stream: str, rng: TimeRange, rnd: random.Random,
              n: int = 6) -> None:
    """The whole range then random minute-aligned sub-ranges, on every instance, twice each (the
    second read is the one a cache answers)."""
    for i in range(n):
        if i == 0:
            start, end = rng.start, rng.end
        else:
            a, b = sorted(rnd.sample(range(rng.start // MINUTE_MS, rng.end // MINUTE_MS + 1), 2))
            start, end = a * MINUTE_MS, b * MINUTE_MS
        by, key = rnd.choice(["count", "sum"]), rnd.choice(KEYS[:5] + ["absent"])
        step, agg = rnd.choice(["1m", "15m", "1h", "2h"]), rnd.choice(AGGS)
        for api in apis * 2:
            check_topk(api, oracle, stream, start, end, rnd.choice([1, 5, 50]), by)
            check_rank(api, oracle, stream, start, end, key, by, 2)
            check_series(api, oracle, stream, start, end, step, agg, rnd.choice([None, KEYS[0]]))


@pytest.fixture(scope="module")
def loaded(replicas):
    """A stream with events in warm's range (reached through the log: flush, refresh) and in hot's,
    and a range over both that ends well before now (every piece closed)."""
    a = replicas[0]
    rnd = random.Random(30)
    stream = unique_stream("cache")
    oracle = Oracle()
    b_warm = parse_time(a.get("/v1/tiers").json()["boundaries"]["warm"])
    now = now_ms()
    warm, hot = TimeRange(b_warm - 8 * HOUR_MS, b_warm), TimeRange(b_warm, floor_to(now, MINUTE_MS) - 20 * MINUTE_MS)
    for window, n in ((warm, 3000), (hot, 3000)):
        batch = events(rnd, stream, window, n)
        for pos in range(0, n, 1000):
            send(a, oracle, batch[pos:pos + 1000])
    for job in ("flush", "refresh"):
        assert run_job(a, job)["status"] == "done"
    return stream, oracle, TimeRange(warm.start, hot.end), b_warm


def test_a_second_instance_reads_the_pieces_the_first_computed(replicas, loaded):
    a, b = replicas
    stream, oracle, rng, b_warm = loaded
    first = segments(a, stream, rng)
    assert {s["tier"] for s in first} == {"warm", "hot"} and not any(s["cached"] for s in first)
    second = segments(b, stream, rng)
    assert [(s["tier"], s["from"], s["to"]) for s in second] == [(s["tier"], s["from"], s["to"]) for s in first]
    assert all(s["cached"] for s in second), second  # every piece is closed: all from the shared cache
    check_all(replicas, oracle, stream, rng, random.Random(1))


def test_an_open_piece_is_never_stored(replicas, loaded):
    a, b = replicas
    stream, oracle, rng, _ = loaded
    open_rng = TimeRange(rng.start, floor_to(now_ms(), MINUTE_MS) + MINUTE_MS)
    segments(a, stream, open_rng)
    last = segments(b, stream, open_rng)[-1]
    assert last["tier"] == "hot" and parse_time(last["to"]) == open_rng.end and not last["cached"]


def test_late_events_into_a_closed_hot_hour_are_never_answered_stale(replicas, loaded):
    a, b = replicas
    stream, oracle, rng, b_warm = loaded
    rnd = random.Random(2)
    check_all(replicas, oracle, stream, rng, rnd, n=2)  # both instances hold every piece
    hour = floor_to(b_warm, HOUR_MS) + 3 * HOUR_MS
    late = events(rnd, stream, TimeRange(hour, hour + HOUR_MS), 40)
    send(b, oracle, late)
    after = segments(a, stream, rng)
    touched = [s for s in after if parse_time(s["from"]) < hour + HOUR_MS and hour < parse_time(s["to"])]
    assert touched and all(s["tier"] == "hot" and not s["cached"] for s in touched)
    assert any(s["cached"] for s in after if s not in touched)  # the rest still served from the cache
    check_all(replicas, oracle, stream, rng, rnd)
    # and one event into a minute bucket at the end of the range (a 1m piece)
    edge = [{"stream": stream, "key": "k00", "ts": rng.end - 1, "value": 5.0}]
    send(a, oracle, edge)
    check_all(replicas, oracle, stream, rng, rnd, n=2)


def test_late_events_into_closed_warm_buckets_reach_both_instances(replicas, loaded):
    """The window between a late event's ack (hot's log) and warm's flush, and between the flush
    (raw rows) and the refresh (rollups): entries cached in either window are never served after."""
    a, b = replicas
    stream, oracle, rng, b_warm = loaded
    rnd = random.Random(3)
    check_all(replicas, oracle, stream, rng, rnd, n=2)
    targets = [TimeRange(b_warm - 7 * HOUR_MS, b_warm - 6 * HOUR_MS),       # inside a 1h rollup piece
               TimeRange(b_warm - 8 * HOUR_MS, b_warm - 8 * HOUR_MS + 90_000)]  # the range's first minutes
    for round_, target in enumerate(targets):
        late = events(rnd, stream, target, 30)
        send(a, oracle, late)
        for api in (a, b):  # cache what warm holds before the flush
            segments(api, stream, rng)
            api.get("/v1/query/topk", {"stream": stream, "from": rng.start, "to": rng.end, "k": 100})
        assert run_job(b, "flush")["status"] == "done"
        for api in (b, a):  # raw rows in, rollups not yet: cache this state too
            segments(api, stream, rng)
            api.get("/v1/query/topk", {"stream": stream, "from": rng.start, "to": rng.end, "k": 100})
        assert run_job(a, "refresh")["status"] == "done"
        check_all(replicas, oracle, stream, rng, rnd, n=4)
        touched = [s for s in segments(b, stream, rng)
                   if parse_time(s["from"]) < target.end and target.start < parse_time(s["to"])]
        assert touched and all(s["tier"] == "warm" for s in touched), touched


def test_a_hot_delete_invalidates_the_pieces_of_its_stream(replicas, base):
    """Delete an hour, then ingest as many events into it again (other keys): its total count is
    back where it was, and only the generation the delete dropped tells the entries apart."""
    a, b = replicas
    rnd = random.Random(4)
    stream = unique_stream("deleted")
    oracle = Oracle()
    b_warm = parse_time(a.get("/v1/tiers").json()["boundaries"]["warm"])
    window = TimeRange(floor_to(b_warm, HOUR_MS) + 2 * HOUR_MS, floor_to(b_warm, HOUR_MS) + 5 * HOUR_MS)
    gone = TimeRange(window.start, window.start + HOUR_MS)
    send(a, oracle, events(rnd, stream, window, 500))
    rng = TimeRange(b_warm - HOUR_MS, window.end)
    check_all(replicas, oracle, stream, rng, rnd, n=2)
    n_gone = sum(1 for e in oracle.events if gone.contains(e[1]))
    # what expire_hot does to what it handed over: delete buckets (here: one hour, by hand)
    from tiers.hot import RedisHotTier

    hot = RedisHotTier.from_settings(base)
    try:
        assert hot.delete_range(None, stream, gone) > 0
    finally:
        hot.close()
    oracle.events = [e for e in oracle.events if not gone.contains(e[1])]
    again = [{"stream": stream, "key": "new", "ts": gone.start + i * 1000, "value": 1.0} for i in range(n_gone)]
    send(b, oracle, again)
    check_all(replicas, oracle, stream, rng, rnd, n=3)


def test_random_late_events_and_ranges_match_the_oracle_on_both(replicas, loaded):
    a, b = replicas
    stream, oracle, rng, b_warm = loaded
    rnd = random.Random(5)
    for round_ in range(4):
        target = TimeRange(rnd.randrange(rng.start, rng.end - MINUTE_MS), rng.end)
        send(rnd.choice(replicas), oracle, events(rnd, stream, TimeRange(target.start, target.start + MINUTE_MS), 5))
        if round_ % 2:
            for job in ("flush", "refresh"):
                assert run_job(rnd.choice(replicas), job)["status"] == "done"
        else:
            assert run_job(a, "flush")["status"] == "done"
            segments(b, stream, rng)
            assert run_job(b, "refresh")["status"] == "done"
        check_all(replicas, oracle, stream, rng, rnd, n=3)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_cache_outage_still_answers_exactly(replicas, loaded, base):
    a, _ = replicas
    stream, oracle, rng, b_warm = loaded
    rnd = random.Random(6)
    down = base.model_copy(update={"results_cache_url": f"redis://127.0.0.1:{_closed_port()}/0",
                                   "results_cache_entries": 0})
    app = build_app(down, migrate=False)
    server = ApiServer(app)
    try:
        for _ in range(2):
            assert not any(s["cached"] for s in segments(server, stream, rng))
        send(server, oracle, events(rnd, stream, TimeRange(b_warm + HOUR_MS, b_warm + 2 * HOUR_MS), 20))
        check_all([server, a], oracle, stream, rng, rnd, n=3)
    finally:
        server.close()
        close_app(app)


def test_the_cache_wiped_mid_way_is_only_slower(replicas, loaded, base):
    a, b = replicas
    stream, oracle, rng, b_warm = loaded
    rnd = random.Random(7)
    shared_only = base.model_copy(update={"results_cache_entries": 0})
    app = build_app(shared_only, migrate=False)
    server = ApiServer(app)
    try:
        segments(server, stream, rng)
        assert all(s["cached"] for s in segments(server, stream, rng))
        import redis

        client = redis.Redis.from_url(base.redis_url)
        try:
            names = list(client.scan_iter("tierstore:cache:*", count=1000))
            assert names and client.delete(*names) == len(names)
        finally:
            client.close()
        assert not any(s["cached"] for s in segments(server, stream, rng))
        send(a, oracle, events(rnd, stream, TimeRange(b_warm + 4 * HOUR_MS, b_warm + 5 * HOUR_MS), 20))
        check_all([server, a, b], oracle, stream, rng, rnd, n=3)
    finally:
        server.close()
        close_app(app)


def test_entries_carry_a_ttl_and_stay_under_the_size_limit(replicas, loaded, base):
    stream, oracle, rng, _ = loaded
    segments(replicas[0], stream, rng)
    import redis

    client = redis.Redis.from_url(base.redis_url)
    try:
        names = list(client.scan_iter("tierstore:cache:*", count=1000))
        assert names
        for name in names[:50]:
            assert 0 < client.pttl(name) <= base.results_cache_ttl
            assert client.strlen(name) <= base.results_cache_max_bytes
    finally:
        client.close()


def test_small_pieces_are_stored_plain_and_large_ones_compressed():
    """An LZ4 frame costs ~10x a plain encoding for a piece of a few rows (trending stores 400
    a query): pieces under COMPRESS_MIN_BYTES are stored plain; both read back identical."""
    import numpy as np
    import pyarrow as pa

    from router import cache as C

    def table(n):
        return pa.table({"key": pa.array([f"k{i:06d}" for i in range(n)]), "count": pa.array(np.ones(n, np.int64)),
                         "sum": pa.array(np.zeros(n))})

    small, large = table(20), table(20_000)
    assert small.nbytes < C.COMPRESS_MIN_BYTES <= large.nbytes
    for t in (small, large):
        assert pa.ipc.open_stream(C._encode(t)).read_all().equals(t)
    assert len(C._encode(small)) >= small.nbytes  # plain
    assert len(C._encode(large)) < large.nbytes / 2  # compressed (the zeros and ones)
