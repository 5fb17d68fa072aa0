"""The OpenAPI 3.1 document, generated from router.models (the same models that validate)."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from router import models as m
from router import alerts, deadletters, grafana_openapi, reports, streams, trending, ui
from router import stream_models as sm

REF = "#/components/schemas/{model}"

SERIES_DESCRIPTION = (
    "A time series of one aggregate. The range [from, to) is aligned to the minute (from rounded down, "
    "to rounded up); the response's from/to are the effective range. Buckets are `step` wide and aligned "
    "to the step in UTC since the epoch, so the first bucket may start before `from` and the last may end "
    "after `to`: each bucket is aggregated over its intersection with [from, to). An empty bucket has "
    f"value null. step must be a multiple of 1m; at most {m.MAX_POINTS} points (else 400 "
    "too_many_points: ask for a larger step). Calendar steps: `1w` is an ISO week (Monday 00:00), `1mo`, "
    "`1q`, `1y` calendar periods; with `tz=<IANA zone>` day and calendar buckets start at local midnight "
    "(a local day lasts 23 h or 25 h across a DST change); bucket times are still given in UTC.")
TOPK_DESCRIPTION = (
    "The k keys with the largest count or sum over [from, to) (minute-aligned as for series). Ordering: "
    "value descending, then key ascending (UTF-8 bytes). mode=approx merges per-bucket frequent-items "
    "sketches (Apache DataSketches): value is the estimate, lower_bound <= true value <= upper_bound, and "
    "meta.approx gives error_type, sketch_size and max_error (no key left out has a true value above it) "
    "and exact, the ranges read exactly ([{tier, from, to}], epoch ms; the rest from sketches); "
    "by=sum over negative values is answered exactly (meta.approx.fallback).")
RANK_DESCRIPTION = (
    "The 1-based rank of one key over [from, to) with the same ordering as topk, its value, the number of "
    "keys with events, and `around` neighbours on each side. rank and value are null when the key has no "
    "events in the range.")
META_NOTE = (" meta.segments lists every cover piece read (tier, range, granularity). When a tier is down "
             "the answer is 503 tier_unavailable naming it, unless allow_partial=1: then meta.partial is true "
             "and meta.missing lists the ranges not read. explain=1 returns the plan (meta.segments with "
             "took_ms null) without running it. meta.watermarks gives per tier the ingest time (epoch ms) up to "
             "which its part of the answer includes every acknowledged event: hot is the request's start; warm "
             "trails it until a late event is flushed and its rollups refreshed; cold and archive are when their "
             "range was sealed.")

QUERY_MODELS = {"series": (m.SeriesParams, m.SeriesResponse, SERIES_DESCRIPTION),
                "topk": (m.TopkParams, m.TopkResponse, TOPK_DESCRIPTION),
                "rank": (m.RankParams, m.RankResponse, RANK_DESCRIPTION)}

SCHEMA_MODELS: list[type[BaseModel]] = [
    m.ErrorResponse, m.IngestResponse, m.ScoreResponse, m.SeriesResponse, m.TopkResponse, m.RankResponse,
    m.ExplainResponse, m.TiersResponse, m.JobInfo, m.JobRunAccepted, m.JobRun, m.Health,
]
SCHEMA_MODELS += [trending.TrendingResponse, alerts.AlertRuleIn, alerts.AlertRule, alerts.AlertDetail,
                  alerts.AlertDeleted]  # issue 14: trending, alerts

ERRORS = {
    "400": "Malformed request (validation_failed, invalid_json, invalid_range, bad_request, ...).",
    "401": "Missing or unknown API key (when auth is enabled).",
    "404": "No such resource.",
    "409": "Conflict with the current state (e.g. report_not_ready).",
    "405": "Method not allowed.",
    "403": "The credentials lack the scope the route needs (forbidden, the scope named in details).",
    "413": "Batch over max_batch_events or max_batch_bytes.",
    "422": "Well-formed but refused: range_sealed, ts_in_future, clock_override_disabled.",
    "429": "rate_limited: over the tenant's limit for this scope (Retry-After header).",
    "503": "tier_unavailable: a tier (named in details) cannot be reached.",
}


def ref(model: type[BaseModel]) -> dict:
    return {"$ref": REF.format(model=model.__name__)}


def json_content(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def responses(ok_status: str, ok_description: str, schema: dict | None, errors: tuple[str, ...]) -> dict:
    out: dict[str, Any] = {ok_status: {"description": ok_description}}
    if schema is not None:
        out[ok_status]["content"] = json_content(schema)
    for status in errors:
        out[status] = {"description": ERRORS[status], "content": json_content(ref(m.ErrorResponse))}
    return out


def _access_responses(paths: dict[str, Any]) -> None:
    """Every operation that needs a scope (router.policy) can answer 401, 403 and 429 (API.md Access)."""
    from router.policy import required_scope

    for path, operations in paths.items():
        rule = path.replace("{", "<").replace("}", ">")
        for method, operation in operations.items():
            if required_scope(method.upper(), rule) is None:
                continue
            for status in ("401", "403", "429"):
                operation.setdefault("responses", {}).setdefault(
                    status, {"description": ERRORS[status], "content": json_content(ref(m.ErrorResponse))})


def query_parameters(model: type[BaseModel]) -> list[dict]:
    schema = model.model_json_schema(by_alias=True, ref_template=REF)
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        param = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description:
            param["description"] = description
        params.append(param)
    return params


def path_param(name: str, description: str, schema: dict | None = None) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string"},
            "description": description}


def field_schema(model: type[BaseModel], name: str) -> dict:
    """The JSON schema of one field of `model` (for a path parameter validated by the same rule)."""
    prop = dict(model.model_json_schema(by_alias=True, ref_template=REF)["properties"][name])
    prop.pop("title", None)
    prop.pop("description", None)
    return prop


@lru_cache(maxsize=1)
def openapi_document() -> dict:
    _, defs = models_json_schema([(model, "serialization") for model in SCHEMA_MODELS]
                                 + [(m.Event, "validation"), (m.ScoreRequest, "validation"),
                                    (m.JobRunRequest, "validation"), (reports.ReportCreate, "validation"),
                                    (reports.ReportAccepted, "serialization"),
                                    (reports.ReportStatus, "serialization"), (sm.StreamPut, "validation"),
                                    (sm.StreamInfo, "serialization"), (sm.StreamDeleted, "serialization")],
                                   ref_template=REF)
    paths: dict[str, Any] = {
        "/v1/events": {"post": {
            "operationId": "ingestEvents", "tags": ["ingest"],
            "summary": "Ingest a batch of events (all-or-nothing).",
            "description": "A JSON array of events, or NDJSON (one event per line) with Content-Type "
                           "application/x-ndjson. One invalid event refuses the whole batch; details list "
                           "{index, field, problem} for each. An id seen before within the dedup window is "
                           "counted once and reported in `duplicates`.",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"type": "array", "items": ref(m.Event), "minItems": 1}},
                "application/x-ndjson": {"schema": {"type": "string", "description": "One Event object per line."}}}},
            "responses": responses("202", "Accepted.", ref(m.IngestResponse), ("400", "401", "413", "422", "503")),
        }},
        "/v1/streams/{stream}/keys/{key}/score": {"post": {
            "operationId": "addScore", "tags": ["ingest"],
            "summary": "Add to a key's all-time score; returns the total and the all-time rank.",
            "description": "The key is the rest of the path up to `/score`, percent-encoded (`/` may be "
                           "encoded or not; `.` and `..` must be encoded as %2E); the same rules as an "
                           "event's key. |delta| <= 1e15: a float64 total needs ~1.8e293 such deltas to "
                           "overflow, so it never does.",
            "parameters": [path_param("stream", "Stream name.", field_schema(m.Event, "stream")),
                           path_param("key", "Key (percent-encoded). " + m.TEXT_NOTE.format(n=m.MAX_KEY_BYTES),
                                      field_schema(m.Event, "key"))],
            "requestBody": {"required": True, "content": json_content(ref(m.ScoreRequest))},
            "responses": responses("200", "The key's all-time score and rank.", ref(m.ScoreResponse),
                                   ("400", "401", "413", "422", "503")),
        }},
        "/v1/tiers": {"get": {
            "operationId": "listTiers", "tags": ["operations"],
            "summary": "The catalog: version, boundaries, and each tier's owned range and health.",
            "responses": responses("200", "The catalog.", ref(m.TiersResponse), ("401", "503")),
        }},
        "/v1/jobs": {"get": {
            "operationId": "listJobs", "tags": ["operations"], "summary": "Jobs with their last and next run.",
            "responses": responses("200", "Jobs.", {"type": "array", "items": ref(m.JobInfo)}, ("401", "503")),
        }},
        "/v1/jobs/{name}/run": {"post": {
            "operationId": "runJob", "tags": ["operations"],
            "summary": "Run a job now, as if the clock read as_of.",
            "description": "Jobs: flush, refresh, expire_hot, export_cold, archive, retention, rebuild_alltime, reports.",
            "parameters": [path_param("name", "Job name.")],
            "requestBody": {"required": False, "content": json_content(ref(m.JobRunRequest))},
            "responses": responses("202", "Started.", ref(m.JobRunAccepted), ("400", "401", "404", "422", "503")),
        }},
        "/v1/jobs/runs/{run_id}": {"get": {
            "operationId": "getJobRun", "tags": ["operations"], "summary": "One job run: status, progress, stats.",
            "parameters": [path_param("run_id", "Run id from POST /v1/jobs/{name}/run.")],
            "responses": responses("200", "The run.", ref(m.JobRun), ("401", "404", "503")),
        }},
        "/healthz": {"get": {"operationId": "healthz", "tags": ["operations"], "summary": "The process is up.",
                             "responses": responses("200", "Up.", ref(m.Health), ())}},
        "/readyz": {"get": {"operationId": "readyz", "tags": ["operations"],
                            "summary": "Every configured tier and the catalog answer.",
                            "responses": responses("200", "Ready.", ref(m.Health), ("503",))}},
        "/metrics": {"get": {"operationId": "metrics", "tags": ["operations"], "summary": "Prometheus metrics.",
                             "responses": {"200": {"description": "Prometheus text format.",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"operationId": "openapi", "tags": ["operations"], "summary": "This document.",
                                  "responses": {"200": {"description": "OpenAPI 3.1.",
                                                        "content": json_content({"type": "object"})}}}},
    }
    paths.update(reports.openapi_paths(ref, responses, path_param, json_content))
    paths.update(deadletters.openapi_paths(responses, path_param, json_content))
    paths.update(trending.openapi_paths(ref, responses))
    paths.update(alerts.openapi_paths(ref, responses, path_param, json_content))
    paths.update(ui.openapi_paths(responses, path_param))
    paths.update(grafana_openapi.openapi_paths(responses, json_content))
    paths.update(streams.openapi_paths(ref, responses, path_param, json_content))
    for name, (params_model, response_model, description) in QUERY_MODELS.items():
        paths[f"/v1/query/{name}"] = {"get": {
            "operationId": f"query{name.capitalize()}", "tags": ["query"],
            "summary": description.split(". ")[0] + ".", "description": description + META_NOTE,
            "parameters": query_parameters(params_model),
            "responses": responses("200", "The answer (or, with explain=1, the plan).",
                                   {"oneOf": [ref(response_model), ref(m.ExplainResponse)]},
                                   ("400", "401", "404", "503")),
        }}
    _access_responses(paths)
    return {
        "openapi": "3.1.0",
        "info": {"title": "tierstore", "version": "1",
                 "description": "Time-series tiered storage with an exact query router. Times in: RFC 3339, "
                                "epoch milliseconds or now[-N(s|m|h|d|w)]; times out: RFC 3339 UTC with "
                                "milliseconds. Ranges are half-open [from, to). Every error is "
                                "{\"error\": {\"code\", \"message\", \"details\"}}."},
        "components": {"schemas": defs["$defs"],
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "API key, when auth is enabled."}}},
        "security": [{"bearer": []}, {}],
        "paths": paths,
    }
