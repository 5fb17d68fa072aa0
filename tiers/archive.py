"""The archive tier: the cold tier's Parquet partitions in an S3 bucket, read by the cold tier's engines.

The unit of archiving is a partition:
    day    events + rollup_1h + rollup_1d (+ the value-sorted top-K copies) of one stream and day
    week   rollup_1w (+ copies)             month  rollup_1mo (+ copies)
    pack   consecutive small days of one stream as one partition (events + rollup_1h + rollup_1d,
           rows carrying their day; tiers.archive_packs), written by the archive job
Its pieces, each in its own module:
    tiers.archive_partitions   where partitions live and how one is written whole (staged,
                               uploaded, verified, registered)
    tiers.archive_manifest     the manifest of a partition (objects, rows, sums, SHA-256, ETag)
    tiers.archive_registry     table `archive_partitions`: readers list partitions there, never by
                               listing the bucket, so a partition is visible exactly when its row
                               says `archived` (the archive job writes that row in the transaction
                               that moves b_archive)
    tiers.s3_store             the S3 objects: uploads with checksums, verification, Object Lock
    tiers.archive_engines      DuckDB and Trino reading s3://
    tiers.archive_ranked       the value-sorted copies read a row group at a time (exact top-K,
                               ranked_access for the router's threshold algorithm), as cold
`ArchiveTier` runs the cold tier's statements and whole-day rewrites (tiers.parquet_core) over
those partitions. Any failure to reach S3 is `TierUnavailable("archive")`.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa

from rollups.cover import Piece
from rollups.errors import TierUnavailable
from rollups.partials import merge_partials
from rollups.timeutil import Granularity, TimeRange
from rollups.topk import Ranked
from rollups.topk import top_k as exact_top_k
from tiers import parquet_keys, parquet_layout as PL
from tiers.archive_engines import ArchiveDuckDBEngine, ArchiveTrinoEngine, pyarrow_s3
from tiers.archive_partitions import ArchivePartitions
from tiers.archive_registry import ArchiveRegistry
from tiers.archive_ranked import S3Footers, archive_lists
from tiers.base import Group, RankedAccess, Tier
from tiers.cold_ranked import ParquetRankedAccess, keys_of_dictionary
from tiers.cold_topk import tput_top_k
from tiers.cold_engines import TRINO_TABLES, Engine
from tiers.errors import tier_call, tier_read, translate
from tiers.parquet_core import GRANULARITIES, ParquetCore
from tiers.s3_store import MULTIPART_THRESHOLD, ArchiveStore
from tiers.settings_view import SettingsView

DEFAULT_PREFIX = "archive"


class ArchiveTierSettings(SettingsView):
    """What the archive tier reads of tierstore's Settings (tiers/ does not import tierstore/).

    s3_*: the bucket and its endpoint (s3proxy locally); s3_object_lock: write with Object Lock;
    home: the instance folder (staging under home/archive-staging); cold_engine, trino_url,
    query_timeout (ms): the engine, as for cold; postgres_url: the registry's database when no
    pool is given; archive_retention (ms): how long a stream is kept unless its stream registry
    entry says otherwise (retention_ms); archive_cache_bytes: the disk cache of archived objects
    under home/cache/archive (tiers/archive_cache.py; 0: off).
    """

    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_region: str = "us-east-1"
    s3_bucket: str
    s3_object_lock: bool = False
    home: Path
    cold_engine: str = "duckdb"
    trino_url: str = ""
    query_timeout: int = 60_000
    postgres_url: str = ""
    archive_retention: int = 7 * 365 * 86_400_000
    archive_cache_bytes: int = 0


def retention_ms(settings, pool, tenant: str, stream: str) -> int:
    """How long (ms) the archive keeps a stream of a tenant: its registry entry's retention
    (PUT /v1/streams/{stream}, table stream_registry), else settings.archive_retention."""
    from tiers.stream_registry import StreamRegistry

    override = StreamRegistry(pool).retention_ms(tenant, stream)
    return int(settings.archive_retention if override is None else override)


class ArchiveTier(Tier):
    """Archived partitions in S3, read by the cold tier's engines; see the module doc.

    `pool` reaches PostgreSQL (registry); `keys` is the key dictionary (default: PostgreSQL);
    `engine` duckdb | trino (default settings.cold_engine); `prefix` the bucket folder;
    Trino tables live in schema `trino_schema` of the `hive` catalog.
    Attributes the jobs use: `registry`, `store`, `partitions` (uploads), `pool` (transactions).
    """

    name = "archive"
    capabilities = frozenset({"top_k", "data_versions", "stats"})

    def __init__(self, settings, *, pool=None, keys=None, engine: str | None = None, prefix: str = DEFAULT_PREFIX,
                 trino_schema: str = "tierstore_archive", s3_client=None,
                 multipart_threshold: int = MULTIPART_THRESHOLD) -> None:
        from tiers.cold_keys import PgKeyDictionary
        from tiers.db import make_pool
        from tiers.s3util import make_s3_client

        settings = ArchiveTierSettings.of(settings)
        self.settings = settings
        self._own_pool = pool is None
        self.pool = pool if pool is not None else make_pool(settings.postgres_url, max_size=8, name="archive")
        self.registry = ArchiveRegistry(self.pool)
        client = s3_client or make_s3_client(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
                                             settings.s3_region)
        self.store = ArchiveStore(client, settings.s3_bucket, prefix, object_lock=settings.s3_object_lock,
                                  multipart_threshold=multipart_threshold)
        self.partitions = ArchivePartitions(self.registry, self.store, Path(settings.home) / "archive-staging",
                                            lambda tenant, stream: retention_ms(settings, self.pool, tenant, stream))
        self._own_keys = keys is None
        self.keys = keys if keys is not None else PgKeyDictionary(pool=self.pool)
        self.engine_name = engine or settings.cold_engine
        self.engine: Engine
        if self.engine_name == "duckdb":
            self.engine = ArchiveDuckDBEngine(pyarrow_s3(settings, settings.query_timeout / 1000), self.store)
        elif self.engine_name == "trino":
            self.engine = ArchiveTrinoEngine(settings.trino_url, trino_schema, str(self.store.root),
                                             timeout=settings.query_timeout / 1000)
        else:
            raise ValueError(f"cold_engine must be duckdb or trino, not {self.engine_name!r}")
        self.partitions.rewrite_in_place = self.engine_name == "trino"  # Trino reads by folder: tiers.archive_rewrite
        self.core = ParquetCore(self.partitions, self.engine, self.keys)
        fs = pyarrow_s3(settings, settings.query_timeout / 1000)
        self._footers = S3Footers(fs, self.store.bucket, cache=_object_cache(settings, fs, self.store.bucket))
        self.core.row_groups = self._footers  # parquet_keys reads cached copies' row groups through it
        if self._footers.cache is not None:  # what the archive job and the import upload, kept local
            self.partitions.adopt = self._footers.cache.adopt
            if self.engine_name == "duckdb":  # its scans read cached objects from local disk
                self.partitions.local_copy = self._footers.cache.path
        self._reachable_until = 0.0
        self._write_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings, **kwargs) -> "ArchiveTier":
        return cls(settings, **kwargs)

    # ---- reads ---------------------------------------------------------------------------------

    @property
    def granularities(self) -> Sequence[Granularity]:
        return GRANULARITIES

    @tier_read
    def aggregate(self, tenant: str, stream: str, pieces: Sequence[Piece], group: Group,
                  key: str | None = None) -> pa.Table:
        self._require_s3()
        return self.core.aggregate(tenant, stream, pieces, group, key)

    @tier_read
    def aggregate_each(self, tenant: str, stream: str, pieces: Sequence[Piece],
                       key: str | None = None) -> list[pa.Table]:
        """Tier.aggregate_each: a granularity's pieces in one query (ParquetCore.aggregate_each)."""
        self._require_s3()
        return self.core.aggregate_each(tenant, stream, pieces, key)

    @tier_read
    def key_values(self, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> pa.Table:
        """Tier.key_values: key_id and the one value column of the files (tiers/parquet_keys.py)."""
        self._require_s3()
        return parquet_keys.key_values(self.core, tenant, stream, pieces, by)

    @tier_read
    def distinct_keys(self, tenant: str, stream: str, pieces: Sequence[Piece]) -> pa.Array:
        """Tier.distinct_keys: DISTINCT key_id of the files (tiers/parquet_keys.py)."""
        self._require_s3()
        return parquet_keys.distinct_keys(self.core, tenant, stream, pieces)

    def read_raw(self, tenant: str, stream: str, rng: TimeRange) -> Iterator[pa.RecordBatch]:
        self._require_s3()
        with translate(self.name):
            yield from self.core.read_raw(tenant, stream, rng)

    def top_k(self, tenant: str, stream: str, pieces: Sequence[Piece], k: int, by: str, *,
              stats: dict | None = None) -> list[Ranked]:
        """Exact top-k: by count or sum, the threshold algorithm over the partitions' value-sorted
        copies in S3 (tiers.archive_ranked, as cold); the full merge through the engine for the
        other aggregates, negative sums or flat data. `stats` gets {"method": "tput" | "merge",
        "lists": n}."""
        result, lists = None, len(pieces)
        if by in PL.MEASURES:
            self._require_s3()
            with translate(self.name, "The archive cannot be read"):
                found, complete = archive_lists(self.registry, self._footers, tenant, stream, pieces, by)
                lists = len(found)
                result = tput_top_k(found, complete, k, keys_of_dictionary(self.keys, tenant, stream))
        if stats is not None:
            stats.update(method="tput" if result is not None else "merge", lists=lists)
        if result is not None:
            return result
        return exact_top_k(merge_partials([self.aggregate(tenant, stream, pieces, "key")], "key"), k, by)

    def ranked_access(self, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> RankedAccess:
        """Sorted access to the partitions' value-sorted copies in S3 a row group (one ranged GET) at
        a time, edges (raw minutes, hours) read whole; random access through the key-sorted
        rollups' row groups chosen by key_id statistics — tiers.cold_ranked over S3."""
        if by not in PL.MEASURES:
            raise ValueError(f"by must be count or sum, not {by!r}")
        self._require_s3()
        with translate(self.name, "The archive cannot be read"):
            lists, complete = archive_lists(self.registry, self._footers, tenant, stream, pieces, by)
        return ParquetRankedAccess(
            lists, complete, keys_of_dictionary(self.keys, tenant, stream),
            lambda keys: self.keys.ids(tenant, stream, keys, create=False),
            lambda: translate(self.name, "The archive cannot be read"), parallel=True)

    @tier_read
    def streams(self, tenant: str) -> list[str]:
        return self.registry.streams(tenant)

    @tier_read
    def stats(self) -> dict[str, int]:
        """Raw events and bytes the archive holds (from the registry: no S3 listing)."""
        return self.registry.totals()

    @tier_read
    def data_version(self, tenant: str, stream: str) -> str:
        """Changes whenever a partition of the stream is registered, rewritten or retired.

        Raises TierUnavailable while S3 is down, so a results cache never answers for the
        archive when the archive itself could not (the router then reads, and fails, uncached)."""
        self._require_s3()
        return self.registry.version(tenant, stream)

    def data_versions(self, tenant: str, stream: str, pieces: Sequence[Piece]) -> list[str]:
        """The stream's data version for every piece (Tier.data_versions)."""
        return [self.data_version(tenant, stream)] * len(pieces)

    def health(self) -> None:
        try:
            self.store.health()
        except Exception as exc:  # noqa: BLE001 - any failure means unavailable
            raise TierUnavailable("archive", f"The archive bucket does not answer: {exc}") from exc
        self.engine.health()
        self._reachable_until = time.monotonic() + 2.0

    @tier_call
    def sync(self) -> None:
        """Let the engine see the partitions in S3 (Trino: its metastore; DuckDB reads the registry)."""
        self.engine.sync_partitions(TRINO_TABLES)

    def close(self) -> None:
        self.engine.close()
        if self._own_keys and hasattr(self.keys, "close"):
            self.keys.close()
        if self._own_pool:
            self.pool.close()
            self._own_pool = False

    def require_reachable(self) -> None:
        """Raise TierUnavailable("archive") when S3 does not answer (checked at most every 2 s): every
        read checks it first, so an outage answers 503 even where the disk cache could serve the
        read (readers outside this class: tiers/key_ids.py)."""
        self._require_s3()

    def _require_s3(self) -> None:
        """Fail fast (503 naming the archive) when S3 is down, even for ranges with no partitions."""
        if time.monotonic() < self._reachable_until:
            return
        self.health()

    # ---- writes: whole-partition rewrites, one at a time ---------------------------------------

    def write(self, tenant: str, events: pa.Table) -> int:
        with self._write_lock, translate(self.name):
            stored = self.core.write(tenant, events)
            self.sync()
        return stored

    def replace_days(self, tenant: str, stream: str, batch: pa.Table, *, merge: bool, progress=None) -> int:
        """Write `batch` (EVENT_SCHEMA, one stream) as whole archived day partitions (see
        ParquetCore.replace_days): merge=True adds to each day (ids already stored skipped),
        merge=False replaces the days. For `tierstore import` of events older than b_archive.
        Returns the events stored."""
        with self._write_lock, translate(self.name):
            stored = self.core.replace_days(tenant, stream, batch, merge=merge, progress=progress)
            self.sync()
        return stored

    def write_day(self, tenant: str, stream: str, day: int, events: pa.Table, *,
                  expect: PL.Totals | None = None, step=None) -> None:
        """Replace one archived day of one stream with `events` and rebuild its week and month
        (`expect` and `step` as for the cold tier). Call `sync` afterwards."""
        with self._write_lock, translate(self.name):
            self.core.write_day(tenant, stream, day, events, expect=expect, step=step)

    def remove_day(self, tenant: str, stream: str, day: int) -> None:
        with self._write_lock, translate(self.name):
            self.core.remove_day(tenant, stream, day)

    def delete_range(self, tenant: str | None, stream: str | None, rng: TimeRange) -> int:
        with self._write_lock, translate(self.name):
            deleted = self.core.delete_range(tenant, stream, rng)
            self.sync()
        return deleted


__all__ = ["ArchiveTier", "retention_ms"]


def _object_cache(settings, fs, bucket: str):
    """The disk cache of archived objects (tiers/archive_cache.py) under <home>/cache/archive, or
    None with archive_cache_bytes 0. An object is cached up to an eighth of it (at most 256 MiB)."""
    from pathlib import Path

    from tiers.archive_cache import ObjectCache

    size = settings.archive_cache_bytes
    if size <= 0:
        return None

    def fetch(key: str) -> bytes:
        with fs.open_input_file(f"{bucket}/{key}") as f:
            return f.readall()

    return ObjectCache(Path(settings.home) / "cache" / "archive", size, min(size // 8, 256 << 20), fetch)
