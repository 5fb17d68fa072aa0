"""RedisHotTier against the real Redis: the tier contract, the ranking fast paths, expiry, the
all-time leaderboard and error translation. Ingest (log, dedup, marks) is in test_ingest_hot.py."""
from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections import defaultdict

import pyarrow as pa
import pytest

from rollups.cover import Piece, cover
from rollups.errors import ConfigError, TierUnavailable
from rollups.partials import merge_partials, partial_schema
from rollups.timeutil import DAY_MS, G1D, G1H, G1M, HOUR_MS, MAX_MS, MIN_MS, MINUTE_MS, RAW, TimeRange, now_ms
from rollups.topk import Ranked, rank_of, top_k
from tests.outage import Outage
from tests.tier_contract import (STREAM, TierContract, as_aggs, events_of, new_tenant, oracle_by_bucket, oracle_by_key,
                                  random_events, random_range)
from tiers.hot import RedisHotTier

HOT_AGE = DAY_MS  # what hot keeps is the catalog's choice, not the clock's (tests/test_hot_expiry.py)


def make_tier(settings, hot_age=HOT_AGE, grace=None) -> RedisHotTier:
    grace = settings.grace_period if grace is None else grace
    return RedisHotTier.from_url(settings.redis_url, hot_age, grace, settings.dedup_window,
                                 cluster=settings.redis_mode == "cluster")  # TIERSTORE_REDIS_MODE=cluster: a cluster client


@pytest.fixture
def hot(settings):
    tier = make_tier(settings)
    yield tier
    tier.close()


@pytest.fixture
def down_hot(settings):
    if settings.redis_mode == "cluster":  # a cluster client finds the nodes behind any proxy
        pytest.skip("on a cluster, a master going down is tests/test_hot_cluster.py's failover test")
    outage = Outage(settings.redis_url)
    tier = make_tier(settings.model_copy(update={"redis_url": outage.url}))
    yield tier, outage
    outage.cut()
    tier.close()


class TestRedisHotTierContract(TierContract):
    @pytest.fixture
    def tier(self, hot):
        return hot

    @pytest.fixture
    def down(self, down_hot):
        return down_hot


class TestRedisHotTierCompactedContract(TierContract):
    """The contract with every closed hour and day folded after each write."""

    @pytest.fixture
    def tier(self, hot):
        return hot

    @pytest.fixture
    def down(self, down_hot):
        return down_hot

    def settle(self, tier) -> None:
        tier.compact(now_ms=now_ms())


class TestRedisHotTierHalfCompactedContract(TierContract):
    """The contract in the middle of compaction: a few one-bucket steps after each write, so
    hours and days are left partly folded."""

    @pytest.fixture
    def tier(self, hot):
        return hot

    @pytest.fixture
    def down(self, down_hot):
        return down_hot

    def settle(self, tier) -> None:
        tier.compact(now_ms=now_ms(), budget=1, steps=7)


@pytest.fixture
def tenant(settings):
    name = new_tenant()
    yield name
    tier = RedisHotTier.from_settings(settings)
    tier.delete_range(name, None, TimeRange(MIN_MS, MAX_MS))
    tier.close()


def whole_day_pieces(now: int) -> list[Piece]:
    return cover(TimeRange(G1D.floor(now) - DAY_MS, G1M.ceil(now + 1)), [G1M, G1H, G1D])


# ---- ranking fast paths ---------------------------------------------------------------------

def test_top_k_breaks_ties_by_key_ascending(hot, tenant):
    now = now_ms()
    hot.write(tenant, events_of([("c", now, 1.0), ("b", now, 1.0), ("a", now, 1.0), ("d", now, 2.0),
                                 ("a", now - 1, 0.0), ("b", now - 1, 0.0), ("c", now - 1, 0.0)]))
    pieces = whole_day_pieces(now)
    assert hot.top_k(tenant, STREAM, pieces, 3, "sum") == \
        [Ranked(1, "d", 2.0), Ranked(2, "a", 1.0), Ranked(3, "b", 1.0)]
    assert hot.top_k(tenant, STREAM, pieces, 2, "count") == [Ranked(1, "a", 2.0), Ranked(2, "b", 2.0)]
    ranked = hot.rank(tenant, STREAM, pieces, "c", "sum", around=1)
    assert (ranked.rank, ranked.value, ranked.total_keys) == (4, 1.0, 4)
    assert ranked.around == [Ranked(3, "b", 1.0), Ranked(4, "c", 1.0)]


