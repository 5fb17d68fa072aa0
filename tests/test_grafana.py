"""The Grafana data source (/grafana, the simpod-json-datasource protocol) against a real router.

Request bodies are shaped as Grafana 10/11 with the plugin sends them (the plugin's README and
openapi.yaml, and its DataSource.ts: query() posts the DataQueryRequest with processed targets,
metricFindQuery() posts {"payload", "range", "rangeRaw"} to /variable, listMetrics() posts
{"metric", "payload"} to /metrics). Numbers are checked against the router's own /v1/query answers
for the same data and against the raw-event oracle. Auth is on: Grafana sends the key as Bearer.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, TimeRange, format_time, parse_duration, parse_time
from router.grafana import snap_step, step_text
from router.models import MAX_POINTS
from tests.api_support import Oracle, close, hot_window, isolated_settings, served, unique_stream

KEYS = {"grafana-t1": {"tenant": "t1", "scopes": ["ingest", "query", "admin"]},
        "grafana-t2": {"tenant": "t2", "scopes": ["ingest", "query"]},
        "grafana-ingest-only": {"tenant": "t1", "scopes": ["ingest"]}}
T2 = {"Authorization": "Bearer grafana-t2"}


@pytest.fixture(scope="module")
def api(settings):
    s = isolated_settings(settings, "grafana", redis_db=46).model_copy(
        update={"auth_enabled": True, "api_keys": KEYS})
    for server in served(s):
        server.http.headers["Authorization"] = "Bearer grafana-t1"
        yield server


@pytest.fixture(scope="module")
def world(api):
    """Two streams of tenant t1 in the hot tier's range (and one of t2), with their oracle."""
    window = hot_window(api, hours=6)
    plays, likes = unique_stream("plays"), unique_stream("likes")
    oracle = Oracle()
    events = [{"stream": plays, "key": f"song_{i % 7}", "ts": window.start + i * 37_003 % (window.end - window.start),
               "value": float(i % 11) - 2.5} for i in range(900)]
    r = api.post("/v1/events", json=events)
    assert r.status_code == 202, r.text
    oracle.add(events)
    r = api.post("/v1/events", json=[{"stream": likes, "key": "x", "ts": window.start + MINUTE_MS}])
    assert r.status_code == 202, r.text
    secret = unique_stream("secret")
    r = api.post("/v1/events", json=[{"stream": secret, "key": "hidden", "ts": window.start}], headers=T2)
    assert r.status_code == 202, r.text
    return {"window": window, "plays": plays, "likes": likes, "secret": secret, "oracle": oracle}


def grafana_query(window: TimeRange, targets: list[dict], *, interval_ms: int = 15_000, max_points: int = 1234,
                  adhoc: list | None = None) -> dict:
    """A /query body as Grafana sends it from a dashboard panel."""
    rng = {"from": format_time(window.start), "to": format_time(window.end), "raw": {"from": "now-6h", "to": "now"}}
    return {
        "app": "dashboard", "requestId": "Q101", "timezone": "browser", "panelId": 2, "dashboardUID": "tierstore",
        "range": rng, "timeInfo": "", "interval": f"{interval_ms // 1000}s", "intervalMs": interval_ms,
        "targets": [{"datasource": {"type": "simpod-json-datasource", "uid": "tierstore"}, "editorMode": "builder",
                     "refId": chr(ord("A") + i), **t} for i, t in enumerate(targets)],
        "maxDataPoints": max_points,
        "scopedVars": {"__interval": {"text": f"{interval_ms // 1000}s", "value": f"{interval_ms // 1000}s"},
                       "__interval_ms": {"text": str(interval_ms), "value": interval_ms}},
        "startTime": window.end, "rangeRaw": {"from": "now-6h", "to": "now"}, "adhocFilters": adhoc or [],
    }


def error_of(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]


# ---- health, metrics, payload options --------------------------------------------------------------

