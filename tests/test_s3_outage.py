"""An S3 outage through the real API (tierstore.app.build_app, all four tiers): with this instance's
s3proxy stopped (by its recorded PID), queries touching the archive get 503 naming it, or with
allow_partial=1 a partial answer listing the missing range; queries not touching it, and reports
not touching it, still work; after a restart everything is exact again. Then retention through
the jobs API: answers across the four tiers equal the raw events minus what retention deleted."""
from __future__ import annotations

import random
import time

import pytest

from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, TimeRange, floor_to, format_time, now_ms, parse_time
from tests.api_support import Oracle, check_series, check_topk, isolated_settings, run_job, served, unique_stream
from tierstore import services

WARM_AGE, COLD_AGE, RETENTION = 3 * DAY_MS, 8 * DAY_MS, 12 * DAY_MS


@pytest.fixture(scope="module")
def outage_settings(settings):
    return isolated_settings(settings, "s3_outage", redis_db=14).model_copy(update={
        "hot_age": DAY_MS, "warm_age": WARM_AGE, "cold_age": COLD_AGE, "archive_retention": RETENTION,
        "grace_period": 0, "archive_pack_below": 0})  # per-day partitions: retention here deletes days one by one


@pytest.fixture(scope="module")
def api(outage_settings):
    yield from served(outage_settings)  # with the reports API and its service (resources["reports"])


@pytest.fixture(scope="module")
def loaded(api):
    """Events over the last 16 days moved down by the jobs: archive < now-8d <= cold < now-3d <= warm/hot."""
    stream, oracle, rnd = unique_stream("s3"), Oracle(), random.Random(8)
    now = now_ms()
    start, end = floor_to(now - 16 * DAY_MS, DAY_MS) + 7 * MINUTE_MS, now - 10 * MINUTE_MS
    batch = [{"stream": stream, "key": f"k{rnd.randint(0, 30)}", "ts": rnd.randrange(start, end),
              "value": rnd.randint(-2, 20) / 2} for _ in range(3000)]
    for i in range(0, len(batch), 1000):
        r = api.post("/v1/events", json=batch[i:i + 1000])
        assert r.status_code == 202, r.text
        oracle.add(batch[i:i + 1000])
    for job in ("flush", "refresh", "export_cold", "archive"):
        run = run_job(api, job, timeout_s=600)
        assert run["status"] == "done", run
    b = api.get("/v1/tiers").json()["boundaries"]
    b_archive, b_cold = parse_time(b["archive"]), parse_time(b["cold"])
    assert b_archive == floor_to(now - COLD_AGE, DAY_MS) and b_cold == floor_to(now - WARM_AGE, DAY_MS)
    return {"stream": stream, "oracle": oracle, "start": start, "end": end, "b_archive": b_archive, "b_cold": b_cold}


def ranges(ctx) -> dict[str, TimeRange]:
    a, c = ctx["b_archive"], ctx["b_cold"]
    return {"all": TimeRange(ctx["start"] - HOUR_MS, ctx["end"]),
            "archive_only": TimeRange(ctx["start"] + 13 * MINUTE_MS, a - 7 * HOUR_MS),
            "no_archive": TimeRange(a + 3 * HOUR_MS + 17 * MINUTE_MS, ctx["end"]),
            "cold_and_warm": TimeRange(a + DAY_MS, c + DAY_MS + 11 * MINUTE_MS)}


def check_exact(api, ctx) -> None:
    for rng in ranges(ctx).values():
        for by in ("count", "sum"):
            check_topk(api, ctx["oracle"], ctx["stream"], rng.start, rng.end, 10, by)
        check_series(api, ctx["oracle"], ctx["stream"], rng.start, rng.end, "1d", "sum")


def report(api, ctx, rng: TimeRange, timeout: float = 120) -> dict:
    r = api.post("/v1/reports", json={"stream": ctx["stream"], "from": rng.start, "to": rng.end, "kind": "totals",
                                      "format": "json"})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + timeout
    while True:
        st = api.get(f"/v1/reports/{r.json()['id']}").json()
        if st["status"] in ("done", "failed") or time.monotonic() > deadline:
            return st
        time.sleep(0.1)


