"""The all-time leaderboards' pending increments (tiers/hot_alltime_fold.lua): ingest appends one
entry per batch to all:pend instead of updating the 100k-member zsets; every reader folds them in
first, so answers stay those of the raw events, and each increment counts exactly once."""
from __future__ import annotations

import random

import pyarrow as pa
import pytest
import redis

from rollups.timeutil import HOUR_MS, MAX_MS, MIN_MS, TimeRange, now_ms
from tests.api_support import redis_db_url
from tests.tier_contract import STREAM, events_of, new_tenant, random_events
from tiers.hot import RedisHotTier, fold_alltime

FOLD_AT = 64  # hot_alltime_fold.lua


@pytest.fixture(scope="module")
def url(settings):
    return redis_db_url(settings, "alltime_pending", 79)


@pytest.fixture
def hot(settings, url):
    tier = RedisHotTier.from_url(url, 2 * HOUR_MS, settings.grace_period, settings.dedup_window)
    yield tier
    tier.close()


@pytest.fixture
def client(url):
    c = redis.Redis.from_url(url)
    yield c
    c.close()


@pytest.fixture
def tenant():
    return new_tenant()


def prefix(tenant: str, stream: str = STREAM) -> str:
    return f"tierstore:hot:{{{tenant}:{stream}}}:all:"


def board(events: pa.Table) -> dict[str, tuple[int, float]]:
    out: dict[str, tuple[int, float]] = {}
    for k, v in zip(events.column("key").to_pylist(), events.column("value").to_pylist()):
        c, s = out.get(k, (0, 0.0))
        out[k] = (c + 1, s + v)
    return out


def with_values(events: pa.Table, rnd: random.Random, values) -> pa.Table:
    return events.set_column(3, "value", pa.array([float(rnd.choice(values)) for _ in range(events.num_rows)]))


def zsets(client, tenant: str) -> tuple[dict, dict]:
    p = prefix(tenant)
    counts = {m.decode(): s for m, s in client.zrange(p + "count", 0, -1, withscores=True)}
    sums = {m.decode(): s for m, s in client.zrange(p + "sum", 0, -1, withscores=True)}
    return counts, sums


def test_score_sees_every_pending_increment_and_folds_each_once(hot, client, tenant):
    rnd = random.Random(11)
    now = now_ms()
    window = TimeRange(now - HOUR_MS, now)
    sent = []
    for values in ((1.0,), (1.0,), (0.5, 2.0, -1.0)):  # counting batches first: no sum zset until the third
        events = with_values(random_events(rnd, window, 300), rnd, values)
        hot.ingest(tenant, events, now_ms=now)
        sent.append(events)
    p = prefix(tenant)
    assert client.llen(p + "pend") == 3 and not client.exists(p + "count", p + "sum")

    score, rank = hot.score(tenant, STREAM, "k1", 1.5, now, now)
    sent.append(events_of([("k1", now, 1.5)]))
    want = board(pa.concat_tables(sent))
    order = sorted(want, key=lambda k: (-want[k][1], k))
    assert (score, rank) == (want["k1"][1], order.index("k1") + 1)
    assert client.llen(p + "pend") == 0
    counts, sums = zsets(client, tenant)
    assert counts == {k: c for k, (c, _) in want.items()} and sums == {k: s for k, (_, s) in want.items()}
    assert fold_alltime(client, tenant, STREAM) == 0  # nothing counted twice
    assert zsets(client, tenant) == (counts, sums)


def test_ingest_folds_once_enough_batches_wait(hot, client, tenant):
    rnd = random.Random(12)
    now = now_ms()
    sent = []
    for _ in range(FOLD_AT + 5):
        events = random_events(rnd, TimeRange(now - HOUR_MS, now), 20)
        hot.ingest(tenant, events.set_column(3, "value", pa.array([1.0] * 20)), now_ms=now)
        sent.append(events)
    p = prefix(tenant)
    assert client.llen(p + "pend") == 5
    assert not client.exists(p + "sum")  # every value 1: the count zset is the sum
    assert hot.fold_alltime(tenant, STREAM) == 5
    counts, _ = zsets(client, tenant)
    assert counts == {k: c for k, (c, _) in board(pa.concat_tables(sent)).items()}
    big = events_of([(f"a-rather-long-key-{i:08d}", now - i % 1000, 1.0) for i in range(12_000)])
    hot.ingest(tenant, big, now_ms=now)  # its entry alone is over FOLD_BYTES (256 KiB): folded at once
    assert client.llen(p + "pend") == 0 and client.zcard(p + "count") == len(counts) + 12_000


def test_compaction_folds_and_a_delete_of_all_time_drops_pending(hot, client, tenant):
    now = now_ms()
    events = events_of([("a", now - 10, 2.0), ("b", now - 20, 1.0), ("a", now - 30, 1.0)])
    hot.ingest(tenant, events, now_ms=now)
    hot.compact(tenant, STREAM, now_ms=now)
    assert client.llen(prefix(tenant) + "pend") == 0
    assert zsets(client, tenant) == ({"a": 2.0, "b": 1.0}, {"a": 3.0, "b": 1.0})

    hot.ingest(tenant, events_of([("c", now - 5, 1.0)]), now_ms=now)
    assert client.llen(prefix(tenant) + "pend") == 1
    minutes = sum(client.zcard(k) for k in client.keys(f"tierstore:hot:{{{tenant}:{STREAM}}}:1m:[0-9]*:count"))
    assert hot.delete_range(tenant, STREAM, TimeRange(MIN_MS, MAX_MS)) == minutes + 3  # a, b and the pending c
    assert not client.keys(f"tierstore:hot:{{{tenant}:{STREAM}}}:*") and STREAM not in hot.streams(tenant)
