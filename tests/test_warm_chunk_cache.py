"""router/ranked_chunks.py: warm's sorted and random accesses of a top-K through the shared results
cache. A repeated range whose whole answer misses (its hot part moved) does not open warm's
access at all; a late event into warm changes warm's data version, and the answer follows it.
Every answer equals the raw events'."""
from __future__ import annotations

import random

import pytest

from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, now_ms, parse_time
from router.context import EXTENSION
from tests.api_support import (Oracle, check_topk, check_topk_after_hot_moves, counted_opens, isolated_settings,
                               run_job, served, unique_stream)


@pytest.fixture(scope="module")
def api(settings):
    yield from served(isolated_settings(settings, "warm_chunk_cache", redis_db=66))


def _settle(api):
    for job in ("flush", "refresh"):
        assert run_job(api, job)["status"] == "done", job


def test_repeated_range_reads_warm_from_the_cache_until_warm_changes(api):
    rnd = random.Random(5)
    ctx = api.app.extensions[EXTENSION]
    with counted_opens(ctx.tiers, ("warm",)) as opened:
        stream = unique_stream("wcc")
        bounds = {k: parse_time(v) for k, v in api.get("/v1/tiers").json()["boundaries"].items()}
        hi = now_ms() - now_ms() % MINUTE_MS - MINUTE_MS
        lo = bounds["warm"] - 12 * DAY_MS
        keys = [f"k{i:02d}" for i in range(60)]
        oracle = Oracle()
        ev = [{"stream": stream, "key": rnd.choices(keys, [1 / (i + 1) for i in range(60)])[0],
               "ts": rnd.randrange(lo, hi), "value": rnd.choice([1.0, 2.0, 0.5])} for _ in range(3000)]
        assert api.post("/v1/events", json=ev).status_code == 202
        oracle.add(ev)
        _settle(api)
        start, end = lo + 7 * MINUTE_MS, hi
        for by in ("sum", "count"):
            check_topk(api, oracle, stream, start, end, 10, by)
        first = opened["warm"]
        assert first >= 1
        # a new event in hot: the whole answer misses, warm's part does not
        check_topk_after_hot_moves(api, oracle, stream, start, end,
                                   {"stream": stream, "key": "k05", "ts": hi - MINUTE_MS, "value": 40.0})
        assert opened["warm"] == first, "warm's access was opened for a repeated range"
        # a late event into warm: its version changes, warm is read again
        late = [{"stream": stream, "key": "k59", "ts": bounds["warm"] - 3 * DAY_MS + HOUR_MS, "value": 5000.0}]
        assert api.post("/v1/events", json=late).status_code == 202
        oracle.add(late)
        _settle(api)
        for by in ("sum", "count"):
            check_topk(api, oracle, stream, start, end, 10, by)
        assert opened["warm"] > first
        top = api.get("/v1/query/topk", {"stream": stream, "from": start, "to": end, "k": 1, "by": "sum"}).json()
        assert top["items"][0]["key"] == "k59"


def _drain(access) -> dict[str, float]:
    got: dict[str, float] = {}
    while not access.exhausted:
        keys, values = access.sorted_access(500)
        for k, v in zip(keys, values):
            got[k] = got.get(k, 0.0) + float(v)
    return got


def test_warm_edge_lists_are_cached_by_data_version(api):
    """tiers/warm_edges.py: an edge piece (1m buckets) is aggregated once per data version; a late
    event into it changes the version, and the next access reads the new rows."""
    from rollups.cover import Piece
    from rollups.timeutil import G1H, G1M, TimeRange

    rnd = random.Random(11)
    warm = api.app.extensions[EXTENSION].tiers["warm"]
    stream = unique_stream("wedge")
    b_warm = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
    a = b_warm - b_warm % HOUR_MS - 5 * HOUR_MS
    edge = TimeRange(a, a + 30 * MINUTE_MS)
    pieces = [Piece(G1M, edge), Piece(G1H, TimeRange(a + HOUR_MS, a + 3 * HOUR_MS))]
    ev = [{"stream": stream, "key": f"k{rnd.randrange(40):02d}", "ts": rnd.randrange(a, a + 3 * HOUR_MS),
           "value": 1.0} for _ in range(2000)]
    assert api.post("/v1/events", json=ev).status_code == 202
    _settle(api)

    def expected(events):
        out: dict[str, float] = {}
        for e in events:
            if edge.start <= e["ts"] < edge.end or a + HOUR_MS <= e["ts"] < a + 3 * HOUR_MS:
                out[e["key"]] = out.get(e["key"], 0.0) + 1.0
        return out

    for _ in range(2):  # the second open takes the edge from the cache
        access = warm.ranked_access("default", stream, pieces, "count")
        try:
            assert _drain(access) == expected(ev)
        finally:
            access.close()
    cached = [k for k in warm._edge_cache._data if k[1:4] == ("1m", edge.start, edge.end)]
    assert len(cached) >= 1
    late = [{"stream": stream, "key": "late-key", "ts": edge.start + 7 * MINUTE_MS, "value": 1.0}] * 5
    assert api.post("/v1/events", json=late).status_code == 202
    _settle(api)
    access = warm.ranked_access("default", stream, pieces, "count")
    try:
        got = _drain(access)
    finally:
        access.close()
    assert got == expected(ev + late) and got["late-key"] == 5.0
