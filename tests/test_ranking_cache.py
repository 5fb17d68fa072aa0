"""Whole top-K and rank answers of the threshold path in the shared results cache
(router/ranking_cache.py), through HTTP on real Redis, PostgreSQL and S3: a repeated query across
hot, warm, cold and archive is answered from the cache (on a second router instance too), equal
to the raw-event oracle, and every change to a piece it read — a late event into warm, an event
into hot, a flush and refresh, an export to cold — makes the next answer a fresh, exact one.
"""
from __future__ import annotations

import random
import re

import pytest

from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, TimeRange, format_time, now_ms, parse_time
from tests.api_support import (ApiServer, Oracle, counted_opens, isolated_settings, query_range, run_jobs,
                               served_replicas, unique_stream)
from tierstore.app import build_app, close_app

KEYS = [f"k{i:02d}" for i in range(30)] + ["é", "🎵", "a b"]
VALUES = [1.0, 1.0, 2.0, 0.5, 3.0, 10.0]
DAYS = 430  # below now - cold_age (365 d): the archive holds data too


@pytest.fixture(scope="module")
def base(settings):
    return isolated_settings(settings, "ranking_cache", redis_db=2)


@pytest.fixture(scope="module")
def replicas(base):
    """Two router instances (two build_app) on the same Redis and PostgreSQL."""
    yield from served_replicas(base)


def send(api: ApiServer, oracle: Oracle, batch: list[dict]) -> None:
    for pos in range(0, len(batch), 2000):
        part = batch[pos:pos + 2000]
        r = api.post("/v1/events", json=part)
        assert r.status_code == 202, r.text
        oracle.add(part)


def events(rnd: random.Random, stream: str, start: int, end: int, n: int) -> list[dict]:
    # Zipf-like keys: a clear head, so the threshold algorithm stops early
    return [{"stream": stream, "key": KEYS[min(int(rnd.paretovariate(1.2)) - 1, len(KEYS) - 1)],
             "ts": rnd.randrange(start, end), "value": rnd.choice(VALUES)} for _ in range(n)]


def job(api: ApiServer, name: str, as_of: str | None = None) -> None:
    run_jobs(api, name, as_of)


@pytest.fixture(scope="module")
def loaded(replicas):
    """A stream over 430 days moved through every tier (flush, refresh, expire_hot, export_cold,
    archive), and a range over all four that ends in the past."""
    a = replicas[0]
    rnd = random.Random(10)
    stream = unique_stream("rcache")
    oracle = Oracle()
    now = now_ms()
    lo, hi = now - DAYS * DAY_MS, now - now % MINUTE_MS - 10 * MINUTE_MS
    send(a, oracle, events(rnd, stream, lo, hi, 6000))
    as_of = format_time(now)
    for name in ("flush", "refresh", "expire_hot", "export_cold", "archive"):
        job(a, name, as_of)
    return stream, oracle, TimeRange(lo - lo % MINUTE_MS, hi)


def boundaries(api: ApiServer) -> dict[str, int]:
    return {t: parse_time(v) for t, v in api.get("/v1/tiers").json()["boundaries"].items() if v}


def hits(api: ApiServer) -> float:
    """tierstore_results_cache_hits summed over layers, from the instance's /metrics."""
    text = api.get("/metrics").text
    return sum(float(v) for v in re.findall(r'^tierstore_results_cache_hits_total\{[^}]*\} (\S+)$', text, re.M))


def topk(api: ApiServer, oracle: Oracle, stream: str, rng: TimeRange, k: int, by: str) -> dict:
    body = api.get("/v1/query/topk", {"stream": stream, "from": rng.start, "to": rng.end, "k": k, "by": by}).json()
    want = oracle.ordered(query_range(rng.start, rng.end), by)[:k]
    got = [(i["key"], i["value"]) for i in body["items"]]
    assert [g[0] for g in got] == [w[0] for w in want], (got[:10], want[:10])
    assert all(abs(g[1] - w[1]) <= 1e-9 * max(1.0, abs(w[1])) for g, w in zip(got, want)), (got, want)
    assert not body["meta"]["partial"]
    return body


