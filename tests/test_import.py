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
from rollups.timeutil import DAY_MS, G1M, MIN_MS, TimeRange, format_time, now_ms, parse_time
from tests.tier_contract import STREAM, as_aggs, oracle_by_key, random_events
from tests.api_support import redis_db_url
from tests.warm_support import migrated_database
from tierstore.importer import ImportRefused, run_import
from tiers.eventlog import total_length

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
    log_before = total_length(r)
    stats = run_import(settings, [path], progress=False, tenant=tenant, resources=world)
    assert stats["cold"] == 400 and stats["ingested"] == 50
    assert total_length(r) == log_before + 1
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


# ---- the time rule: one for every format ---------------------------------------------------------

DAY = "2025-02-01"


def _ts_file(tmp_path, fmt: str, values: list) -> object:
    """A file of one stream, key "a", value 1, with these ts values (text, or ints as integers)."""
    path = tmp_path / f"times.{fmt}"
    if fmt == "ndjson":
        path.write_text("".join(json.dumps({"stream": STREAM, "key": "a", "ts": v, "value": 1}) + "\n" for v in values))
    elif fmt == "csv":
        path.write_text("stream,key,ts,value\n" + "".join(f"{STREAM},a,{v},1\n" for v in values))
    else:
        pq.write_table(pa.table({"stream": [STREAM] * len(values), "key": ["a"] * len(values),
                                 "ts": [str(v) for v in values], "value": [1.0] * len(values)}), path)
    return path


def _cold_times(cold, tenant: str) -> list[int]:
    batches = list(cold.read_raw(tenant, STREAM, TimeRange(MIN_MS, B_COLD)))
    return sorted(t for b in batches for t in b.column("ts").to_pylist())


FORMATS = ["ndjson", "csv", "parquet"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bad", [f"{DAY}T10:00:00", f"{DAY} 10:00:00", DAY])
def test_a_time_without_a_zone_is_refused_naming_row_column_and_cause(world, settings, tmp_path, fmt, bad):
    tenant = f"t{uuid.uuid4().hex[:8]}"
    path = _ts_file(tmp_path, fmt, [f"{DAY}T09:00:00Z", bad])
    with pytest.raises(ImportRefused, match=re.escape("row 2: column ts: ") + ".*"
                       + re.escape("no time zone: add Z or an offset, or pass --assume-utc")):
        run_import(settings, [path], progress=False, tenant=tenant, resources=world)
    assert world["cold"].streams(tenant) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_with_assume_utc_naive_and_date_only_times_are_utc_in_every_format(world, settings, tmp_path, fmt):
    tenant = f"t{uuid.uuid4().hex[:8]}"
    epoch = parse_time(f"{DAY}T12:34:56.789Z")
    values = [f"{DAY}T10:00:00", f"{DAY} 11:30:00.250", DAY, f"{DAY}T09:00:00+02:00", epoch]
    path = _ts_file(tmp_path, fmt, values)
    stats = run_import(settings, [path], progress=False, tenant=tenant, resources=world, assume_utc=True)
    assert stats["cold"] == 5
    assert _cold_times(world["cold"], tenant) == sorted([
        parse_time(f"{DAY}T10:00:00Z"), parse_time(f"{DAY}T11:30:00.250Z"), parse_time(f"{DAY}T00:00:00Z"),
        parse_time(f"{DAY}T07:00:00Z"), epoch])


@pytest.mark.parametrize("fmt", FORMATS)
def test_epoch_ms_and_zoned_times_need_no_flag(world, settings, tmp_path, fmt):
    tenant = f"t{uuid.uuid4().hex[:8]}"
    epoch = parse_time(f"{DAY}T12:34:56.789Z")
    path = _ts_file(tmp_path, fmt, [epoch, f"{DAY}T10:00:00Z", f"{DAY}T10:00:00-01:00"])
    assert run_import(settings, [path], progress=False, tenant=tenant, resources=world)["cold"] == 3
    assert _cold_times(world["cold"], tenant) == [parse_time(f"{DAY}T10:00:00Z"), parse_time(f"{DAY}T11:00:00Z"),
                                                  epoch]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_time_that_is_not_a_time_names_the_cause(world, settings, tmp_path, fmt):
    path = _ts_file(tmp_path, fmt, [f"{DAY}T09:00:00Z", "yesterday"])
    with pytest.raises(ImportRefused, match=re.escape("row 2: column ts: 'yesterday' is not RFC 3339 or epoch")):
        run_import(settings, [path], progress=False, tenant="t-bad-time", resources=world, assume_utc=True)


@pytest.mark.parametrize("ts_type", [pa.timestamp("us"), pa.date32()])
def test_parquet_timestamps_without_a_zone_and_dates_follow_the_same_rule(world, settings, tmp_path, ts_type):
    import datetime as dt

    tenant = f"t{uuid.uuid4().hex[:8]}"
    value = dt.datetime(2025, 2, 1, 10, 0) if pa.types.is_timestamp(ts_type) else dt.date(2025, 2, 1)
    path = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"stream": [STREAM], "key": ["a"], "ts": pa.array([value], ts_type)}), path)
    with pytest.raises(ImportRefused, match=re.escape("row 1: column ts: ") + ".*" + re.escape("pass --assume-utc")):
        run_import(settings, [path], progress=False, tenant=tenant, resources=world)
    assert run_import(settings, [path], progress=False, tenant=tenant, resources=world, assume_utc=True)["cold"] == 1
    want = f"{DAY}T10:00:00Z" if pa.types.is_timestamp(ts_type) else f"{DAY}T00:00:00Z"
    assert _cold_times(world["cold"], tenant) == [parse_time(want)]


