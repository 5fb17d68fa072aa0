"""The one exception hierarchy of tierstore.

Every error a client can see is a `TierstoreError` carrying its HTTP status, a snake_case code,
a human sentence and optional details; the router's single error handler turns it into
`{"error": {"code", "message", "details"}}`. Driver errors are translated at the tier boundary
(`raise TierUnavailable("cold") from exc`), so nothing else ever reaches a client.
"""
from __future__ import annotations

from typing import Any


class TierstoreError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or []
        if code:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class BadRequest(TierstoreError, ValueError):
    """Malformed input (400)."""

    status = 400
    code = "bad_request"


class ValidationFailed(BadRequest):
    """Input that does not satisfy the schema; details name each offending field."""

    code = "validation_failed"


class Unauthorized(TierstoreError):
    status = 401
    code = "unauthorized"


class Forbidden(TierstoreError):
    status = 403
    code = "forbidden"


class NotFound(TierstoreError, LookupError):
    status = 404
    code = "not_found"


class Conflict(TierstoreError):
    status = 409
    code = "conflict"


class PayloadTooLarge(TierstoreError):
    status = 413
    code = "payload_too_large"


class Refused(TierstoreError):
    """Well-formed but refused (422), e.g. `range_sealed`, `ts_in_future`."""

    status = 422
    code = "unprocessable"


class RangeSealed(Refused):
    code = "range_sealed"


class TsInFuture(Refused):
    code = "ts_in_future"


class ClockOverrideDisabled(Refused):
    """A job's `as_of` later than now + clock_skew while the setting allow_clock_override is off."""

    code = "clock_override_disabled"


class RateLimited(TierstoreError):
    status = 429
    code = "rate_limited"


class TierUnavailable(TierstoreError):
    """A tier (or the service behind it) cannot be reached (503). `tier` names it."""

    status = 503
    code = "tier_unavailable"

    def __init__(self, tier: str, message: str | None = None, details: list[dict[str, Any]] | None = None):
        super().__init__(message or f"The {tier} tier is unavailable.", details or [{"tier": tier}])
        self.tier = tier


class ConfigError(TierstoreError):
    """A bad setting; raised at start-up with a sentence naming the setting."""

    code = "config_error"
