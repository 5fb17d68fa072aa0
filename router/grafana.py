"""The Grafana data source: the JSON protocol of the simpod-json-datasource plugin under /grafana.

The plugin (https://github.com/simPod/GrafanaJsonDatasource, its openapi.yaml and README) calls:
  GET  /grafana                          "Test connection": 200 {"status": "ok", "tenant"}
  POST /grafana/metrics                  the metrics (= this tenant's streams) with their payload options
  POST /grafana/metric-payload-options   the options of one payload select (keys, aggregates, ...)
  POST /grafana/query                    targets -> time series [{"target", "datapoints": [[value, epoch_ms]]}]
                                         or tables {"type": "table", "columns", "rows"}
  POST /grafana/variable                 values of a dashboard variable [{"__text", "__value"}]
  POST /grafana/tag-keys, /grafana/tag-values   ad hoc filters (the tag `key`: series of one key)

A target is a stream; its payload says what to read (router/grafana_models.py, GrafanaPayload):
kind `series` (agg, key — one key, a list of keys, or none for the whole stream — and step, `auto`
by default: the Grafana interval snapped up to a step of STEPS) answers through the same function
as GET /v1/query/series; kind `topk` (k, by) through GET /v1/query/topk's. So the numbers are the
router's own, with the same tenant (the request's credentials: Grafana sends the key as Bearer),
planner, cache, errors (API.md shape) and exactness.
"""
from __future__ import annotations

import re
import time
from typing import Any, Iterable

from flask import Blueprint, request

from rollups.errors import BadRequest, TierUnavailable
from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, floor_to, now_ms, parse_time
from router import context
from router.grafana_models import (AGGS, BYS, KINDS, STEP_CHOICES, GrafanaPayload, QueryRequest, RangeBody,
                                   VariableQuery, payload_of)
from router.models import MAX_POINTS, STREAM_RE, SeriesParams, TopkParams, json_object, validate
from router.query import series_answer, topk_answer

bp = Blueprint("grafana", __name__, url_prefix="/grafana")

STEPS = tuple(m * MINUTE_MS for m in (1, 2, 5, 10, 15, 30)) + tuple(h * HOUR_MS for h in (1, 2, 3, 6, 12)) \
    + tuple(d * DAY_MS for d in (1, 2, 7, 14, 30))
"""The steps `auto` snaps to (epoch-aligned, so never the calendar `1w`); above 30d: whole days."""
OPTION_KEYS = 100
"""How many keys (by count) a key select, a key variable or the `key` tag offers."""
OPTION_WINDOW_MS = 7 * DAY_MS
"""The range those keys are ranked over when the request carries none (metric-payload-options)."""
TAG_KEY = "key"


