"""The scheduler's prefill of the rank path's shared piece cache (scheduler/rank_prefill.py, the
watch list router/rank_watch.py) and the shared key dictionary (router/key_dictionary.py).

Two replicas on the same Redis and PostgreSQL: a range one replica was asked is read into Redis
by the next refresh, so the OTHER replica's first ask takes its pieces from Redis
(meta.ranking.pieces_cached > 0) although nobody read them since the cache was emptied; a late
event after the prefill changes the pieces' versions, so no replica serves the prefilled (now
stale) columns: every answer equals the raw-event oracle. A shared dictionary entry of another
database behind the same stream id is refused."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import redis

from rollups.timeutil import DAY_MS, MINUTE_MS, format_time
from tierstore.importer import run_import
from tests.test_rank_pieces_shared import _ranking, load_stream
from tests.api_support import check_rank, check_topk, isolated_settings, run_job, served_replicas

KEYS = [f"p{i:02d}" for i in range(40)]


@pytest.fixture(scope="module")
def isolated(settings):
    s = isolated_settings(settings, "rank_prefill", redis_db=87)
    # whole answers are cached too (a repeated question is answered whole): every ask below differs
    # every hot stream is large enough for the standing "last 24 h" prefill
    return s.model_copy(update={"results_cache_entries": 0, "standing_min_keys": 1})


@pytest.fixture(scope="module")
def replicas(isolated):
    yield from served_replicas(isolated, 2)


@pytest.fixture(scope="module")
def loaded(replicas):
    return load_stream(replicas[0], 87, "rpf", KEYS)


def _drop_pieces(isolated) -> int:
    """Empty the shared results cache (not the watch list)."""
    client = redis.Redis.from_url(isolated.redis_url)
    try:
        names = list(client.scan_iter("tierstore:cache:*", count=1000))
        return client.delete(*names) if names else 0
    finally:
        client.close()


def test_a_watched_range_is_prefilled_for_another_replicas_first_ask(isolated, replicas, loaded):
    a, b = replicas
    stream, oracle, start, end = loaded
    base = {"stream": stream, "from": start, "to": end, "by": "sum"}
    assert _ranking(a, "/v1/query/rank", {**base, "key": "p00"})["method"] == "merge"  # watched now
    assert _drop_pieces(isolated) > 0
    run = run_job(a, "refresh", timeout_s=300)
    assert run["status"] == "done", run
    done = run["stats"]["rank_prefill"]
    assert done["watched"] >= 1 and done["read"] > 0 and done["failed"] == 0, done
    first = _ranking(b, "/v1/query/rank", {**base, "key": "p03"})  # b never read a piece
    assert first["method"] == "merge" and first["pieces_cached"] > 0, first
    for api in (b, a):
        for key in ("p00", "p03", "p17", "absent"):
            check_rank(api, oracle, stream, start, end, key, "sum", 1)
        check_topk(api, oracle, stream, start, end, 5, "sum")


def test_a_late_event_or_an_import_after_the_prefill_is_never_served_stale(isolated, replicas, loaded, tmp_path):
    a, b = replicas
    stream, oracle, start, end = loaded
    base = {"stream": stream, "from": start, "to": end, "by": "sum"}
    run = run_job(a, "refresh", timeout_s=300)  # prefilled under the current versions
    assert run["status"] == "done" and run["stats"]["rank_prefill"]["failed"] == 0, run
    late = [{"stream": stream, "key": "p39", "ts": end - 3 * DAY_MS - 7 * MINUTE_MS, "value": 900.0}]
    r = a.post("/v1/events", json=late)
    assert r.status_code == 202, r.text
    oracle.add(late)
    # and an import into a sealed (cold) day: rewrites the day's files, so cold's version changes
    old = [{"stream": stream, "key": "p38", "ts": start + 2 * DAY_MS + 11 * MINUTE_MS, "value": 700.0}]
    path = tmp_path / "old.ndjson"
    path.write_text("".join(json.dumps({**e, "ts": format_time(e["ts"])}) + "\n" for e in old))
    assert run_import(isolated, [path], progress=False, tenant="default")["cold"] == 1
    oracle.add(old)
    run = run_job(a, "flush", timeout_s=300)  # the late events reach warm's rollups; no prefill yet
    assert run["status"] == "done", run
    for api in (b, a):
        check_rank(api, oracle, stream, start, end, "p39", "sum", 1)
        check_rank(api, oracle, stream, start, end, "p38", "sum", 1)
        check_topk(api, oracle, stream, start, end, 4, "sum")
    _drop_pieces(isolated)
    run = run_job(b, "refresh", timeout_s=300)  # prefilled again, under the new versions
    assert run["status"] == "done", run
    for api in (a, b):
        check_rank(api, oracle, stream, start, end, "p12", "sum", 2)
    assert _ranking(b, "/v1/query/rank", {**base, "key": "p21"})["pieces_cached"] > 0


def test_a_shared_dictionary_of_another_database_is_refused(isolated, replicas, loaded):
    from router import key_dictionary
    from router.cache import ResultsCache
    from tierstore.wiring import open_resources

    stream = loaded[0]
    cache = ResultsCache.from_settings(isolated)
    with open_resources(isolated) as res:
        warm = res["warm"]
        with warm.pool.connection() as conn:
            (sid,) = conn.execute("SELECT id FROM streams WHERE stream = %s", (stream,)).fetchone()
        ids, keys = key_dictionary._copy(warm, sid)
        assert len(ids) == len(set(keys.to_pylist())) > 0
        # the same ids under other strings (another database behind the same stream id)
        wrong = pa.array([f"x{k}" for k in keys.to_pylist()], pa.string())
        key_dictionary._put_shared(cache, sid, ids, wrong)
        assert key_dictionary._get_shared(cache, warm, sid) is None
        key_dictionary._put_shared(cache, sid, ids, keys)
        got = key_dictionary._get_shared(cache, warm, sid)
        assert got is not None and got[1].to_pylist() == keys.to_pylist()
        d = key_dictionary.StreamDictionary()
        d.set(ids[::-1].copy(), pa.array(keys.to_pylist()[::-1], pa.string()))
        few = pa.array([keys[0].as_py(), "nope"], pa.string())  # probed the small way
        assert d.ids_of(few).tolist() == [int(ids[0]), -1]
        many = pa.array(keys.to_pylist() * 10 + ["nope"], pa.string())
        assert d.ids_of(many).tolist() == ids.tolist() * 10 + [-1]
        names, found = d.names_of(np.array([ids[-1], 10**12], np.int64))
        assert names.to_pylist() == [keys[-1].as_py(), None] and found.tolist() == [True, False]
    cache.close()


def test_the_last_24_hours_of_a_hot_stream_are_prefilled_before_any_ask(isolated, replicas):
    """A standing range (scheduler/rank_prefill.standing): nobody asked this stream, yet after
    compact_hot the other replica's very first "last 24 h" rank takes its closed hours from Redis."""
    import random

    from rollups.timeutil import HOUR_MS, now_ms
    from tests.api_support import Oracle, unique_stream

    a, b = replicas
    rnd, stream, oracle = random.Random(88), unique_stream("rps24"), Oracle()
    now = now_ms()  # 1,500 events over the last 23 hours: hot's, in a stream nobody asked
    events = [{"stream": stream, "key": rnd.choice(KEYS[:1 + rnd.randrange(len(KEYS))]),
               "ts": rnd.randrange(now - 23 * HOUR_MS, now - 30 * MINUTE_MS), "value": rnd.choice([1.0, 2.5])}
              for _ in range(1500)]
    r = a.post("/v1/events", json=events)
    assert r.status_code == 202, r.text
    oracle.add(events)
    client = redis.Redis.from_url(isolated.redis_url)
    try:
        client.delete("tierstore:rank_watch")
    finally:
        client.close()
    _drop_pieces(isolated)
    run = run_job(a, "compact_hot", timeout_s=300)
    assert run["status"] == "done", run
    done = run["stats"].get("rank_prefill", {})  # absent when nothing was prefilled
    assert done.get("read", 0) > 0 and done["failed"] == 0, done
    end = now_ms() // MINUTE_MS * MINUTE_MS
    start = end - DAY_MS
    for by in ("count", "sum"):
        first = _ranking(b, "/v1/query/rank", {"stream": stream, "from": start, "to": end, "by": by, "key": "p01"})
        assert first["method"] == "merge" and first["pieces_cached"] > 0, first
        for key in ("p00", "p01", "p17", "absent"):
            check_rank(b, oracle, stream, start, end, key, by, 1)
