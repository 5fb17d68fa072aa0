"""What every request handler reaches: the objects create_app received, the planner, metrics."""
from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass
from typing import Any, Mapping

import orjson
from flask import Response, current_app, g

from rollups.errors import TierUnavailable
from router.metrics import Metrics
from router.planner import Planner
from router.protocols import Catalog, HotIngest, JobRunner

EXTENSION = "tierstore"


@dataclass
class RouterContext:
    settings: Any
    tiers: Mapping[str, Any]
    catalog: Catalog
    jobs: JobRunner | None
    hot: HotIngest | None
    planner: Planner
    metrics: Metrics
    pool: cf.ThreadPoolExecutor

    def require_hot(self) -> HotIngest:
        if self.hot is None:
            raise TierUnavailable("hot", "The hot tier is not configured; ingest is unavailable.")
        return self.hot


def get() -> RouterContext:
    return current_app.extensions[EXTENSION]


def tenant() -> str:
    return g.tenant


def principal():
    """Who made this request (router.auth.Principal: tenant, scopes, a printable `name` for audit)."""
    return g.principal


def json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status=status, mimetype="application/json")
