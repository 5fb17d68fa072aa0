"""What the router needs from the objects `create_app` receives (duck-typed, structural).

The router never imports the scheduler or the composition layer: `tierstore.app` builds these
objects and hands them in. Any object with these methods will do (tests use stand-ins).
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import pyarrow as pa

from rollups.cover import Piece
from rollups.timeutil import Granularity
from tiers.catalog import CatalogSnapshot


@runtime_checkable
class Catalog(Protocol):
    def snapshot(self) -> CatalogSnapshot:
        """The current boundaries and version, read in one consistent step."""


@runtime_checkable
class JobRunner(Protocol):
    def run(self, name: str, as_of: Any, *, requested_by: str = "unknown") -> Any:
        """Start job `name` as if the clock read `as_of` (epoch ms, or None for now), recorded as
        asked for by `requested_by`.

        Returns the run id at once; raises LookupError (or NotFound) for an unknown job, and
        rollups.errors.ClockOverrideDisabled for an as_of beyond now + clock_skew (unless the
        setting allow_clock_override is on).
        """

    def list(self) -> Sequence[Any]:
        """One entry per job: name, schedule, last_run, next_run, lag_seconds."""

    def get_run(self, run_id: Any) -> Any:
        """The run (run_id, job, status, started, finished, progress, stats, error) or None."""


@runtime_checkable
class HotIngest(Protocol):
    """The write side of the hot tier (tiers.hot.RedisHotTier)."""

    def ingest(self, tenant: str, events: pa.Table, *, now_ms: int) -> Any:
        """Log and aggregate one batch; returns an object with `accepted` and `duplicates`.

        Raises rollups.errors.RangeSealed when an event lies below the seal (checked atomically).
        """

    def score(self, tenant: str, stream: str, key: str, delta: float, ts_ms: int, now_ms: int) -> tuple[float, int]:
        """Add `delta` to key's all-time score; returns (all-time score, 1-based all-time rank)."""


class PieceReader(Protocol):
    """The read side every tier has (tiers.base.Tier). Optional extras the router uses when
    present: `top_k(tenant, stream, pieces, k, by)` and `rank(tenant, stream, pieces, key, by,
    around)` (ranking in place when one tier holds the whole range), `data_version(tenant,
    stream)` (results cache), `stats() -> {"rows", "bytes"}` (GET /v1/tiers)."""

    name: str

    @property
    def granularities(self) -> Sequence[Granularity]: ...

    def aggregate(self, tenant: str, stream: str, pieces: Sequence[Piece], group: str,
                  key: str | None = None) -> pa.Table: ...

    def health(self) -> None: ...
