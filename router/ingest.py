"""POST /v1/events and POST /v1/streams/{stream}/keys/{key}/score.

Validation is all-or-nothing and names every offending event. It runs as one tight loop over the
decoded JSON (a pydantic model per event costs ~10x more and was the bottleneck at 100k
events/s); the rules are exactly those of router.models.Event.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson
import pyarrow as pa
from flask import Blueprint, current_app, request

from rollups.errors import BadRequest, PayloadTooLarge, RangeSealed, TsInFuture, ValidationFailed
from rollups.timeutil import format_time, now_ms, parse_time
from router import context
from router.models import MAX_ID_BYTES, MAX_KEY_BYTES, STREAM_RE, ScoreRequest, validate
from tiers.base import EVENT_SCHEMA

bp = Blueprint("ingest", __name__)

EVENT_FIELDS = frozenset(("stream", "key", "ts", "value", "id"))
MAX_DETAILS = 100
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/json-lines")


@dataclass
class Columns:
    stream: list
    key: list
    ts: list
    value: list
    id: list

    def table(self) -> pa.Table:
        return pa.Table.from_arrays(
            [pa.array(self.stream, pa.string()), pa.array(self.key, pa.string()),
             pa.array(self.ts, pa.int64()), pa.array(self.value, pa.float64()), pa.array(self.id, pa.string())],
            schema=EVENT_SCHEMA)


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


def validate_events(events: list, now: int) -> Columns:
    """Check every event; raise ValidationFailed listing each problem, else return the columns."""
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
        if s not in good_streams:
            if type(s) is not str:
                problems.add(i, "stream", "missing or not a string")
            elif not STREAM_RE.match(s):
                problems.add(i, "stream", "must match [a-z0-9][a-z0-9_.-]{0,63}")
            else:
                good_streams.add(s)
        k = e.get("key")
        if type(k) is not str:
            problems.add(i, "key", "missing or not a string")
        elif not k or (len(k) > MAX_KEY_BYTES // 4 and len(k.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES):
            problems.add(i, "key", f"must be 1..{MAX_KEY_BYTES} UTF-8 bytes")
        t = e.get("ts")
        if type(t) is int:
            if not -62135596800000 <= t <= 253402300799999:
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
                    if type(t) is str:
                        ts_cache[t] = cached
            t = cached
        v = e.get("value", 1.0)
        tv = type(v)
        if tv is float:
            if v - v != 0.0:
                problems.add(i, "value", "must be a finite number")
        elif tv is int:
            try:
                v = float(v)
            except OverflowError:
                problems.add(i, "value", "must be a finite number")
        else:
            problems.add(i, "value", "must be a number" if v is not None else "must be a number, not null")
        d = e.get("id")
        if d is not None:
            if type(d) is not str:
                problems.add(i, "id", "must be a string")
            elif not d or (len(d) > MAX_ID_BYTES // 4 and len(d.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES):
                problems.add(i, "id", f"must be 1..{MAX_ID_BYTES} UTF-8 bytes")
        streams.append(s)
        keys.append(k)
        tss.append(t)
        values.append(v)
        ids.append(d)
    if problems.count:
        raise ValidationFailed(problems.message("The batch is invalid"), problems.details)
    return Columns(streams, keys, tss, values, ids)


def check_times(ts: list[int], now: int, skew: int, seal: int) -> None:
    """422 for events too far in the future or below the cold boundary (sealed)."""
    latest, earliest = max(ts), min(ts)
    if latest > now + skew:
        problems = Problems()
        for i, t in enumerate(ts):
            if t > now + skew:
                problems.add(i, "ts", f"more than {skew // 1000} s in the future ({format_time(t)})")
        raise TsInFuture(problems.message("Events are too far in the future"), problems.details)
    if earliest < seal:
        problems = Problems()
        for i, t in enumerate(ts):
            if t < seal:
                problems.add(i, "ts", f"before the cold boundary {format_time(seal)}")
        raise RangeSealed(problems.message(f"Events before {format_time(seal)} are sealed; history is changed "
                                           "only by `tierstore import`"), problems.details)


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
    cols = validate_events(events, now)
    hot = ctx.require_hot()
    check_times(cols.ts, now, settings.clock_skew, ctx.planner.snapshot().b_cold)
    result = hot.ingest(context.tenant(), cols.table(), now_ms=now)
    ctx.metrics.ingested(result.accepted, result.duplicates)
    return context.json({"accepted": result.accepted, "duplicates": result.duplicates}, 202)


@bp.post("/v1/streams/<stream>/keys/<path:key>/score")
def post_score(stream: str, key: str):
    ctx = context.get()
    body = read_body(64 * 1024)
    try:
        data = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.", [{"field": "body", "problem": "invalid JSON"}],
                         code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object {\"delta\": n, \"ts\": t}.",
                         [{"field": "body", "problem": "not an object"}])
    req = validate(ScoreRequest, data, strict=True)
    problems = []
    if not STREAM_RE.match(stream):
        problems.append({"field": "stream", "problem": "must match [a-z0-9][a-z0-9_.-]{0,63}"})
    if not 1 <= len(key.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES:
        problems.append({"field": "key", "problem": f"must be 1..{MAX_KEY_BYTES} UTF-8 bytes"})
    if problems:
        raise ValidationFailed("Invalid " + ", ".join(p["field"] for p in problems) + ".", problems)
    now = now_ms()
    ts = now if req.ts is None else parse_time(req.ts, now, field="ts")
    hot = ctx.require_hot()
    check_times([ts], now, ctx.settings.clock_skew, ctx.planner.snapshot().b_cold)
    score, rank = hot.score(context.tenant(), stream, key, float(req.delta), ts, now)
    return context.json({"stream": stream, "key": key, "score": score, "rank": rank})