def test_health_is_200_with_the_key_and_401_without(api):
    r = api.get("/grafana")
    assert r.status_code == 200 and r.json() == {"status": "ok", "tenant": "t1"}
    assert api.get("/grafana/").json() == r.json()  # older JSON data sources append a slash
    assert error_of(api.get("/grafana", headers={"Authorization": ""}), 401)["code"] == "unauthorized"
    forbidden = error_of(api.get("/grafana", headers={"Authorization": "Bearer grafana-ingest-only"}), 403)
    assert forbidden["code"] == "forbidden"


def test_metrics_are_the_tenants_streams_with_builder_payloads(api, world):
    r = api.post("/grafana/metrics", json={})
    assert r.status_code == 200, r.text
    metrics = {m["value"]: m for m in r.json()}
    assert {world["plays"], world["likes"]} <= set(metrics) and world["secret"] not in metrics
    plays = metrics[world["plays"]]
    assert plays["label"] == world["plays"]
    assert [p["name"] for p in plays["payloads"]] == ["kind", "agg", "key", "step"]
    kind = plays["payloads"][0]
    assert kind["type"] == "select" and kind["reloadMetric"] is True
    assert [o["value"] for o in kind["options"]] == ["series", "topk"]
    # the builder reloads the metrics when kind changes: the chosen metric then offers topk's payloads
    r = api.post("/grafana/metrics", json={"metric": world["plays"], "payload": {"kind": "topk"}})
    metrics = {m["value"]: m for m in r.json()}
    assert [p["name"] for p in metrics[world["plays"]]["payloads"]] == ["kind", "k", "by"]
    assert [p["name"] for p in metrics[world["likes"]]["payloads"]] == ["kind", "agg", "key", "step"]
    assert world["secret"] in {m["value"] for m in api.post("/grafana/metrics", json={}, headers=T2).json()}


def test_metric_payload_options_offer_the_streams_keys_and_the_fixed_choices(api, world):
    r = api.post("/grafana/metric-payload-options",
                 json={"metric": world["plays"], "payload": {"kind": "series", "agg": "sum"}, "name": "key"})
    assert r.status_code == 200, r.text
    assert sorted(o["value"] for o in r.json()) == sorted({k for k, _, _ in world["oracle"].events})
    assert all(o["label"] == o["value"] for o in r.json())
    r = api.post("/grafana/metric-payload-options", json={"metric": world["plays"], "payload": {}, "name": "agg"})
    assert [o["value"] for o in r.json()] == ["count", "sum", "min", "max", "avg"]
    err = error_of(api.post("/grafana/metric-payload-options",
                            json={"metric": world["plays"], "payload": {}, "name": "colour"}), 400)
    assert err["details"] == [{"field": "name", "problem": "unknown payload"}]


# ---- /query: time series and tables equal the router's own answers -------------------------------------

def v1_series(api, stream, window, step, agg, key=None) -> list[list]:
    params = {"stream": stream, "from": format_time(window.start), "to": format_time(window.end), "step": step,
              "agg": agg, **({"key": key} if key else {})}
    r = api.get("/v1/query/series", params)
    assert r.status_code == 200, r.text
    return [[p["value"], parse_time(p["t"])] for p in r.json()["points"]]


@pytest.mark.parametrize("interval_ms, max_points, step", [(15_000, 1234, "1m"), (300_000, 1234, "5m"),
                                                          (20_000, 50, "10m"), (60_000, 2, "3h")])
