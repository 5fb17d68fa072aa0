"""Calendar steps and local days through HTTP against the raw-event oracle, across hot, warm and
cold: events from October 2025 to now (dense around the 2026 EU and US DST changes, local
midnights at :30/:45 offsets and period starts) go in through POST /v1/events, move down the
tiers through the jobs API with as_of, and every answer is compared with buckets computed here
independently (local dates of each event with zoneinfo; midnights found by scanning minutes).
"""
from __future__ import annotations

import functools
import random
import uuid
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from rollups.partials import Agg
from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, TimeRange, ceil_to, floor_to, format_time, now_ms, parse_time
from tests.api_support import ApiServer, Oracle, close, isolated_settings, run_job, served, unique_stream

KEYS = [f"song_{i}" for i in range(25)] + ["é", "🎵"]
VALUES = [1.0, 1.0, 2.0, 0.5, 3.0, 10.0, -1.0]
START = parse_time("2025-10-01T00:00:00Z")
DST = {"Europe/Berlin": ["2026-03-29", "2026-10-25"], "America/New_York": ["2026-03-08", "2026-11-01"]}
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Eucla"]


@pytest.fixture(scope="module")
def api(settings):
    yield from served(isolated_settings(settings, "oracle_calendar", redis_db=52))


@functools.lru_cache(maxsize=None)
def midnight(d: date, zone: str) -> int:
    """The first instant (epoch ms) whose local date in `zone` is d, by scanning minutes."""
    z = ZoneInfo(zone)
    t = (int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp()) - 15 * 3600) * 1000
    while datetime.fromtimestamp(t / 1000, z).date() < d:
        t += 15 * MINUTE_MS
    while datetime.fromtimestamp((t - MINUTE_MS) / 1000, z).date() >= d:
        t -= MINUTE_MS
    return t


