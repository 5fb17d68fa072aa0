"""Every error path answers {"error": {"code", "message", "details"}} with the right status — never
a stack trace — and changes nothing (the log, the aggregates and the catalog are as before)."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

import orjson
import pytest
import redis as redis_lib
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, floor_to, format_time, now_ms
from tests.api_support import ApiServer, data_key_count, hot_window, isolated_settings, unique_stream
from tierstore.app import build_app, close_app
from tiers.catalog_pg import PgCatalog
from tiers.db import connect, make_pool
from tiers.eventlog import SEAL_KEY, raise_mark, total_length

MAX_EVENTS = 50
MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def env(settings):
    s = isolated_settings(settings, "errors", redis_db=6).model_copy(update={
        "max_batch_events": MAX_EVENTS, "max_batch_bytes": MAX_BYTES,
        "auth_enabled": True,
        "api_keys": {"good-key": {"tenant": "default", "scopes": ["ingest", "query", "admin"]}}})
    app = build_app(s)
    seal = _seal_below_warm(s)
    server = ApiServer(app)
    server.http.headers["Authorization"] = "Bearer good-key"
    stream = unique_stream("ref")
    window = hot_window(server)
    ref = [{"stream": stream, "key": f"k{i % 7}", "ts": window.start + i * MINUTE_MS, "value": float(i)}
           for i in range(MAX_EVENTS)]
    assert server.post("/v1/events", json=ref).status_code == 202
    yield {"api": server, "settings": s, "stream": stream, "window": window, "seal": seal}
    server.close()
    close_app(app)


def _seal_below_warm(s) -> int:
    """Move b_cold forward (as export_cold would) so older events are sealed; returns it."""
    pool = make_pool(s.postgres_url, max_size=1)
    try:
        catalog = PgCatalog(pool)
        b_cold = floor_to(catalog.snapshot().b_warm - 7 * DAY_MS, MINUTE_MS)
        client = redis_lib.Redis.from_url(s.redis_url)
        raise_mark(client, SEAL_KEY, b_cold)
        client.close()
        with connect(s.postgres_url) as conn:
            catalog.advance(conn, b_cold=b_cold)
        return b_cold
    finally:
        pool.close()


def state(env) -> tuple:
    api = env["api"]
    client = redis_lib.Redis.from_url(env["settings"].redis_url)
    try:
        log_len, keys = total_length(client), data_key_count(client)
    finally:
        client.close()
    w = env["window"]
    top = api.get("/v1/query/topk", {"stream": env["stream"], "from": w.start, "to": w.end, "k": 100, "by": "sum"})
    tiers = api.get("/v1/tiers").json()
    return log_len, keys, top.json()["items"], tiers["catalog_version"], tiers["boundaries"]


def assert_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message", "details"}, err
    assert isinstance(err["code"], str) and err["code"] == err["code"].lower() and " " not in err["code"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["details"], list) and all(isinstance(d, dict) for d in err["details"])
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    if code is not None:
        assert err["code"] == code, err
    return err


def ev(env, **overrides) -> dict:
    return {"stream": env["stream"], "key": "k", "ts": env["window"].start, **overrides}


def q(env, **params) -> dict:
    w = env["window"]
    return {"stream": env["stream"], "from": w.start, "to": w.end, **params}


NDJSON = {"Content-Type": "application/x-ndjson"}

# (name, status, code, request maker)
CASES = [
    ("bad json", 400, "invalid_json", lambda a, e: a.post("/v1/events", data=b"[{\"stream\": ",
                                                            headers={"Content-Type": "application/json"})),
    ("bad ndjson line", 400, "invalid_json", lambda a, e: a.post(
        "/v1/events", data=orjson.dumps(ev(e)) + b"\n{nope}\n", headers=NDJSON)),
    ("not an array", 400, "bad_request", lambda a, e: a.post("/v1/events", json={"stream": "x"})),
    ("empty batch", 400, "empty_batch", lambda a, e: a.post("/v1/events", json=[])),
    ("empty ndjson", 400, "empty_batch", lambda a, e: a.post("/v1/events", data=b"\n", headers=NDJSON)),
    ("bad stream name", 400, "validation_failed", lambda a, e: a.post("/v1/events", json=[ev(e, stream="Bad Name")])),
    ("key too long", 400, "validation_failed", lambda a, e: a.post("/v1/events", json=[ev(e, key="x" * 257)])),
    ("empty key", 400, "validation_failed", lambda a, e: a.post("/v1/events", json=[ev(e, key="")])),
    ("bad ts", 400, "validation_failed", lambda a, e: a.post("/v1/events", json=[ev(e), ev(e, ts="yesterday")])),
    ("ts without zone", 400, "validation_failed", lambda a, e: a.post("/v1/events",
                                                                     json=[ev(e, ts="2026-11-22T10:00:00")])),
    ("value not finite (orjson refuses it)", 400, "invalid_json", lambda a, e: a.post(
        "/v1/events", data=b'[{"stream": "s", "key": "k", "ts": 0, "value": 1e999}]',
        headers={"Content-Type": "application/json"})),
    ("value a string", 400, "validation_failed", lambda a, e: a.post("/v1/events", json=[ev(e, value="3")])),
    ("key with NUL (finding 3)", 400, "validation_failed", lambda a, e: a.post("/v1/events",
                                                                              json=[ev(e, key="a\u0000b")])),
    ("id with NUL (finding 3)", 400, "validation_failed", lambda a, e: a.post("/v1/events",
                                                                             json=[ev(e, id="\u0000")])),
    ("key with NUL, NDJSON", 400, "validation_failed", lambda a, e: a.post(
        "/v1/events", data=orjson.dumps(ev(e)) + b"\n" + orjson.dumps(ev(e, key="\u0000")), headers=NDJSON)),
    ("key a lone surrogate (orjson refuses it)", 400, "invalid_json", lambda a, e: a.post(
        "/v1/events", data=b'[{"stream": "s", "key": "\\ud800", "ts": 0}]',
        headers={"Content-Type": "application/json"})),
    ("id of 257 bytes", 400, "validation_failed", lambda a, e: a.post("/v1/events", json=[ev(e, id="é" * 128 + "x")])),
    ("value 1e308 (finding 4)", 400, "validation_failed", lambda a, e: a.post("/v1/events",
                                                                              json=[ev(e, value=1e308)] * 2)),
    ("value over 1e15", 400, "validation_failed", lambda a, e: a.post("/v1/events",
                                                                      json=[ev(e, value=-(10 ** 15) - 1)])),
    ("id not a string", 400, "validation_failed", lambda a, e: a.post("/v1/events", json=[ev(e, id=7)])),
    ("unknown field", 400, "validation_failed", lambda a, e: a.post("/v1/events", json=[ev(e, tenant="x")])),
    ("one bad event refuses the batch", 400, "validation_failed", lambda a, e: a.post(
        "/v1/events", json=[ev(e, key=f"ok{i}") for i in range(5)] + [ev(e, key=None)])),
    ("too many events", 413, "payload_too_large", lambda a, e: a.post("/v1/events", json=[ev(e)] * (MAX_EVENTS + 1))),
    ("too many bytes", 413, "payload_too_large", lambda a, e: a.post(
        "/v1/events", data=b"[" + b" " * MAX_BYTES + b"]", headers={"Content-Type": "application/json"})),
    ("too many bytes, chunked", 413, "payload_too_large", lambda a, e: a.post(
        "/v1/events", data=iter([b"[" + b" " * MAX_BYTES, b"]"]), headers={"Content-Type": "application/json"})),
    ("ts in future", 422, "ts_in_future", lambda a, e: a.post(
        "/v1/events", json=[ev(e), ev(e, ts=now_ms() + HOUR_MS)])),
    ("range sealed", 422, "range_sealed", lambda a, e: a.post(
        "/v1/events", json=[ev(e), ev(e, ts=format_time(e["seal"] - DAY_MS))])),
    ("score: bad stream", 400, "validation_failed", lambda a, e: a.post("/v1/streams/BAD/keys/k/score",
                                                                       json={"delta": 1})),
    ("score: delta missing", 400, "validation_failed", lambda a, e: a.post(
        f"/v1/streams/{e['stream']}/keys/k/score", json={})),
    ("score: delta a string", 400, "validation_failed", lambda a, e: a.post(
        f"/v1/streams/{e['stream']}/keys/k/score", json={"delta": "ten"})),
    ("score: delta a numeric string", 400, "validation_failed", lambda a, e: a.post(
        f"/v1/streams/{e['stream']}/keys/k/score", json={"delta": "10"})),
    ("score: delta a boolean", 400, "validation_failed", lambda a, e: a.post(
        f"/v1/streams/{e['stream']}/keys/k/score", json={"delta": True})),
    ("score: unknown field", 400, "validation_failed", lambda a, e: a.post(
        f"/v1/streams/{e['stream']}/keys/k/score", json={"delta": 1, "when": "now"})),
    ("score: ts in future", 422, "ts_in_future", lambda a, e: a.post(
        f"/v1/streams/{e['stream']}/keys/k/score", json={"delta": 1, "ts": "now+1h"})),
    ("score: bad json", 400, "invalid_json", lambda a, e: a.post(
        f"/v1/streams/{e['stream']}/keys/k/score", data=b"{", headers={"Content-Type": "application/json"})),
    ("score: sealed", 422, "range_sealed", lambda a, e: a.post(
        f"/v1/streams/{e['stream']}/keys/k/score", json={"delta": 1, "ts": e["seal"] - DAY_MS})),
    ("score: key with NUL", 400, "validation_failed", lambda a, e: a.post(
        f"/v1/streams/{e['stream']}/keys/a%00b/score", json={"delta": 1})),
    ("score: delta 1e308", 400, "validation_failed", lambda a, e: a.post(
        f"/v1/streams/{e['stream']}/keys/k/score", json={"delta": 1e308})),
    ("query: bad time", 400, None, lambda a, e: a.get("/v1/query/topk", q(e, **{"from": "last tuesday"}))),
    ("query: from >= to", 400, "invalid_range", lambda a, e: a.get(
        "/v1/query/topk", q(e, **{"from": e["window"].end, "to": e["window"].start}))),
    ("query: from == to", 400, "invalid_range", lambda a, e: a.get(
        "/v1/query/series", q(e, step="1m", **{"to": e["window"].start}))),
    ("query: missing stream", 400, "validation_failed", lambda a, e: a.get(
        "/v1/query/topk", {"from": "now-1h", "to": "now"})),
    ("query: bad stream", 400, "validation_failed", lambda a, e: a.get("/v1/query/topk", q(e, stream="A B"))),
    ("series: unknown agg", 400, "validation_failed", lambda a, e: a.get("/v1/query/series",
                                                                        q(e, step="1h", agg="median"))),
    ("series: missing step", 400, "validation_failed", lambda a, e: a.get("/v1/query/series", q(e))),
    ("series: unknown step", 400, "validation_failed", lambda a, e: a.get("/v1/query/series", q(e, step="1x"))),
    ("series: step not minutes", 400, "bad_request", lambda a, e: a.get("/v1/query/series", q(e, step="90s"))),
    ("series: too many points", 400, "too_many_points", lambda a, e: a.get(
        "/v1/query/series", q(e, step="1m", **{"from": e["window"].start - 30 * DAY_MS}))),
    ("topk: unknown by", 400, "validation_failed", lambda a, e: a.get("/v1/query/topk", q(e, by="max"))),
    ("topk: k zero", 400, "validation_failed", lambda a, e: a.get("/v1/query/topk", q(e, k=0))),
    ("topk: k too big", 400, "validation_failed", lambda a, e: a.get("/v1/query/topk", q(e, k=10_001))),
    ("topk: k not a number", 400, "validation_failed", lambda a, e: a.get("/v1/query/topk", q(e, k="ten"))),
    ("topk: unknown mode", 400, "validation_failed", lambda a, e: a.get("/v1/query/topk", q(e, mode="fast"))),
    ("topk: unknown parameter", 400, "validation_failed", lambda a, e: a.get("/v1/query/topk", q(e, limit=5))),
    ("rank: missing key", 400, "validation_failed", lambda a, e: a.get("/v1/query/rank", q(e))),
    ("rank: key with NUL", 400, "validation_failed", lambda a, e: a.get("/v1/query/rank", q(e, key="k\u0000"))),
    ("series: key with NUL", 400, "validation_failed", lambda a, e: a.get("/v1/query/series",
                                                                         q(e, step="1h", key="\u0000"))),
    ("query: stream with NUL", 400, "validation_failed", lambda a, e: a.get("/v1/query/topk", q(e, stream="s\u0000"))),
    ("rank: around too big", 400, "validation_failed", lambda a, e: a.get("/v1/query/rank",
                                                                         q(e, key="k", around=101))),
    ("unknown route", 404, "not_found", lambda a, e: a.get("/v1/nothing-here")),
    ("method not allowed", 405, "method_not_allowed", lambda a, e: a.request("DELETE", "/v1/events")),
    ("get on ingest", 405, "method_not_allowed", lambda a, e: a.get("/v1/events")),
    ("unknown job", 404, None, lambda a, e: a.post("/v1/jobs/no_such_job/run", json={})),
    ("job: bad as_of", 400, None, lambda a, e: a.post("/v1/jobs/flush/run", json={"as_of": "soon"})),
    ("unknown job run", 404, None, lambda a, e: a.get("/v1/jobs/runs/999999999")),
    ("auth: no key", 401, "unauthorized", lambda a, e: a.get("/v1/query/topk", q(e),
                                                             headers={"Authorization": ""})),
    ("auth: bad key", 401, "unauthorized", lambda a, e: a.post("/v1/events", json=[ev(e)],
                                                               headers={"Authorization": "Bearer nope"})),
    ("auth: not bearer", 401, "unauthorized", lambda a, e: a.get("/v1/tiers", headers={"Authorization": "Basic x"})),
]


@pytest.mark.parametrize("name, status, code, make", CASES, ids=[c[0] for c in CASES])
def test_error_shape_and_nothing_changes(env, name, status, code, make):
    before = state(env)
    assert_error(make(env["api"], env), status, code)
    assert state(env) == before


def test_details_name_each_bad_event(env):
    api = env["api"]
    batch = [ev(env), ev(env, key=""), ev(env), ev(env, ts="nope", value="x")]
    err = assert_error(api.post("/v1/events", json=batch), 400, "validation_failed")
    assert [(d["index"], d["field"]) for d in err["details"]] == [(1, "key"), (3, "ts"), (3, "value")]


def test_nul_and_huge_values_are_refused_per_event(env):
    """Findings 3 and 4 of issue 8: a NUL in a key or id, and values whose sum overflows, are refused
    with a detail per event (nothing stored), so no flush can fail on them and no sum reaches inf."""
    api = env["api"]
    batch = [ev(env), ev(env, key="a\u0000"), ev(env, id="\u0000x"), ev(env, value=1e308), ev(env, value=1e15)]
    err = assert_error(api.post("/v1/events", json=batch), 400, "validation_failed")
    assert [(d["index"], d["field"], d["problem"]) for d in err["details"]] == [
        (1, "key", "must not contain U+0000 (NUL)"), (2, "id", "must not contain U+0000 (NUL)"),
        (3, "value", "must be within -1e15..1e15")]


# ---- a tier really down ------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def doomed_redis(tmp_path):
    """A throwaway redis-server of our own, so a test can stop it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    client = redis_lib.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis_lib.ConnectionError:
            assert time.monotonic() < deadline, "throwaway redis-server did not start"
            time.sleep(0.05)
    client.close()
    yield proc, f"redis://127.0.0.1:{port}/0"
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