def rank(api: ApiServer, oracle: Oracle, stream: str, rng: TimeRange, key: str, by: str, around: int = 2) -> dict:
    body = api.get("/v1/query/rank", {"stream": stream, "from": rng.start, "to": rng.end, "key": key, "by": by,
                                      "around": around}).json()
    ordered = oracle.ordered(query_range(rng.start, rng.end), by)
    keys = [k for k, _ in ordered]
    assert body["total_keys"] == len(ordered), body
    if key not in keys:
        assert body["rank"] is None, body
    else:
        i = keys.index(key)
        assert body["rank"] == i + 1 and abs(body["value"] - ordered[i][1]) <= 1e-9 * max(1.0, ordered[i][1]), body
        near = ordered[max(0, i - around):i + around + 1]
        assert [n["key"] for n in body["around"]] == [k for k, _ in near], (body["around"], near)
    return body


def from_cache(body: dict) -> bool:
    meta = body["meta"]
    cached = meta["ranking"]["cached"]
    assert all(s["cached"] == cached for s in meta["segments"]), meta["segments"]
    return cached


def both(apis, oracle, stream, rng, *, k=10, by="count", key="k03") -> list[bool]:
    """top-K and rank on each instance in turn; whether each answer came from the cache."""
    out = []
    for api in apis:
        out.append(from_cache(topk(api, oracle, stream, rng, k, by)))
        out.append(from_cache(rank(api, oracle, stream, rng, key, by)))
    return out


def test_a_repeated_answer_across_four_tiers_comes_from_the_shared_cache(replicas, loaded):
    a, b = replicas
    stream, oracle, rng = loaded
    assert {s["tier"] for s in topk(a, oracle, stream, rng, 5, "sum")["meta"]["segments"]} == \
        {"archive", "cold", "warm", "hot"}
    before = hits(b)
    for by in ("count", "sum"):
        first = topk(a, oracle, stream, rng, 10, by)
        assert first["meta"]["ranking"]["method"] == "threshold"
        assert not from_cache(first)  # the by=sum top-5 above is another answer
        again = topk(b, oracle, stream, rng, 10, by)  # the other instance: through Redis
        assert from_cache(again) and again["items"] == first["items"]
        assert again["meta"]["ranking"]["method"] == "threshold"
        r1 = rank(a, oracle, stream, rng, "k05", by)
        r2 = rank(b, oracle, stream, rng, "k05", by)
        assert not from_cache(r1) and from_cache(r2)
        assert (r2["rank"], r2["value"], r2["total_keys"], r2["around"]) == \
            (r1["rank"], r1["value"], r1["total_keys"], r1["around"])
    assert hits(b) >= before + 4
    assert from_cache(topk(a, oracle, stream, rng, 10, "count"))  # the first instance's own LRU


def test_one_tier_answers_ranked_in_place_come_from_the_shared_cache(replicas, loaded):
    """By count, a range one tier holds is ranked in place by that tier (hot's script, cold's and
    archive's own top-K); archive's (and cold's) answers are cached too, on the other instance as
    well; hot's never are, and an event into its range is answered fresh and exact."""
    a, b = replicas
    stream, oracle, rng = loaded
    archive_only = TimeRange(rng.start, rng.start + 10 * DAY_MS)
    first = topk(a, oracle, stream, archive_only, 10, "count")
    assert {s["tier"] for s in first["meta"]["segments"]} == {"archive"}, first["meta"]["segments"]
    assert first["meta"]["ranking"]["method"] == "in_place" and not from_cache(first)
    again = topk(b, oracle, stream, archive_only, 10, "count")
    assert from_cache(again) and again["items"] == first["items"]
    r1, r2 = rank(a, oracle, stream, archive_only, "k03", "count"), rank(b, oracle, stream, archive_only, "k03", "count")
    assert not from_cache(r1) and from_cache(r2), (r1["meta"]["ranking"], r2["meta"]["ranking"])
    assert r2["meta"]["ranking"]["method"] == r1["meta"]["ranking"]["method"]
    # hot ranks in place but is never served from the cache (tests/test_hot_expiry.py: a bucket
    # its safety TTL deleted must be reported by its script on every read)
    hot_only = TimeRange(rng.end - 3 * HOUR_MS, rng.end)
    for api in (a, b, a):
        body = topk(api, oracle, stream, hot_only, 10, "count")
        assert body["meta"]["ranking"]["method"] == "in_place" and not from_cache(body)
    send(a, oracle, [{"stream": stream, "key": "k29", "ts": hot_only.end - HOUR_MS, "value": 1.0}] * 40)
    fresh = topk(b, oracle, stream, hot_only, 10, "count")
    assert not from_cache(fresh) and "k29" in [i["key"] for i in fresh["items"]]
    assert not from_cache(rank(a, oracle, stream, hot_only, "k29", "count"))


