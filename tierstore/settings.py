"""All settings, loaded once: defaults < file (TIERSTORE_CONFIG, JSON or TOML) < TIERSTORE_ env.

Service URLs default to the local services of $TIERSTORE_HOME / TIERSTORE_PORT_BASE
(tierstore.layout). A bad setting stops start-up with a sentence that names it.
"""
from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from rollups.errors import ConfigError
from rollups.timeutil import parse_duration
from tierstore import layout as L

DURATION_FIELDS = ("hot_age", "warm_age", "cold_age", "archive_retention", "grace_period",
                   "dedup_window", "clock_skew", "flush_interval", "refresh_interval",
                   "expire_hot_interval", "compact_hot_interval", "export_cold_interval", "archive_interval",
                   "retention_interval", "query_timeout", "hot_safety_ttl", "results_cache_ttl")


def _duration_ms(value: Any) -> Any:
    """Durations accept `30s`, `5m`, `24h`, `30d`, `1w`, `7y` or integer milliseconds."""
    if isinstance(value, str) and value.strip().endswith("y") and value.strip()[:-1].isdigit():
        return int(value.strip()[:-1]) * 365 * 86_400_000
    if isinstance(value, str) and not value.strip().isdigit():
        return parse_duration(value, field="duration")
    return int(value)