def test_series_targets_equal_v1_series_with_the_interval_snapped_to_a_step(api, world, interval_ms, max_points,
                                                                            step):
    window = world["window"]
    body = grafana_query(window, [{"target": world["plays"], "payload": {"kind": "series", "agg": "sum"}},
                                  {"target": world["plays"], "payload": {"agg": "max", "key": ["song_1", "song_2"]}}],
                         interval_ms=interval_ms, max_points=max_points)
    r = api.post("/grafana/query", json=body)
    assert r.status_code == 200, r.text
    frames = r.json()
    assert [(f["target"], f["refId"]) for f in frames] == [
        (f"{world['plays']} sum", "A"), (f"{world['plays']} song_1 max", "B"), (f"{world['plays']} song_2 max", "B")]
    assert frames[0]["datapoints"] == v1_series(api, world["plays"], window, step, "sum")
    assert frames[1]["datapoints"] == v1_series(api, world["plays"], window, step, "max", "song_1")
    assert frames[2]["datapoints"] == v1_series(api, world["plays"], window, step, "max", "song_2")
    want = world["oracle"].series(window, parse_duration(step), "sum")
    got = [(t, v) for v, t in frames[0]["datapoints"]]
    assert [t for t, _ in got] == [t for t, _ in want] and all(close(g, w) for (_, g), (_, w) in zip(got, want))
    assert any(v is not None for v, _ in frames[0]["datapoints"])


def test_builder_payloads_arrive_as_strings_and_code_payloads_as_json(api, world):
    window = world["window"]
    builder = grafana_query(window, [{"target": world["plays"],
                                      "payload": {"kind": "topk", "k": "3", "by": "sum", "agg": ""}}])
    code = grafana_query(window, [{"target": world["plays"], "editorMode": "code",
                                   "payload": '{"kind": "topk", "k": 3, "by": "sum"}'}])
    a, b = (api.post("/grafana/query", json=body) for body in (builder, code))
    assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
    assert a.json() == b.json()


def test_topk_targets_are_tables_equal_to_v1_topk(api, world):
    window = world["window"]
    body = grafana_query(window, [{"target": world["plays"], "payload": {"kind": "topk", "k": 5, "by": "sum"}}])
    r = api.post("/grafana/query", json=body)
    assert r.status_code == 200, r.text
    [table] = r.json()
    assert table["type"] == "table" and table["refId"] == "A"
    assert table["columns"] == [{"text": "rank", "type": "number"}, {"text": "key", "type": "string"},
                                {"text": "sum", "type": "number"}]
    v1 = api.get("/v1/query/topk", {"stream": world["plays"], "from": format_time(window.start),
                                    "to": format_time(window.end), "k": 5, "by": "sum"}).json()
    assert table["rows"] == [[i["rank"], i["key"], i["value"]] for i in v1["items"]]
    want = world["oracle"].ordered(window, "sum")[:5]
    assert [row[1] for row in table["rows"]] == [k for k, _ in want]
    assert all(close(row[2], v) for row, (_, v) in zip(table["rows"], want))


def test_hidden_and_placeholder_targets_are_skipped(api, world):
    body = grafana_query(world["window"], [{"target": world["plays"], "hide": True, "payload": {}},
                                           {"payload": {}}])
    r = api.post("/grafana/query", json=body)
    assert r.status_code == 200 and r.json() == []


def test_an_adhoc_key_filter_narrows_series_and_tables(api, world):
    window = world["window"]
    adhoc = [{"key": "key", "operator": "=", "value": "song_3"}]
    body = grafana_query(window, [{"target": world["plays"], "payload": {"agg": "count"}},
                                  {"target": world["plays"], "payload": {"kind": "topk", "k": 10}}],
                         interval_ms=300_000, adhoc=adhoc)
    series, table = api.post("/grafana/query", json=body).json()
    assert series["datapoints"] == v1_series(api, world["plays"], window, "5m", "count", "song_3")
    assert [row[1] for row in table["rows"]] == ["song_3"]
    bad = grafana_query(window, [{"target": world["plays"], "payload": {}}],
                        adhoc=[{"key": "city", "operator": "!=", "value": "Berlin"}])
    assert error_of(api.post("/grafana/query", json=bad), 400)["details"][0]["field"] == "adhocFilters.0"


