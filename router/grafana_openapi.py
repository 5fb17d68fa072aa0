"""The /grafana paths of the OpenAPI document (router/openapi.py), after the plugin's openapi.yaml."""
from __future__ import annotations

from typing import Any

from router.grafana_models import AGGS, BYS, KINDS
from router.models import MAX_K

_TIME = {"oneOf": [{"type": "string"}, {"type": "integer"}],
         "description": "RFC 3339 (as Grafana sends it), epoch ms, or now[-N(s|m|h|d|w)]."}
_RANGE = {"type": "object", "required": ["from", "to"],
          "properties": {"from": _TIME, "to": _TIME, "raw": {"type": "object"}}}
_STRING = {"type": "string"}
_OPTION = {"type": "object", "required": ["value"], "properties": {"label": _STRING, "value": _STRING}}
_PAYLOAD = {"type": "object", "description": (
    f"kind ({'|'.join(KINDS)}, default series); series: agg ({'|'.join(AGGS)}, default count), key (a key, a list "
    f"of keys, or none: the whole stream), step (auto: the interval snapped to a valid step, or 1m, 5m, 1h...); "
    f"topk: k (1..{MAX_K}, default 10), by ({'|'.join(BYS)}); alias (series name); allow_partial. The builder "
    "sends values as strings, a cleared field as \"\" (the default applies); the code editor sends JSON."),
    "properties": {"kind": {"type": "string", "enum": list(KINDS)}, "agg": {"type": "string", "enum": list(AGGS)},
                   "key": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                   "step": {"type": "string"}, "k": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
                   "by": {"type": "string", "enum": list(BYS)}, "alias": {"type": "string"},
                   "allow_partial": {"type": "boolean"}}}
_TARGET = {"type": "object", "properties": {
    "target": {"type": "string", "description": "The stream."}, "refId": _STRING, "hide": {"type": "boolean"},
    "payload": {"oneOf": [_PAYLOAD, {"type": "string", "description": "The payload as JSON text."}]}}}
_SERIES = {"type": "object", "required": ["target", "datapoints"], "properties": {
    "target": {"type": "string"}, "refId": {"type": "string"},
    "datapoints": {"type": "array", "items": {"type": "array", "minItems": 2, "maxItems": 2, "prefixItems": [
        {"type": ["number", "null"], "description": "The value, null for an empty bucket."},
        {"type": "integer", "description": "The bucket start, epoch ms."}]}}}}
_TABLE = {"type": "object", "required": ["type", "columns", "rows"], "properties": {
    "type": {"const": "table"}, "refId": {"type": "string"},
    "columns": {"type": "array", "items": {"type": "object", "required": ["text"],
                                           "properties": {"text": {"type": "string"}, "type": {"type": "string"}}}},
    "rows": {"type": "array", "items": {"type": "array", "items": {"type": ["string", "number"]}}}}}
_ERRORS = ("400", "401", "404", "503")  # 404: stream_not_found


def openapi_paths(responses, json_content) -> dict[str, Any]:
    """The /grafana paths, built with router/openapi.py's helpers."""
    def post(op: str, summary: str, body: dict, ok: dict, description: str = "") -> dict:
        return {"post": {"operationId": op, "tags": ["grafana"], "summary": summary, "description": description,
                         "requestBody": {"required": True, "content": json_content(body)},
                         "responses": responses("200", "The answer.", ok, _ERRORS)}}

    return {
        "/grafana": {"get": {
            "operationId": "grafanaHealth", "tags": ["grafana"],
            "summary": "The simpod-json-datasource \"Test connection\": 200 with valid query credentials.",
            "responses": responses("200", "Working.", {"type": "object", "required": ["status", "tenant"],
                                                       "properties": {"status": {"const": "ok"}, "tenant": _STRING}},
                                   _ERRORS)}},
        "/grafana/metrics": post(
            "grafanaMetrics", "The metrics: this tenant's streams, with the query builder's payload fields.",
            {"type": "object", "properties": {"metric": {"type": "string"}, "payload": {"type": "object"}}},
            {"type": "array", "items": {"type": "object", "required": ["value", "payloads"], "properties": {
                "label": {"type": "string"}, "value": {"type": "string"},
                "payloads": {"type": "array", "items": {"type": "object", "required": ["name"]}}}}},
            "payload.kind of the current metric (series or topk) chooses the payload fields it offers."),
        "/grafana/metric-payload-options": post(
            "grafanaMetricPayloadOptions",
            "The options of one payload select: a stream's top keys, or the fixed choices.",
            {"type": "object", "required": ["name"], "properties": {
                "metric": {"type": "string"}, "payload": {"type": "object"}, "name": {"type": "string"}}},
            {"type": "array", "items": _OPTION}),
        "/grafana/query": post(
            "grafanaQuery", "Panel data: a series target is GET /v1/query/series, a topk target GET /v1/query/topk.",
            {"type": "object", "required": ["range", "targets"], "properties": {
                "range": _RANGE, "targets": {"type": "array", "items": _TARGET},
                "intervalMs": {"type": "number", "minimum": 0}, "maxDataPoints": {"type": "number", "minimum": 0},
                "adhocFilters": {"type": "array", "items": {"type": "object", "required": ["key", "operator", "value"],
                                                            "properties": {"key": {"type": "string"},
                                                                           "operator": {"type": "string"},
                                                                           "value": {"type": "string"}}}}}},
            {"type": "array", "items": {"anyOf": [_SERIES, _TABLE]}},
            "Time series [{target, datapoints: [[value, epoch_ms]]}] and tables {type: table, columns, rows: "
            "[[rank, key, value]]}. Ad hoc filters: only `key = K`."),
        "/grafana/variable": post(
            "grafanaVariable", "A dashboard variable: \"streams\" or \"keys(<stream>[, k[, count|sum]])\".",
            {"type": "object", "required": ["payload"], "properties": {"payload": {"type": "object"}, "range": _RANGE}},
            {"type": "array", "items": {"type": "object", "required": ["__text", "__value"], "properties": {
                "__text": {"type": "string"}, "__value": {"type": "string"}}}}),
        "/grafana/tag-keys": post(
            "grafanaTagKeys", "Ad hoc filter keys: `key`.", {"type": "object"},
            {"type": "array", "items": {"type": "object", "properties": {"type": {"type": "string"},
                                                                         "text": {"type": "string"}}}}),
        "/grafana/tag-values": post(
            "grafanaTagValues", "Ad hoc filter values of `key`: the top keys of every stream over the range.",
            {"type": "object", "required": ["key"], "properties": {"key": {"type": "string"}, "timeRange": _RANGE}},
            {"type": "array", "items": {"type": "object", "required": ["text"], "properties": {"text": _STRING}}}),
    }
