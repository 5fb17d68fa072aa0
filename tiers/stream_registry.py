"""The stream registry in PostgreSQL (table stream_registry, sql/migrations/common/0070): per tenant
and stream a description, a unit, value bounds, a retention override and a default time zone.

A stream exists without an entry (its first event makes it exist); an entry only describes it.
Ingest never reads this table per request: the router caches every entry (router/stream_cache.py).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg

_COLUMNS = ("tenant", "stream", "description", "unit", "value_min", "value_max", "retention", "retention_ms",
            "time_zone", "created_at", "updated_at", "updated_by")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM stream_registry"
_RETENTION = re.compile(r"^([1-9][0-9]{0,6})([smhdwy])$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000, "y": 365 * 86_400_000}


def retention_to_ms(text: str) -> int | None:
    """`400d`, `7y`, `12w`, `36h` (y = 365 days) -> milliseconds; None when `text` is not such a duration."""
    m = _RETENTION.match(text) if isinstance(text, str) else None
    return None if m is None else int(m.group(1)) * _UNIT_MS[m.group(2)]


@dataclass(frozen=True)
class StreamEntry:
    """One registry entry. value_min/value_max: inclusive bounds (None: unbounded on that side);
    retention: as given ("400d"), retention_ms the same in milliseconds; time_zone: IANA name."""

    tenant: str
    stream: str
    description: str = ""
    unit: str = ""
    value_min: float | None = None
    value_max: float | None = None
    retention: str | None = None
    retention_ms: int | None = None
    time_zone: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    updated_by: str = "unknown"

    def value_problem(self, value: float) -> str | None:
        """Why `value` is outside this stream's bounds (None when it is inside)."""
        if self.value_min is not None and value < self.value_min:
            return f"below the stream's value_min {self.value_min!r}"
        if self.value_max is not None and value > self.value_max:
            return f"above the stream's value_max {self.value_max!r}"
        return None

    @property
    def bounded(self) -> bool:
        return self.value_min is not None or self.value_max is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StreamRegistry:
    """Reads and writes of stream_registry over a psycopg pool. Writes take the caller's connection
    (its transaction) so an audit row commits with them or not at all."""

    def __init__(self, pool, *, wait_s: float = 5.0) -> None:
        self.pool = pool
        self.wait_s = wait_s

    def get(self, tenant: str, stream: str) -> StreamEntry | None:
        with self.pool.connection(timeout=self.wait_s) as conn:
            row = conn.execute(_SELECT + " WHERE tenant = %s AND stream = %s", (tenant, stream)).fetchone()
        return None if row is None else StreamEntry(*row)

    def list(self, tenant: str) -> list[StreamEntry]:
        with self.pool.connection(timeout=self.wait_s) as conn:
            rows = conn.execute(_SELECT + " WHERE tenant = %s ORDER BY stream", (tenant,)).fetchall()
        return [StreamEntry(*r) for r in rows]

    def all(self) -> dict[tuple[str, str], StreamEntry]:
        """Every entry of every tenant, by (tenant, stream) (the router's cache loads this)."""
        with self.pool.connection(timeout=self.wait_s) as conn:
            rows = conn.execute(_SELECT).fetchall()
        return {(r[0], r[1]): StreamEntry(*r) for r in rows}

    def retention_ms(self, tenant: str, stream: str) -> int | None:
        """The stream's retention override in milliseconds, None when it has none."""
        with self.pool.connection(timeout=self.wait_s) as conn:
            row = conn.execute("SELECT retention_ms FROM stream_registry WHERE tenant = %s AND stream = %s",
                               (tenant, stream)).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def put(conn: psycopg.Connection, entry: StreamEntry) -> tuple[StreamEntry, bool]:
        """Create or replace the entry (every described field; created_at kept); returns it as
        stored and whether it was created."""
        row = conn.execute(
            "INSERT INTO stream_registry (tenant, stream, description, unit, value_min, value_max, retention, "
            "retention_ms, time_zone, updated_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (tenant, stream) DO UPDATE SET description = excluded.description, unit = excluded.unit, "
            "value_min = excluded.value_min, value_max = excluded.value_max, retention = excluded.retention, "
            "retention_ms = excluded.retention_ms, time_zone = excluded.time_zone, updated_at = now(), "
            f"updated_by = excluded.updated_by RETURNING {', '.join(_COLUMNS)}, (xmax = 0) AS created",
            (entry.tenant, entry.stream, entry.description, entry.unit, entry.value_min, entry.value_max,
             entry.retention, entry.retention_ms, entry.time_zone, entry.updated_by)).fetchone()
        return StreamEntry(*row[:-1]), bool(row[-1])

    @staticmethod
    def delete(conn: psycopg.Connection, tenant: str, stream: str) -> StreamEntry | None:
        """Remove the entry; the removed entry, or None when there was none."""
        row = conn.execute(f"DELETE FROM stream_registry WHERE tenant = %s AND stream = %s "
                           f"RETURNING {', '.join(_COLUMNS)}", (tenant, stream)).fetchone()
        return None if row is None else StreamEntry(*row)


def interned_streams(pool, tenant: str, wait_s: float = 5.0) -> list[str]:
    """Streams of `tenant` in the key dictionary (table `streams`): every stream that ever reached
    warm, cold or archive (rows stay when the data goes)."""
    with pool.connection(timeout=wait_s) as conn:
        return [r[0] for r in conn.execute("SELECT stream FROM streams WHERE tenant = %s ORDER BY stream",
                                           (tenant,)).fetchall()]


def is_interned(pool, tenant: str, stream: str, wait_s: float = 2.0) -> bool:
    """Whether the key dictionary knows the stream (one indexed lookup)."""
    with pool.connection(timeout=wait_s) as conn:
        return conn.execute("SELECT 1 FROM streams WHERE tenant = %s AND stream = %s",
                            (tenant, stream)).fetchone() is not None
