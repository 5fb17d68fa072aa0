"""POST /v1/events and POST /v1/streams/{stream}/keys/{key}/score.

Validation is all-or-nothing and names every offending event; the rules are exactly those of
router.models.Event (a pydantic model per event costs ~10x more and was the bottleneck at 100k
events/s). A vectorised pass (C-level column extraction, Arrow conversions and length checks)
accepts a good batch; only a batch it refuses goes through the per-event loop, which finds and
names every problem.
"""
from __future__ import annotations

import operator
from itertools import repeat
from operator import itemgetter

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from flask import Blueprint, request
from werkzeug.routing import BaseConverter

from rollups.errors import BadRequest, PayloadTooLarge, TsInFuture, ValidationFailed
from rollups.timeutil import MAX_MS, MIN_MS, format_time, now_ms, parse_time
from router import context, ratelimit, streams
from router.models import (MAX_ABS_VALUE, MAX_ID_BYTES, MAX_KEY_BYTES, STREAM_PROBLEM, STREAM_RE, ScoreRequest,
                           json_object, text_problem, validate, value_problem)
from tiers.base import EVENT_SCHEMA
from tiers.eventlog import sealed_error

bp = Blueprint("ingest", __name__)


class AnyKeyConverter(BaseConverter):
    """A URL path part holding any key the edge accepts: "/" anywhere (even first, last or doubled,
    which werkzeug's `path` converter refuses or merges) and line breaks; the route decides the rest."""

    regex = r"[\s\S]+?"
    part_isolating = False
    weight = 200


@bp.record_once
def _register_converters(state) -> None:  # before the routes below are added
    state.app.url_map.converters.setdefault("anykey", AnyKeyConverter)

EVENT_FIELDS = frozenset(("stream", "key", "ts", "value", "id"))
MAX_DETAILS = 100
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/json-lines")
RFC3339_PLAIN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?(Z|[+-]\d{2}:\d{2})$"

_get_stream, _get_key, _get_ts = itemgetter("stream"), itemgetter("key"), itemgetter("ts")


def events_table(streams, keys, ts, values, ids) -> pa.Table:
    return pa.Table.from_arrays(
        [pa.array(streams, pa.string()), pa.array(keys, pa.string()), pa.array(ts, pa.int64()),
         pa.array(values, pa.float64()), pa.array(ids, pa.string())], schema=EVENT_SCHEMA)


class Problems:
    """Collects per-event problems; keeps the first MAX_DETAILS, counts them all."""

    def __init__(self) -> None:
        self.details: list[dict] = []
        self.count = 0

    def add(self, index: int, field: str, problem: str) -> None:
        self.count += 1
        if len(self.details) < MAX_DETAILS:
            self.details.append({"index": index, "field": field, "problem": problem})

    def message(self, what: str) -> str:
        more = f" (the first {MAX_DETAILS} are listed)" if self.count > MAX_DETAILS else ""
        return f"{what}: {self.count} problem(s){more}; nothing was stored."


