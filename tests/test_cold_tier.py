"""The cold tier on both engines (DuckDB embedded, Trino over the same files): the Tier contract,
its exact top-K (threshold algorithm) against the full merge, and the file layout's atomicity."""
from __future__ import annotations

import random
import shutil
import uuid

import pyarrow as pa
import pytest
from psycopg_pool import ConnectionPool

from rollups.cover import Piece, cover
from rollups.partials import merge_partials
from rollups.timeutil import DAY_MS, G1D, G1H, G1M, G1MO, G1W, RAW, TimeRange, parse_time
from rollups.topk import top_k as exact_top_k
from tests.outage import Outage
from tests.tier_contract import STREAM, TierContract, random_events, random_range
from tests.warm_support import migrated_database
from tiers import parquet_layout as PL
from tiers.base import EVENT_SCHEMA
from tiers.cold import ColdTier
from tiers.cold_keys import PgKeyDictionary

ENGINES = [pytest.param("duckdb", id="duckdb"), pytest.param("trino", id="trino", marks=pytest.mark.trino)]
# a past window crossing a month end, with whole weeks and days inside and ragged minute edges
WINDOW = TimeRange(parse_time("2025-01-19T22:07:00Z"), parse_time("2025-03-04T05:13:00Z"))


@pytest.fixture(scope="module")
def cold_db(pg_url):
    return migrated_database(pg_url, "postgres", "_cold")


@pytest.fixture(scope="module")
def keys(cold_db):
    d = PgKeyDictionary(cold_db)
    yield d
    d.close()


@pytest.fixture(scope="module")
def cold_root(settings):
    root = settings.cold_dir / f"_test_{uuid.uuid4().hex[:8]}"
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", params=ENGINES)
def cold(request, settings, keys, cold_root):
    tier = ColdTier(settings, keys=keys, root=cold_root / request.param, engine=request.param,
                    trino_schema=f"test_{cold_root.name[6:]}_{request.param}")
    yield tier
    tier.close()


class TestColdContract(TierContract):
    #: cold reads only its local files; its service is the key dictionary, needed to write
    reads_need_the_service = False

    @pytest.fixture
    def tier(self, cold):
        return cold

    @pytest.fixture
    def down(self, settings, cold_db, cold_root):
        outage = Outage(cold_db)
        pool = ConnectionPool(outage.url, min_size=1, max_size=2, timeout=1.0, open=True, name="test-cold-down")
        tier = ColdTier(settings, keys=PgKeyDictionary(pool=pool), root=cold_root / "down", engine="duckdb")
        yield tier, outage
        outage.cut()
        tier.close()
        pool.close(timeout=1.0)

    @pytest.fixture
    def window(self):
        return WINDOW


def _events(rnd: random.Random, n: int, keys: list[str], values) -> pa.Table:
    weights = [1 / (i + 1) ** 1.2 for i in range(len(keys))]
    return pa.table({"stream": [STREAM] * n, "key": rnd.choices(keys, weights, k=n),
                     "ts": [rnd.randrange(WINDOW.start, WINDOW.end) for _ in range(n)],
                     "value": [values(rnd) for _ in range(n)], "id": [None] * n}, schema=EVENT_SCHEMA)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_top_k_equals_the_full_merge(cold, seed):
    """TPUT over value-sorted segments gives exactly the generic merge's ranking (ties by key)."""
    rnd = random.Random(seed)
    tenant = f"t{uuid.uuid4().hex[:10]}"
    keys = [f"k{i}" for i in range(rnd.choice([5, 40, 400]))]
    negative = seed == 3
    values = (lambda r: r.randint(-6, 20) / 2) if negative else (lambda r: r.randint(0, 6) / 4)
    cold.write(tenant, _events(rnd, 3000, keys, values))
    methods = set()
    for _ in range(6):
        pieces = cover(random_range(rnd, WINDOW), cold.granularities)
        merged = merge_partials([cold.aggregate(tenant, STREAM, pieces, "key")], "key")
        for by in ("count", "sum"):
            for k in (1, 3, 10, 50):
                stats = {}
                got = cold.top_k(tenant, STREAM, pieces, k, by, stats=stats)
                assert got == exact_top_k(merged, k, by), (pieces, by, k)
                methods.add((by, stats["method"]))
    if negative:
        assert ("sum", "merge") in methods
    assert ("count", "tput") in methods


