"""Prometheus metrics of one app: requests per endpoint, ingested events, query pieces.

Under gunicorn with PROMETHEUS_MULTIPROC_DIR set, every worker writes its samples there and
/metrics aggregates all workers (prometheus_client's multiprocess mode); otherwise each app
has its own registry.
"""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the blueprint)
from prometheus_client.multiprocess import MultiProcessCollector


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        self.collectors: list = []  # read at each scrape, in this process (add_collector)
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

    def add_collector(self, collector) -> None:
        """A custom collector (e.g. router.hot_expiry_metrics): its values are read at each scrape."""
        self.collectors.append(collector)
        self.registry.register(collector)

    def exposition(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            for collector in self.collectors:
                registry.register(collector)
            return generate_latest(registry)
        return generate_latest(self.registry)
