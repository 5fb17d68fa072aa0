"""rebuild_alltime: the all-time leaderboards recomputed from the tiers equal the raw-event oracle
(score and rank through POST /v1/streams/{s}/keys/{k}/score, counts in Redis), and events ingested
while it runs — before the mark, after it, between swaps, with flushes waiting — count once."""
from __future__ import annotations

import random
import threading
import uuid

import pytest
import redis

from rollups.timeutil import DAY_MS, HOUR_MS, MAX_MS, MIN_MS, MINUTE_MS, TimeRange, format_time, now_ms, parse_time
from scheduler.alltime import rebuild_alltime
from tests.api_support import ApiServer, Oracle, isolated_settings, run_job, served, unique_stream
from tierstore.app import RESOURCES
from tiers.hot import fold_alltime

KEYS = [f"k{i:02d}" for i in range(25)] + ["é", "Z", "a b", "🎵"]


@pytest.fixture(scope="module")
def api(settings):
    yield from served(isolated_settings(settings, "alltime", redis_db=10))


@pytest.fixture
def resources(api):
    return api.app.extensions[RESOURCES]


def events(rnd: random.Random, stream: str, window: TimeRange, n: int, values=(0.5, 1.0, 2.0, 7.5, -1.0)) -> list[dict]:
    out = []
    for i in range(n):
        e = {"stream": stream, "key": rnd.choice(KEYS), "ts": rnd.randrange(window.start, window.end),
             "value": rnd.choice(values)}
        if rnd.random() < 0.2:
            e["id"] = f"{stream}-{uuid.uuid4().hex[:8]}-{i}"
        out.append(e)
    return out


def send(api: ApiServer, oracles: dict[str, Oracle], batch: list[dict]) -> None:
    r = api.post("/v1/events", json=batch)
    assert r.status_code == 202, r.text
    by_stream: dict[str, list[dict]] = {}
    for e in batch:
        by_stream.setdefault(e["stream"], []).append(e)
    accepted = sum(oracles.setdefault(s, Oracle()).add(b)[0] for s, b in by_stream.items())
    assert r.json()["accepted"] == accepted


def board(oracle: Oracle) -> dict[str, tuple[int, float]]:
    acc = oracle.per_key(TimeRange(MIN_MS, MAX_MS))
    return {k: (a.count, a.sum) for k, a in acc.items()}


def check_scores(api: ApiServer, hot_redis: redis.Redis, stream: str, oracle: Oracle) -> None:
    """Every key's score and rank (a score call adds 0 to it, as the oracle does) and count."""
    keys = sorted(board(oracle)) + ["never-seen"]
    for key in keys:
        r = api.post(f"/v1/streams/{stream}/keys/{key}/score", json={"delta": 0})
        assert r.status_code == 200, r.text
        oracle.add([{"key": key, "ts": now_ms(), "value": 0.0}])
        totals = board(oracle)
        ordered = sorted(totals, key=lambda k: (-totals[k][1], k))
        assert (r.json()["score"], r.json()["rank"]) == (totals[key][1], ordered.index(key) + 1), (stream, key)
    fold_alltime(hot_redis, "default", stream)  # the pending increments (hot_alltime_fold.lua)
    prefix = f"tierstore:hot:{{default:{stream}}}:all:"
    counts = {m.decode(): int(s) for m, s in hot_redis.zrange(prefix + "count", 0, -1, withscores=True)}
    assert counts == {k: c for k, (c, _) in board(oracle).items()}


def hot_redis_of(resources) -> redis.Redis:
    return resources["redis"]


def test_rebuild_after_losing_the_boards_equals_the_oracle(api, resources):
    """Events in warm's range and hot's, flush / refresh / expire_hot through the jobs API, the
    boards deleted or garbled, rebuild_alltime through the jobs API."""
    rnd = random.Random(3)
    mixed, counting, old = unique_stream("mixed"), unique_stream("counting"), unique_stream("old")
    oracles: dict[str, Oracle] = {}
    b_warm = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
    now = now_ms()
    late, fresh = TimeRange(b_warm - 6 * HOUR_MS, b_warm), TimeRange(b_warm, now - MINUTE_MS)
    for window in (late, fresh):
        for _ in range(4):
            batch = events(rnd, mixed, window, 300) + events(rnd, counting, window, 200, values=(1.0,))
            send(api, oracles, batch)
    send(api, oracles, events(rnd, old, late, 250))
    send(api, oracles, [e for e in events(rnd, mixed, fresh, 50) if "id" in e] * 2)  # a retry: duplicates
    for job in ("flush", "refresh"):
        assert run_job(api, job)["status"] == "done"
    run = run_job(api, "expire_hot", as_of=now + 8 * HOUR_MS)
    assert run["status"] == "done" and run["stats"]["moved"], run
    moved = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
    send(api, oracles, events(rnd, mixed, TimeRange(moved - 2 * HOUR_MS, moved), 200))  # newly late
    send(api, oracles, events(rnd, counting, TimeRange(moved, now_ms()), 100, values=(1.0,)))

    r = hot_redis_of(resources)
    for s in (mixed, counting, old):  # garble what the boards hold, the pending increments folded in
        fold_alltime(r, "default", s)
    prefix = "tierstore:hot:{default:%s}:all:"
    r.delete(prefix % mixed + "count", prefix % mixed + "sum")
    r.zincrby(prefix % counting + "count", 1000, "k00")
    r.zrem(prefix % counting + "count", "k01")
    r.delete(prefix % old + "count", prefix % old + "sum")
    assert r.zscore(prefix % counting + "count", "k00") is not None

    run = run_job(api, "rebuild_alltime")
    assert run["status"] == "done", run
    assert run["stats"]["streams"] >= 3
    assert not r.exists(prefix % counting + "sum")  # every value was 1: its sum is its count
    for stream in (mixed, counting, old):
        check_scores(api, r, stream, oracles[stream])


