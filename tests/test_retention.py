"""Retention on the archive (real PostgreSQL, s3proxy, both engines): partitions past retention go,
per-stream overrides (the stream registry's retention) apply, legal holds keep theirs, raw data without rollups is never deleted,
dry runs change nothing, every decision is audited, and answers stay exact — the raw events
minus what retention deleted — including after a crash at every step and a re-run."""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from psycopg.types.json import Jsonb

from rollups.timeutil import DAY_MS, G1M, TimeRange, parse_time
from scheduler.faults import CRASH_ENV, CRASH_EXIT_CODE, CRASH_POINTS
from tests.test_archive_jobs import ENGINES, WINDOW, answer, build, crash_cases, run_archive
from tests.tier_contract import STREAM, oracle_by_key, random_events, random_range
from tests.warm_support import migrated_database

AS_OF = parse_time("2025-02-01T12:00:00Z")
RETENTION = 30 * DAY_MS                          # cutoff 2025-01-02: Dec 20 .. Jan 1 go
CUTOFF = parse_time("2025-01-02T00:00:00Z")
HOLD = TimeRange(parse_time("2024-12-24T10:00:00Z"), parse_time("2024-12-25T02:00:00Z"))  # days 24 and 25
HELD_DAYS = TimeRange(parse_time("2024-12-24T00:00:00Z"), parse_time("2024-12-26T00:00:00Z"))
OTHER = "other.stream"
OTHER_RETENTION = 40 * DAY_MS                    # cutoff 2024-12-23 for the other stream
OTHER_CUTOFF = parse_time("2024-12-23T00:00:00Z")


def retention_settings(settings):
    return settings.model_copy(update={"archive_retention": RETENTION})


def register_retention(pool, tenant: str) -> None:
    """OTHER's retention override lives in the stream registry (PUT /v1/streams/{stream})."""
    from tiers.stream_registry import StreamEntry, StreamRegistry

    with pool.connection() as conn:
        StreamRegistry.put(conn, StreamEntry(tenant, OTHER, retention="40d", retention_ms=OTHER_RETENTION))


def run_retention(world, settings, *, dry_run=False, as_of=AS_OF):
    from scheduler.retention import retention

    return retention(world[1], retention_settings(settings), as_of, dry_run=dry_run)


def survivors(events: pa.Table, cutoff: int, held: TimeRange | None) -> pa.Table:
    keep = pc.greater_equal(events["ts"], cutoff)
    if held is not None:
        keep = pc.or_(keep, pc.and_(pc.greater_equal(events["ts"], held.start), pc.less(events["ts"], held.end)))
    return events.filter(keep)


@pytest.fixture(params=ENGINES)
def world(request, pg_url, settings):
    db = migrated_database(pg_url, "postgres", "_retention")
    run = uuid.uuid4().hex[:8]
    root = settings.cold_dir / f"_test_retention_{run}"
    prefix, schema = f"_test/retention-{run}", f"test_ret_{run}"
    w = build(db, str(root), request.param, prefix, schema)
    cold, tier, catalog, pool = w
    catalog.initialise(parse_time("2025-02-06T00:00:00Z"), 0)
    with pool.connection() as conn:
        catalog.advance(conn, b_warm=parse_time("2025-02-07T00:00:00Z"), b_cold=parse_time("2025-02-03T00:00:00Z"))
    tenant = f"t{uuid.uuid4().hex[:8]}"
    register_retention(pool, tenant)
    events = random_events(random.Random(15), WINDOW, 1500)
    other = random_events(random.Random(16), WINDOW, 400, stream=OTHER)
    cold.write(tenant, events)
    cold.write(tenant, other)
    run_archive(w)  # b_archive -> 2025-01-22, cold copies purged (grace 0)
    from scheduler.retention import LegalHolds

    hold = LegalHolds(pool).add(tenant, STREAM, HOLD.start, HOLD.end, "litigation 2025-17", "legal@example")
    yield {"world": w, "db": db, "root": root, "prefix": prefix, "schema": schema, "engine": request.param,
           "tenant": tenant, "events": events, "other": other, "hold": hold}
    tier.close()
    cold.close()
    pool.close()
    shutil.rmtree(root, ignore_errors=True)


def check_exact(ctx, events: pa.Table, stream: str = STREAM, n: int = 8) -> None:
    rnd = random.Random(4)
    whole = TimeRange(G1M.ceil(WINDOW.start), G1M.floor(WINDOW.end))
    for rng in [whole] + [random_range(rnd, WINDOW) for _ in range(n)]:
        got = answer_stream(ctx["world"], ctx["tenant"], stream, rng)
        assert got == oracle_by_key(events, rng), rng


