"""What differs between the warm tier's two modes, behind one interface (tiers.warm.WarmTier holds one).

  postgres   tiers.warm_postgres.PostgresStrategy: daily range partitions, rollup tables refreshed
             from pre-aggregated deltas and recomputed dirty buckets;
  timescale  tiers.warm_timescale.TimescaleStrategy: a hypertable and continuous aggregates
             re-materialised over the windows that changed, compressed chunks.
Both keep the same tables for readers (tiers.warm_sql): events, rollup_*, total_*, warm_dirty.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Optional, Union

import psycopg
import pyarrow as pa
from psycopg_pool import ConnectionPool
from sqlalchemy import Table

Step = Callable[[str], None]
#: where a refresh may leave 1h/1d rollup buckets stale (tiers.warm.WarmTier.refresh): None (nowhere),
#: epoch ms, or a function of the refresh's connection (in its snapshot, under its lock) giving either
DeferFrom = Union[int, Callable[[psycopg.Connection], Optional[int]], None]


class WarmStrategy(ABC):
    mode: str
    #: tables whose rows are changes the rollups do not reflect yet (each has a `bucket` column)
    pending_tables: tuple[Table, ...]

    def __init__(self, pool: ConnectionPool):
        self._pool = pool

    def prepare_days(self, ts: pa.ChunkedArray) -> None:
        """Make the raw table ready for events at these times (timestamp[ms, UTC]), in its own
        transaction, before they are copied in. Nothing to do by default."""

    @abstractmethod
    def record_insert(self, conn: psycopg.Connection, rows: pa.Table) -> None:
        """Record, in the caller's transaction, what copying `rows` (stream_id, key_id, ts, value,
        id) into events changed, for the next refresh."""

    #: postgres mode: the table of 1h/1d buckets a refresh left stale on purpose (None: never)
    stale_table: Table | None = None

    @abstractmethod
    def refresh(self, step: Step, defer_from: DeferFrom = None) -> dict[str, Any]:
        """Bring the rollups up to date (see WarmTier.refresh); driver errors propagate."""

    def compress(self, before_ms: int) -> int:
        """Compress raw data ending at or before before_ms (epoch ms); returns how many units were
        compressed now. Nothing to compress by default: 0."""
        return 0

    @abstractmethod
    def drop_days(self, lo: int, hi: int) -> int:
        """Drop every event in whole days [lo, hi) (epoch ms, day-aligned, clamped) and their
        rollups; returns the raw rows dropped."""

    @abstractmethod
    def stats(self) -> tuple[int, int]:
        """Estimated raw rows and bytes on disk (events and rollups)."""


def make_strategy(mode: str, pool: ConnectionPool) -> WarmStrategy:
    """The strategy of a resolved mode (tiers.db.resolve_warm_mode)."""
    from tiers.warm_postgres import PostgresStrategy
    from tiers.warm_timescale import TimescaleStrategy

    return {"postgres": PostgresStrategy, "timescale": TimescaleStrategy}[mode](pool)
