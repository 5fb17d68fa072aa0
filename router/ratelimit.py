"""Rate limits per tenant (API.md, Access), counted in Redis so every router replica shares one budget.

settings.rate_limits maps a scope ("ingest", "query", "admin") to a `limits` rate string
("600/minute": requests of that scope per tenant) and "events" to the ingested events per tenant
("100000/second", charged with the number of events of each batch). Empty (the default): nobody is
throttled and Redis is not touched. Over a limit -> 429 `rate_limited` with `Retry-After` (seconds).
If Redis cannot be reached the request is let through and a warning logged: ingest then fails on its
own (Redis is the event log) and the other tiers keep answering. With settings.redis_mode "cluster"
the counters live in the Redis Cluster (`limits` RedisClusterStorage over a redis+cluster:// URI;
each counter's keys share a hash tag), its client built at the first request.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable
from urllib.parse import urlparse

import limits
from flask import Flask, current_app, g
from limits.errors import StorageError
from limits.storage import RedisClusterStorage, RedisStorage
from limits.strategies import MovingWindowRateLimiter, RateLimiter, SlidingWindowCounterRateLimiter

from rollups.errors import ConfigError, RateLimited
from router import policy

log = logging.getLogger("tierstore.router")

EXTENSION = "tierstore.ratelimit"
EVENTS = "events"
KEY_PREFIX = "tierstore:limits"
STORAGE_RETRY_S = 5.0  # cluster mode: how long after a failed connection the next one is tried


class RateLimitExceeded(RateLimited):
    """429 with the seconds to wait in a Retry-After header."""

    def __init__(self, message: str, details: list[dict[str, Any]], retry_after_s: int):
        super().__init__(message, details)
        self.headers = {"Retry-After": str(retry_after_s)}


def parse_limits(rate_limits: dict[str, str]) -> dict[str, limits.RateLimitItem]:
    """settings.rate_limits as `limits` items; ConfigError naming the bad entry."""
    items = {}
    for name, rate in rate_limits.items():
        if name not in (*policy.SCOPES, EVENTS):
            raise ConfigError(f"TIERSTORE_RATE_LIMITS: unknown entry {name!r}; use "
                              f"{', '.join(policy.SCOPES)} or {EVENTS}.")
        try:
            items[name] = limits.parse(rate)
        except ValueError as exc:
            raise ConfigError(f"TIERSTORE_RATE_LIMITS.{name}: {rate!r} is not a rate like '600/minute' ({exc}).") \
                from None
    return items


class RateLimits:
    """The limits of one router, counted in the Redis at redis_url (shared with every replica).

    Requests use a moving window (exact); events a sliding-window counter, whose cost per batch
    is O(1) in Redis whatever the batch size.
    """

    def __init__(self, redis_url: str, items: dict[str, limits.RateLimitItem],
                 on_refused: Callable[[str], None] | None = None, *, redis_mode: str = "standalone"):
        """on_refused(limit): called for each refusal (the scope, or "events"; /metrics counts them).
        redis_mode "cluster": redis_url names a node of a Redis Cluster."""
        self.items = items
        self.on_refused = on_refused
        self._redis_url, self._redis_mode = redis_url, redis_mode
        self._retry_at = 0.0
        self.storage: RedisStorage | None = None
        self.requests: RateLimiter | None = None
        self.events: RateLimiter | None = None
        if redis_mode != "cluster":
            self._connect()

    def _connect(self) -> bool:
        """Build the storage and limiters (a cluster client reads the slot map: at first use)."""
        if self.storage is not None:
            return True
        if time.monotonic() < self._retry_at:
            return False
        try:
            if self._redis_mode == "cluster":
                url = urlparse(self._redis_url)
                storage: RedisStorage = RedisClusterStorage(
                    f"redis+cluster://{url.netloc}", key_prefix=KEY_PREFIX, wrap_exceptions=True,
                    socket_timeout=2, socket_connect_timeout=1)
            else:
                storage = RedisStorage(self._redis_url, key_prefix=KEY_PREFIX, wrap_exceptions=True)
        except Exception as exc:  # noqa: BLE001 - the cluster is unreachable: let requests through
            self._retry_at = time.monotonic() + STORAGE_RETRY_S
            log.warning("rate limits not enforced: Redis Cluster unavailable (%s)", exc)
            return False
        self.requests = MovingWindowRateLimiter(storage)
        self.events = SlidingWindowCounterRateLimiter(storage)
        self.storage = storage
        return True

    def check_request(self, tenant: str, scope: str | None) -> None:
        """Count one request of `scope` for `tenant`; RateLimitExceeded when over its limit."""
        item = self.items.get(scope) if scope is not None else None
        if item is not None and self._connect():
            self._hit(self.requests, item, tenant, scope, 1, f"{scope} requests")

    def charge_events(self, tenant: str, n: int) -> None:
        """Count `n` ingested events for `tenant`; RateLimitExceeded (nothing counted) when over the quota."""
        item = self.items.get(EVENTS)
        if item is not None and n > 0 and self._connect():
            self._hit(self.events, item, tenant, EVENTS, n, "ingested events")

    def _hit(self, limiter: RateLimiter, item: limits.RateLimitItem, tenant: str, name: str, cost: int,
             what: str) -> None:
        try:
            if limiter.hit(item, tenant, name, cost=cost):
                return
            reset_time = limiter.get_window_stats(item, tenant, name).reset_time
        except StorageError as exc:
            log.warning("rate limits not enforced: Redis unavailable (%s)", exc)
            return
        if self.on_refused is not None:
            self.on_refused(name)
        wait = item.get_expiry() if cost > item.amount else reset_time - time.time()
        retry_after = max(1, math.ceil(wait))
        message = f"Tenant {tenant!r} is over its limit of {item} {what}; retry in {retry_after} s."
        if cost > item.amount:
            message += f" This batch alone ({cost} events) exceeds the limit: send smaller batches."
        raise RateLimitExceeded(message, [{"field": name, "problem": "over limit", "limit": str(item),
                                           "cost": cost}], retry_after)


def init_app(app: Flask, settings: Any) -> None:
    """Enforce settings.rate_limits on `app` (after auth.init_app: it needs g.tenant and g.scope)."""
    items = parse_limits(dict(getattr(settings, "rate_limits", {}) or {}))
    if not items:
        app.extensions[EXTENSION] = None
        return
    metrics = app.extensions["tierstore"].metrics if "tierstore" in app.extensions else None
    rate_limits = app.extensions[EXTENSION] = RateLimits(settings.redis_url, items,
                                                         metrics.refused if metrics is not None else None,
                                                         redis_mode=getattr(settings, "redis_mode", "standalone"))

    @app.before_request
    def limit_requests() -> None:
        rate_limits.check_request(g.tenant, g.get("scope"))


def charge_events(n: int) -> None:
    """Charge this request's tenant for `n` ingested events (a no-op without an events limit)."""
    rate_limits = current_app.extensions.get(EXTENSION)
    if rate_limits is not None:
        rate_limits.charge_events(g.tenant, n)
