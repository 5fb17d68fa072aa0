"""The stream registry API (API.md "Operations") and the stream checks of ingest and queries.

    GET    /v1/streams            -> [StreamInfo]  the tenant's streams: registered ones and ones with data
    GET    /v1/streams/{stream}   -> StreamInfo    (404 stream_not_found: neither registered nor any data)
    PUT    /v1/streams/{stream}   -> 201 | 200 StreamInfo   (admin; create or replace the description)
    DELETE /v1/streams/{stream}   -> 200 StreamDeleted      (admin; the entry and every tier's data)

A StreamInfo is the entry's fields, `registered`, `events` (across every tier) and `tiers`
[{name, rows, bytes}] (tiers.sizes: rows in the range each tier owns). DELETE is refused with 409
`stream_on_hold` while an active legal hold (tierstore/holds.py, table legal_holds) covers a range
in which the stream holds events; it is recorded in audit_log (tiers/audit.py) in the transaction
that removes the entry, and the tiers' data is deleted before that transaction commits (a failure
rolls the entry and the audit row back; DELETE again finishes the job). Events still in the event
log (not yet flushed) reach warm after the delete: run the flush job first.

For the rest of the router (all through the app's RegistryCache, never PostgreSQL per request):
  check_bounds(tenant, table)       ingest: 400 with a detail per event outside its stream's bounds
  require_known(tenant, stream)     queries: 404 stream_not_found for a stream that never existed
  stream_time_zone(tenant, stream)  the stream's default IANA zone, or None

Wire with `register_streams(app, pool, redis_client)` after create_app.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from flask import Blueprint, Flask, current_app, has_app_context, request
from psycopg_pool import ConnectionPool, PoolTimeout

from rollups.errors import Conflict, NotFound, TierstoreError, TierUnavailable, ValidationFailed
from rollups.timeutil import MAX_MS, MIN_MS, MINUTE_MS, TimeRange, ceil_to, floor_to, format_time, from_datetime
from router import context
from router.models import STREAM_PROBLEM, STREAM_RE, json_object, validate
from router.stream_cache import RegistryCache
from router.stream_models import StreamPut
from tiers import audit, sizes
from tiers.catalog import TIER_ORDER
from tiers.sketch_store import prune_range
from tiers.stream_registry import StreamEntry, StreamRegistry, interned_streams, is_interned, retention_to_ms

log = logging.getLogger("tierstore.streams")

EXTENSION = "tierstore.streams"
PG_TIMEOUT_S = 5.0
_MAX_DETAILS = 100

bp = Blueprint("streams", __name__)


@dataclass
class Streams:
    registry: StreamRegistry
    cache: RegistryCache
    pool: ConnectionPool
    redis: Any
    known: set[tuple[str, str]] = field(default_factory=set)  # streams seen to exist (they never stop)
    lock: threading.Lock = field(default_factory=threading.Lock)


def register_streams(app: Flask, pool: ConnectionPool, redis_client, *, ttl_s: float | None = None) -> Streams:
    """Serve the registry API in `app` and turn on the bounds check at ingest and the
    stream_not_found check of queries (call once, after create_app). `pool`: PostgreSQL;
    `redis_client`: the hot tier's Redis (its per-tenant stream sets)."""
    registry = StreamRegistry(pool, wait_s=PG_TIMEOUT_S)
    cache = RegistryCache(registry.all, **({} if ttl_s is None else {"ttl_s": ttl_s}))
    cache.refresh()  # a first load at boot; should PostgreSQL be down, ingest starts without bounds
    svc = Streams(registry, cache, pool, redis_client)
    app.extensions[EXTENSION] = svc
    app.register_blueprint(bp)
    return svc


def _service(required: bool = True) -> Streams | None:
    found = current_app.extensions.get(EXTENSION) if has_app_context() else None
    if found is None and required:
        raise TierUnavailable("streams", "The stream registry is not configured in this process.")
    return found


@contextmanager
def _pg():
    try:
        yield
    except (psycopg.Error, PoolTimeout) as exc:
        raise TierUnavailable("warm", "PostgreSQL (the stream registry) is unavailable.") from exc


# ---- for ingest and queries --------------------------------------------------------------------

