"""mode=approx over the hot tier: its closed hours sketched by the refresh job and stored in
approx_sketches at their hot data version (scheduler/hot_sketches.py), the open edge minutes read
exactly through its ranked lists, and the buckets' sketches merged per tier through a memo keyed
by their versions (router/approx_fold.py).

Checked against the raw-event oracle (tests/test_approx.py _check_answer: every true value in its
bounds, no key beating the threshold left out): after the refresh stored the hours; after late
events into a closed hour (its stored sketch and the memoised merge are then stale and must not
be used: the late key's events would be missing); after the hours left hot (their rows pruned).
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from rollups import sketches
from rollups.cover import Piece
from rollups.timeutil import DAY_MS, G1M, HOUR_MS, MINUTE_MS, TimeRange, format_time, now_ms, parse_time
from router import approx_fold
from tests.api_support import ApiServer, Oracle, isolated_settings, run_jobs, served, unique_stream
from tests.test_approx import _check_answer

LG_K = 5
N_KEYS = 300


@pytest.fixture(scope="module")
def api(settings):
    isolated = isolated_settings(settings, "approx_hot", redis_db=64)
    yield from served(isolated.model_copy(update={"approx_sketch_lg_k": LG_K}))


def _resources(api: ApiServer):
    from tierstore.app import RESOURCES

    return api.app.extensions[RESOURCES]


def _rows(api: ApiServer, sql: str, *params) -> list[tuple]:
    with _resources(api).pool.connection() as conn:
        return conn.execute(sql, params).fetchall()


def _zipf(rnd: random.Random) -> str:
    return f"k{min(int(rnd.paretovariate(0.9)), N_KEYS) - 1:03d}"


def _send(api: ApiServer, oracle: Oracle, events: list[dict]) -> None:
    for pos in range(0, len(events), 5000):
        batch = events[pos:pos + 5000]
        r = api.post("/v1/events", json=batch)
        assert r.status_code == 202, r.text
        oracle.add(batch)


def _job(api: ApiServer, name: str, as_of: int) -> dict:
    return run_jobs(api, name, as_of)[0]


def _check(api: ApiServer, oracle: Oracle, stream: str, start: int, end: int, k: int, by: str,
           error_type: str = "no_false_negatives") -> dict:
    r = api.get("/v1/query/topk", {"stream": stream, "from": format_time(start), "to": format_time(end), "k": k,
                                   "by": by, "mode": "approx", "error_type": error_type})
    assert r.status_code == 200, r.text
    body = r.json()
    info = body["meta"]["approx"]
    assert "fallback" not in info, info
    truth = dict(oracle.ordered(TimeRange(start, end), by))
    items = [sketches.ApproxItem(i["rank"], i["key"], i["value"], i["lower_bound"], i["upper_bound"])
             for i in body["items"]]
    _check_answer(sketches.ApproxAnswer(items, info["max_error"], info["threshold"], error_type), truth, k)
    return body


@pytest.fixture(scope="module")
def world(api):
    rnd = random.Random(1464)
    stream, oracle = unique_stream("approx-hot"), Oracle()
    now = now_ms()
    b_warm = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
    lo = max(b_warm, now - 20 * HOUR_MS)
    lo += (-lo) % MINUTE_MS
    hi = now - now % MINUTE_MS - 2 * MINUTE_MS
    assert hi - lo > 6 * HOUR_MS
    _send(api, oracle, [{"stream": stream, "key": _zipf(rnd), "ts": rnd.randrange(lo, hi),
                         "value": rnd.choice([1.0, 0.5, 2.0])} for _ in range(6000)])
    return {"rnd": rnd, "stream": stream, "oracle": oracle, "now": now, "lo": lo, "hi": hi}


def test_refresh_stores_closed_hot_hours_and_queries_read_them(api, world):
    stream, oracle, lo, hi = world["stream"], world["oracle"], world["lo"], world["hi"]
    run = _job(api, "refresh", world["now"])
    assert run["stats"]["hot_sketches"]["built"] > 0, run["stats"]
    rows = _rows(api, "SELECT granularity, bucket, rank_by FROM approx_sketches WHERE stream = %s AND tier = 'hot'",
                 stream)
    hours = {b for g, b, _ in rows if g == "1h"}
    assert {r for _, _, r in rows} == {"count", "sum"}
    first, last = lo + (-lo) % HOUR_MS, now_ms() - now_ms() % HOUR_MS
    assert set(range(first, last, HOUR_MS)) <= hours  # every closed hour holding events (none empty here)
    assert all(b + HOUR_MS <= now_ms() for b in hours)  # never the open hour
    again = _job(api, "refresh", world["now"])
    assert again["stats"]["hot_sketches"]["built"] == 0  # current versions: nothing rebuilt

    for by in ("count", "sum"):
        for error_type in sketches.ERROR_TYPES:
            body = _check(api, oracle, stream, lo, hi, 5, by, error_type)
            info = body["meta"]["approx"]
            assert info["built"] == 0 and info["stored"] >= len(range(first, hi - hi % HOUR_MS, HOUR_MS)), info
            # read exactly: only the hot minutes at the two edges
            assert info["exact"] and all(e["tier"] == "hot" for e in info["exact"]), info
            assert all(e["to"] - e["from"] < HOUR_MS for e in info["exact"]), info
    assert _check(api, oracle, stream, lo, hi, 5, "count")["meta"]["approx"]["merged_cached"] == 1
    assert any(_check(api, oracle, stream, lo, hi, 3, "sum")["meta"]["approx"]["max_error"] > 0
               for _ in range(1))  # the small sketches purge: the bounds are exercised


def test_late_events_into_a_closed_hot_hour_make_its_sketch_stale(api, world):
    rnd, stream, oracle, lo, hi = world["rnd"], world["stream"], world["oracle"], world["lo"], world["hi"]
    _check(api, oracle, stream, lo, hi, 3, "count")  # the merge of the current hours is memoised
    hour = lo + (-lo) % HOUR_MS + 2 * HOUR_MS
    late = [{"stream": stream, "key": "late-key", "ts": hour + rnd.randrange(HOUR_MS), "value": 5.0}
            for _ in range(900)]
    _send(api, oracle, late)
    for by in ("count", "sum"):
        body = _check(api, oracle, stream, lo, hi, 3, by)
        assert "late-key" in {i["key"] for i in body["items"]}, body
        assert body["meta"]["approx"]["built"] >= 1  # the stale hour rebuilt by the query
    run = _job(api, "refresh", world["now"])
    assert run["stats"]["hot_sketches"]["built"] == 0  # the query stored the hour at its new version
    body = _check(api, oracle, stream, hour, hour + HOUR_MS, 1, "count")
    assert [i["key"] for i in body["items"]][:1] == ["late-key"] and body["meta"]["approx"]["built"] == 0


def test_hot_edges_read_through_the_lists_equal_the_key_aggregate(api, world):
    stream, hi = world["stream"], world["hi"]
    hot = _resources(api)["hot"]
    pieces = [Piece(G1M, TimeRange(hi - 37 * MINUTE_MS, hi)), Piece(G1M, TimeRange(world["lo"],
                                                                                    world["lo"] + 23 * MINUTE_MS))]
    full = hot.aggregate("default", stream, pieces, "key")
    want = dict(zip(full["key"].to_pylist(), zip(full["count"].to_pylist(), full["sum"].to_pylist())))
    assert want
    for by, col in (("count", 0), ("sum", 1)):
        got = approx_fold.drained(hot, "default", stream, pieces, by)
        assert dict(zip(got["key"].to_pylist(), got[by].to_pylist())) == \
            pytest.approx({k: v[col] for k, v in want.items()}, rel=1e-12)
    empty = approx_fold.drained(hot, "default", stream, [Piece(G1M, TimeRange(hi + DAY_MS, hi + DAY_MS + 5 * MINUTE_MS))],
                                "count")
    assert empty.num_rows == 0 and np.asarray(empty["count"]).dtype == np.int64


def test_hours_that_leave_hot_lose_their_rows(api, world):
    stream, oracle, now = world["stream"], world["oracle"], world["now"]
    later = now + 2 * DAY_MS
    for name in ("flush", "refresh", "expire_hot"):
        _job(api, name, later)
    b_warm = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
    assert b_warm > world["hi"]
    _job(api, "refresh", later)
    left = _rows(api, "SELECT granularity, bucket FROM approx_sketches WHERE stream = %s AND tier = 'hot'", stream)
    assert left == []
    _check(api, oracle, stream, world["lo"], world["hi"], 5, "count")  # now warm's, still within bounds


def test_warm_minutes_are_one_run_and_a_late_event_makes_it_stale(api, world):
    """After the hours left hot: the range's minute edges are warm's, each one run sketched whole
    (memoised at its version); late events in the end run change the version: a fresh sketch."""
    rnd, stream, oracle, lo, hi = world["rnd"], world["stream"], world["oracle"], world["lo"], world["hi"]
    start = lo - lo % HOUR_MS + HOUR_MS + 17 * MINUTE_MS
    end = hi - hi % HOUR_MS - HOUR_MS + 41 * MINUTE_MS
    for by in ("count", "sum"):
        body = _check(api, oracle, stream, start, end, 5, by)
        info = body["meta"]["approx"]
        assert info["exact"] == [] and info["exact_pieces"] == 0, info  # no exact read: warm's runs
    again = _check(api, oracle, stream, start, end, 5, "count")["meta"]["approx"]
    assert again["built"] == 0 and again["merged_cached"] == 1, again
    late = [{"stream": stream, "key": "late-minute", "ts": end - 41 * MINUTE_MS + rnd.randrange(41 * MINUTE_MS),
             "value": 2.0} for _ in range(900)]  # inside the end run of minutes
    _send(api, oracle, late)
    for name in ("flush", "refresh"):
        _job(api, name, world["now"] + 2 * DAY_MS)
    for by in ("count", "sum"):
        body = _check(api, oracle, stream, start, end, 3, by)
        assert "late-minute" in {i["key"] for i in body["items"]}, body
