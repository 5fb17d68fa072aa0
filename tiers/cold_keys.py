"""Key interning for the cold tier: per (tenant, stream), each key string gets an integer id.

Rollup files, top-K copies and the threshold algorithm work on ids (int64 group-bys are ~40%
faster than string ones and value-sorted copies stay small); strings appear only at the edge.
`KeyDictionary` is the seam; `PgKeyDictionary` uses the warm tier's dictionary in PostgreSQL
(tiers.db) so a key has one id in every tier; `MemoryKeyDictionary` serves tools that make their
own ids (the benchmark).
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
    """The shared dictionary in PostgreSQL (tables `streams` and `keys`, sql/migrations/common/0003,
    managed by tiers.db.StreamKeyIds, so cold and warm give a key the same id), plus a cached
    id -> key map per stream (ids never change once given, so the cache only grows)."""

    def __init__(self, postgres_url: str | None = None, *, pool=None) -> None:
        from tiers.db import StreamKeyIds, make_pool

        self._own_pool = pool is None
        self._pool = pool if pool is not None else make_pool(postgres_url, max_size=4, name="cold-keys")
        self._shared = StreamKeyIds(self._pool)
        self._names: dict[int, dict[int, str]] = {}
        self._sorted: dict[int, tuple[np.ndarray, pa.Array]] = {}  # per stream id: sorted ids, their keys
        self._lock = threading.Lock()

    def ids(self, tenant, stream, keys, *, create=True):
        keys = list(keys)
        sid = self._shared.stream_id(tenant, stream, create=create)
        if sid is None:
            return np.full(len(keys), -1, np.int64)
        found = self._shared.key_ids(sid, keys, create=create)
        with self._lock:
            names = self._names.setdefault(sid, {})
            for k, i in found.items():
                names[i] = k
        return np.fromiter((found.get(k, -1) for k in keys), np.int64, len(keys))

    def keys(self, tenant, stream, ids):
        arr = np.asarray(ids.to_numpy() if hasattr(ids, "to_numpy") else ids, dtype=np.int64)
        if len(arr) == 0:
            return pa.array([], pa.string())
        sid = self._shared.stream_id(tenant, stream)
        if sid is None:
            raise LookupError(f"stream {stream!r} of tenant {tenant!r} has no keys")
        # the cache as sorted ids and their strings: a lookup is a searchsorted and a take
        known, names = self._sorted.get(sid, (np.zeros(0, np.int64), pa.array([], pa.string())))
        uniq = np.unique(arr)
        at = np.minimum(np.searchsorted(known, uniq), max(len(known) - 1, 0))
        missing = uniq[known[at] != uniq] if len(known) else uniq
        if len(missing):
            with self._pool.connection() as conn:
                rows = conn.execute("SELECT id, key FROM keys WHERE stream_id = %s AND id = ANY(%s)",
                                    (sid, missing.tolist())).fetchall()
            if len(rows) != len(missing):
                raise LookupError(f"{len(missing) - len(rows)} key ids of stream {stream!r} were never given")
            with self._lock:
                known, names = self._sorted.get(sid, (known, names))
                ids_ = np.concatenate([known, np.array([r[0] for r in rows], np.int64)])
                strs = pa.concat_arrays([names, pa.array([r[1] for r in rows], pa.string())])
                order = np.argsort(ids_, kind="stable")
                ids_, keep = np.unique(ids_[order], return_index=True)
                known, names = ids_, pc.take(strs, pa.array(order[keep]))
                self._sorted[sid] = (known, names)
        return pc.take(names, pa.array(np.searchsorted(known, arr)))

    def close(self) -> None:
        if self._own_pool:
            self._pool.close()
