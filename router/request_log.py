"""One log line per request, and the request id (the `X-Request-Id` header, both ways).

An incoming `X-Request-Id` of 1..128 characters from [A-Za-z0-9._:/+=-] is reused (a proxy's or a
client's id ties their logs to ours); anything else is replaced by a fresh uuid4 hex. The id is
echoed in the response's `X-Request-Id` header — error answers included — and every log record
written while the request runs carries it (RequestIdFilter), so a 500's traceback names it too.

The request line (logger `tierstore.requests`, INFO) carries request_id, tenant (null when the
credentials were refused), route (the url rule, null when nothing matched), method, path, status
and took_ms. tierstore/logs.py decides how records are written (JSON lines or text).
"""
from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, has_request_context, request

HEADER = "X-Request-Id"
_VALID_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
log = logging.getLogger("tierstore.requests")


def request_id_of(header: str | None) -> str:
    """The incoming id when it is a sane token, else a new one (uuid4 hex)."""
    if header is not None and _VALID_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Gives every record a `request_id`: the current request's, else the record's own (a job's
    run, say) or None."""

    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context() and "request_id" in g:
            record.request_id = g.request_id
        elif not hasattr(record, "request_id"):
            record.request_id = None
        return True


def init_app(app: Flask) -> None:
    """Register before every other before_request hook (the id must exist when auth refuses)."""

    @app.before_request
    def assign_request_id() -> None:
        g.request_id = request_id_of(request.headers.get(HEADER))
        g.request_started = time.perf_counter()

    @app.after_request
    def log_request(response: Response) -> Response:
        rid = g.get("request_id") or request_id_of(None)
        response.headers[HEADER] = rid
        started = g.get("request_started")
        took_ms = None if started is None else round((time.perf_counter() - started) * 1000, 3)
        rule = request.url_rule.rule if request.url_rule is not None else None
        log.info("%s %s %s %sms", request.method, request.path, response.status_code, took_ms,
                 extra={"request_id": rid, "tenant": g.get("tenant"), "route": rule, "method": request.method,
                        "path": request.path, "status": response.status_code, "took_ms": took_ms})
        return response
