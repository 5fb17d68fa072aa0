"""Results cache for immutable pieces, shared by every router worker and replica through Redis.

What is cached. A piece (a tier, a granularity, a bucket-aligned range) is stored under
    (tenant, stream, group, key, tier, granularity, piece start/end, the range the tier owns in
     the plan's catalog snapshot, the tier's data version of the piece)
and served while that key is asked again. The key is right because every change to what a read of
the piece returns changes it:
  - archive, cold: `data_versions(tenant, stream, pieces)` (tiers.base.Tier), the stream's version
    for every piece, changes with every file or partition written, rewritten or retired (export,
    import, rebuild, archive, retention);
  - warm, hot: `data_versions(tenant, stream, pieces)`, one version per piece, that every write,
    late event, import, rebuild, refresh and delete touching the piece's days (warm) or hours (hot)
    changes in the same transaction / script as the change (tiers/versions.py has the argument,
    including a late event acknowledged by hot, flushed to warm later, and folded into warm's
    rollups later still: each of the three steps changes the versions of what it changes);
  - migrations: a boundary move changes the owned range of the tiers on both sides of it (and
    the tier's data version when it writes or deletes the data). A piece lies inside its tier's
    owned range, so the other tiers' entries survive a move (the catalog version would drop them
    all every expire_hot).
The planner reads the versions before it reads the pieces, so it never stores data older than
the version it stores it under (tiers/versions.py).

Which pieces are stored: every archive and cold piece; warm and hot pieces once closed — ending at
least `clock_skew` before now — since an open piece changes with every on-time event and would
only churn the cache. Closedness is a policy, not a correctness condition: the versions are.

Where. Redis (settings.results_cache_url, by default settings.redis_url; results_cache_ttl 0: none), keys
`tierstore:cache:<hash of the key>`, values the Arrow IPC stream of the piece's partials, with a
TTL and a maximum size; in front, a small in-process LRU under the same keys (equally valid: the
key holds the versions). A Redis failure never fails a query: it is logged, the pieces are read
uncached, and Redis is left alone for a few seconds.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from typing import Callable, Hashable, Sequence

import pyarrow as pa
import redis

from rollups.cover import Piece
from router.protocols import PieceReader

log = logging.getLogger("tierstore.router.cache")

ALWAYS_CACHED = frozenset({"cold", "archive"})
CACHED_WHEN_CLOSED = frozenset({"warm", "hot"})
KEY_PREFIX = "tierstore:cache:"
LOCAL_MAX_BYTES = 256 * 1024 * 1024  # the in-process LRU's bound, besides its entry count
BACKOFF_S = 5.0                       # how long Redis is left alone after a failure
#: tables of at least this many bytes are stored LZ4-compressed (about 35 % smaller); below it an
#: LZ4 frame's set-up costs 10x the plain encoding (0.13 vs 0.013 ms for a 30-row piece, which made
#: put_many most of a trending query's time: 435 pieces), for a few hundred bytes saved
COMPRESS_MIN_BYTES = 64 * 1024
_IPC_COMPRESSED = pa.ipc.IpcWriteOptions(compression="lz4" if pa.Codec.is_available("lz4") else None)
_IPC_PLAIN = pa.ipc.IpcWriteOptions()


class ResultsCache:
    """Pieces' partial tables by key: an in-process LRU (`entries`, 0: none) in front of Redis
    (`redis_url`, None or "": none). Without either, nothing is cached.

    ttl_ms: how long Redis keeps an entry; max_bytes: larger pieces are not stored;
    closed_after_ms: warm and hot pieces are stored once they end this long before now.
    redis_mode: "cluster": a Redis Cluster client (tierstore.wiring.redis_client), built at first use;
    entries spread over the slots (reads by MGET per slot, writes by a non-transactional pipeline)."""

    def __init__(self, entries: int, *, redis_url: str | None = None, ttl_ms: int = 3_600_000,
                 max_bytes: int = 8 * 1024 * 1024, closed_after_ms: int = 300_000, redis_mode: str = "standalone"):
        self.entries = entries
        self.ttl_ms = ttl_ms
        self.max_bytes = max_bytes
        self.closed_after_ms = closed_after_ms
        self._lock = threading.Lock()
        self._data: OrderedDict[str, tuple[pa.Table, int]] = OrderedDict()
        self._bytes = 0
        self._redis = None
        self._down_until = 0.0
        # metrics hooks (router.metrics.Metrics): (local hits, redis hits, misses) of each
        # get_many, and the operation ("read", "write") of each Redis failure
        self.on_lookup: Callable[[int, int, int], None] | None = None
        self.on_error: Callable[[str], None] | None = None
        self._redis_url, self._redis_mode = redis_url or None, redis_mode
        if redis_url and redis_mode != "cluster":
            self._redis = self._connect()

    def _connect(self):
        from tierstore.wiring import redis_client

        return redis_client(self._redis_url, self._redis_mode, socket_timeout=0.5, socket_connect_timeout=0.5)

    @classmethod
    def from_settings(cls, settings) -> "ResultsCache":
        """From tierstore Settings (or any object with the same attributes; missing: defaults)."""
        entries = getattr(settings, "results_cache_entries", 0)
        ttl = getattr(settings, "results_cache_ttl", 0)
        url = (getattr(settings, "results_cache_url", "") or getattr(settings, "redis_url", "")) if ttl > 0 else ""
        return cls(entries, redis_url=url or None, ttl_ms=ttl,
                   redis_mode=getattr(settings, "redis_mode", "standalone"),
                   max_bytes=getattr(settings, "results_cache_max_bytes", 8 * 1024 * 1024),
                   closed_after_ms=getattr(settings, "clock_skew", 300_000))

    @property
    def enabled(self) -> bool:
        return self.entries > 0 or self._redis_url is not None

    def cacheable(self, name: str, tier: PieceReader, piece: Piece | None = None, now: int | None = None) -> bool:
        """Whether pieces of this tier (and this piece, when given, at `now` epoch ms) are stored."""
        if not self.enabled:
            return False
        if not tier.supports("data_versions"):
            return False
        if name in ALWAYS_CACHED:
            return True
        if name in CACHED_WHEN_CLOSED:
            return piece is None or now is None or piece.range.end <= now - self.closed_after_ms
        return False

    def get_many(self, keys: Sequence[Hashable]) -> list[pa.Table | None]:
        """The stored table of each key, or None."""
        names = [_name(k) for k in keys]
        out: list[pa.Table | None] = []
        with self._lock:
            for name in names:
                hit = self._data.get(name)
                if hit is not None:
                    self._data.move_to_end(name)
                out.append(hit[0] if hit is not None else None)
        missing = [i for i, t in enumerate(out) if t is None]
        local_hits = len(out) - len(missing)
        if not missing or not self._redis_ok():
            self._looked_up(local_hits, 0, len(missing))
            return out
        try:
            client = self._redis
            keys = [names[i] for i in missing]
            values = client.mget_nonatomic(keys) if hasattr(client, "mget_nonatomic") else client.mget(keys)
        except redis.RedisError as exc:
            self._failed("read", exc)
            self._looked_up(local_hits, 0, len(missing))
            return out
        for i, value in zip(missing, values):
            if value is None:
                continue
            try:
                table = pa.ipc.open_stream(value).read_all()
            except pa.ArrowInvalid:
                log.warning("results cache: undecodable entry %s ignored", names[i])
                continue
            out[i] = table
            self._remember(names[i], table, len(value))
        redis_hits = sum(1 for i in missing if out[i] is not None)
        self._looked_up(local_hits, redis_hits, len(missing) - redis_hits)
        return out

    def put_many(self, items: Sequence[tuple[Hashable, pa.Table]]) -> None:
        """Store these (key, table) pairs (those over max_bytes are left out)."""
        encoded = []
        for key, table in items:
            value = _encode(table)
            if len(value) > self.max_bytes:
                continue
            name = _name(key)
            self._remember(name, table, len(value))
            encoded.append((name, value))
        if not encoded or not self._redis_ok():
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for name, value in encoded:
                pipe.set(name, value, px=self.ttl_ms)
            pipe.execute()
        except redis.RedisError as exc:
            self._failed("write", exc)

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()

    def _remember(self, name: str, table: pa.Table, size: int) -> None:
        if self.entries <= 0 or size > LOCAL_MAX_BYTES:
            return
        with self._lock:
            old = self._data.pop(name, None)
            if old is not None:
                self._bytes -= old[1]
            self._data[name] = (table, size)
            self._bytes += size
            while len(self._data) > self.entries or self._bytes > LOCAL_MAX_BYTES:
                self._bytes -= self._data.popitem(last=False)[1][1]

    def _looked_up(self, local_hits: int, redis_hits: int, misses: int) -> None:
        if self.on_lookup is not None:
            self.on_lookup(local_hits, redis_hits, misses)

    def _redis_ok(self) -> bool:
        if self._redis_url is None or time.monotonic() < self._down_until:
            return False
        if self._redis is None:  # a cluster client reads the slot map when built: built at first use
            try:
                self._redis = self._connect()
            except redis.RedisError as exc:
                self._failed("read", exc)
                return False
        return True

    def _failed(self, what: str, exc: Exception) -> None:
        self._down_until = time.monotonic() + BACKOFF_S
        if self.on_error is not None:
            self.on_error(what)
        log.warning("results cache: Redis %s failed (%s); reading uncached for %g s", what, exc, BACKOFF_S)


def _name(key: Hashable) -> str:
    return KEY_PREFIX + hashlib.blake2b(repr(key).encode(), digest_size=20).hexdigest()


def _encode(table: pa.Table) -> bytes:
    """An Arrow IPC stream of the table, compressed when it holds COMPRESS_MIN_BYTES or more
    (the reader takes either)."""
    options = _IPC_COMPRESSED if table.nbytes >= COMPRESS_MIN_BYTES else _IPC_PLAIN
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