def test_parquet_timestamps_with_a_zone_need_no_flag(world, settings, tmp_path):
    import datetime as dt

    tenant = f"t{uuid.uuid4().hex[:8]}"
    path = tmp_path / "zoned.parquet"
    ts = pa.array([dt.datetime(2025, 2, 1, 10, 0, tzinfo=dt.timezone.utc)], pa.timestamp("ms", "UTC"))
    pq.write_table(pa.table({"stream": [STREAM], "key": ["a"], "ts": ts}), path)
    assert run_import(settings, [path], progress=False, tenant=tenant, resources=world)["cold"] == 1
    assert _cold_times(world["cold"], tenant) == [parse_time(f"{DAY}T10:00:00Z")]


@pytest.mark.parametrize("name, content, cause", [
    ("broken.parquet", b"not a parquet file at all", "cannot read parquet: ArrowInvalid"),
    ("ragged.csv", b"stream,key,ts\ns,a,0,extra\n", "cannot read csv: ArrowInvalid"),
    ("missing.csv", None, "cannot read csv: FileNotFoundError"),
])
def test_reader_errors_name_the_file_and_their_cause(world, settings, tmp_path, name, content, cause):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImportRefused, match=re.escape(f"{path}: {cause}")):
        run_import(settings, [path], progress=False, tenant="t-reader", resources=world)


def test_help_lists_the_columns_formats_and_time_rule():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "tierstore.cli", "import", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for word in ("stream", "key", "ts", "value", "id", "tenant", ".ndjson", ".csv", ".parquet", "--assume-utc",
                 "epoch milliseconds", "no time zone: add Z or an offset, or pass --assume-utc"):
        assert word in out, word


def test_events_older_than_the_archive_boundary_are_refused_saying_what_to_do(world, settings, tmp_path):
    b_archive = parse_time("2025-02-10T00:00:00Z")
    with world["warm"].pool.connection() as conn:
        world["catalog"].advance(conn, b_archive=b_archive)
    tenants = [f"t{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}"]
    path = tmp_path / "two_tenants.ndjson"
    rows = [{"tenant": tenants[0], "stream": STREAM, "key": "a", "ts": "2025-02-20T00:00:00Z"},  # cold, allowed
            {"tenant": tenants[1], "stream": STREAM, "key": "a", "ts": "2025-02-01T00:00:00Z"}]  # archived
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ImportRefused) as err:
        run_import(settings, [path], progress=False, resources=world)
    msg = err.value.message
    for part in ("1 event(s)", "2025-02-01T00:00:00", "archive boundary 2025-02-10T00:00:00", "nothing was written",
                 "no archive tier configured", "GET /v1/tiers"):
        assert part in msg, (part, msg)
    assert [world["cold"].streams(t) for t in tenants] == [[], []]  # all or nothing, the first tenant too


