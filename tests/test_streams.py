"""The stream registry (issue 13, part 3) through the real API with auth on: PUT/GET/DELETE and the
list, their validation, value bounds enforced at ingest (also while PostgreSQL is down), 404
stream_not_found for a stream that never existed versus 200 for an empty range of a known one, a
legal hold refusing a delete, the audit log, and tenant isolation."""
from __future__ import annotations

import random
import time

import psycopg
import pytest

from rollups.timeutil import HOUR_MS, MINUTE_MS, floor_to, format_time, now_ms
from tests.api_support import ApiServer, Oracle, isolated_settings, unique_stream
from tests.outage import Outage
from tierstore.app import build_app, close_app

ALL = ["ingest", "query", "admin"]
KEYS = {"admin-a": {"tenant": "ta", "scopes": ALL}, "user-a": {"tenant": "ta", "scopes": ["ingest", "query"]},
        "admin-b": {"tenant": "tb", "scopes": ALL}}


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def st_settings(settings):
    return isolated_settings(settings, "streams", redis_db=48).model_copy(update={
        "auth_enabled": True, "api_keys": KEYS})


@pytest.fixture(scope="module")
def api(st_settings):
    app = build_app(st_settings)
    server = ApiServer(app)
    yield server
    server.close()
    close_app(app)


def put(api, stream, body, key="admin-a"):
    return api.request("PUT", f"/v1/streams/{stream}", json=body, headers=auth(key))


def get(api, path, params=None, key="admin-a"):
    return api.get(path, params, headers=auth(key))


def ingest(api, events, key="admin-a"):
    return api.post("/v1/events", json=events, headers=auth(key))


def recent(n: int, stream: str, rnd: random.Random, value=lambda r: 1.0) -> list[dict]:
    now = now_ms()
    return [{"stream": stream, "key": f"k{rnd.randint(0, 9)}", "ts": rnd.randrange(now - HOUR_MS, now - MINUTE_MS),
             "value": value(rnd)} for _ in range(n)]


def audit_actions(st_settings, tenant: str, target: str) -> list[str]:
    with psycopg.connect(st_settings.postgres_url) as conn:
        return [r[0] for r in conn.execute("SELECT action FROM audit_log WHERE tenant = %s AND target = %s ORDER BY id",
                                           (tenant, target))]


def test_put_get_replace_and_audit(api, st_settings):
    stream = unique_stream("reg")
    body = {"description": "song plays", "unit": "plays", "value_min": 0, "value_max": 100,
            "retention": "400d", "time_zone": "Europe/Paris"}
    r = put(api, stream, body)
    assert r.status_code == 201, r.text
    got = get(api, f"/v1/streams/{stream}").json()
    assert {k: got[k] for k in body} == {**body, "value_min": 0.0, "value_max": 100.0}
    assert got["registered"] and got["events"] == 0 and [t["name"] for t in got["tiers"]] == ["archive", "cold",
                                                                                               "warm", "hot"]
    r = put(api, stream, {"description": "plays", "retention": None})
    assert r.status_code == 200 and r.json()["value_min"] is None and r.json()["retention"] is None
    assert r.json()["time_zone"] is None and r.json()["created"] == got["created"]
    assert audit_actions(st_settings, "ta", stream) == ["stream.create", "stream.update"]
    assert get(api, f"/v1/streams/{stream}", key="user-a").status_code == 200  # query scope reads
    assert put(api, stream, body, key="user-a").status_code == 403  # writes need admin


