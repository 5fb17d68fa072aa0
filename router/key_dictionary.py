"""One stream's key dictionary (key string <-> shared id, tiers/key_ids.py) for the rank path, held
as two Arrow/numpy columns instead of a Python dict, and shared between router workers and
replicas through the results cache's Redis as one Arrow IPC entry.

Why it is exact without a data version: an id is given once and never changes or goes to another
string (tiers.db.StreamKeyIds; sql/migrations/common/0003_key_dictionary.sql), so any snapshot of
a stream's dictionary is a correct PARTIAL map. What a snapshot lacks (keys created after it) is
looked up in PostgreSQL on use: a string not found is looked up by string, an id not found by id,
and both are added. The one way a snapshot could be wrong is a different database behind the same
stream id (a dropped and re-created database while Redis kept its entries): a shared entry is used
only when the key of its largest id is still that key in PostgreSQL (one indexed lookup).

    StreamDictionary.ids_of(strings) -> int64 ids (-1: not in the snapshot), pc.index_in (C++ hash)
    StreamDictionary.names_of(ids)   -> (pa.string array, found mask), searchsorted on sorted ids
    dictionary(planner, warm, sid)   -> the process's StreamDictionary of stream `sid`, loaded at
        first use from the shared cache or else one binary COPY (and then stored in the shared cache)
    prefill(cache, warm, sid)        -> store the current dictionary in the shared cache (scheduler)

Errors: psycopg errors from PostgreSQL (callers translate them: tiers.errors.translate("warm")); a
shared-cache failure only means a PostgreSQL read.
"""
from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: the shared cache's key of a stream's dictionary (one entry per stream id, validated on use)
TAG = "key_dictionary/1"
#: up to this many strings, ids_of scans the keys once per string (pc.index: ~2 ms at 500k keys)
#: instead of probing every key against their hash set (~20 ms with its 500k-long result arrays)
FEW_SCANS = 4


class StreamDictionary:
    """A snapshot of one stream's dictionary: ids sorted ascending, keys in the same order."""

    def __init__(self, ids: np.ndarray | None = None, keys: pa.Array | None = None) -> None:
        self.ids = np.zeros(0, np.int64) if ids is None else np.asarray(ids, np.int64)
        self.keys = pa.array([], pa.string()) if keys is None else keys
        self.loaded = ids is not None
        self.lock = threading.Lock()

    def set(self, ids: np.ndarray, keys: pa.Array) -> None:
        ids = np.asarray(ids, np.int64)
        if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
            order = np.argsort(ids, kind="stable")
            ids, keys = ids[order], pc.take(keys, pa.array(order))
        if keys.type != pa.string():
            keys = keys.cast(pa.string())
        self.ids, self.keys, self.loaded = ids, keys, True

    def add(self, ids, keys: list[str] | pa.Array) -> None:
        """Merge (id, key) pairs looked up since the snapshot."""
        ids = np.asarray(ids, np.int64)
        if not len(ids):
            return
        keys = keys if isinstance(keys, pa.Array) else pa.array(keys, pa.string())
        with self.lock:
            all_ids = np.concatenate([self.ids, ids])
            all_keys = pa.concat_arrays([self.keys, keys.cast(pa.string())])
            uniq, first = np.unique(all_ids, return_index=True)
            self.ids, self.keys = uniq, pc.take(all_keys, pa.array(first))

    def ids_of(self, strings: pa.Array) -> np.ndarray:
        """Ids of `strings` (same order), -1 for a string not in the snapshot."""
        if not len(strings):
            return np.zeros(0, np.int64)
        ids, keys = self.ids, self.keys
        if not len(ids):
            return np.full(len(strings), -1, np.int64)
        strings = strings.cast(pa.string())
        if len(strings) <= FEW_SCANS:  # the key asked: one memcmp scan each, no 500k-entry result arrays
            at = [pc.index(keys, pa.scalar(s, pa.string())).as_py() if s is not None else -1
                  for s in strings.to_pylist()]
            return np.array([ids[i] if i >= 0 else -1 for i in at], np.int64)
        if len(strings) * 8 < len(keys):  # a few strings: hash them, probe the keys
            uniq = pc.unique(strings)
            hit = pc.index_in(keys, value_set=uniq).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            per_uniq = np.full(len(uniq), -1, np.int64)
            per_uniq[hit[hit >= 0]] = ids[hit >= 0]
            at = pc.index_in(strings, value_set=uniq).to_numpy(zero_copy_only=False).astype(np.int64)
            return per_uniq[at]
        pos = pc.index_in(strings, value_set=keys).fill_null(-1)
        pos = pos.to_numpy(zero_copy_only=False).astype(np.int64)
        return np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)

    def names_of(self, ids: np.ndarray) -> tuple[pa.Array, np.ndarray]:
        """(the strings of `ids`, null where not found; found mask), same order."""
        ids = np.asarray(ids, np.int64)
        known, keys = self.ids, self.keys
        if not len(known) or not len(ids):
            return pa.nulls(len(ids), pa.string()), np.zeros(len(ids), bool)
        at = np.minimum(np.searchsorted(known, ids), len(known) - 1)
        found = known[at] == ids
        names = pc.take(keys, pa.array(at, mask=~found))
        return names, found


