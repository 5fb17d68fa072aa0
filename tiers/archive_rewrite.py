"""Rewriting archived partitions without ever changing an object a registered manifest names.

A rewrite (a delete's day, a rebuilt week or month, `tierstore import` merging history into
archived days or packs) uploads the new partition under VERSIONED keys — every object and the
manifest carry `.v<version>` before their extension (tiers.s3_store.versioned_key), the version
recorded in the manifest (Manifest.key_version) — verifies them, then swaps the registry row in
one PostgreSQL transaction (`swap`: compare-and-swap on the row's manifest SHA-256, so a rewrite
never overwrites a concurrent one), and deletes the old partition's objects only after that
commit (`discard`). Readers take every object key from the registry's manifests (day and period
scans, packs, value-sorted copies, sketches, stream totals), so until the commit they read the
old objects, from it the new ones; the results caches key on the registry rows
(ArchiveRegistry.version: archived_at moves with the swap; tiers.sketch_versions: the manifest's
SHA-256), so cached answers are dropped at the same commit.

A crash before the commit leaves unregistered objects (garbage at keys nobody names, never
reused: the version is unique), after it the old objects (the caller records them and deletes
them on its rerun: tierstore.history_archive). Object Lock: objects under retention cannot be
deleted, so `discard` leaves them (they are counted as kept; the new partition's objects get their
own retention); nothing is refused. With Trino as the engine the archive is read by folder (Hive
partitions), where an old and a new file would both be read: rewrites there keep the in-place
keys (ArchivePartitions.rewrite_in_place) and `tierstore import` refuses merging into archived days.
"""
from __future__ import annotations

import logging
import secrets
import time

import psycopg

from tiers.archive_manifest import Manifest
from tiers.archive_registry import ArchiveRegistry

log = logging.getLogger("tierstore.archive")


class ArchiveChanged(RuntimeError):
    """A partition's registry row changed between the read a rewrite was built from and its swap."""


def new_version() -> str:
    """A fresh key version: the time (ms, hex) and 32 random bits — unique, never reused."""
    return f"{int(time.time() * 1000):x}{secrets.token_hex(4)}"


def current_sha(conn: psycopg.Connection, tenant: str, stream: str, period: str, start: int,
                lock: bool = False) -> str | None:
    """The manifest SHA-256 of the partition's archived row (None: no archived row); lock: FOR UPDATE."""
    row = conn.execute("SELECT manifest_sha256, status FROM archive_partitions WHERE tenant = %s AND stream = %s "
                       "AND period = %s AND start_ms = %s" + (" FOR UPDATE" if lock else ""),
                       (tenant, stream, period, start)).fetchone()
    return row[0] if row is not None and row[1] == "archived" else None


def swap(conn: psycopg.Connection, m: Manifest, manifest_key: str, manifest_sha256: str,
         expect: str | None) -> None:
    """Register `m` in conn's transaction if the partition's archived row still has manifest
    SHA-256 `expect` (None: no archived row), else raise ArchiveChanged (the caller rolls back)."""
    found = current_sha(conn, m.tenant, m.stream, m.period, m.start, lock=True)
    if found != expect:
        raise ArchiveChanged(f"{m.tenant}/{m.stream} {m.period} {m.name} changed in the archive while it was "
                             "being rewritten; nothing was committed, run it again")
    ArchiveRegistry.register(conn, m, manifest_key, manifest_sha256)


def forget(conn: psycopg.Connection, tenant: str, stream: str, period: str, start: int, expect: str | None) -> None:
    """Drop a partition's row in conn's transaction if it still has manifest SHA-256 `expect`."""
    if current_sha(conn, tenant, stream, period, start, lock=True) != expect:
        raise ArchiveChanged(f"{tenant}/{stream} {period} {start} changed in the archive while it was being "
                             "rewritten; nothing was committed, run it again")
    ArchiveRegistry.forget(conn, tenant, stream, period, start)


def object_keys(m: Manifest, store) -> list[str]:
    """Every key of a partition: its objects and its manifest object."""
    return [o["key"] for o in m.objects] + [store.manifest_key(m)]


def named_keys(pool, keys: list[str], chunk: int = 5_000) -> set[str]:
    """The keys among `keys` that a registry row (any status) names, as an object of its manifest
    or as its manifest key (asked `chunk` keys at a time)."""
    out: set[str] = set()
    if not keys:
        return out
    with pool.connection() as conn:
        for i in range(0, len(keys), chunk):
            part = keys[i:i + chunk]
            rows = conn.execute(
                "SELECT o ->> 'key' FROM archive_partitions, jsonb_array_elements(manifest -> 'objects') o "
                "WHERE o ->> 'key' = ANY(%s) UNION SELECT manifest_key FROM archive_partitions "
                "WHERE manifest_key = ANY(%s)", (part, part)).fetchall()
            out.update(r[0] for r in rows)
    return out


def discard(store, keys: list[str], keep: set[str] = frozenset()) -> dict[str, int]:
    """Delete old objects after the swap committed (keys in `keep`, named by a registered
    manifest, stay). Under Object Lock nothing is deleted (the objects are kept: retention holds
    them). Returns {"deleted": n, "kept": n}."""
    doomed = sorted(set(keys) - set(keep))
    if not doomed:
        return {"deleted": 0, "kept": 0}
    if store.object_lock_enabled():
        return {"deleted": 0, "kept": len(doomed)}
    return {"deleted": store.delete(doomed), "kept": 0}


__all__ = ["ArchiveChanged", "new_version", "swap", "forget", "discard", "object_keys", "current_sha", "named_keys"]
