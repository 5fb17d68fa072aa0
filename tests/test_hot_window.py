"""Sliding windows on the hot tier (tiers/hot_window.lua): top-K and rank by count and sum read runs
of buckets through materialised unions; every answer equals the raw-event oracle while windows
slide, late events arrive, compaction runs, buckets are trimmed or lost."""
from __future__ import annotations

import random

import pyarrow as pa
import pytest

from rollups.cover import cover
from rollups.errors import TierUnavailable
from rollups.timeutil import DAY_MS, G1H, G1M, HOUR_MS, MIN_MS, MINUTE_MS, TimeRange, now_ms
from rollups.topk import rank_of, top_k
from tests.test_hot_tier import lose, make_tier, oracle_partials, tenant  # noqa: F401 (a fixture)
from tests.tier_contract import STREAM, events_of, random_events, random_range
from tiers.hot import RedisHotTier

KEYS = [f"k{i:03d}" for i in range(60)]


@pytest.fixture
def tiers(settings):
    on = make_tier(settings)
    off = RedisHotTier(on.settings.model_copy(update={"window_unions": False}))
    yield on, off
    on.close()
    off.close()


def unions(redis_client, tenant: str) -> list[str]:
    return [m.decode() for m in redis_client.zrange(f"tierstore:hot:{{{tenant}:{STREAM}}}:win:index", 0, -1)]


def check(on, off, tenant: str, events: pa.Table, rng: TimeRange, key: str = "k003") -> None:
    pieces = cover(rng, on.granularities)
    oracle = oracle_partials(events, rng)
    for by in ("count", "sum"):
        want = top_k(oracle, 7, by)
        assert on.top_k(tenant, STREAM, pieces, 7, by) == want, (rng, by)
        assert off.top_k(tenant, STREAM, pieces, 7, by) == want, (rng, by)
        assert on.rank(tenant, STREAM, pieces, key, by, around=2) == rank_of(oracle, key, by, 2), (rng, by)


def seeded(on, tenant: str, seed: int, hours: int, n: int, compact: bool = True):
    """n random events over the last `hours`, ingested (and compacted as of now): rnd, now, window, events."""
    rnd = random.Random(seed)
    now = now_ms()
    window = TimeRange(now - hours * HOUR_MS, now)
    events = random_events(rnd, window, n, keys=KEYS)
    on.ingest(tenant, events, now_ms=now)
    if compact:
        on.compact(tenant, STREAM, now_ms=now)
    return rnd, now, window, events


def sliding(now: int, width: int, steps: int) -> list[TimeRange]:
    end = G1M.floor(now) + MINUTE_MS
    return [TimeRange(end - width + i * MINUTE_MS, end + i * MINUTE_MS) for i in range(steps)]


def test_sliding_windows_with_late_events_equal_the_oracle(tiers, tenant, redis_client):
    on, off = tiers
    rnd, now, window, events = seeded(on, tenant, 5, 30, 3000)
    for i, rng in enumerate(sliding(now, 24 * HOUR_MS, 6) + sliding(now, 6 * HOUR_MS, 3)
                            + [random_range(rnd, window) for _ in range(6)]):
        check(on, off, tenant, events, rng, key=rnd.choice(KEYS))
        assert unions(redis_client, tenant)
        # late events into hours and minutes the unions hold, and new minutes at the open edge
        late = random_events(rnd, window, 15, keys=KEYS)
        late = pa.concat_tables([late, random_events(rnd, TimeRange(G1M.floor(now), now + 1), 5, keys=KEYS)])
        (on if i % 2 else off).ingest(tenant, late, now_ms=now)
        events = pa.concat_tables([events, late])
        check(on, off, tenant, events, rng)


def test_a_late_event_into_a_materialised_hour_changes_the_answer_exactly(tiers, tenant, redis_client):
    on, off = tiers
    now = now_ms()
    hours = [G1H.floor(now) - h * HOUR_MS for h in range(3, 9)]
    events = events_of([(f"k{i % 5}", h + 7 * MINUTE_MS * (i % 8), 1.0) for i, h in enumerate(hours * 8)])
    on.write(tenant, events)
    on.compact(tenant, STREAM, now_ms=now)
    rng = TimeRange(hours[-1], G1H.floor(now))
    check(on, off, tenant, events, rng)
    assert any(u.startswith("1h:") for u in unions(redis_client, tenant))
    for n, ts in enumerate((hours[2] + 5, hours[4] + HOUR_MS - 1, hours[0] + 1), 1):
        late = events_of([("zz", ts, 30.0)] * (12 * n))
        on.write(tenant, late)
        events = pa.concat_tables([events, late])
        check(on, off, tenant, events, rng, key="zz")
        assert on.top_k(tenant, STREAM, cover(rng, on.granularities), 1, "count")[0].key == "zz"


