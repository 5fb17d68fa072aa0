"""flush, refresh, expire_hot and the JobRunner against real PostgreSQL and Redis, in each warm mode."""
from __future__ import annotations

import random
import time
from types import SimpleNamespace

import psycopg
import pytest

from rollups.cover import Piece, cover
from rollups.timeutil import DAY_MS, G1D, G1H, G1M, HOUR_MS, MINUTE_MS, TimeRange
from scheduler import steps
from scheduler.jobs import JOBS
from scheduler.runner import Job, JobRunner, build_scheduler
from tiers.catalog_pg import PgCatalog
from tiers.db import make_pool
from tiers.eventlog import EventLog, FLUSH_GROUP, HOT_FLOOR_KEY, STREAM_KEY, read_mark, total_length
from tiers.locks import FLUSH_LOCK, advisory_key
from tiers.warm import WarmTier
from tests.warm_support import (T0, Ev, as_aggs, assert_aggs_equal, expected_rows, log_batch, migrated_database,
                                mode_params, oracle, random_events, raw_rows, reset, reset_redis)

TENANT = "default"
NOW = T0 + 2 * HOUR_MS  # the catalog starts with b_warm = T0 + 1h (hot age 1h)


@pytest.fixture(scope="module", params=mode_params())
def mode_url(request, pg_url):
    return request.param, migrated_database(pg_url, request.param, "_jobs")


@pytest.fixture
def env(mode_url, redis_client):
    mode, url = mode_url
    reset(url)
    reset_redis(redis_client)
    warm = WarmTier(url, mode=mode, pool_size=4)
    pool = make_pool(url, max_size=8)
    catalog = PgCatalog(pool)
    catalog.initialise(NOW, HOUR_MS)
    yield SimpleNamespace(mode=mode, url=url, warm=warm, pool=pool, catalog=catalog, redis=redis_client)
    warm.close()
    pool.close()


DAY0 = T0 - T0 % DAY_MS


def assert_warm_matches(warm, events, lo=DAY0 - 40 * DAY_MS, hi=DAY0 + 3 * DAY_MS):
    """Raw rows and every rollup granularity equal the oracle over [lo, hi)."""
    for stream in sorted({e.stream for e in events}):
        assert raw_rows(warm, TENANT, stream, lo, hi) == expected_rows(events, stream, lo, hi)
        pieces = cover(TimeRange(lo, hi), [g for g in warm.granularities if not g.is_raw])
        assert_aggs_equal(as_aggs(warm.aggregate(TENANT, stream, pieces, "key"), "key"),
                          oracle(events, stream, lo, hi, "key"))
        for g in (G1M, G1H, G1D):
            piece = [Piece(g, TimeRange(lo, hi))]
            assert_aggs_equal(as_aggs(warm.aggregate(TENANT, stream, piece, "bucket"), "bucket"),
                              oracle(events, stream, lo, hi, g.ms))


def assert_warm_owned_matches(warm, events, b_warm: int, lo=DAY0 - 40 * DAY_MS):
    """What a query reads of warm equals the oracle: its range [lo, b_warm) by the cover, and each
    granularity's buckets that end by b_warm. The scheduled refresh and expire_hot leave the 1h/1d
    buckets ending after b_warm stale (WarmTier.refresh's defer_from): hot answers for that time."""
    for stream in sorted({e.stream for e in events}):
        pieces = cover(TimeRange(lo, b_warm), [g for g in warm.granularities if not g.is_raw])
        assert_aggs_equal(as_aggs(warm.aggregate(TENANT, stream, pieces, "key"), "key"),
                          oracle(events, stream, lo, b_warm, "key"))
        for g in (G1M, G1H, G1D):
            hi = b_warm - b_warm % g.ms
            piece = [Piece(g, TimeRange(lo, hi))]
            assert_aggs_equal(as_aggs(warm.aggregate(TENANT, stream, piece, "bucket"), "bucket"),
                              oracle(events, stream, lo, hi, g.ms))


# ---- flush ---------------------------------------------------------------------------------

def test_flush_copies_every_entry_once_and_skips_duplicates(env):
    rnd = random.Random(1)
    batches = [random_events(rnd, 50, T0, 3 * HOUR_MS) for _ in range(5)]
    want = []
    for i, b in enumerate(batches):
        dups = [0, 7] if i == 2 else []
        log_batch(env.redis, TENANT, b, dups)
        want += [e for j, e in enumerate(b) if j not in dups]
    stats = steps.flush(env.redis, env.warm, batch_entries=2)
    assert (stats["entries"], stats["events"]) == (5, len(want))
    assert total_length(env.redis) == 0  # trimmed behind the checkpoint
    again = steps.flush(env.redis, env.warm)
    assert again["events"] == 0
    steps.refresh(env.warm)
    assert_warm_matches(env.warm, want)