def answer_stream(world, tenant, stream, rng):
    if stream == STREAM:
        return answer(world, tenant, rng)
    from rollups.cover import cover
    from rollups.partials import merge_partials
    from tests.tier_contract import as_aggs

    cold, tier, catalog, _ = world
    parts = []
    for name, part in catalog.snapshot().segments(rng):
        owner = {"cold": cold, "archive": tier}[name]
        parts.append(owner.aggregate(tenant, stream, cover(part, owner.granularities), "key"))
    return as_aggs(merge_partials(parts, "key"), "key")


def audit_rows(ctx, action=None):
    with ctx["world"][3].connection() as conn:
        sql, params = "SELECT action, stream, start_ms, period, dry_run, hold_ids FROM retention_audit WHERE tenant = %s", \
            [ctx["tenant"]]
        if action:
            sql += " AND action = %s"
            params.append(action)
        return conn.execute(sql + " ORDER BY id", params).fetchall()


def test_dry_run_plans_audits_and_changes_nothing(world, settings):
    ctx = world
    stats = run_retention(ctx["world"], settings, dry_run=True)
    assert stats["deleted"] > 0 and stats["kept_hold"] == 2 and stats["events_deleted"] > 0
    assert stats["objects_deleted"] == 0
    assert {p["action"] for p in stats["plan"]} == {"delete", "kept_hold"}
    assert all(r[4] for r in audit_rows(ctx))  # only dry-run rows
    assert len(audit_rows(ctx, "would_delete")) == stats["deleted"]
    check_exact(ctx, ctx["events"])
    check_exact(ctx, ctx["other"], OTHER, n=3)


def test_retention_deletes_past_cutoff_keeps_holds_and_stays_exact(world, settings):
    ctx = world
    tier = ctx["world"][1]
    before = {s: tier.registry.starts(ctx["tenant"], s, "day") for s in (STREAM, OTHER)}
    stats = run_retention(ctx["world"], settings)
    assert stats["kept_hold"] == 2 and stats["deleted"] > 0 and stats["periods_rebuilt"] > 0
    after = {s: tier.registry.starts(ctx["tenant"], s, "day") for s in (STREAM, OTHER)}
    assert after[STREAM] == [d for d in before[STREAM] if d >= CUTOFF or HELD_DAYS.contains(d)]
    assert after[OTHER] == [d for d in before[OTHER] if d >= OTHER_CUTOFF]
    # every deleted partition has one audit row naming its objects; the held ones say which hold kept them
    deleted = audit_rows(ctx, "delete")
    assert len([r for r in deleted if r[3] == "day"]) == stats["deleted"]
    assert [r[5] for r in audit_rows(ctx, "kept_hold")] == [[ctx["hold"].id]] * 2
    for stream in (STREAM, OTHER):
        for day in tier.registry.starts(ctx["tenant"], stream, "day", status="deleted"):
            m = tier.registry.manifest(ctx["tenant"], stream, "day", day, status="deleted")
            assert not any(tier.store.exists(o["key"]) for o in m.objects)
    check_exact(ctx, survivors(ctx["events"], CUTOFF, HELD_DAYS))
    check_exact(ctx, survivors(ctx["other"], OTHER_CUTOFF, None), OTHER, n=3)
    again = run_retention(ctx["world"], settings)  # nothing more to delete; holds still keep theirs
    assert again["deleted"] == 0 and again["kept_hold"] == 2
    check_exact(ctx, survivors(ctx["events"], CUTOFF, HELD_DAYS), n=3)


@pytest.mark.parametrize("world", ["duckdb"], indirect=True)  # engine-independent
def test_released_hold_lets_retention_delete(world, settings):
    from scheduler.retention import LegalHolds

    ctx = world
    run_retention(ctx["world"], settings)
    holds = LegalHolds(ctx["world"][3])
    assert holds.remove(ctx["hold"].id, "legal@example").released_by == "legal@example"
    assert holds.list(ctx["tenant"]) == [] and len(holds.list(ctx["tenant"], include_released=True)) == 1
    stats = run_retention(ctx["world"], settings)
    assert stats["deleted"] == 2 and stats["kept_hold"] == 0
    check_exact(ctx, survivors(ctx["events"], CUTOFF, None))