def test_tier_down_is_503_naming_it_or_partial_on_request(settings, doomed_redis):
    proc, redis_url = doomed_redis
    s = isolated_settings(settings, "outage", redis_db=8).model_copy(update={"redis_url": redis_url})
    app = build_app(s)
    api = ApiServer(app)
    try:
        b_warm = api.get("/v1/tiers").json()["boundaries"]["warm"]
        assert api.request("PUT", "/v1/streams/s", json={}).status_code in (200, 201)  # a stream that exists
        params = {"stream": "s", "from": f"{b_warm}", "to": "now"}
        assert api.get("/v1/query/topk", params).status_code == 200
        proc.terminate()
        proc.wait(10)
        err = assert_error(api.get("/v1/query/topk", params), 503, "tier_unavailable")
        assert err["details"] == [{"tier": "hot"}] and "hot" in err["message"]
        err = assert_error(api.post("/v1/events", json=[{"stream": "s", "key": "k", "ts": now_ms()}]),
                           503, "tier_unavailable")
        assert {"tier": "hot"} in err["details"]
        assert_error(api.get("/readyz"), 503, "tier_unavailable")
        crossing = {"stream": "s", "from": "now-30h", "to": "now", "allow_partial": "1"}
        body = api.get("/v1/query/topk", crossing).json()
        assert body["meta"]["partial"] is True and body["meta"]["exact"] is False
        assert [m["tier"] for m in body["meta"]["missing"]] == ["hot"]
        assert body["meta"]["missing"][0]["from"] == b_warm
        assert {seg["tier"] for seg in body["meta"]["segments"]} == {"warm"}
    finally:
        api.close()
        close_app(app)


