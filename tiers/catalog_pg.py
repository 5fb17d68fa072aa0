"""The catalog in PostgreSQL: one versioned row of boundaries (sql/migrations/common/0001_catalog.sql).

Readers take `snapshot()` (one SELECT, no lock, no wait). Writers move boundaries with `advance()`
inside their own transaction — the one that records the verified copy — so the move commits
together with the evidence or not at all.
"""
from __future__ import annotations

import psycopg
from psycopg_pool import ConnectionPool

from rollups.errors import Conflict, TierUnavailable
from rollups.timeutil import MIN_MS, MINUTE_MS
from tiers.catalog import CatalogSnapshot, b_warm_target

_SELECT = "SELECT version, b_archive, b_cold, b_warm FROM catalog WHERE id = 1"


class CatalogNotInitialised(TierUnavailable):
    def __init__(self) -> None:
        super().__init__("catalog", "The catalog has no row yet: run migrations and initialise it.")


class BoundaryMoveRefused(Conflict, ValueError):
    """A boundary move that would go backwards, break b_archive <= b_cold <= b_warm, or not be
    minute-aligned."""

    code = "boundary_move_refused"


def b_warm_in(conn: psycopg.Connection) -> int | None:
    """b_warm (epoch ms) as `conn`'s transaction sees it, None when the catalog has no row."""
    row = conn.execute("SELECT b_warm FROM catalog WHERE id = 1").fetchone()
    return None if row is None else row[0]


class PgCatalog:
    def __init__(self, pool: ConnectionPool, *, wait_s: float | None = None):
        """`wait_s`: how long snapshot() waits for a connection of the pool (None: the pool's
        timeout) — short for a reader that has a fallback (tiers.catalog_fallback)."""
        self._pool = pool
        self._wait_s = wait_s

    def snapshot(self) -> CatalogSnapshot:
        """The current boundaries and version. Raises TierUnavailable("catalog") when unreachable."""
        try:
            with self._pool.connection(timeout=self._wait_s) as conn:
                # one round trip: the lone SELECT in autocommit (a transaction of its own), not
                # BEGIN + SELECT + the pool's ROLLBACK (three, on every query of the router)
                idle = not conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                if idle:
                    conn.autocommit = True
                try:
                    row = conn.execute(_SELECT).fetchone()
                finally:
                    if idle:
                        conn.autocommit = False
        except psycopg.Error as exc:
            raise TierUnavailable("catalog") from exc
        if row is None:
            raise CatalogNotInitialised()
        return CatalogSnapshot(*row)

    def initialise(self, now_ms: int, hot_age_ms: int) -> CatalogSnapshot:
        """Create the row on first start (b_warm = tiers.catalog.b_warm_target(now, hot_age): now -
        hot_age floored to the handover grid; b_cold = b_archive = MIN_MS, version 1); later calls
        change nothing. Returns the current snapshot."""
        b_warm = b_warm_target(now_ms, hot_age_ms)
        with self._pool.connection() as conn:
            inserted = conn.execute(
                "INSERT INTO catalog (id, b_archive, b_cold, b_warm, version) VALUES (1, %s, %s, %s, 1) "
                "ON CONFLICT (id) DO NOTHING RETURNING version", (MIN_MS, MIN_MS, b_warm)).fetchone()
            if inserted:
                conn.execute("INSERT INTO catalog_history (version, b_archive, b_cold, b_warm) "
                             "VALUES (1, %s, %s, %s)", (MIN_MS, MIN_MS, b_warm))
        return self.snapshot()

    def advance(self, conn: psycopg.Connection, *, b_warm: int | None = None, b_cold: int | None = None,
                b_archive: int | None = None) -> CatalogSnapshot:
        """Move boundaries forward inside the caller's open transaction; return the new snapshot.

        Locks the row until the caller commits (concurrent movers serialise). A boundary given at
        its current value is unchanged; if nothing changes the version stays. Raises
        BoundaryMoveRefused for a backwards move, a value not on a minute, or an order violation.
        """
        row = conn.execute(_SELECT + " FOR UPDATE").fetchone()
        if row is None:
            raise CatalogNotInitialised()
        cur = CatalogSnapshot(*row)
        new = {"b_archive": cur.b_archive, "b_cold": cur.b_cold, "b_warm": cur.b_warm}
        for name, value in (("b_archive", b_archive), ("b_cold", b_cold), ("b_warm", b_warm)):
            if value is None:
                continue
            if value % MINUTE_MS:
                raise BoundaryMoveRefused(f"{name} must be on a minute boundary, got {value}.")
            if value < new[name]:
                raise BoundaryMoveRefused(f"{name} moves only forward: {value} < {new[name]}.")
            new[name] = value
        if not (new["b_archive"] <= new["b_cold"] <= new["b_warm"]):
            raise BoundaryMoveRefused(f"boundaries must satisfy b_archive <= b_cold <= b_warm: {new}.")
        if (new["b_archive"], new["b_cold"], new["b_warm"]) == (cur.b_archive, cur.b_cold, cur.b_warm):
            return cur
        version = cur.version + 1
        conn.execute("UPDATE catalog SET b_archive = %s, b_cold = %s, b_warm = %s, version = %s, "
                     "updated_at = now() WHERE id = 1",
                     (new["b_archive"], new["b_cold"], new["b_warm"], version))
        conn.execute("INSERT INTO catalog_history (version, b_archive, b_cold, b_warm) VALUES (%s, %s, %s, %s)",
                     (version, new["b_archive"], new["b_cold"], new["b_warm"]))
        return CatalogSnapshot(version, **new)

    def settled(self, grace_ms: int) -> CatalogSnapshot:
        """The newest catalog version that has been current for at least `grace_ms` of wall time
        (the oldest snapshot a running query can still hold). A source may delete what it handed
        over below this snapshot's boundary. Falls back to the first version."""
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT version, b_archive, b_cold, b_warm FROM catalog_history "
                "WHERE changed_at <= now() - make_interval(secs => %s) "
                "ORDER BY version DESC LIMIT 1", (grace_ms / 1000.0,)).fetchone()
            if row is None:
                row = conn.execute("SELECT version, b_archive, b_cold, b_warm FROM catalog_history "
                                   "ORDER BY version LIMIT 1").fetchone()
        if row is None:
            raise CatalogNotInitialised()
        return CatalogSnapshot(*row)
