"""Issue 8, finding 7: expiry follows the catalog, not the clock (tiers/hot_expiry.py).

With hot_age=2m and grace_period=1m, every job stopped past the grace period: answers stay exact,
no key the catalog still gives hot can expire before the safety TTL (read with PTTL), a bucket the
safety TTL did delete is answered as missing (503, or partial), never as empty, and expire_hot
still gives Redis's memory back after the grace period. Real Redis and PostgreSQL; the clock is
injected where ingest and the jobs take one (now_ms, as_of).
"""
from __future__ import annotations

import logging

import pytest

from rollups.errors import ConfigError
from rollups.timeutil import G1D, G1H, G1M, MINUTE_MS, format_time, now_ms
from router.hot_expiry_metrics import HotExpiryCollector
from scheduler import steps
from tests.api_support import ApiServer, isolated_settings, unique_stream
from tests.tier_contract import events_of
from tierstore.app import RESOURCES, build_app, close_app
from tiers.hot import RedisHotTier

HOT_AGE, GRACE = 2 * MINUTE_MS, MINUTE_MS
SAFETY = 7 * 24 * 60 * MINUTE_MS  # the default hot_safety_ttl
TENANT = "default"  # auth off


@pytest.fixture
def stack(settings):
    """A router over fresh PostgreSQL and Redis databases; no scheduler runs any job."""
    s = isolated_settings(settings, "hot_expiry", redis_db=36).model_copy(
        update={"hot_age": HOT_AGE, "grace_period": GRACE, "allow_clock_override": True})
    app = build_app(s)
    api = ApiServer(app)
    api.resources = app.extensions[RESOURCES]
    yield api
    api.close()
    close_app(app)


def topk(api: ApiServer, stream: str, start: int, end: int, **extra):
    return api.get("/v1/query/topk", {"stream": stream, "from": start, "to": end, "k": 10, "by": "count", **extra})


def items(response) -> list[tuple[str, float]]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["meta"]["exact"] is True and body["meta"]["missing"] == [], body["meta"]
    return [(i["key"], i["value"]) for i in body["items"]]


def series(api: ApiServer, stream: str, start: int, end: int) -> list:
    r = api.get("/v1/query/series", {"stream": stream, "from": start, "to": end, "step": "1m", "agg": "count"})
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["exact"] is True
    return [(p["t"], p["value"]) for p in r.json()["points"] if p["value"] is not None]


def stream_keys(redis_client, stream: str) -> list[bytes]:
    return list(redis_client.scan_iter(match=f"tierstore:hot:{{{TENANT}:{stream}}}:*", count=1000))


def assert_nothing_hot_owns_expires_before_the_safety_ttl(redis_client, stream: str, b_warm: int) -> None:
    """Every key of a bucket ending after b_warm keeps a TTL of about the safety TTL or more; the
    index, totals and all-time sets have none."""
    checked = 0
    for key in stream_keys(redis_client, stream):
        parts = key.decode().split("}:")[1].split(":")  # <g>:<start>:<agg> | <g>:buckets | all:count ...
        ttl = redis_client.pttl(key)
        if parts[0] == "win":  # materialised unions (tiers/hot_window.lua): a cache, read only over live buckets
            continue
        if len(parts) == 3 and parts[1].isdigit():
            width = {"1m": G1M, "1h": G1H, "1d": G1D}[parts[0]].ms
            if int(parts[1]) + width > b_warm:
                assert ttl > SAFETY - 10 * MINUTE_MS, (key, ttl)
                checked += 1
        else:
            assert ttl == -1, (key, ttl)
    assert checked, "no bucket key found"