def stream_time_zone(tenant: str, stream: str) -> str | None:
    """The stream's default IANA time zone (PUT /v1/streams/{stream} "time_zone"), or None when it
    has none, is not registered, or the registry is not wired. Reads the router's cache (no
    PostgreSQL per call); call it inside a request (it needs the app context)."""
    svc = _service(required=False)
    if svc is None:
        return None
    entry = svc.cache.get(tenant, stream)
    return None if entry is None else entry.time_zone


def check_bounds(tenant: str, table: pa.Table) -> None:
    """Raise ValidationFailed (400) naming each event whose value lies outside its stream's
    [value_min, value_max]; table is EVENT_SCHEMA. No-op when the registry is not wired."""
    svc = _service(required=False)
    if svc is None:
        return
    bounded = svc.cache.bounded(tenant)
    if not bounded:
        return
    present = set(table["stream"].unique().to_pylist())
    details, count = [], 0
    for name, entry in ((s, e) for s, e in bounded.items() if s in present):
        mask = pc.equal(table["stream"], name)
        bad = pc.invert(pc.and_(pc.greater_equal(table["value"], entry.value_min if entry.value_min is not None
                                                 else float("-inf")),
                                pc.less_equal(table["value"], entry.value_max if entry.value_max is not None
                                              else float("inf"))))
        hits = pc.indices_nonzero(pc.and_(mask, bad)).to_pylist()
        count += len(hits)
        for i in hits:
            if len(details) < _MAX_DETAILS:
                details.append({"index": i, "field": "value",
                                "problem": entry.value_problem(table["value"][i].as_py())})
    if count:
        details.sort(key=lambda d: d["index"])
        more = f" (the first {_MAX_DETAILS} are listed)" if count > _MAX_DETAILS else ""
        raise ValidationFailed(f"Values outside their stream's bounds: {count} problem(s){more}; nothing was "
                               "stored.", details)


def check_score_bounds(tenant: str, stream: str, delta: float) -> None:
    """A score delta is an event value: 400 when outside the stream's bounds."""
    check_bounds(tenant, pa.table({"stream": pa.array([stream]), "value": pa.array([delta], pa.float64())}))


def stream_exists(svc: Streams, tenant: str, stream: str) -> bool:
    """Registered, or data in any tier: the registry cache, the streams seen before, Redis' set of
    the tenant's hot streams, then the key dictionary (every stream that reached warm, cold or
    archive). Fails open (True) when Redis and PostgreSQL cannot tell."""
    if (tenant, stream) in svc.known or svc.cache.get(tenant, stream) is not None:
        return True
    try:
        found = bool(svc.redis.sismember(f"tierstore:hot:streams:{{{tenant}}}", stream))
        if not found:
            found = is_interned(svc.pool, tenant, stream)
    except Exception:  # noqa: BLE001 - a tier that is down answers for itself (503) later
        return True
    if found:
        with svc.lock:
            svc.known.add((tenant, stream))
    return found


def not_found(stream: str) -> NotFound:
    return NotFound(f"There is no stream {stream!r} for this tenant: no registry entry and no data in any tier.",
                    [{"field": "stream", "problem": "unknown stream"}], code="stream_not_found")


def require_known(tenant: str, stream: str) -> None:
    """404 stream_not_found when the stream never existed for the tenant (no-op when the registry is
    not wired). Costs a set lookup for a stream seen before."""
    svc = _service(required=False)
    if svc is not None and not stream_exists(svc, tenant, stream):
        raise not_found(stream)


# ---- the API ----------------------------------------------------------------------------------

def _check_name(stream: str) -> None:
    if not STREAM_RE.fullmatch(stream):
        raise ValidationFailed(f"Invalid stream name {stream[:80]!r}.", [{"field": "stream", "problem": STREAM_PROBLEM}])


def _time(value) -> str | None:
    return None if value is None else format_time(from_datetime(value))


