"""A PostgreSQL outage through the real API (issue 8, part 6: degrade, do not stop).

With this instance's PostgreSQL stopped (by its recorded PID): ingest keeps accepting (the durable
log is Redis) from the last catalog snapshot, new keys included; a late event below the cold
boundary is still refused although the router's last snapshot predates that boundary (the seal
lives in Redis); queries of what hot owns answer exactly; ranges touching warm answer 503 naming
warm, or a partial answer with allow_partial=1; /readyz says not ready, naming warm. Once
PostgreSQL is back, flush and refresh bring every acknowledged event into warm exactly once and
every answer equals the raw events again."""
from __future__ import annotations

import random
import time

import pytest

from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, TimeRange, ceil_to, floor_to, format_time, now_ms, parse_time
from tests.api_support import (Oracle, check_rank, check_series, check_topk, isolated_settings, run_job, served,
                               unique_stream)
from tierstore import services

HOT_AGE, WARM_AGE, COLD_AGE = DAY_MS, 2 * DAY_MS, 3 * DAY_MS


@pytest.fixture(scope="module")
def outage_settings(settings):
    return isolated_settings(settings, "pg_outage", redis_db=21).model_copy(update={
        "hot_age": HOT_AGE, "warm_age": WARM_AGE, "cold_age": COLD_AGE, "grace_period": 0})


@pytest.fixture(scope="module")
def api(outage_settings):
    yield from served(outage_settings)


@pytest.fixture(scope="module")
def loaded(api):
    """Events over the last 4 days in warm and hot; then export_cold moves b_cold to now-2d and
    expire_hot moves b_warm 2 h forward (trimming hot below it) while the router reads nothing, so
    its last good snapshot still has the old boundaries."""
    stream, oracle, rnd = unique_stream("pg"), Oracle(), random.Random(6)
    now = now_ms()
    start, end = floor_to(now - 4 * DAY_MS, DAY_MS) + 3 * MINUTE_MS, now - 10 * MINUTE_MS
    batch = [{"stream": stream, "key": f"k{rnd.randint(0, 25)}", "ts": rnd.randrange(start, end),
              "value": rnd.randint(-4, 30) / 2, "id": f"before-{i}"} for i in range(2000)]
    r = api.post("/v1/events", json=batch)
    assert r.status_code == 202, r.text
    oracle.add(batch)
    for job in ("flush", "refresh"):
        assert run_job(api, job)["status"] == "done"
    tiers = api.get("/v1/tiers").json()
    b_warm_seen, b_cold_seen = parse_time(tiers["boundaries"]["warm"]), parse_time(tiers["boundaries"]["cold"])
    run = run_job(api, "export_cold", timeout_s=600)
    assert run["status"] == "done", run
    b_cold = run["stats"]["b_cold"]
    assert b_cold == floor_to(now - WARM_AGE, DAY_MS) > b_cold_seen
    run = run_job(api, "expire_hot", as_of=now + 2 * HOUR_MS, timeout_s=600)  # tests run with the clock override
    assert run["status"] == "done" and run["stats"]["moved"] and run["stats"]["trimmed"]["deleted"], run
    b_warm = run["stats"]["target"]
    assert b_warm > b_warm_seen + HOUR_MS
    return {"stream": stream, "oracle": oracle, "start": start, "b_warm": b_warm, "b_warm_seen": b_warm_seen,
            "b_cold": b_cold, "rnd": rnd}


def get(api, path: str, ctx, rng: TimeRange, **params):
    return api.get(path, {"stream": ctx["stream"], "from": format_time(rng.start), "to": format_time(rng.end),
                          **params})


def check_exact(api, ctx, rng: TimeRange, key: str) -> None:
    for by in ("count", "sum"):
        check_topk(api, ctx["oracle"], ctx["stream"], rng.start, rng.end, 10, by)
    check_series(api, ctx["oracle"], ctx["stream"], rng.start, rng.end, "1h", "sum")
    check_series(api, ctx["oracle"], ctx["stream"], rng.start, rng.end, "1h", "count", key=key)
    check_rank(api, ctx["oracle"], ctx["stream"], rng.start, rng.end, key, "sum", 2)


