"""A dashboard's "last 24 h" on the hot tier over simulated hours (tiers/hot_window.lua): the run of
folded hours is read through one union (built from its 8-hour blocks' unions, extended in place as
hours fold), the minute edges through one or two; every answer equals a brute-force sum over the
raw events while the clock moves, late events land in closed (folded) hours and minutes the unions
hold, and buckets are lost to the safety TTL."""
from __future__ import annotations

import random

import pyarrow as pa
import pytest

from rollups.cover import cover
from rollups.errors import TierUnavailable
from rollups.timeutil import DAY_MS, G1H, G1M, HOUR_MS, MINUTE_MS, TimeRange, now_ms
from tests.test_hot_tier import lose, tenant  # noqa: F401 (a fixture)
from tests.test_hot_window import KEYS, check, tiers, unions  # noqa: F401 (a fixture)
from tests.tier_contract import STREAM, random_events


def long_hour_unions(redis_client, tenant: str) -> list[tuple[int, int]]:
    """(start, end) of the hour unions spanning more than one 8-hour block."""
    out = []
    for u in unions(redis_client, tenant):
        g, a, b, _ = u.split(":")
        if g == "1h" and int(b) - int(a) > 8 * HOUR_MS:
            out.append((int(a), int(b)))
    return out


def lists(tier, tenant: str, rng: TimeRange, by: str) -> list[str]:
    names = tier._query(tenant, STREAM, cover(rng, tier.granularities), "lists", by)[0]
    return [n.decode() for n in names]


def test_last_24h_over_sliding_hours_with_late_events_equals_brute_force(tiers, tenant, redis_client):
    on, off = tiers
    rnd = random.Random(17)
    t0 = G1H.floor(now_ms()) - 2 * DAY_MS + 7 * MINUTE_MS  # not on an hour: both edges are minute runs
    events = random_events(rnd, TimeRange(t0 - 30 * HOUR_MS, t0), 4000, keys=KEYS)
    on.ingest(tenant, events, now_ms=t0)
    on.compact(tenant, STREAM, now_ms=t0)
    clock = t0
    for step in range(14):  # 14 x 23 minutes: several hours fold, the window's start crosses hours
        nxt = clock + 23 * MINUTE_MS
        fresh = random_events(rnd, TimeRange(clock, nxt), 120, keys=KEYS)
        # late events: into folded hours inside the long union (and its blocks), into the minutes
        # of the sliding edge, and into the open hour
        late = random_events(rnd, TimeRange(nxt - 23 * HOUR_MS, nxt - 3 * HOUR_MS), 12, keys=KEYS)
        edge = random_events(rnd, TimeRange(nxt - DAY_MS, nxt - DAY_MS + HOUR_MS), 6, keys=KEYS)
        batch = pa.concat_tables([fresh, late, edge])
        (on if step % 2 else off).ingest(tenant, batch, now_ms=nxt)
        events = pa.concat_tables([events, batch])
        clock = nxt
        if step % 3 == 0:
            on.compact(tenant, STREAM, now_ms=clock)
        end = G1M.floor(clock)
        rng = TimeRange(end - DAY_MS, end)
        check(on, off, tenant, events, rng, key=rnd.choice(KEYS))
        assert long_hour_unions(redis_client, tenant), unions(redis_client, tenant)
        # one union for the folded hours, at most two for the sliding edge, one per closed hour not
        # folded yet (compact_after_ms: up to two here) and one for the open hour
        for by in ("count", "sum"):
            names = lists(on, tenant, rng, by)
            assert len([n for n in names if ":win:1h:" in n]) == 1, names
            assert len(names) <= 6, names
        # a late event into a folded hour read through the long union changes the answer exactly
        if step % 4 == 1:
            hour = G1H.floor(end - 12 * HOUR_MS)
            burst = random_events(rnd, TimeRange(hour, hour + HOUR_MS), 1, keys=["zz-late"])
            burst = pa.concat_tables([burst] * 1500)
            on.ingest(tenant, burst, now_ms=clock)
            events = pa.concat_tables([events, burst])
            check(on, off, tenant, events, rng, key="zz-late")
            assert on.top_k(tenant, STREAM, cover(rng, on.granularities), 1, "count")[0].key == "zz-late"