def test_answers_stay_exact_while_every_job_is_stopped_past_the_grace_period(stack, redis_client):
    r = stack.resources
    redis_db = r["redis"]
    hot, catalog = r["hot"], r["catalog"]
    stream = unique_stream("exp")
    b_warm = catalog.snapshot().b_warm
    now = now_ms()
    late_ts = b_warm + 10_000  # just above b_warm; older than hot age + grace four minutes on
    assert stack.post("/v1/events", json=[{"stream": stream, "key": k, "ts": now - 30_000}
                                          for k in ("a", "a", "a", "b", "b")]).status_code == 202
    rng = (b_warm, G1M.floor(now) + 2 * MINUTE_MS)
    assert items(topk(stack, stream, *rng)) == [("a", 3.0), ("b", 2.0)]

    # Four minutes later, no job has run (the finding: top-K answered [] here). Ingest runs on the
    # later clock — it used to drop and unindex the buckets its TTL rule called dead — and a late
    # event arrives for a minute hot still owns.
    later = now + 4 * MINUTE_MS
    hot.ingest(TENANT, events_of([("c", late_ts, 1.0), ("d", now, 1.0)], stream=stream), now_ms=later)
    assert items(topk(stack, stream, *rng)) == [("a", 3.0), ("b", 2.0), ("c", 1.0), ("d", 1.0)]
    assert sum(v for _, v in series(stack, stream, *rng)) == 7
    assert_nothing_hot_owns_expires_before_the_safety_ttl(redis_db, stream, b_warm)

    # The jobs come back: everything moves to warm, answers stay exact all along.
    steps.expire_hot(redis_db, hot, r["warm"], catalog, later, hot_age_ms=HOT_AGE, grace_ms=GRACE)
    moved = catalog.snapshot().b_warm
    assert moved == G1M.floor(later - HOT_AGE) > now
    assert items(topk(stack, stream, *rng)) == [("a", 3.0), ("b", 2.0), ("c", 1.0), ("d", 1.0)]
    minutes = {G1M.floor(ts) for ts in (late_ts, now - 30_000, now)}
    prefix = f"tierstore:hot:{{{TENANT}:{stream}}}:1m:"
    assert all(redis_db.exists(f"{prefix}{m}:count") for m in minutes)  # within the grace period: kept

    # The grace period has passed (backdate the catalog's history): expire_hot gives the memory back.
    with r["warm"].pool.connection() as conn:
        conn.execute("UPDATE catalog_history SET changed_at = changed_at - interval '2 minutes'")
    trimmed = steps.expire_hot(redis_db, hot, r["warm"], catalog, later, hot_age_ms=HOT_AGE, grace_ms=GRACE)
    assert trimmed["trimmed"]["before"] == moved - GRACE and trimmed["trimmed"]["deleted"] > 0
    for m in minutes:
        assert not any(redis_db.exists(f"{prefix}{m}:{agg}") for agg in ("count", "sum", "min", "max")), m
        assert redis_db.zscore(prefix + "buckets", m) is None
        assert redis_db.zscore(prefix + "total:count", m) is None
    assert items(topk(stack, stream, *rng)) == [("a", 3.0), ("b", 2.0), ("c", 1.0), ("d", 1.0)]
    assert sum(v for _, v in series(stack, stream, *rng)) == 7


def test_a_bucket_the_safety_ttl_deleted_is_answered_missing_never_empty(stack):
    r = stack.resources
    redis_db = r["redis"]
    stream = unique_stream("lost")
    b_warm = r["catalog"].snapshot().b_warm
    now = now_ms()
    assert stack.post("/v1/events", json=[{"stream": stream, "key": k, "ts": ts}
                                          for k, ts in (("a", now - 60_000), ("a", now - 60_000), ("b", now))]
                      ).status_code == 202
    rng = (b_warm, G1M.floor(now) + 2 * MINUTE_MS)
    assert items(topk(stack, stream, *rng)) == [("a", 2.0), ("b", 1.0)]
    lost = G1M.floor(now - 60_000)
    prefix = f"tierstore:hot:{{{TENANT}:{stream}}}:1m:{lost}:"
    redis_db.delete(*[prefix + agg for agg in ("count", "sum", "min", "max")])  # as the safety TTL would

    refused = topk(stack, stream, *rng)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "tier_unavailable"
    assert "safety TTL" in refused.json()["error"]["message"]
    rank = stack.get("/v1/query/rank", {"stream": stream, "key": "b", "from": rng[0], "to": rng[1], "by": "count"})
    assert rank.status_code == 503, rank.text
    partial = topk(stack, stream, *rng, allow_partial=1)
    assert partial.status_code == 200, partial.text
    meta = partial.json()["meta"]
    assert meta["exact"] is False and meta["partial"] is True
    assert meta["missing"] == [{"tier": "hot", "from": format_time(rng[0]), "to": format_time(rng[1])}]
    # series without a key read the totals, which the safety TTL never deletes: still exact
    assert sum(v for _, v in series(stack, stream, *rng)) == 3
    # a later write into the lost minute does not make it look whole again
    r["hot"].ingest(TENANT, events_of([("c", lost + 1, 1.0)], stream=stream), now_ms=now)
    assert topk(stack, stream, *rng).status_code == 503


def test_the_alarm_sounds_long_before_the_safety_ttl_reaches_hot_data(stack, caplog):
    collector = next(c for c in stack.app.extensions["tierstore"].metrics.collectors
                     if isinstance(c, HotExpiryCollector))
    b_warm = stack.resources["catalog"].snapshot().b_warm

    def gauges() -> dict[str, float]:
        text = stack.get("/metrics").text
        return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                if line.startswith("tierstore_hot_")}

    collector.clock = lambda: b_warm + HOT_AGE  # on time
    assert gauges() == {"tierstore_hot_oldest_owned_age_seconds": HOT_AGE / 1000,
                        "tierstore_hot_expiry_margin_seconds": (SAFETY - HOT_AGE) / 1000,
                        "tierstore_hot_expiry_at_risk": 0.0}
    stalled = (SAFETY - HOT_AGE) // 2 + HOT_AGE + MINUTE_MS  # expire_hot stalled past half the headroom
    collector.clock = lambda: b_warm + stalled
    with caplog.at_level(logging.WARNING, logger="tierstore.router"):
        assert gauges()["tierstore_hot_expiry_at_risk"] == 1.0
    assert any("safety TTL" in rec.getMessage() for rec in caplog.records)


def test_a_safety_ttl_within_hot_age_and_grace_is_refused_at_start(settings):
    bad = settings.model_copy(update={"hot_age": HOT_AGE, "grace_period": GRACE, "hot_safety_ttl": HOT_AGE})
    with pytest.raises(ConfigError, match="TIERSTORE_HOT_SAFETY_TTL"):
        RedisHotTier.from_settings(bad)