def _tier_rows(tenant: str, stream: str | None) -> dict[str, dict[tuple[str, str], tuple[int, int | None]] | None]:
    """Per tier: (rows, bytes) per (tenant, stream), or None when the tier could not be read."""
    ctx = context.get()
    snap = ctx.planner.snapshot()
    out: dict[str, Any] = {}
    futures = {}
    for name in TIER_ORDER:
        tier = ctx.tiers.get(name)
        if tier is not None:
            futures[name] = ctx.pool.submit(sizes.tier_sizes, name, tier, snap.owns(name), tenant, stream)
    for name in TIER_ORDER:
        fut = futures.get(name)
        try:
            out[name] = None if fut is None else fut.result(timeout=30)["streams"]
        except Exception as exc:  # noqa: BLE001 - a tier down shows as null sizes
            log.warning("sizes of the %s tier unavailable: %s", name, exc)
            out[name] = None
    return out


def _info(stream: str, entry: StreamEntry | None, per_tier: dict[str, Any], tenant: str) -> dict[str, Any]:
    tiers, events = [], 0
    for name in TIER_ORDER:
        found = per_tier.get(name)
        nothing = (0, 0 if name in ("cold", "archive") else None)  # warm and hot cannot size one stream
        rows, size = (None, None) if found is None else found.get((tenant, stream), nothing)
        tiers.append({"name": name, "rows": rows, "bytes": size})
        events = None if events is None or rows is None else events + rows
    e = entry or StreamEntry(tenant, stream)
    return {"stream": stream, "registered": entry is not None, "description": e.description, "unit": e.unit,
            "value_min": e.value_min, "value_max": e.value_max, "retention": e.retention,
            "time_zone": e.time_zone, "created": _time(e.created_at), "updated": _time(e.updated_at),
            "events": events, "tiers": tiers}


@bp.get("/v1/streams")
def list_streams():
    svc, tenant = _service(), context.tenant()
    with _pg():
        entries = {e.stream: e for e in svc.registry.list(tenant)}
        names = set(entries) | set(interned_streams(svc.pool, tenant, PG_TIMEOUT_S))
    try:
        names |= set(context.get().tiers["hot"].streams(tenant)) if "hot" in context.get().tiers else set()
    except TierstoreError:
        pass
    per_tier = _tier_rows(tenant, None)
    return context.json([_info(s, entries.get(s), per_tier, tenant) for s in sorted(names)])


@bp.get("/v1/streams/<stream>")
def get_stream(stream: str):
    _check_name(stream)
    svc, tenant = _service(), context.tenant()
    with _pg():
        entry = svc.registry.get(tenant, stream)
    if entry is None and not stream_exists(svc, tenant, stream):
        raise not_found(stream)
    return context.json(_info(stream, entry, _tier_rows(tenant, stream), tenant))


@bp.put("/v1/streams/<stream>")
def put_stream(stream: str):
    _check_name(stream)
    svc, tenant = _service(), context.tenant()
    data = json_object(request.get_data(cache=False), '{"description", "unit", "value_min", "value_max", '
                                                      '"retention", "time_zone"}', allow_empty=True)
    req = validate(StreamPut, data, strict=True)
    principal = str(context.principal())
    entry = StreamEntry(tenant, stream, req.description, req.unit, req.value_min, req.value_max, req.retention,
                        None if req.retention is None else retention_to_ms(req.retention), req.time_zone,
                        updated_by=principal)
    with _pg(), svc.pool.connection(timeout=PG_TIMEOUT_S) as conn:
        stored, created = svc.registry.put(conn, entry)
        audit.record(conn, principal=principal, tenant=tenant, remote_addr=request.remote_addr,
                     action="stream.create" if created else "stream.update", target=stream,
                     details={"value_min": req.value_min, "value_max": req.value_max,
                              "retention": req.retention, "time_zone": req.time_zone})
    svc.cache.stored(stored)
    with svc.lock:
        svc.known.add((tenant, stream))
    return context.json(_info(stream, stored, _tier_rows(tenant, stream), tenant), 201 if created else 200)