def test_flush_crash_between_commit_and_ack_does_not_insert_twice(env, monkeypatch):
    events = random_events(random.Random(2), 40, T0, HOUR_MS)
    log_batch(env.redis, TENANT, events[:20])
    log_batch(env.redis, TENANT, events[20:])

    def lost_ack(*args, **kwargs):
        raise ConnectionError("redis went away after the commit")

    monkeypatch.setattr(env.redis, "xack", lost_ack)
    with pytest.raises(ConnectionError):
        steps.flush(env.redis, env.warm)
    monkeypatch.undo()
    stats = steps.flush(env.redis, env.warm)
    assert stats["skipped_entries"] >= 1
    steps.refresh(env.warm)
    assert_warm_matches(env.warm, events)


def test_flush_takes_over_pending_entries_of_a_dead_consumer(env):
    events = random_events(random.Random(3), 30, T0, HOUR_MS)
    EventLog(env.redis).ensure_group()
    log_batch(env.redis, TENANT, events[:10])
    log_batch(env.redis, TENANT, events[10:])
    env.redis.xreadgroup(FLUSH_GROUP, "dead-consumer", {STREAM_KEY: ">"}, count=1)  # delivered, never acked
    stats = steps.flush(env.redis, env.warm)
    assert stats["claimed_entries"] == 1 and stats["events"] == 30
    assert env.redis.xpending(STREAM_KEY, FLUSH_GROUP)["pending"] == 0
    steps.refresh(env.warm)
    assert_warm_matches(env.warm, events)


