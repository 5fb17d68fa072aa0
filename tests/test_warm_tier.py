"""WarmTier passes the Tier contract in every warm mode present, plus what only warm does."""
from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from psycopg_pool import ConnectionPool

from rollups.errors import TierUnavailable
from rollups.timeutil import DAY_MS, G1D, GRANULARITIES, MAX_MS, MIN_MS, TimeRange
from rollups.cover import Piece, cover
from rollups.topk import rank_of, top_k
from tiers.base import EVENT_SCHEMA
from tiers.warm import WarmTier
from tests.outage import Outage
from tests.tier_contract import (STREAM, TierContract, as_aggs, new_tenant, oracle_by_key, random_events,
                                 random_range)
from tests.warm_support import migrated_database, mode_params


@pytest.fixture(scope="module", params=mode_params())
def warm(request, pg_url):
    tier = WarmTier(migrated_database(pg_url, request.param, "_tier"), mode=request.param)
    yield tier
    tier.close()


class TestWarmTierContract(TierContract):
    @pytest.fixture
    def tier(self, warm):
        return warm

    @pytest.fixture
    def down(self, warm):
        outage = Outage(warm.pool.conninfo)
        pool = ConnectionPool(outage.url, min_size=1, max_size=2, timeout=1.0, open=True, name="test-warm-down")
        tier = WarmTier(outage.url, mode=warm.mode, pool=pool)
        yield tier, outage
        outage.cut()
        pool.close(timeout=1.0)


def test_modes_resolve_as_asked(warm):
    assert warm.mode in ("postgres", "timescale")
    assert [g.name for g in warm.granularities] == ["1m", "1h", "1d", "raw"]


def test_read_raw_returns_exact_events_in_ts_order(warm):
    tenant = new_tenant()
    rnd = random.Random(11)
    window = TimeRange(1_700_000_000_000, 1_700_000_000_000 + 3 * DAY_MS)
    events = random_events(rnd, window, 500)
    events = events.set_column(4, "id", pa.array([f"id{i}" if i % 3 else None for i in range(500)], pa.string()))
    events = events.set_column(3, "value", pa.array([0.1 * i + 1e-7 for i in range(500)], pa.float64()))
    warm.write(tenant, events)
    batches = list(warm.read_raw(tenant, STREAM, window))
    assert all(b.schema == EVENT_SCHEMA for b in batches)
    got = pa.Table.from_batches(batches, EVENT_SCHEMA)
    assert got["ts"].to_pylist() == sorted(got["ts"].to_pylist())
    key = lambda r: (r["ts"], r["key"], r["value"], r["id"])  # noqa: E731
    assert sorted(got.to_pylist(), key=key) == sorted(events.to_pylist(), key=key)
    assert list(warm.read_raw(tenant, "nope", window)) == []


def test_events_at_the_ends_of_time_are_stored_and_aggregated(warm):
    tenant = new_tenant()
    events = pa.table({"stream": [STREAM] * 4, "key": ["a", "a", "b", "b"],
                       "ts": [MIN_MS, -1, 0, MAX_MS], "value": [1.0, 2.0, 3.0, 4.0], "id": [None] * 4},
                      schema=EVENT_SCHEMA)
    assert warm.write(tenant, events) == 4
    everything = TimeRange(MIN_MS, MAX_MS + 1)
    assert as_aggs(warm.aggregate(tenant, STREAM, [Piece(G1D, TimeRange(MIN_MS, -DAY_MS * 0))], "key"), "key") == \
        oracle_by_key(events, TimeRange(MIN_MS, 0))
    rows = [r for b in warm.read_raw(tenant, STREAM, everything) for r in b.to_pylist()]
    assert [r["ts"] for r in rows] == [MIN_MS, -1, 0, MAX_MS]


def test_write_leaves_no_dirty_bucket(warm):
    tenant = new_tenant()
    warm.write(tenant, random_events(random.Random(3), TimeRange(0, DAY_MS), 50))
    with warm.pool.connection() as conn:
        assert warm.dirty_before(conn, MAX_MS) == 0


def test_unreachable_postgres_is_tier_unavailable():
    with pytest.raises(TierUnavailable) as err:
        WarmTier("postgresql://nobody@127.0.0.1:9/nothing")
    assert err.value.tier == "warm"


def test_close_is_idempotent(pg_url, warm):
    tier = WarmTier(warm.pool.conninfo if hasattr(warm.pool, "conninfo") else pg_url, mode="auto")
    tier.health()
    tier.close()
    assert tier.pool.closed
    tier.close()
    assert tier.pool.closed


@pytest.mark.parametrize("by", ["count", "sum", "avg", "max"])
def test_top_k_and_rank_in_place_equal_the_merge_of_partials(warm, by):
    tenant = new_tenant()
    rnd = random.Random(21)
    window = TimeRange(1_700_000_000_000, 1_700_000_000_000 + 2 * DAY_MS)
    events = random_events(rnd, window, 800)
    warm.write(tenant, events)
    for _ in range(4):
        pieces = cover(random_range(rnd, window), warm.granularities)
        partials = warm.aggregate(tenant, STREAM, pieces, "key")
        for k in (1, 5, 100):
            assert warm.top_k(tenant, STREAM, pieces, k, by) == top_k(partials, k, by)
        for key in ("a", "日本", "never-written"):
            assert warm.rank(tenant, STREAM, pieces, key, by, around=2) == rank_of(partials, key, by, 2)
    assert warm.top_k(tenant, "nope", pieces, 3, by) == []
    assert warm.rank(tenant, "nope", pieces, "a", by).rank is None