def test_top_k_breaks_ties_by_key(cold):
    """Every key has the same total: the answer is the k smallest keys (by UTF-8 order)."""
    tenant = f"t{uuid.uuid4().hex[:10]}"
    keys = ["b", "a", "é", "B", "aa", "日本", "z"]
    day = G1D.ceil(WINDOW.start) + 3 * DAY_MS
    rows = [(k, day + d * DAY_MS + 3600_000) for k in keys for d in range(40)]
    cold.write(tenant, pa.table({"stream": [STREAM] * len(rows), "key": [k for k, _ in rows],
                                 "ts": [t for _, t in rows], "value": [2.0] * len(rows),
                                 "id": [None] * len(rows)}, schema=EVENT_SCHEMA))
    pieces = cover(TimeRange(day, day + 40 * DAY_MS), cold.granularities)
    got = cold.top_k(tenant, STREAM, pieces, 4, "sum")
    assert [r.key for r in got] == sorted(keys)[:4]
    assert all(r.value == 80.0 for r in got)


def test_month_and_week_rollups_follow_their_days(cold):
    """Rewriting one day (a merge) rebuilds the week and month that hold it."""
    tenant = f"t{uuid.uuid4().hex[:10]}"
    rnd = random.Random(11)
    first = _events(rnd, 500, ["a", "b", "c"], lambda r: 1.0)
    cold.write(tenant, first)
    late = pa.table({"stream": [STREAM], "key": ["zz"], "ts": [parse_time("2025-02-10T10:00:00Z")],
                     "value": [5.0], "id": [None]}, schema=EVENT_SCHEMA)
    cold.write(tenant, late)
    month = TimeRange(parse_time("2025-02-01T00:00:00Z"), parse_time("2025-03-01T00:00:00Z"))
    by_month = merge_partials([cold.aggregate(tenant, STREAM, [Piece(G1MO, month)], "key")], "key")
    by_day = merge_partials([cold.aggregate(tenant, STREAM, [Piece(G1D, month)], "key")], "key")
    assert by_month.sort_by("key").to_pylist() == by_day.sort_by("key").to_pylist()
    assert "zz" in by_month["key"].to_pylist()


def test_write_skips_events_whose_id_is_stored(cold):
    tenant = f"t{uuid.uuid4().hex[:10]}"
    ts = parse_time("2025-02-03T04:05:06.789Z")
    batch = pa.table({"stream": [STREAM] * 3, "key": ["a", "a", "b"], "ts": [ts, ts + 1, ts + 2],
                      "value": [1.0, 2.0, 3.0], "id": ["x1", "x2", None]}, schema=EVENT_SCHEMA)
    assert cold.write(tenant, batch) == 3
    assert cold.write(tenant, batch) == 1  # only the event without an id is new
    rows = [r for b in cold.read_raw(tenant, STREAM, TimeRange(ts, ts + 10)) for r in b.to_pylist()]
    assert [(r["key"], r["ts"], r["value"], r["id"]) for r in rows] == [
        ("a", ts, 1.0, "x1"), ("a", ts + 1, 2.0, "x2"), ("b", ts + 2, 3.0, None), ("b", ts + 2, 3.0, None)]