def read_body(max_bytes: int) -> bytes:
    """The request body, refusing with 413 before reading when Content-Length is over the limit."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"The body is {length} bytes; the limit is {max_bytes} (max_batch_bytes).",
                              [{"field": "body", "problem": f"over {max_bytes} bytes"}])
    body = request.stream.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"The body is over the limit of {max_bytes} bytes (max_batch_bytes).",
                              [{"field": "body", "problem": f"over {max_bytes} bytes"}])
    return body


def decode_events(body: bytes, ndjson: bool) -> list:
    if ndjson:
        events = []
        for n, line in enumerate(body.split(b"\n")):
            if not line.strip():
                continue
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"Line {n + 1} of the NDJSON body is not valid JSON: {exc}.",
                                 [{"line": n + 1, "field": "body", "problem": "invalid JSON"}],
                                 code="invalid_json") from None
        return events
    try:
        events = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.", [{"field": "body", "problem": "invalid JSON"}],
                         code="invalid_json") from None
    if not isinstance(events, list):
        raise BadRequest("The body must be a JSON array of events (or NDJSON with Content-Type "
                         "application/x-ndjson).", [{"field": "body", "problem": "not an array"}])
    return events


def validate_events(events: list, now: int) -> pa.Table:
    """The batch as a table of EVENT_SCHEMA; raises ValidationFailed listing each problem."""
    table = _valid_table(events, now)
    return table if table is not None else _checked_table(events, now)


def _valid_table(events: list, now: int) -> pa.Table | None:
    """The table when every event is valid, else None (then _checked_table names the problems)."""
    try:
        if set(map(type, events)) != {dict}:
            return None
        streams, keys, ts = list(map(_get_stream, events)), list(map(_get_key, events)), list(map(_get_ts, events))
        values, n_values = _column(events, "value", 1.0)
        ids, n_ids = _column(events, "id", None)
        # every event has stream, key and ts (else KeyError above): no other field anywhere exactly
        # when the fields add up (cheaper than a union of every event's keys)
        if sum(map(len, events)) != 3 * len(events) + n_values + n_ids:
            return None
        if (set(map(type, streams)) != {str} or set(map(type, keys)) != {str}
                or not set(map(type, values)) <= {float, int} or not set(map(type, ids)) <= {str, type(None)}):
            return None
        if not all(map(STREAM_RE.fullmatch, set(streams))):
            return None
        ts_types = set(map(type, ts))
        if ts_types == {str}:
            ts = _rfc3339_column(ts)
        elif ts_types != {int}:
            return None
        table = events_table(streams, keys, ts, values, ids)
    except (KeyError, BadRequest, OverflowError, UnicodeEncodeError, pa.ArrowException):
        return None
    lo_hi = pc.min_max(table["ts"]).as_py()
    if lo_hi["min"] < MIN_MS or lo_hi["max"] > MAX_MS:
        return None
    for column, limit in (("key", MAX_KEY_BYTES), ("id", MAX_ID_BYTES)):
        lengths = pc.min_max(pc.binary_length(table[column])).as_py()
        if lengths["min"] is not None and not (1 <= lengths["min"] and lengths["max"] <= limit):
            return None
        if pc.any(pc.match_substring(table[column], "\x00")).as_py():
            return None
    # NaN compares false: this also refuses every value that is not finite
    if not pc.all(pc.less_equal(pc.abs(table["value"]), MAX_ABS_VALUE)).as_py():
        return None
    return table


def _column(events: list[dict], field: str, default) -> tuple[list, int]:
    """The optional field's values (default where absent) and how many events have it."""
    try:
        return list(map(itemgetter(field), events)), len(events)  # every event has it (C-level)
    except KeyError:
        return [e.get(field, default) for e in events], sum(map(operator.contains, events, repeat(field)))


def _rfc3339_column(ts: list[str]) -> pa.Array:
    """Epoch ms of RFC 3339 strings in the plain form (seconds, at most ms fractions, Z or offset),
    parsed by Arrow; raises ArrowException for anything else (the per-event loop decides then)."""
    strings = pa.array(ts, pa.string())
    if not pc.all(pc.match_substring_regex(strings, RFC3339_PLAIN)).as_py():
        raise pa.ArrowInvalid("not every ts is a plain RFC 3339 time")
    return strings.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())


def _checked_table(events: list, now: int) -> pa.Table:
    """Check every event on its own; raise ValidationFailed naming each problem."""
    streams, keys, tss, values, ids = [], [], [], [], []
    problems = Problems()
    good_streams: set[str] = set()
    ts_cache: dict[str, int] = {}
    for i, e in enumerate(events):
        if type(e) is not dict:
            problems.add(i, "event", "not a JSON object")
            continue
        if len(e) > 5 or not EVENT_FIELDS.issuperset(e):
            for f in e:
                if f not in EVENT_FIELDS:
                    problems.add(i, str(f)[:64], "unknown field")
        s = e.get("stream")
        if type(s) is not str:
            problems.add(i, "stream", "missing or not a string")
        elif s not in good_streams:
            if not STREAM_RE.fullmatch(s):
                problems.add(i, "stream", STREAM_PROBLEM)
            else:
                good_streams.add(s)
        k = e.get("key")
        if type(k) is not str:
            problems.add(i, "key", "missing or not a string")
        else:
            problem = text_problem(k, MAX_KEY_BYTES)
            if problem:
                problems.add(i, "key", problem)
        t = e.get("ts")
        if type(t) is int:
            if not MIN_MS <= t <= MAX_MS:
                problems.add(i, "ts", "epoch milliseconds out of range")
                t = 0
        else:
            cached = ts_cache.get(t) if type(t) is str else None
            if cached is None:
                try:
                    cached = parse_time(t, now, field="ts")
                except BadRequest as exc:
                    problems.add(i, "ts", exc.details[0]["problem"] if exc.details else "not a time")
                    cached = 0
                else:
                    if not MIN_MS <= cached <= MAX_MS:
                        problems.add(i, "ts", "before year 1 or after year 9999")
                        cached = 0
                    elif type(t) is str:
                        ts_cache[t] = cached
            t = cached
        v = e.get("value", 1.0)
        tv = type(v)
        if tv is float or tv is int:
            problem = value_problem(v)
            if problem:
                problems.add(i, "value", problem)
            else:
                v = float(v)
        else:
            problems.add(i, "value", "must be a number" if v is not None else "must be a number, not null")
        d = e.get("id")
        if d is not None:
            if type(d) is not str:
                problems.add(i, "id", "must be a string")
            else:
                problem = text_problem(d, MAX_ID_BYTES)
                if problem:
                    problems.add(i, "id", problem)
        streams.append(s)
        keys.append(k)
        tss.append(t)
        values.append(v)
        ids.append(d)
    if problems.count:
        raise ValidationFailed(problems.message("The batch is invalid"), problems.details)
    return events_table(streams, keys, tss, values, ids)


