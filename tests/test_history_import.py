"""`tierstore import` of history (tierstore/history_import.py) against real PostgreSQL,
Redis and s3proxy: on a fresh instance each day lands in the tier its age gives it (archive, cold,
warm, hot), the catalog moves once, and answers across all four tiers equal the raw events; a rerun
writes nothing twice; a crash before the commit leaves the catalog as it was and a rerun is exact;
cold days of a running instance take more history (merged, ids already stored skipped, exact
after a crash between a day's rename and its ledger row); history below the archive boundary of a
running instance is merged into the archived days (tests/test_history_import_archive.py has more)."""
from __future__ import annotations

import random
import shutil
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis as redis_lib

from rollups.cover import cover
from rollups.partials import merge_partials
from rollups.timeutil import DAY_MS, G1M, MIN_MS, TimeRange, now_ms
from tests.api_support import redis_db_url
from tests.tier_contract import STREAM, as_aggs, oracle_by_key, random_events, random_range
from tests.warm_support import migrated_database
from tierstore import history_import as H
from tierstore.importer import run_import
from tiers import day_batch as DB
from tiers import parquet_layout as PL

REDIS_DB = 69
SPAN_DAYS = 90  # with the ages below: about 60 archived days, 20 cold, 9 warm and one hot


@pytest.fixture
def aged(settings):
    """Tier ages short enough for a quick test: warm 10 days, cold 30 days."""
    return settings.model_copy(update={"warm_age": 10 * DAY_MS, "cold_age": 30 * DAY_MS})


def open_world(pg_url, settings, name: str, db: int):
    """Real tiers on a fresh postgres-mode database and Redis database `db` (a generator: yields
    the resources by name, closes them after)."""
    from tiers.archive import ArchiveTier
    from tiers.catalog_pg import PgCatalog
    from tiers.cold import ColdTier
    from tiers.cold_keys import PgKeyDictionary
    from tiers.hot import RedisHotTier
    from tiers.warm import WarmTier

    pg = migrated_database(pg_url, "postgres", f"_{name}")
    warm = WarmTier(pg, mode="postgres")
    run = uuid.uuid4().hex[:8]
    root = settings.cold_dir / f"_test_{name}_{run}"
    cold = ColdTier(settings, keys=PgKeyDictionary(pool=warm.pool), root=root, engine="duckdb")
    archive = ArchiveTier(settings, pool=warm.pool, keys=cold.keys, engine="duckdb", prefix=f"_test/{name}-{run}")
    url = redis_db_url(settings, name, db, empty=False)
    r = redis_lib.Redis.from_url(url)
    r.flushdb()
    hot = RedisHotTier.from_url(url, settings.hot_age, settings.grace_period, settings.dedup_window)
    catalog = PgCatalog(warm.pool)
    catalog.initialise(now_ms(), settings.hot_age)
    yield dict(cold=cold, warm=warm, hot=hot, catalog=catalog, redis=r, archive=archive)
    hot.close()
    archive.close()
    cold.close()
    warm.close()
    r.flushdb()
    r.close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def world(pg_url, settings):
    yield from open_world(pg_url, settings, "history_import", REDIS_DB)


def history(seed: int, n: int, *, ids: str | None = None) -> tuple[pa.Table, TimeRange]:
    """n events over the last two years (some in the hot range), ids on every third when `ids`."""
    now = now_ms()
    window = TimeRange(G1M.floor(now - SPAN_DAYS * DAY_MS), G1M.floor(now - 60_000))
    events = random_events(random.Random(seed), window, n)
    if ids:
        events = events.set_column(4, "id", pa.array([f"{ids}{i}" if i % 3 == 0 else None for i in range(n)],
                                                     pa.string()))
    return events, window


def answer(world, tenant: str, rng: TimeRange) -> dict:
    """What the router does: one catalog snapshot, each segment from its owner at its cover, merged."""
    snap = world["catalog"].snapshot()
    parts = []
    for name, part in snap.segments(rng):
        owner = world[name]
        parts.append(owner.aggregate(tenant, STREAM, cover(part, owner.granularities), "key"))
    return as_aggs(merge_partials(parts, "key"), "key")


def check_exact(world, tenant: str, events: pa.Table, window: TimeRange, n: int = 12) -> None:
    rnd = random.Random(3)
    for rng in [window] + [random_range(rnd, window) for _ in range(n)]:
        assert answer(world, tenant, rng) == oracle_by_key(events, rng), rng


