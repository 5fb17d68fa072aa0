"""Archive packs (tiers/archive_packs.py) against real PostgreSQL and s3proxy (DuckDB over s3://).

The same world as tests/test_archive_jobs.py (two streams of small days, 2024-12-20..2025-02-02),
archived with packing: far fewer objects than one partition per day, and every answer over the
archived range — aggregates at every cover granularity, top-K, raw reads — equals the oracle of
the raw events; after a rewrite of a packed day (it is unpacked first), after retention (a pack
goes whole, only when all of it is past retention and no legal hold overlaps it), and after a
crash of the job at its steps followed by a re-run.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from rollups.timeutil import DAY_MS, TimeRange, parse_time
from scheduler.faults import CRASH_ENV, CRASH_EXIT_CODE
from tests.test_archive_jobs import (AS_OF, B_COLD, COLD_AGE, TARGET, WINDOW, answer, build, check_exact,
                                     cold_days_below)
from tests.tier_contract import STREAM, oracle_by_key, random_events
from tests.warm_support import migrated_database
from tiers.archive_packs import PackRule

PACK = PackRule(below=1 << 20, target=64 << 20, max_days=366)


def archive_run(world, pack: PackRule | None = PACK, as_of: int = AS_OF):
    from scheduler.archive import archive

    cold, tier, catalog, _ = world
    return archive(cold, tier, catalog, as_of, cold_age_ms=COLD_AGE, grace_ms=0, pack=pack)


@pytest.fixture
def world(pg_url, settings):
    db = migrated_database(pg_url, "postgres", "_archive_packs")
    run = uuid.uuid4().hex[:8]
    root = settings.cold_dir / f"_test_packs_{run}"
    prefix, schema = f"_test/packs-{run}", f"test_pack_{run}"
    w = build(db, str(root), "duckdb", prefix, schema)
    cold, tier, catalog, pool = w
    catalog.initialise(parse_time("2025-02-06T00:00:00Z"), 0)
    with pool.connection() as conn:
        catalog.advance(conn, b_warm=parse_time("2025-02-07T00:00:00Z"), b_cold=B_COLD)
    tenant = f"t{uuid.uuid4().hex[:8]}"
    events = random_events(random.Random(5), WINDOW, 2000)
    cold.write(tenant, events)
    cold.write(tenant, random_events(random.Random(6), WINDOW, 300, stream="other.stream"))
    yield {"world": w, "db": db, "root": root, "prefix": prefix, "schema": schema, "engine": "duckdb",
           "tenant": tenant, "events": events}
    tier.close()
    cold.close()
    pool.close()
    shutil.rmtree(root, ignore_errors=True)


def bucket_objects(tier) -> int:
    """Objects under the world's prefix (data and manifests), listed from the bucket itself."""
    pages = tier.store.s3.get_paginator("list_objects_v2").paginate(Bucket=tier.store.bucket,
                                                                    Prefix=tier.store.prefix + "/")
    return sum(1 for p in pages for o in p.get("Contents", []) if not o["Key"].endswith("/"))  # not folders


def periods(tier, tenant: str, stream: str = STREAM) -> dict[str, int]:
    with tier.pool.connection() as conn:
        rows = conn.execute("SELECT period, count(*) FROM archive_partitions WHERE tenant = %s AND stream = %s "
                            "AND status = 'archived' GROUP BY 1", (tenant, stream)).fetchall()
    return dict(rows)


