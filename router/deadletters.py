"""Dead letters (API.md "Operations"): events a tier refused after ingest accepted them.

    GET    /v1/deadletters              -> [DeadLetterInfo]   the tenant's dead letters, oldest first
    GET    /v1/deadletters/{id}         -> DeadLetterInfo     with every event (no cap)
    POST   /v1/deadletters/{id}/replay  -> 202 {"id", "status": "replayed", "entry", "events"}
    DELETE /v1/deadletters/{id}         -> 200 {"id", "status": "deleted", "events"}

A DeadLetterInfo is {"id", "stream", "entry" (the log entry it came from), "count" (events),
"events": [{"stream", "key", "ts" (RFC 3339 ms), "value", "id"}] (the first EVENTS_SHOWN in the list;
"events_truncated" says whether more exist), "reasons" (one per listed event), "reason" (the
driver's message), "first_seen" (RFC 3339 ms)}.

Scope: the caller's tenant only (g.tenant) — an admin of tenant A sees, replays and deletes only
A's dead letters. The auth policy (router/auth.py) requires admin for every route here.
A replay appends the events to the event log as a new entry (they were counted in hot at ingest
and their ids consumed, so they skip hot and dedup) and deletes the dead letter, atomically; the
next flush tries them again, and a tier that still refuses them makes a new dead letter. Replay
and delete are recorded in audit_log (tiers/audit.py) with who asked, from where and when, in the
same PostgreSQL transaction that checked the dead letter is settled (409 `deadletter_unsettled`
while the flush that wrote it has not committed yet). Events below the seal mark cannot be
replayed (422 `range_sealed`: their range went cold; `tierstore import` rewrites history).

Wire with `register_deadletters(app, redis_client, pool)` after create_app: it also adds the
scrape-time operations metrics (router.metrics.OperationsCollector).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from flask import Blueprint, Flask, current_app, request
from psycopg_pool import ConnectionPool, PoolTimeout

from rollups.errors import Conflict, NotFound, RangeSealed, TierUnavailable
from rollups.timeutil import format_time
from router import context
from router.metrics import OperationsCollector
from tiers import audit
from tiers.deadletters import REPLAY_LOG, DeadLetter, DeadLetterStore, Sealed, settled
from tiers.eventlog import format_id, read_flush_checkpoint, stream_log_key

EXTENSION = "tierstore.deadletters"
EVENTS_SHOWN = 100
PG_TIMEOUT_S = 5.0

bp = Blueprint("deadletters", __name__)


@dataclass
class DeadLetters:
    store: DeadLetterStore
    pool: ConnectionPool


def register_deadletters(app: Flask, redis_client, pool: ConnectionPool) -> None:
    """Serve the dead-letter API in `app` and add the operations metrics (call once, after
    create_app). `redis_client`: the instance's Redis (the log and the store); `pool`: PostgreSQL
    (audit_log, flush_checkpoint, job_runs, catalog)."""
    store = DeadLetterStore(redis_client)
    app.extensions[EXTENSION] = DeadLetters(store, pool)
    app.register_blueprint(bp)
    app.extensions[context.EXTENSION].metrics.add_collector(OperationsCollector(redis_client, pool, store))


def store_of(app: Flask) -> DeadLetterStore | None:
    """The app's dead-letter store, None when not wired (readyz uses it)."""
    found = app.extensions.get(EXTENSION)
    return None if found is None else found.store


def requester() -> tuple[str, str | None]:
    """(principal, remote address) of the request, for the audit log."""
    return str(context.principal()), request.remote_addr


def _service() -> DeadLetters:
    found = current_app.extensions.get(EXTENSION)
    if found is None:
        raise TierUnavailable("deadletters", "The dead-letter store is not configured in this process.")
    return found


@contextmanager
def _services():
    try:
        yield
    except redis.RedisError as exc:
        raise TierUnavailable("hot", "Redis (the event log and the dead-letter store) is unavailable.") from exc
    except (psycopg.Error, PoolTimeout) as exc:
        raise TierUnavailable("warm", "PostgreSQL (the audit log and the flush checkpoint) is unavailable.") from exc


def info(dead: DeadLetter, shown: int | None = EVENTS_SHOWN) -> dict[str, Any]:
    """A dead letter as API JSON, with its first `shown` events (None: all)."""
    rows = dead.events if shown is None else dead.events.slice(0, shown)
    events = [{**r, "ts": format_time(r["ts"])} for r in rows.to_pylist()]
    return {"id": dead.id, "stream": dead.stream, "entry": format_id(dead.entry), "count": dead.count,
            "events": events, "events_truncated": rows.num_rows < dead.count,
            "reasons": dead.reasons[:rows.num_rows], "reason": dead.reason, "first_seen": format_time(dead.first_seen)}


@bp.get("/v1/deadletters")
def list_deadletters():
    with _services():
        found = _service().store.list(context.tenant())
    return context.json([info(d) for d in found])


@bp.get("/v1/deadletters/<dl_id>")
def get_deadletter(dl_id: str):
    with _services():
        dead = _service().store.get(context.tenant(), dl_id)
    if dead is None:
        raise _not_found(dl_id)
    return context.json(info(dead, None))


