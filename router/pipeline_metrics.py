"""Scrape-time gauges of the pipeline's lags and the tiers, and the wiring of every collector that
reads shared state (register_pipeline_metrics):

    tierstore_flush_lag_seconds        age of the oldest event-log entry after the flush
                                       checkpoint (not yet in warm), 0 when every entry is flushed
    tierstore_rollup_lag_seconds       now - the earliest bucket holding a flushed change warm's
                                       rollups do not reflect yet (warm_dirty, warm_delta); 0 when
                                       refresh has folded in everything flushed. A late event
                                       makes it jump to the event's age until the next refresh.
                                       The 1h/1d buckets of hot-owned time that refresh defers to
                                       expire_hot (warm_stale, tiers/warm_postgres.py) do not count:
                                       no query reads them from warm; rollup_1m (every bucket) and
                                       all rollups of warm's own range do.
    tierstore_tier_up{tier}            1 when the tier's health() passed (router.operations.check_health)
    tierstore_tier_rows{tier}          events in the range the catalog gives the tier, and
    tierstore_tier_bytes{tier}         the tier's bytes: exactly what GET /v1/tiers shows
"""
from __future__ import annotations

import logging
from typing import Any, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from rollups.timeutil import now_ms
from router.job_metrics import JobRunsCollector, job_intervals
from scheduler.leader import LeaderCollector
from tiers.catalog import TIER_ORDER
from tiers.eventlog import EventLogs

log = logging.getLogger("tierstore.metrics")

PG_TIMEOUT_S = 2.0


class LagCollector(Collector):
    """Flush and rollup lag from the event log (Redis), the flush checkpoint and the pending
    changes of warm (PostgreSQL). Each lag is left out of a scrape whose sources fail."""

    def __init__(self, redis_client: Any, pool: Any, warm: Any) -> None:
        self._redis, self._pool, self._warm = redis_client, pool, warm

    def describe(self) -> Iterator[Any]:
        return iter(())

    def collect(self) -> Iterator[Any]:
        for name, doc, read in (
                ("tierstore_flush_lag_seconds", "Age of the oldest event-log entry not yet flushed to warm "
                 "(0 when every entry is flushed), in seconds.", self.flush_lag),
                ("tierstore_rollup_lag_seconds", "Now minus the time up to which warm's rollups include every "
                 "flushed event (0 when refresh is caught up), in seconds.", self.rollup_lag)):
            try:
                value = read()
            except Exception:  # noqa: BLE001  (a source that is down must not fail /metrics)
                log.warning("metrics: %s unavailable in this scrape", name, exc_info=True)
                continue
            yield GaugeMetricFamily(name, doc, value=value)

    def flush_lag(self) -> float:
        """Seconds since the oldest entry after the flush checkpoint was appended (0: none)."""
        log = EventLogs(self._redis)
        with self._pool.connection(timeout=PG_TIMEOUT_S) as conn:
            first = log.oldest_after(log.read_checkpoint(conn))
        return 0.0 if first is None else max(0.0, (now_ms() - first[0]) / 1000)

    def rollup_lag(self) -> float:
        oldest = self._warm.oldest_pending_ms(timeout_s=PG_TIMEOUT_S)
        return 0.0 if oldest is None else max(0.0, (now_ms() - oldest) / 1000)


class TierCollector(Collector):
    """tierstore_tier_up, _rows, _bytes of each configured tier: the same health and exact sizes as
    GET /v1/tiers (router.operations: rows are the events in the range the catalog gives the tier)."""

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx

    def describe(self) -> Iterator[Any]:
        return iter(())

    def collect(self) -> Iterator[Any]:
        from router.operations import check_health, tier_sizes

        up = GaugeMetricFamily("tierstore_tier_up", "1 when the tier answered its health check in this scrape, "
                               "else 0.", labels=["tier"])
        rows = GaugeMetricFamily("tierstore_tier_rows", "Events in the range the catalog gives the tier (as "
                                 "GET /v1/tiers).", labels=["tier"])
        size = GaugeMetricFamily("tierstore_tier_bytes", "Bytes the tier holds (as GET /v1/tiers).",
                                 labels=["tier"])
        healthy = check_health(self._ctx)
        measured = tier_sizes(self._ctx, self._ctx.planner.snapshot(), healthy, timeout_s=PG_TIMEOUT_S * 2)
        for name in TIER_ORDER:
            if name not in self._ctx.tiers:
                continue
            up.add_metric([name], 1.0 if healthy.get(name) else 0.0)
            n_rows, n_bytes = measured.get(name, (None, None))
            if n_rows is not None:
                rows.add_metric([name], float(n_rows))
            if n_bytes is not None:
                size.add_metric([name], float(n_bytes))
        yield from (up, rows, size)


def register_pipeline_metrics(app: Any, redis_client: Any, pool: Any, warm: Any) -> None:
    """Add the job-run, lag and tier collectors to the app's metrics (router.metrics.Metrics).

    redis_client: the event log's Redis; pool: psycopg_pool.ConnectionPool of the database
    holding job_runs, flush_checkpoint and the catalog; warm: tiers.warm.WarmTier."""
    from router import context

    ctx = app.extensions[context.EXTENSION]
    intervals = job_intervals(ctx.jobs, ctx.settings) if ctx.jobs is not None else {}
    names = [job.name for job in ctx.jobs.jobs()] if ctx.jobs is not None else []
    ctx.metrics.add_collector(JobRunsCollector(pool, intervals, names))
    ctx.metrics.add_collector(LeaderCollector(pool))
    ctx.metrics.add_collector(LagCollector(redis_client, pool, warm))
    ctx.metrics.add_collector(TierCollector(ctx))