def check_top_k_and_raw(ctx) -> None:
    from rollups.cover import cover

    _, tier, _, _ = ctx["world"]
    rnd = random.Random(3)
    ranges = [TimeRange(WINDOW.start - WINDOW.start % 60_000 + 60_000, TARGET)]
    for _ in range(4):
        a, b = sorted(rnd.randrange(ranges[0].start, TARGET, 60_000) for _ in range(2))
        if b > a:
            ranges.append(TimeRange(a, b))
    for rng in ranges:
        want = oracle_by_key(ctx["events"], rng)
        for by in ("count", "sum"):
            got = tier.top_k(ctx["tenant"], STREAM, cover(rng, tier.granularities), 5, by)
            exact = {k: float(getattr(v, by)) for k, v in want.items()}
            assert [r.value for r in got] == pytest.approx(sorted(exact.values(), reverse=True)[:5]), (rng, by)
            for r in got:  # every ranked key carries its exact value
                assert r.value == pytest.approx(exact[r.key]), (rng, by)
        raw = pa.Table.from_batches(list(tier.read_raw(ctx["tenant"], STREAM, rng)))
        ev = ctx["events"]
        inside = [i for i, t in enumerate(ev["ts"].to_pylist()) if rng.start <= t < rng.end]
        assert raw.num_rows == len(inside), rng
        assert sorted(raw["ts"].to_pylist()) == sorted(ev["ts"].to_pylist()[i] for i in inside)


def test_packing_cuts_objects_and_stays_exact(world):
    ctx = world
    cold, tier, catalog, _ = ctx["world"]
    stats = archive_run(ctx["world"])
    assert catalog.snapshot().b_archive == TARGET
    # every day of both streams is small: one pack per stream, no day partition
    assert stats["packs"] == 2 and stats["days"] == 0, stats
    assert periods(tier, ctx["tenant"]).get("day") is None and periods(tier, ctx["tenant"])["pack"] == 1
    days = len({d for d in range(WINDOW.start - WINDOW.start % DAY_MS, TARGET, DAY_MS)})
    # one partition per day would be 8 objects a day and stream; packs: 4 objects per stream
    assert stats["objects"] == bucket_objects(tier), sorted(
        o["Key"] for p in tier.store.s3.get_paginator("list_objects_v2").paginate(
            Bucket=tier.store.bucket, Prefix=tier.store.prefix + "/") for o in p.get("Contents", []))[:60]
    # a pack: 3 objects and its manifest; a small week/month: its rollup and manifest
    assert stats["objects"] == 2 * 4 + 2 * stats["periods"], stats
    assert stats["objects"] * 5 < 8 * 2 * days, (stats, days)  # unpacked: 8 a day and stream
    assert cold_days_below(ctx, TARGET) == []  # the purge recognised the packed days
    assert stats["purged"]["kept_unregistered"] == 0 and stats["purged"]["kept_changed"] == 0
    check_exact(ctx)
    check_top_k_and_raw(ctx)


def test_without_packing_one_partition_per_day(world):
    """The baseline the packing test beats: the same world archived day by day."""
    ctx = world
    _, tier, _, _ = ctx["world"]
    stats = archive_run(ctx["world"], pack=None)
    assert stats["packs"] == 0 and stats["days"] > 30
    assert stats["objects"] >= 8 * stats["days"]
    check_exact(ctx, n=3)


def test_a_large_day_stays_a_partition_and_splits_the_pack(world):
    ctx = world
    cold, tier, _, _ = ctx["world"]
    big = parse_time("2025-01-05T00:00:00Z")
    sizes = {}
    for d in cold.layout.days(ctx["tenant"], STREAM):
        sizes[d] = Path(cold.layout.raw_file(ctx["tenant"], STREAM, d)).stat().st_size
    rule = PackRule(below=sizes[big], target=64 << 20, max_days=10)  # days as large as `big` are large
    archive_run(ctx["world"], pack=rule)
    held = periods(tier, ctx["tenant"])
    assert held.get("day", 0) >= 1 and held.get("pack", 0) >= 2, held
    for m in tier.registry.packs(ctx["tenant"], STREAM):
        assert m.end - m.start <= 10 * DAY_MS
        assert all(sizes[d] < sizes[big] for d in m.day_starts())
    check_exact(ctx)


def test_rewriting_a_packed_day_unpacks_it_exactly(world):
    ctx = world
    _, tier, _, _ = ctx["world"]
    archive_run(ctx["world"])
    day = parse_time("2025-01-03T00:00:00Z")
    assert tier.partitions.pack_of(ctx["tenant"], STREAM, day) is not None
    late = random_events(random.Random(71), TimeRange(day, day + DAY_MS), 7)
    tier.write(ctx["tenant"], late)
    ctx["events"] = pa.concat_tables([ctx["events"], late])
    assert tier.registry.packs(ctx["tenant"], STREAM) == []
    assert tier.registry.starts(ctx["tenant"], STREAM, "day")  # every day its own partition now
    check_exact(ctx)
    deleted = tier.delete_range(ctx["tenant"], STREAM, TimeRange(day, day + DAY_MS))
    assert deleted == sum(1 for t in ctx["events"]["ts"].to_pylist() if day <= t < day + DAY_MS)


