"""The warm tier's SQLAlchemy Core statements: compiled once per shape, every value bound, and the
timescale-mode calls well formed even where TimescaleDB is absent (its tier tests skip there)."""
from __future__ import annotations

import random

import pyarrow as pa
import pytest

from rollups.cover import cover
from rollups.timeutil import DAY_MS, TimeRange
from tests.tier_contract import STREAM, as_aggs, new_tenant, oracle_by_key, random_events
from tests.warm_support import migrated_database
from tiers import warm_queries, warm_timescale
from tiers.warm import WarmTier


@pytest.fixture(scope="module")
def warm(pg_url):
    tier = WarmTier(migrated_database(pg_url, "postgres", "_statements"), mode="postgres")
    yield tier
    tier.close()


def test_reads_of_one_shape_compile_once_and_bind_their_bounds(warm):
    tenant = new_tenant()
    window = TimeRange(1_699_920_000_000, 1_699_920_000_000 + 3 * DAY_MS)  # whole days
    edge = TimeRange(window.start + 7 * 60_000 + 3, window.start + 9 * 60_000 + 5)  # in the first range only
    events = pa.concat_tables([random_events(random.Random(5), window, 300), random_events(random.Random(6), edge, 20)])
    warm.write(tenant, events)
    second_range = TimeRange(window.start + 9 * 60_000 + 5, window.end - 11 * 60_000 - 3)
    first = cover(TimeRange(window.start + 7 * 60_000 + 3, window.end - 13 * 60_000 - 7), warm.granularities)
    second = cover(second_range, warm.granularities)
    assert [p.granularity for p in first] == [p.granularity for p in second]
    assert warm.aggregate(tenant, STREAM, first, "key").num_rows > 0
    misses = warm_queries.aggregate.cache_info().misses
    again = warm.aggregate(tenant, STREAM, second, "key")
    assert warm_queries.aggregate.cache_info().misses == misses
    assert as_aggs(again, "key") == oracle_by_key(events, second_range)
    shape, _ = warm_queries.shape_of(first)
    assert str(window.start + 7 * 60_000 + 3) not in warm_queries.aggregate(shape, "key", False).sql


def test_timescale_calls_name_their_arguments():
    drop = warm_timescale._DROP_CHUNKS.sql
    assert "older_than => (timestamptz 'epoch' + %(hi)s" in drop and "newer_than => (timestamptz 'epoch' + %(lo)s" in drop
    assert warm_timescale._REFRESH.sql.startswith("CALL refresh_continuous_aggregate(%(view)s, ")
    assert "force =>" not in warm_timescale._REFRESH.sql and "options => " in warm_timescale._REFRESH.sql
    assert "force => true, options => " in warm_timescale._FORCE_REFRESH.sql
    assert "if_not_compressed => true" in warm_timescale._COMPRESS_CHUNK.sql
    assert warm_timescale._VIEWS == ["rollup_1m", "total_1m", "rollup_1h", "total_1h", "rollup_1d", "total_1d"]
