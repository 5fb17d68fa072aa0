"""The one error handler: every error leaves as {"error": {"code", "message", "details"}}.

TierstoreError carries its own status and code; werkzeug's HTTP errors (404 route, 405 method,
413 body) are mapped to the same shape; anything else is logged with its traceback and answered
500 with a generic sentence — never a stack trace.
"""
from __future__ import annotations

import logging

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from rollups.errors import TierstoreError

log = logging.getLogger("tierstore.router")

_HTTP_CODES = {
    400: ("bad_request", "The request is malformed."),
    401: ("unauthorized", "Authentication is required."),
    403: ("forbidden", "This credential may not do that."),
    404: ("not_found", "There is no such resource."),
    405: ("method_not_allowed", "This resource does not accept that method."),
    406: ("not_acceptable", "This resource cannot answer in a format the client accepts."),
    409: ("conflict", "The request conflicts with the current state."),
    413: ("payload_too_large", "The request body is too large."),
    415: ("unsupported_media_type", "The body's content type is not supported."),
    429: ("rate_limited", "Too many requests."),
}


def error_body(code: str, message: str, details: list | None = None) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "details": details or []}})


def error_response(status: int, code: str, message: str, details: list | None = None,
                   headers: dict | None = None) -> Response:
    return Response(error_body(code, message, details), status=status, mimetype="application/json",
                    headers=headers)


def handle_error(exc: BaseException) -> Response:
    if isinstance(exc, TierstoreError):
        headers = dict(getattr(exc, "headers", None) or {})  # e.g. Retry-After of a 429
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="tierstore"'
        return error_response(exc.status, exc.code, exc.message, exc.details, headers)
    if isinstance(exc, HTTPException) and exc.code is not None and exc.code < 500:
        code, message = _HTTP_CODES.get(exc.code, ("http_error", exc.name + "."))
        details: list = []
        headers = None
        if exc.code == 404:
            message = f"There is no resource at {request.path}."
        elif exc.code == 405:
            allowed = sorted(getattr(exc, "valid_methods", None) or [])
            message = f"{request.method} is not allowed on {request.path}; allowed: {', '.join(allowed)}."
            headers = {"Allow": ", ".join(allowed)}
        return error_response(exc.code, code, message, details, headers)
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal_error", "An internal error occurred; it has been logged.")


def init_app(app: Flask) -> None:
    app.register_error_handler(Exception, handle_error)