def test_every_change_to_a_piece_is_answered_fresh_and_exact(replicas, loaded):
    a, b = replicas
    stream, oracle, rng = loaded
    rnd = random.Random(11)
    q = {"by": "sum", "key": "k20"}

    def settled() -> None:  # both instances hold the answers (and they are exact)
        both(replicas, oracle, stream, rng, **q)
        assert all(both(replicas, oracle, stream, rng, **q))

    def fresh_then_cached(first: ApiServer, second: ApiServer) -> None:
        assert not any(both([first], oracle, stream, rng, **q))
        assert all(both([second], oracle, stream, rng, **q))

    settled()
    bounds = boundaries(a)
    # a late event into warm: acknowledged (in hot's log, no tier shows it yet), flushed, refreshed
    late = [{"stream": stream, "key": "k20", "ts": bounds["warm"] - 3 * HOUR_MS, "value": 500.0} for _ in range(60)]
    send(b, oracle, late[:1])
    oracle.events.pop()  # not in warm's data yet: the cached answer is still the tiers' answer
    settled()
    oracle.add(late[:1])
    send(b, oracle, late[1:])
    job(a, "flush")
    fresh_then_cached(b, a)
    job(b, "refresh")  # changes a version only where rollups changed: fresh or not, exact
    settled()
    # an event into hot (a closed hour inside the range)
    send(a, oracle, [{"stream": stream, "key": "k20", "ts": rng.end - 2 * HOUR_MS, "value": 1.0}] * 80)
    fresh_then_cached(b, a)
    # the clock moves on: expire_hot and export_cold move the boundaries, new cold files
    later = format_time(now_ms() + 2 * DAY_MS)
    for name in ("flush", "refresh"):
        job(b, name)
    settled()
    for name in ("expire_hot", "export_cold"):
        job(a, name, later)
    moved = boundaries(a)
    assert moved["cold"] > bounds["cold"], (bounds, moved)
    fresh_then_cached(b, a)
    for _ in range(3):  # random sub-ranges after all of it: each exact, twice
        s, e = sorted(rnd.sample(range(rng.start // MINUTE_MS, rng.end // MINUTE_MS), 2))
        sub = TimeRange(s * MINUTE_MS, e * MINUTE_MS)
        kw = {"k": rnd.choice([1, 5, 20]), "by": rnd.choice(["count", "sum"]), "key": rnd.choice(KEYS[:6])}
        both(replicas, oracle, stream, sub, **kw)
        assert all(both(replicas, oracle, stream, sub, **kw))


def test_a_tier_without_versions_is_never_cached(replicas, loaded, base):
    stream, oracle, rng = loaded
    app = build_app(base, migrate=False)
    warm = app.extensions["tierstore"].planner.tiers["warm"]
    warm.capabilities = warm.capabilities - {"data_versions"}  # this instance's warm tier only
    server = ApiServer(app)
    try:
        with counted_opens(app.extensions["tierstore"].planner.tiers, ("warm",)) as opened:
            for n in range(2):
                body = topk(server, oracle, stream, rng, 10, "count")
                assert not from_cache(body) and body["meta"]["ranking"]["method"] == "threshold"
                # warm's access opened on every ask (cold's and the archive's may come from the
                # cache: they have versions, router/ranked_chunks.py)
                assert opened["warm"] == n + 1
        for _ in range(2):  # (its distinct-key count reads cold and archive pieces through their cache)
            assert not from_cache(rank(server, oracle, stream, rng, "k02", "count"))
        # a range without warm is cached as usual on the same instance
        cold_only = TimeRange(rng.start, rng.start + 30 * DAY_MS)
        topk(server, oracle, stream, cold_only, 10, "sum")
        assert from_cache(topk(server, oracle, stream, cold_only, 10, "sum"))
    finally:
        server.close()
        close_app(app)
