"""Every job the scheduler runs, in one explicit list (JOBS); JobRunner runs these by default.

Resources a job finds in its context, by name (tierstore.wiring.Resources, the composition root):
pool, catalog, redis, warm, hot (may be None), cold, archive, reports (may be None).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

from rollups.errors import TierstoreError
from rollups.timeutil import now_ms
from scheduler import steps
from scheduler.alerts import run_alerts
from scheduler.alltime import run_rebuild_alltime
from scheduler.archive import run_archive
from scheduler.export_cold import run_export_cold
from scheduler.reports import run_reports
from scheduler.retention import run_retention
from scheduler.runner import Job, JobContext
from scheduler.hot_sketches import build_hot_sketches_logged
from scheduler.sketches import build_warm_sketches_logged
from tiers.catalog import b_warm_target
from tiers.watermarks import record_refresh


def run_flush(ctx: JobContext) -> dict[str, Any]:
    """Flush; when it wrote late events (ts below b_warm: only warm's rollups show them), refresh
    at once, so a late event is visible within one flush interval plus the two runs, not only after
    the next scheduled refresh (issue 11, freshness)."""
    r = ctx.resources
    stats = steps.flush(r["redis"], r["warm"], progress=ctx)
    if stats.get("events"):
        with r["warm"].pool.connection() as conn:
            late = r["warm"].dirty_before(conn, r["catalog"].snapshot().b_warm)
        if late:
            stats["late_refresh"] = record_refresh(r["redis"], r["warm"].pool,
                                                   lambda: steps.refresh(r["warm"], ctx.as_of, defer_hot=True))
    return stats


def run_refresh(ctx: JobContext) -> dict[str, Any]:
    """Refresh the rollups (publishing warm's watermark, tiers/watermarks.py; hot-owned 1h/1d
    buckets deferred to expire_hot), build sketches, then (timescale mode) compress raw chunks well
    below b_warm. stats["seconds"]: wall time of each stage (where a run's time goes)."""
    r, seconds = ctx.resources, {}
    with _timed(seconds, "rollups"):
        stats = record_refresh(r["redis"], r["warm"].pool,
                               lambda: steps.refresh(r["warm"], ctx.as_of, progress=ctx, defer_hot=True))
    with _timed(seconds, "sketches"):
        stats["sketches"] = build_warm_sketches_logged(r["warm"], r["pool"], r["catalog"],  # mode=approx
                                                       lg_k=ctx.settings.approx_sketch_lg_k,
                                                       window_ms=ctx.settings.warm_age)
    with _timed(seconds, "hot_sketches"):
        stats["hot_sketches"] = build_hot_sketches_logged(r.get("hot"), r["pool"], r["catalog"],
                                                          lg_k=ctx.settings.approx_sketch_lg_k,
                                                          now=min(ctx.as_of, now_ms()))
    if r["warm"].mode == "timescale":
        stats.update(steps.compress_warm(r["warm"], r["catalog"]))
    stats["seconds"] = seconds
    return stats


@contextmanager
def _timed(into: dict[str, float], name: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        into[name] = round(time.monotonic() - start, 3)


def run_expire_hot(ctx: JobContext) -> dict[str, Any]:
    r = ctx.resources
    return steps.expire_hot(r["redis"], r.get("hot"), r["warm"], r["catalog"], ctx.as_of,
                            hot_age_ms=ctx.settings.hot_age, grace_ms=ctx.settings.grace_period, progress=ctx)


def run_compact_hot(ctx: JobContext) -> dict[str, Any]:
    """Fold the hot tier's closed minutes into their hours and closed hours into their days
    (tiers/hot.py, Compaction), for every stream, until nothing foldable is left.

    Ingest folds lazily, one bounded step per call; after a burst followed by quiet (or a bulk
    load) the hours stay unfolded and every read of them unions their 60 minute zsets. This job
    leaves the hot tier as steady ingest would: reads of a closed hour touch one zset per
    aggregate. Exact before, during and after (each step is one script). Returns
    {"steps", "folded" (buckets whose mark moved), "members" (zset members read)}; a no-op
    without a hot tier."""
    hot = ctx.resources.get("hot")
    if hot is None or not hasattr(hot, "compact"):
        return {"steps": 0, "folded": 0, "members": 0}
    stats = hot.compact(now_ms=ctx.as_of)
    # then the watched (and large) streams' "last 24 h" unions, built ahead of the dashboards (tiers/hot_warm.py)
    from tiers.hot_warm import warm_windows
    catalog = ctx.resources.get("catalog")
    try:
        floor = catalog.snapshot().b_warm if catalog is not None else None
    except TierstoreError:  # the catalog is down: hot's part of a window is unknown, warm nothing
        return stats
    stats["windows"] = warm_windows(hot, ctx.as_of, floor_ms=floor,
                                    min_keys=getattr(getattr(ctx, "settings", None), "standing_min_keys", 0))
    return stats


def _then_prefill(run):
    """`run`, then the watched ranges' closed pieces read into the shared results cache
    (scheduler/rank_prefill.py: a dashboard's first rank finds them warm); never fails the job."""
    def job(ctx: JobContext) -> dict[str, Any]:
        stats = run(ctx)
        try:
            from scheduler.rank_prefill import prefill
            start = time.monotonic()
            done = prefill(ctx.settings, ctx.resources)
            if done["watched"]:
                stats["rank_prefill"] = {**done, "seconds": round(time.monotonic() - start, 3)}
        except Exception as exc:  # the prefill is an optimisation
            stats["rank_prefill"] = {"error": str(exc)[:200]}
        return stats
    job.__name__, job.__doc__ = run.__name__, run.__doc__
    return job


def _expire_hot_lag(resources, settings) -> float:
    """How far b_warm trails where it belongs (tiers.catalog.b_warm_target: now - hot_age on the
    handover grid), in seconds."""
    target = b_warm_target(now_ms(), settings.hot_age)
    return max(0.0, (target - resources["catalog"].snapshot().b_warm) / 1000)


JOBS: tuple[Job, ...] = (
    Job("flush", run_flush, interval="flush_interval", description="event log -> warm raw events",
        lag=lambda resources, settings: steps.flush_lag_seconds(resources["redis"])),
    Job("refresh", _then_prefill(run_refresh), interval="refresh_interval", description="warm rollups from changed buckets"),
    Job("expire_hot", run_expire_hot, interval="expire_hot_interval",
        description="advance b_warm once warm covers it; trim hot after the grace period", lag=_expire_hot_lag),
    Job("compact_hot", _then_prefill(run_compact_hot), interval="compact_hot_interval",
        description="fold closed hot minutes into hours and hours into days (cheaper hot reads)"),
    Job("export_cold", _then_prefill(run_export_cold), interval="export_cold_interval",
        description="warm -> Parquet (cold), advance b_cold, drop warm after the grace period"),
    Job("archive", _then_prefill(run_archive), interval="archive_interval",
        description="cold -> S3 (archive), advance b_archive, delete cold files after the grace period"),
    Job("reports", run_reports, description="build queued compliance reports (and those whose worker died)"),
    Job("retention", run_retention, interval="retention_interval",
        description="delete archive partitions past retention (never under legal hold), audited"),
    Job("rebuild_alltime", run_rebuild_alltime,
        description="recompute the all-time leaderboards (score, rank) from archive + cold + warm + the log"),
    Job("alerts", run_alerts, interval="alerts_interval",  # issue 14
        description="evaluate alert rules; POST firing/resolved notifications to their webhooks"),
)
