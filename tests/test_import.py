"""`tierstore import`: NDJSON, CSV and Parquet; old events become replacement cold partitions,
newer ones go through ingest; bad files write nothing; events with ids are imported once."""
from __future__ import annotations

import json
import random
import re
import shutil
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis as redis_lib

from rollups.cover import cover
from rollups.timeutil import G1M, MIN_MS, TimeRange, format_time, now_ms, parse_time
from tests.tier_contract import STREAM, as_aggs, oracle_by_key, random_events
from tests.api_support import redis_db_url
from tests.warm_support import migrated_database
from tierstore.importer import ImportRefused, run_import
from tiers.eventlog import STREAM_KEY

B_COLD = parse_time("2025-03-01T00:00:00Z")
OLD = TimeRange(parse_time("2025-01-20T05:03:00Z"), parse_time("2025-02-27T11:00:00Z"))
REDIS_DB = 12


@pytest.fixture
def world(pg_url, settings, tmp_path):
    from tiers.catalog_pg import PgCatalog
    from tiers.cold import ColdTier
    from tiers.cold_keys import PgKeyDictionary
    from tiers.hot import RedisHotTier
    from tiers.warm import WarmTier

    db = migrated_database(pg_url, "postgres", "_import")
    warm = WarmTier(db, mode="postgres")
    root = settings.cold_dir / f"_test_import_{uuid.uuid4().hex[:8]}"
    cold = ColdTier(settings, keys=PgKeyDictionary(pool=warm.pool), root=root, engine="duckdb")
    url = redis_db_url(settings, "import", REDIS_DB, empty=False)
    r = redis_lib.Redis.from_url(url)
    r.flushdb()
    hot = RedisHotTier.from_url(url, settings.hot_age, settings.grace_period, settings.dedup_window)
    catalog = PgCatalog(warm.pool)
    catalog.initialise(now_ms(), settings.hot_age)
    with warm.pool.connection() as conn:
        catalog.advance(conn, b_cold=B_COLD)
    clients = dict(cold=cold, warm=warm, hot=hot, catalog=catalog, redis=r)
    yield clients
    hot.close()
    cold.close()
    warm.close()
    r.flushdb()
    r.close()
    shutil.rmtree(root, ignore_errors=True)


def cold_answer(cold, tenant: str, rng: TimeRange) -> dict:
    return as_aggs(cold.aggregate(tenant, STREAM, cover(rng, cold.granularities), "key"), "key")


def write_file(path, events: pa.Table, fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(events, path)
    elif fmt == "csv":
        rows = events.to_pylist()
        lines = ["stream,key,ts,value,id"] + [
            f'{r["stream"]},"{r["key"]}",{format_time(r["ts"])},{r["value"]},{r["id"] or ""}' for r in rows]
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n"
                                for r in events.to_pylist()))


@pytest.mark.parametrize("fmt", ["ndjson", "csv", "parquet"])
def test_import_rewrites_old_partitions_and_ingests_new_events(world, settings, tmp_path, fmt):
    cold, r = world["cold"], world["redis"]
    tenant = f"t{uuid.uuid4().hex[:8]}"
    rnd = random.Random(4)
    stored = random_events(rnd, OLD, 300, keys=["a", "b", "c,d", "é"])
    cold.write(tenant, stored)
    old = random_events(rnd, OLD, 400, keys=["a", "b", "c,d", "é"])
    recent = random_events(rnd, TimeRange(now_ms() - 3_600_000, now_ms() - 60_000), 50)
    path = tmp_path / f"events.{fmt}"
    write_file(path, pa.concat_tables([old, recent]), fmt)
    log_before = r.xlen(STREAM_KEY)
    stats = run_import(settings, [path], progress=False, tenant=tenant, resources=world)
    assert stats["cold"] == 400 and stats["ingested"] == 50
    assert r.xlen(STREAM_KEY) == log_before + 1
    whole = TimeRange(G1M.ceil(OLD.start), G1M.floor(OLD.end))
    both = pa.concat_tables([stored, old])
    assert cold_answer(cold, tenant, whole) == oracle_by_key(both, whole)
    rnd2 = random.Random(8)
    for _ in range(5):
        a, b = sorted(rnd2.sample(range(whole.start, whole.end, G1M.ms), 2))
        assert cold_answer(cold, tenant, TimeRange(a, b)) == oracle_by_key(both, TimeRange(a, b))


def test_events_with_ids_are_imported_once(world, settings, tmp_path):
    cold = world["cold"]
    tenant = f"t{uuid.uuid4().hex[:8]}"
    events = random_events(random.Random(6), OLD, 200)
    events = events.set_column(4, "id", pa.array([f"e{i}" for i in range(200)]))
    path = tmp_path / "with_ids.parquet"
    pq.write_table(events, path)
    assert run_import(settings, [path], progress=False, tenant=tenant, resources=world)["cold"] == 200
    assert run_import(settings, [path], progress=False, tenant=tenant, resources=world)["cold"] == 0
    whole = TimeRange(G1M.ceil(OLD.start), G1M.floor(OLD.end))
    assert cold_answer(cold, tenant, whole) == oracle_by_key(events, whole)


def test_a_bad_row_imports_nothing(world, settings, tmp_path):
    tenant = f"t{uuid.uuid4().hex[:8]}"
    good = {"stream": STREAM, "key": "a", "ts": "2025-02-01T00:00:00Z", "value": 1}
    path = tmp_path / "bad.ndjson"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "stream": "Bad Stream"}) + "\n")
    with pytest.raises(ImportRefused, match="row 2"):
        run_import(settings, [path], progress=False, tenant=tenant, resources=world)
    assert world["cold"].streams(tenant) == []


def test_ingest_still_refuses_the_sealed_range(world):
    """The import path is the only way into history: ingest refuses events below the seal."""
    from rollups.errors import RangeSealed
    from tiers.eventlog import SEAL_KEY, raise_mark

    raise_mark(world["redis"], SEAL_KEY, B_COLD)
    old = random_events(random.Random(1), OLD, 3)
    with pytest.raises(RangeSealed):
        world["hot"].ingest("default", old, now_ms=now_ms())
    assert MIN_MS < B_COLD


@pytest.mark.parametrize("row, problem", [
    ({"key": "a\u0000b"}, "key: must not contain U+0000"),
    ({"id": "\u0000"}, "id: must not contain U+0000"),
    ({"id": "x" * 257}, "id: must be 1..256 UTF-8 bytes"),
    ({"value": 1e308}, "value: must be within"),
    ({"value": -(10 ** 15) - 1}, "value: must be within"),
])
def test_import_refuses_what_the_ingest_api_refuses(world, settings, tmp_path, row, problem):
    tenant = f"t{uuid.uuid4().hex[:8]}"
    good = {"stream": STREAM, "key": "a", "ts": "2025-02-01T00:00:00Z", "value": 1}
    path = tmp_path / "bad.ndjson"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, **row}) + "\n")
    with pytest.raises(ImportRefused, match=re.escape(f"row 2: {problem}")):
        run_import(settings, [path], progress=False, tenant=tenant, resources=world)
    assert world["cold"].streams(tenant) == []


def test_import_refuses_a_lone_surrogate(world, settings, tmp_path):
    path = tmp_path / "surrogate.ndjson"
    path.write_bytes(b'{"stream": "s", "key": "\\ud800", "ts": 0}\n')
    with pytest.raises(ImportRefused, match="surrogate"):
        run_import(settings, [path], progress=False, tenant="t-surrogate", resources=world)
