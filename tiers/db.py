"""PostgreSQL plumbing shared by the catalog, the warm tier and the scheduler.

Connections always run with TimeZone=UTC (bucket arithmetic must not depend on a session
setting). Migrations are the SQL files under sql/migrations, applied by yoyo-migrations: the
common ones plus the warm schema of one mode (`postgres` or `timescale`), recorded in warm_meta so
a database never switches mode silently.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg_pool import ConnectionPool

import sql as _sql_package
from rollups.errors import ConfigError

MIGRATIONS_DIR = Path(_sql_package.__file__).parent / "migrations"
WARM_MODES = ("postgres", "timescale")
# JIT costs more than it saves on the short aggregates tierstore runs (seen: 0.76 s of 1.6 s)
_CONN_KWARGS = {"options": "-c TimeZone=UTC -c jit=off", "connect_timeout": 5}


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection:
    """One connection in UTC. The caller closes it (use it as a context manager)."""
    return psycopg.connect(url, autocommit=autocommit, **_CONN_KWARGS)


def make_pool(url: str, *, min_size: int = 1, max_size: int = 8, name: str = "tierstore") -> ConnectionPool:
    """An open pool of UTC connections; fails now (not at first use) when the server is unreachable."""
    psycopg.connect(url, **_CONN_KWARGS).close()  # refused or bad credentials: fail now, not after the timeout
    pool = ConnectionPool(url, min_size=min_size, max_size=max_size, kwargs=dict(_CONN_KWARGS),
                          name=name, open=False)
    pool.open(wait=True, timeout=10)
    return pool


def yoyo_url(url: str) -> str:
    """yoyo needs the driver in the scheme: postgresql://... -> postgresql+psycopg://..."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise ConfigError(f"TIERSTORE_POSTGRES_URL must be a postgresql:// URL, not {parts.scheme}://")
    return urlunsplit(("postgresql+psycopg", *parts[1:]))


def installed_warm_mode(conn: psycopg.Connection) -> str | None:
    """The mode recorded in warm_meta, or None before the warm schema exists."""
    if conn.execute("SELECT to_regclass('warm_meta')").fetchone()[0] is None:
        return None
    row = conn.execute("SELECT mode FROM warm_meta").fetchone()
    return row[0] if row else None