@pytest.mark.parametrize("body, field", [
    ({"time_zone": "Mars/Olympus"}, "time_zone"), ({"time_zone": "../etc/passwd"}, "time_zone"),
    ({"retention": "400"}, "retention"), ({"retention": "forever"}, "retention"), ({"retention": 400}, "retention"),
    ({"value_min": 5, "value_max": 1}, "body"), ({"value_max": 2e15}, "value_max"), ({"value_min": -1e16}, "value_min"),
    ({"colour": "red"}, "colour"), ({"unit": 3}, "unit"),
])
def test_put_refuses_bad_descriptions(api, body, field):
    stream = unique_stream("bad")
    r = put(api, stream, body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "validation_failed", r.text
    assert any(d["field"] == field or d["field"].startswith(field) for d in r.json()["error"]["details"]), r.text
    assert get(api, f"/v1/streams/{stream}").status_code == 404  # nothing was stored


def test_put_refuses_a_bad_stream_name(api):
    r = put(api, "Bad Name", {})
    assert r.status_code in (400, 404) and r.json()["error"]["code"] in ("validation_failed", "not_found")


def test_bounds_are_enforced_at_ingest(api):
    stream, rnd = unique_stream("bnd"), random.Random(1)
    assert put(api, stream, {"value_min": 0, "value_max": 100}).status_code == 201
    good = recent(20, stream, rnd, lambda r: r.uniform(0, 100))
    batch = good[:5] + [{**good[0], "value": 100.5}] + good[5:10] + [{**good[0], "value": -1}]
    r = ingest(api, batch)
    assert r.status_code == 400 and r.json()["error"]["code"] == "validation_failed", r.text
    assert [(d["index"], d["field"]) for d in r.json()["error"]["details"]] == [(5, "value"), (11, "value")]
    assert "value_max" in r.json()["error"]["details"][0]["problem"]
    assert get(api, "/v1/streams/" + stream).json()["events"] == 0  # all-or-nothing
    other = unique_stream("free")  # another stream of the batch is not bounded
    r = ingest(api, good + [{**good[0], "stream": other, "value": 1e6}])
    assert r.status_code == 202 and r.json()["accepted"] == 21, r.text
    r = api.post(f"/v1/streams/{stream}/keys/k1/score", json={"delta": 500}, headers=auth("admin-a"))
    assert r.status_code == 400 and r.json()["error"]["details"][0]["field"] == "value", r.text
    assert api.post(f"/v1/streams/{stream}/keys/k1/score", json={"delta": 50},
                    headers=auth("admin-a")).status_code == 200
    assert put(api, stream, {}).status_code == 200  # bounds removed: the same value goes in
    assert ingest(api, [{**good[0], "value": 500}]).status_code == 202
    assert get(api, "/v1/streams/" + stream).json()["events"] == 20 + 1 + 1


def test_unknown_stream_is_404_and_an_empty_range_of_a_known_one_200(api):
    never = unique_stream("never")
    now = now_ms()
    ranges = {"from": format_time(now - HOUR_MS), "to": format_time(now)}
    queries = [("/v1/query/series", {"step": "1m"}), ("/v1/query/topk", {"k": 3}), ("/v1/query/rank", {"key": "k1"})]
    for path, extra in queries:
        r = get(api, path, {"stream": never, **ranges, **extra})
        assert r.status_code == 404 and r.json()["error"]["code"] == "stream_not_found", (path, r.text)
    assert get(api, f"/v1/streams/{never}").json()["error"]["code"] == "stream_not_found"
    registered = unique_stream("empty")
    assert put(api, registered, {"unit": "s"}).status_code == 201
    with_data = unique_stream("data")
    assert ingest(api, recent(10, with_data, random.Random(2))).status_code == 202
    empty_range = {"from": format_time(now - 30 * 86_400_000), "to": format_time(now - 29 * 86_400_000)}
    for stream in (registered, with_data):
        for path, extra in queries:
            r = get(api, path, {"stream": stream, **empty_range, **extra})
            assert r.status_code == 200, (stream, path, r.text)
    r = get(api, "/v1/query/topk", {"stream": with_data, **empty_range, "k": 3})
    assert r.json()["items"] == []


def test_list_counts_events_per_tier_and_isolates_tenants(api):
    rnd = random.Random(3)
    data_only, registered = unique_stream("lst"), unique_stream("lsr")
    oracle = Oracle()
    batch = recent(37, data_only, rnd, lambda r: r.uniform(-5, 5))
    assert ingest(api, batch).status_code == 202
    oracle.add(batch)
    assert put(api, registered, {"description": "nothing yet"}).status_code == 201
    listed = {s["stream"]: s for s in get(api, "/v1/streams", key="user-a").json()}
    assert listed[data_only]["registered"] is False and listed[data_only]["events"] == 37
    hot = next(t for t in listed[data_only]["tiers"] if t["name"] == "hot")
    assert hot["rows"] == 37
    assert listed[registered]["registered"] and listed[registered]["events"] == 0
    assert list(listed) == sorted(listed)
    # tenant tb sees none of ta's streams, and a query of one is a 404 for tb
    assert not {data_only, registered} & {s["stream"] for s in get(api, "/v1/streams", key="admin-b").json()}
    assert get(api, f"/v1/streams/{data_only}", key="admin-b").status_code == 404
    now = now_ms()
    r = get(api, "/v1/query/topk", {"stream": data_only, "from": format_time(now - HOUR_MS), "to": format_time(now)},
            key="admin-b")
    assert r.status_code == 404
    assert put(api, data_only, {"unit": "b"}, key="admin-b").status_code == 201  # tb's own stream of that name
    assert get(api, f"/v1/streams/{data_only}", key="admin-b").json()["events"] == 0
    assert get(api, f"/v1/streams/{data_only}").json()["registered"] is False  # ta's is untouched


def test_a_legal_hold_refuses_delete_until_released(api, st_settings):
    from scheduler.retention import LegalHolds
    from tiers.db import make_pool

    stream, rnd = unique_stream("del"), random.Random(4)
    batch = recent(25, stream, rnd)
    assert put(api, stream, {"unit": "x"}).status_code == 201
    assert ingest(api, batch).status_code == 202
    now = now_ms()
    pool = make_pool(st_settings.postgres_url, max_size=1, name="test-holds")
    try:
        holds = LegalHolds(pool)
        elsewhere = holds.add("ta", stream, now - 10 * 86_400_000, now - 9 * 86_400_000, "no events here", "t")
        other_tenant = holds.add("tb", None, now - 2 * HOUR_MS, now, "another tenant's hold", "t")
        held = holds.add("ta", None, now - 2 * HOUR_MS, now, "case 13", "legal")
        r = api.request("DELETE", f"/v1/streams/{stream}", headers=auth("admin-a"))
        assert r.status_code == 409 and r.json()["error"]["code"] == "stream_on_hold", r.text
        assert [d["hold"] for d in r.json()["error"]["details"]] == [held.id]
        assert r.json()["error"]["details"][0]["events"] == 25
        assert get(api, f"/v1/streams/{stream}").json()["events"] == 25  # nothing deleted
        assert api.request("DELETE", f"/v1/streams/{stream}", headers=auth("user-a")).status_code == 403
        holds.remove(held.id, "legal")
        r = api.request("DELETE", f"/v1/streams/{stream}", headers=auth("admin-a"))
        assert r.status_code == 200 and r.json()["registered"] and r.json()["deleted"]["hot"] > 0, r.text
        for h in (elsewhere, other_tenant):
            holds.remove(h.id, "t")
    finally:
        pool.close()
    info = get(api, f"/v1/streams/{stream}").json()  # it existed: known, no entry, no events
    assert info["registered"] is False and info["events"] == 0
    assert audit_actions(st_settings, "ta", stream) == ["stream.create", "stream.delete"]
    assert api.request("DELETE", f"/v1/streams/{unique_stream('nope')}", headers=auth("admin-a")).status_code == 404


def test_stream_time_zone_reads_the_registry(api):
    from router.streams import stream_time_zone

    stream = unique_stream("tz")
    assert put(api, stream, {"time_zone": "America/New_York"}).status_code == 201
    with api.app.app_context():
        assert stream_time_zone("ta", stream) == "America/New_York"
        assert stream_time_zone("tb", stream) is None
        assert stream_time_zone("ta", unique_stream("none")) is None


def test_bounds_hold_while_postgresql_is_down(api, st_settings):
    """A second router of the instance reaching PostgreSQL through a link that goes down: its
    registry cache keeps the bounds it knew, so ingest goes on refusing and accepting."""
    stream, rnd = unique_stream("pgd"), random.Random(5)
    assert put(api, stream, {"value_max": 10}).status_code == 201
    outage = Outage(st_settings.postgres_url)
    app = build_app(st_settings.model_copy(update={"postgres_url": outage.url}), migrate=False)
    server = ApiServer(app)
    try:
        outage.cut()
        good = recent(10, stream, rnd, lambda r: r.uniform(0, 10))
        for _ in range(3):  # past the cache's TTL too: a refresh that fails keeps the bounds
            r = server.post("/v1/events", json=good + [{**good[0], "value": 11}], headers=auth("admin-a"))
            assert r.status_code == 400 and r.json()["error"]["details"][0]["index"] == 10, r.text
            time.sleep(1.5)
        assert server.post("/v1/events", json=good, headers=auth("admin-a")).status_code == 202
        assert server.request("PUT", f"/v1/streams/{stream}", json={}, headers=auth("admin-a")).status_code == 503
    finally:
        server.close()
        close_app(app)


def test_retention_override_is_what_the_retention_job_reads(api, st_settings):
    """The job's cutoff (scheduler.retention.cutoff_for) follows the registry entry of the tenant's
    stream, else archive_retention (tests/test_retention.py runs the job on an archive)."""
    from scheduler.retention import cutoff_for
    from tiers.db import make_pool

    stream, as_of = unique_stream("ret"), 1_800_000_000_000
    pool = make_pool(st_settings.postgres_url, max_size=1, name="test-retention")
    try:
        default = cutoff_for(st_settings, pool, "ta", stream, as_of)
        assert default == floor_to(as_of - st_settings.archive_retention, 86_400_000)
        assert put(api, stream, {"retention": "400d"}).status_code == 201
        assert cutoff_for(st_settings, pool, "ta", stream, as_of) == floor_to(as_of - 400 * 86_400_000, 86_400_000)
        assert cutoff_for(st_settings, pool, "tb", stream, as_of) == default  # per tenant
        assert put(api, stream, {"retention": "2y"}).status_code == 200
        assert cutoff_for(st_settings, pool, "ta", stream, as_of) == floor_to(as_of - 730 * 86_400_000, 86_400_000)
    finally:
        pool.close()


def test_another_routers_write_is_seen_within_the_cache_ttl(api, st_settings):
    """Routers do not share memory: a second router learns the bounds a PUT through the first set
    from its background refresh (RegistryCache TTL, 2 s), without a PostgreSQL read per ingest."""
    stream, rnd = unique_stream("ttl"), random.Random(6)
    app = build_app(st_settings, migrate=False)
    other = ApiServer(app)
    try:
        event = recent(1, stream, rnd, lambda r: 50.0)
        assert other.post("/v1/events", json=event, headers=auth("admin-a")).status_code == 202
        assert put(api, stream, {"value_max": 10}).status_code == 201
        deadline, status = time.monotonic() + 10, 202
        while status == 202 and time.monotonic() < deadline:
            time.sleep(0.5)
            status = other.post("/v1/events", json=event, headers=auth("admin-a")).status_code
        assert status == 400 and time.monotonic() < deadline
    finally:
        other.close()
        close_app(app)
