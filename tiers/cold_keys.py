"""Key interning for the cold tier: per (tenant, stream), each key string gets a dense integer id.

Rollup files, top-K copies and the threshold algorithm work on ids (int64 group-bys are ~40%
faster than string ones and value-sorted copies stay small); strings appear only at the edge.
`KeyDictionary` is the seam; `PgKeyDictionary` keeps the dictionary in PostgreSQL and caches it
in the process (ids never change once given, so the cache only grows).
"""
from __future__ import annotations

import threading
from typing import Iterable, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class KeyDictionary(Protocol):
    def ids(self, tenant: str, stream: str, keys: Sequence[str], *, create: bool = True) -> np.ndarray:
        """Ids of `keys` (int64 array, same order). Unknown keys get new ids when `create`,
        else -1."""

    def keys(self, tenant: str, stream: str, ids: Iterable[int] | np.ndarray | pa.Array) -> pa.Array:
        """The key strings of known ids (same order). LookupError for an id never given."""


class _StreamCache:
    __slots__ = ("to_id", "to_key", "arrow")

    def __init__(self) -> None:
        self.to_id: dict[str, int] = {}
        self.to_key: list[str] = []
        self.arrow: pa.Array | None = None

    def add(self, rows: Iterable[tuple[int, str]]) -> None:
        for key_id, key in rows:
            if key_id != len(self.to_key):
                raise RuntimeError(f"key dictionary not dense at id {key_id}")
            self.to_key.append(key)
            self.to_id[key] = key_id
        self.arrow = None

    def array(self) -> pa.Array:
        if self.arrow is None or len(self.arrow) != len(self.to_key):
            self.arrow = pa.array(self.to_key, pa.string())
        return self.arrow


class MemoryKeyDictionary:
    """A process-local dictionary (benchmarks and tools that generate their own ids)."""

    def __init__(self) -> None:
        self._streams: dict[tuple[str, str], _StreamCache] = {}
        self._lock = threading.Lock()

    def load(self, tenant: str, stream: str, keys: Sequence[str]) -> None:
        """Give `keys` the ids 0..n-1 (a fresh stream only)."""
        cache = self._streams.setdefault((tenant, stream), _StreamCache())
        start = len(cache.to_key)
        cache.add([(start + i, k) for i, k in enumerate(keys)])

    def ids(self, tenant, stream, keys, *, create=True):
        with self._lock:
            cache = self._streams.setdefault((tenant, stream), _StreamCache())
            if create:
                start = len(cache.to_key)
                cache.add([(start + i, k) for i, k in enumerate(_new_keys(cache, keys))])
            return np.fromiter((cache.to_id.get(k, -1) for k in keys), np.int64, len(keys))

    def keys(self, tenant, stream, ids):
        return _take(self._streams.get((tenant, stream)) or _StreamCache(), ids)


def _new_keys(cache: _StreamCache, keys: Sequence[str]) -> list[str]:
    seen, out = set(), []
    for k in keys:
        if k not in cache.to_id and k not in seen:
            seen.add(k)
            out.append(k)
    return out


def _take(cache: _StreamCache, ids) -> pa.Array:
    arr = pa.array(np.asarray(ids, dtype=np.int64)) if not isinstance(ids, (pa.Array, pa.ChunkedArray)) else ids
    if len(arr) == 0:
        return pa.array([], pa.string())
    hi = pc.max(arr).as_py()
    if pc.min(arr).as_py() < 0 or hi >= len(cache.to_key):
        raise LookupError(f"key id {hi} was never given")
    return pc.take(cache.array(), arr)


class PgKeyDictionary:
    """The dictionary in PostgreSQL table `cold_key_ids` (created if missing), cached per process.

    New ids are given under a per-stream advisory lock, max + 1 onwards, so ids stay dense.
    """

    DDL = """
    CREATE TABLE IF NOT EXISTS cold_key_ids (
        tenant text NOT NULL, stream text NOT NULL, key_id bigint NOT NULL, key text NOT NULL,
        PRIMARY KEY (tenant, stream, key_id), UNIQUE (tenant, stream, key))
    """

    def __init__(self, postgres_url: str) -> None:
        import psycopg

        self._conn = psycopg.connect(postgres_url, autocommit=True, connect_timeout=5)
        self._lock = threading.Lock()
        self._streams: dict[tuple[str, str], _StreamCache] = {}
        self._conn.execute("SELECT pg_advisory_lock(hashtext('cold_key_ids ddl'))")
        try:
            self._conn.execute(self.DDL)
        finally:
            self._conn.execute("SELECT pg_advisory_unlock(hashtext('cold_key_ids ddl'))")

    def _refresh(self, tenant: str, stream: str) -> _StreamCache:
        cache = self._streams.setdefault((tenant, stream), _StreamCache())
        rows = self._conn.execute(
            "SELECT key_id, key FROM cold_key_ids WHERE tenant = %s AND stream = %s AND key_id >= %s ORDER BY key_id",
            (tenant, stream, len(cache.to_key))).fetchall()
        cache.add(rows)
        return cache

    def ids(self, tenant, stream, keys, *, create=True):
        with self._lock:
            cache = self._streams.get((tenant, stream)) or self._refresh(tenant, stream)
            missing = _new_keys(cache, keys)
            if missing:
                cache = self._refresh(tenant, stream)
                missing = _new_keys(cache, keys)
            if missing and create:
                self._give(tenant, stream, missing)
                cache = self._refresh(tenant, stream)
            return np.fromiter((cache.to_id.get(k, -1) for k in keys), np.int64, len(keys))

    def _give(self, tenant: str, stream: str, keys: list[str]) -> None:
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(hashtext('cold_key_ids'), hashtext(%s || '/' || %s))",
                               (tenant, stream))
            start = self._conn.execute(
                "SELECT coalesce(max(key_id) + 1, 0) FROM cold_key_ids WHERE tenant = %s AND stream = %s",
                (tenant, stream)).fetchone()[0]
            taken = {r[0] for r in self._conn.execute(
                "SELECT key FROM cold_key_ids WHERE tenant = %s AND stream = %s AND key = ANY(%s)",
                (tenant, stream, keys)).fetchall()}
            keys = [k for k in keys if k not in taken]
            with self._conn.cursor().copy(
                    "COPY cold_key_ids (tenant, stream, key_id, key) FROM STDIN") as copy:
                for i, k in enumerate(keys):
                    copy.write_row((tenant, stream, start + i, k))

    def keys(self, tenant, stream, ids):
        with self._lock:
            cache = self._streams.get((tenant, stream)) or self._refresh(tenant, stream)
            arr = pa.array(np.asarray(ids, dtype=np.int64)) if not isinstance(ids, (pa.Array, pa.ChunkedArray)) else ids
            if len(arr) and pc.max(arr).as_py() >= len(cache.to_key):
                cache = self._refresh(tenant, stream)
            return _take(cache, arr)

    def close(self) -> None:
        self._conn.close()