# ---- fuzzing: whatever arrives, the answer is a success or the error shape, never a 500 ---------

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_times = st.one_of(_text, st.integers(-10**16, 10**16).map(str), st.sampled_from(
    ["now", "now-1h", "now-30d", "now+5m", "2026-11-22T10:00:00Z", "2026-11-22T10:00:00.123+01:00", "0",
     "9999-12-31T23:59:59.999Z", "0001-01-01T00:00:00Z", "-62135596800001", "1e12", ""]))
_query = st.fixed_dictionaries({}, optional={
    "stream": st.one_of(_text, st.just("s")), "from": _times, "to": _times, "key": _text,
    "step": st.one_of(_text, st.sampled_from(["1m", "5m", "90s", "1h", "1d", "1w", "0m", "999999999d"])),
    "agg": st.one_of(_text, st.sampled_from(["count", "sum", "min", "max", "avg"])),
    "k": st.one_of(_text, st.integers(-5, 20_000).map(str)), "by": st.sampled_from(["count", "sum", "avg", ""]),
    "mode": st.sampled_from(["exact", "approx", "x"]), "around": st.integers(-3, 200).map(str),
    "explain": st.sampled_from(["1", "0", "true", "maybe"]), "allow_partial": st.sampled_from(["1", "no", "2"])})
