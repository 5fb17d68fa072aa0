"""Top-K and rank through HTTP over ranges that touch the warm tier (one sorted list per access,
tiers/warm_ranked.py) together with hot and cold: every answer equals a brute-force computation
from the raw events, and the threshold algorithm (not the full merge) gives it."""
from __future__ import annotations

import random

import pytest

from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, now_ms, parse_time
from tests.api_support import Oracle, check_rank, check_topk, isolated_settings, run_jobs, served, unique_stream

KEYS = [f"k{i:03d}" for i in range(300)] + ["é", "a b", "Z"]
WEIGHTS = [1.0 / (i + 1) for i in range(len(KEYS))]  # Zipf: TA has a tail to skip
VALUES = [1.0, 1.0, 2.0, 0.5, 3.0, 10.0]
DAYS = 45  # hot (last day), warm (to 30 days), cold (beyond, after export_cold)


@pytest.fixture(scope="module")
def api(settings):
    yield from served(isolated_settings(settings, "warm_lists_oracle", redis_db=65))


@pytest.fixture(scope="module")
def loaded(api):
    rnd = random.Random(1010)
    stream = unique_stream("wl")
    oracle = Oracle()
    now = now_ms()
    lo, hi = now - DAYS * DAY_MS, now - now % MINUTE_MS - MINUTE_MS
    events = [{"stream": stream, "key": rnd.choices(KEYS, WEIGHTS)[0], "ts": rnd.randrange(lo, hi),
               **({"value": rnd.choice(VALUES)} if rnd.random() < 0.8 else {})} for _ in range(15_000)]
    for pos in range(0, len(events), 2500):
        batch = events[pos:pos + 2500]
        r = api.post("/v1/events", json=batch)
        assert r.status_code == 202, r.text
        oracle.add(batch)
    run_jobs(api, ("flush", "refresh", "expire_hot", "export_cold"), now, timeout_s=300)
    return stream, oracle, lo, hi


def _segments(api, stream: str, start: int, end: int) -> set[str]:
    body = api.get("/v1/query/topk", {"stream": stream, "from": start, "to": end, "explain": 1}).json()
    return {s["tier"] for s in body["meta"]["segments"]}