def test_events_ingested_during_a_rebuild_count_once(api, resources, settings):
    """Batches at every stage of the rebuild — after the flush (logged, not flushed), after the
    mark (counted aside), between swaps — and a writer and a flusher running all along."""
    rnd = random.Random(4)
    streams = [unique_stream("busy") for _ in range(3)]
    oracles: dict[str, Oracle] = {}
    now = now_ms()
    window = TimeRange(now - 3 * HOUR_MS, now - MINUTE_MS)

    def some(n: int) -> list[dict]:
        return [e for s in streams for e in events(rnd, s, window, n)]

    send(api, oracles, some(200))
    assert run_job(api, "flush")["status"] == "done"
    send(api, oracles, some(100))  # logged, not flushed: the rebuild's own flush takes them

    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer():
        w = random.Random(5)
        try:
            while not stop.is_set():
                batch = [e for s in streams for e in events(w, s, window, 20)]
                with lock:
                    send(api, oracles, batch)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def flusher():
        try:
            while not stop.is_set():
                assert run_job(api, "flush")["status"] == "done"
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    seen: list[str] = []

    def step(name: str) -> None:
        seen.append(name)
        with lock:
            send(api, oracles, some(30))

    threads = [threading.Thread(target=writer), threading.Thread(target=flusher)]
    for t in threads:
        t.start()
    try:
        stats = rebuild_alltime(resources["redis"], resources["hot"], resources["warm"], resources["catalog"],
                                resources["pool"], clock_skew_ms=settings.clock_skew, step=step)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert seen[:3] == ["after_flush", "after_mark", "after_read"] and seen.count("after_swap") >= 3
    assert stats["logged_entries_after_flush"] >= 1  # the batch sent right after the flush
    r = hot_redis_of(resources)
    for stream in streams:
        check_scores(api, r, stream, oracles[stream])


def test_a_stream_whose_mark_expired_is_left_alone(api, resources):
    """The side zsets stop when the mark expires: the swap refuses and the run fails, naming it."""
    stream = unique_stream("expired")
    oracles: dict[str, Oracle] = {}
    now = now_ms()
    send(api, oracles, events(random.Random(6), stream, TimeRange(now - HOUR_MS, now - MINUTE_MS), 100))
    r = hot_redis_of(resources)
    fold_alltime(r, "default", stream)  # the pending increments (hot_alltime_fold.lua)
    prefix = f"tierstore:hot:{{default:{stream}}}:all:"
    before = r.zrange(prefix + "count", 0, -1, withscores=True)

    def expire(name: str) -> None:
        if name == "after_read":
            r.delete(prefix + "rebuild")

    with pytest.raises(RuntimeError, match=stream):
        rebuild_alltime(resources["redis"], resources["hot"], resources["warm"], resources["catalog"],
                        resources["pool"], step=expire)
    assert r.zrange(prefix + "count", 0, -1, withscores=True) == before
    assert not r.exists(prefix + "rebuild:count")


def test_rebuild_reads_archive_cold_and_warm(api, resources):
    """Events over 430 days moved down to cold and the archive by the jobs (as_of now), late and
    fresh ones after: the rebuilt boards count each once, wherever it lies."""
    rnd = random.Random(7)
    stream = unique_stream("history")
    oracles: dict[str, Oracle] = {}
    now = now_ms()
    span = TimeRange(now - 430 * DAY_MS, now - MINUTE_MS)
    for _ in range(4):
        send(api, oracles, events(rnd, stream, span, 1000))
    as_of = format_time(now)
    for job in ("flush", "refresh", "expire_hot", "export_cold", "archive"):
        run = run_job(api, job, as_of=as_of, timeout_s=600)
        assert run["status"] == "done", run
    bounds = {k: parse_time(v) for k, v in api.get("/v1/tiers").json()["boundaries"].items()}
    assert span.start < bounds["archive"] < bounds["cold"] < bounds["warm"], bounds
    send(api, oracles, events(rnd, stream, TimeRange(bounds["cold"], now - MINUTE_MS), 500))  # warm's and hot's
    r = hot_redis_of(resources)
    r.delete(f"tierstore:hot:{{default:{stream}}}:all:count", f"tierstore:hot:{{default:{stream}}}:all:sum")
    run = run_job(api, "rebuild_alltime", timeout_s=600)
    assert run["status"] == "done", run
    check_scores(api, r, stream, oracles[stream])


def test_tier_totals_merge_with_their_low_parts():
    """The rebuild adds the tiers' per-key totals as exact pairs: warm's or cold's (1e15 + 0.125,
    -0.025) for 1e15 + 0.1, then -1e15 from another tier, is 0.1 (the highs alone give 0.125)."""
    import pyarrow as pa

    from scheduler.alltime import _merge

    older = pa.table({"key": ["x", "b"], "count": [2, 1], "sum": [1e15 + 0.125, 0.5], "sum_lo": [0.1 - 0.125, 0.0]})
    newer = pa.table({"key": ["x"], "count": pa.array([1], pa.int64()), "sum": [-1e15]})
    got = _merge([older, newer]).sort_by("key").to_pydict()
    assert got == {"key": ["b", "x"], "count": [1, 3], "sum": [0.5, 0.1]}