def _copy(warm, sid: int) -> tuple[np.ndarray, pa.Array]:
    """(ids sorted, keys) of one stream's whole dictionary in one binary COPY row
    (tiers.warm_binary: a COPY of the rows costs one protocol message and one Python step per key)."""
    from tiers.warm_binary import columns, copy_out

    sql = ("COPY (SELECT array_agg(id ORDER BY id), array_agg(octet_length(key) ORDER BY id), "
           "string_agg(key, '' ORDER BY id) FROM keys WHERE stream_id = %s) TO STDOUT (FORMAT binary)")
    with warm.pool.connection() as conn:
        buf = copy_out(conn, sql, (int(sid),))
    ids, _, keys = columns(buf, ["int8", "int4", ("text", 1)])
    return np.asarray(ids, np.int64), keys


def _valid(warm, sid: int, t: pa.Table) -> bool:
    """Whether a shared entry belongs to this database: the key of its largest id is unchanged."""
    if t.num_rows == 0 or t.column_names != ["id", "key"]:
        return False
    last = int(t["id"][t.num_rows - 1].as_py())
    with warm.pool.connection() as conn:
        row = conn.execute("SELECT key FROM keys WHERE stream_id = %s AND id = %s", (int(sid), last)).fetchone()
    return row is not None and row[0] == t["key"][t.num_rows - 1].as_py()


def _shared(planner):
    cache = getattr(planner, "cache", None)
    return cache if cache is not None and getattr(cache, "enabled", False) else None


def _get_shared(cache, warm, sid: int) -> tuple[np.ndarray, pa.Array] | None:
    if cache is None:
        return None
    try:
        (t,) = cache.get_many([(TAG, int(sid))])
    except Exception:  # the shared cache is an optimisation: read PostgreSQL
        return None
    if t is None or not _valid(warm, sid, t):
        return None
    return t["id"].to_numpy().astype(np.int64), t["key"].combine_chunks().cast(pa.string())


def _put_shared(cache, sid: int, ids: np.ndarray, keys: pa.Array) -> None:
    if cache is None or not len(ids):
        return
    try:
        cache.put_many([((TAG, int(sid)), pa.table({"id": pa.array(ids, pa.int64()), "key": keys}))])
    except Exception:  # best effort
        pass


_LOCK = threading.Lock()


def dictionary(planner, warm, sid: int) -> StreamDictionary:
    """The process's dictionary of stream `sid` (held by the warm tier object: one per app and
    database), loaded at first use: the shared cache's entry when valid, else one COPY (then
    stored for the other workers). Raises psycopg errors."""
    with _LOCK:
        per_stream = getattr(warm, "_rank_dictionaries", None)
        if per_stream is None:
            per_stream = warm._rank_dictionaries = {}
        d = per_stream.setdefault(int(sid), StreamDictionary())
    if d.loaded:
        return d
    store = None
    with d.lock:
        if not d.loaded:
            cache = _shared(planner)
            got = _get_shared(cache, warm, sid)
            if got is None:
                got = store = _copy(warm, sid)
            d.set(*got)
    if store is not None:  # for the other workers, once this one's waiters have it
        _put_shared(cache, sid, *store)
    return d