@pytest.mark.parametrize("seed, values", [(11, [1, 2]), (12, [1, 2]), (13, [-1, 0.5, 2])])
def test_fast_paths_equal_the_generic_path(hot, tenant, seed, values):
    """Many ties (few distinct values, so few distinct totals) across random covers; negative
    values take the union instead of the threshold algorithm."""
    rnd = random.Random(seed)
    now = now_ms()
    window = TimeRange(G1M.floor(now) - 2 * DAY_MS, G1M.floor(now))
    keys = [f"k{i:02d}" for i in range(40)] + ["é", "Z", "日本"]
    events = random_events(rnd, window, 500, keys=keys)
    events = events.set_column(3, "value", pa.array([float(rnd.choice(values)) for _ in range(500)]))
    hot.write(tenant, events)
    for _ in range(4):
        pieces = cover(random_range(rnd, window), hot.granularities)
        generic = merge_partials([hot.aggregate(tenant, STREAM, pieces, "key")], "key")
        for by in ("count", "sum", "min", "max", "avg"):
            for k in (1, 3, 10, 50):
                assert hot.top_k(tenant, STREAM, pieces, k, by) == top_k(generic, k, by), (by, k, pieces)
            for key in keys + ["missing"]:
                assert hot.rank(tenant, STREAM, pieces, key, by, around=2) == rank_of(generic, key, by, 2), \
                    (by, key, pieces)


def test_top_k_by_sum_with_negative_values_is_exact(hot, tenant):
    """x leads one minute, loses it in the next; a threshold over per-bucket heads would keep x."""
    minute = G1M.floor(now_ms()) - 10 * MINUTE_MS
    hot.write(tenant, events_of([("x", minute, 10.0), ("y", minute, 4.0),
                                 ("x", minute + MINUTE_MS, -9.0), ("y", minute + MINUTE_MS, 4.0)]))
    pieces = [Piece(G1M, TimeRange(minute, minute + 2 * MINUTE_MS))]
    assert hot.top_k(tenant, STREAM, pieces, 1, "sum") == [Ranked(1, "y", 8.0)]


def test_fast_paths_on_an_empty_cover(hot, tenant):
    pieces = whole_day_pieces(now_ms())
    assert hot.top_k(tenant, STREAM, pieces, 10, "count") == []
    assert hot.rank(tenant, STREAM, pieces, "a", "sum", around=3).rank is None


# ---- compaction -----------------------------------------------------------------------------

def oracle_partials(events: pa.Table, rng: TimeRange) -> pa.Table:
    rows = [{"key": k, "count": a.count, "sum": a.sum, "min": a.min, "max": a.max}
            for k, a in oracle_by_key(events, rng).items()]
    return pa.Table.from_pylist(rows, schema=partial_schema("key"))


def check_reads(hot, tenant, events: pa.Table, window: TimeRange, rnd: random.Random, n: int = 4) -> None:
    """Every read over the whole window and n random ranges equals the raw-event oracle."""
    ranges = [TimeRange(G1M.ceil(window.start), G1M.floor(window.end))] + [random_range(rnd, window) for _ in range(n)]
    for rng in ranges:
        pieces = cover(rng, hot.granularities)
        assert as_aggs(hot.aggregate(tenant, STREAM, pieces, "key"), "key") == oracle_by_key(events, rng), rng
        assert as_aggs(hot.aggregate(tenant, STREAM, pieces, "bucket"), "bucket") == \
            oracle_by_bucket(events, pieces), rng
        key = rnd.choice(["a", "b", "日本", "absent"])
        assert as_aggs(hot.aggregate(tenant, STREAM, pieces, "key", key), "key") == oracle_by_key(events, rng, key)
        assert as_aggs(hot.aggregate(tenant, STREAM, pieces, "bucket", key), "bucket") == \
            oracle_by_bucket(events, pieces, key)
        oracle = oracle_partials(events, rng)
        for by in ("count", "sum", "min", "max", "avg"):
            assert hot.top_k(tenant, STREAM, pieces, 5, by) == top_k(oracle, 5, by), (rng, by)
            assert hot.rank(tenant, STREAM, pieces, key, by, around=2) == rank_of(oracle, key, by, 2), (rng, by)


