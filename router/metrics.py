"""Prometheus metrics of one app: requests per endpoint, ingested events, query pieces, and the
state of the pipeline read at scrape time (OperationsCollector).

Under gunicorn with PROMETHEUS_MULTIPROC_DIR set, every worker writes its samples there and
/metrics aggregates all workers (prometheus_client's multiprocess mode); otherwise each app
has its own registry.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the blueprint)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from rollups.timeutil import MIN_MS
from tiers.eventlog import EventLogs

log = logging.getLogger("tierstore.metrics")


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        target = None if self.multiprocess else self.registry
        self.requests = Counter("tierstore_http_requests", "HTTP requests by endpoint, method and status.",
                                ["endpoint", "method", "status"], registry=target)
        self.latency = Histogram("tierstore_http_request_duration_seconds", "HTTP request latency by endpoint.",
                                 ["endpoint", "method"], registry=target,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.events = Counter("tierstore_ingest_events", "Events ingested, by result (accepted, duplicate).",
                              ["result"], registry=target)
        self.batches = Counter("tierstore_ingest_batches", "Ingest batches accepted.", registry=target)
        self.pieces = Counter("tierstore_query_segments", "Query segments (cover pieces) read, by tier, "
                              "granularity and whether the results cache served them.",
                              ["tier", "granularity", "cached"], registry=target)
        self.cache_hits = Counter("tierstore_results_cache_hits", "Results-cache lookups answered, by layer "
                                  "(local: the in-process LRU, redis: the shared cache).", ["layer"], registry=target)
        self.cache_misses = Counter("tierstore_results_cache_misses", "Results-cache lookups that found nothing "
                                    "(the piece is read from its tier).", registry=target)
        self.cache_errors = Counter("tierstore_results_cache_errors", "Results-cache Redis failures, by operation "
                                    "(read, write); the pieces are read uncached.", ["operation"], registry=target)
        self.refusals = Counter("tierstore_ratelimit_refusals", "Requests refused with 429 rate_limited, by the "
                                "limit that refused them (ingest, query, admin, events).", ["limit"], registry=target)
        for layer in ("local", "redis"):  # every series from the first scrape on (increase() sees the first one)
            self.cache_hits.labels(layer)
        for operation in ("read", "write"):
            self.cache_errors.labels(operation)
        for limit in ("ingest", "query", "admin", "events"):
            self.refusals.labels(limit)
        self.collectors: list[Any] = []  # read at each scrape (add_collector)

    def request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint, method).observe(seconds)

    def ingested(self, accepted: int, duplicates: int) -> None:
        self.batches.inc()
        self.events.labels("accepted").inc(accepted)
        if duplicates:
            self.events.labels("duplicate").inc(duplicates)

    def piece(self, tier: str, granularity: str, cached: bool) -> None:
        self.pieces.labels(tier, granularity, "true" if cached else "false").inc()

    def cache_lookup(self, local_hits: int, redis_hits: int, misses: int) -> None:
        """router.cache.ResultsCache's lookups of one get_many."""
        if local_hits:
            self.cache_hits.labels("local").inc(local_hits)
        if redis_hits:
            self.cache_hits.labels("redis").inc(redis_hits)
        if misses:
            self.cache_misses.inc(misses)

    def cache_error(self, operation: str) -> None:
        self.cache_errors.labels(operation).inc()

    def refused(self, limit: str) -> None:
        """A request refused by router.ratelimit (limit: the scope or "events")."""
        self.refusals.labels(limit).inc()

    def add_collector(self, collector: Any) -> None:
        """A custom collector (collect() at every scrape), also in multiprocess mode."""
        self.collectors.append(collector)
        if not self.multiprocess:
            self.registry.register(collector)

    def exposition(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            for collector in self.collectors:
                registry.register(collector)
            return generate_latest(registry)
        return generate_latest(self.registry)


PG_TIMEOUT_S = 2.0
_BOUNDARIES_SQL = "SELECT b_archive, b_cold, b_warm, version FROM catalog WHERE id = 1"


class OperationsCollector:
    """Gauges read at scrape time from Redis and PostgreSQL, each source guarded: a service that
    is down drops its gauges from that scrape (and sets tierstore_metrics_source_up{source} to 0)
    instead of failing /metrics.

    tierstore_deadletter_events                          events in the dead-letter store (all tenants)
    tierstore_eventlog_backlog_entries                   entries in the event log (flush trims behind it)
    tierstore_eventlog_oldest_entry_age_seconds          age of the oldest entry, 0 when empty
    tierstore_catalog_boundary_timestamp_seconds{boundary}  archive, cold, warm (absent while -inf)
    tierstore_catalog_version                            the catalog's version (+1 per boundary move)
(job runs: router.job_metrics; lags and tiers: router.pipeline_metrics)
    """

    def __init__(self, redis_client, pool, deadletters) -> None:
        self._redis, self._pool, self._deadletters = redis_client, pool, deadletters

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # collected at scrape time only (never at registration)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("tierstore_metrics_source_up", "Whether /metrics could read a source "
                               "(redis, postgres) in this scrape.", labels=["source"])
        for source, read in (("redis", self._redis_gauges), ("postgres", self._postgres_gauges)):
            families = _guarded(source, read)
            up.add_metric([source], 0.0 if families is None else 1.0)
            yield from families or ()
        yield up

    def _redis_gauges(self) -> list[GaugeMetricFamily]:
        backlog, oldest = EventLogs(self._redis).backlog()
        return [GaugeMetricFamily("tierstore_deadletter_events", "Events in the dead-letter store (refused by a "
                                  "tier after they were accepted).", value=self._deadletters.count()),
                GaugeMetricFamily("tierstore_eventlog_backlog_entries", "Entries in the event log not yet "
                                  "flushed to warm.", value=backlog),
                GaugeMetricFamily("tierstore_eventlog_oldest_entry_age_seconds", "Age of the oldest entry in "
                                  "the event log (0 when empty).", value=oldest)]

    def _postgres_gauges(self) -> list[GaugeMetricFamily]:
        bounds = GaugeMetricFamily("tierstore_catalog_boundary_timestamp_seconds", "The catalog's boundaries "
                                   "(epoch seconds); a boundary still at -infinity is absent.", labels=["boundary"])
        with self._pool.connection(timeout=PG_TIMEOUT_S) as conn:
            row = conn.execute(_BOUNDARIES_SQL).fetchone()
        for name, ms in zip(("archive", "cold", "warm"), row or ()):
            if ms > MIN_MS:
                bounds.add_metric([name], ms / 1000)
        families = [bounds]
        if row is not None:
            families.append(GaugeMetricFamily("tierstore_catalog_version", "The catalog's version (raised by "
                                              "every boundary move).", value=row[3]))
        return families


def _guarded(source: str, read: Callable[[], list[GaugeMetricFamily]]) -> list[GaugeMetricFamily] | None:
    try:
        return read()
    except Exception:  # noqa: BLE001  (a source that is down must not fail /metrics)
        log.warning("metrics: %s unavailable in this scrape", source, exc_info=True)
        return None