def test_an_hour_indexed_after_its_union_was_built_is_not_missed(tiers, tenant, redis_client):
    on, off = tiers
    now = now_ms()
    base = G1H.floor(now) - 6 * HOUR_MS
    events = events_of([("a", base + 10, 1.0), ("b", base + 2 * HOUR_MS + 10, 1.0), ("a", base + 3 * HOUR_MS, 1.0)])
    on.write(tenant, events)
    on.compact(tenant, STREAM, now_ms=now)
    rng = TimeRange(base, base + 4 * HOUR_MS)
    check(on, off, tenant, events, rng, key="b")
    gap = events_of([("b", base + HOUR_MS + 5, 1.0), ("b", base + HOUR_MS + 6, 1.0)])  # the empty hour
    on.write(tenant, gap)
    events = pa.concat_tables([events, gap])
    check(on, off, tenant, events, rng, key="b")
    on.compact(tenant, STREAM, now_ms=now)
    check(on, off, tenant, events, rng, key="b")


def test_windows_stay_exact_during_compaction(tiers, tenant):
    on, off = tiers
    rnd, now, window, events = seeded(on, tenant, 9, 5, 1500, compact=False)
    rng = TimeRange(G1M.floor(window.start) + MINUTE_MS, G1M.floor(now) + MINUTE_MS)
    check(on, off, tenant, events, rng)
    later = now + DAY_MS
    step = 0
    while on.compact(tenant, STREAM, now_ms=later, budget=1, steps=1)["folded"]:
        step += 1
        if step % 25 == 0:
            late = random_events(rnd, window, 20, keys=KEYS)
            on.ingest(tenant, late, now_ms=now)
            events = pa.concat_tables([events, late])
            check(on, off, tenant, events, rng)
            check(on, off, tenant, events, random_range(rnd, window))
    assert step > 200
    check(on, off, tenant, events, rng)


def test_trimming_an_hour_drops_the_unions_holding_it(tiers, tenant, redis_client):
    on, off = tiers
    rnd, now, window, events = seeded(on, tenant, 3, 12, 2000)
    rng = TimeRange(G1M.floor(window.start), G1M.floor(now))
    check(on, off, tenant, events, rng)
    assert unions(redis_client, tenant)
    cut = G1H.floor(now) - 4 * HOUR_MS
    on.delete_range(tenant, STREAM, TimeRange(MIN_MS, cut))
    assert unions(redis_client, tenant) == []
    kept = events.filter(pa.compute.greater_equal(events.column("ts"), cut))
    check(on, off, tenant, kept, rng)


@pytest.mark.parametrize("g", [G1M, G1H])
def test_a_lost_bucket_inside_a_union_still_answers_503(tiers, tenant, redis_client, g):
    on, off = tiers
    now = now_ms()
    base = G1H.floor(now) - 6 * HOUR_MS
    events = events_of([("a", base + i * 7 * MINUTE_MS, 1.0) for i in range(40)])
    on.write(tenant, events)
    on.compact(tenant, STREAM, now_ms=base + 6 * HOUR_MS if g is G1H else base)
    rng = TimeRange(base, base + 4 * HOUR_MS)
    check(on, off, tenant, events, rng, key="a")
    assert any(u.startswith(g.name + ":") for u in unions(redis_client, tenant))
    lose(redis_client, tenant, g, base + HOUR_MS + (7 * MINUTE_MS * 9 - HOUR_MS if g is G1M else 0))
    for by in ("count", "sum"):
        with pytest.raises(TierUnavailable):
            on.top_k(tenant, STREAM, cover(rng, on.granularities), 3, by)
        with pytest.raises(TierUnavailable):
            on.rank(tenant, STREAM, cover(rng, on.granularities), "a", by)