def test_query_errors_have_the_api_shape(api, world):
    window = world["window"]
    typo = grafana_query(window, [{"target": world["plays"], "payload": {"agregate": "sum"}}])
    err = error_of(api.post("/grafana/query", json=typo), 400)
    assert err["code"] == "validation_failed"
    assert err["details"] == [{"field": "targets.0.payload.agregate", "problem": "unknown parameter"}]
    err = error_of(api.post("/grafana/query", json=grafana_query(window, [{"target": "Not A Stream", "payload": {}}])),
                   400)
    assert err["details"] == [{"field": "targets.0.target", "problem": "not a stream name"}]
    too_fine = grafana_query(TimeRange(window.start - 30 * DAY_MS, window.end),
                             [{"target": world["plays"], "payload": {"step": "1m"}}])
    assert error_of(api.post("/grafana/query", json=too_fine), 400)["code"] == "too_many_points"
    assert error_of(api.post("/grafana/query", json={"targets": []}), 400)["details"][0]["field"] == "range"
    assert error_of(api.post("/grafana/query", data=b"[", headers={"Content-Type": "application/json"}),
                    400)["code"] == "invalid_json"
    err = error_of(api.post("/grafana/query", json=grafana_query(window, [{"target": world["plays"]}]),
                            headers={"Authorization": "Bearer grafana-ingest-only"}), 403)
    assert err["code"] == "forbidden"


def test_another_tenants_stream_is_not_found_as_if_it_never_existed(api, world):
    body = grafana_query(world["window"], [{"target": world["secret"], "payload": {"kind": "topk"}}])
    theirs = error_of(api.post("/grafana/query", json=body), 404)
    nobodys = error_of(api.post("/grafana/query", json=grafana_query(
        world["window"], [{"target": "no-such-stream", "payload": {"kind": "topk"}}])), 404)
    assert theirs["code"] == nobodys["code"] == "stream_not_found"
    assert theirs["message"].replace(world["secret"], "no-such-stream") == nobodys["message"]
    [table] = api.post("/grafana/query", json=body, headers=T2).json()
    assert table["rows"] == [[1, "hidden", 1.0]]


# ---- variables and ad hoc tags -------------------------------------------------------------------------

def test_variables_list_streams_and_a_streams_top_keys(api, world):
    window = world["window"]
    rng = {"from": format_time(window.start), "to": format_time(window.end), "raw": {"from": "now-6h", "to": "now"}}
    r = api.post("/grafana/variable", json={"payload": {"target": "streams"}, "range": rng,
                                            "rangeRaw": rng["raw"]})
    assert r.status_code == 200, r.text
    streams = [v["__value"] for v in r.json()]
    assert {world["plays"], world["likes"]} <= set(streams) and world["secret"] not in streams
    assert all(v["__text"] == v["__value"] for v in r.json())

    want = [k for k, _ in world["oracle"].ordered(window, "sum")[:3]]
    r = api.post("/grafana/variable", json={"payload": {"target": f"keys({world['plays']}, 3, sum)"}, "range": rng})
    assert [v["__value"] for v in r.json()] == want
    as_json = {"payload": {"target": "keys", "stream": world["plays"], "k": 3, "by": "sum"}, "range": rng}
    assert [v["__value"] for v in api.post("/grafana/variable", json=as_json).json()] == want
    err = error_of(api.post("/grafana/variable", json={"payload": {"target": "everything"}}), 400)
    assert err["details"] == [{"field": "payload.target", "problem": "not a variable query"}]


def test_tag_keys_and_values_for_adhoc_filters(api, world):
    assert api.post("/grafana/tag-keys", json={}).json() == [{"type": "string", "text": "key"}]
    window = world["window"]
    r = api.post("/grafana/tag-values", json={"key": "key", "timeRange": {
        "from": format_time(window.start), "to": format_time(window.end)}})
    assert r.status_code == 200, r.text
    assert [v["text"] for v in r.json()] == sorted({k for k, _, _ in world["oracle"].events} | {"x"})
    assert error_of(api.post("/grafana/tag-values", json={"key": "city"}), 400)["code"] == "bad_request"


# ---- the step snapping (pure) ----------------------------------------------------------------------------

