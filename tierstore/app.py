"""Composition: build the tiers, the catalog and the job runner from Settings, hand them to the router.

    gunicorn 'tierstore.app:wsgi()'          (each worker builds its own clients after the fork)
    build_app(settings) / close_app(app)     (tests, the CLI)
"""
from __future__ import annotations

from typing import Any

from flask import Flask

from scheduler.jobs import JOBS
from router import create_app
from router.deadletters import register_deadletters
from router.reports import register_reports
from router.streams import register_streams
from scheduler.reports import report_service
from scheduler.resources import build_resources, close_resources
from scheduler.runner import JobRunner
from tierstore.settings import Settings, load_settings
from tiers.archive import ArchiveTier
from tiers.catalog_fallback import LastGoodCatalog
from tiers.catalog_pg import PgCatalog
from tiers.cold import ColdTier
from tiers.cold_keys import PgKeyDictionary
from tiers.db import make_pool
from tiers.hot import RedisHotTier

RESOURCES = "tierstore.resources"


def build_app(settings: Settings | None = None, *, migrate: bool = True) -> Flask:
    """The router over the four tiers the settings describe, with the job runner and reports.

    Clients are built now, so a bad URL or an unreachable Redis/PostgreSQL fails here (at boot),
    not at the first request; S3 and Trino are reached per query (their tiers answer 503 while
    down). Migrations are applied first unless `migrate=False` (idempotent).
    """
    settings = settings or load_settings()
    hot = RedisHotTier.from_settings(settings)
    try:
        resources = build_resources(settings, hot=hot, migrate=migrate)
    except BaseException:
        hot.close()
        raise
    try:
        resources["cold"] = ColdTier(settings, keys=PgKeyDictionary(pool=resources["warm"].pool))
        resources["archive"] = ArchiveTier.from_settings(settings, pool=resources["pool"])
        resources["reports"] = report_service(settings, resources)
        jobs = JobRunner(resources["pool"], settings, resources, jobs=JOBS)
        tiers = {name: resources[name] for name in ("archive", "cold", "warm", "hot")}
        app = create_app(settings, tiers=tiers, catalog=_router_catalog(settings, resources), jobs=jobs, hot=hot)
        register_reports(app, resources["reports"])
        register_deadletters(app, resources["redis"], resources["pool"])
        register_streams(app, resources["pool"], resources["redis"])
    except BaseException:
        _close(None, resources)
        raise
    app.extensions[RESOURCES] = (jobs, resources)
    return app


def _router_catalog(settings: Settings, resources: dict[str, Any]) -> LastGoodCatalog:
    """The catalog queries and ingest read: its own small pool with a short wait (a busy jobs pool
    is no outage), falling back to the last good snapshot while PostgreSQL is down."""
    pool = resources["router_catalog_pool"] = make_pool(settings.postgres_url, max_size=4, name="router-catalog")
    catalog = LastGoodCatalog(PgCatalog(pool, wait_s=2.0), resources["redis"])
    catalog.snapshot()  # a first good snapshot, should PostgreSQL go down before the first request
    return catalog


def close_app(app: Flask) -> None:
    """Stop the job runner and close every client build_app opened. Idempotent."""
    opened = app.extensions.pop(RESOURCES, None)
    if opened is not None:
        _close(*opened)
        app.extensions["tierstore"].pool.shutdown(wait=False, cancel_futures=True)
        app.extensions["tierstore"].planner.cache.close()


def _close(jobs: JobRunner | None, resources: dict[str, Any]) -> None:
    if jobs is not None:
        jobs.close(wait=True)
    for name in ("reports", "archive", "cold", "router_catalog_pool"):
        tier = resources.pop(name, None)
        if tier is not None:
            tier.close()
    close_resources(resources)


def wsgi() -> Flask:
    """The gunicorn factory: `gunicorn 'tierstore.app:wsgi()'`."""
    return build_app()