def snap_step(start: int, end: int, interval_ms: float | None, max_points: float | None) -> int:
    """The smallest step of STEPS (then whole days) at least Grafana's interval and range/maxDataPoints,
    with at most MAX_POINTS buckets over [start, end) (epoch ms)."""
    wanted = max(MINUTE_MS, int(interval_ms or 0))
    if max_points and max_points >= 1:
        wanted = max(wanted, -(-(end - start) // int(max_points)))
    for step in STEPS:
        if step >= wanted and buckets(start, end, step) <= MAX_POINTS:
            return step
    days = max(-(-wanted // DAY_MS), STEPS[-1] // DAY_MS + 1)
    while buckets(start, end, days * DAY_MS) > MAX_POINTS:
        days += 1
    return days * DAY_MS


def buckets(start: int, end: int, step: int) -> int:
    return -(-(end - floor_to(start, step)) // step)


def step_text(step: int) -> str:
    """A step in ms as the series parameter: minutes, hours or days (never `w`, a calendar week)."""
    for unit, ms in (("d", DAY_MS), ("h", HOUR_MS)):
        if step % ms == 0:
            return f"{step // ms}{unit}"
    return f"{step // MINUTE_MS}m"


# ---- routes -------------------------------------------------------------------------------------

@bp.get("", strict_slashes=False)  # "/grafana/" too: older JSON data sources append a slash
def health():
    return context.json({"status": "ok", "tenant": context.tenant()})


@bp.post("/metrics")
def metrics():
    body = json_object(request.get_data(cache=False), '{"metric", "payload"}', allow_empty=True)
    current = body.get("metric") if isinstance(body.get("metric"), str) else None
    payload = body.get("payload") if isinstance(body.get("payload"), dict) else {}
    kind = payload.get("kind") if payload.get("kind") in KINDS else "series"
    return context.json([{"label": s, "value": s, "payloads": payload_configs(kind if s == current else "series")}
                         for s in streams()])


@bp.post("/metric-payload-options")
def metric_payload_options():
    body = json_object(request.get_data(cache=False), '{"metric", "payload", "name"}', allow_empty=False)
    name, metric = body.get("name"), body.get("metric")
    static = {"kind": KINDS, "agg": AGGS, "by": BYS, "step": STEP_CHOICES}
    if name in static:
        return context.json(options(static[name]))
    if name == TAG_KEY:
        stream = stream_name(metric, "metric")
        end = now_ms()
        return context.json(options(top_keys(stream, end - OPTION_WINDOW_MS, end)))
    raise BadRequest(f"There is no payload option {name!r}; payloads are kind, agg, key, step, k, by.",
                     [{"field": "name", "problem": "unknown payload"}])


@bp.post("/query")
def query():
    started = time.perf_counter()
    body = validate(QueryRequest, json_object(request.get_data(cache=False), '{"range", "targets", ...}',
                                              allow_empty=False))
    start, end = body.range.span()
    key_filter = adhoc_key(body.adhocFilters)
    frames: list[dict] = []
    for i, target in enumerate(body.targets):
        if target.hide or target.target is None:
            continue
        p = payload_of(target, i)
        ref = {"refId": target.refId} if target.refId is not None else {}
        stream = stream_name(target.target, f"targets.{i}.target")
        if p.kind == "topk":
            frames.append({**topk_table(stream, p, start, end, key_filter, started), **ref})
        else:
            step = step_text(snap_step(start, end, body.intervalMs, body.maxDataPoints)) if p.step == "auto" else p.step
            frames.extend({**f, **ref} for f in series_frames(stream, p, start, end, step, key_filter, started))
    return context.json(frames)


@bp.post("/variable")
def variable():
    body = validate(VariableQuery, json_object(request.get_data(cache=False), '{"payload", "range"}',
                                               allow_empty=False))
    what, stream, k, by = body.parsed()
    if what == "streams":
        values = streams()
    else:
        start, end = body.range.span() if body.range is not None else (now_ms() - OPTION_WINDOW_MS, now_ms())
        values = top_keys(stream_name(stream, "payload.stream"), start, end, k, by)
    return context.json([{"__text": v, "__value": v} for v in values])


@bp.post("/tag-keys")
def tag_keys():
    json_object(request.get_data(cache=False), "", allow_empty=True)
    return context.json([{"type": "string", "text": TAG_KEY}])


@bp.post("/tag-values")
def tag_values():
    body = json_object(request.get_data(cache=False), '{"key"}', allow_empty=False)
    if body.get("key") != TAG_KEY:
        raise BadRequest(f"The only tag is {TAG_KEY!r}.", [{"field": "key", "problem": f"not {TAG_KEY!r}"}])
    time_range = body.get("timeRange") or body.get("range")
    start, end = (validate(RangeBody, time_range).span() if isinstance(time_range, dict)
                  else (now_ms() - OPTION_WINDOW_MS, now_ms()))
    keys: set[str] = set()
    for stream in streams():
        keys.update(top_keys(stream, start, end))
    return context.json([{"text": k} for k in sorted(keys)])


# ---- the mapping onto the router's queries -------------------------------------------------------

def series_frames(stream: str, p: GrafanaPayload, start: int, end: int, step: str, key_filter: str | None,
                  started: float) -> list[dict]:
    """One time series per key of the payload (or of the ad hoc filter; else the whole stream) over
    [start, end) (epoch ms), each GET /v1/query/series's points as [[value, bucket start ms], ...]."""
    keys = p.keys() or ([key_filter] if key_filter is not None else [None])
    frames = []
    for key in keys:
        params = validate(SeriesParams, {"stream": stream, "from": start, "to": end, "step": step,
                                         "agg": p.agg, "key": key, "allow_partial": p.allow_partial})
        answer = series_answer(params, started)
        name = p.alias or (f"{stream} {p.agg}" if key is None else f"{stream} {key} {p.agg}")
        if p.alias and len(keys) > 1:
            name = f"{p.alias} {key}"
        frames.append({"target": name,
                       "datapoints": [[pt["value"], parse_time(pt["t"])] for pt in answer["points"]]})
    return frames


def topk_table(stream: str, p: GrafanaPayload, start: int, end: int, key_filter: str | None, started: float) -> dict:
    """GET /v1/query/topk's items over [start, end) as a table of rank, key and value (named after `by`)."""
    params = validate(TopkParams, {"stream": stream, "from": start, "to": end, "k": p.k, "by": p.by,
                                   "allow_partial": p.allow_partial})
    items = topk_answer(params, started)["items"]
    rows = [[i["rank"], i["key"], i["value"]] for i in items if key_filter in (None, i["key"])]
    return {"type": "table",
            "columns": [{"text": "rank", "type": "number"}, {"text": "key", "type": "string"},
                        {"text": p.by, "type": "number"}],
            "rows": rows}


def top_keys(stream: str, start: int, end: int, k: int = OPTION_KEYS, by: str = "count") -> list[str]:
    params = validate(TopkParams, {"stream": stream, "from": start, "to": end, "k": k, "by": by})
    return [i["key"] for i in topk_answer(params, time.perf_counter())["items"]]


def streams() -> list[str]:
    """This tenant's streams: those any configured tier holds data for (a tier that is down: 503)."""
    ctx = context.get()
    found: set[str] = set()
    for name, tier in ctx.tiers.items():
        if tier is None:
            raise TierUnavailable(name, f"The {name} tier is not configured.")
        found.update(tier.streams(context.tenant()))
    return sorted(found)


def stream_name(value: Any, field: str) -> str:
    """A target or metric as a stream name; Grafana's `regex` interpolation of a variable escapes `.`
    (`a\\.b`), which is undone here (a stream name holds no backslash)."""
    text = re.sub(r"\\(.)", r"\1", value) if isinstance(value, str) else value
    if not isinstance(text, str) or not STREAM_RE.fullmatch(text):
        raise BadRequest(f"{field} must be a stream name ([a-z0-9][a-z0-9_.-]{{0,63}}).",
                         [{"field": field, "problem": "not a stream name"}])
    return text


def adhoc_key(filters: Iterable[Any]) -> str | None:
    """The key an ad hoc filter `key = K` selects (None without one); other tags or operators: 400."""
    wanted = set()
    for i, f in enumerate(filters):
        if f.key != TAG_KEY or f.operator != "=":
            raise BadRequest(f"Ad hoc filters support only {TAG_KEY} = <key>.",
                             [{"field": f"adhocFilters.{i}", "problem": f"unsupported filter {f.key} {f.operator}"}])
        wanted.add(f.value)
    if len(wanted) > 1:
        raise BadRequest("One ad hoc key filter at a time.", [{"field": "adhocFilters", "problem": "several keys"}])
    return next(iter(wanted), None)


def options(values: Iterable[str]) -> list[dict]:
    return [{"label": v, "value": v} for v in values]


def payload_configs(kind: str) -> list[dict]:
    """The payload fields the query builder shows for `kind` (reloadMetric on kind swaps them)."""
    fields = [{"name": "kind", "label": "Kind", "type": "select", "reloadMetric": True, "width": 10,
               "placeholder": "series or topk", "options": options(KINDS)}]
    if kind == "topk":
        fields += [{"name": "k", "label": "K", "type": "input", "width": 8, "placeholder": "10"},
                   {"name": "by", "label": "By", "type": "select", "width": 10, "options": options(BYS)}]
    else:
        fields += [{"name": "agg", "label": "Aggregate", "type": "select", "width": 10, "options": options(AGGS)},
                   {"name": "key", "label": "Key", "type": "multi-select", "width": 20,
                    "placeholder": "every key (the whole stream)"},
                   {"name": "step", "label": "Step", "type": "select", "width": 10, "options": options(STEP_CHOICES)}]
    return fields
