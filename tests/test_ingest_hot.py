"""The ingest write path of the hot tier against the real Redis: one atomic script per batch that
checks the seal, dedups ids, appends the log entry and updates the aggregates."""
from __future__ import annotations

import random

import pyarrow as pa
import pytest

from rollups.cover import Piece, cover
from rollups.errors import RangeSealed
from rollups.timeutil import DAY_MS, G1D, G1H, G1M, HOUR_MS, MAX_MS, MIN_MS, MINUTE_MS, TimeRange, now_ms
from tests.tier_contract import STREAM, as_aggs, events_of, new_tenant, oracle_by_bucket, oracle_by_key, random_events
from tiers.eventlog import HOT_FLOOR_KEY, SEAL_KEY, decode_entry, latest_entries, total_length
from tiers.hot import IngestResult, RedisHotTier, fold_alltime



HOT_AGE = DAY_MS


@pytest.fixture
def tenant(settings):
    name = new_tenant()
    yield name
    tier = RedisHotTier.from_settings(settings)
    tier.delete_range(name, None, TimeRange(MIN_MS, MAX_MS))
    tier.close()


@pytest.fixture
def marks(redis_client):
    """SEAL_KEY and HOT_FLOOR_KEY, restored after the test (tests own this Redis)."""
    saved = {key: redis_client.get(key) for key in (SEAL_KEY, HOT_FLOOR_KEY)}
    yield redis_client
    for key, value in saved.items():
        if value is None:
            redis_client.delete(key)
        else:
            redis_client.set(key, value)


@pytest.fixture
def hot(settings, marks):
    marks.delete(SEAL_KEY, HOT_FLOOR_KEY)
    tier = RedisHotTier.from_url(settings.redis_url, HOT_AGE, settings.grace_period, settings.dedup_window)
    yield tier
    tier.close()


def log_entries(redis_client, tenant: str) -> list[pa.Table]:
    """This tenant's log entries, oldest first, as decode_entry gives them (duplicates removed)."""
    entries = latest_entries(redis_client, count=200)
    return [table for t, table in (decode_entry(fields) for _, fields in reversed(entries)) if t == tenant]


def everything(now: int) -> list:
    return cover(TimeRange(G1D.floor(now) - 2 * DAY_MS, G1M.ceil(now + 1)), [G1M, G1D])


def totals(hot, tenant, now, stream=STREAM) -> dict:
    return as_aggs(hot.aggregate(tenant, stream, everything(now), "key"), "key")


def alltime(redis_client, tenant, key, stream=STREAM) -> tuple:
    fold_alltime(redis_client, tenant, stream)  # the pending increments (hot_alltime_fold.lua)
    prefix = f"tierstore:hot:{{{tenant}:{stream}}}:all:"
    return redis_client.zscore(prefix + "count", key), redis_client.zscore(prefix + "sum", key)


def test_batch_is_logged_and_counted(hot, tenant, redis_client):
    now = now_ms()
    window = TimeRange(now - 3 * HOUR_MS, now)
    events = random_events(random.Random(1), window, 500)
    assert hot.ingest(tenant, events, now_ms=now) == IngestResult(500, 0)
    (logged,) = log_entries(redis_client, tenant)
    assert logged.equals(events)
    rng = TimeRange(G1M.floor(window.start), G1M.ceil(now + 1))
    assert totals(hot, tenant, now) == oracle_by_key(events, rng)
    pieces = cover(rng, hot.granularities)
    assert as_aggs(hot.aggregate(tenant, STREAM, pieces, "bucket"), "bucket") == oracle_by_bucket(events, pieces)


