"""The composition root: every client a process uses, built once from Settings, closed by one exit stack.

    with open_resources(settings) as r:      # the scheduler, every CLI command
        runner = JobRunner(r.pool, settings, r, jobs=JOBS)
    build_app(settings)                       # tierstore.app: the router over the same Resources

Every Redis client comes from `redis_client` (or `redis_of(settings)`): a redis.cluster.RedisCluster
when settings.redis_mode is "cluster", a redis.Redis otherwise. Nothing else in tierstore builds a
Redis client, a PostgreSQL pool or a tier for production use;
jobs find their clients in the Resources they are given (scheduler.jobs: by name, as a mapping, so
a test may hand a job a plain dict of the clients it needs).
"""
from __future__ import annotations

from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from psycopg_pool import ConnectionPool

from tiers.archive import ArchiveTier
from tiers.catalog_pg import PgCatalog
from tiers.cold import ColdTier
from tiers.cold_keys import PgKeyDictionary
from tiers.hot import RedisHotTier
from tiers.warm import WarmTier

JOBS_POOL_SIZE = 8

# the names a job may look up (Mapping access), in the order they are built
NAMES = ("pool", "catalog", "redis", "warm", "hot", "cold", "archive", "reports")


@dataclass(eq=False)
class Resources(Mapping[str, Any]):
    """The clients of one process.

    pool     PostgreSQL pool of the jobs and commands (job_runs, catalog, registries)
    catalog  tiers.catalog_pg.PgCatalog over `pool` (initialised: a fresh database gets its boundaries)
    redis    redis-py client of the hot tier's Redis (the event log and its marks live there)
    warm     tiers.warm.WarmTier (its own pool)       hot  tiers.hot.RedisHotTier, or None
    cold     tiers.cold.ColdTier (key dictionary on warm's pool)
    archive  tiers.archive.ArchiveTier (registry on `pool`, cold's key dictionary)
    reports  scheduler.reports.ReportService, when asked for (`with_reports`)
    Also a read-only mapping of those names (jobs read `resources["warm"]`). `close()` (or leaving
    the `with` block) closes everything in the reverse order of building; idempotent.
    """

    pool: ConnectionPool
    catalog: PgCatalog
    redis: Any
    warm: WarmTier
    hot: RedisHotTier | None
    cold: ColdTier
    archive: ArchiveTier
    reports: Any = None
    stack: ExitStack = field(default_factory=ExitStack, repr=False)

    def __getitem__(self, name: str) -> Any:
        if name not in NAMES:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(NAMES)

    def __len__(self) -> int:
        return len(NAMES)

    def add(self, closer: Any) -> Any:
        """Close `closer` (an object with close()) with the rest, before what was built earlier."""
        self.stack.enter_context(closing(closer))
        return closer

    def close(self) -> None:
        self.stack.close()

    def __enter__(self) -> "Resources":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


REDIS_MODES = ("standalone", "cluster")


def redis_client(url: str, mode: str = "standalone", **kwargs: Any) -> Any:
    """The one Redis client factory: redis.Redis.from_url(url, **kwargs) in "standalone" mode,
    redis.cluster.RedisCluster.from_url(url, **kwargs) in "cluster" mode (url names any node; the
    client finds the others, follows MOVED/ASK and re-reads the slots after a failover).

    kwargs: redis-py connection options (socket_timeout, socket_connect_timeout in seconds, ...).
    Standalone clients connect at first use; a cluster client reads the slot map now and raises
    redis.RedisError (ConnectionError) when no node answers. Raises ConfigError for an unknown
    mode or a URL that is not a Redis URL (cluster mode: a database other than 0).
    """
    import redis as redis_lib
    from redis.cluster import RedisCluster
    from redis.exceptions import RedisClusterException

    from rollups.errors import ConfigError

    if mode not in REDIS_MODES:
        raise ConfigError(f"TIERSTORE_REDIS_MODE: {mode!r} is not one of {', '.join(REDIS_MODES)}.")
    try:
        if mode == "standalone":
            return redis_lib.Redis.from_url(url, **kwargs)
        try:
            return RedisCluster.from_url(url, **kwargs)
        except RedisClusterException as exc:
            if "db" in str(exc):
                raise ConfigError(f"redis_url {url!r}: Redis Cluster has only database 0 ({exc}).") from None
            raise redis_lib.ConnectionError(f"Redis Cluster at {url}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"redis_url {url!r} is not a Redis URL: {exc}") from exc


def redis_of(settings: Any, url: str | None = None, **kwargs: Any) -> Any:
    """redis_client(url or settings.redis_url, settings.redis_mode, **kwargs)."""
    return redis_client(url or settings.redis_url, getattr(settings, "redis_mode", "standalone"), **kwargs)


def redis_primaries(client: Any) -> list[tuple[str, Any]]:
    """(name "host:port", a redis.Redis of that node) of every master of `client`'s Redis: the cluster's
    masters for a RedisCluster, the one server otherwise (its name from the connection options)."""
    nodes = getattr(client, "get_primaries", None)
    if nodes is not None:
        return [(node.name, node.redis_connection or client.get_redis_connection(node)) for node in nodes()]
    kw = client.connection_pool.connection_kwargs
    return [(f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}", client)]


def open_resources(settings: Any, *, migrate: bool = True, hot: bool = True, with_reports: bool = False,
                   report_workers: int = 2) -> Resources:
    """Build every client from `settings` (tierstore.settings.Settings); fails now, not at first use.

    migrate: apply the schema migrations first (idempotent). hot: build the Redis hot tier (False:
    None, for commands that never touch hot aggregates). with_reports: also the report service
    with `report_workers` background workers (0: the caller runs reports itself).
    Raises psycopg / redis errors when PostgreSQL or Redis is unreachable, ConfigError for bad
    settings; whatever was built before the failure is closed.
    """
    from rollups.timeutil import now_ms
    from tiers.db import apply_migrations, make_pool

    stack = ExitStack()
    try:
        if migrate:
            apply_migrations(settings.postgres_url, settings.warm_mode)
        pool = make_pool(settings.postgres_url, max_size=JOBS_POOL_SIZE, name="jobs")
        stack.callback(pool.close)
        catalog = PgCatalog(pool)
        catalog.initialise(now_ms(), settings.hot_age)
        client = stack.enter_context(closing(redis_of(settings)))
        client.ping()
        warm = stack.enter_context(closing(WarmTier.from_settings(settings)))
        hot_tier = stack.enter_context(closing(RedisHotTier.from_settings(settings))) if hot else None
        cold = stack.enter_context(closing(ColdTier(settings, keys=PgKeyDictionary(pool=warm.pool))))
        archive = stack.enter_context(closing(ArchiveTier.from_settings(settings, pool=pool, keys=cold.keys)))
        r = Resources(pool=pool, catalog=catalog, redis=client, warm=warm, hot=hot_tier, cold=cold,
                      archive=archive, stack=stack)
        if with_reports:
            from scheduler.reports import report_service

            r.reports = r.add(report_service(settings, r, workers=report_workers))
        return r
    except BaseException:
        stack.close()
        raise


def tiers_of(resources: Mapping[str, Any]) -> dict[str, Any]:
    """The four tiers, by name, as the router takes them."""
    return {name: resources[name] for name in ("archive", "cold", "warm", "hot")}


__all__ = ["Resources", "open_resources", "tiers_of", "NAMES", "redis_client", "redis_of", "redis_primaries"]