def test_a_failed_verification_leaves_the_old_files(cold, monkeypatch):
    """A file that does not verify is never renamed into place: readers keep the old partition."""
    tenant = f"t{uuid.uuid4().hex[:10]}"
    day = parse_time("2025-02-05T00:00:00Z")
    one = pa.table({"stream": [STREAM], "key": ["a"], "ts": [day + 5], "value": [1.0], "id": [None]},
                   schema=EVENT_SCHEMA)
    cold.write(tenant, one)
    before = {p: p.read_bytes() for p in cold.root.rglob("*.parquet") if f"tenant={tenant}" in str(p)}
    monkeypatch.setattr(PL, "check_against", lambda path, got, expect, measures: (_ for _ in ()).throw(
        PL.VerifyFailed("forced")))
    with pytest.raises(PL.VerifyFailed):
        cold.write(tenant, one)
    after = {p: p.read_bytes() for p in cold.root.rglob("*.parquet") if f"tenant={tenant}" in str(p)}
    assert after == before
    assert not [p for p in cold.root.rglob(".tmp-*") if f"tenant={tenant}" in str(p)]


def test_raw_edges_and_hours_read_exactly(cold):
    """Sub-hour edges are read raw: a range of a few minutes inside one hour is exact."""
    tenant = f"t{uuid.uuid4().hex[:10]}"
    base = parse_time("2025-02-07T10:00:00Z")
    ts = [base + m * 60_000 + 123 for m in range(60)]
    cold.write(tenant, pa.table({"stream": [STREAM] * 60, "key": ["a"] * 60, "ts": ts, "value": [1.0] * 60,
                                 "id": [None] * 60}, schema=EVENT_SCHEMA))
    rng = TimeRange(base + 7 * G1M.ms, base + 19 * G1M.ms)
    pieces = cover(rng, cold.granularities)
    assert [p.granularity for p in pieces] == [RAW]
    got = merge_partials([cold.aggregate(tenant, STREAM, pieces, "key")], "key").to_pylist()
    assert got == [{"key": "a", "count": 12, "sum": 12.0, "min": 1.0, "max": 1.0}]
    assert set(cold.granularities) == {RAW, G1H, G1D, G1W, G1MO}


@pytest.mark.trino
def test_engines_read_the_same_files(settings, keys, cold_root):
    """DuckDB and Trino give identical partials over one root (what the engine setting switches)."""
    root = cold_root / "shared"
    duck = ColdTier(settings, keys=keys, root=root, engine="duckdb")
    tenant = f"t{uuid.uuid4().hex[:10]}"
    rnd = random.Random(5)
    duck.write(tenant, random_events(rnd, WINDOW, 800))
    trino = ColdTier(settings, keys=keys, root=root, engine="trino", trino_schema=f"test_{cold_root.name[6:]}_shared")
    try:
        trino.sync()
        for _ in range(3):
            pieces = cover(random_range(rnd, WINDOW), duck.granularities)
            for group in ("key", "bucket"):
                a = merge_partials([duck.aggregate(tenant, STREAM, pieces, group)], group).sort_by(group)
                b = merge_partials([trino.aggregate(tenant, STREAM, pieces, group)], group).sort_by(group)
                assert a.to_pylist() == b.to_pylist()
    finally:
        duck.close()
        trino.close()


def test_data_version_changes_when_files_change(cold):
    """The router caches cold pieces under the tier's data version: every rewrite changes it."""
    tenant = f"t{uuid.uuid4().hex[:10]}"
    v0 = cold.data_version(tenant, STREAM)
    one = pa.table({"stream": [STREAM], "key": ["a"], "ts": [parse_time("2025-02-05T01:00:00Z")], "value": [1.0],
                    "id": [None]}, schema=EVENT_SCHEMA)
    cold.write(tenant, one)
    v1 = cold.data_version(tenant, STREAM)
    assert v1 != v0 and cold.data_version(tenant, STREAM) == v1
    cold.delete_range(tenant, STREAM, TimeRange(0, parse_time("2026-01-01T00:00:00Z")))
    assert cold.data_version(tenant, STREAM) != v1
