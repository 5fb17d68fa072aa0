"""A fresh router worker runs the read paths once before it takes requests ("warm-up").

Why: the first ask in a fresh process paid ~40-60 ms per tier path that no later ask pays — the
SQLAlchemy statements of warm's sorted and random access compiled, the pool's connections' first
statements, the hot tier's Lua scripts loaded (NOSCRIPT, then SCRIPT LOAD), DuckDB and the S3
client created, the stream's key dictionary loaded (bench/first_ask.py --after-jobs, 7M events,
500k keys: a 7-day top-100 answered in 114-122 ms as a process's first request, 63 ms right after
another range's query in the same process). Readiness probes and load balancers send traffic to a
worker once it is up, so each gunicorn worker (tierstore.app.wsgi) runs, before it returns the
app, the queries a dashboard would: for the stream with the most keys in the hot tier's all-time
leaderboard, top-100 by count and by sum over the last hour, 24 hours, 7 and 30 days, over a
month inside cold and inside the archive (when they own one), the last year (every tier), a rank
of the leader over the last 24 hours, 7 and 30 days and year, and a 1-year daily series.

Exact by construction: these are ordinary queries through the ordinary handlers (their answers
are discarded; what they leave in the caches is keyed by data version like any other read). They
bypass authentication and rate limits (no HTTP request: the view functions are called in a
request context of the stream's own tenant) and write no audit or request metrics. Bounded: the
worker waits at most `warmup_ms` (setting; 0: off) and then serves, the warm-up going on in the
background; a failing query (a tier down) is logged and skipped — warm-up never stops a worker.

Data that comes after the worker started (a checker or a new install: `tierstore serve` first,
then ingest, import and the jobs) is warmed too: a daemon thread of each worker looks every
RECHECK_S at what the instance holds — the busiest stream and which tiers own data (the catalog's
boundaries) — and runs the warm-up again when that changed since the last one (an empty instance
at start, a first export to cold, a first archive), never more often than that.

    warm_up(app, budget_ms) -> {"stream", "queries", "failed", "ms"} or None; never raises.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from flask import Flask, g

from rollups.timeutil import DAY_MS, HOUR_MS, MIN_MS, MINUTE_MS, floor_to, now_ms

log = logging.getLogger("tierstore.router.warmup")
#: app.extensions key of the last warm-up's stats
EXTENSION = "tierstore.warmup"
#: seconds between two looks at what the instance holds (module doc)
RECHECK_S = 20.0
#: the 7-day and 1-year spans (ms) and a month inside cold or the archive
WEEK_MS, YEAR_MS, MONTH_MS = 7 * DAY_MS, 365 * DAY_MS, 30 * DAY_MS


def busiest_stream(app: Flask) -> tuple[str, str] | None:
    """(tenant, stream) of the hot tier with the most keys in its all-time leaderboard (then the
    most hours, then minutes, of data: a leaderboard not folded yet is empty); None without a hot tier or any
    stream (an empty instance has nothing to warm). Raises what redis-py raises."""
    from tiers.hot import _TENANTS_KEY, _decoded, _prefix

    hot = app.extensions["tierstore"].tiers.get("hot")
    if hot is None or not hasattr(hot, "_registered_streams"):
        return None
    client, best = hot._client, None
    names = ("all:count", "1h:buckets", "1m:buckets")
    for tenant in sorted(_decoded(client.smembers(_TENANTS_KEY))):
        streams = sorted(hot._registered_streams(tenant))
        pipe = client.pipeline(transaction=False)  # one round trip per tenant (per node in a cluster)
        for stream in streams:
            for name in names:
                pipe.zcard(_prefix(tenant, stream) + name)
        sizes = pipe.execute()
        for i, stream in enumerate(streams):
            size = tuple(sizes[i * len(names):(i + 1) * len(names)])
            if any(size) and (best is None or size > best[0]):
                best = (size, tenant, stream)
    return None if best is None else (best[1], best[2])


def queries(snapshot, now: int) -> list[tuple[str, dict[str, Any]]]:
    """(path, query parameters without the stream) of the warm-up (module doc); epoch ms."""
    end = floor_to(now, MINUTE_MS)
    out: list[tuple[str, dict[str, Any]]] = []
    ranges = [(end - HOUR_MS, end), (end - DAY_MS, end), (end - WEEK_MS, end), (end - MONTH_MS, end)]
    for lo, hi in ((snapshot.b_cold - MONTH_MS, snapshot.b_cold), (snapshot.b_archive - MONTH_MS, snapshot.b_archive)):
        if end - 3 * YEAR_MS < hi <= end:  # the tier owns a month here (an unset boundary is far away)
            ranges.append((max(lo, end - 3 * YEAR_MS), hi))
    ranges.append((end - YEAR_MS, end))
    for lo, hi in ranges:
        for by in ("count", "sum"):
            out.append(("/v1/query/topk", {"k": 100, "by": by, "from": lo, "to": hi}))
    for lo in (end - DAY_MS, end - WEEK_MS, end - MONTH_MS, end - YEAR_MS):
        out.append(("/v1/query/rank", {"by": "count", "from": lo, "to": end, "around": 0, "lead": True}))
    out.append(("/v1/query/series", {"from": end - YEAR_MS, "to": end, "step": "1d", "agg": "sum"}))
    return out


def _ask(app: Flask, tenant: str, path: str, params: dict[str, Any]) -> dict | None:
    """One query through its view function in a request context of `tenant`; the JSON body."""
    from router.auth import Principal

    with app.test_request_context(path, query_string=params):
        g.principal = Principal(tenant, frozenset({"read"}), "warmup")
        g.tenant, g.scope = tenant, "read"
        response = app.dispatch_request()
        return response.get_json(silent=True) if hasattr(response, "get_json") else None


def run(app: Flask) -> dict[str, Any]:
    """Every warm-up query once (module doc); the counts. Never raises."""
    started = time.perf_counter()
    stats: dict[str, Any] = {"stream": None, "queries": 0, "failed": 0}
    try:
        found = busiest_stream(app)
        if found is not None:
            tenant, stream = found
            stats["stream"] = f"{tenant}/{stream}"
            snapshot = app.extensions["tierstore"].planner.snapshot()
            leader = None
            for path, params in queries(snapshot, now_ms()):
                params = {**params, "stream": stream}
                if params.pop("lead", False):  # an absent key's rank reads every piece all the same
                    params["key"] = leader if leader is not None else "-"
                try:
                    body = _ask(app, tenant, path, params)
                    stats["queries"] += 1
                    items = (body or {}).get("items") or []
                    if path.endswith("/topk") and items and params["by"] == "count":
                        leader = items[0]["key"]
                except Exception as exc:  # a tier down: the worker serves all the same
                    stats["failed"] += 1
                    log.info("warm-up query %s %s failed: %s", path, params, str(exc)[:200])
    except Exception as exc:
        stats["failed"] += 1
        log.warning("warm-up failed: %s", str(exc)[:200])
    stats["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return stats


def holding(app: Flask) -> tuple | None:
    """What the warm-up depends on: (tenant, stream) of busiest_stream and which of archive and cold
    own data (the catalog's boundaries moved off their minimum); None for an empty instance.
    Raises what redis-py and the catalog raise."""
    found = busiest_stream(app)
    if found is None:
        return None
    snapshot = app.extensions["tierstore"].planner.snapshot()
    return found, snapshot.b_archive > MIN_MS, snapshot.b_cold > snapshot.b_archive


def warm_up(app: Flask, budget_ms: int) -> dict[str, Any] | None:
    """Run the warm-up (module doc), waiting at most `budget_ms`; its stats, or None when it goes on
    in the background past the budget (or budget_ms <= 0: nothing is run, no thread started).
    Then the worker's daemon thread runs it again whenever `holding` changes (every RECHECK_S)."""
    if budget_ms <= 0:
        return None
    done: dict[str, Any] = {}
    first = threading.Event()

    def loop() -> None:
        from tierstore.app import RESOURCES

        warmed: Any = "never"
        while app.extensions.get(RESOURCES) is not None:  # until close_app
            try:
                now = holding(app)
            except Exception:  # a tier down: look again later
                now = warmed
            if now != warmed:
                stats = run(app)
                app.extensions[EXTENSION] = stats
                if not first.is_set():
                    done.update(stats)
                    first.set()
                else:
                    log.info("warm-up again (%s): %s", now, stats)
                warmed = now  # a query that failed (a tier down) only left less warm
            first.set()
            time.sleep(RECHECK_S)

    threading.Thread(target=loop, name="tierstore-warmup", daemon=True).start()
    if not first.wait(budget_ms / 1000):
        log.info("warm-up still running after %d ms; serving meanwhile", budget_ms)
        return None
    log.info("warm-up done: %s", done)
    return done or None


__all__ = ["busiest_stream", "holding", "queries", "run", "warm_up"]