def loaded(warm, sid: int) -> StreamDictionary | None:
    """The process's dictionary of stream `sid` when already loaded, else None (nothing read)."""
    d = (getattr(warm, "_rank_dictionaries", None) or {}).get(int(sid))
    return d if d is not None and d.loaded else None


_LOADING: set = set()


def partial(planner, warm, sid: int) -> StreamDictionary:
    """While the process's dictionary of `sid` is not loaded: a per-process one of what was looked
    up so far (callers look the rest up in PostgreSQL and add it), and the whole dictionary loaded
    in the background for the next requests (at most one load per stream at a time)."""
    with _LOCK:
        per_stream = getattr(warm, "_rank_partials", None)
        if per_stream is None:
            per_stream = warm._rank_partials = {}
        d = per_stream.setdefault(int(sid), StreamDictionary())
    preload(planner, warm, sid)
    return d


def preload(planner, warm, sid: int) -> None:
    """Load the process's dictionary of stream `sid` on a background thread unless it is loaded or
    loading (at most one load per stream at a time): a rank's first ask starts it before reading
    its pieces, so the load (a 500k-key COPY: ~0.4 s) overlaps the reads instead of following
    them. Never raises (a failed load is retried by the next use)."""
    if loaded(warm, sid) is not None:
        return
    with _LOCK:
        key = (id(warm), int(sid))
        start = key not in _LOADING
        _LOADING.add(key)

    def load() -> None:
        try:
            dictionary(planner, warm, sid)
        except Exception:  # the next request tries again
            pass
        finally:
            with _LOCK:
                _LOADING.discard(key)

    if start:
        threading.Thread(target=load, name="key-dictionary", daemon=True).start()


def prefill(cache, warm, sid: int) -> int:
    """Store stream `sid`'s whole dictionary in the shared cache (the scheduler, ahead of a
    dashboard's first rank); the number of keys stored (0 without a cache)."""
    if cache is None or not getattr(cache, "enabled", False):
        return 0
    ids, keys = _copy(warm, sid)
    _put_shared(cache, sid, ids, keys)
    return len(ids)


def lookup_strings(warm, sid: int, d: StreamDictionary, strings: pa.Array) -> np.ndarray:
    """Ids of `strings` (-1: no id yet), those missing from the snapshot looked up in PostgreSQL
    (and added to it). Raises psycopg errors."""
    ids = d.ids_of(strings)
    miss = ids < 0
    if miss.any():
        todo = pc.unique(strings.filter(pa.array(miss))).to_pylist()
        with warm.pool.connection() as conn:
            rows = conn.execute("SELECT id, key FROM keys WHERE stream_id = %s AND key = ANY(%s)",
                                (int(sid), todo)).fetchall()
        if rows:
            d.add([r[0] for r in rows], [r[1] for r in rows])
            ids = d.ids_of(strings)
    return ids


def lookup_ids(warm, sid: int, d: StreamDictionary, ids: np.ndarray) -> pa.Array:
    """The strings of `ids` (all given ids), those missing from the snapshot read from PostgreSQL
    (and added). Raises LookupError for an id never given, psycopg errors."""
    names, found = d.names_of(ids)
    if not found.all():
        todo = np.unique(np.asarray(ids, np.int64)[~found])
        with warm.pool.connection() as conn:
            rows = conn.execute("SELECT id, key FROM keys WHERE stream_id = %s AND id = ANY(%s)",
                                (int(sid), todo.tolist())).fetchall()
        if len(rows) != len(todo):
            raise LookupError(f"{len(todo) - len(rows)} key ids of stream {sid} were never given")
        d.add([r[0] for r in rows], [r[1] for r in rows])
        names, found = d.names_of(ids)
    return names