def report_matches_oracle(api, ctx, st: dict, rng: TimeRange) -> None:
    assert st["status"] == "done", st
    doc = api.get(f"/v1/reports/{st['id']}/download").json()
    got = {r["key"]: (r["count"], r["sum"]) for r in doc["rows"]}
    want = {k: (a.count, a.sum) for k, a in ctx["oracle"].per_key(rng).items()}
    assert got == want


def test_outage_then_recovery(api, loaded, outage_settings):
    ctx, rs = loaded, ranges(loaded)
    check_exact(api, ctx)
    report_matches_oracle(api, ctx, report(api, ctx, rs["all"]), rs["all"])
    layout = outage_settings.layout
    services.down(layout, ["s3"])
    try:
        time.sleep(2.5)  # past the archive's cached health answer
        for name in ("all", "archive_only"):
            rng = rs[name]
            for path, extra in (("/v1/query/topk", {"k": 5}), ("/v1/query/series", {"step": "1d"}),
                                ("/v1/query/rank", {"key": "k3"})):
                r = api.get(path, {"stream": ctx["stream"], "from": rng.start, "to": rng.end, **extra})
                assert r.status_code == 503, (path, r.text)
                err = r.json()["error"]
                assert err["code"] == "tier_unavailable" and {"tier": "archive"} in err["details"], err
                assert "archive" in err["message"]
        rng = rs["all"]
        r = api.get("/v1/query/topk", {"stream": ctx["stream"], "from": rng.start, "to": rng.end, "k": 10,
                                       "by": "sum", "allow_partial": 1})
        assert r.status_code == 200, r.text
        meta = r.json()["meta"]
        assert meta["partial"] is True and meta["exact"] is False
        missing_from = floor_to(rng.start, MINUTE_MS)
        assert meta["missing"] == [{"tier": "archive", "from": format_time(missing_from),
                                    "to": format_time(ctx["b_archive"])}]
        rest = TimeRange(ctx["b_archive"], rng.end)
        want = ctx["oracle"].ordered(TimeRange(ctx["b_archive"], -(-rng.end // MINUTE_MS) * MINUTE_MS), "sum")[:10]
        assert [(i["key"], i["value"]) for i in r.json()["items"]] == want
        # what does not touch the archive still answers, exactly
        for name in ("no_archive", "cold_and_warm"):
            rng = rs[name]
            check_topk(api, ctx["oracle"], ctx["stream"], rng.start, rng.end, 10, "count")
            check_series(api, ctx["oracle"], ctx["stream"], rng.start, rng.end, "1h", "avg")
        report_matches_oracle(api, ctx, report(api, ctx, rest), rest)
        failed = report(api, ctx, rs["all"])
        assert failed["status"] == "failed" and "archive" in failed["error"]
        ready = api.get("/readyz")
        assert ready.status_code == 503 and {"tier": "archive"} in ready.json()["error"]["details"]
    finally:
        services.up(layout, ["s3"])
    assert api.get("/readyz").status_code == 200
    check_exact(api, ctx)
    report_matches_oracle(api, ctx, report(api, ctx, rs["all"]), rs["all"])


def test_retention_through_the_api_keeps_every_answer_exact(api, loaded, outage_settings):
    from scheduler.retention import LegalHolds
    from tiers.db import make_pool

    ctx = loaded
    now = now_ms()
    cutoff = floor_to(now - RETENTION, DAY_MS)
    held = TimeRange(cutoff - 2 * DAY_MS, cutoff - DAY_MS)
    pool = make_pool(outage_settings.postgres_url, max_size=1, name="test-holds")
    try:
        LegalHolds(pool).add("default", ctx["stream"], held.start + HOUR_MS, held.start + 2 * HOUR_MS, "audit", "t")
    finally:
        pool.close()
    run = run_job(api, "retention", as_of=now, timeout_s=600)
    assert run["status"] == "done", run
    assert run["stats"]["deleted"] > 0 and run["stats"]["kept_hold"] == 1
    gone = [e for e in ctx["oracle"].events if e[1] < cutoff and not held.contains(e[1])]
    assert gone
    ctx["oracle"].events = [e for e in ctx["oracle"].events if e not in gone]
    check_exact(api, ctx)
    rng = ranges(ctx)["all"]
    report_matches_oracle(api, ctx, report(api, ctx, rng), rng)