def test_snap_step_never_exceeds_the_point_limit_and_honours_the_interval():
    assert snap_step(0, 6 * HOUR_MS, 15_000, 1234) == MINUTE_MS
    assert snap_step(0, 6 * HOUR_MS, 1000, None) == MINUTE_MS
    assert snap_step(0, 6 * HOUR_MS, 61_000, 10_000) == 2 * MINUTE_MS
    assert snap_step(0, 7 * DAY_MS, None, 100) == 2 * HOUR_MS
    assert snap_step(0, 365 * DAY_MS, None, 40) == 14 * DAY_MS
    # days, never `w` (a calendar week in /v1/query/series): auto steps stay epoch-aligned
    assert [step_text(s) for s in (MINUTE_MS, 30 * MINUTE_MS, 3 * HOUR_MS, 7 * DAY_MS, 14 * DAY_MS)] == [
        "1m", "30m", "3h", "7d", "14d"]
    for span in (HOUR_MS, 400 * DAY_MS, 30 * 365 * DAY_MS, 4000 * 365 * DAY_MS):
        step = snap_step(17 * MINUTE_MS, 17 * MINUTE_MS + span, 1, 1_000_000)
        first = 17 * MINUTE_MS - 17 * MINUTE_MS % step
        assert -(-(17 * MINUTE_MS + span - first) // step) <= MAX_POINTS and step % MINUTE_MS == 0


# ---- the provisioning files and the dashboard ------------------------------------------------------------

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "grafana"


def test_provisioning_points_grafana_at_the_router_with_a_bearer_key():
    [ds] = yaml.safe_load((DEPLOY / "provisioning/datasources/tierstore.yaml").read_text())["datasources"]
    assert (ds["type"], ds["uid"], ds["access"]) == ("simpod-json-datasource", "tierstore", "proxy")
    assert ds["url"] == "${TIERSTORE_ROUTER_URL}/grafana"
    assert ds["jsonData"]["httpHeaderName1"] == "Authorization"
    assert ds["secureJsonData"]["httpHeaderValue1"] == "Bearer ${TIERSTORE_GRAFANA_TOKEN}"
    [provider] = yaml.safe_load((DEPLOY / "provisioning/dashboards/tierstore.yaml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_every_dashboard_query_answers_as_the_plugin_would_send_it(api, world):
    """Variables are resolved through /variable and substituted as the plugin does (a multi-value
    variable in a code payload is JSON: an array), then each panel's targets go to /query."""
    dashboard = json.loads((DEPLOY / "dashboards/tierstore.json").read_text())
    window = world["window"]
    rng = {"from": format_time(window.start), "to": format_time(window.end)}
    values = {"stream": world["plays"]}
    for var in dashboard["templating"]["list"]:
        assert var["datasource"]["uid"] == "tierstore" and var["type"] == "query"
        query = var["query"]["query"].replace("$stream", values["stream"])
        found = [v["__value"] for v in api.post("/grafana/variable", json={"payload": {"target": query},
                                                                          "range": rng}).json()]
        assert found, var["name"]
        if var["name"] == "key":
            assert set(found) == {k for k, _, _ in world["oracle"].events}
            values["key"] = found[:2]
        else:
            assert world["plays"] in found
    kinds = []
    for panel in dashboard["panels"]:
        targets = []
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "tierstore"
            payload = t["payload"].replace("$key", json.dumps(values["key"]))
            targets.append({**t, "target": t["target"].replace("$stream", values["stream"]),
                            "payload": json.loads(payload)})
        r = api.post("/grafana/query", json=grafana_query(window, targets, interval_ms=60_000, max_points=800))
        assert r.status_code == 200, (panel["title"], r.text)
        frames = r.json()
        kinds.append((panel["type"], [f.get("type", "timeseries") for f in frames]))
        if panel["type"] == "table":
            assert frames[0]["rows"]
        else:
            assert all(any(v is not None for v, _ in f["datapoints"]) for f in frames)
    assert kinds == [("timeseries", ["timeseries"]), ("timeseries", ["timeseries", "timeseries"]),
                     ("table", ["table"])]
