"""The raw-event oracle across all four tiers, driven the way outside checks drive it: events
spanning many months through POST /v1/events, every migration through POST /v1/jobs/{name}/run
with as_of, answers compared with the raw events after each step — for both cold engines.

Ranges are drawn around every catalog boundary (minutes and hours either side), across all of
them, and at random; topk by count and by sum, rank with neighbours, series at steps that suit
the range, with and without a key.
"""
from __future__ import annotations

import random
import uuid

import pytest

from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, format_time, now_ms, parse_time
from tests.api_support import (AGGS, ApiServer, Oracle, check_rank, check_series, check_topk, isolated_settings,
                               run_job, served, unique_stream)

KEYS = [f"song_{i}" for i in range(40)] + ["é", "Z", "a b", "🎵"]
VALUES = [1.0, 1.0, 1.0, 2.0, 0.5, 3.0, 10.0, -1.0]
DAYS = 430  # reaches below now - cold_age (365 d): the archive holds data


@pytest.fixture(scope="module", params=["duckdb", "trino"])
def api(request, settings):
    engine = request.param
    if engine == "trino":
        import requests

        try:
            requests.get(settings.trino_url + "/v1/info", timeout=3).raise_for_status()
        except requests.RequestException:
            pytest.skip("Trino is not running (tierstore services up starts it)")
    isolated = isolated_settings(settings, f"all_tiers_{engine}", redis_db=13 if engine == "duckdb" else 16)
    yield from served(isolated.model_copy(update={"cold_engine": engine}))


def _events(rnd: random.Random, stream: str, start: int, end: int, n: int, tag: str) -> list[dict]:
    out = []
    for i in range(n):
        e = {"stream": stream, "key": rnd.choice(KEYS), "ts": rnd.randrange(start, end)}
        if rnd.random() < 0.7:
            e["value"] = rnd.choice(VALUES)
        if rnd.random() < 0.2:
            e["id"] = f"{tag}-{rnd.randrange(n)}"  # some ids repeat: duplicates within and across batches
        if rnd.random() < 0.3:
            e["ts"] = format_time(e["ts"])
        out.append(e)
    return out


def _send(api: ApiServer, oracle: Oracle, events: list[dict], size: int = 2500) -> None:
    for pos in range(0, len(events), size):
        batch = events[pos:pos + size]
        r = api.post("/v1/events", json=batch)
        assert r.status_code == 202, r.text
        body = r.json()
        assert (body["accepted"], body["duplicates"]) == oracle.add(batch)


def _boundaries(api: ApiServer) -> dict[str, int]:
    b = api.get("/v1/tiers").json()["boundaries"]
    return {k: parse_time(v) for k, v in b.items()}


def _step_for(length: int, rnd: random.Random) -> str:
    if length <= 6 * HOUR_MS:
        return rnd.choice(["1m", "5m", "1h"])
    if length <= 20 * DAY_MS:
        return rnd.choice(["1h", "6h", "1d"])
    return rnd.choice(["1d", "7d", "30d"])


def _ranges(rnd: random.Random, bounds: dict[str, int], lo: int, hi: int, n: int) -> list[tuple[int, int]]:
    """Minute-aligned ranges straddling each boundary, spanning all tiers, and at random."""
    marks = [b for b in bounds.values() if lo < b < hi]
    out = [(lo, hi)]
    for b in marks:
        for width in (MINUTE_MS, 37 * MINUTE_MS, 5 * HOUR_MS, 3 * DAY_MS, 40 * DAY_MS):
            out.append((max(lo, b - width), min(hi, b + rnd.choice([MINUTE_MS, width, 2 * width]))))
    if len(marks) >= 2:
        out.append((max(lo, marks[0] - 2 * DAY_MS - 17 * MINUTE_MS), min(hi, marks[-1] + 3 * HOUR_MS)))
    while len(out) < n:
        a, b = sorted(rnd.randrange(lo, hi) for _ in range(2))
        out.append((a, max(b, a + MINUTE_MS)))
    return [(a - a % MINUTE_MS, b - b % MINUTE_MS if b % MINUTE_MS == 0 else b + MINUTE_MS - b % MINUTE_MS)
            for a, b in out]


def _check_all(api: ApiServer, oracle: Oracle, stream: str, rnd: random.Random, lo: int, hi: int, n: int) -> int:
    bounds = _boundaries(api)
    checked = 0
    for start, end in _ranges(rnd, bounds, lo, hi, n):
        by = rnd.choice(["count", "sum"])
        check_topk(api, oracle, stream, start, end, rnd.choice([1, 5, 25, 100]), by)
        check_rank(api, oracle, stream, start, end, rnd.choice(KEYS + ["absent"]), by, rnd.choice([0, 2]))
        check_series(api, oracle, stream, start, end, _step_for(end - start, rnd), rnd.choice(AGGS),
                     rnd.choice([None, None, rnd.choice(KEYS)]))
        checked += 1
    return checked


def _tiers_in(api: ApiServer, stream: str, lo: int, hi: int) -> set[str]:
    body = api.get("/v1/query/topk", {"stream": stream, "from": lo, "to": hi, "explain": 1}).json()
    return {s["tier"] for s in body["meta"]["segments"]}


def _job(api: ApiServer, name: str, as_of) -> dict:
    run = run_job(api, name, as_of=as_of, timeout_s=900)
    assert run["status"] == "done", run
    return run


def test_exact_across_all_four_tiers_through_every_migration(api):
    rnd = random.Random(4242)
    stream = unique_stream("all")
    tag = uuid.uuid4().hex[:8]
    oracle = Oracle()
    now = now_ms()
    lo = now - DAYS * DAY_MS
    hi = now - now % MINUTE_MS - MINUTE_MS
    _send(api, oracle, _events(rnd, stream, lo, hi, 12_000, tag))
    as_of = format_time(now)

    _job(api, "flush", as_of)
    _job(api, "refresh", as_of)
    assert _check_all(api, oracle, stream, rnd, lo, hi, 8)

    _job(api, "expire_hot", as_of)
    _check_all(api, oracle, stream, rnd, lo, hi, 8)

    _job(api, "export_cold", as_of)
    b = _boundaries(api)
    assert b["cold"] > lo, b
    sealed = api.post("/v1/events", json=[{"stream": stream, "key": "song_1", "ts": b["cold"] - DAY_MS}])
    assert sealed.status_code == 422 and sealed.json()["error"]["code"] == "range_sealed"
    _check_all(api, oracle, stream, rnd, lo, hi, 10)

    _job(api, "archive", as_of)
    b = _boundaries(api)
    assert b["archive"] > lo, b
    assert _tiers_in(api, stream, lo, hi) == {"archive", "cold", "warm", "hot"}
    _check_all(api, oracle, stream, rnd, lo, hi, 14)

    # late events into warm and fresh ones into hot, then the clock moves on by two days
    late = _events(rnd, stream, b["cold"], b["warm"], 1500, tag + "-late")
    fresh = _events(rnd, stream, b["warm"], hi, 1500, tag + "-fresh")
    _send(api, oracle, late + fresh)
    _job(api, "flush", as_of)
    _job(api, "refresh", as_of)
    _check_all(api, oracle, stream, rnd, lo, hi, 8)

    later = format_time(now + 2 * DAY_MS)
    for name in ("expire_hot", "export_cold", "archive"):
        _job(api, name, later)
    moved = _boundaries(api)
    assert moved["warm"] > b["warm"] and moved["cold"] >= b["cold"] and moved["archive"] >= b["archive"]
    _check_all(api, oracle, stream, rnd, lo, hi, 14)