def marks(redis_client, tenant: str, g) -> dict[int, int]:
    prefix = f"tierstore:hot:{{{tenant}:{STREAM}}}:{g.name}:"
    starts = [int(m) for m in redis_client.zrange(prefix + "buckets", 0, -1)]
    return {start: int(redis_client.get(f"{prefix}{start}:folded")) for start in starts}


def test_reads_stay_exact_before_during_and_after_compaction(settings, tenant, redis_client):
    """Fold step by step (one finer bucket each), with late events — plain and with ids, below and
    above the marks — sent between steps through a second tier whose cached marks go stale (and
    which folds nothing itself)."""
    hot = make_tier(settings)
    other = RedisHotTier(hot.settings.model_copy(update={"compact_after_ms": 100 * DAY_MS}))
    rnd = random.Random(21)
    now = now_ms()
    window = TimeRange(G1D.floor(now) - 2 * DAY_MS + 7 * MINUTE_MS, G1M.floor(now))
    events = random_events(rnd, window, 300)
    hot.ingest(tenant, events, now_ms=now)
    check_reads(hot, tenant, events, window, rnd)
    later = now + 2 * DAY_MS  # every hour and day of the window has closed
    step = 0
    while hot.compact(tenant, STREAM, now_ms=later, budget=1, steps=1)["folded"]:
        step += 1
        if step % 23 == 0:
            late = random_events(rnd, window, 40)
            ids = [f"late-{step}-{i}" if rnd.random() < 0.3 else None for i in range(40)]
            late = late.set_column(4, "id", pa.array(ids, pa.string()))
            (other if step % 2 else hot).ingest(tenant, late, now_ms=now)
            events = pa.concat_tables([events, late])
        if step % 17 == 0:
            check_reads(hot, tenant, events, window, rnd, n=2)
    assert step > 250  # one minute (or hour, for a day) per step
    assert all(m == start + G1H.ms for start, m in marks(redis_client, tenant, G1H).items())
    assert all(m == start + G1D.ms for start, m in marks(redis_client, tenant, G1D).items())
    late = random_events(rnd, window, 200)
    other.ingest(tenant, late, now_ms=now)  # into folded hours and days, through a stale cache
    events = pa.concat_tables([events, late])
    check_reads(hot, tenant, events, window, rnd, n=8)
    check_reads(other, tenant, events, window, rnd, n=2)
    hot.close()
    other.close()


def test_counting_streams_keep_no_sum_zsets_until_a_sum_differs_from_its_count(settings, tenant, redis_client):
    """Value-1 events: buckets and the all-time board keep counts only (sum = count); the first
    other value makes the sum zsets from the counts, in minutes, folded hours and all-time alike."""
    hot = make_tier(settings)
    rnd = random.Random(8)
    now = now_ms()
    window = TimeRange(G1H.floor(now) - 6 * HOUR_MS, G1M.floor(now))
    prefix = f"tierstore:hot:{{{tenant}:{STREAM}}}:"

    def sum_zsets(pattern="*"):
        return [k for k in redis_client.keys(prefix + pattern + ":sum") if b":total:" not in k]

    def with_values(events, values):
        return events.set_column(3, "value", pa.array([float(rnd.choice(values)) for _ in range(events.num_rows)]))

    events = with_values(random_events(rnd, window, 400), [1])
    hot.ingest(tenant, events, now_ms=now)
    assert hot.fold_alltime(tenant, STREAM) == 1  # the batch's pending all-time increments
    assert not sum_zsets() and redis_client.exists(prefix + "all:count")
    check_reads(hot, tenant, events, window, rnd)
    hot.compact(tenant, STREAM, now_ms=now, budget=1, steps=40)  # partly folded
    check_reads(hot, tenant, events, window, rnd)
    hot.compact(tenant, STREAM, now_ms=now)
    assert not sum_zsets() and redis_client.keys(prefix + "1h:*:count")
    check_reads(hot, tenant, events, window, rnd)
    assert hot.score(tenant, STREAM, "a", 1, now, now) == (float(oracle_by_key(events, window)["a"].sum) + 1, 1)
    events = pa.concat_tables([events, events_of([("a", now, 1.0)])])

    twos = with_values(random_events(rnd, window, 30), [0, 2])  # sums equal counts, values do not
    hot.ingest(tenant, twos, now_ms=now)
    events = pa.concat_tables([events, twos])
    check_reads(hot, tenant, events, window, rnd)
    late = with_values(random_events(rnd, window, 60), [1, 2.5, -1])  # into folded hours too
    hot.ingest(tenant, late, now_ms=now)
    events = pa.concat_tables([events, late])
    hot.fold_alltime(tenant, STREAM)
    assert redis_client.exists(prefix + "all:sum") and sum_zsets("1h:*") and sum_zsets("1m:*")
    check_reads(hot, tenant, events, window, rnd, n=8)
    board = oracle_by_key(events, window)
    ordered = sorted(board, key=lambda k: (-board[k].sum, k))
    assert hot.score(tenant, STREAM, "b", 0.5, now, now) == \
        (board["b"].sum + 0.5, sorted(ordered, key=lambda k: (-(board[k].sum + (k == "b") * 0.5), k)).index("b") + 1)
    hot.close()


