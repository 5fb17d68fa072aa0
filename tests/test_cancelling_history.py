"""Values that cancel across days (1e15 on one day, 0.1 the next, -1e15 the day after, beside a
0.3 on the first day) through `tierstore import --history` into archive and cold, and through
export_cold out of warm, on real PostgreSQL, Redis and s3proxy: the files' verification compares
sums of rounded day partials (the week's, a pack's, the day's hourly totals) with the exact sum of
the events, and used to refuse them ("sum 0.35 differs from the source's 0.4": the import failed,
export_cold stopped for good). Sums now agree within ulps of the values' magnitude
(tiers.parquet_layout.close); counts are still compared exactly. Every key's answer stays exact."""
from __future__ import annotations

import math

import pytest

from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, format_time, now_ms
from tests.api_support import run_jobs, unique_stream
from tests.test_history_import_archive import _file, _instance
from tierstore.importer import run_import


@pytest.fixture
def instance(settings):
    yield from _instance(settings, "cancel_history", 105)


def _triple(stream: str, day0: int) -> list[dict]:
    return [{"stream": stream, "key": "a", "ts": day0 + HOUR_MS, "value": 0.3},
            {"stream": stream, "key": "x", "ts": day0 + 10 * HOUR_MS, "value": 1e15},
            {"stream": stream, "key": "x", "ts": day0 + DAY_MS + 10 * HOUR_MS, "value": 0.1},
            {"stream": stream, "key": "x", "ts": day0 + 2 * DAY_MS + 10 * HOUR_MS, "value": -1e15},
            {"stream": stream, "key": "z", "ts": day0 + DAY_MS + 11 * HOUR_MS, "value": 0.11}]


def _check(api, stream: str, day0: int) -> None:
    """Over the triple's three days: top-K by sum z 0.11, x 0.1 (a 0.3 first); x ranks 3rd."""
    frm, to = format_time(day0), format_time(day0 + 3 * DAY_MS)
    r = api.get("/v1/query/topk", {"stream": stream, "k": 3, "by": "sum", "from": frm, "to": to})
    assert r.status_code == 200, r.text
    assert [(i["key"], i["value"]) for i in r.json()["items"]] == [("a", 0.3), ("z", 0.11), ("x", 0.1)], r.json()
    r = api.get("/v1/query/rank", {"stream": stream, "key": "x", "by": "sum", "from": frm, "to": to})
    assert (r.json()["rank"], r.json()["value"]) == (3, 0.1), r.json()
    r = api.get("/v1/query/topk", {"stream": stream, "k": 3, "by": "count", "from": frm, "to": to})
    assert sorted((i["key"], i["value"]) for i in r.json()["items"]) == [("a", 1), ("x", 3), ("z", 1)]


def test_history_and_exports_whose_sums_cancel_across_days_are_accepted(instance, tmp_path):
    api, settings = instance
    stream = unique_stream("cancel")
    now = now_ms()
    archived = (now - 200 * DAY_MS) // DAY_MS * DAY_MS  # archive (cold_age 30 d), inside a week
    cold = (now - 20 * DAY_MS) // DAY_MS * DAY_MS       # cold (warm_age 10 d)
    events = _triple(stream, archived) + _triple(stream, cold)
    stats = run_import(settings, [_file(tmp_path, "h.parquet", events)], progress=False)
    assert stats["archive"] and stats["cold"], stats
    _check(api, stream, archived)
    _check(api, stream, cold)

    # the same in warm (late events, flushed), then export_cold once those days age past warm_age
    warm = (now - 6 * DAY_MS) // DAY_MS * DAY_MS
    r = api.post("/v1/events", json=[{k: v for k, v in e.items()} for e in _triple(stream, warm)])
    assert r.status_code == 202, r.text
    run_jobs(api, ["flush", "refresh"])
    _check(api, stream, warm)
    later = now + 8 * DAY_MS - now % MINUTE_MS
    runs = run_jobs(api, ["export_cold"], as_of=later)
    assert runs[0]["stats"].get("days", 0) > 0, runs[0]
    _check(api, stream, warm)