def _held_events(tenant: str, stream: str, holds: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """The holds (id, from, to) under which the stream holds events, with the count under each."""
    from router.planner import QuerySpec

    ctx = context.get()
    found = []
    for hold_id, lo, hi in holds:
        rng = TimeRange(max(floor_to(max(lo, MIN_MS), MINUTE_MS), MIN_MS), min(ceil_to(min(hi, MAX_MS), MINUTE_MS),
                                                                              floor_to(MAX_MS, MINUTE_MS)))
        if rng.empty:
            continue
        plan = ctx.planner.plan(QuerySpec(tenant, stream, rng, "bucket"), allow_partial=False)
        count = int(pc.sum(ctx.planner.execute(plan, allow_partial=False).partials["count"]).as_py() or 0)
        if count:
            found.append({"hold": hold_id, "from": format_time(lo), "to": format_time(hi), "events": count})
    return found


@bp.delete("/v1/streams/<stream>")
def delete_stream(stream: str):
    _check_name(stream)
    svc, tenant, ctx = _service(), context.tenant(), context.get()
    principal = str(context.principal())
    with _pg(), svc.pool.connection(timeout=PG_TIMEOUT_S) as conn:
        entry = svc.registry.get(tenant, stream)
        if entry is None and not stream_exists(svc, tenant, stream):
            raise not_found(stream)
        # FOR SHARE: a hold placed meanwhile waits for this transaction, so none is missed
        holds = conn.execute("SELECT id, from_ms, to_ms FROM legal_holds WHERE released_at IS NULL AND tenant = %s "
                             "AND (stream IS NULL OR stream = %s) ORDER BY id FOR SHARE",
                             (tenant, stream)).fetchall()
        held = _held_events(tenant, stream, holds)
        if held:
            raise Conflict(f"Stream {stream!r} holds events under {len(held)} active legal hold(s); it cannot be "
                           "deleted until they are released.",
                           [{"field": "stream", "problem": "under legal hold", **h} for h in held],
                           code="stream_on_hold")
        removed = svc.registry.delete(conn, tenant, stream)
        deleted = {}
        for name in TIER_ORDER:
            tier = ctx.tiers.get(name)
            if tier is not None:
                deleted[name] = int(tier.delete_range(tenant, stream, TimeRange(MIN_MS, MAX_MS)) or 0)
        prune_range(conn, tenant, stream, MIN_MS, MAX_MS)  # mode=approx sketch rows (files go with the tiers)
        audit.record(conn, principal=principal, tenant=tenant, remote_addr=request.remote_addr,
                     action="stream.delete", target=stream,
                     details={"registered": removed is not None, "deleted": deleted})
    svc.cache.removed(tenant, stream)
    return context.json({"stream": stream, "status": "deleted", "registered": removed is not None,
                         "deleted": deleted})


def openapi_paths(ref, responses, path_param, json_content) -> dict[str, Any]:
    """The registry's paths, built with router/openapi.py's helpers."""
    from router.models import Event
    from router.openapi import field_schema
    from router.stream_models import StreamDeleted, StreamInfo

    name = path_param("stream", "Stream name.", field_schema(Event, "stream"))
    info = ref(StreamInfo)
    return {
        "/v1/streams": {"get": {
            "operationId": "listStreams", "tags": ["streams"],
            "summary": "The tenant's streams (registered ones and ones with data) with events and tier sizes.",
            "responses": responses("200", "The streams, by name.", {"type": "array", "items": info}, ("401", "503")),
        }},
        "/v1/streams/{stream}": {
            "get": {"operationId": "getStream", "tags": ["streams"], "parameters": [name],
                    "summary": "One stream: its registry entry (or defaults), events and tier sizes.",
                    "responses": responses("200", "The stream.", info, ("400", "401", "404", "503"))},
            "put": {"operationId": "putStream", "tags": ["streams"], "parameters": [name],
                    "summary": "Create or replace a stream's registry entry (admin; audited).",
                    "description": "value_min/value_max bound the values ingest accepts from then on (400 with "
                                   "a detail per event outside them); retention replaces archive_retention "
                                   "for the stream; time_zone is its default IANA zone.",
                    "requestBody": {"required": False, "content": json_content(ref(StreamPut))},
                    "responses": {**responses("200", "Replaced.", info, ("400", "401", "503")),
                                  "201": {"description": "Created.", "content": json_content(info)}}},
            "delete": {"operationId": "deleteStream", "tags": ["streams"], "parameters": [name],
                       "summary": "Delete a stream: its entry and its data in every tier (admin; audited).",
                       "description": "409 stream_on_hold while an active legal hold covers events of the stream.",
                       "responses": responses("200", "Deleted.", ref(StreamDeleted),
                                              ("400", "401", "404", "409", "503"))},
        },
    }
