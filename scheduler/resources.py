"""The clients jobs use, built from settings (start-up fails here, not at the first run)."""
from __future__ import annotations

from typing import Any

from tiers.catalog_pg import PgCatalog
from tiers.db import apply_migrations, make_pool
from tiers.warm import WarmTier


def build_resources(settings, *, hot: Any = None, migrate: bool = True) -> dict[str, Any]:
    """redis, warm, catalog (initialised), hot (the given one, else RedisHotTier when available)
    and the pool the job runner records runs with. Close them with close_resources."""
    import redis

    if migrate:
        apply_migrations(settings.postgres_url, settings.warm_mode)
    pool = make_pool(settings.postgres_url, max_size=8, name="jobs")
    catalog = PgCatalog(pool)
    from rollups.timeutil import now_ms

    catalog.initialise(now_ms(), settings.hot_age)
    client = redis.Redis.from_url(settings.redis_url)
    client.ping()
    return {"redis": client, "warm": WarmTier.from_settings(settings), "catalog": catalog,
            "hot": hot if hot is not None else _hot_tier(settings, client), "pool": pool}


def _hot_tier(settings, client) -> Any:
    try:
        from tiers.hot import RedisHotTier
    except ImportError:
        return None
    return RedisHotTier.from_settings(settings) if hasattr(RedisHotTier, "from_settings") else None


def close_resources(resources: dict[str, Any]) -> None:
    for name in ("warm", "hot"):
        tier = resources.get(name)
        if tier is not None and hasattr(tier, "close"):
            tier.close()
    resources["redis"].close()
    resources["pool"].close()