def period(d: date, step: str) -> date:
    if step == "1d":
        return d
    if step == "2d":
        return d - timedelta(days=(d - date(1970, 1, 1)).days % 2)
    if step == "1w":
        return d - timedelta(days=d.weekday())
    if step == "1mo":
        return d.replace(day=1)
    if step == "1q":
        return date(d.year, (d.month - 1) // 3 * 3 + 1, 1)
    return date(d.year, 1, 1)


def next_period(d: date, step: str) -> date:
    if step in ("1d", "2d", "1w"):
        return d + timedelta(days={"1d": 1, "2d": 2, "1w": 7}[step])
    months = {"1mo": 1, "1q": 3, "1y": 12}[step]
    m = d.year * 12 + d.month - 1 + months
    return date(m // 12, m % 12 + 1, 1)


def local_day(ms: int, zone: str) -> date:
    return datetime.fromtimestamp(ms / 1000, ZoneInfo(zone)).date()


def expected_series(oracle: Oracle, rng: TimeRange, step: str, zone: str, agg: str, key: str | None):
    buckets: dict[date, Agg] = {}
    for k, ts, v in oracle.events:
        if rng.contains(ts) and key in (None, k):
            buckets.setdefault(period(local_day(ts, zone), step), Agg()).add(v)
    out, p = [], period(local_day(rng.start, zone), step)
    while midnight(p, zone) < rng.end:
        out.append((midnight(p, zone), buckets[p].value(agg) if p in buckets else None))
        p = next_period(p, step)
    return out


def local_range(start: str, end: str, zone: str) -> TimeRange:
    return TimeRange(midnight(date.fromisoformat(start), zone), midnight(date.fromisoformat(end), zone))


def check_series(api: ApiServer, oracle: Oracle, stream: str, start, end, step: str, zone: str, agg: str,
                 key: str | None = None) -> dict:
    params = {"stream": stream, "from": start, "to": end, "step": step, "agg": agg, "tz": zone}
    if key is not None:
        params["key"] = key
    r = api.get("/v1/query/series", params)
    assert r.status_code == 200, r.text
    body = r.json()
    if isinstance(start, str) and len(start) == 10:
        rng = local_range(start, end, zone)
    else:
        rng = TimeRange(floor_to(start, MINUTE_MS), ceil_to(end, MINUTE_MS))
    assert (parse_time(body["from"]), parse_time(body["to"])) == (rng.start, rng.end)
    want = expected_series(oracle, rng, step, zone, agg, key)
    got = [(parse_time(p["t"]), p["value"]) for p in body["points"]]
    assert [g[0] for g in got] == [w[0] for w in want], \
        f"{step} {zone}: buckets {[format_time(g[0]) for g in got[:4]]} want {[format_time(w[0]) for w in want[:4]]}"
    bad = [(format_time(g[0]), g[1], w[1]) for g, w in zip(got, want) if not close(g[1], w[1])]
    assert not bad, f"series {step} tz={zone} agg={agg} key={key} [{start}, {end}): {bad[:5]}"
    assert not body["meta"]["partial"] and body["tz"] == zone
    return body


def check_ranking(api: ApiServer, oracle: Oracle, stream: str, start: str, end: str, zone: str, by: str,
                  key: str) -> None:
    """topk and rank over [start, end) given as local dates or offset-less local times in zone."""
    def read(text: str) -> int:
        if len(text) == 10:
            return midnight(date.fromisoformat(text), zone)
        return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp() * 1000)

    rng = TimeRange(read(start), read(end))
    want = oracle.ordered(rng, by)
    body = api.get("/v1/query/topk", {"stream": stream, "from": start, "to": end, "tz": zone, "k": 10,
                                      "by": by}).json()
    assert (parse_time(body["from"]), parse_time(body["to"])) == (rng.start, rng.end), body
    got = [(i["key"], i["value"]) for i in body["items"]]
    assert [g[0] for g in got] == [w[0] for w in want[:10]] and all(close(g[1], w[1]) for g, w in zip(got, want)), \
        f"topk {zone} [{start}, {end}) by {by}: {got} want {want[:10]}"
    body = api.get("/v1/query/rank", {"stream": stream, "from": start, "to": end, "tz": zone, "key": key,
                                      "by": by}).json()
    keys = [k for k, _ in want]
    assert body["total_keys"] == len(want)
    assert body["rank"] == (keys.index(key) + 1 if key in keys else None), (body, want)


def _events(rnd: random.Random, stream: str, start: int, end: int, n: int, tag: str) -> list[dict]:
    out = []
    for i in range(n):
        e = {"stream": stream, "key": rnd.choice(KEYS), "ts": rnd.randrange(start, end)}
        if rnd.random() < 0.8:
            e["value"] = rnd.choice(VALUES)
        if rnd.random() < 0.1:
            e["id"] = f"{tag}-{rnd.randrange(n)}"
        out.append(e)
    return out


def _dense(rnd: random.Random, stream: str, around: int, tag: str) -> list[dict]:
    """An event every ~10 minutes from 30 h before `around` to 30 h after: any bucket edge off by
    minutes changes some bucket."""
    return _events(rnd, stream, around - 30 * HOUR_MS, around + 30 * HOUR_MS, 360, tag)


def _send(api: ApiServer, oracle: Oracle, events: list[dict]) -> None:
    for pos in range(0, len(events), 2500):
        batch = events[pos:pos + 2500]
        r = api.post("/v1/events", json=batch)
        assert r.status_code == 202, r.text
        assert tuple(r.json().values()) == oracle.add(batch)


def _job(api: ApiServer, name: str, as_of) -> None:
    run = run_job(api, name, as_of=as_of, timeout_s=900)
    assert run["status"] == "done", run


def _check_everything(api: ApiServer, oracle: Oracle, stream: str, rnd: random.Random, end: int) -> None:
    aggs = ["count", "sum", "min", "max", "avg"]
    for zone, days in DST.items():  # local days across the DST changes, 23 h and 25 h long
        for day in days:
            d = date.fromisoformat(day)
            check_series(api, oracle, stream, (d - timedelta(days=3)).isoformat(), (d + timedelta(days=3)).isoformat(),
                         "1d", zone, rnd.choice(aggs), rnd.choice([None, KEYS[0]]))
            check_ranking(api, oracle, stream, day, (d + timedelta(days=1)).isoformat(), zone,
                          rnd.choice(["count", "sum"]), rnd.choice(KEYS))
            check_ranking(api, oracle, stream, f"{day}T01:30", f"{day}T03:30", zone, "count", KEYS[1])
    for zone in ("Asia/Kolkata", "Asia/Kathmandu", "Australia/Eucla"):
        for d in (date(2026, 3, 29), date(2026, 10, 25)):
            check_series(api, oracle, stream, (d - timedelta(days=2)).isoformat(), (d + timedelta(days=2)).isoformat(),
                         "1d", zone, rnd.choice(aggs))
            check_ranking(api, oracle, stream, d.isoformat(), (d + timedelta(days=1)).isoformat(), zone, "sum",
                          rnd.choice(KEYS))
    for zone in ZONES:  # long ranges across every tier, at every calendar step, and the hot days
        for step in ("1w", "1mo", "1q", "1y"):
            check_series(api, oracle, stream, START - 3 * DAY_MS, end, step, zone, rnd.choice(aggs),
                         rnd.choice([None, None, KEYS[2]]))
        check_series(api, oracle, stream, end - 4 * DAY_MS - 7 * MINUTE_MS, end, "1d", zone, rnd.choice(aggs))
        a = rnd.randrange(START, end - 60 * DAY_MS)
        check_series(api, oracle, stream, a, a + rnd.randrange(DAY_MS, 60 * DAY_MS), rnd.choice(["1d", "2d", "1w"]),
                     zone, rnd.choice(aggs), rnd.choice([None, KEYS[3]]))
    check_series(api, oracle, stream, START, end, "1d", "Asia/Kolkata", "count")  # a year of local days


@pytest.mark.slow
def test_calendar_buckets_and_local_days_across_the_tiers(api):
    rnd = random.Random(2026)
    stream = unique_stream("cal")
    tag = uuid.uuid4().hex[:8]
    oracle = Oracle()
    now = now_ms()
    end = floor_to(now, MINUTE_MS) - 2 * MINUTE_MS
    events = _events(rnd, stream, START, end, 9000, tag)
    for zone, days in DST.items():
        for day in days:
            events += _dense(rnd, stream, midnight(date.fromisoformat(day), zone) + 3 * HOUR_MS, f"{tag}-{day}")
    for zone in ("Asia/Kolkata", "Asia/Kathmandu", "Australia/Eucla"):
        for day in ("2026-03-29", "2026-10-25"):
            events += _dense(rnd, stream, midnight(date.fromisoformat(day), zone), f"{tag}-{zone}-{day}")
    for day in ("2026-01-01", "2026-04-01", "2026-07-01", "2026-10-01", "2026-11-02"):
        events += _dense(rnd, stream, parse_time(day + "T00:00:00Z"), f"{tag}-{day}")
    events += _events(rnd, stream, end - 3 * DAY_MS, end, 1500, tag + "-recent")
    rnd.shuffle(events)
    _send(api, oracle, events)
    as_of = format_time(now)
    for job in ("flush", "refresh"):
        _job(api, job, as_of)
    _check_everything(api, oracle, stream, rnd, end)

    for job in ("expire_hot", "export_cold"):
        _job(api, job, as_of)
    whole = api.get("/v1/query/series", {"stream": stream, "from": START, "to": end, "step": "1mo",
                                         "tz": "Asia/Kolkata", "explain": 1}).json()
    assert {s["tier"] for s in whole["meta"]["segments"]} == {"cold", "warm", "hot"}
    _check_everything(api, oracle, stream, rnd, end)


def test_local_days_are_covered_by_hours_and_minutes_with_days_in_the_middle(api):
    """The plans: a Berlin day reads hours, a Kolkata day minutes at its :30 edges, a Berlin week
    whole UTC days in its middle; every piece lies inside one bucket."""
    stream = unique_stream("plan")
    assert api.request("PUT", f"/v1/streams/{stream}", json={}).status_code == 201  # known, and empty
    base = {"stream": stream, "explain": 1, "agg": "count"}
    hot = api.get("/v1/tiers").json()["boundaries"]["warm"]
    day = local_day(parse_time(hot), "Asia/Kolkata") + timedelta(days=2)  # owned by hot
    for zone, step, grans in (("Europe/Berlin", "1d", {"1h"}), ("Asia/Kolkata", "1d", {"1m", "1h"}),
                              ("Europe/Berlin", "1w", {"1h", "1d"})):
        start = period(day, step)
        body = api.get("/v1/query/series", {**base, "from": start.isoformat(), "to": next_period(
            start, step).isoformat(), "tz": zone, "step": step}).json()
        assert {s["granularity"] for s in body["meta"]["segments"]} == grans, body["meta"]["segments"]
        assert body["meta"]["segments"][0]["from"] == format_time(midnight(start, zone))


def test_bad_zone_and_steps_and_the_point_limit(api):
    stream = unique_stream("bad")
    base = {"stream": stream, "from": "2026-01-01", "to": "2026-02-01"}
    for path, extra in (("series", {"step": "1d"}), ("topk", {}), ("rank", {"key": "a"})):
        r = api.get(f"/v1/query/{path}", {**base, **extra, "tz": "Mars/Olympus_Mons"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_time_zone", r.text
        assert r.json()["error"]["details"] == [{"field": "tz", "problem": "unknown time zone"}]
    r = api.get("/v1/query/series", {**base, "step": "1d", "tz": "Europe/Berlin\n"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"code", "message", "details"}
    for step in ("2mo", "1M", "0w"):
        r = api.get("/v1/query/series", {**base, "step": step})
        assert r.status_code == 400 and r.json()["error"]["details"][0]["field"] == "step", r.text
    r = api.get("/v1/query/series", {**base, "from": "1990-01-01", "to": "2026-01-01", "step": "1d",
                                     "tz": "Asia/Kolkata"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_points", r.text
    r = api.get("/v1/query/series", {**base, "from": "1990-01-01", "to": "2026-01-01", "step": "1w"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "stream_not_found", r.text  # valid, unknown
    assert api.request("PUT", f"/v1/streams/{stream}", json={}).status_code == 201
    r = api.get("/v1/query/series", {**base, "from": "1990-01-01", "to": "2026-01-01", "step": "1w"})
    assert r.status_code == 200 and len(r.json()["points"]) == 1879
    r = api.get("/v1/query/series", {**base, "from": "0001-01-01", "to": "2026-01-01", "step": "1y"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_range", r.text
    r = api.get("/v1/query/series", {**base, "to": "2026-02-30", "step": "1d"})
    assert r.status_code == 400 and r.json()["error"]["details"][0]["field"] == "to", r.text
