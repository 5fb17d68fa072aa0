"""What the router needs from the objects `create_app` receives (duck-typed, structural).

The router never imports the scheduler or the composition layer: `tierstore.app` builds these
objects and hands them in. Any object with these methods will do (tests use stand-ins).
"""
from __future__ import annotations

from typing import Any, Hashable, Protocol, Sequence, runtime_checkable

import pyarrow as pa

from rollups.cover import Piece
from rollups.timeutil import Granularity
from rollups.topk import RankResult, Ranked
from tiers.base import Capability, RankBy, TierStats
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
    """The read side of a tier (tiers.base.Tier, whose docstrings are the contract). The optional
    capabilities — `top_k` and `rank` (ranking in place when one tier holds the whole range),
    `data_versions` (results cache), `stats` (GET /v1/tiers) — are called only when
    `supports(capability)` says so."""

    name: str

    @property
    def granularities(self) -> Sequence[Granularity]: ...

    def aggregate(self, tenant: str, stream: str, pieces: Sequence[Piece], group: str,
                  key: str | None = None) -> pa.Table: ...

    def aggregate_each(self, tenant: str, stream: str, pieces: Sequence[Piece],
                       key: str | None = None) -> list[pa.Table]: ...

    def health(self) -> None: ...

    def supports(self, capability: Capability) -> bool: ...

    def top_k(self, tenant: str, stream: str, pieces: Sequence[Piece], k: int, by: RankBy) -> list[Ranked]: ...

    def rank(self, tenant: str, stream: str, pieces: Sequence[Piece], key: str, by: RankBy,
             around: int = 0) -> RankResult: ...

    def data_versions(self, tenant: str, stream: str, pieces: Sequence[Piece]) -> list[Hashable]: ...

    def stats(self) -> TierStats: ...