def test_the_compact_hot_job_folds_every_closed_hour_and_answers_stay_exact(tiers, tenant):
    """scheduler.jobs.run_compact_hot (the compact_hot job): after a bulk ingest with no compaction,
    one run folds every closed hour (a second finds nothing), and every answer equals the oracle
    before and after. Without a hot tier it is a no-op."""
    from types import SimpleNamespace

    from scheduler.jobs import JOBS, run_compact_hot

    on, off = tiers
    _, now, window, events = seeded(on, tenant, 41, 6, 3000, compact=False)
    rng = TimeRange(G1M.floor(window.start) + MINUTE_MS, G1M.floor(now))
    check(on, off, tenant, events, rng)
    ctx = SimpleNamespace(resources={"hot": on}, as_of=now + 2 * HOUR_MS)  # the last hours closed too
    first = run_compact_hot(ctx)
    assert first["folded"] >= 5 and first["members"] > 0, first
    assert run_compact_hot(ctx)["folded"] == 0
    check(on, off, tenant, events, rng)
    assert run_compact_hot(SimpleNamespace(resources={"hot": None}, as_of=now)) == {"steps": 0, "folded": 0, "members": 0}
    assert "compact_hot" in {job.name for job in JOBS}


def test_a_large_stream_gets_its_last_24_hours_unions_before_anyone_asks(tiers, tenant, redis_client):
    """tiers/hot_warm.warm_windows (compact_hot's last step): a stream nobody asked is warmed only
    with at least `min_keys` keys (setting standing_min_keys), and answers stay exact."""
    from tiers.hot_warm import warm_windows

    on, off = tiers
    _, now, window, events = seeded(on, tenant, 43, 26, 3000)
    assert unions(redis_client, tenant) == []
    assert warm_windows(on, now, min_keys=0)["streams"] == 0
    assert warm_windows(on, now, min_keys=len(KEYS) + 1)["streams"] == 0  # fewer keys than that
    assert warm_windows(on, now, min_keys=len(KEYS))["warmed"] >= 2
    assert unions(redis_client, tenant), "the window unions were built"
    check(on, off, tenant, events, TimeRange(G1M.floor(now) - DAY_MS, G1M.floor(now)))


def test_a_read_over_its_build_budget_reads_the_buckets_and_leaves_the_union_to_the_job(tiers, tenant, redis_client):
    """window_build_budget (tiers/hot_window.lua): a first ask of "last 24 h" whose union of closed
    hours would read more source members than the budget builds nothing (it reads the hour zsets
    as lists; a 24-hour union built on the request path held Redis 2.7-3.7 s at 500k keys), marks
    the stream wanted, and answers exactly; compact_hot's warm_windows (no budget) then builds the
    union, which the next read reuses whatever its size."""
    from tiers.hot_warm import warm_windows

    on, off = tiers
    small = RedisHotTier(on.settings.model_copy(update={"window_build_budget": 50}))
    try:
        _, now, window, events = seeded(on, tenant, 47, 26, 3000)
        end = G1M.floor(now)
        rng = TimeRange(end - DAY_MS, end)
        prefix = f"tierstore:hot:{{{tenant}:{STREAM}}}:"
        pieces = cover(rng, small.granularities)
        oracle = oracle_partials(events, rng)
        for by in ("count", "sum"):
            assert small.top_k(tenant, STREAM, pieces, 7, by) == top_k(oracle, 7, by), by
            assert small.rank(tenant, STREAM, pieces, "k003", by, 2) == rank_of(oracle, "k003", by, 2), by
            names = [n.decode() for n in small._query(tenant, STREAM, pieces, "lists", by)[0]]
            assert not [n for n in names if ":win:1h:" in n], names  # the closed hours read as themselves
            assert sum(1 for n in names if ":1h:" in n) >= 20, names
        assert not [u for u in unions(redis_client, tenant) if u.startswith("1h:")]
        assert redis_client.exists(prefix + "win:wanted")
        assert warm_windows(small, now, min_keys=0)["warmed"] >= 2  # watched: it was wanted
        built = [u for u in unions(redis_client, tenant) if u.startswith("1h:")]
        assert built, "the job built the union of the closed hours"
        names = [n.decode() for n in small._query(tenant, STREAM, pieces, "lists", "count")[0]]
        assert [n for n in names if ":win:1h:" in n], names  # the read reuses it, over budget or not
        check(small, off, tenant, events, rng)
    finally:
        small.close()


def test_the_build_budget_setting_reaches_the_hot_tier(settings):
    """tierstore's hot_window_build_budget is the tier's window_build_budget (RedisHotTier.from_settings)."""
    tier = RedisHotTier.from_settings(settings.model_copy(update={"hot_window_build_budget": 1234}))
    try:
        assert tier.settings.window_build_budget == 1234
    finally:
        tier.close()