def test_duplicate_ids_across_batches_count_once(hot, tenant, redis_client):
    now = now_ms()
    first = events_of([("a", now, 1.0, "x"), ("b", now, 2.0, "y")])
    second = events_of([("b", now, 2.0, "y"), ("c", now, 3.0, "z"), ("a", now, 4.0)])
    assert hot.ingest(tenant, first, now_ms=now) == IngestResult(2, 0)
    assert hot.ingest(tenant, second, now_ms=now) == IngestResult(2, 1)
    got = totals(hot, tenant, now)
    assert {k: (a.count, a.sum) for k, a in got.items()} == {"a": (2, 5.0), "b": (1, 2.0), "c": (1, 3.0)}
    assert alltime(redis_client, tenant, "b") == (1.0, 2.0)
    assert [t.column("id").to_pylist() for t in log_entries(redis_client, tenant)] == [["x", "y"], ["z", None]]
    raw = latest_entries(redis_client, count=1)[0][1]
    assert raw[b"dups"] == b"[0]"


def test_duplicate_ids_within_a_batch_count_once(hot, tenant, redis_client):
    now = now_ms()
    events = events_of([("a", now, 1.0, "x"), ("a", now, 1.0, "x"), ("a", now, 1.0), ("b", now, 5.0, "x"),
                    ("b", now, 5.0, "w")])
    assert hot.ingest(tenant, events, now_ms=now) == IngestResult(3, 2)
    got = totals(hot, tenant, now)
    assert {k: (a.count, a.sum) for k, a in got.items()} == {"a": (2, 2.0), "b": (1, 5.0)}
    (logged,) = log_entries(redis_client, tenant)
    assert logged.equals(events.take([0, 2, 4]))


def test_events_with_and_without_ids_merge_in_the_same_buckets(hot, tenant):
    """Ids go through the script one by one, the rest pre-aggregated: both land in one bucket."""
    rnd = random.Random(4)
    now = now_ms()
    events = random_events(rnd, TimeRange(now - 20 * MINUTE_MS, now), 400)
    ids = [f"id{i}" if rnd.random() < 0.5 else None for i in range(400)]
    events = events.set_column(4, "id", pa.array(ids, pa.string()))
    assert hot.ingest(tenant, events, now_ms=now) == IngestResult(400, 0)
    assert totals(hot, tenant, now) == oracle_by_key(events, TimeRange(G1D.floor(now) - DAY_MS, now + 1))


def test_sealed_batch_is_refused_whole_and_changes_nothing(hot, tenant, marks):
    now = now_ms()
    seal = now - HOUR_MS
    marks.set(SEAL_KEY, seal)
    events = events_of([("a", now, 1.0, "x"), ("b", seal - 1, 1.0), ("c", seal, 1.0), ("d", seal - HOUR_MS, 1.0)])
    length = total_length(marks)
    with pytest.raises(RangeSealed) as err:
        hot.ingest(tenant, events, now_ms=now)
    assert err.value.status == 422 and err.value.code == "range_sealed"
    assert [(d["index"], d["field"]) for d in err.value.details] == [(1, "ts"), (3, "ts")]
    assert total_length(marks) == length
    assert totals(hot, tenant, now) == {}
    assert hot.streams(tenant) == []
    marks.delete(SEAL_KEY)
    assert hot.ingest(tenant, events, now_ms=now) == IngestResult(4, 0)  # the id "x" was not consumed


def test_events_below_the_hot_floor_are_logged_but_not_aggregated(hot, tenant, marks):
    """The floor rises after the tier cached it: the script notices and the batch is re-aggregated."""
    now = now_ms()
    floor = now - 30 * MINUTE_MS + 12_345  # not minute-aligned: the floor splits a minute
    marks.set(HOT_FLOOR_KEY, floor)
    events = events_of([("a", floor - 1, 1.0), ("a", floor, 2.0), ("b", floor - 5 * MINUTE_MS, 4.0),
                    ("b", now, 8.0), ("c", floor - 2, 16.0, "id-c"), ("c", floor + 1, 32.0, "id-d")])
    assert hot.ingest(tenant, events, now_ms=now) == IngestResult(6, 0)
    got = totals(hot, tenant, now)
    assert {k: (a.count, a.sum) for k, a in got.items()} == {"a": (1, 2.0), "b": (1, 8.0), "c": (1, 32.0)}
    assert [alltime(marks, tenant, k) for k in "abc"] == [(2.0, 3.0), (2.0, 12.0), (2.0, 48.0)]
    (logged,) = log_entries(marks, tenant)
    assert logged.equals(events)