def write(tmp_path, name: str, events: pa.Table):
    path = tmp_path / name
    pq.write_table(events, path)
    return path


def test_a_fresh_instance_takes_its_history_in_every_tier_by_age(world, aged, tmp_path):
    settings = aged
    tenant = f"t{uuid.uuid4().hex[:8]}"
    events, window = history(1, 4000, ids="a")
    path = write(tmp_path, "history.parquet", events)
    version = world["catalog"].snapshot().version
    stats = run_import(settings, [path], progress=False, tenant=tenant, resources=world)
    snap = world["catalog"].snapshot()
    now = now_ms()
    assert stats["fresh"] and snap.version == version + 1  # one catalog move for the whole import
    assert snap.b_archive == PL.floor_col([now - settings.cold_age], DAY_MS)[0].as_py()
    assert snap.b_cold == PL.floor_col([now - settings.warm_age], DAY_MS)[0].as_py()
    counts = {t: sum(1 for ts in events["ts"].to_pylist() if snap.owner(ts) == t)
              for t in ("archive", "cold", "warm", "hot")}
    assert all(counts.values()), counts
    assert (stats["archive"], stats["cold"], stats["warm"], stats["ingested"]) == \
        (counts["archive"], counts["cold"], counts["warm"], counts["hot"])
    # the archive's days, weeks and months are registered; the cold tier holds no archived day
    assert world["archive"].registry.starts(tenant, STREAM, "day") or world["archive"].registry.packs(tenant, STREAM)
    assert world["archive"].registry.starts(tenant, STREAM, "month")
    assert min(world["cold"].layout.days(tenant, STREAM)) >= snap.b_archive
    check_exact(world, tenant, events, window)
    again = run_import(settings, [path], progress=False, tenant=tenant, resources=world)
    assert again.get("already_imported") and world["catalog"].snapshot().version == snap.version
    check_exact(world, tenant, events, window, n=4)


