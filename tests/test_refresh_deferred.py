"""The scheduled refresh leaves the 1h/1d rollups of hot-owned time to the hand-over (issue 11,
write path at scale): warm's answers for its own range stay exact at every step, expire_hot
recomputes what it hands over before b_warm moves, and a full refresh brings everything up to date.
postgres mode only (timescale's continuous aggregates defer nothing)."""
from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from rollups.cover import Piece
from rollups.timeutil import DAY_MS, G1M, HOUR_MS, MINUTE_MS, TimeRange
from scheduler import steps
from scheduler.runner import JobRunner
from tiers.catalog_pg import PgCatalog
from tiers.db import make_pool
from tiers.warm import WarmTier
from tests.test_jobs import RecordingHot, assert_warm_matches, assert_warm_owned_matches
from tests.warm_support import (T0, Ev, as_aggs, assert_aggs_equal, log_batch, migrated_database, oracle,
                                random_events, reset, reset_redis)

TENANT = "default"
NOW = T0 + 2 * HOUR_MS  # b_warm = T0 + 1h (hot age 1h): 11:00 on 2025-11-22
DAY0 = T0 - T0 % DAY_MS


@pytest.fixture(scope="module")
def url(pg_url):
    return migrated_database(pg_url, "postgres", "_deferred")


@pytest.fixture
def env(url, redis_client, settings):
    reset(url)
    reset_redis(redis_client)
    warm = WarmTier(url, mode="postgres", pool_size=4)
    pool = make_pool(url, max_size=8)
    catalog = PgCatalog(pool)
    catalog.initialise(NOW, HOUR_MS)
    job_settings = settings.model_copy(update=dict(hot_age=HOUR_MS, grace_period=0, postgres_url=url,
                                                   flush_interval=200, refresh_interval=300, expire_hot_interval=0))
    runner = JobRunner(pool, job_settings, {"redis": redis_client, "warm": warm, "catalog": catalog, "pool": pool,
                                            "hot": RecordingHot()}, max_workers=2)
    yield SimpleNamespace(url=url, warm=warm, pool=pool, catalog=catalog, redis=redis_client, runner=runner)
    runner.close()
    warm.close()
    pool.close()


def _stale(env) -> set[tuple[str, int]]:
    with env.pool.connection() as conn:
        return {(g, ms) for g, ms in conn.execute(
            "SELECT grain, (extract(epoch FROM bucket) * 1000)::bigint FROM warm_stale")}


def _hours_with_rows(env, table: str) -> set[int]:
    with env.pool.connection() as conn:
        return {ms for (ms,) in conn.execute(
            f"SELECT DISTINCT (extract(epoch FROM bucket) * 1000)::bigint FROM {table}")}


def _assert_minutes_match(warm, events, lo, hi):
    for stream in sorted({e.stream for e in events}):
        piece = [Piece(G1M, TimeRange(lo, hi))]
        assert_aggs_equal(as_aggs(warm.aggregate(TENANT, stream, piece, "bucket"), "bucket"),
                          oracle(events, stream, lo, hi, G1M.ms))


def test_scheduled_refresh_leaves_hot_owned_hours_and_days_to_the_handover(env):
    b_warm = env.catalog.snapshot().b_warm
    # 09:00 on day 0 to 03:00 on day 1: warm owns 09:00-11:00, hot the rest
    events = random_events(random.Random(21), 600, b_warm - 2 * HOUR_MS, DAY_MS - 6 * HOUR_MS)
    log_batch(env.redis, TENANT, events)
    env.runner.run("flush", wait=True)
    run = env.runner.get_run(str(env.runner.run("refresh", wait=True)))
    assert run["status"] == "done", run
    hot_hours = {e.ts - e.ts % HOUR_MS for e in events if e.ts >= b_warm}
    assert _stale(env) == {("1h", h) for h in hot_hours} | {("1d", DAY0), ("1d", DAY0 + DAY_MS)}
    assert _hours_with_rows(env, "rollup_1h") == {e.ts - e.ts % HOUR_MS for e in events if e.ts < b_warm}
    assert _hours_with_rows(env, "total_1h") == {e.ts - e.ts % HOUR_MS for e in events if e.ts < b_warm}
    assert not _hours_with_rows(env, "rollup_1d")
    _assert_minutes_match(env.warm, events, DAY0, DAY0 + 2 * DAY_MS)  # rollup_1m: every change, hot's too
    assert_warm_owned_matches(env.warm, events, b_warm)
    assert env.warm.oldest_pending_ms() is None  # nothing a reader of warm needs awaits a refresh

    # hand over past midnight: day 0 ends below the new b_warm, so its 1d bucket is recomputed too
    as_of = DAY0 + DAY_MS + 2 * HOUR_MS
    stats = steps.expire_hot(env.redis, RecordingHot(), env.warm, env.catalog, as_of, hot_age_ms=HOUR_MS, grace_ms=0)
    target = as_of - HOUR_MS
    assert stats["moved"] and env.catalog.snapshot().b_warm == target
    assert _stale(env) == {("1h", h) for h in hot_hours if h >= target} | {("1d", DAY0 + DAY_MS)}
    assert_warm_owned_matches(env.warm, events, target)
    with env.pool.connection() as conn:
        assert env.warm.dirty_before(conn, target) == 0

    steps.refresh(env.warm)  # no deferral: every stale bucket recomputed
    assert not _stale(env)
    assert_warm_matches(env.warm, events)


def test_expire_hot_recomputes_what_a_refresh_with_the_old_b_warm_left_stale(env, monkeypatch):
    """A scheduled refresh that read b_warm before expire_hot moved it may commit, between
    expire_hot's refresh and its move, stale hours below the target: the move waits for it (the
    refresh lock) and sees them, refreshes again, and only then moves b_warm."""
    b_warm = env.catalog.snapshot().b_warm
    events = random_events(random.Random(22), 300, b_warm - HOUR_MS, 4 * HOUR_MS)
    log_batch(env.redis, TENANT, events)
    steps.flush(env.redis, env.warm)
    late = [Ev("plays", "k01", b_warm + 30 * MINUTE_MS, 7.0), Ev("views", "late", b_warm + 70 * MINUTE_MS, 2.5)]
    real_crash_point, fired = steps.crash_point, []

    def concurrent_refresh(name):
        if name == "expire_hot.after_refresh" and not fired:
            fired.append(name)
            log_batch(env.redis, TENANT, late)
            steps.flush(env.redis, env.warm)
            env.warm.refresh(defer_from=b_warm)  # the old b_warm: the late hours are left stale
        real_crash_point(name)

    monkeypatch.setattr(steps, "crash_point", concurrent_refresh)
    as_of = b_warm + 3 * HOUR_MS
    stats = steps.expire_hot(env.redis, RecordingHot(), env.warm, env.catalog, as_of, hot_age_ms=HOUR_MS, grace_ms=0)
    target = as_of - HOUR_MS
    assert fired and stats["moved"] and env.catalog.snapshot().b_warm == target
    assert not {(g, ms) for g, ms in _stale(env) if ms + {"1h": HOUR_MS, "1d": DAY_MS}[g] <= target}
    assert_warm_owned_matches(env.warm, events + late, target)