_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                               _text), lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                               st.dictionaries(_text, inner, max_size=4)),
                     max_leaves=12)
_event = st.fixed_dictionaries({}, optional={"stream": st.one_of(_json, st.just("fuzz")), "key": _json,
                                             "ts": st.one_of(_json, _times), "value": _json, "id": _json,
                                             "extra": _json})


def _assert_not_500(resp):
    assert resp.status_code < 500 or resp.status_code == 503, resp.text
    if resp.status_code >= 400:
        assert_error(resp, resp.status_code)


@given(kind=st.sampled_from(["series", "topk", "rank"]), params=_query)
@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzzed_queries_never_500(env, kind, params):
    _assert_not_500(env["api"].get(f"/v1/query/{kind}", params))


@given(body=st.one_of(st.lists(_event, max_size=5), _json, st.binary(max_size=64)))
@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzzed_ingest_never_500(env, body):
    api = env["api"]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    _assert_not_500(api.post("/v1/events", data=data, headers={"Content-Type": "application/json"}))


@given(body=_json, stream=_text, key=_text.filter(lambda k: "/" not in k and k not in (".", "..")))
@hsettings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzzed_score_and_job_bodies_never_500(env, body, stream, key):
    from urllib.parse import quote

    api = env["api"]
    data, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
    _assert_not_500(api.post(f"/v1/streams/{quote(stream, safe='') or 'x'}/keys/{quote(key, safe='') or 'k'}/score",
                             data=data, headers=headers))
    _assert_not_500(api.post("/v1/jobs/no_such_job/run", data=data, headers=headers))