@pytest.mark.parametrize("where", ["folded hour", "block edge hour", "edge minute"])
def test_a_bucket_lost_under_the_long_union_answers_503_never_a_stale_union(tiers, tenant, redis_client, where):
    on, off = tiers
    rnd = random.Random(5)
    now = G1H.floor(now_ms()) - DAY_MS + 31 * MINUTE_MS
    events = random_events(rnd, TimeRange(now - 30 * HOUR_MS, now), 3000, keys=KEYS)
    on.ingest(tenant, events, now_ms=now)
    on.compact(tenant, STREAM, now_ms=now)
    end = G1M.floor(now)
    rng = TimeRange(end - DAY_MS, end)
    check(on, off, tenant, events, rng)
    assert long_hour_unions(redis_client, tenant)
    if where == "folded hour":
        lose(redis_client, tenant, G1H, G1H.floor(end - 12 * HOUR_MS))
    elif where == "block edge hour":  # the first hour of a block: a part's first bucket
        lose(redis_client, tenant, G1H, (end - 10 * HOUR_MS) // (8 * HOUR_MS) * 8 * HOUR_MS)
    else:
        lose(redis_client, tenant, G1M, G1M.floor(end - DAY_MS + 3 * MINUTE_MS))
    pieces = cover(rng, on.granularities)
    for by in ("count", "sum"):
        with pytest.raises(TierUnavailable):
            on.top_k(tenant, STREAM, pieces, 5, by)
        with pytest.raises(TierUnavailable):
            on.rank(tenant, STREAM, pieces, KEYS[3], by)
        with pytest.raises(TierUnavailable):
            on.ranked_access(tenant, STREAM, pieces, by)


def test_the_compact_hot_job_builds_a_watched_window_ahead_of_its_next_read(tiers, tenant, redis_client):
    """run_compact_hot folds, then builds "last 24 h" of every watched stream (a union read within
    the TTL) as of its as_of: the dashboard's next read finds its union of closed hours ready, the
    answer still equals the brute-force sum; an unwatched stream gets none."""
    from types import SimpleNamespace

    from scheduler.jobs import run_compact_hot

    on, off = tiers
    rnd = random.Random(23)
    t0 = G1H.floor(now_ms()) - 2 * DAY_MS + 41 * MINUTE_MS
    events = random_events(rnd, TimeRange(t0 - 30 * HOUR_MS, t0), 3000, keys=KEYS)
    on.ingest(tenant, events, now_ms=t0)
    assert run_compact_hot(SimpleNamespace(resources={"hot": on}, as_of=t0))["windows"]["streams"] == 0
    assert unions(redis_client, tenant) == []  # nobody watches yet: nothing built
    end = G1M.floor(t0)
    check(on, off, tenant, events, TimeRange(end - DAY_MS, end))  # the dashboard's read
    later = t0 + 2 * HOUR_MS  # two hours on: two more hours folded, the window's start crossed hours
    fresh = random_events(rnd, TimeRange(t0, later), 300, keys=KEYS)
    on.ingest(tenant, fresh, now_ms=later)
    events = pa.concat_tables([events, fresh])
    stats = run_compact_hot(SimpleNamespace(resources={"hot": on}, as_of=later))
    assert stats["windows"] == {"streams": 1, "warmed": 2, "failed": 0}, stats
    end = G1M.floor(later)
    rng = TimeRange(end - DAY_MS, end)
    built = long_hour_unions(redis_client, tenant)  # before any read of the new window
    assert any(a == G1H.ceil(end - DAY_MS) for a, _ in built), built
    hours = [n for n in lists(on, tenant, rng, "count") if ":win:1h:" in n]
    assert len(hours) == 1
    a, b = (int(x) for x in hours[0].split(":win:1h:")[1].split(":")[:2])
    assert (a, b) in built  # the read reused what the job built
    check(on, off, tenant, events, rng)
