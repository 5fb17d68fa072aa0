"""The registered jobs of the hot -> warm path. Other jobs register the same way (one line each).

Resources a job finds in its context (scheduler.resources.build_resources): redis, warm, catalog,
hot (may be None) — plus whatever later jobs add (cold, archive).
"""
from __future__ import annotations

from typing import Any

from scheduler import steps
from scheduler.runner import JobContext, register


def run_flush(ctx: JobContext) -> dict[str, Any]:
    return steps.flush(ctx.resources["redis"], ctx.resources["warm"], report=ctx)


def run_refresh(ctx: JobContext) -> dict[str, Any]:
    """Refresh the rollups, then (timescale mode) compress raw chunks well below b_warm."""
    stats = steps.refresh(ctx.resources["warm"], ctx.as_of, report=ctx)
    if ctx.resources["warm"].mode == "timescale":
        stats.update(steps.compress_warm(ctx.resources["warm"], ctx.resources["catalog"]))
    return stats


def run_expire_hot(ctx: JobContext) -> dict[str, Any]:
    r = ctx.resources
    return steps.expire_hot(r["redis"], r.get("hot"), r["warm"], r["catalog"], ctx.as_of,
                            hot_age_ms=ctx.settings.hot_age, grace_ms=ctx.settings.grace_period, report=ctx)


def _expire_hot_lag(resources, settings) -> float:
    """How far b_warm trails now - hot_age, in seconds."""
    from rollups.timeutil import now_ms

    return max(0.0, (now_ms() - settings.hot_age - resources["catalog"].snapshot().b_warm) / 1000)


register("flush", run_flush, interval="flush_interval", description="event log -> warm raw events",
         lag=lambda resources, settings: steps.flush_lag_seconds(resources["redis"]))
register("refresh", run_refresh, interval="refresh_interval", description="warm rollups from changed buckets")
register("expire_hot", run_expire_hot, interval="expire_hot_interval",
         description="advance b_warm once warm covers it; trim hot after the grace period", lag=_expire_hot_lag)

from scheduler import export_cold as _export_cold  # noqa: E402,F401  (registers "export_cold")
from scheduler import archive as _archive, reports as _reports, retention as _retention  # noqa: E402,F401  (registers "archive", "reports", "retention")
from scheduler import alltime as _alltime  # noqa: E402,F401  (registers "rebuild_alltime")
