"""What several benches share: an instance of their own inside the local services."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis


def isolated(settings, redis_db: int, database: str, **update):
    """`settings` moved to an emptied Redis database `redis_db` and a freshly created PostgreSQL
    database `database` (dropped first), plus any other `update`s (pydantic model_copy)."""
    parts = urlsplit(settings.redis_url)
    redis_url = urlunsplit((parts.scheme, parts.netloc, f"/{redis_db}", parts.query, parts.fragment))
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}"')
    pg = urlsplit(settings.postgres_url)
    postgres_url = urlunsplit((pg.scheme, pg.netloc, f"/{database}", pg.query, pg.fragment))
    return settings.model_copy(update={"redis_url": redis_url, "postgres_url": postgres_url, **update})