def test_folded_buckets_do_not_need_their_minutes(hot, tenant, redis_client):
    """Once an hour is folded its minutes may expire (or be trimmed): reads use the hour's zsets."""
    now = now_ms()
    hour = G1H.floor(now) - 5 * HOUR_MS
    events = events_of([("a", hour + 1, 1.0), ("a", hour + 5 * MINUTE_MS, 3.0), ("b", hour + 59 * MINUTE_MS, 2.0)])
    hot.write(tenant, events)
    hot.compact(tenant, STREAM, now_ms=now)
    assert marks(redis_client, tenant, G1H)[hour] == hour + HOUR_MS
    prefix = f"tierstore:hot:{{{tenant}:{STREAM}}}:1m:"
    for minute in (hour, hour + 5 * MINUTE_MS, hour + 59 * MINUTE_MS):
        redis_client.delete(*[f"{prefix}{minute}:{agg}" for agg in ("count", "sum", "min", "max")])
    pieces = [Piece(G1H, TimeRange(hour, hour + HOUR_MS))]
    assert as_aggs(hot.aggregate(tenant, STREAM, pieces, "key"), "key") == \
        oracle_by_key(events, TimeRange(hour, hour + HOUR_MS))
    assert hot.top_k(tenant, STREAM, pieces, 2, "max") == [Ranked(1, "a", 3.0), Ranked(2, "b", 2.0)]


def test_ingest_folds_closed_hours_lazily(settings, tenant, redis_client):
    """A tier folds a stream's closed hours before its first ingest of the stream, then waits for
    the next hour to close; what it folds is read back exactly."""
    now = now_ms()
    old = G1H.floor(now) - 3 * HOUR_MS
    first = events_of([("a", old + MINUTE_MS, 1.0), ("b", old + 2 * MINUTE_MS, 2.0)])
    make_tier(settings).ingest(tenant, first, now_ms=now)
    assert marks(redis_client, tenant, G1H)[old] == old  # not folded: it was written after the check
    hot = make_tier(settings)
    second = events_of([("a", now, 4.0)])
    hot.ingest(tenant, second, now_ms=now)
    assert marks(redis_client, tenant, G1H)[old] == old + HOUR_MS
    third = events_of([("c", old + 3 * MINUTE_MS, 8.0)])
    hot.ingest(tenant, third, now_ms=now)  # late, into the folded hour
    assert marks(redis_client, tenant, G1H)[G1H.floor(now)] == G1H.floor(now)
    events = pa.concat_tables([first, second, third])
    rng = TimeRange(old, G1H.floor(now) + HOUR_MS)
    assert as_aggs(hot.aggregate(tenant, STREAM, cover(rng, hot.granularities), "key"), "key") == \
        oracle_by_key(events, rng)
    hot.close()


def test_a_compaction_step_reads_about_its_budget(hot, tenant):
    """Bounded steps: one finer bucket per step when the budget is tiny, all at once otherwise."""
    hour = G1D.floor(now_ms()) - 2 * DAY_MS + 3 * HOUR_MS  # its day does not close in this test
    hot.write(tenant, events_of([(f"k{i}", hour + i * MINUTE_MS, 1.0) for i in range(10)]))
    one_each = hot.compact(tenant, STREAM, now_ms=hour + 2 * HOUR_MS + 1, budget=1)
    assert (one_each["steps"], one_each["folded"]) == (10, 10)
    hot.write(tenant, events_of([(f"k{i}", hour + HOUR_MS + i * MINUTE_MS, 1.0) for i in range(10)]))
    at_once = hot.compact(tenant, STREAM, now_ms=hour + 3 * HOUR_MS + 1)
    assert (at_once["steps"], at_once["folded"]) == (1, 1)


