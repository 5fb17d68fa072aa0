"""A fresh router worker's warm-up (router/warmup.py), against real Redis, PostgreSQL and cold files.

The warm-up runs the ordinary handlers for the busiest stream, so what it leaves is what any read
leaves (caches keyed by data version): a fresh worker's first rank of a range it never saw takes
closed pieces the warm-up read, and every answer still equals the raw-event oracle. It never
stops a worker: past its budget it goes on in the background while the worker serves."""
from __future__ import annotations

import time

import redis

from rollups.timeutil import DAY_MS, MIN_MS, MINUTE_MS, floor_to, now_ms
from router import warmup
from tests.api_support import ApiServer, check_rank, check_topk, isolated_settings, served
from tests.test_rank_pieces_shared import _ranking, load_stream
from tiers.catalog import CatalogSnapshot

import pytest

KEYS = [f"w{i:02d}" for i in range(30)]


@pytest.fixture(scope="module")
def isolated(settings):
    s = isolated_settings(settings, "warmup", redis_db=124)
    return s.model_copy(update={"warmup_ms": 0})  # the fixture's own app does not warm up


@pytest.fixture(scope="module")
def api(isolated):
    yield from served(isolated)


@pytest.fixture(scope="module")
def loaded(api):
    return load_stream(api, 124, "wup", KEYS)


def _empty_shared_cache(settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        names = list(client.scan_iter("tierstore:cache:*", count=1000))
        if names:
            client.delete(*names)
    finally:
        client.close()


def _fresh_worker(isolated):
    from tierstore.app import build_app

    return build_app(isolated, migrate=False)


def test_a_fresh_worker_warms_the_pieces_its_first_rank_reads(isolated, api, loaded):
    from tierstore.app import close_app

    stream, oracle, start, end = loaded
    _empty_shared_cache(isolated)
    cold = _fresh_worker(isolated)  # no warm-up: its first rank reads every piece
    warm = _fresh_worker(isolated)
    try:
        stats = warmup.run(warm)
        assert stats["stream"] == f"default/{stream}" and stats["failed"] == 0, stats
        assert stats["queries"] >= 15, stats
        edge = floor_to(now_ms(), MINUTE_MS) - 3 * MINUTE_MS  # not a range the warm-up asked
        params = {"stream": stream, "from": edge - 7 * DAY_MS, "to": edge, "key": KEYS[0], "by": "count"}
        _empty_shared_cache(isolated)  # what the warm-up read is in the warmed worker only
        servers = [ApiServer(cold), ApiServer(warm)]
        try:
            warmed = _ranking(servers[1], "/v1/query/rank", params)
            _empty_shared_cache(isolated)  # ... and not in the other worker's reach either
            unwarmed = _ranking(servers[0], "/v1/query/rank", {**params, "key": KEYS[1]})
            assert unwarmed["method"] == warmed["method"] == "merge", (unwarmed, warmed)
            assert unwarmed["pieces_cached"] == 0 and warmed["pieces_cached"] > 0, (unwarmed, warmed)
            for server in servers:
                for key in (KEYS[0], KEYS[7], "absent"):
                    check_rank(server, oracle, stream, edge - 7 * DAY_MS, edge, key, "count", 1)
                    check_rank(server, oracle, stream, start, end, key, "sum", 0)
                check_topk(server, oracle, stream, edge - 7 * DAY_MS, edge, 5, "sum")
                check_topk(server, oracle, stream, start, end, 10, "count")
        finally:
            for server in servers:
                server.close()
    finally:
        close_app(cold)
        close_app(warm)


def test_past_its_budget_the_warm_up_goes_on_while_the_worker_serves(isolated, api, loaded):
    from tierstore.app import close_app

    stream, oracle, start, end = loaded
    app = _fresh_worker(isolated)
    try:
        t = time.perf_counter()
        assert warmup.warm_up(app, 1) is None  # 1 ms: returned before the queries ended
        assert time.perf_counter() - t < 1.0
        server = ApiServer(app)
        try:
            check_topk(server, oracle, stream, start, end, 10, "sum")
        finally:
            server.close()
        assert warmup.warm_up(app, 0) is None  # off
    finally:
        close_app(app)


def test_an_instance_without_streams_has_nothing_to_warm(settings):
    from tierstore.app import close_app

    s = isolated_settings(settings, "warmup_empty", redis_db=125)
    from tierstore.app import build_app

    app = build_app(s)
    try:
        assert warmup.run(app)["stream"] is None and warmup.run(app)["queries"] == 0
    finally:
        close_app(app)


def test_cold_and_archive_months_are_asked_only_where_those_tiers_own_data():
    now = 1_800_000_000_000
    fresh = CatalogSnapshot(1, MIN_MS, MIN_MS, now - DAY_MS)  # nothing exported or archived yet
    aged = CatalogSnapshot(2, now - 400 * DAY_MS, now - 7 * DAY_MS, now - DAY_MS)
    spans = {(q["from"], q["to"]) for _, q in warmup.queries(fresh, now)}
    assert all(lo >= now - 366 * DAY_MS for lo, _ in spans), spans
    spans = {(q["from"], q["to"]) for _, q in warmup.queries(aged, now)}
    assert (now - 7 * DAY_MS - 30 * DAY_MS, now - 7 * DAY_MS) in spans
    assert (now - 400 * DAY_MS - 30 * DAY_MS, now - 400 * DAY_MS) in spans
    paths = [p for p, _ in warmup.queries(aged, now)]
    assert paths.count("/v1/query/rank") == 4 and paths.count("/v1/query/series") == 1


def test_a_worker_started_on_an_empty_instance_warms_up_once_data_comes(settings, monkeypatch):
    from tierstore.app import build_app, close_app

    monkeypatch.setattr(warmup, "RECHECK_S", 0.2)
    s = isolated_settings(settings, "warmup_later", redis_db=126)
    app = build_app(s)
    try:
        first = warmup.warm_up(app, 10_000)
        assert first is not None and first["stream"] is None, first
        server = ApiServer(app)
        try:
            now = now_ms()
            r = server.post("/v1/events", json=[{"stream": "later", "key": f"k{i % 7}", "ts": now - i * 1000,
                                                 "value": 1.5} for i in range(50)])
            assert r.status_code == 202, r.text
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (app.extensions.get(warmup.EXTENSION) or {}).get("stream") is None:
                time.sleep(0.2)
            again = app.extensions.get(warmup.EXTENSION)
            assert again["stream"] == "default/later" and again["queries"] >= 15 and again["failed"] == 0, again
        finally:
            server.close()
    finally:
        close_app(app)