@pytest.mark.parametrize("world", ["duckdb"], indirect=True)  # engine-independent
def test_raw_without_rollups_is_never_deleted(world, settings):
    ctx = world
    cold, tier, catalog, pool = ctx["world"]
    day = parse_time("2024-12-21T00:00:00Z")
    m = tier.registry.manifest(ctx["tenant"], STREAM, "day", day)
    stripped = {**m.to_dict(), "objects": [o for o in m.objects if o["table"] == "events"]}
    with pool.connection() as conn:
        conn.execute("UPDATE archive_partitions SET manifest = %s WHERE tenant = %s AND stream = %s AND period = 'day' "
                     "AND start_ms = %s", (Jsonb(stripped), ctx["tenant"], STREAM, day))
    stats = run_retention(ctx["world"], settings)
    assert stats["kept_no_rollups"] == 1
    assert day in tier.registry.starts(ctx["tenant"], STREAM, "day")
    assert [r[2] for r in audit_rows(ctx, "kept_no_rollups")] == [day]


@pytest.mark.slow
@pytest.mark.parametrize("world, point", crash_cases(CRASH_POINTS["retention"], (
    "retention.after_delete", "retention.after_rebuild")), indirect=["world"])
def test_a_crash_at_any_step_then_a_rerun_is_exact(world, settings, point):
    ctx = world
    env = {**os.environ, CRASH_ENV: point}
    proc = subprocess.run([sys.executable, "-m", "tests.test_retention", ctx["db"], str(ctx["root"]), ctx["engine"],
                           ctx["prefix"], ctx["schema"]], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, timeout=600)
    assert proc.returncode == CRASH_EXIT_CODE, proc.stderr[-3000:]
    assert point in proc.stderr
    run_retention(ctx["world"], settings)
    check_exact(ctx, survivors(ctx["events"], CUTOFF, HELD_DAYS))
    check_exact(ctx, survivors(ctx["other"], OTHER_CUTOFF, None), OTHER, n=3)
    tier = ctx["world"][1]
    deleted_days = sum(len(tier.registry.starts(ctx["tenant"], s, "day", status="deleted")) for s in (STREAM, OTHER))
    assert len([r for r in audit_rows(ctx, "delete") if r[3] == "day"]) == deleted_days  # once each
    assert tier.registry.starts(ctx["tenant"], STREAM, "day", status="deleting") == []


if __name__ == "__main__":  # the crash test's child: one retention run, dies at $TIERSTORE_CRASH_AT
    from tierstore.settings import load_settings

    run_retention(build(*sys.argv[1:6]), load_settings())
    sys.exit(0)


@pytest.mark.parametrize("world", ["duckdb"], indirect=True)  # engine-independent
def test_cli_holds_and_dry_run(world):
    """`tierstore hold add|list|remove` and `tierstore retention --dry-run` on the world's database."""
    import json as _json

    ctx = world
    env = {**os.environ, "TIERSTORE_POSTGRES_URL": ctx["db"], "TIERSTORE_HOT_AGE": "1h", "TIERSTORE_WARM_AGE": "1d",
           "TIERSTORE_COLD_AGE": "10d", "TIERSTORE_ARCHIVE_RETENTION": "30d"}

    def cli(*argv):
        proc = subprocess.run([sys.executable, "-m", "tierstore.cli", *argv], env=env, capture_output=True, text=True,
                              cwd=Path(__file__).parent.parent, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    added = _json.loads(cli("hold", "add", "--tenant", ctx["tenant"], "--from", "2024-12-28T00:00:00Z", "--to",
                            "2024-12-29T00:00:00Z", "--reason", "subpoena 7", "--by", "cli-test", "--json"))
    assert added[0]["stream"] is None and added[0]["reason"] == "subpoena 7"
    listed = _json.loads(cli("hold", "list", "--tenant", ctx["tenant"], "--json"))
    assert [h["id"] for h in listed] == [ctx["hold"].id, added[0]["id"]]
    plan = _json.loads(cli("retention", "--dry-run", "--as-of", "2025-02-01T12:00:00Z", "--json"))
    kept = {(p["stream"], p["day"]) for p in plan["plan"] if p["action"] == "kept_hold"}
    assert kept == {(STREAM, "2024-12-24"), (STREAM, "2024-12-25"), (STREAM, "2024-12-28")}  # stream-wide hold
    assert not [p for p in plan["plan"] if p["stream"] == OTHER and p["day"] >= "2024-12-23"]  # its own cutoff
    assert "released" in cli("hold", "remove", str(added[0]["id"]), "--by", "cli-test")
    assert [h["id"] for h in _json.loads(cli("hold", "list", "--tenant", ctx["tenant"], "--json"))] == [ctx["hold"].id]
    assert ctx["world"][1].registry.starts(ctx["tenant"], STREAM, "day", status="deleted") == []  # dry run