def test_late_events_reach_the_rollups_on_the_next_refresh(env):
    first = random_events(random.Random(4), 60, T0, 2 * HOUR_MS)
    log_batch(env.redis, TENANT, first)
    steps.flush(env.redis, env.warm)
    steps.refresh(env.warm)
    late = random_events(random.Random(5), 30, T0 - 20 * DAY_MS, 19 * DAY_MS) + [Ev("plays", "k01", T0 + 5)]
    log_batch(env.redis, TENANT, late)
    steps.flush(env.redis, env.warm)
    stats = steps.refresh(env.warm)
    assert stats["buckets_1m"] == len({(e.stream, e.ts // MINUTE_MS) for e in late})
    assert_warm_matches(env.warm, first + late)


# ---- refresh -------------------------------------------------------------------------------

def test_refresh_recomputes_only_the_dirty_buckets(env):
    events = random_events(random.Random(6), 400, T0 - 3 * DAY_MS, 3 * DAY_MS, streams=("plays",))
    log_batch(env.redis, TENANT, events)
    steps.flush(env.redis, env.warm)
    steps.refresh(env.warm)
    assert steps.refresh(env.warm)["buckets_1m"] == 0  # nothing changed, nothing recomputed
    before = _row_versions(env)
    late = [Ev("plays", "k01", T0 - 2 * DAY_MS + 7 * MINUTE_MS + 5, 2.0),
            Ev("plays", "new-key", T0 - 2 * DAY_MS + 7 * MINUTE_MS + 6, 3.0)]
    log_batch(env.redis, TENANT, late)
    steps.flush(env.redis, env.warm)
    stats = steps.refresh(env.warm)
    assert (stats["buckets_1m"], stats["buckets_1h"], stats["buckets_1d"]) == (1, 1, 1)
    after = _row_versions(env)
    minute, hour, day = late[0].ts // MINUTE_MS * MINUTE_MS, late[0].ts // HOUR_MS * HOUR_MS, late[0].ts // DAY_MS * DAY_MS
    dirty = {("1m", minute), ("1h", hour), ("1d", day)}
    for (gran, bucket, key_id), version in before.items():
        if (gran, bucket) not in dirty:
            assert after[(gran, bucket, key_id)] == version, (gran, bucket, key_id)
    assert_warm_matches(env.warm, events + late)


def _row_versions(env) -> dict:
    """(granularity, bucket ms, key id) -> the row's physical version (xmin, ctid): a recomputed
    row gets a new one."""
    out = {}
    with env.pool.connection() as conn:
        for g in ("1m", "1h", "1d"):
            table = g if env.mode == "postgres" else None
            source = f"rollup_{table}" if table else _materialization_table(conn, f"rollup_{g}")
            for bucket, key_id, xmin, ctid in conn.execute(
                    f"SELECT (extract(epoch FROM bucket) * 1000)::bigint, key_id, xmin::text, ctid::text FROM {source}"):
                out[(g, bucket, key_id)] = (xmin, ctid)
    return out


def _materialization_table(conn, view: str) -> str:
    schema, table = conn.execute(
        "SELECT materialization_hypertable_schema, materialization_hypertable_name "
        "FROM timescaledb_information.continuous_aggregates WHERE view_name = %s", (view,)).fetchone()
    return f'"{schema}"."{table}"'


# ---- expire_hot ----------------------------------------------------------------------------

class RecordingHot:
    def __init__(self):
        self.deleted = []

    def delete_range(self, tenant, stream, rng):
        self.deleted.append((tenant, stream, rng))
        return 0


def test_expire_hot_moves_b_warm_once_warm_covers_it(env):
    events = random_events(random.Random(7), 200, T0, 4 * HOUR_MS)
    log_batch(env.redis, TENANT, events)
    hot = RecordingHot()
    as_of = NOW + 2 * HOUR_MS + 30_000
    stats = steps.expire_hot(env.redis, hot, env.warm, env.catalog, as_of, hot_age_ms=HOUR_MS, grace_ms=0)
    target = (as_of - HOUR_MS) // MINUTE_MS * MINUTE_MS
    snap = env.catalog.snapshot()
    assert stats["moved"] and snap.b_warm == target and snap.version == 2
    assert read_mark(env.redis, HOT_FLOOR_KEY, 0) == target
    assert hot.deleted[-1][2].end == target  # grace 0: everything below b_warm
    assert_warm_owned_matches(env.warm, events, target)
    steps.refresh(env.warm)  # no deferral: every rollup, hot-owned time too
    assert_warm_matches(env.warm, events)
    again = steps.expire_hot(env.redis, hot, env.warm, env.catalog, as_of, hot_age_ms=HOUR_MS, grace_ms=0)
    assert not again["moved"] and env.catalog.snapshot() == snap


def test_expire_hot_moves_b_warm_by_whole_hours_when_hot_keeps_a_day(env):
    """hot_age >= 12 h: b_warm stays on the hour grid (tiers.catalog.handover_step), so warm's part
    of a range ends on an hour; an expire_hot within the same hour does not move it."""
    events = random_events(random.Random(11), 200, T0, 4 * HOUR_MS)
    log_batch(env.redis, TENANT, events)
    as_of = NOW + DAY_MS + 2 * HOUR_MS + 37 * MINUTE_MS + 5_000
    stats = steps.expire_hot(env.redis, RecordingHot(), env.warm, env.catalog, as_of, hot_age_ms=DAY_MS, grace_ms=0)
    snap = env.catalog.snapshot()
    assert stats["moved"] and snap.b_warm == (as_of - DAY_MS) // HOUR_MS * HOUR_MS
    assert snap.b_warm % HOUR_MS == 0 and snap.b_warm != (as_of - DAY_MS) // MINUTE_MS * MINUTE_MS
    later = steps.expire_hot(env.redis, RecordingHot(), env.warm, env.catalog, as_of + 20 * MINUTE_MS,
                             hot_age_ms=DAY_MS, grace_ms=0)
    assert not later["moved"] and env.catalog.snapshot() == snap
    assert_warm_owned_matches(env.warm, events, snap.b_warm)
    steps.refresh(env.warm)
    assert_warm_matches(env.warm, events)


def test_expire_hot_keeps_b_warm_when_rollups_do_not_cover_it(env, monkeypatch):
    log_batch(env.redis, TENANT, [Ev("plays", "k", T0 + 90 * MINUTE_MS)])
    monkeypatch.setattr(env.warm, "refresh", lambda step=None, **kw: {})  # rollups never catch up
    before = env.catalog.snapshot()
    with pytest.raises(steps.NotCovered):
        steps.expire_hot(env.redis, None, env.warm, env.catalog, NOW + 3 * HOUR_MS, hot_age_ms=HOUR_MS, grace_ms=0)
    assert env.catalog.snapshot() == before


def test_expire_hot_trims_hot_only_after_the_grace_period(env):
    hot = RecordingHot()
    as_of = NOW + 3 * HOUR_MS
    steps.expire_hot(env.redis, hot, env.warm, env.catalog, as_of, hot_age_ms=HOUR_MS, grace_ms=10 * MINUTE_MS)
    old_b_warm = T0 + HOUR_MS  # the version a query may still hold: it was current 10 min ago
    assert hot.deleted[-1][2].end == old_b_warm


# ---- the job runner ------------------------------------------------------------------------

@pytest.fixture
def runner(env, settings):
    base_settings = settings
    settings = base_settings.model_copy(update=dict(hot_age=HOUR_MS, grace_period=0, postgres_url=env.url,
                                                    flush_interval=200, refresh_interval=300, expire_hot_interval=0))
    resources = {"redis": env.redis, "warm": env.warm, "catalog": env.catalog, "hot": RecordingHot()}
    r = JobRunner(env.pool, settings, resources, max_workers=2)
    yield r
    r.close()


def test_runner_runs_and_records_a_job(env, runner):
    events = random_events(random.Random(8), 30, T0, HOUR_MS)
    log_batch(env.redis, TENANT, events)
    run_id = runner.run("flush", wait=True)
    run = runner.get_run(str(run_id))
    assert run["status"] == "done" and run["progress"] == 1.0 and run["stats"]["events"] == 30
    assert run["started"] <= run["finished"]
    runner.run("refresh", as_of=T0, wait=True)
    assert runner.runs("refresh")[0]["as_of"] == T0
    assert_warm_owned_matches(env.warm, events, env.catalog.snapshot().b_warm)
    listed = {j["name"]: j for j in runner.list()}
    assert {"flush", "refresh", "expire_hot"} <= set(listed)
    assert listed["flush"]["last_run"]["run_id"] == run_id and listed["flush"]["schedule"] == "every 200ms"
    assert listed["flush"]["lag_seconds"] == 0.0


def test_runner_records_failures_and_refuses_unknown_jobs(env, runner):
    with pytest.raises(LookupError):
        runner.run("no_such_job")
    with pytest.raises(ValueError):
        runner.get_run("abc")
    assert runner.get_run(999_999) is None
    run_id = runner.run("expire_hot", as_of=0, wait=True)  # as_of before b_warm: nothing to move
    assert runner.get_run(run_id)["status"] == "done"
    env.redis.set(HOT_FLOOR_KEY, "not a number")
    run_id = runner.run("expire_hot", as_of=NOW + 5 * HOUR_MS, wait=True)
    run = runner.get_run(run_id)
    assert run["status"] == "failed" and run["error"]


def test_a_second_run_of_a_locked_job_waits_or_is_skipped(env, runner):
    with psycopg.connect(env.url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (advisory_key(FLUSH_LOCK),))
        skipped = runner.run("flush", wait=True, skip_if_locked=True)
        assert runner.get_run(skipped)["status"] == "skipped"
        waiting = runner.run("flush")
        time.sleep(0.5)
        assert runner.get_run(waiting)["status"] == "queued"
        holder.execute("SELECT pg_advisory_unlock_all()")
    deadline = time.time() + 10
    while runner.get_run(waiting)["status"] != "done" and time.time() < deadline:
        time.sleep(0.05)
    assert runner.get_run(waiting)["status"] == "done"


def test_build_scheduler_runs_jobs_from_a_postgres_job_store(env, runner):
    sched = build_scheduler(runner, runner.settings)
    sched.start()
    try:
        deadline = time.time() + 15
        while not runner.runs("refresh") and time.time() < deadline:
            time.sleep(0.1)
        listed = {j["name"]: j for j in runner.list()}
        assert listed["flush"]["next_run"] is not None
        assert listed["expire_hot"]["next_run"] is None  # interval 0: not scheduled
    finally:
        sched.shutdown(wait=True)
    assert runner.runs("refresh")
    with env.pool.connection() as conn:
        ids = {r[0] for r in conn.execute("SELECT id FROM apscheduler_jobs")}
    assert {"flush", "refresh"} <= ids


def test_a_runner_runs_the_jobs_it_is_given(env, runner):
    assert {j.name for j in runner.jobs()} == {j.name for j in JOBS}
    with pytest.raises(LookupError):
        runner.run("noop_for_test")
    noop = Job("noop_for_test", lambda ctx: {"as_of": ctx.as_of})
    own = JobRunner(env.pool, runner.settings, runner.resources, jobs=[noop], max_workers=1)
    try:
        run_id = own.run("noop_for_test", as_of=123, wait=True)
        assert own.get_run(run_id)["stats"] == {"as_of": 123}
        assert [j.name for j in own.jobs()] == ["noop_for_test"]
    finally:
        own.close()