def wait_ready(api, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while api.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, api.get("/readyz").text
        time.sleep(0.5)


def run_until_done(api, job: str, timeout: float = 300) -> dict:
    """Run `job` until a run succeeds: right after PostgreSQL restarts, a request may meet a pooled
    connection the restart broke (503 tier_unavailable naming jobs, or a failed run): retry."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        r = api.post(f"/v1/jobs/{job}/run", json={})
        if r.status_code == 503:
            last = r.text
            time.sleep(0.5)
            continue
        assert r.status_code == 202, r.text
        while time.monotonic() < deadline:
            s = api.get(f"/v1/jobs/runs/{r.json()['run_id']}")
            last = s.text
            if s.status_code == 200 and s.json()["status"] not in ("queued", "running"):
                break
            time.sleep(0.2)
        if s.status_code == 200 and s.json()["status"] == "done":
            return s.json()
    raise AssertionError(f"{job} did not succeed after PostgreSQL came back: {last}")


def test_ingest_and_hot_queries_survive_a_postgres_outage(api, loaded, outage_settings):
    ctx, rnd, stream = loaded, loaded["rnd"], loaded["stream"]
    layout = outage_settings.layout
    services.down(layout, ["postgres"])
    try:
        now = now_ms()
        hot_from = ceil_to(ctx["b_warm"], MINUTE_MS)
        during = [{"stream": stream, "key": f"new-{i % 7}", "ts": rnd.randrange(hot_from, now - MINUTE_MS),
                   "value": float(i % 5), "id": f"during-{i}"} for i in range(300)]
        during += [{"stream": stream, "key": f"k{rnd.randint(0, 25)}", "ts": rnd.randrange(hot_from, now - MINUTE_MS),
                    "value": 2.5, "id": f"during-old-key-{i}"} for i in range(200)]
        late = [{"stream": stream, "key": "late", "ts": rnd.randrange(ctx["b_cold"], ctx["b_warm"]), "value": 1.0,
                 "id": f"late-{i}"} for i in range(50)]  # owned by warm: logged now, in warm after the flush
        for batch in (during[:250], during[250:], late):
            r = api.post("/v1/events", json=batch)
            assert r.status_code == 202, r.text
            assert r.json() == {"accepted": len(batch), "duplicates": 0}
            ctx["oracle"].add(batch)
        again = api.post("/v1/events", json=during[:100])  # a client retrying: nothing counted twice
        assert again.status_code == 202 and again.json() == {"accepted": 0, "duplicates": 100}, again.text

        sealed = [{"stream": stream, "key": "sealed", "ts": ctx["b_cold"] - HOUR_MS, "id": "sealed-0"}]
        r = api.post("/v1/events", json=sealed)
        assert r.status_code == 422 and r.json()["error"]["code"] == "range_sealed", r.text

        hot = TimeRange(hot_from, floor_to(now_ms(), MINUTE_MS) + MINUTE_MS)
        check_exact(api, ctx, hot, "new-3")

        # hot held [b_warm_seen, b_warm) until expire_hot trimmed it: the router's last snapshot
        # still gives it to hot, the floor in Redis does not
        touching_warm = TimeRange(ceil_to(ctx["b_warm_seen"], MINUTE_MS) + 7 * MINUTE_MS, hot.end)
        for path, extra in (("/v1/query/topk", {"k": 5}), ("/v1/query/series", {"step": "1h"}),
                            ("/v1/query/rank", {"key": "new-3"})):
            r = get(api, path, ctx, touching_warm, **extra)
            assert r.status_code == 503, (path, r.text)
            err = r.json()["error"]
            assert err["code"] == "tier_unavailable" and {"tier": "warm"} in err["details"], err
        r = get(api, "/v1/query/topk", ctx, touching_warm, k=10, by="sum", allow_partial=1)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["meta"]["partial"] is True and body["meta"]["exact"] is False
        assert body["meta"]["missing"] == [{"tier": "warm", "from": format_time(touching_warm.start),
                                            "to": format_time(ctx["b_warm"])}]
        want = ctx["oracle"].ordered(TimeRange(ctx["b_warm"], hot.end), "sum")[:10]
        assert [(i["key"], i["value"]) for i in body["items"]] == want

        ready = api.get("/readyz")
        assert ready.status_code == 503 and {"tier": "warm"} in ready.json()["error"]["details"], ready.text
    finally:
        services.up(layout, ["postgres"])
    wait_ready(api)
    run_until_done(api, "flush")
    run_until_done(api, "refresh")
    everything = TimeRange(floor_to(ctx["start"], MINUTE_MS), floor_to(now_ms(), MINUTE_MS) + MINUTE_MS)
    check_exact(api, ctx, everything, "late")
    check_exact(api, ctx, TimeRange(ctx["b_cold"], ctx["b_warm"]), "late")  # warm alone: the flushed late events
    check_exact(api, ctx, everything, "new-3")