def check_times(ts_column: pa.ChunkedArray, now: int, skew: int, seal: int) -> None:
    """422 for events too far in the future or below the cold boundary (sealed)."""
    lo_hi = pc.min_max(ts_column).as_py()
    if lo_hi["max"] <= now + skew and lo_hi["min"] >= seal:
        return
    if lo_hi["max"] > now + skew:
        ts = ts_column.to_pylist()
        problems = Problems()
        for i, t in enumerate(ts):
            if t > now + skew:
                problems.add(i, "ts", f"more than {skew // 1000} s in the future ({format_time(t)})")
        raise TsInFuture(problems.message("Events are too far in the future"), problems.details)
    if lo_hi["min"] < seal:
        raise sealed_error(ts_column.to_numpy(), seal)


@bp.post("/v1/events")
def post_events():
    ctx = context.get()
    settings = ctx.settings
    ndjson = (request.mimetype or "") in NDJSON_TYPES
    body = read_body(settings.max_batch_bytes)
    events = decode_events(body, ndjson)
    if not events:
        raise BadRequest("The batch is empty.", [{"field": "body", "problem": "no events"}], code="empty_batch")
    if len(events) > settings.max_batch_events:
        raise PayloadTooLarge(f"The batch holds {len(events)} events; the limit is {settings.max_batch_events} "
                              "(max_batch_events).", [{"field": "body", "problem": "too many events"}])
    now = now_ms()
    table = validate_events(events, now)
    streams.check_bounds(context.tenant(), table)
    hot = ctx.require_hot()
    check_times(table["ts"], now, settings.clock_skew, ctx.planner.snapshot().b_cold)
    ratelimit.charge_events(len(table))
    result = hot.ingest(context.tenant(), table, now_ms=now)
    ctx.metrics.ingested(result.accepted, result.duplicates)
    return context.json({"accepted": result.accepted, "duplicates": result.duplicates}, 202)


@bp.post("/v1/streams/<stream>/keys/<anykey:key>/score", merge_slashes=False)
def post_score(stream: str, key: str):
    ctx = context.get()
    body = read_body(64 * 1024)
    data = json_object(body, '{"delta": n, "ts": t}', allow_empty=True)
    req = validate(ScoreRequest, data, strict=True)
    problems = []
    if not STREAM_RE.fullmatch(stream):
        problems.append({"field": "stream", "problem": STREAM_PROBLEM})
    key_problem = text_problem(key, MAX_KEY_BYTES)
    if key_problem:
        problems.append({"field": "key", "problem": key_problem})
    if problems:
        raise ValidationFailed("Invalid " + ", ".join(p["field"] for p in problems) + ".", problems)
    streams.check_score_bounds(context.tenant(), stream, float(req.delta))
    now = now_ms()
    ts = now if req.ts is None else parse_time(req.ts, now, field="ts")
    hot = ctx.require_hot()
    check_times(pa.chunked_array([[ts]], pa.int64()), now, ctx.settings.clock_skew, ctx.planner.snapshot().b_cold)
    ratelimit.charge_events(1)
    score, rank = hot.score(context.tenant(), stream, key, float(req.delta), ts, now)
    return context.json({"stream": stream, "key": key, "score": score, "rank": rank})

