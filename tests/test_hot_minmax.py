"""Per-key min and max of the hot tier's buckets stay exact when hot_ingest.lua skips the min or max
ZADD of a key whose batch minimum lies above its mean (maximum below), tiers/hot_ingest.lua
`update`: many batches into few minutes, mixed signs and magnitudes, and values one ulp around a
long run of one value (where the stored sum has rounded)."""
from __future__ import annotations

import math
import random

import pyarrow as pa
import pytest

from rollups.cover import cover
from rollups.timeutil import DAY_MS, G1M, MINUTE_MS, TimeRange, now_ms
from tests.api_support import redis_db_url
from tests.tier_contract import STREAM, as_aggs, events_of, new_tenant, oracle_by_key
from tiers.hot import RedisHotTier

REDIS_DB = 85


@pytest.fixture(scope="module")
def hot(settings):
    url = redis_db_url(settings, "hot_minmax", REDIS_DB)
    tier = RedisHotTier.from_url(url, DAY_MS, settings.grace_period, settings.dedup_window)
    yield tier
    tier.close()


def minute_aggs(hot, tenant: str, minute: int) -> dict:
    return as_aggs(hot.aggregate(tenant, STREAM, cover(TimeRange(minute, minute + MINUTE_MS), hot.granularities),
                                 "key"), "key")


def check(hot, tenant: str, events, minutes: list[int]) -> None:
    for minute in minutes:
        got = minute_aggs(hot, tenant, minute)
        want = oracle_by_key(events, TimeRange(minute, minute + MINUTE_MS))
        assert set(got) == set(want), minute
        for key, agg in want.items():
            g = got[key]
            assert (g.count, g.min, g.max) == (agg.count, agg.min, agg.max), (minute, key, g, agg)
            assert math.isclose(g.sum, agg.sum, rel_tol=1e-9, abs_tol=1e-3), (minute, key, g, agg)


@pytest.mark.parametrize("seed, values", [(1, [0.5, 1, 2, 5]), (2, [-1e9, 1e9, 0.1, -3, 2.5]),
                                          (3, [-7, -0.25, -2])])
def test_min_and_max_stay_exact_over_many_batches(hot, seed, values):
    rnd = random.Random(seed)
    tenant = new_tenant()
    base = G1M.floor(now_ms()) - 20 * MINUTE_MS
    minutes = [base, base + MINUTE_MS, base + 5 * MINUTE_MS]
    keys = [f"k{i}" for i in range(12)]
    batches = []
    for b in range(60):
        rows = [(rnd.choice(keys[: 3 + b % 10]), rnd.choice(minutes) + rnd.randrange(MINUTE_MS),
                 float(rnd.choice(values))) for _ in range(rnd.randint(1, 40))]
        batches.append(events_of(rows))
        hot.ingest(tenant, batches[-1], now_ms=now_ms())
        if b in (0, 1, 5, 30, 59):
            check(hot, tenant, pa.concat_tables(batches), minutes)


@pytest.mark.parametrize("direction", [-math.inf, math.inf])
def test_a_value_one_ulp_past_a_long_run_of_one_value_moves_the_min_or_max(hot, direction):
    """After 50 x 0.1 the stored sum has rounded (its mean is not exactly 0.1): a batch minimum one
    ulp below 0.1 must still become the min, and a maximum one ulp above the max (a skip test
    without its rounding margin, or with a loose one, fails here)."""
    tenant = new_tenant()
    minute = G1M.floor(now_ms()) - 30 * MINUTE_MS
    rows = [("a", minute + i, 0.1) for i in range(2)]
    for i in range(25):
        hot.ingest(tenant, events_of(rows), now_ms=now_ms())
    edge = math.nextafter(0.1, direction)
    hot.ingest(tenant, events_of([("a", minute + 7, edge), ("b", minute + 7, 1.0)]), now_ms=now_ms())
    agg = minute_aggs(hot, tenant, minute)["a"]
    assert agg.count == 51
    assert (agg.min, agg.max) == ((edge, 0.1) if direction < 0 else (0.1, edge))