# ---- the vectorised path: the first bad row of a large file, warm written directly -----------------

@pytest.mark.parametrize("column, bad, problem", [
    ("value", float("nan"), "value: must be a finite number"),
    ("key", "", "key: must be 1..256 UTF-8 bytes"),
    ("id", "y" * 300, "id: must be 1..256 UTF-8 bytes"),
    ("stream", "Bad", "stream: must match"),
])
def test_the_first_bad_row_of_many_is_named(world, settings, tmp_path, column, bad, problem):
    n = 20_000
    cols = {"stream": [STREAM] * n, "key": [f"k{i % 97}" for i in range(n)],
            "ts": [B_COLD - 1_000 * (i + 1) for i in range(n)], "value": [1.0] * n, "id": [None] * n}
    for row in (12_345, 17_000):  # two bad rows: the first is the one named
        cols[column][row] = bad
    path = tmp_path / "many.parquet"
    pq.write_table(pa.table({k: pa.array(v, pa.float64() if k == "value" else pa.string() if k != "ts" else pa.int64())
                             for k, v in cols.items()}), path)
    tenant = f"t{uuid.uuid4().hex[:8]}"
    with pytest.raises(ImportRefused, match=re.escape(f"row 12346: {problem}")):
        run_import(settings, [path], progress=False, tenant=tenant, resources=world)
    assert world["cold"].streams(tenant) == []


def test_an_epoch_ms_column_out_of_range_names_the_first_bad_row(world, settings, tmp_path):
    path = tmp_path / "far.parquet"
    ts = [parse_time("2025-02-01T00:00:00Z")] * 10
    ts[6] = 10 ** 17
    pq.write_table(pa.table({"stream": [STREAM] * 10, "key": ["a"] * 10, "ts": pa.array(ts, pa.int64())}), path)
    with pytest.raises(ImportRefused, match=re.escape("row 7: column ts: ")):
        run_import(settings, [path], progress=False, tenant="t-far", resources=world)


def test_events_below_the_hot_boundary_go_to_warm_directly(world, settings, tmp_path):
    """Between b_cold and b_warm the import COPYs into warm (no event log entry); the warm answer is exact."""
    warm, r = world["warm"], world["redis"]
    tenant = f"t{uuid.uuid4().hex[:8]}"
    b_warm = world["catalog"].snapshot().b_warm
    rng = TimeRange(B_COLD + G1M.ms, min(B_COLD + 10 * 86_400_000, G1M.floor(b_warm)))
    events = random_events(random.Random(12), rng, 3000)
    path = tmp_path / "warm.parquet"
    pq.write_table(events, path)
    log_before = total_length(r)  # every event log (per-stream logs too)
    stats = run_import(settings, [path], progress=False, tenant=tenant, resources=world)
    assert (stats["warm"], stats["ingested"]) == (3000, 0)
    assert total_length(r) == log_before
    got = as_aggs(warm.aggregate(tenant, STREAM, cover(rng, warm.granularities), "key"), "key")
    assert got == oracle_by_key(events, rng)


def test_quiet_import_prints_only_its_stats_line(settings, tmp_path):
    """`tierstore import --quiet` on a fresh database: stdout is the stats line alone and the
    migrations it applies first say nothing (their INFO log lines came through before)."""
    import os
    import subprocess
    import sys

    from tests.api_support import isolated_settings

    fresh = isolated_settings(settings, "import", REDIS_DB)  # the module's Redis database (one name per db)
    path = tmp_path / "h.ndjson"
    ts = now_ms() - 10 * DAY_MS
    path.write_text("".join(json.dumps({"stream": STREAM, "key": f"k{i}", "ts": ts + i}) + "\n" for i in range(3)))
    env = {**os.environ, "TIERSTORE_POSTGRES_URL": fresh.postgres_url, "TIERSTORE_REDIS_URL": fresh.redis_url}
    out = subprocess.run([sys.executable, "-m", "tierstore.cli", "import", "--quiet", str(path)], capture_output=True,
                         text=True, env=env, check=True, timeout=300)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["warm"] == 3, out.stdout
    assert "yoyo" not in out.stdout + out.stderr and "Applying" not in out.stdout + out.stderr