@bp.post("/v1/deadletters/<dl_id>/replay")
def replay_deadletter(dl_id: str):
    def act(store: DeadLetterStore, tenant: str) -> dict[str, Any]:
        try:
            done = store.replay(tenant, dl_id)
        except Sealed as exc:
            raise RangeSealed(f"Dead letter {dl_id!r} holds events older than the seal mark "
                              f"{format_time(exc.seal_ms)}: their range is cold now and cannot take them back "
                              f"through the log (use `tierstore import`).",
                              [{"field": "id", "problem": "events below the seal mark",
                                "seal": format_time(exc.seal_ms)}]) from None
        if done is None:
            raise _not_found(dl_id)
        return {"id": dl_id, "status": "replayed", "entry": done[0], "events": done[1]}

    return context.json(_audited("deadletter.replay", dl_id, act), 202)


@bp.delete("/v1/deadletters/<dl_id>")
def delete_deadletter(dl_id: str):
    def act(store: DeadLetterStore, tenant: str) -> dict[str, Any]:
        count = store.delete(tenant, dl_id)
        if count is None:
            raise _not_found(dl_id)
        return {"id": dl_id, "status": "deleted", "events": count}

    return context.json(_audited("deadletter.delete", dl_id, act))


def _audited(action: str, dl_id: str, act) -> dict[str, Any]:
    """Check the dead letter is settled, record the audit row, act (one atomic Redis script), commit:
    one PostgreSQL transaction, so a refused or failed action leaves no audit row. The one window
    left is PostgreSQL failing at COMMIT after the script ran (the client then sees a 503)."""
    svc, tenant = _service(), context.tenant()
    principal, remote = requester()
    with _services(), svc.pool.connection(timeout=PG_TIMEOUT_S) as conn:
        dead = svc.store.get(tenant, dl_id)
        if dead is None:
            raise _not_found(dl_id)
        if not (settled(read_flush_checkpoint(conn, stream_log_key(tenant, dead.stream)), dead)
                or settled(read_flush_checkpoint(conn, REPLAY_LOG), dead)
                or settled(read_flush_checkpoint(conn), dead)):
            raise Conflict(f"Dead letter {dl_id!r} was written by a flush that has not committed yet; "
                           f"retry once the flush job has run.", [{"field": "id", "problem": "not settled"}],
                           code="deadletter_unsettled")
        audit.record(conn, principal=principal, tenant=tenant, remote_addr=remote, action=action, target=dl_id,
                     details={"entry": format_id(dead.entry), "stream": dead.stream, "events": dead.count})
        result = act(svc.store, tenant)
    return result


def _not_found(dl_id: str) -> NotFound:
    return NotFound(f"There is no dead letter {dl_id!r} for this tenant.",
                    [{"field": "id", "problem": "unknown dead letter"}], code="unknown_deadletter")


_TIME = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC, millisecond precision."}
_EVENT = {"type": "object", "required": ["stream", "key", "ts", "value", "id"], "properties": {
    "stream": {"type": "string"}, "key": {"type": "string"}, "ts": _TIME, "value": {"type": "number"},
    "id": {"type": ["string", "null"]}}}
_INFO = {"type": "object", "required": ["id", "stream", "entry", "count", "events", "events_truncated", "reasons",
                                        "reason", "first_seen"], "properties": {
    "id": {"type": "string"}, "stream": {"type": "string"},
    "entry": {"type": "string", "description": "The event-log entry the events came from."},
    "count": {"type": "integer", "minimum": 1, "description": "Events in the dead letter."},
    "events": {"type": "array", "items": _EVENT,
               "description": f"The events (the list shows the first {EVENTS_SHOWN}; GET one shows all)."},
    "events_truncated": {"type": "boolean"},
    "reasons": {"type": "array", "items": {"type": "string"}, "description": "Why each listed event was refused."},
    "reason": {"type": "string", "description": "The tier's (driver's) message."}, "first_seen": _TIME}}
_ACTION = {"type": "object", "required": ["id", "status", "events"], "properties": {
    "id": {"type": "string"}, "status": {"type": "string", "enum": ["replayed", "deleted"]},
    "entry": {"type": "string", "description": "replay: the new event-log entry."}, "events": {"type": "integer"}}}


def openapi_paths(responses, path_param, json_content) -> dict[str, Any]:
    """The dead-letter paths, built with router/openapi.py's helpers."""
    did = path_param("id", "Dead-letter id from GET /v1/deadletters.")
    return {
        "/v1/deadletters": {"get": {
            "operationId": "listDeadLetters", "tags": ["operations"],
            "summary": "Events a tier refused after they were accepted (this tenant's), oldest first.",
            "responses": responses("200", "The dead letters.", {"type": "array", "items": _INFO}, ("401", "503")),
        }},
        "/v1/deadletters/{id}": {
            "get": {"operationId": "getDeadLetter", "tags": ["operations"], "summary": "One dead letter, every event.",
                    "parameters": [did], "responses": responses("200", "The dead letter.", _INFO, ("401", "404", "503"))},
            "delete": {"operationId": "deleteDeadLetter", "tags": ["operations"],
                       "summary": "Discard a dead letter for good (audited).", "parameters": [did],
                       "responses": responses("200", "Deleted.", _ACTION, ("401", "404", "409", "503"))},
        },
        "/v1/deadletters/{id}/replay": {"post": {
            "operationId": "replayDeadLetter", "tags": ["operations"],
            "summary": "Put the events back into the event log; the next flush tries them again (audited).",
            "description": "409 deadletter_unsettled while the flush that wrote it has not committed; 422 "
                           "range_sealed when its events lie below the seal mark.",
            "parameters": [did], "responses": responses("202", "Back in the event log.", _ACTION,
                                                        ("401", "404", "409", "422", "503")),
        }},
    }