def test_retention_deletes_a_pack_whole_and_holds_keep_it(world, settings):
    from scheduler.retention import LegalHolds, retention

    ctx = world
    _, tier, _, pool = ctx["world"]
    archive_run(ctx["world"])
    (pack,) = tier.registry.packs(ctx["tenant"], STREAM)
    ret = settings.archive_retention
    # the cutoff inside the pack: its first days are past retention, its last is not -> kept whole
    stats = retention(tier, settings, pack.start + 3 * DAY_MS + ret)
    assert tier.registry.packs(ctx["tenant"], STREAM) != [] and stats["deleted"] == 0
    check_exact(ctx, n=3)
    # a hold on one of its days keeps it even when all of it is past retention
    holds = LegalHolds(pool)
    hold = holds.add(ctx["tenant"], STREAM, pack.day_starts()[1], pack.day_starts()[1] + DAY_MS, "case 7", "test")
    stats = retention(tier, settings, pack.end + ret, holds=holds)
    assert stats["kept_hold"] >= 1 and tier.registry.packs(ctx["tenant"], STREAM) != []
    holds.remove(hold.id, "test")
    stats = retention(tier, settings, pack.end + ret, holds=holds)
    assert tier.registry.packs(ctx["tenant"], STREAM) == []
    assert stats["events_deleted"] >= pack.totals()[1]
    assert tier.registry.status(ctx["tenant"], STREAM, "pack", pack.start) == "deleted"
    # what is left of the stream answers as the raw events minus the pack's days
    rng = TimeRange(pack.start, TARGET)
    ev = ctx["events"]
    keep = [i for i, t in enumerate(ev["ts"].to_pylist()) if t >= pack.end]
    assert answer(ctx["world"], ctx["tenant"], rng) == oracle_by_key(ev.take(keep), rng)


@pytest.mark.parametrize("point", ["archive.after_upload", "archive.after_verify", "archive.before_commit"])
def test_a_crash_while_packing_then_a_rerun_is_exact(world, point):
    ctx = world
    env = {**os.environ, CRASH_ENV: point}
    proc = subprocess.run([sys.executable, "-m", "tests.test_archive_packs", ctx["db"], str(ctx["root"]),
                           ctx["engine"], ctx["prefix"], ctx["schema"]], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, timeout=600)
    assert proc.returncode == CRASH_EXIT_CODE, proc.stderr[-3000:]
    check_exact(ctx, n=3)
    stats = archive_run(ctx["world"])
    assert ctx["world"][2].snapshot().b_archive == TARGET
    assert stats["purged"]["kept_unregistered"] == 0
    assert cold_days_below(ctx, TARGET) == []
    check_exact(ctx)


def test_the_registry_refuses_a_day_inside_a_pack(world):
    """A day registered over a pack (e.g. an import staging the day alone) would count it twice."""
    from tiers.archive_manifest import Manifest

    ctx = world
    _, tier, _, pool = ctx["world"]
    archive_run(ctx["world"])
    (pack,) = tier.registry.packs(ctx["tenant"], STREAM)
    day = pack.day_starts()[2]
    clash = Manifest(ctx["tenant"], STREAM, "day", day, [{"table": "events", "rows": 1, "count": 1, "sum": 1.0}])
    with pytest.raises(ValueError, match="unpack it first"):
        with pool.connection() as conn:
            tier.registry.register(conn, clash, "k", "0" * 64)
    assert tier.registry.manifest(ctx["tenant"], STREAM, "day", day) is None
    check_exact(ctx, n=2)


if __name__ == "__main__":  # the crash test's child: one packing archive run, dies at $TIERSTORE_CRASH_AT
    archive_run(build(*sys.argv[1:6]))
    sys.exit(0)


