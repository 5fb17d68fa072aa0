"""The archive job against real PostgreSQL, s3proxy and both engines (DuckDB, Trino over s3://).

The oracle: answers split by one catalog snapshot across archive and cold (each read at its
cover) equal the aggregate of the raw events, before and after archiving, after the purge of the
cold files, and after a crash at every named point of the job (a subprocess killed there)
followed by a plain re-run — nothing lost, nothing counted twice, nothing uploaded unverified.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from rollups.cover import cover
from rollups.partials import merge_partials
from rollups.timeutil import DAY_MS, G1M, TimeRange, parse_time
from scheduler.faults import CRASH_ENV, CRASH_EXIT_CODE, CRASH_POINTS
from tests.tier_contract import STREAM, as_aggs, oracle_by_key, random_events, random_range
from tests.warm_support import migrated_database

WINDOW = TimeRange(parse_time("2024-12-20T03:11:00Z"), parse_time("2025-02-02T20:00:00Z"))
B_COLD = parse_time("2025-02-03T00:00:00Z")
COLD_AGE = 10 * DAY_MS
AS_OF = parse_time("2025-02-01T12:00:00Z")  # target: 2025-01-22 (December and whole weeks inside)
TARGET = parse_time("2025-01-22T00:00:00Z")
LATER = parse_time("2025-02-10T07:00:00Z")  # target: 2025-01-31, capped by nothing
LATER_TARGET = parse_time("2025-01-31T00:00:00Z")
ENGINES = [pytest.param("duckdb", id="duckdb"), pytest.param("trino", id="trino", marks=pytest.mark.trino)]


def build(db_url: str, cold_root: str, engine: str, prefix: str, schema: str):
    """(cold, archive, catalog) of one scratch world."""
    from tierstore.settings import load_settings
    from tiers.archive import ArchiveTier
    from tiers.catalog_pg import PgCatalog
    from tiers.cold import ColdTier
    from tiers.cold_keys import PgKeyDictionary
    from tiers.db import make_pool

    settings = load_settings()
    pool = make_pool(db_url, max_size=6, name="test-archive-jobs")
    cold = ColdTier(settings, keys=PgKeyDictionary(pool=pool), root=Path(cold_root), engine=engine,
                    trino_schema=f"{schema}_cold")
    tier = ArchiveTier(settings, pool=pool, keys=cold.keys, engine=engine, prefix=prefix,
                       trino_schema=f"{schema}_archive")
    return cold, tier, PgCatalog(pool), pool


def run_archive(world, as_of: int = AS_OF, grace_ms: int = 0, **kw):
    from scheduler.archive import archive

    cold, tier, catalog, _ = world
    return archive(cold, tier, catalog, as_of, cold_age_ms=COLD_AGE, grace_ms=grace_ms, **kw)


def answer(world, tenant: str, rng: TimeRange) -> dict:
    """What a router does: one snapshot, each segment from its owner at its cover, merged."""
    cold, tier, catalog, _ = world
    snap = catalog.snapshot()
    parts = []
    for name, part in snap.segments(rng):
        owner = {"cold": cold, "archive": tier}.get(name)
        assert owner is not None, f"{name} owns {part}: nothing should be there"
        parts.append(owner.aggregate(tenant, STREAM, cover(part, owner.granularities), "key"))
    return as_aggs(merge_partials(parts, "key"), "key")


@pytest.fixture(params=ENGINES)
def world(request, pg_url, settings):
    db = migrated_database(pg_url, "postgres", "_archive_jobs")
    run = uuid.uuid4().hex[:8]
    root = settings.cold_dir / f"_test_archive_{run}"
    prefix, schema = f"_test/jobs-{run}", f"test_arch_{run}"
    w = build(db, str(root), request.param, prefix, schema)
    cold, tier, catalog, pool = w
    catalog.initialise(parse_time("2025-02-06T00:00:00Z"), 0)
    with pool.connection() as conn:
        catalog.advance(conn, b_warm=parse_time("2025-02-07T00:00:00Z"), b_cold=B_COLD)
    tenant = f"t{uuid.uuid4().hex[:8]}"
    events = random_events(random.Random(5), WINDOW, 2000)
    cold.write(tenant, events)
    other = random_events(random.Random(6), WINDOW, 300, stream="other.stream")
    cold.write(tenant, other)
    yield {"world": w, "db": db, "root": root, "prefix": prefix, "schema": schema, "engine": request.param,
           "tenant": tenant, "events": events}
    tier.close()
    cold.close()
    pool.close()
    shutil.rmtree(root, ignore_errors=True)


def check_exact(ctx, n: int = 10) -> None:
    rnd = random.Random(9)
    whole = TimeRange(G1M.ceil(WINDOW.start), G1M.floor(WINDOW.end))
    for rng in [whole] + [random_range(rnd, WINDOW) for _ in range(n)]:
        assert answer(ctx["world"], ctx["tenant"], rng) == oracle_by_key(ctx["events"], rng), rng


def cold_days_below(ctx, boundary: int) -> list[int]:
    cold = ctx["world"][0]
    return [d for d in cold.layout.days(ctx["tenant"], STREAM) if d < boundary]


def test_archive_moves_days_and_stays_exact(world):
    ctx = world
    cold, tier, catalog, _ = ctx["world"]
    check_exact(ctx)
    stats = run_archive(ctx["world"], grace_ms=3_600_000)
    assert catalog.snapshot().b_archive == TARGET == stats["b_archive"]
    assert stats["days"] > 0 and stats["periods"] > 0 and stats["purged"]["days"] == 0  # within the grace
    assert cold_days_below(ctx, TARGET)  # kept for queries holding an older snapshot
    check_exact(ctx)
    assert tier.streams(ctx["tenant"]) == ["other.stream", STREAM]
    registered = tier.registry.starts(ctx["tenant"], STREAM, "day")
    assert registered and max(registered) < TARGET
    assert tier.registry.starts(ctx["tenant"], STREAM, "month") == [parse_time("2024-12-01T00:00:00Z")]

    again = run_archive(ctx["world"])  # nothing new; the grace is over: the cold copies go
    assert again["partitions"] == 0 and again["purged"]["days"] > 0
    assert cold_days_below(ctx, TARGET) == []
    check_exact(ctx)

    later = run_archive(ctx["world"], as_of=LATER)  # the week straddling the old target now closes
    assert catalog.snapshot().b_archive == LATER_TARGET
    assert later["periods"] >= 1
    assert cold_days_below(ctx, LATER_TARGET) == []
    check_exact(ctx)


@pytest.mark.parametrize("world", ["duckdb"], indirect=True)  # engine-independent
def test_max_days_archives_in_steps(world):
    ctx = world
    catalog = ctx["world"][2]
    first = run_archive(ctx["world"], max_days=3)
    assert first["days"] > 0
    assert catalog.snapshot().b_archive == parse_time("2024-12-23T00:00:00Z")
    check_exact(ctx, n=4)
    run_archive(ctx["world"])
    assert catalog.snapshot().b_archive == TARGET
    check_exact(ctx)


@pytest.mark.parametrize("world", ["duckdb"], indirect=True)  # engine-independent
def test_manifests_name_every_object_with_its_checksum(world):
    ctx = world
    cold, tier, _, _ = ctx["world"]
    run_archive(ctx["world"], grace_ms=3_600_000)
    for day in tier.registry.starts(ctx["tenant"], STREAM, "day"):
        m = tier.registry.manifest(ctx["tenant"], STREAM, "day", day)
        assert [o["table"] for o in m.objects][:3] == ["events", "rollup_1h", "rollup_1d"]
        for obj in m.objects:
            local = Path(cold.root) / obj["key"][len(tier.store.prefix) + 1:]
            assert hashlib.sha256(local.read_bytes()).hexdigest() == obj["sha256"]
            tier.store.verify(obj)


def crash_cases(points, trino_points):
    """Every point on DuckDB; on Trino (slower, same crash semantics) the points around its own step."""
    return ([pytest.param("duckdb", p, id=f"duckdb-{p}") for p in points]
            + [pytest.param("trino", p, id=f"trino-{p}", marks=pytest.mark.trino) for p in trino_points])


@pytest.mark.slow
@pytest.mark.parametrize("world, point", crash_cases(CRASH_POINTS["archive"], (
    "archive.after_verify", "archive.after_register", "archive.before_commit")), indirect=["world"])
def test_a_crash_at_any_step_then_a_rerun_is_exact(world, point):
    ctx = world
    env = {**os.environ, CRASH_ENV: point}
    proc = subprocess.run([sys.executable, "-m", "tests.test_archive_jobs", ctx["db"], str(ctx["root"]),
                           ctx["engine"], ctx["prefix"], ctx["schema"]], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, timeout=600)
    assert proc.returncode == CRASH_EXIT_CODE, proc.stderr[-3000:]
    assert point in proc.stderr
    check_exact(ctx, n=5)  # whatever the crash left, the catalog's owners answer exactly
    stats = run_archive(ctx["world"])
    assert ctx["world"][2].snapshot().b_archive == TARGET
    assert stats["purged"]["kept_unregistered"] == 0
    assert cold_days_below(ctx, TARGET) == []
    check_exact(ctx)


if __name__ == "__main__":  # the crash test's child: one archive run, dies at $TIERSTORE_CRASH_AT
    run_archive(build(*sys.argv[1:6]))
    sys.exit(0)


@pytest.mark.parametrize("world", ["duckdb"], indirect=True)  # engine-independent
def test_purge_keeps_a_cold_file_rewritten_after_archiving(world):
    """A cold day rewritten after it was archived (a racing import) is never deleted unseen."""
    ctx = world
    cold = ctx["world"][0]
    run_archive(ctx["world"], grace_ms=3_600_000)
    day = parse_time("2024-12-28T00:00:00Z")
    late = random_events(random.Random(77), TimeRange(day, day + DAY_MS), 5)
    cold.write(ctx["tenant"], late)
    stats = run_archive(ctx["world"])
    assert stats["purged"]["kept_changed"] == 1
    assert cold_days_below(ctx, TARGET) == [day]
