"""What several benches share: an instance of their own inside the local services."""
from __future__ import annotations

import statistics
import time
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
import pyarrow as pa
import redis


def isolated(settings, redis_db: int, database: str, *, reset: bool = True, **update):
    """`settings` moved to Redis database `redis_db` and PostgreSQL database `database`, plus any
    other `update`s (pydantic model_copy). With `reset` (default) both are emptied first: the Redis
    database flushed, the PostgreSQL database dropped and created."""
    parts = urlsplit(settings.redis_url)
    redis_url = urlunsplit((parts.scheme, parts.netloc, f"/{redis_db}", parts.query, parts.fragment))
    if reset:
        client = redis.Redis.from_url(redis_url)
        client.flushdb()
        client.close()
        with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{database}"')
    pg = urlsplit(settings.postgres_url)
    postgres_url = urlunsplit((pg.scheme, pg.netloc, f"/{database}", pg.query, pg.fragment))
    return settings.model_copy(update={"redis_url": redis_url, "postgres_url": postgres_url, **update})


def ingest_zipf(hot, tenant: str, stream: str, n_events: int, n_keys: int, start: int, span: int, *,
                seed: int, now: int, batch: int = 50_000) -> None:
    """Ingest `n_events` into the hot tier (tiers.hot.RedisHotTier): keys `key-<rank>` drawn from a
    Zipf(1) law over `n_keys`, times uniform in [start, start + span) (epoch ms), values 1..50."""
    from tiers.base import EVENT_SCHEMA

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_keys + 1, dtype=np.float64)
    cum = np.cumsum(weights) / weights.sum()
    for lo in range(0, n_events, batch):
        n = min(batch, n_events - lo)
        ranks = np.minimum(np.searchsorted(cum, rng.random(n)), n_keys - 1)
        events = pa.table({"stream": pa.array([stream] * n), "key": pa.array([f"key-{r}" for r in ranks]),
                           "ts": pa.array(start + rng.integers(0, span, n)),
                           "value": pa.array(rng.integers(1, 51, n).astype(np.float64)),
                           "id": pa.nulls(n, pa.string())}, schema=EVENT_SCHEMA)
        hot.ingest(tenant, events, now_ms=now)


def median_ms(fn, repeat: int) -> tuple[float, object, float]:
    """(median ms, last result, first-run ms) of fn() over `repeat` runs."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), out, times[0]