# ---- expiry (the catalog decides; tiers/hot_expiry.py) --------------------------------------

SAFETY = 7 * DAY_MS  # the default hot_safety_ttl the fixtures' tiers use


def pexpiretime(redis_client, key: str) -> int:
    return redis_client.execute_command("PEXPIRETIME", key)


def test_bucket_keys_expire_only_at_the_safety_ttl_after_their_last_write(hot, tenant, redis_client):
    """Every key of a bucket shares one expiry, max(bucket end, write) + the safety TTL, moved at
    each write touching the bucket; an hour's zsets take its folded mark's when folded."""
    now = now_ms()
    ts = now - 5 * MINUTE_MS
    hot.ingest(tenant, events_of([("a", ts, 1.0), ("a", ts, 2.0)]), now_ms=now)  # twice: min, max zsets
    prefix = f"tierstore:hot:{{{tenant}:{STREAM}}}:"

    def assert_expiries(at):
        for g in (G1M, G1H, G1D):
            suffixes = ["count", "sum", "min", "max"] + ([] if g is G1M else ["folded"])
            for suffix in suffixes:
                key = f"{prefix}{g.name}:{g.floor(ts)}:{suffix}"
                if redis_client.exists(key):
                    assert pexpiretime(redis_client, key) == max(g.floor(ts) + g.ms, at) + SAFETY, (g, suffix)
            assert pexpiretime(redis_client, f"{prefix}{g.name}:{g.floor(ts)}:count" if g is G1M else
                               f"{prefix}{g.name}:{g.floor(ts)}:folded") > 0

    assert_expiries(now)
    hot.compact(tenant, STREAM, now_ms=G1D.floor(ts) + 3 * DAY_MS)
    assert redis_client.exists(f"{prefix}1h:{G1H.floor(ts)}:count")
    later = now + 2 * DAY_MS
    hot.ingest(tenant, events_of([("b", ts + 1, 1.0)]), now_ms=later)  # late: into the folded hour and day
    assert_expiries(later)


def test_index_and_totals_never_expire(hot, tenant, redis_client):
    ts = now_ms() - 5 * MINUTE_MS
    hot.write(tenant, events_of([("a", ts, 1.0), ("a", ts - HOUR_MS, 2.0)]))
    for g in (G1M, G1H, G1D):
        for key in ("buckets", "total:count", "total:sum", "total:min", "total:max"):
            assert redis_client.pttl(f"tierstore:hot:{{{tenant}:{STREAM}}}:{g.name}:{key}") == -1, (g, key)


def test_old_events_above_the_floor_are_kept_however_old(settings, tenant, redis_client):
    """Older than hot age + grace, yet hot's until expire_hot raises the floor past them."""
    hot = make_tier(settings, hot_age=HOUR_MS, grace=0)
    now = now_ms()
    ts = now - 3 * HOUR_MS
    events = events_of([("a", ts, 1.0), ("b", ts, 2.0)])
    hot.ingest(tenant, events, now_ms=now)
    for g in (G1M, G1H, G1D):
        key = f"tierstore:hot:{{{tenant}:{STREAM}}}:{g.name}:{g.floor(ts)}:{'count' if g is G1M else 'folded'}"
        assert redis_client.pttl(key) > SAFETY - MINUTE_MS, g
    rng = TimeRange(G1M.floor(ts), G1M.floor(ts) + MINUTE_MS)
    assert as_aggs(hot.aggregate(tenant, STREAM, [Piece(G1M, rng)], "key"), "key") == oracle_by_key(events, rng)
    hot.close()


def lose(redis_client, tenant: str, g, start: int) -> None:
    """Delete a bucket's keys as its safety TTL would (the index keeps listing it)."""
    prefix = f"tierstore:hot:{{{tenant}:{STREAM}}}:{g.name}:{start}:"
    redis_client.delete(*[prefix + suffix for suffix in ("count", "sum", "min", "max", "folded")])


