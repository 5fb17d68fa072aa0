"""GET /v1/tiers, the jobs API, /healthz, /readyz, /metrics, /openapi.json."""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, current_app, request

from rollups.errors import NotFound, TierstoreError, TierUnavailable
from rollups.timeutil import format_time, from_datetime, now_ms, parse_time
from router import context, deadletters
from router.metrics import CONTENT_TYPE_LATEST
from router.models import JobRunRequest, json_object, validate
from router.openapi import openapi_document
from tiers import sizes
from tiers.catalog import TIER_ORDER

bp = Blueprint("operations", __name__)

HEALTH_TIMEOUT_S = 5.0


def check_health(ctx: context.RouterContext) -> dict[str, bool]:
    """Each configured tier's health(), concurrently, each within HEALTH_TIMEOUT_S."""
    names = [n for n in TIER_ORDER if n in ctx.tiers]
    futures = {n: ctx.pool.submit(ctx.tiers[n].health) for n in names}
    done, _ = cf.wait(futures.values(), timeout=HEALTH_TIMEOUT_S)
    return {n: f in done and f.exception() is None for n, f in futures.items()}


def tier_sizes(ctx: context.RouterContext, snap, healthy: dict[str, bool] | None = None,
               timeout_s: float = HEALTH_TIMEOUT_S * 6) -> dict[str, tuple[int | None, int | None]]:
    """(rows, bytes) of each configured tier, exact (tiers.sizes: rows are the events in the range the
    tier owns), read concurrently within `timeout_s` in all; nulls for a tier that cannot be read in
    time, or that `healthy` (check_health's answer) says is down: it is not asked at all, so an
    outage costs no wait."""
    names = [n for n in ctx.tiers if healthy is None or healthy.get(n)]
    futures = {n: ctx.pool.submit(sizes.tier_sizes, n, ctx.tiers[n], snap.owns(n)) for n in names}
    cf.wait(futures.values(), timeout=timeout_s)
    out: dict[str, tuple[int | None, int | None]] = {n: (None, None) for n in ctx.tiers}
    for name, fut in futures.items():
        if not fut.done() or fut.exception() is not None:  # sizes are informative only
            continue
        found = fut.result()
        out[name] = (found["rows"], found["bytes"])
    return out


@bp.get("/v1/tiers")
def tiers():
    ctx = context.get()
    snap = ctx.planner.snapshot()
    healthy = check_health(ctx)
    measured = tier_sizes(ctx, snap, healthy)
    out = []
    for name in TIER_ORDER:
        owns = snap.owns(name)
        tier = ctx.tiers.get(name)
        rows, size = measured.get(name, (None, None))
        out.append({"name": name, "owns": {"from": format_time(owns.start), "to": format_time(owns.end)},
                    "rows": rows, "bytes": size, "healthy": healthy.get(name, False),
                    "configured": tier is not None})
    return context.json({"catalog_version": snap.version,
                         "boundaries": {"archive": format_time(snap.b_archive), "cold": format_time(snap.b_cold),
                                        "warm": format_time(snap.b_warm)},
                         "tiers": out})


def jsonable(value: Any) -> Any:
    """Runner records (dicts, dataclasses, datetimes) as API JSON: times as RFC 3339 ms."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return format_time(from_datetime(value))
    return value


def require_jobs(ctx: context.RouterContext):
    if ctx.jobs is None:
        raise TierUnavailable("jobs", "The job runner is not configured in this process.")
    return ctx.jobs


@bp.get("/v1/jobs")
def list_jobs():
    return context.json(jsonable(list(require_jobs(context.get()).list())))


def requester() -> str:
    """Who asks for a job run, as recorded with it: "api:" + the principal's name
    (`api:t1:key:<sha256 prefix>`, `api:t1:jwt:<sub>`, `api:default:anonymous` with auth off)."""
    return f"api:{context.principal().name}"


@bp.post("/v1/jobs/<name>/run")
def run_job(name: str):
    jobs = require_jobs(context.get())
    data = json_object(request.get_data(cache=False), '{"as_of": t}', allow_empty=True)
    req = validate(JobRunRequest, data, strict=True)
    as_of = None if req.as_of is None else parse_time(req.as_of, now_ms(), field="as_of")
    try:
        run_id = jobs.run(name, as_of, requested_by=requester())
    except TierstoreError:
        raise
    except (LookupError, KeyError):
        raise NotFound(f"There is no job named {name!r}.", [{"field": "name", "problem": "unknown job"}],
                       code="unknown_job") from None
    return context.json({"run_id": jsonable(run_id)}, 202)


@bp.get("/v1/jobs/runs/<run_id>")
def get_run(run_id: str):
    jobs = require_jobs(context.get())
    try:
        run = jobs.get_run(run_id)
    except TierstoreError:
        raise
    except (LookupError, ValueError):
        run = None
    if run is None:
        raise NotFound(f"There is no job run {run_id!r}.", [{"field": "run_id", "problem": "unknown run"}],
                       code="unknown_run")
    return context.json(jsonable(run))


@bp.get("/healthz")
def healthz():
    return context.json({"status": "ok"})


@bp.get("/readyz")
def readyz():
    ctx = context.get()
    healthy = check_health(ctx)
    try:
        healthy["catalog"] = not ctx.planner.snapshot().stale  # stale: PostgreSQL is down
    except TierstoreError:
        healthy["catalog"] = False
    down = [n for n, ok in healthy.items() if not ok]
    if down:
        raise TierUnavailable(down[0], f"Not ready: {', '.join(down)} unavailable.", [{"tier": n} for n in down])
    dead = deadletter_events()
    if dead:  # still serving (200), but some accepted events are not where they belong
        return context.json({"status": "degraded", "tiers": healthy, "deadletter_events": dead})
    return context.json({"status": "ready", "tiers": healthy})


def deadletter_events() -> int | None:
    """Events in the dead-letter store (every tenant), None when it is not wired or unreadable."""
    store = deadletters.store_of(current_app)
    if store is None:
        return None
    try:
        return store.count()
    except Exception:  # noqa: BLE001  (Redis down already shows as the hot tier unavailable)
        return None


@bp.get("/metrics")
def metrics():
    return Response(context.get().metrics.exposition(), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                    headers={"Content-Type": CONTENT_TYPE_LATEST})


@bp.get("/openapi.json")
def openapi():
    return context.json(openapi_document())