def timescale_available(conn: psycopg.Connection) -> bool:
    """True when CREATE EXTENSION timescaledb can succeed: installed and preloaded."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),"
        "       current_setting('shared_preload_libraries')").fetchone()
    return bool(row[0]) and "timescaledb" in row[1]


def resolve_warm_mode(conn: psycopg.Connection, wanted: str = "auto") -> str:
    """The mode to use: what the database already has, else `wanted` (auto: timescale if available).

    Raises ConfigError when the setting asks for a mode the database cannot have.
    """
    if wanted not in ("auto", *WARM_MODES):
        raise ConfigError(f"TIERSTORE_WARM_MODE must be auto, timescale or postgres, not {wanted!r}")
    existing = installed_warm_mode(conn)
    if existing:
        if wanted not in ("auto", existing):
            raise ConfigError(f"TIERSTORE_WARM_MODE={wanted} but the database already holds a {existing} "
                              f"warm schema; it cannot switch modes in place")
        return existing
    if wanted == "timescale" and not timescale_available(conn):
        raise ConfigError("TIERSTORE_WARM_MODE=timescale but the timescaledb extension is not available "
                          "(installed and in shared_preload_libraries)")
    if wanted == "auto":
        return "timescale" if timescale_available(conn) else "postgres"
    return wanted


def apply_migrations(postgres_url: str, warm_mode: str = "auto") -> str:
    """Apply every pending migration (idempotent, safe to run concurrently); return the warm mode."""
    from yoyo import get_backend, read_migrations

    with connect(postgres_url, autocommit=True) as conn:
        mode = resolve_warm_mode(conn, warm_mode)
    backend = get_backend(yoyo_url(postgres_url))
    try:
        migrations = read_migrations(str(MIGRATIONS_DIR / "common"), str(MIGRATIONS_DIR / f"warm_{mode}"))
        with backend.lock():
            backend.apply_migrations(backend.to_apply(migrations))
    finally:
        backend.connection.close()
    return mode


class StreamKeyIds:
    """Streams and keys interned to integer ids (tables `streams`, `keys`), cached per process.

    Ids are created in their own short autocommit transactions, so a cached id always exists
    even when the caller's transaction rolls back (an unused id is harmless).
    """

    def __init__(self, pool: ConnectionPool):
        self._pool = pool
        self._lock = threading.Lock()
        self._streams: dict[tuple[str, str], int] = {}
        self._stream_names: dict[int, tuple[str, str]] = {}
        self._keys: dict[int, dict[str, int]] = {}
        self._arrays: dict[int, tuple[pa.Array, pa.Array]] = {}  # the same, as Arrow (names, ids)

    def stream_id(self, tenant: str, stream: str, *, create: bool = False) -> int | None:
        sid = self._streams.get((tenant, stream))
        if sid is not None:
            return sid
        with self._pool.connection() as conn:
            if create:
                conn.execute("INSERT INTO streams (tenant, stream) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                             (tenant, stream))
            row = conn.execute("SELECT id FROM streams WHERE tenant = %s AND stream = %s",
                               (tenant, stream)).fetchone()
        if row is None:
            return None
        with self._lock:
            self._streams[(tenant, stream)] = row[0]
            self._stream_names[row[0]] = (tenant, stream)
        return row[0]

    def streams(self, tenant: str) -> dict[str, int]:
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT stream, id FROM streams WHERE tenant = %s ORDER BY stream",
                                (tenant,)).fetchall()
        return dict(rows)

    def key_ids(self, stream_id: int, keys: Iterable[str], *, create: bool = True) -> dict[str, int]:
        """Ids of `keys` (created when missing and `create`); unknown keys are left out."""
        cache = self._keys.get(stream_id, {})
        wanted = set(keys)
        missing = sorted(k for k in wanted if k not in cache)
        if missing:
            self._remember(stream_id, self._fetch(stream_id, missing, create))
            cache = self._keys[stream_id]
        return {k: cache[k] for k in wanted if k in cache}

    def key_id_array(self, stream_id: int, keys: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Vectorised key -> id for an Arrow string column (ids created as needed)."""
        uniques = pc.unique(keys)
        if isinstance(uniques, pa.ChunkedArray):
            uniques = uniques.combine_chunks()
        names, ids = self._arrays.get(stream_id, (pa.array([], pa.string()), pa.array([], pa.int64())))
        pos = pc.index_in(uniques, value_set=names)
        if pos.null_count:
            missing = uniques.filter(pc.is_null(pos)).to_pylist()
            self._remember(stream_id, self._fetch(stream_id, sorted(missing), True))
            names, ids = self._arrays[stream_id]
            pos = pc.index_in(uniques, value_set=names)
        return pc.take(pc.take(ids, pos), pc.index_in(keys, value_set=uniques))

    def _remember(self, stream_id: int, found: dict[str, int]) -> None:
        with self._lock:
            cache = self._keys.setdefault(stream_id, {})
            new = {k: v for k, v in found.items() if k not in cache}
            cache.update(new)
            names, ids = self._arrays.get(stream_id, (pa.array([], pa.string()), pa.array([], pa.int64())))
            self._arrays[stream_id] = (pa.concat_arrays([names, pa.array(list(new), pa.string())]),
                                       pa.concat_arrays([ids, pa.array(list(new.values()), pa.int64())]))

    def _fetch(self, stream_id: int, keys: Sequence[str], create: bool) -> dict[str, int]:
        with self._pool.connection() as conn:
            if create:
                # sorted keys: concurrent interners lock index entries in the same order
                conn.execute("INSERT INTO keys (stream_id, key) SELECT %s, k FROM unnest(%s::text[]) AS k "
                             "ON CONFLICT DO NOTHING", (stream_id, list(keys)))
            rows = conn.execute("SELECT key, id FROM keys WHERE stream_id = %s AND key = ANY(%s)",
                                (stream_id, list(keys))).fetchall()
        return dict(rows)