def test_a_bucket_lost_to_the_safety_ttl_is_reported_never_read_as_empty(hot, tenant, redis_client):
    now = now_ms()
    old, new = G1M.floor(now) - 10 * MINUTE_MS, G1M.floor(now)
    hot.write(tenant, events_of([("a", old, 1.0), ("b", old, 5.0), ("a", new, 2.0)]))
    lose(redis_client, tenant, G1M, old)
    pieces = [Piece(G1M, TimeRange(old, new + MINUTE_MS))]
    for read in (lambda: hot.aggregate(tenant, STREAM, pieces, "key"),
                 lambda: hot.aggregate(tenant, STREAM, pieces, "key", "a"),
                 lambda: hot.aggregate(tenant, STREAM, pieces, "bucket", "a"),
                 lambda: hot.top_k(tenant, STREAM, pieces, 2, "sum"),
                 lambda: hot.rank(tenant, STREAM, pieces, "a", "count")):
        with pytest.raises(TierUnavailable) as err:
            read()
        assert err.value.tier == "hot" and err.value.details[0]["granularity"] == "1m"
    # series without a key read the totals, which never expire: still exact
    assert hot.aggregate(tenant, STREAM, pieces, "bucket").to_pylist() == [
        {"bucket": old, "count": 2, "sum": 6.0, "min": 1.0, "max": 5.0},
        {"bucket": new, "count": 1, "sum": 2.0, "min": 2.0, "max": 2.0}]
    fine = [Piece(G1M, TimeRange(new, new + MINUTE_MS))]
    assert hot.top_k(tenant, STREAM, fine, 2, "sum") == [Ranked(1, "a", 2.0)]


def test_a_write_into_a_lost_bucket_keeps_it_lost_until_trimmed(hot, tenant, redis_client):
    now = now_ms()
    old = G1M.floor(now) - 10 * MINUTE_MS
    hot.ingest(tenant, events_of([("a", old, 1.0), ("b", old + 1, 1.0)]), now_ms=now)
    for g in (G1M, G1H):
        lose(redis_client, tenant, g, g.floor(old))
    hot.ingest(tenant, events_of([("c", old + 2, 1.0)]), now_ms=now)  # recreates the keys: c only
    prefix = f"tierstore:hot:{{{tenant}:{STREAM}}}:"
    assert redis_client.zrange(prefix + "1m:lost", 0, -1) == [str(old).encode()]
    assert redis_client.zrange(prefix + "1h:lost", 0, -1) == [str(G1H.floor(old)).encode()]
    minute = [Piece(G1M, TimeRange(old, old + MINUTE_MS))]
    with pytest.raises(TierUnavailable):
        hot.top_k(tenant, STREAM, minute, 3, "count")
    hot.delete_range(tenant, STREAM, TimeRange(old, old + MINUTE_MS))  # expire_hot's trim
    assert not redis_client.exists(prefix + "1m:lost")
    assert hot.top_k(tenant, STREAM, minute, 3, "count") == []


def test_compaction_stops_below_a_lost_minute(hot, tenant, redis_client):
    """Folding past it would hide the loss in the hour's zsets."""
    hour = G1H.floor(now_ms()) - 5 * HOUR_MS
    events = events_of([("a", hour + 1, 1.0), ("b", hour + 5 * MINUTE_MS, 3.0), ("a", hour + 59 * MINUTE_MS, 2.0)])
    hot.write(tenant, events)
    lose(redis_client, tenant, G1M, hour + 5 * MINUTE_MS)
    hot.compact(tenant, STREAM, now_ms=now_ms())
    assert marks(redis_client, tenant, G1H)[hour] == hour + 5 * MINUTE_MS
    pieces = [Piece(G1H, TimeRange(hour, hour + HOUR_MS))]
    with pytest.raises(TierUnavailable):
        hot.aggregate(tenant, STREAM, pieces, "key")
    assert hot.aggregate(tenant, STREAM, pieces, "bucket").to_pylist() == \
        [{"bucket": hour, "count": 3, "sum": 6.0, "min": 1.0, "max": 3.0}]
    lose(redis_client, tenant, G1H, hour)
    day = [Piece(G1D, TimeRange(G1D.floor(hour), G1D.floor(hour) + DAY_MS))]
    with pytest.raises(TierUnavailable) as err:
        hot.top_k(tenant, STREAM, day, 1, "sum")
    assert {d["granularity"] for d in err.value.details} == {"1h"}