@pytest.mark.parametrize("where", ["cold", "commit"])
def test_a_crash_before_the_commit_changes_nothing_and_a_rerun_is_exact(world, aged, tmp_path, monkeypatch, where):
    settings = aged
    tenant = f"t{uuid.uuid4().hex[:8]}"
    events, window = history(2, 3000)
    path = write(tmp_path, "history.parquet", events)
    calls = {"n": 0}
    real_write_day = PL.write_day

    def crashing_write_day(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 15:
            raise RuntimeError("crash")
        return real_write_day(*a, **kw)

    real_publish = DB.publish

    def crashing_publish(*a, **kw):  # a fresh import's days (tiers.day_batch; in a forked worker too)
        calls["n"] += 1
        if calls["n"] == 15:
            raise RuntimeError("crash")
        return real_publish(*a, **kw)

    def crashing_commit(*a, **kw):
        raise RuntimeError("crash")

    if where == "cold":
        monkeypatch.setattr(PL, "write_day", crashing_write_day)
        monkeypatch.setattr(DB, "publish", crashing_publish)
    else:
        monkeypatch.setattr(H, "commit", crashing_commit)
    with pytest.raises(RuntimeError, match="crash"):
        run_import(settings, [path], progress=False, tenant=tenant, resources=world)
    monkeypatch.undo()
    snap = world["catalog"].snapshot()
    assert (snap.b_archive, snap.b_cold) == (MIN_MS, MIN_MS)
    assert world["archive"].registry.starts(tenant, STREAM, "day") == []
    stats = run_import(settings, [path], progress=False, tenant=tenant, resources=world)
    assert stats["fresh"]
    check_exact(world, tenant, events, window)


def test_warm_part_is_copied_while_the_cold_days_are_written_and_shown_only_at_the_commit(world, aged, tmp_path,
                                                                                        monkeypatch):
    """Warm's COPY and rollups run in the import's one transaction while the cold days are written
    (PostgreSQL's work overlaps ours), and nothing of it is visible to another connection before the
    commit: the cold part waits here until warm's rows are in, then counts them from outside."""
    import threading

    settings = aged
    tenant = f"t{uuid.uuid4().hex[:8]}"
    events, window = history(6, 3000)
    warm = world["warm"]
    copied = threading.Event()
    real_insert, real_write_cold = warm.insert, H.write_cold
    seen: dict = {}

    def insert(*a, **kw):
        n = real_insert(*a, **kw)
        copied.set()
        return n

    def write_cold(*a, **kw):
        seen["copied_meanwhile"] = copied.wait(timeout=20)
        sid = warm.keys.stream_id(tenant, STREAM)
        with warm.pool.connection() as conn:  # another connection: the import has not committed
            seen["visible"] = conn.execute("SELECT count(*) FROM events WHERE stream_id = %s", (sid,)).fetchone()[0]
        return real_write_cold(*a, **kw)

    monkeypatch.setattr(warm, "insert", insert)
    monkeypatch.setattr(H, "write_cold", write_cold)
    stats = run_import(settings, [write(tmp_path, "overlap.parquet", events)], progress=False, tenant=tenant,
                       resources=world)
    assert stats["warm"] and stats["cold"]
    assert seen == {"copied_meanwhile": True, "visible": 0}
    check_exact(world, tenant, events, window)


def test_history_below_the_archive_boundary_of_a_running_instance_is_merged_into_the_archive(world, aged, tmp_path):
    """A second import into an instance whose first import archived days merges its older events
    into the archived days (tierstore.history_archive; ids already held skipped): exact after it."""
    settings = aged
    tenant = f"t{uuid.uuid4().hex[:8]}"
    first, window = history(4, 2000, ids="a")
    run_import(settings, [write(tmp_path, "first.parquet", first)], progress=False, tenant=tenant, resources=world)
    snap = world["catalog"].snapshot()
    more, _ = history(5, 1500, ids="b")
    repeated = first.filter(pa.compute.is_valid(first["id"]))
    stats = run_import(settings, [write(tmp_path, "more.parquet", pa.concat_tables([more, repeated]))],
                       progress=False, tenant=tenant, resources=world)
    assert stats["archive"] == more.filter(pa.compute.less(more["ts"], snap.b_archive)).num_rows
    assert world["catalog"].snapshot().version == snap.version  # nothing moved
    check_exact(world, tenant, pa.concat_tables([first, more]), window)


def test_cold_days_of_a_running_instance_take_more_history_exactly_after_a_crash(world, aged, tmp_path, monkeypatch):
    """Events between b_archive and b_cold merge into the owned cold days (ids already stored
    skipped); a crash right after a day's rename, before its ledger row, is rerun without counting
    that day's events twice (most of them carry no id)."""
    settings = aged
    tenant = f"t{uuid.uuid4().hex[:8]}"
    first, window = history(6, 2000, ids="a")
    run_import(settings, [write(tmp_path, "first.parquet", first)], progress=False, tenant=tenant, resources=world)
    snap = world["catalog"].snapshot()
    ts = pa.compute
    more, _ = history(7, 1500, ids="b")
    more = more.filter(ts.and_(ts.greater_equal(more["ts"], snap.b_archive), ts.less(more["ts"], snap.b_cold)))
    repeated = first.filter(ts.and_(ts.and_(ts.greater_equal(first["ts"], snap.b_archive),
                                            ts.less(first["ts"], snap.b_cold)), ts.is_valid(first["id"])))
    path = write(tmp_path, "more.parquet", pa.concat_tables([more, repeated]))
    real_record, calls = H.record, {"n": 0}

    def crashing_record(conn, digest, part, stats=None):
        if part.startswith("cold/") and not part.endswith("/pending"):
            calls["n"] += 1
            if calls["n"] == 3:  # the third day is renamed into place, its ledger row never written
                raise RuntimeError("crash")
        return real_record(conn, digest, part, stats)

    monkeypatch.setattr(H, "record", crashing_record)
    with pytest.raises(RuntimeError, match="crash"):
        run_import(settings, [path], progress=False, tenant=tenant, resources=world)
    monkeypatch.undo()
    stats = run_import(settings, [path], progress=False, tenant=tenant, resources=world)
    assert not stats["fresh"]
    assert world["catalog"].snapshot().version == snap.version  # nothing moved
    both = pa.concat_tables([first, more])
    check_exact(world, tenant, both, window)
    cold_range = TimeRange(snap.b_archive, snap.b_cold)
    assert answer(world, tenant, cold_range) == oracle_by_key(both, cold_range)
