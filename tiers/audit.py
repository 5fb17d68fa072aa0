"""The audit log in PostgreSQL (sql/migrations/common/0053_audit_log.sql): operator actions with
who asked, from where and when."""
from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def record(conn: psycopg.Connection, *, principal: str, tenant: str, remote_addr: str | None, action: str,
           target: str, details: dict[str, Any] | None = None) -> int:
    """Insert one audit row inside the caller's open transaction (it commits with the action or not
    at all); returns its id. `details`: ids and counts only (JSON; no NUL in strings)."""
    row = conn.execute("INSERT INTO audit_log (principal, tenant, remote_addr, action, target, details) "
                       "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                       (principal, tenant, remote_addr, action, target, Jsonb(details or {}))).fetchone()
    return row[0]


def entries(conn: psycopg.Connection, tenant: str, limit: int = 100) -> list[dict[str, Any]]:
    """The tenant's latest audit rows, newest first: {id, at (datetime), principal, remote_addr,
    action, target, details}."""
    rows = conn.execute("SELECT id, at, principal, remote_addr, action, target, details FROM audit_log "
                        "WHERE tenant = %s ORDER BY id DESC LIMIT %s", (tenant, limit)).fetchall()
    keys = ("id", "at", "principal", "remote_addr", "action", "target", "details")
    return [dict(zip(keys, r)) for r in rows]