# ---- all-time leaderboard -------------------------------------------------------------------

def test_score_returns_alltime_total_and_rank(hot, tenant):
    board: dict[str, float] = defaultdict(float)
    rnd = random.Random(3)
    now = now_ms()
    for _ in range(60):
        key, delta = rnd.choice("abcde"), rnd.choice([1, 2, 5])
        board[key] += delta
        ordered = sorted(board, key=lambda k: (-board[k], k))
        assert hot.score(tenant, STREAM, key, delta, now - rnd.randrange(HOUR_MS), now) == \
            (board[key], ordered.index(key) + 1)


def test_score_ties_rank_by_key(hot, tenant):
    now = now_ms()
    assert hot.score(tenant, STREAM, "b", 5, now, now) == (5.0, 1)
    assert hot.score(tenant, STREAM, "a", 5, now, now) == (5.0, 1)
    assert hot.score(tenant, STREAM, "c", 5, now, now) == (5.0, 3)
    assert hot.score(tenant, STREAM, "b", 0.5, now, now) == (5.5, 1)


# ---- errors and limits ----------------------------------------------------------------------

def test_bad_url_fails_at_boot():
    with pytest.raises(ConfigError, match="redis_url"):
        RedisHotTier.from_url("http://127.0.0.1:1/0", HOT_AGE, 0, HOUR_MS)


def test_unreachable_redis_fails_at_boot():
    with pytest.raises(TierUnavailable) as err:
        RedisHotTier.from_url(f"redis://127.0.0.1:{_free_port()}/0", HOT_AGE, 0, HOUR_MS)
    assert err.value.tier == "hot" and err.value.status == 503


def test_redis_going_away_raises_tier_unavailable(tmp_path, tenant):
    port = _free_port()
    server = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    try:
        tier = _connect_when_up(f"redis://127.0.0.1:{port}/0")
        now = now_ms()
        tier.write(tenant, events_of([("a", now, 1.0)]))
    finally:
        server.terminate()
        server.wait(10)
    pieces = whole_day_pieces(now)
    calls = [lambda: tier.health(), lambda: tier.streams(tenant),
             lambda: tier.aggregate(tenant, STREAM, pieces, "key"),
             lambda: tier.top_k(tenant, STREAM, pieces, 5, "sum"),
             lambda: tier.ingest(tenant, events_of([("a", now, 1.0)]), now_ms=now),
             lambda: tier.delete_range(tenant, STREAM, TimeRange(0, now))]
    for call in calls:
        with pytest.raises(TierUnavailable):
            call()
    tier.close()
    tier.close()


def test_hot_keeps_no_raw_events(hot, tenant):
    now = now_ms()
    with pytest.raises(NotImplementedError):
        hot.read_raw(tenant, STREAM, TimeRange(now - HOUR_MS, now))
    with pytest.raises(ValueError, match="no raw buckets"):
        hot.aggregate(tenant, STREAM, [Piece(RAW, TimeRange(now - HOUR_MS, now))], "key")
    with pytest.raises(ValueError, match="not aligned"):
        hot.aggregate(tenant, STREAM, [Piece(G1H, TimeRange(1000 * HOUR_MS + MINUTE_MS, 1001 * HOUR_MS))], "key")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect_when_up(url: str) -> RedisHotTier:
    deadline = time.monotonic() + 10
    while True:
        try:
            return RedisHotTier.from_url(url, HOT_AGE, 0, HOUR_MS)
        except TierUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_data_versions_of_a_piece_spanning_years_of_hours(hot, tenant):
    """tiers/versions.py reads an hour total per hour a piece overlaps in one script; two years of
    hours (17,520: more values than Lua's unpack holds at once) are read in chunks."""
    end = G1H.floor(now_ms())
    piece = Piece(G1H, TimeRange(end - 730 * DAY_MS, end))
    first = hot.data_versions(tenant, STREAM, [piece])
    assert len(first) == 1 and first == hot.data_versions(tenant, STREAM, [piece])
    hot.ingest(tenant, events_of([("k", end - 3 * HOUR_MS, 1.0)]), now_ms=now_ms())
    assert hot.data_versions(tenant, STREAM, [piece]) != first  # an event in one of those hours