def test_stats_count_rows_and_bytes(warm):
    warm.write(new_tenant(), random_events(random.Random(4), TimeRange(0, DAY_MS), 20))
    with warm.pool.connection() as conn:
        conn.execute("ANALYZE events")
    stats = warm.stats()
    assert stats["rows"] > 0 and stats["bytes"] > 0


def test_whole_days_are_dropped_at_once_and_can_be_written_again(warm):
    tenant = new_tenant()
    day0 = 1_104_537_600_000  # 2005-01-01T00:00:00Z: no other test writes there
    window = TimeRange(day0, day0 + 4 * DAY_MS)
    events = random_events(random.Random(8), window, 400)
    warm.write(tenant, events)
    cut = TimeRange(day0 + DAY_MS - 30 * 60_000, day0 + 3 * DAY_MS + 30 * 60_000)
    deleted = warm.delete_range(None, None, cut)
    kept = events.filter(pc.or_(pc.less(events["ts"], cut.start), pc.greater_equal(events["ts"], cut.end)))
    assert deleted == events.num_rows - kept.num_rows
    for g in ("1m", "1h", "1d"):
        pieces = [Piece(GRANULARITIES[g], window)]
        assert as_aggs(warm.aggregate(tenant, STREAM, pieces, "key"), "key") == oracle_by_key(kept, window)
    with warm.pool.connection() as conn:
        if warm.mode == "postgres":
            assert conn.execute("SELECT to_regclass('events_p20050102')").fetchone()[0] is None
        else:
            inside = conn.execute("SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = "
                                  "'events' AND range_start >= '2005-01-02' AND range_end <= '2005-01-04'").fetchone()
            assert inside[0] == 0
    late = random_events(random.Random(9), TimeRange(day0 + DAY_MS, day0 + 2 * DAY_MS), 30)
    warm.write(tenant, late)
    everything = pa.concat_tables([kept, late])
    assert as_aggs(warm.aggregate(tenant, STREAM, cover(window, warm.granularities), "key"), "key") == \
        oracle_by_key(everything, window)


def test_compressed_chunks_stay_exact_and_take_late_events(warm):
    tenant = new_tenant()
    day0 = 1_072_915_200_000  # 2004-01-01T00:00:00Z: no other test writes there
    window = TimeRange(day0, day0 + 3 * DAY_MS)
    events = random_events(random.Random(12), window, 300)
    warm.write(tenant, events)
    compressed = warm.compress(day0 + 2 * DAY_MS)  # (older chunks of other tests too)
    assert compressed >= 2 if warm.mode == "timescale" else compressed == 0
    if warm.mode == "timescale":
        with warm.pool.connection() as conn:
            flags = [r[0] for r in conn.execute(
                "SELECT is_compressed FROM timescaledb_information.chunks WHERE hypertable_name = 'events' "
                "AND range_start >= '2004-01-01' AND range_end <= '2004-01-04' ORDER BY range_start")]
        assert flags == [True, True, False]
    assert warm.compress(day0 + 2 * DAY_MS) == 0  # idempotent
    late = random_events(random.Random(13), TimeRange(day0, day0 + DAY_MS), 40)
    warm.write(tenant, late)
    everything = pa.concat_tables([events, late])
    assert as_aggs(warm.aggregate(tenant, STREAM, cover(window, warm.granularities), "key"), "key") == \
        oracle_by_key(everything, window)
    rows = sorted((r["key"], r["ts"], r["value"]) for b in warm.read_raw(tenant, STREAM, window) for r in b.to_pylist())
    assert rows == sorted((r["key"], r["ts"], r["value"]) for r in everything.to_pylist())


@pytest.mark.parametrize("by", ["count", "sum"])
def test_top_k_by_threshold_algorithm_is_exact(warm, by):
    tenant = new_tenant()
    rnd = random.Random(31)
    window = TimeRange(1_600_000_000_000, 1_600_000_000_000 + 6 * DAY_MS)
    events = random_events(rnd, window, 3000, keys=[f"key{i:03d}" for i in range(300)])
    events = events.set_column(3, "value", pa.array([abs(v) for v in events["value"].to_pylist()], pa.float64()))
    warm.write(tenant, events)
    sid = warm.keys.stream_id(tenant, STREAM)
    for _ in range(5):
        pieces = cover(random_range(rnd, window), warm.granularities)
        partials = warm.aggregate(tenant, STREAM, pieces, "key")
        for k in (1, 3, 10):
            assert warm.top_k(tenant, STREAM, pieces, k, by) == top_k(partials, k, by), (pieces, k)
    whole = cover(TimeRange(window.start + 7 * 60_000, window.end - 60_000), warm.granularities)
    with warm.pool.connection() as conn:
        candidates = warm._threshold_candidates(conn, sid, whole, 2, by)
    assert candidates is not None and len(candidates) < len(set(events["key"].to_pylist()))
