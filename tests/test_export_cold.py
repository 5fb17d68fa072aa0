"""export_cold against real PostgreSQL (warm, postgres mode), Redis and both cold engines.

The oracle: answers split by one catalog snapshot across warm and cold (each read at its cover)
equal the aggregate of the raw events, before and after the export and after the drop; and a
crash at every named point of the export (a subprocess killed there), followed by a plain re-run,
ends exact with no temp file left that a reader could open.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis as redis_lib

from rollups.cover import cover
from rollups.partials import merge_partials
from rollups.timeutil import DAY_MS, G1M, MIN_MS, TimeRange, parse_time
from scheduler.faults import CRASH_ENV, CRASH_EXIT_CODE, CRASH_POINTS
from tests.tier_contract import STREAM, as_aggs, oracle_by_key, random_events, random_range
from tests.api_support import redis_db_url
from tests.warm_support import migrated_database

WINDOW = TimeRange(parse_time("2025-01-27T03:11:00Z"), parse_time("2025-02-06T20:00:00Z"))
AS_OF = parse_time("2025-02-04T09:30:00Z")  # with warm_age 1d: days before 2025-02-03 leave warm
WARM_AGE = DAY_MS
ENGINES = [pytest.param("duckdb", id="duckdb"), pytest.param("trino", id="trino", marks=pytest.mark.trino)]
REDIS_DB = 11


def build(db_url: str, cold_root: str, engine: str, schema: str):
    """(redis, warm, cold, catalog) of one scratch world."""
    from tierstore.settings import load_settings
    from tiers.catalog_pg import PgCatalog
    from tiers.cold import ColdTier
    from tiers.cold_keys import PgKeyDictionary
    from tiers.warm import WarmTier

    settings = load_settings()
    warm = WarmTier(db_url, mode="postgres")
    cold = ColdTier(settings, keys=PgKeyDictionary(pool=warm.pool), root=Path(cold_root), engine=engine,
                    trino_schema=schema)
    r = redis_lib.Redis.from_url(redis_db_url(settings, "export_cold", REDIS_DB, empty=False))
    return r, warm, cold, PgCatalog(warm.pool)


def run_export(world, grace_ms: int = 0):
    from scheduler.export_cold import export_cold

    r, warm, cold, catalog = world
    return export_cold(r, warm, cold, catalog, AS_OF, warm_age_ms=WARM_AGE, grace_ms=grace_ms)


def answer(world, tenant: str, rng: TimeRange) -> dict:
    """What a router does: one snapshot, each segment from its owner at its cover, merged."""
    _, warm, cold, catalog = world
    snap = catalog.snapshot()
    parts = []
    for tier_name, part in snap.segments(rng):
        tier = {"cold": cold, "warm": warm}.get(tier_name)
        assert tier is not None, f"{tier_name} owns {part}: nothing should be there"
        parts.append(tier.aggregate(tenant, STREAM, cover(part, tier.granularities), "key"))
    return as_aggs(merge_partials(parts, "key"), "key")


@pytest.fixture(params=ENGINES)
def world(request, pg_url, settings):
    db = migrated_database(pg_url, "postgres", "_export")
    root = settings.cold_dir / f"_test_export_{uuid.uuid4().hex[:8]}"
    schema = f"test_export_{root.name[-8:]}"
    w = build(db, str(root), request.param, schema)
    r, warm, cold, catalog = w
    r.flushdb()
    catalog.initialise(parse_time("2025-02-06T00:00:00Z"), 0)  # b_warm early: hot owns nothing here
    with warm.pool.connection() as conn:
        catalog.advance(conn, b_warm=parse_time("2025-02-07T00:00:00Z"))
    tenant = f"t{uuid.uuid4().hex[:8]}"
    events = random_events(random.Random(3), WINDOW, 1500)
    warm.write(tenant, events)
    yield {"world": w, "db": db, "root": root, "schema": schema, "engine": request.param, "tenant": tenant,
           "events": events}
    cold.close()
    warm.close()
    r.flushdb()
    r.close()
    import shutil

    shutil.rmtree(root, ignore_errors=True)


def check_exact(ctx, n: int = 12) -> None:
    rnd = random.Random(9)
    whole = TimeRange(G1M.ceil(WINDOW.start), G1M.floor(WINDOW.end))
    for rng in [whole] + [random_range(rnd, WINDOW) for _ in range(n)]:
        assert answer(ctx["world"], ctx["tenant"], rng) == oracle_by_key(ctx["events"], rng), rng


def no_readable_temp_files(root: Path) -> None:
    assert not [p for p in root.rglob("*.parquet") if p.name != "part-0.parquet" and not p.name.startswith(".tmp-")]


def test_export_moves_days_and_stays_exact(world):
    ctx = world
    _, warm, cold, catalog = ctx["world"]
    check_exact(ctx)
    stats = run_export(ctx["world"], grace_ms=3_600_000)
    snap = catalog.snapshot()
    assert snap.b_cold == parse_time("2025-02-03T00:00:00Z") == stats["b_cold"]
    assert stats["days"] == 7 and stats["dropped"]["deleted"] == 0  # within the grace period
    check_exact(ctx)
    assert cold.streams(ctx["tenant"]) == [STREAM]
    again = run_export(ctx["world"])  # nothing new to copy; the grace is over: warm drops
    assert again["days"] == 0 and again["dropped"]["deleted"] > 0
    assert warm.aggregate(ctx["tenant"], STREAM, cover(TimeRange(MIN_MS, snap.b_cold), warm.granularities),
                          "key").num_rows == 0
    check_exact(ctx)
    no_readable_temp_files(ctx["root"])


def test_export_seals_the_exported_range(world):
    from tiers.eventlog import SEAL_KEY, read_mark

    run_export(world["world"])
    assert read_mark(world["world"][0], SEAL_KEY, MIN_MS) == parse_time("2025-02-03T00:00:00Z")


def test_export_scans_warm_totals_once_per_run(world, monkeypatch):
    """warm's count and sum per stream-day (the figures every file is verified against, and the
    stream-days to visit) come from ONE aggregate per run, not one per batch read; still exact."""
    from scheduler import export_cold as E

    calls = {"day_totals": 0, "read_range": 0}
    for name in calls:
        def counted(*a, _fn=getattr(E, name), _name=name, **k):
            calls[_name] += 1
            return _fn(*a, **k)
        monkeypatch.setattr(E, name, counted)
    stats = run_export(world["world"], grace_ms=3_600_000)
    assert stats["days"] == 7 and stats["events"] > 0
    assert calls == {"day_totals": 1, "read_range": 2}  # batches of 2 and 5 days
    check_exact(world)


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS["export_cold"])
def test_a_crash_at_any_step_then_a_rerun_is_exact(world, point):
    ctx = world
    env = {**os.environ, CRASH_ENV: point}
    proc = subprocess.run([sys.executable, "-m", "tests.test_export_cold", ctx["db"], str(ctx["root"]),
                           ctx["engine"], ctx["schema"]], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, timeout=600)
    assert proc.returncode == CRASH_EXIT_CODE, proc.stderr[-3000:]
    assert point in proc.stderr
    check_exact(ctx, n=6)  # whatever the crash left, the catalog's owners answer exactly
    run_export(ctx["world"])
    assert ctx["world"][3].snapshot().b_cold == parse_time("2025-02-03T00:00:00Z")
    check_exact(ctx)
    no_readable_temp_files(ctx["root"])


if __name__ == "__main__":  # the crash test's child: one export, dies at $TIERSTORE_CRASH_AT
    world = build(*sys.argv[1:5])
    run_export(world)
    sys.exit(0)
