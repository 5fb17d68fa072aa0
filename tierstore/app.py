"""Composition: build the tiers, the catalog and the job runner from Settings, hand them to the router.

    gunicorn 'tierstore.app:wsgi()'          (each worker builds its own clients after the fork)
    build_app(settings) / close_app(app)     (tests, the CLI)
"""
from __future__ import annotations


from flask import Flask

from router import create_app
from router.alerts import register_alerts
from router.approx import STORE_EXTENSION
from router.deadletters import register_deadletters
from router.freshness import register_freshness
from router.pipeline_metrics import register_pipeline_metrics
from router.redis_metrics import register_redis_metrics
from router.reports import register_reports
from router.streams import register_streams
from scheduler.jobs import JOBS
from scheduler.runner import JobRunner
from tierstore.settings import Settings, load_settings
from tierstore.wiring import Resources, open_resources, tiers_of
from tiers.catalog_fallback import LastGoodCatalog
from tiers.catalog_pg import PgCatalog
from tiers.db import make_pool
from tiers.sketch_store import SketchStore

RESOURCES = "tierstore.resources"


def build_app(settings: Settings | None = None, *, migrate: bool = True) -> Flask:
    """The router over the four tiers the settings describe, with the job runner and reports.

    Clients are built now (tierstore.wiring.open_resources), so a bad URL or an unreachable
    Redis/PostgreSQL fails here (at boot), not at the first request; S3 and Trino are reached per
    query (their tiers answer 503 while down). Migrations are applied first unless `migrate=False`
    (idempotent). close_app(app) closes everything.
    """
    settings = settings or load_settings()
    resources = open_resources(settings, migrate=migrate, with_reports=True)
    try:
        jobs = resources.add(_Stopping(JobRunner(resources.pool, settings, resources, jobs=JOBS)))
        app = create_app(settings, tiers=tiers_of(resources), catalog=_router_catalog(settings, resources),
                         jobs=jobs.runner, hot=resources.hot)
        register_reports(app, resources.reports)
        register_deadletters(app, resources.redis, resources.pool)
        register_pipeline_metrics(app, resources.redis, resources.pool, resources.warm)
        register_redis_metrics(app, resources.redis)  # issue 12: every Redis master's gauges
        register_freshness(app, resources.redis, resources.pool, resources.warm)  # meta.watermarks (issue 11)
        register_alerts(app, resources.pool)
        app.extensions[STORE_EXTENSION] = SketchStore(resources.pool)  # mode=approx bucket sketches
        register_streams(app, resources.pool, resources.redis)
    except BaseException:
        resources.close()
        raise
    app.extensions[RESOURCES] = resources
    return app


class _Stopping:
    """Closes the job runner (waiting for running jobs) before the clients it uses."""

    def __init__(self, runner: JobRunner) -> None:
        self.runner = runner

    def close(self) -> None:
        self.runner.close(wait=True)


def _router_catalog(settings: Settings, resources: Resources) -> LastGoodCatalog:
    """The catalog queries and ingest read: its own small pool with a short wait (a busy jobs pool
    is no outage), falling back to the last good snapshot while PostgreSQL is down."""
    pool = resources.add(make_pool(settings.postgres_url, max_size=4, name="router-catalog"))
    catalog = LastGoodCatalog(PgCatalog(pool, wait_s=2.0), resources.redis)
    catalog.snapshot()  # a first good snapshot, should PostgreSQL go down before the first request
    return catalog


def close_app(app: Flask) -> None:
    """Stop the job runner and close every client build_app opened. Idempotent."""
    resources = app.extensions.pop(RESOURCES, None)
    if resources is not None:
        resources.close()
        app.extensions["tierstore"].pool.shutdown(wait=False, cancel_futures=True)
        app.extensions["tierstore"].planner.cache.close()


def wsgi() -> Flask:
    """The gunicorn factory: `gunicorn 'tierstore.app:wsgi()'`; each worker logs as `log_format` says
    and warms up (router/warmup.py, at most `warmup_ms`) before it takes requests."""
    from tierstore.logs import configure_from_settings

    from router.warmup import warm_up

    settings = load_settings()
    configure_from_settings(settings)
    app = build_app(settings)
    warm_up(app, settings.warmup_ms)  # the read paths run once before this worker takes requests
    freeze_startup_heap()
    return app


def freeze_startup_heap() -> int:
    """Move every object alive now (modules, the app, its pools and caches) into the garbage
    collector's permanent generation (gc.freeze), so no later collection traverses them; returns
    how many objects are frozen.

    Why: a full (generation 2) collection of a router worker walked ~190k objects left by the
    imports and build_app and took 100-140 ms, inside whichever request triggered it: one
    top-K of 20 took 181 ms where the others took 32-50 ms (bench/topk_ta data, 50k keys).
    After the freeze a full collection sees only what requests allocate. Frozen objects are never
    freed, so it runs once per process after start-up, not per app (tests build many). The
    technique is CPython's own advice for long-running servers (gc.freeze docs; Instagram's
    "Dismissing Python Garbage Collection at Instagram", 2017)."""
    import gc

    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    return gc.get_freeze_count()