def test_a_pack_takes_its_days_own_partials_equal_to_those_of_its_events(tmp_path):
    """stage_pack concatenates its days' rollup_1h/1d files instead of recomputing them from the
    pack's events: the files equal rollup_raw over the events (mixed values: not exactly summable),
    and the events keep their (ts, key_id) order; a day without its rollup files falls back."""
    import numpy as np
    import pyarrow.parquet as pq

    from rollups.timeutil import G1D, G1H
    from tiers import parquet_layout as PL
    from tiers.archive_packs import pack_file, stage_pack

    rnd = np.random.default_rng(7)
    source = PL.Layout(tmp_path / "source")
    day0 = parse_time("2025-01-06T00:00:00Z")
    days = [day0 + i * DAY_MS for i in range(3)]
    for i, d in enumerate(days):
        n = 2000
        keys = rnd.integers(1, 200, n)
        values = rnd.integers(1, 50, n).astype(float) if i != 1 else rnd.random(n) * 10 - 3
        raw = pa.table({"ts": np.sort(rnd.integers(d, d + DAY_MS, n)), "key_id": keys.astype("int64"),
                        "key": pa.array([f"k{k}" for k in keys]), "value": values,
                        "id": pa.array([None] * n, pa.string())}).cast(PL.RAW_SCHEMA)
        PL.write_day(source, "t", "s", d, raw.sort_by([("ts", "ascending"), ("key_id", "ascending")]), durable=False)
    for name in ("joined", "computed"):
        if name == "computed":
            os.remove(source.rollup_file("t", "s", G1H, days[1]))
        staged, info = stage_pack(source, "t", "s", days, tmp_path / name)
        events = pq.read_table(pack_file(staged, "events", "t", "s", days[0], days[-1]))
        assert events.num_rows == sum(i["rows"] for i in info) == 6000 and PL.in_file_order(events)
        for table, gran in (("rollup_1h", G1H), ("rollup_1d", G1D)):
            got = pq.read_table(pack_file(staged, table, "t", "s", days[0], days[-1])).cast(PL.ROLLUP_SCHEMA)
            assert got.equals(PL.rollup_raw(events.cast(PL.RAW_SCHEMA), gran).cast(PL.ROLLUP_SCHEMA)), (name, table)


def test_manifests_many_is_manifests_per_ask(world):
    """ArchiveRegistry.manifests_many (one statement for a query's pieces) answers each ask as
    `manifests` does — packs under "day", weeks and months, empty ranges — also from its parsed
    manifests on a second call, and a rewritten partition is seen (a new SHA-256, parsed anew)."""
    ctx = world
    _, tier, _, _ = ctx["world"]
    archive_run(ctx["world"])
    reg, t = tier.registry, ctx["tenant"]
    asks = [("day", TimeRange(WINDOW.start, TARGET)), ("week", TimeRange(WINDOW.start, TARGET)),
            ("month", TimeRange(WINDOW.start, TARGET)), ("day", TimeRange(TARGET, TARGET + DAY_MS)),
            ("day", TimeRange(WINDOW.start + 3 * DAY_MS, WINDOW.start + 4 * DAY_MS))]

    def shown(ms):
        return [(m.period, m.start, m.end, len(m.objects)) for m in ms]

    for _ in range(2):
        got = reg.manifests_many(t, STREAM, asks)
        assert [shown(g) for g in got] == [shown(reg.manifests(t, STREAM, p, r)) for p, r in asks]
    assert got[0] and got[0][0].period == "pack" and got[1] and got[2] and got[3] == []
    with tier.pool.connection() as conn:  # the pack's manifest changes (as a rewrite would)
        conn.execute("UPDATE archive_partitions SET manifest = jsonb_set(manifest, '{objects}', "
                     "(manifest->'objects') - 0), "
                     "manifest_sha256 = 'x' || manifest_sha256 WHERE tenant = %s AND stream = %s AND period = 'pack'",
                     (t, STREAM))
    again = reg.manifests_many(t, STREAM, asks[:1])[0]
    assert [len(m.objects) for m in again] == [len(m.objects) - 1 for m in got[0]]
