"""The HTTP API of API.md through a real server over the real tiers (Redis, PostgreSQL)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from rollups.timeutil import HOUR_MS, MINUTE_MS, ceil_to, format_time, now_ms, parse_time
from tests.api_support import (ApiServer, Oracle, check_series, hot_window, isolated_settings, ndjson, served,
                               unique_stream)
from tierstore.app import build_app, close_app

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def api_settings(settings):
    return isolated_settings(settings, "api", redis_db=5)


@pytest.fixture(scope="module")
def api(api_settings):
    yield from served(api_settings)


def events_in(window, n, stream, keys=("a", "b", "c", "d"), step_ms=None):
    step_ms = step_ms or max(1, (window.end - window.start) // n)
    return [{"stream": stream, "key": keys[i % len(keys)], "ts": window.start + i * step_ms, "value": float(i % 5)}
            for i in range(n)]


def test_ingest_json_and_ndjson_then_every_query_kind(api):
    stream = unique_stream()
    window = hot_window(api)
    oracle = Oracle()
    first = events_in(window, 200, stream)
    second = [{**e, "ts": format_time(e["ts"] + 1), "id": uuid.uuid4().hex} for e in events_in(window, 150, stream)]
    r = api.post("/v1/events", json=first)
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 200, "duplicates": 0}
    oracle.add(first)
    r = api.post("/v1/events", data=ndjson(second), headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 150, "duplicates": 0}
    oracle.add(second)

    params = {"stream": stream, "from": format_time(window.start), "to": format_time(window.end)}
    top = api.get("/v1/query/topk", {**params, "k": 3, "by": "sum"}).json()
    want = oracle.ordered(window, "sum")[:3]
    assert [(i["key"], i["value"]) for i in top["items"]] == want
    assert [i["rank"] for i in top["items"]] == [1, 2, 3]
    assert (top["stream"], top["k"], top["by"], top["mode"]) == (stream, 3, "sum", "exact")
    assert top["from"] == format_time(window.start) and top["to"] == format_time(window.end)

    rank = api.get("/v1/query/rank", {**params, "key": "c", "around": 1}).json()
    ordered = oracle.ordered(window, "count")
    idx = [k for k, _ in ordered].index("c")
    assert (rank["rank"], rank["value"], rank["total_keys"]) == (idx + 1, ordered[idx][1], len(ordered))
    assert [n["key"] for n in rank["around"]] == [k for k, _ in ordered[max(0, idx - 1): idx + 2]]

    check_series(api, oracle, stream, params["from"], params["to"], "1h", "avg", key="a")
    series = api.get("/v1/query/series", {**params, "step": "1h", "agg": "avg", "key": "a"}).json()
    assert (series["step"], series["agg"], series["key"]) == ("1h", "avg", "a")
    assert series["points"][0]["t"] == format_time(window.start - window.start % HOUR_MS)


def test_meta_describes_the_segments(api):
    stream = unique_stream()
    window = hot_window(api)
    api.post("/v1/events", json=events_in(window, 10, stream))
    start = window.start + 7 * MINUTE_MS + 13_000  # not minute-aligned: rounded down
    end = window.start + 3 * HOUR_MS + 5 * MINUTE_MS + 1  # rounded up
    body = api.get("/v1/query/topk", {"stream": stream, "from": start, "to": end}).json()
    assert body["from"] == format_time(window.start + 7 * MINUTE_MS)
    assert body["to"] == format_time(window.start + 3 * HOUR_MS + 6 * MINUTE_MS)
    meta = body["meta"]
    assert meta["exact"] is True and meta["partial"] is False and meta["missing"] == []
    assert isinstance(meta["catalog_version"], int) and meta["took_ms"] >= 0
    segs = meta["segments"]
    assert segs[0]["from"] == body["from"] and segs[-1]["to"] == body["to"]
    assert all(a["to"] == b["from"] for a, b in zip(segs, segs[1:]))
    assert {s["tier"] for s in segs} == {"hot"} and {s["granularity"] for s in segs} <= {"1m", "1h", "1d"}
    assert all(s["cached"] is False and s["took_ms"] >= 0 for s in segs)


def registered_stream(api) -> str:
    """A stream that exists (a registry entry) without any event: queries of it answer 200, empty."""
    stream = unique_stream()
    r = api.request("PUT", f"/v1/streams/{stream}", json={})
    assert r.status_code == 201, r.text
    return stream


def test_explain_returns_the_plan_without_running_it(api):
    window = hot_window(api)
    body = api.get("/v1/query/series", {"stream": registered_stream(api), "from": window.start, "to": window.end,
                                        "step": "1h", "explain": "1"}).json()
    assert body["explain"] is True and "points" not in body
    assert body["meta"]["segments"] and all(s["took_ms"] is None for s in body["meta"]["segments"])


def test_relative_times_and_approx_mode(api):
    stream = unique_stream()
    now = now_ms()
    api.post("/v1/events", json=[{"stream": stream, "key": "x", "ts": now - 10 * MINUTE_MS, "value": 2}])
    body = api.get("/v1/query/topk", {"stream": stream, "from": "now-1h", "to": "now", "mode": "approx"}).json()
    assert body["mode"] == "approx" and body["meta"]["exact"] is True
    assert body["items"] == [{"rank": 1, "key": "x", "value": 1.0, "lower_bound": 1.0, "upper_bound": 1.0,
                              "error_bound": 0.0}]
    assert body["meta"]["approx"]["error_type"] == "no_false_negatives" and body["meta"]["approx"]["max_error"] == 0
    assert parse_time(body["from"]) % MINUTE_MS == 0 and parse_time(body["to"]) % MINUTE_MS == 0


def test_a_time_that_is_not_one_names_every_accepted_form(api):
    """`from=yesterday` (a new user's guess): the 400 says what a time may be, not only RFC 3339."""
    r = api.get("/v1/query/topk", {"stream": registered_stream(api), "from": "yesterday", "to": "now"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["details"] == [{"field": "from", "problem": "not RFC 3339"}]
    assert "'yesterday'" in err["message"] and all(form in err["message"] for form in
                                                    ("RFC 3339", "epoch milliseconds", "now-15m"))


def test_empty_series_buckets_are_null_and_empty_topk_is_empty(api):
    start = ceil_to(hot_window(api).start, HOUR_MS)
    params = {"stream": registered_stream(api), "from": start, "to": start + 3 * HOUR_MS}
    series = api.get("/v1/query/series", {**params, "step": "1h", "agg": "max"}).json()
    assert [p["value"] for p in series["points"]] == [None, None, None]
    assert api.get("/v1/query/topk", params).json()["items"] == []
    rank = api.get("/v1/query/rank", {**params, "key": "nobody"}).json()
    assert (rank["rank"], rank["value"], rank["total_keys"], rank["around"]) == (None, None, 0, [])


def test_duplicate_ids_are_counted_once(api):
    stream = unique_stream()
    window = hot_window(api)
    batch = [{**e, "id": f"{stream}-{i}"} for i, e in enumerate(events_in(window, 50, stream))]
    assert api.post("/v1/events", json=batch).json() == {"accepted": 50, "duplicates": 0}
    assert api.post("/v1/events", json=batch[:20]).json() == {"accepted": 0, "duplicates": 20}
    top = api.get("/v1/query/topk", {"stream": stream, "from": window.start, "to": window.end, "k": 10}).json()
    assert sum(i["value"] for i in top["items"]) == 50


def test_score_returns_all_time_total_and_rank(api):
    stream = unique_stream()
    r = api.post(f"/v1/streams/{stream}/keys/song%2F1/score", json={"delta": 10})
    assert r.status_code == 200, r.text
    assert r.json() == {"stream": stream, "key": "song/1", "score": 10.0, "rank": 1}
    api.post(f"/v1/streams/{stream}/keys/other/score", json={"delta": 25, "ts": "now-1m"})
    body = api.post(f"/v1/streams/{stream}/keys/song%2F1/score", json={"delta": 5}).json()
    assert (body["score"], body["rank"]) == (15.0, 2)


def test_tiers_lists_the_catalog(api):
    body = api.get("/v1/tiers").json()
    assert isinstance(body["catalog_version"], int)
    assert set(body["boundaries"]) == {"archive", "cold", "warm"}
    tiers = {t["name"]: t for t in body["tiers"]}
    assert set(tiers) == {"archive", "cold", "warm", "hot"}
    assert tiers["hot"]["healthy"] is True and tiers["warm"]["healthy"] is True
    assert tiers["hot"]["owns"]["from"] == body["boundaries"]["warm"] == tiers["warm"]["owns"]["to"]
    assert all(set(t) >= {"name", "owns", "rows", "bytes", "healthy"} for t in body["tiers"])


def test_ranges_below_the_warm_boundary_are_read_from_warm(api):
    b_warm = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
    body = api.get("/v1/query/topk", {"stream": registered_stream(api), "from": b_warm - 2 * HOUR_MS,
                                      "to": b_warm + HOUR_MS}).json()
    assert [s["tier"] for s in body["meta"]["segments"]][0] == "warm"
    assert body["meta"]["segments"][-1]["tier"] == "hot" and body["meta"]["partial"] is False


def test_jobs_api(api):
    jobs = api.get("/v1/jobs")
    assert jobs.status_code == 200, jobs.text
    names = {j["name"] for j in jobs.json()}
    assert {"flush", "refresh", "expire_hot"} <= names
    r = api.post("/v1/jobs/flush/run", json={})
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    deadline = time.monotonic() + 60
    while True:
        run = api.get(f"/v1/jobs/runs/{run_id}")
        assert run.status_code == 200, run.text
        if run.json()["status"] not in ("queued", "running") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert run.json()["job"] == "flush" and run.json()["status"] == "done", run.json()


def test_health_and_readiness(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_metrics_count_requests_ingest_and_segments(api):
    stream = unique_stream()
    window = hot_window(api)
    api.post("/v1/events", json=events_in(window, 5, stream))
    api.get("/v1/query/topk", {"stream": stream, "from": window.start, "to": window.end})
    text = api.get("/metrics").text
    assert 'tierstore_http_requests_total{endpoint="/v1/events",method="POST",status="202"}' in text
    assert 'tierstore_ingest_events_total{result="accepted"}' in text
    assert 'tierstore_query_segments_total{cached="false",granularity=' in text
    assert "tierstore_http_request_duration_seconds_bucket" in text


def test_openapi_describes_the_api(api):
    doc = api.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    expected = {"/v1/events": "post", "/v1/streams/{stream}/keys/{key}/score": "post",
                "/v1/query/series": "get", "/v1/query/topk": "get", "/v1/query/rank": "get",
                "/v1/tiers": "get", "/v1/jobs": "get", "/v1/jobs/{name}/run": "post",
                "/v1/jobs/runs/{run_id}": "get", "/healthz": "get", "/readyz": "get", "/metrics": "get",
                "/openapi.json": "get", "/v1/reports": "post", "/v1/reports/{id}": "get",
                "/v1/reports/{id}/download": "get"}
    for path, method in expected.items():
        assert method in doc["paths"][path], path
    params = {p["name"] for p in doc["paths"]["/v1/query/series"]["get"]["parameters"]}
    assert params == {"stream", "from", "to", "step", "agg", "key", "explain", "allow_partial", "tz"}
    params = {p["name"] for p in doc["paths"]["/v1/query/topk"]["get"]["parameters"]}
    assert params == {"stream", "from", "to", "k", "by", "mode", "error_type", "explain", "allow_partial", "tz"}
    params = {p["name"] for p in doc["paths"]["/v1/query/rank"]["get"]["parameters"]}
    assert params == {"stream", "key", "from", "to", "by", "around", "explain", "allow_partial", "tz"}
    schemas = doc["components"]["schemas"]
    assert set(schemas["Event"]["properties"]) == {"stream", "key", "ts", "value", "id"}
    assert set(schemas["ErrorBody"]["properties"]) == {"code", "message", "details"}
    assert set(schemas["Meta"]["properties"]) >= {"exact", "took_ms", "catalog_version", "segments", "partial",
                                                  "missing"}
    assert set(schemas["Segment"]["properties"]) == {"tier", "from", "to", "granularity", "cached", "took_ms"}
    assert "intersection" in doc["paths"]["/v1/query/series"]["get"]["description"]


def test_auth_scopes_data_by_tenant(api, api_settings):
    app = build_app(api_settings.model_copy(update={"auth_enabled": True, "api_keys": {"key-one": "t1", "key-two": "t2"}}),
                    migrate=False)
    server = ApiServer(app)
    try:
        stream = unique_stream()
        now = now_ms()
        one = {"Authorization": "Bearer key-one"}
        r = server.post("/v1/events", json=[{"stream": stream, "key": "k", "ts": now - MINUTE_MS}], headers=one)
        assert r.status_code == 202, r.text
        params = {"stream": stream, "from": "now-1h", "to": "now"}
        assert server.get("/v1/query/topk", params, headers=one).json()["items"][0]["key"] == "k"
        other = server.get("/v1/query/topk", params, headers={"Authorization": "Bearer key-two"})
        assert other.status_code == 404 and other.json()["error"]["code"] == "stream_not_found"  # none of t2's
        assert server.get("/v1/query/topk", params).status_code == 401
        assert server.get("/healthz").status_code == 200
    finally:
        server.close()
        close_app(app)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gunicorn_serves_the_wsgi_factory(api, api_settings):
    port = _free_port()
    env = {**os.environ, "TIERSTORE_POSTGRES_URL": api_settings.postgres_url,
           "TIERSTORE_REDIS_URL": api_settings.redis_url}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}",
                             "tierstore.app:wsgi()"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=60)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
                time.sleep(0.2)
        assert r.status_code == 200, r.text
    finally:
        proc.terminate()
        proc.wait(30)


def test_responses_match_the_documented_models(api):
    from router import models as m

    stream = unique_stream()
    window = hot_window(api)
    m.IngestResponse.model_validate(api.post("/v1/events", json=events_in(window, 20, stream)).json())
    q = {"stream": stream, "from": window.start, "to": window.end}
    m.SeriesResponse.model_validate(api.get("/v1/query/series", {**q, "step": "1h", "agg": "min"}).json())
    m.TopkResponse.model_validate(api.get("/v1/query/topk", {**q, "mode": "approx"}).json())
    m.RankResponse.model_validate(api.get("/v1/query/rank", {**q, "key": "a", "around": 2}).json())
    m.ExplainResponse.model_validate(api.get("/v1/query/rank", {**q, "key": "a", "explain": 1}).json())
    m.ScoreResponse.model_validate(api.post(f"/v1/streams/{stream}/keys/a/score", json={"delta": 1}).json())
    m.TiersResponse.model_validate(api.get("/v1/tiers").json())
    for job in api.get("/v1/jobs").json():
        m.JobInfo.model_validate(job)
    run = api.post("/v1/jobs/refresh/run", json={"as_of": "now"}).json()
    m.JobRunAccepted.model_validate(run)
    m.JobRun.model_validate(api.get(f"/v1/jobs/runs/{run['run_id']}").json())
    m.Health.model_validate(api.get("/readyz").json())
    m.ErrorResponse.model_validate(api.get("/v1/query/topk", {"stream": stream}).json())


def test_reports_are_served(api):
    stream = unique_stream()
    window = hot_window(api)
    events = events_in(window, 30, stream)
    api.post("/v1/events", json=events)
    r = api.post("/v1/reports", json={"stream": stream, "from": window.start, "to": window.end, "kind": "totals",
                                      "format": "json"})
    assert r.status_code == 202, r.text
    report_id = r.json()["id"]
    deadline = time.monotonic() + 120
    while (status := api.get(f"/v1/reports/{report_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["status"] == "done", status
    download = api.get(f"/v1/reports/{report_id}/download")
    assert download.status_code == 200 and download.headers["X-Content-SHA256"] == status["sha256"]
