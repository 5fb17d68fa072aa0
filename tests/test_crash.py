"""Kill the job process at every crash point of flush, refresh and expire_hot, run the job again, and warm
must still equal the oracle: nothing lost, nothing counted twice; the catalog moved exactly once.

Each job runs in a subprocess (`tierstore jobs run NAME`) with TIERSTORE_CRASH_AT set, which
exits with 137 at that point (scheduler.faults); events keep arriving between the crash and the
re-run, as they would in production.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from rollups.cover import Piece
from rollups.timeutil import DAY_MS, G1D, G1H, G1M, HOUR_MS, MINUTE_MS, TimeRange
from scheduler.faults import CRASH_ENV, CRASH_EXIT_CODE, CRASH_POINTS
from tiers.catalog_pg import PgCatalog
from tiers.db import make_pool
from tiers.eventlog import FLUSH_GROUP, HOT_FLOOR_KEY, read_mark, registered_logs
from tiers.hot import RedisHotTier
from tiers.warm import WarmTier
from tests.warm_support import (T0, Ev, as_aggs, assert_aggs_equal, expected_rows, migrated_database, mode_params,
                                oracle, random_events, raw_rows, reset, reset_redis, table)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NOW = T0 + 2 * HOUR_MS          # catalog initialised here with hot age 1h: b_warm = T0 + 1h
AS_OF = NOW + 3 * HOUR_MS        # expire_hot target: T0 + 4h
TARGET = AS_OF - HOUR_MS
DAY0 = T0 - T0 % DAY_MS
JOBS = ("flush", "refresh", "expire_hot")
POINTS = [(job, point) for job in JOBS for point in CRASH_POINTS[job]]


@pytest.fixture(scope="module", params=mode_params())
def mode_url(request, pg_url):
    return request.param, migrated_database(pg_url, request.param, "_crash")


def run_job(settings, url: str, mode: str, job: str, crash_at: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env.update(TIERSTORE_POSTGRES_URL=url, TIERSTORE_REDIS_URL=settings.redis_url, TIERSTORE_WARM_MODE=mode,
               TIERSTORE_HOT_AGE="1h", TIERSTORE_GRACE_PERIOD="0", PYTHONPATH=str(ROOT))
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.run([sys.executable, "-m", "tierstore.cli", "jobs", "run", job, "--as-of", str(AS_OF), "--quiet"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


class Ingest:
    """Ingest through the hot tier (the log + hot aggregates) and keep the oracle's copy."""

    def __init__(self, hot: RedisHotTier, tenant: str):
        self.hot, self.tenant, self.accepted, self.seen_ids = hot, tenant, [], set()

    def batch(self, events: list[Ev]) -> None:
        self.hot.ingest(self.tenant, table(events), now_ms=NOW)
        for e in events:
            if e.id is None or e.id not in self.seen_ids:
                self.accepted.append(e)
                self.seen_ids.add(e.id)


def some_events(seed: int) -> list[Ev]:
    rnd = random.Random(seed)
    recent = random_events(rnd, 40, T0, 5 * HOUR_MS)                 # hot and warm ranges
    late = random_events(rnd, 10, T0 - 10 * DAY_MS, 9 * DAY_MS)      # late: owned by warm
    with_ids = [Ev("plays", "k01", T0 + 30 * MINUTE_MS + i, 2.0, id=f"e{seed % 2}-{i}") for i in range(5)]
    return recent + late + with_ids  # ids repeat across seeds of the same parity: duplicates


@pytest.mark.parametrize("job,point", POINTS, ids=[p for _, p in POINTS])
def test_job_crashing_at_any_point_loses_nothing_and_counts_nothing_twice(settings, redis_client, mode_url, job,
                                                                         point):
    mode, url = mode_url
    reset(url)
    reset_redis(redis_client)
    pool = make_pool(url, max_size=2)
    catalog = PgCatalog(pool)
    catalog.initialise(NOW, HOUR_MS)
    hot = RedisHotTier.from_url(settings.redis_url, HOUR_MS, 0, DAY_MS)
    ingest = Ingest(hot, f"crash-{uuid.uuid4().hex[:8]}")  # dedup marks of earlier runs live on in Redis
    try:
        for seed in range(4):
            ingest.batch(some_events(seed))

        if job == "refresh":  # refresh folds what flush wrote
            flushed = run_job(settings, url, mode, "flush", None)
            assert flushed.returncode == 0, flushed.stderr[-2000:]
        crashed = run_job(settings, url, mode, job, point)
        assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-2000:]
        assert f"{CRASH_ENV}={point} reached" in crashed.stderr

        for seed in range(4, 6):  # traffic goes on while the job is down
            ingest.batch(some_events(seed))
        rerun = run_job(settings, url, mode, job, None)
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
        if job == "expire_hot":
            snap = catalog.snapshot()
            assert (snap.b_warm, snap.version) == (TARGET, 2)
            assert read_mark(redis_client, HOT_FLOOR_KEY, 0) == TARGET
        else:
            assert catalog.snapshot().version == 1
        # whatever was logged after the re-run started reaches warm on the next flush
        rerun = run_job(settings, url, mode, "flush", None)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        logs = registered_logs(redis_client)  # one log per stream (tiers/eventlog.py), each flushed
        assert logs and all(redis_client.xpending(log, FLUSH_GROUP)["pending"] == 0 for log in logs)

        warm = WarmTier(url, mode=mode, pool_size=2)
        try:
            warm.refresh()
            assert_matches_oracle(warm, ingest.tenant, ingest.accepted)
        finally:
            warm.close()
    finally:
        hot.close()
        pool.close()


def assert_matches_oracle(warm: WarmTier, tenant: str, events: list[Ev]) -> None:
    lo, hi = DAY0 - 12 * DAY_MS, DAY0 + 2 * DAY_MS
    for stream in sorted({e.stream for e in events}):
        assert raw_rows(warm, tenant, stream, lo, hi) == expected_rows(events, stream, lo, hi)
        for g in (G1M, G1H, G1D):
            pieces = [Piece(g, TimeRange(lo, hi))]
            assert_aggs_equal(as_aggs(warm.aggregate(tenant, stream, pieces, "bucket"), "bucket"),
                              oracle(events, stream, lo, hi, g.ms))
            assert_aggs_equal(as_aggs(warm.aggregate(tenant, stream, pieces, "key"), "key"),
                              oracle(events, stream, lo, hi, "key"))


def test_every_listed_crash_point_is_placed_in_the_code_and_every_placed_one_is_listed():
    """CRASH_POINTS is what the crash tests iterate: a point listed but never placed would crash-test
    nothing, a point placed but not listed raises at run time. Read the calls from the source."""
    import re

    literal, prefixes = set(), set()
    for path in (ROOT / "scheduler").glob("*.py"):
        for f, name in re.findall(r'crash_point\((f?)"([^"]+)"\)', path.read_text()):
            (prefixes if f else literal).add(name.split("{")[0] if f else name)
    listed = {p for points in CRASH_POINTS.values() for p in points}
    assert literal <= listed, literal - listed
    unplaced = {p for p in listed - literal if not any(p.startswith(prefix) for prefix in prefixes)}
    assert not unplaced, unplaced
    assert {job for job, _ in POINTS} == set(JOBS) and all(CRASH_POINTS[job] for job in JOBS)