def test_batch_with_several_streams(hot, tenant):
    now = now_ms()
    events = pa.concat_tables([events_of([("a", now, 1.0), ("b", now, 2.0)], "s1"), events_of([("a", now, 4.0)], "s2")])
    assert hot.ingest(tenant, events, now_ms=now) == IngestResult(3, 0)
    assert {k: a.sum for k, a in totals(hot, tenant, now, "s1").items()} == {"a": 1.0, "b": 2.0}
    assert {k: a.sum for k, a in totals(hot, tenant, now, "s2").items()} == {"a": 4.0}
    assert hot.streams(tenant) == ["s1", "s2"]


def test_large_batch_crosses_every_chunk_limit(hot, tenant, redis_client):
    """More distinct keys in one bucket than a script may unpack into one command (~8,000)."""
    now = now_ms()
    n = 11_000
    keys = [f"k{i}" for i in range(9_000)] + [f"k{i}" for i in range(2_000)]
    events = events_of([(k, now - (i % 50), float(i % 7)) for i, k in enumerate(keys)])
    assert hot.ingest(tenant, events, now_ms=now) == IngestResult(n, 0)
    oracle = oracle_by_key(events, TimeRange(now - MINUTE_MS, now + 1))
    assert totals(hot, tenant, now) == oracle
    best = sorted(oracle, key=lambda k: (-oracle[k].sum, k))[:3]
    assert [(r.key, r.value) for r in hot.top_k(tenant, STREAM, everything(now), 3, "sum")] == \
        [(k, oracle[k].sum) for k in best]


def test_write_does_not_log_or_dedup(hot, tenant, redis_client):
    now = now_ms()
    length = total_length(redis_client)
    events = events_of([("a", now, 1.0, "x"), ("a", now, 1.0, "x")])
    assert hot.write(tenant, events) == 2
    assert total_length(redis_client) == length
    assert totals(hot, tenant, now)["a"].count == 2


def test_min_and_max_follow_new_values_in_a_bucket_of_one_value(hot, tenant):
    """While every value of a bucket is one value, min and max of keys counted twice are left
    alone; a batch bringing another value updates them, even where the batch has one value."""
    now = now_ms()
    minute = G1M.floor(now) - 5 * MINUTE_MS
    other = minute + MINUTE_MS
    batches = [[("a", minute, 1.0), ("a", minute + 1, 1.0), ("b", minute + 2, 1.0), ("f", minute + 2, 1.0),
                ("d", other, 2.0), ("d", other + 1, 2.0), ("e", other + 2, 2.0)],
               [("a", minute + 3, 1.0), ("b", minute + 4, 1.0), ("f", minute + 4, 1.0), ("d", other + 3, 1.0),
                ("e", other + 4, 1.0)],
               [("b", minute + 5, 1.0), ("a", minute + 6, 2.0), ("c", minute + 7, 1.0)],
               [("a", minute + 8, 1.0), ("b", minute + 9, 0.5), ("c", minute + 10, 1.0)]]
    for rows in batches:
        hot.ingest(tenant, events_of(rows), now_ms=now)
    events = pa.concat_tables([events_of(rows) for rows in batches])
    rng = TimeRange(minute, minute + 2 * MINUTE_MS)
    for pieces in ([Piece(G1M, rng)], cover(TimeRange(G1D.floor(now), G1M.ceil(now + 1)), [G1M, G1H, G1D])):
        assert as_aggs(hot.aggregate(tenant, STREAM, pieces, "key"), "key") == oracle_by_key(events, rng)
        assert [(r.key, r.value) for r in hot.top_k(tenant, STREAM, pieces, 6, "max")] == \
            [("a", 2.0), ("d", 2.0), ("e", 2.0), ("b", 1.0), ("c", 1.0), ("f", 1.0)]
        assert [(r.key, r.value) for r in hot.top_k(tenant, STREAM, pieces, 6, "min")] == \
            [("a", 1.0), ("c", 1.0), ("d", 1.0), ("e", 1.0), ("f", 1.0), ("b", 0.5)]
