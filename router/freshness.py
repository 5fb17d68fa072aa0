"""meta.watermarks of every query answer: {tier: epoch ms or null}, the ingest time up to which the
tier's answers include every acknowledged event of its range (tiers/watermarks.py defines each).

Read at most once per CACHE_S per process (a thread-safe cache), so an answer costs no extra round
trip in the common case. Without `register_freshness` (an app built over bare tiers), or while a
source is down, every tier but hot is null — a query never fails for its watermarks.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from flask import current_app, g, request

from rollups.timeutil import now_ms
from tiers.watermarks import read_watermarks

log = logging.getLogger("tierstore.freshness")

EXTENSION = "tierstore.freshness"
CACHE_S = 1.0
FAILED_CACHE_S = 10.0
READ_TIMEOUT_S = 1.0
TIERS = ("hot", "warm", "cold", "archive")


class Watermarks:
    """The watermarks of one deployment, cached CACHE_S. `redis`: the event log's client; `pool`:
    psycopg_pool of the catalog/flush_checkpoint database; `warm`: tiers.warm.WarmTier (or None);
    `tiers`: the configured tier names."""

    def __init__(self, redis: Any, pool: Any, warm: Any, tiers: set[str]) -> None:
        self._redis, self._pool, self._warm, self._tiers = redis, pool, warm, set(tiers)
        self._lock = threading.Lock()
        self._cached: tuple[float, dict] | None = None

    def current(self) -> dict[str, int | None]:
        with self._lock:
            cached = self._cached
            if cached is not None and time.monotonic() < cached[0]:
                return _with_hot_now(cached[1], self._tiers)
            try:
                marks = read_watermarks(self._redis, self._pool, self._warm, self._tiers, timeout_s=READ_TIMEOUT_S)
                until = time.monotonic() + CACHE_S
            except Exception:  # noqa: BLE001  (a source that is down must not fail the query)
                log.warning("watermarks unavailable", exc_info=True)
                marks = {**dict.fromkeys(TIERS), "hot": now_ms()}
                until = time.monotonic() + FAILED_CACHE_S  # an outage costs READ_TIMEOUT_S this often
            self._cached = (until, marks)
            return _with_hot_now(marks, self._tiers)


def _with_hot_now(marks: dict, tiers: set[str]) -> dict:
    """hot is now (module tiers.watermarks), unless the last read found a handover under way."""
    return {**marks, "hot": now_ms() if "hot" in tiers and marks["hot"] is not None else None}


def register_freshness(app: Any, redis: Any, pool: Any, warm: Any) -> None:
    """Give the app's answers their watermarks (call once, from the composition root). They are
    taken when a query request starts, before any tier is read: a watermark read after the tiers
    could claim events the answer missed."""
    from router import context

    app.extensions[EXTENSION] = Watermarks(redis, pool, warm, set(app.extensions[context.EXTENSION].tiers))

    @app.before_request
    def take_watermarks() -> None:
        if request.path.startswith(QUERY_PATHS):
            g.watermarks = _read()


QUERY_PATHS = ("/v1/query/", "/grafana/")


def watermarks() -> dict[str, int | None]:
    """The watermarks of this request's answer: those taken when it started (register_freshness),
    else read now."""
    taken = g.get("watermarks")
    return taken if taken is not None else _read()


def _read() -> dict[str, int | None]:
    """The current app's watermarks (hot only when the app has no freshness sources)."""
    source = current_app.extensions.get(EXTENSION)
    if source is None:
        from router import context

        return _with_hot_now({**dict.fromkeys(TIERS), "hot": now_ms()}, set(context.get().tiers))
    return source.current()