def _ranges(rnd: random.Random, bounds: dict[str, int], lo: int, hi: int, n: int) -> list[tuple[int, int]]:
    """Minute-aligned ranges: around the warm tier's boundaries, over all of it, and at random."""
    out = [(lo, hi), (bounds["cold"] - 3 * DAY_MS - 7 * MINUTE_MS, bounds["warm"] + 5 * HOUR_MS + 3 * MINUTE_MS),
           (bounds["cold"] + 13 * MINUTE_MS, bounds["warm"] - 17 * MINUTE_MS),
           (bounds["warm"] - 7 * DAY_MS - 3 * HOUR_MS, hi)]
    while len(out) < n:
        a, b = sorted(rnd.randrange(lo, hi) for _ in range(2))
        out.append((a, max(b, a + MINUTE_MS)))
    return [(a - a % MINUTE_MS, -(-b // MINUTE_MS) * MINUTE_MS) for a, b in out]


def test_topk_and_rank_over_warm_with_other_tiers_equal_the_raw_events(api, loaded):
    stream, oracle, lo, hi = loaded
    rnd = random.Random(77)
    bounds = {k: parse_time(v) for k, v in api.get("/v1/tiers").json()["boundaries"].items()}
    assert lo < bounds["cold"] < bounds["warm"] < hi, bounds
    across = 0
    for start, end in _ranges(rnd, bounds, lo, hi, 18):
        tiers = _segments(api, stream, start, end)
        for by in ("count", "sum"):
            k = rnd.choice([1, 5, 20, 100])
            check_topk(api, oracle, stream, start, end, k, by)
            body = api.get("/v1/query/topk", {"stream": stream, "from": start, "to": end, "k": k, "by": by}).json()
            if "warm" in tiers and len(tiers) > 1:
                across += 1
                assert body["meta"]["ranking"]["method"] == "threshold", body["meta"]
            check_rank(api, oracle, stream, start, end, rnd.choice(KEYS[:40] + ["absent"]), by, rnd.choice([0, 2]))
    assert across >= 10


def test_warm_alone_and_in_a_tie_with_hot(api, loaded):
    """A range inside warm only, and one where equal totals split across warm and hot order by key."""
    stream, oracle, lo, hi = loaded
    bounds = {k: parse_time(v) for k, v in api.get("/v1/tiers").json()["boundaries"].items()}
    for start, end in ((bounds["cold"], bounds["warm"]), (bounds["cold"] + 2 * DAY_MS + 5 * MINUTE_MS,
                                                           bounds["warm"] - HOUR_MS - 9 * MINUTE_MS)):
        assert _segments(api, stream, start, end) == {"warm"}
        for by in ("count", "sum"):
            for k in (1, 10, 100):
                check_topk(api, oracle, stream, start, end, k, by)
    tie = unique_stream("wltie")
    warm_ts, hot_ts = bounds["warm"] - 2 * DAY_MS, hi - 3 * MINUTE_MS
    ev = [{"stream": tie, "key": key, "ts": ts, "value": v}
          for key, ts, v in (("b", warm_ts, 5.0), ("a", hot_ts, 5.0), ("c", warm_ts, 2.0), ("c", hot_ts, 3.0))]
    ev += [{"stream": tie, "key": f"t{i:03d}", "ts": warm_ts + i, "value": 0.5} for i in range(200)]
    assert api.post("/v1/events", json=ev).status_code == 202
    run_jobs(api, ("flush", "refresh"))
    body = api.get("/v1/query/topk", {"stream": tie, "from": warm_ts - HOUR_MS, "to": hi, "k": 3, "by": "sum"}).json()
    assert [(i["key"], i["value"]) for i in body["items"]] == [("a", 5.0), ("b", 5.0), ("c", 5.0)], body
    assert body["meta"]["ranking"]["method"] == "threshold"


def test_a_key_steady_over_many_days_beats_daily_bursts(api, loaded):
    """The top key is never near the head of any day's list (40 keys a day rank above it): only
    a frontier summed over every bucket finds it, and the answer must not stop early (a frontier
    50 times too low answers burst03 here)."""
    _, _, _, hi = loaded
    stream = unique_stream("wlsteady")
    bounds = {k: parse_time(v) for k, v in api.get("/v1/tiers").json()["boundaries"].items()}
    oracle = Oracle()
    ev = []
    for d in range(25):
        ts = bounds["warm"] - (d + 1) * DAY_MS + HOUR_MS
        assert ts > bounds["cold"]
        ev.append({"stream": stream, "key": "steady", "ts": ts, "value": 1.0})
        if d in (3, 17):  # two keys above it in total, found in round one (more would need more rounds)
            ev.append({"stream": stream, "key": f"burst{d:02d}", "ts": ts + 1, "value": 10.0})
        ev += [{"stream": stream, "key": f"t{d:02d}_{j:02d}", "ts": ts + 2 + j, "value": 2.0} for j in range(40)]
    ev.append({"stream": stream, "key": "steady", "ts": hi - 2 * MINUTE_MS, "value": 1.0})  # and one in hot
    assert api.post("/v1/events", json=ev).status_code == 202
    oracle.add(ev)
    run_jobs(api, ("flush", "refresh"))
    for start, end in ((bounds["cold"], bounds["warm"]), (bounds["cold"], hi), (bounds["warm"] - 26 * DAY_MS, hi)):
        for by in ("count", "sum"):
            for k in (1, 3, 30):
                check_topk(api, oracle, stream, start, end, k, by)
        body = api.get("/v1/query/topk", {"stream": stream, "from": start, "to": end, "k": 1, "by": "sum"}).json()
        assert body["items"][0]["key"] == "steady" and body["meta"]["ranking"]["method"] in ("threshold", "in_place")
