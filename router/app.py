"""The Flask app factory."""
from __future__ import annotations

import concurrent.futures as cf
import time
from typing import Any, Mapping

import numpy
from flask import Flask, g, request

from router import auth, errors, grafana, hot_expiry_metrics, ratelimit, request_log
from router.cache import ResultsCache
from router.context import EXTENSION, RouterContext
from router.metrics import Metrics
from router.planner import Planner
from router.protocols import Catalog, HotIngest, JobRunner

# pyarrow checks isinstance(x, np.ma.MaskedArray) when it converts numpy arrays, and numpy imports
# np.ma lazily: imported at start, not by a worker's first query (40-60 ms of its first rank)
numpy.ma  # noqa: B018 (the attribute access imports it)

QUERY_THREADS = 8


def create_app(settings: Any, *, tiers: Mapping[str, Any], catalog: Catalog, jobs: JobRunner | None = None,
               hot: HotIngest | None = None) -> Flask:
    """The router over the given objects.

    settings: a tierstore Settings (or any object with the same attributes: clock_skew,
      max_batch_events, max_batch_bytes, query_timeout, auth_enabled, api_keys, results_cache_entries;
      optionally jwt_secret, jwt_public_key, jwt_audience, jwt_issuer, jwt_tenant_claim, and rate_limits
      with redis_url — router/auth.py, router/ratelimit.py; results_cache_url, results_cache_ttl,
      results_cache_max_bytes — router/cache.py).
    tiers: tier name ("hot", "warm", "cold", "archive") -> an object with `granularities`,
      `aggregate(...)` and `health()` (tiers.base.Tier). A tier missing here answers 503 for the
      ranges it owns (or is listed as missing with allow_partial=1).
    catalog: has `snapshot() -> tiers.catalog.CatalogSnapshot`.
    jobs: the job runner (run/list/get_run); without it the jobs API answers 503.
    hot: the ingest side (ingest/score); defaults to tiers["hot"].
    The caller owns these objects and closes them (see `app.extensions["tierstore"]`).
    """
    from router import ingest, operations, query, trending, ui

    if hot is None and hasattr(tiers.get("hot"), "ingest"):
        hot = tiers["hot"]
    app = Flask("tierstore.router")
    app.json.sort_keys = False
    metrics = Metrics()
    hot_expiry_metrics.init_metrics(metrics, catalog, settings)
    pool = cf.ThreadPoolExecutor(max_workers=QUERY_THREADS, thread_name_prefix="tierstore-query")
    cache = ResultsCache.from_settings(settings)
    cache.on_lookup, cache.on_error = metrics.cache_lookup, metrics.cache_error
    planner = Planner(dict(tiers), catalog, pool=pool, cache=cache,
                      timeout_ms=settings.query_timeout, on_piece=metrics.piece)
    app.extensions[EXTENSION] = RouterContext(settings, dict(tiers), catalog, jobs, hot, planner, metrics, pool)

    _init_request_metrics(app, metrics)
    request_log.init_app(app)
    auth.init_app(app, settings)
    ratelimit.init_app(app, settings)
    errors.init_app(app)
    for bp in (ingest.bp, query.bp, operations.bp, trending.bp, ui.bp):
        app.register_blueprint(bp)
    app.register_blueprint(grafana.bp)
    return app


def _init_request_metrics(app: Flask, metrics: Metrics) -> None:
    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def record(response):
        started = g.get("started")
        if started is not None:
            endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
            metrics.request(endpoint, request.method, response.status_code, time.perf_counter() - started)
        return response
