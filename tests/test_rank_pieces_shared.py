"""The rank pieces' (key id, value) columns shared by every router through the results cache's
Redis (router/rank_pieces.py _shared_get/_shared_put): two replicas on the same Redis and
PostgreSQL; what one read, the other's first ask takes from Redis (meta.ranking.pieces_cached),
answers equal to the raw-event oracle; a late event changes the piece versions, so the next ask
reads fresh and is still exact."""
from __future__ import annotations

import random

import pytest

from rollups.timeutil import DAY_MS, MINUTE_MS, now_ms
from tests.api_support import Oracle, check_rank, check_topk, isolated_settings, run_jobs, served_replicas, unique_stream

KEYS = [f"s{i:02d}" for i in range(40)]


@pytest.fixture(scope="module")
def replicas(settings):
    isolated = isolated_settings(settings, "rank_pieces_shared", redis_db=68)
    # whole answers are cached too (a repeated question is answered whole): every ask below differs
    isolated = isolated.model_copy(update={"results_cache_entries": 0})
    yield from served_replicas(isolated, 2)


def load_stream(api, seed: int, prefix: str, keys: list[str]) -> tuple[str, Oracle, int, int]:
    """3,000 events over 45 days (some values negative) sent to `api`, then flush, refresh,
    expire_hot and export_cold as of now: (stream, oracle, from, to) minute-aligned."""
    rnd = random.Random(seed)
    stream = unique_stream(prefix)
    now = now_ms()
    lo, hi = now - 45 * DAY_MS, now - now % MINUTE_MS - 30 * MINUTE_MS
    oracle = Oracle()
    events = [{"stream": stream, "key": rnd.choice(keys[:1 + rnd.randrange(len(keys))]),
               "ts": rnd.randrange(lo, hi), "value": rnd.choice([1.0, 2.5, -1.0])} for _ in range(3000)]
    for pos in range(0, len(events), 1000):
        r = api.post("/v1/events", json=events[pos:pos + 1000])
        assert r.status_code == 202, r.text
        oracle.add(events[pos:pos + 1000])
    run_jobs(api, ("flush", "refresh", "expire_hot", "export_cold"), now)
    return stream, oracle, lo - lo % MINUTE_MS, hi - hi % MINUTE_MS


@pytest.fixture(scope="module")
def loaded(replicas):
    return load_stream(replicas[0], 68, "rps", KEYS)


def _ranking(api, path, params) -> dict:
    r = api.get(path, params)
    assert r.status_code == 200, r.text
    return r.json()["meta"]["ranking"]


def test_a_replica_takes_the_pieces_another_read_from_redis(replicas, loaded):
    a, b = replicas
    stream, oracle, start, end = loaded
    base = {"stream": stream, "from": start, "to": end, "by": "sum"}
    first = _ranking(a, "/v1/query/rank", {**base, "key": "s00"})
    assert first["method"] == "merge" and first["pieces_cached"] == 0, first
    other = _ranking(b, "/v1/query/rank", {**base, "key": "s03"})  # another key: not the whole answer
    assert other["method"] == "merge" and other["pieces_cached"] > 0, other
    for api in (a, b):
        for key in ("s00", "s03", "s17", "absent"):
            check_rank(api, oracle, stream, start, end, key, "sum", 1)
        for k in (3, 12):  # negative values: TA (bounds clamped at 0) or the id merge on the same pieces
            check_topk(api, oracle, stream, start, end, k, "sum")
    topk = _ranking(b, "/v1/query/topk", {**base, "k": 5})
    assert topk["method"] == "threshold" or (topk["method"] == "merge" and topk["pieces_cached"] > 0), topk


def test_a_late_event_reads_the_changed_piece_fresh_on_every_replica(replicas, loaded):
    a, b = replicas
    stream, oracle, start, end = loaded
    late = [{"stream": stream, "key": "s39", "ts": end - 3 * DAY_MS - 7 * MINUTE_MS, "value": 500.0}]
    r = a.post("/v1/events", json=late)
    assert r.status_code == 202, r.text
    oracle.add(late)
    run_jobs(a, ("flush", "refresh"), timeout_s=300)
    for api in (b, a):
        check_rank(api, oracle, stream, start, end, "s39", "sum", 1)
        check_topk(api, oracle, stream, start, end, 4, "sum")