@pytest.fixture
def within_bucket(settings):
    yield from _instance(settings, "cancel_within_bucket", 120)


def test_a_partial_that_rounds_inside_one_bucket_stays_exact_across_days(within_bucket, tmp_path):
    api, settings = within_bucket
    stream = unique_stream("inbucket")
    now = now_ms()
    days = {"archive": (now - 200 * DAY_MS) // DAY_MS * DAY_MS, "cold": (now - 20 * DAY_MS) // DAY_MS * DAY_MS}
    events = [e for d0 in days.values() for e in (
        {"stream": stream, "key": "y", "ts": d0 + 10 * HOUR_MS, "value": 1e15},
        {"stream": stream, "key": "y", "ts": d0 + 10 * HOUR_MS + MINUTE_MS, "value": 0.1},
        {"stream": stream, "key": "y", "ts": d0 + DAY_MS + 10 * HOUR_MS, "value": -1e15},
        {"stream": stream, "key": "b", "ts": d0 + 5 * HOUR_MS, "value": 0.5})]
    stats = run_import(settings, [_file(tmp_path, "h.parquet", events)], progress=False)
    assert stats["archive"] and stats["cold"], stats
    for tier, d0 in days.items():
        r = api.get("/v1/query/topk", {"stream": stream, "k": 2, "by": "sum", "from": format_time(d0),
                                       "to": format_time(d0 + 2 * DAY_MS)})
        assert [(i["key"], i["value"]) for i in r.json()["items"]] == [("b", 0.5), ("y", 0.1)], (tier, r.json())


@pytest.fixture
def three_days(settings):
    yield from _instance(settings, "pairs_three_days", 121)


def test_series_rank_and_top_k_over_archived_and_cold_days_add_the_low_parts(three_days, tmp_path):
    """y: 1e15 and 0.07 in one hour on each of three days (stored per hour and day as the pair
    (1e15 + 0.125, -0.055)); its total is 3e15 + 0.21, whose nearest float is 3e15 (the highs alone
    give 3e15 + 0.5). A 3-day series point (with and without the key: the stream totals files), the
    rank and the top-K read from the archive's packs and from cold all answer the exact sums."""
    api, settings = three_days
    stream = unique_stream("threedays")
    now = now_ms()
    step = 3 * DAY_MS
    days = {"archive": (now - 200 * DAY_MS) // step * step, "cold": (now - 20 * DAY_MS) // step * step}
    events = [e for d0 in days.values() for d in range(3) for e in (
        {"stream": stream, "key": "y", "ts": d0 + d * DAY_MS + 10 * HOUR_MS, "value": 1e15},
        {"stream": stream, "key": "y", "ts": d0 + d * DAY_MS + 10 * HOUR_MS + MINUTE_MS, "value": 0.07},
        {"stream": stream, "key": "b", "ts": d0 + d * DAY_MS + 5 * HOUR_MS, "value": 0.5})]
    stats = run_import(settings, [_file(tmp_path, "h.parquet", events)], progress=False)
    assert stats["archive"] and stats["cold"], stats
    y = math.fsum([1e15, 0.07] * 3)
    assert y == 3e15
    for tier, d0 in days.items():
        q = {"stream": stream, "from": format_time(d0), "to": format_time(d0 + step)}
        r = api.get("/v1/query/topk", {**q, "k": 2, "by": "sum"})
        assert [(i["key"], i["value"]) for i in r.json()["items"]] == [("y", y), ("b", 1.5)], (tier, r.json())
        r = api.get("/v1/query/rank", {**q, "key": "y", "by": "sum"})
        assert (r.json()["rank"], r.json()["value"]) == (1, y), (tier, r.json())
        r = api.get("/v1/query/series", {**q, "step": "3d", "agg": "sum", "key": "y"})
        assert [p["value"] for p in r.json()["points"]] == [y], (tier, r.json())
        r = api.get("/v1/query/series", {**q, "step": "3d", "agg": "sum"})
        assert [p["value"] for p in r.json()["points"]] == [math.fsum([1e15, 0.07, 0.5] * 3)], (tier, r.json())