class _FileSource(PydanticBaseSettingsSource):
    """Settings from the file named by TIERSTORE_CONFIG (JSON or TOML)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused by __call__
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("TIERSTORE_CONFIG")
        if not path:
            return {}
        p = Path(path)
        try:
            text = p.read_text()
            return tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"TIERSTORE_CONFIG={path} cannot be read: {exc}") from exc


class ApiKeyGrant(BaseModel):
    """What one API key grants: its tenant and scopes."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(min_length=1, max_length=64)
    scopes: list[Literal["ingest", "query", "admin"]] = Field(default_factory=lambda: ["ingest", "query"])


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIERSTORE_", extra="forbid", validate_default=True)

    home: Path = Path(".tierstore")
    port_base: int = Field(L.DEFAULT_PORT_BASE, ge=1024, le=65000)

    redis_url: str = ""
    postgres_url: str = ""
    trino_url: str = ""
    s3_endpoint: str = ""
    s3_access_key: str = L.S3_ACCESS_KEY
    s3_secret_key: str = L.S3_SECRET_KEY
    s3_bucket: str = L.S3_BUCKET
    s3_region: str = L.S3_REGION
    s3_object_lock: bool = False
    cold_dir: Path | None = None

    warm_mode: Literal["auto", "timescale", "postgres"] = "auto"
    cold_engine: Literal["duckdb", "trino"] = "duckdb"

    # tier ages and periods: milliseconds (strings like "24h" accepted)
    hot_age: int = 24 * 3_600_000
    warm_age: int = 30 * 86_400_000
    cold_age: int = 365 * 86_400_000
    archive_retention: int = 7 * 365 * 86_400_000
    grace_period: int = 10 * 60_000
    dedup_window: int = 24 * 3_600_000
    clock_skew: int = 5 * 60_000
    query_timeout: int = 60_000

    # archive packs (tiers/archive_packs.py): the archive job packs a stream's consecutive small days
    # (cold raw file < archive_pack_below bytes; 0: never) into one partition, up to
    # archive_pack_target bytes and archive_pack_max_days calendar days (retention waits for its last day)
    # never with cold_engine trino or s3_object_lock (tiers/archive_packs.PackRule.from_settings)
    archive_pack_below: int = Field(1 << 20, ge=0)
    archive_pack_target: int = Field(64 << 20, ge=1)
    archive_pack_max_days: int = Field(366, ge=1)
    # archive disk cache (issue 10, tiers/archive_cache.py): archived objects kept on this machine's disk
    # by SHA-256 (<home>/cache/archive) once read, so the threshold algorithm's archive lists are read
    # locally by every process after the first; at most this many bytes (0: off)
    archive_cache_bytes: int = Field(1 << 30, ge=0)

    # ingest limits
    max_batch_events: int = Field(100_000, ge=1)
    max_batch_bytes: int = Field(32 * 1024 * 1024, ge=1024)

    # scheduler intervals
    flush_interval: int = 5_000
    # 10 s (was 30 s): with hot-owned 1h/1d buckets deferred to expire_hot a run costs about half,
    # and the warm watermark trails by this interval plus a run (bench.sustained: fold lag)
    refresh_interval: int = 10_000
    expire_hot_interval: int = 300_000
    export_cold_interval: int = 3_600_000
    archive_interval: int = 86_400_000
    retention_interval: int = 86_400_000

    # access (shared/API.md, Access)
    auth_enabled: bool = False
    # api key -> tenant (scopes ingest, query), or -> {"tenant": t, "scopes": ["ingest", "query", "admin"]}
    api_keys: dict[str, str | ApiKeyGrant] = Field(default_factory=dict)
    jwt_secret: str = ""          # HS256
    jwt_public_key: str = ""      # PEM text (or a path to a PEM file): RS256 / ES256
    jwt_audience: str = ""
    jwt_issuer: str = ""
    jwt_tenant_claim: str = "tenant"
    # scope ("ingest", "query", "admin") -> a `limits` string ("600/minute"), plus "events" -> the
    # ingested events per tenant ("100000/second"); empty: nobody is throttled. Counted in Redis.
    rate_limits: dict[str, str] = Field(default_factory=dict)
    allow_unauthenticated: bool = False   # serve on a non-loopback address with auth off, on purpose
    allow_clock_override: bool = False    # as_of later than now + clock_skew (tests and demos only)
    # hot buckets carry a TTL only as a far safety net; expire_hot trims what the catalog handed over
    hot_safety_ttl: int = 7 * 86_400_000
    # hot tier on Redis Cluster (issue 12, tiers/hot_cluster.py): replicas each ingest call waits for
    # (WAIT) before the batch is acknowledged, 0: none; and how long it waits (ms) before a 503
    redis_wait_replicas: int = Field(0, ge=0)
    redis_wait_timeout: int = Field(1000, gt=0)
    # hot-key mitigation (tiers/hot_shards.py): every stream's keys hashed over this many shards,
    # each its own cluster slot; fixed for a deployment (changing it moves keys between shards)
    hot_stream_shards: int = Field(1, ge=1, le=64)
    # source members one hot read may union into new sliding-window unions (tiers/hot.py, Sliding
    # windows); bigger ones are read as their buckets and built by compact_hot
    hot_window_build_budget: int = Field(50_000, ge=0)
    results_cache_entries: int = Field(1024, ge=0)   # the in-process LRU in front of the shared cache
    # the results cache shared by every router (router/cache.py): Redis (empty: redis_url), how long
    # it keeps an entry (ms; 0: no shared cache) and the largest piece it stores (bytes)
    results_cache_url: str = ""
    results_cache_ttl: int = 3_600_000
    results_cache_max_bytes: int = Field(8 * 1024 * 1024, ge=0)
    # rank merged on key ids (issue 10, router/rank_pieces.py): bytes of the in-process cache of each
    # immutable piece's (key id, value) columns, keyed by data version (0: off)
    rank_piece_cache_bytes: int = Field(256 * 1024 * 1024, ge=0)
    # top-K over streams with at most this many keys (the process's loaded key dictionary) by the id
    # merge of router/rank_pieces.py, its closed pieces cached, instead of the threshold algorithm (0: off)
    topk_merge_keys: int = Field(8192, ge=0)
    # standing "last 24 h" (issue 10): each hot stream with at least this many keys (its all-time
    # leaderboard's) has its sliding-window unions kept built by compact_hot (tiers/hot_warm.py) and its
    # closed pieces read into the shared cache by the jobs (scheduler/rank_prefill.py) before anyone
    # asks; smaller streams only once asked (0: only asked ones)
    standing_min_keys: int = Field(10_000, ge=0)
    # worker warm-up (issue 10, router/warmup.py): each `tierstore serve` worker runs the read paths a
    # dashboard would (top-K, rank, series of its busiest stream) before it takes requests, waiting at
    # most this long (ms; then it serves while the rest goes on in the background; 0: off)
    warmup_ms: int = Field(10_000, ge=0)
    # trending (issue 14, router/trending.py): the relative error budget of the bucket-start weighting
    trending_max_relative_error: float = Field(0.05, gt=0.0, le=1.0)
    # alerts (issue 14, scheduler/alerts.py): evaluation period, webhook attempts, backoff (first wait and
    # largest wait) and timeout per attempt, all ms
    alerts_interval: int = Field(60_000, ge=1_000)
    # hot compaction (issue 10, scheduler/jobs.py run_compact_hot): how often closed minutes are folded, ms
    compact_hot_interval: int = Field(60_000, ge=1_000)
    alerts_webhook_attempts: int = Field(4, ge=1, le=20)
    alerts_retry_base: int = Field(500, ge=0)
    alerts_retry_max: int = Field(30_000, ge=0)
    alerts_webhook_timeout: int = Field(5_000, ge=100)
    # structured logs (tierstore/logs.py): one JSON object per line, or plain text lines; the level
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # approximate top-K (mode=approx, router/approx.py): log2 of the frequent-items sketches' map
    # size (they hold up to 0.75 * 2^lg_k keys per bucket), and the error type answered by default
    approx_sketch_lg_k: int = Field(12, ge=3, le=21)
    approx_error_type: Literal["no_false_negatives", "no_false_positives"] = "no_false_negatives"
    # ranking across tiers (issue 10): top-K by the threshold algorithm over every tier's sorted and
    # random access (router/ranking.py); false: every piece is read and merged (the older path)
    topk_threshold: bool = True
    # N routers, one scheduler leader (issue 12, scheduler/report_files.py, scheduler/runner.py): finished
    # report files live in S3 (bucket: reports_s3_bucket, empty: s3_bucket; under reports_s3_prefix;
    # an empty prefix keeps them on the building process's disk only); of several `tierstore
    # scheduler` processes the one holding the leader lock runs the jobs and the others try to take
    # it every scheduler_leader_poll ms
    reports_s3_bucket: str = ""
    reports_s3_prefix: str = "reports"
    scheduler_leader_poll: int = Field(2_000, ge=100)

    # Redis Cluster (issue 12, tierstore/wiring.py redis_client): "cluster" builds redis.cluster.RedisCluster
    # clients (redis_url names any node, database 0 only; `tierstore services up --redis cluster`)
    redis_mode: Literal["standalone", "cluster"] = "standalone"

    # Trino cluster (issue 12, tierstore/services/trino_cluster.py): 0 runs one Trino node that also
    # executes queries; N > 0 makes `tierstore services up` start a coordinator (which then executes
    # nothing) plus N workers on loopback, and wait until the coordinator sees all N active
    trino_workers: int = Field(0, ge=0, le=L.TRINO_MAX_WORKERS)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings, env_settings, _FileSource(settings_cls), dotenv_settings)

    @field_validator(*DURATION_FIELDS, mode="before")
    @classmethod
    def _durations(cls, v: Any) -> Any:
        return _duration_ms(v)

    @model_validator(mode="after")
    def _derive(self) -> "Settings":
        lay = L.InstanceLayout(home=self.home.resolve(), port_base=self.port_base)
        self.home = lay.home
        self.redis_url = self.redis_url or lay.redis_url
        self.postgres_url = self.postgres_url or lay.postgres_url
        self.trino_url = self.trino_url or lay.trino_url
        self.s3_endpoint = self.s3_endpoint or lay.s3_endpoint
        self.cold_dir = (self.cold_dir or lay.cold_dir).resolve()
        for name, schemes in (("redis_url", {"redis", "rediss", "unix"}), ("postgres_url", {"postgresql", "postgres"}),
                              ("trino_url", {"http", "https"}), ("s3_endpoint", {"http", "https"})):
            url = urlparse(getattr(self, name))
            if url.scheme not in schemes or (url.scheme != "unix" and not url.hostname):
                raise ValueError(f"TIERSTORE_{name.upper()} must be a {'/'.join(sorted(schemes))} URL with a host")
        if self.redis_mode == "cluster" and urlparse(self.redis_url).path.strip("/") not in ("", "0"):
            raise ValueError("TIERSTORE_REDIS_URL must name database 0 (or none) with TIERSTORE_REDIS_MODE=cluster")
        if not (0 < self.hot_age <= self.warm_age <= self.cold_age <= self.archive_retention):
            raise ValueError("tier ages must satisfy 0 < hot_age <= warm_age <= cold_age <= archive_retention")
        return self

    @property
    def layout(self) -> L.InstanceLayout:
        return L.InstanceLayout(home=self.home, port_base=self.port_base)


def load_settings(**overrides: Any) -> Settings:
    """Load settings; raise ConfigError with a sentence naming the bad setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            env = f"TIERSTORE_{name.upper()}" if err["loc"] else "settings"
            problems.append(f"{env}: {err['msg']}")
        raise ConfigError("Bad setting — " + "; ".join(problems)) from None
    except SettingsError as exc:  # an environment value that is not the JSON a dict/list setting needs
        field = exc.args[0].split('"')[1] if exc.args and exc.args[0].count('"') >= 2 else "settings"
        raise ConfigError(f"Bad setting — TIERSTORE_{field.upper()}: not valid JSON for this setting "
                          f"({exc.__cause__ or exc}).") from None
