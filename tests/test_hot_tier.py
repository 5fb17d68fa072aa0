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
from rollups.partials import merge_partials
from rollups.timeutil import DAY_MS, G1D, G1H, G1M, HOUR_MS, MAX_MS, MIN_MS, MINUTE_MS, RAW, TimeRange, now_ms
from rollups.topk import Ranked, rank_of, top_k
from tests.tier_contract import STREAM, TierContract, events_of, new_tenant, random_events, random_range
from tiers.hot import RedisHotTier

HOT_AGE = 30 * DAY_MS  # long enough that no bucket of the contract's two-day window dies


def make_tier(settings, hot_age=HOT_AGE, grace=None) -> RedisHotTier:
    grace = settings.grace_period if grace is None else grace
    return RedisHotTier.from_url(settings.redis_url, hot_age, grace, settings.dedup_window)


@pytest.fixture
def hot(settings):
    tier = make_tier(settings)
    yield tier
    tier.close()


class TestRedisHotTierContract(TierContract):
    @pytest.fixture
    def tier(self, hot):
        return hot


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


# ---- expiry ---------------------------------------------------------------------------------

def test_bucket_keys_expire_at_bucket_end_plus_hot_age_and_grace(hot, tenant, redis_client, settings):
    ts = now_ms() - 5 * MINUTE_MS
    hot.write(tenant, events_of([("a", ts, 1.0)]))
    for g in (G1M, G1H, G1D):
        start = g.floor(ts)
        for agg in ("count", "sum", "min", "max"):
            key = f"tierstore:hot:{{{tenant}:{STREAM}}}:{g.name}:{start}:{agg}"
            assert redis_client.execute_command("PEXPIRETIME", key) == \
                start + g.ms + HOT_AGE + settings.grace_period, key


def test_index_and_totals_expire_with_their_last_bucket(hot, tenant, redis_client, settings):
    ts = now_ms() - 5 * MINUTE_MS
    index = f"tierstore:hot:{{{tenant}:{STREAM}}}:1m:"
    keys = [index + k for k in ("buckets", "total:count", "total:sum", "total:min", "total:max")]
    for batch, latest in [([ts], ts), ([ts - HOUR_MS], ts), ([ts - 2 * HOUR_MS, ts + MINUTE_MS], ts + MINUTE_MS)]:
        hot.write(tenant, events_of([("a", when, 1.0) for when in batch]))
        for key in keys:
            assert redis_client.execute_command("PEXPIRETIME", key) == \
                G1M.floor(latest) + MINUTE_MS + HOT_AGE + settings.grace_period, (key, batch)


def test_dead_buckets_are_not_written(settings, tenant, redis_client):
    hot = make_tier(settings, hot_age=HOUR_MS, grace=0)
    now = now_ms()
    ts = now - 3 * HOUR_MS
    hot.write(tenant, events_of([("a", ts, 1.0)]))
    for g in (G1M, G1H, G1D):
        alive = g.floor(ts) + g.ms + HOUR_MS > now
        key = f"tierstore:hot:{{{tenant}:{STREAM}}}:{g.name}:{g.floor(ts)}:count"
        assert redis_client.exists(key) == alive, g
    minute = [Piece(G1M, TimeRange(G1M.floor(ts), G1M.floor(ts) + MINUTE_MS))]
    assert hot.aggregate(tenant, STREAM, minute, "key").num_rows == 0
    assert hot.aggregate(tenant, STREAM, minute, "bucket").num_rows == 0
    assert redis_client.zscore(f"tierstore:hot:{{{tenant}:{STREAM}}}:all:count", "a") == 1.0
    hot.close()


def test_expired_buckets_vanish_from_every_read(hot, tenant, redis_client):
    now = now_ms()
    old, new = G1M.floor(now) - 10 * MINUTE_MS, G1M.floor(now)
    hot.write(tenant, events_of([("a", old, 1.0), ("a", new, 2.0)]))
    for agg in ("count", "sum", "min", "max"):  # as their TTL would
        redis_client.pexpire(f"tierstore:hot:{{{tenant}:{STREAM}}}:1m:{old}:{agg}", 1)
    time.sleep(0.01)
    pieces = [Piece(G1M, TimeRange(old, new + MINUTE_MS))]
    assert hot.aggregate(tenant, STREAM, pieces, "bucket").to_pylist() == \
        [{"bucket": new, "count": 1, "sum": 2.0, "min": 2.0, "max": 2.0}]
    assert hot.aggregate(tenant, STREAM, pieces, "key").to_pylist() == \
        [{"key": "a", "count": 1, "sum": 2.0, "min": 2.0, "max": 2.0}]


def test_dead_buckets_leave_the_index_and_totals_at_ingest(settings, tenant, redis_client):
    hot = make_tier(settings, hot_age=HOUR_MS, grace=0)
    now = now_ms()
    old = G1M.floor(now) - 50 * MINUTE_MS
    hot.ingest(tenant, events_of([("a", old, 1.0)]), now_ms=now)
    prefix = f"tierstore:hot:{{{tenant}:{STREAM}}}:1m:"
    assert redis_client.zscore(prefix + "buckets", str(old)) == old
    later = now + 2 * HOUR_MS
    hot.ingest(tenant, events_of([("a", later, 1.0)]), now_ms=later)
    for key in ("buckets", "total:count", "total:sum", "total:min", "total:max"):
        assert redis_client.zscore(prefix + key, str(old)) is None, key
        assert redis_client.zscore(prefix + key, str(G1M.floor(later))) is not None, key
    hot.close()


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
