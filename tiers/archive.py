"""The archive tier: the cold tier's Parquet layout (tiers.parquet_layout) in an S3 bucket.

Objects live under `s3://<settings.s3_bucket>/<prefix>/` with exactly the cold tier's relative
paths, so a partition moves from disk to S3 unchanged. The unit of archiving is a partition:
    day    events + rollup_1h + rollup_1d (+ the value-sorted top-K copies) of one stream and day
    week   rollup_1w (+ copies)             month  rollup_1mo (+ copies)
Each partition has a manifest (JSON: object keys, rows, count/sum/min/max, size, SHA-256 and
ETag of every object) uploaded to `<prefix>/_manifests/...` and kept in PostgreSQL
(`archive_partitions`, sql/migrations/common/0050). Readers list partitions there, never by
listing the bucket, so a partition is visible exactly when its row says `archived` — the archive
job writes that row in the transaction that moves b_archive.

Uploads send Content-MD5 (s3proxy checks it) and x-amz-checksum-sha256 (S3 checks it), large files
go multipart (a Content-MD5 per part); every object is then verified with HEAD: size, ETag (the
server's MD5, or MD5-of-part-MD5s for multipart), the SHA-256 we stored in its metadata and, where
the server keeps one, its SHA-256 checksum. With settings.s3_object_lock and a bucket that has
Object Lock enabled, objects are written in COMPLIANCE mode until their partition's retention ends.

`ArchiveTier` is a `ColdTier` whose layout is the registry plus s3:// paths: the same statements run
on the same engines — DuckDB reads the objects through pyarrow's S3 file system (registered in
DuckDB as an fsspec file system: DuckDB's httpfs extension cannot be installed here), Trino through
its native S3 file system (Hive tables in their own schema located at s3://...). Any failure to
reach S3 is `TierUnavailable("archive")`.
"""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import urlparse

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from psycopg.types.json import Jsonb

from rollups.cover import Piece
from rollups.errors import TierUnavailable
from rollups.partials import merge_partials
from rollups.timeutil import DAY_MS, G1D, G1MO, G1W, Granularity, TimeRange, format_time
from rollups.topk import Ranked
from rollups.topk import top_k as exact_top_k
from tiers import parquet_layout as PL
from tiers.base import EVENT_SCHEMA, Group
from tiers.cold import GRANULARITIES, ColdTier
from tiers.cold_engines import TRINO_TABLES, DuckDBEngine, TrinoEngine

DEFAULT_PREFIX = "archive"
MANIFEST_DIR = "_manifests"
MULTIPART_THRESHOLD = 16 * 1024 * 1024
MULTIPART_PART_SIZE = 8 * 1024 * 1024
PERIODS = {"day": G1D, "week": G1W, "month": G1MO}
PERIOD_OF = {G1D.name: "day", G1W.name: "week", G1MO.name: "month"}


class ArchiveVerifyFailed(RuntimeError):
    """An uploaded object is not what was sent (size, ETag or checksum differ)."""


def retention_ms(settings, stream: str) -> int:
    """How long the archive keeps a stream: settings.retention_overrides, else archive_retention."""
    return int(settings.retention_overrides.get(stream, settings.archive_retention))


# ---- paths ---------------------------------------------------------------------------------------

class S3Path(PurePosixPath):
    """A POSIX path `/<bucket>/<key>` that prints as `s3://<bucket>/<key>` (the layout's `/` works)."""

    def __str__(self) -> str:
        return "s3:/" + super().__str__()

    @property
    def bucket(self) -> str:
        return self.parts[1]

    @property
    def key(self) -> str:
        return "/".join(self.parts[2:])


def period_files(layout: PL.Layout, tenant: str, stream: str, period: str, start: int) -> list[tuple[str, Any]]:
    """(table, path) of every file of one partition in `layout`."""
    if period == "day":
        return [("events", layout.raw_file(tenant, stream, start)),
                ("rollup_1h", layout.rollup_file(tenant, stream, PL.G1H, start)),
                ("rollup_1d", layout.rollup_file(tenant, stream, G1D, start)),
                *((PL.topk_table(by, G1D), layout.topk_file(tenant, stream, by, G1D, start)) for by in PL.MEASURES)]
    gran = PERIODS[period]
    return [(PL.TABLE_OF[gran.name], layout.rollup_file(tenant, stream, gran, start)),
            *((PL.topk_table(by, gran), layout.topk_file(tenant, stream, by, gran, start)) for by in PL.MEASURES)]


def period_end(period: str, start: int) -> int:
    return PERIODS[period].next(start)


# ---- manifests -----------------------------------------------------------------------------------

@dataclass
class Manifest:
    tenant: str
    stream: str
    period: str
    start: int
    objects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def end(self) -> int:
        return period_end(self.period, self.start)

    @property
    def name(self) -> str:
        return PL.period_name(PERIODS[self.period], self.start)

    def totals(self) -> tuple[int, int, float]:
        """(raw rows, event count, value sum) of the partition, from its main table."""
        main = "events" if self.period == "day" else PL.TABLE_OF[PERIODS[self.period].name]
        for o in self.objects:
            if o["table"] == main:
                return (o["rows"] if self.period == "day" else 0), o["count"], o["sum"]
        return 0, 0, 0.0

    def object(self, table: str) -> dict[str, Any] | None:
        return next((o for o in self.objects if o["table"] == table), None)

    def to_dict(self) -> dict[str, Any]:
        rows, count, total = self.totals()
        return {"version": 1, "tenant": self.tenant, "stream": self.stream, "period": self.period,
                "partition": self.name, "start_ms": self.start, "end_ms": self.end,
                "start": format_time(self.start), "end": format_time(self.end),
                "raw_rows": rows, "event_count": count, "value_sum": total, "objects": self.objects}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        return cls(d["tenant"], d["stream"], d["period"], int(d["start_ms"]), list(d["objects"]))


# ---- the registry in PostgreSQL -----------------------------------------------------------------

class ArchiveRegistry:
    """`archive_partitions`: what the archive holds (status archived) and what it held."""

    def __init__(self, pool) -> None:
        self.pool = pool

    def starts(self, tenant: str, stream: str, period: str, status: str = "archived") -> list[int]:
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT start_ms FROM archive_partitions WHERE tenant = %s AND stream = %s "
                                "AND period = %s AND status = %s ORDER BY start_ms",
                                (tenant, stream, period, status)).fetchall()
        return [r[0] for r in rows]

    def manifest(self, tenant: str, stream: str, period: str, start: int,
                 status: str | None = "archived") -> Manifest | None:
        sql = ("SELECT manifest FROM archive_partitions WHERE tenant = %s AND stream = %s AND period = %s "
               "AND start_ms = %s")
        params: list[Any] = [tenant, stream, period, start]
        if status is not None:
            sql += " AND status = %s"
            params.append(status)
        with self.pool.connection() as conn:
            row = conn.execute(sql, params).fetchone()
        return Manifest.from_dict(row[0]) if row else None

    def manifests(self, tenant: str, stream: str, period: str, rng: TimeRange) -> list[Manifest]:
        """Archived partitions of a stream overlapping rng, oldest first."""
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT manifest FROM archive_partitions WHERE tenant = %s AND stream = %s "
                                "AND period = %s AND status = 'archived' AND start_ms < %s AND end_ms > %s "
                                "ORDER BY start_ms", (tenant, stream, period, rng.end, rng.start)).fetchall()
        return [Manifest.from_dict(r[0]) for r in rows]

    def tenants_streams(self, tenant: str | None = None, stream: str | None = None) -> list[tuple[str, str]]:
        sql, params = "SELECT DISTINCT tenant, stream FROM archive_partitions WHERE status = 'archived'", []
        if tenant is not None:
            sql += " AND tenant = %s"
            params.append(tenant)
        if stream is not None:
            sql += " AND stream = %s"
            params.append(stream)
        with self.pool.connection() as conn:
            return [tuple(r) for r in conn.execute(sql + " ORDER BY 1, 2", params).fetchall()]

    def streams(self, tenant: str) -> list[str]:
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT DISTINCT stream FROM archive_partitions WHERE tenant = %s "
                                "AND period = 'day' AND status = 'archived' ORDER BY stream", (tenant,)).fetchall()
        return [r[0] for r in rows]

    def totals(self) -> dict[str, int]:
        with self.pool.connection() as conn:
            rows, size = conn.execute(
                "SELECT coalesce(sum(raw_rows), 0), coalesce(sum((SELECT sum((o ->> 'size')::bigint) "
                "FROM jsonb_array_elements(manifest -> 'objects') AS o)), 0) "
                "FROM archive_partitions WHERE status = 'archived'").fetchone()
        return {"rows": int(rows), "bytes": int(size)}

    def version(self, tenant: str, stream: str) -> str:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT count(*) FILTER (WHERE status = 'archived'), count(*), "
                               "max(archived_at), max(deleted_at) FROM archive_partitions "
                               "WHERE tenant = %s AND stream = %s", (tenant, stream)).fetchone()
        return "/".join(str(v) for v in row)

    @staticmethod
    def register(conn: psycopg.Connection, manifest: Manifest, manifest_key: str, manifest_sha256: str) -> None:
        """Record a partition as archived inside the caller's transaction (replacing an older row)."""
        rows, count, total = manifest.totals()
        conn.execute(
            "INSERT INTO archive_partitions (tenant, stream, period, start_ms, end_ms, status, raw_rows, event_count, "
            "value_sum, manifest_key, manifest_sha256, manifest) VALUES (%s, %s, %s, %s, %s, 'archived', %s, %s, %s, "
            "%s, %s, %s) ON CONFLICT (tenant, stream, period, start_ms) DO UPDATE SET status = 'archived', "
            "raw_rows = EXCLUDED.raw_rows, event_count = EXCLUDED.event_count, value_sum = EXCLUDED.value_sum, "
            "manifest_key = EXCLUDED.manifest_key, manifest_sha256 = EXCLUDED.manifest_sha256, "
            "manifest = EXCLUDED.manifest, archived_at = now(), deleted_at = NULL",
            (manifest.tenant, manifest.stream, manifest.period, manifest.start, manifest.end, rows, count, total,
             manifest_key, manifest_sha256, Jsonb(manifest.to_dict())))

    @staticmethod
    def forget(conn: psycopg.Connection, tenant: str, stream: str, period: str, start: int) -> None:
        """Drop a partition's row (a rewrite that left it empty; not retention, which keeps the row)."""
        conn.execute("DELETE FROM archive_partitions WHERE tenant = %s AND stream = %s AND period = %s "
                     "AND start_ms = %s", (tenant, stream, period, start))


# ---- S3 objects ---------------------------------------------------------------------------------

def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


class ArchiveStore:
    """Uploads, verifies, reads and deletes the archive's objects (boto3, tiers.s3util)."""

    def __init__(self, client, bucket: str, prefix: str, *, object_lock: bool = False,
                 multipart_threshold: int = MULTIPART_THRESHOLD, part_size: int = MULTIPART_PART_SIZE) -> None:
        self.s3 = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self._lock_wanted = object_lock
        self._lock_enabled: bool | None = None

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}"

    def manifest_key(self, m: Manifest) -> str:
        column = PL.partition_column(PERIODS[m.period])
        return self.key(f"{MANIFEST_DIR}/tenant={PL.escape(m.tenant)}/stream={PL.escape(m.stream)}/"
                        f"{column}={m.name}.json")

    # ---- object lock ---------------------------------------------------------------------------

    def object_lock_enabled(self) -> bool:
        """True when settings ask for Object Lock and the bucket has it enabled (asked once)."""
        if not self._lock_wanted:
            return False
        if self._lock_enabled is None:
            try:
                conf = self.s3.get_object_lock_configuration(Bucket=self.bucket)
                self._lock_enabled = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
            except self.s3.exceptions.ClientError:
                self._lock_enabled = False
        return self._lock_enabled

    def _lock_args(self, retain_until: int | None) -> dict[str, Any]:
        if retain_until is None or not self.object_lock_enabled():
            return {}
        until = datetime.fromtimestamp(retain_until / 1000, tz=timezone.utc)
        return {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": until}

    # ---- upload and verify ---------------------------------------------------------------------

    def put_file(self, path: Path, key: str, *, retain_until: int | None = None) -> dict[str, Any]:
        """Upload a local file; returns {key, size, sha256, etag} (etag as S3 computes it)."""
        size = path.stat().st_size
        if size <= self.multipart_threshold:
            data = path.read_bytes()
            return self.put_bytes(data, key, retain_until=retain_until)
        return self._put_multipart(path, key, size, retain_until)

    def put_bytes(self, data: bytes, key: str, *, retain_until: int | None = None,
                  content_type: str = "application/octet-stream") -> dict[str, Any]:
        sha = hashlib.sha256(data)
        md5 = hashlib.md5(data)
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentMD5=_b64(md5.digest()),
                           ChecksumSHA256=_b64(sha.digest()), Metadata={"sha256": sha.hexdigest()},
                           ContentType=content_type, **self._lock_args(retain_until))
        return {"key": key, "size": len(data), "sha256": sha.hexdigest(), "etag": md5.hexdigest()}

    def _put_multipart(self, path: Path, key: str, size: int, retain_until: int | None) -> dict[str, Any]:
        sha = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha.update(chunk)
        upload = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key, Metadata={"sha256": sha.hexdigest()},
                                                 **self._lock_args(retain_until))
        parts, digests = [], []
        try:
            with path.open("rb") as f:
                for number, chunk in enumerate(iter(lambda: f.read(self.part_size), b""), start=1):
                    md5 = hashlib.md5(chunk).digest()
                    r = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"],
                                            PartNumber=number, Body=chunk, ContentMD5=_b64(md5))
                    parts.append({"PartNumber": number, "ETag": r["ETag"]})
                    digests.append(md5)
            self.s3.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"],
                                              MultipartUpload={"Parts": parts})
        except BaseException:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])
            raise
        etag = f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"
        return {"key": key, "size": size, "sha256": sha.hexdigest(), "etag": etag}

    def verify(self, obj: dict[str, Any]) -> None:
        """HEAD the object: size, ETag, stored SHA-256 (and the server's checksum if it keeps one)."""
        head = self.s3.head_object(Bucket=self.bucket, Key=obj["key"], ChecksumMode="ENABLED")
        problems = []
        if head["ContentLength"] != obj["size"]:
            problems.append(f"size {head['ContentLength']} != {obj['size']}")
        if head.get("ETag", "").strip('"') != obj["etag"]:
            problems.append(f"ETag {head.get('ETag')} != {obj['etag']}")
        if head.get("Metadata", {}).get("sha256") != obj["sha256"]:
            problems.append("stored sha256 differs")
        server_sha = head.get("ChecksumSHA256")
        if server_sha and "-" not in server_sha and server_sha != _b64(bytes.fromhex(obj["sha256"])):
            problems.append("server checksum differs")
        if problems:
            raise ArchiveVerifyFailed(f"s3://{self.bucket}/{obj['key']}: " + "; ".join(problems))

    def get_bytes(self, key: str, sha256: str | None = None) -> bytes:
        """An object's bytes; with `sha256`, checked against it."""
        data = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ArchiveVerifyFailed(f"s3://{self.bucket}/{key}: content does not match its manifest's SHA-256")
        return data

    def delete(self, keys: Iterable[str]) -> int:
        keys = list(keys)
        for i in range(0, len(keys), 1000):
            batch = keys[i:i + 1000]
            r = self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch],
                                                                   "Quiet": True})
            if r.get("Errors"):
                e = r["Errors"][0]
                raise OSError(f"S3 refused to delete {e.get('Key')}: {e.get('Code')} {e.get('Message')}")
        return len(keys)

    def exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
            return True
        except self.s3.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def health(self) -> None:
        self.s3.head_bucket(Bucket=self.bucket)


# ---- engines over S3 ----------------------------------------------------------------------------

def pyarrow_s3(settings, timeout_s: float = 10.0):
    """pyarrow's S3 file system for the settings' endpoint (path-style, few retries: fail fast)."""
    import pyarrow.fs as pafs

    url = urlparse(settings.s3_endpoint)
    return pafs.S3FileSystem(access_key=settings.s3_access_key, secret_key=settings.s3_secret_key,
                             endpoint_override=url.netloc, scheme=url.scheme, region=settings.s3_region,
                             force_virtual_addressing=False, connect_timeout=3, request_timeout=timeout_s,
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2))


def _fsspec_s3(pa_fs):
    from fsspec.implementations.arrow import ArrowFSWrapper

    class S3ViaArrow(ArrowFSWrapper):
        protocol = "s3"

    return S3ViaArrow(pa_fs)


class ArchiveDuckDBEngine(DuckDBEngine):
    """DuckDB reading s3:// paths through a registered fsspec wrapper of pyarrow's S3 file system."""

    def __init__(self, pa_fs, store: ArchiveStore) -> None:
        super().__init__(Path("."))
        self._conn.register_filesystem(_fsspec_s3(pa_fs))
        self._store = store

    def query(self, sql, params):
        try:
            return self._cursor().sql(sql, params=list(params)).to_arrow_table()
        except OSError as exc:
            raise TierUnavailable("archive", f"The archive (S3) cannot be read: {exc}") from exc
        except self._duckdb.Error as exc:
            # I/O failures inside the registered file system arrive as the base duckdb.Error
            if type(exc) in (self._duckdb.Error, self._duckdb.IOException, self._duckdb.HTTPException):
                raise TierUnavailable("archive", f"The archive (S3) cannot be read: {_first_line(exc)}") from exc
            raise

    def health(self):
        try:
            self._store.health()
        except Exception as exc:  # noqa: BLE001 - any failure means unavailable
            raise TierUnavailable("archive", f"The archive bucket does not answer: {exc}") from exc


class ArchiveTrinoEngine(TrinoEngine):
    """The cold tier's Trino engine with tables located at s3://bucket/prefix."""

    def __init__(self, url: str, schema: str, location: str, timeout: float = 60.0) -> None:
        super().__init__(url, schema, "local:///", timeout=timeout)
        parsed = urlparse(location)
        if parsed.scheme != "s3" or not parsed.netloc or any(c in location for c in "'\"; \\"):
            raise ValueError(f"not a safe S3 location: {location!r}")
        self.location = location.rstrip("/")

    def _execute(self, sql, params=None):
        try:
            return super()._execute(sql, params)
        except TierUnavailable as exc:
            raise TierUnavailable("archive", f"The archive cannot be queried: {exc.message}") from exc
        except self._trino.exceptions.TrinoUserError as exc:
            if getattr(exc, "error_name", "") in ("HIVE_CANNOT_OPEN_SPLIT", "HIVE_FILESYSTEM_ERROR",
                                                  "HIVE_METASTORE_ERROR", "GENERIC_INTERNAL_ERROR"):
                raise TierUnavailable("archive", f"The archive cannot be read: {exc.message}") from exc
            raise


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


# ---- the tier -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArchiveLayout(PL.Layout):
    """The cold layout rooted at s3://bucket/prefix whose partition lists come from the registry."""

    registry: ArchiveRegistry = None  # type: ignore[assignment]

    def days(self, tenant: str, stream: str, table: str = "events") -> list[int]:
        return self.registry.starts(tenant, stream, "day")

    def periods(self, tenant: str, stream: str, gran: Granularity) -> list[int]:
        return self.registry.starts(tenant, stream, PERIOD_OF[gran.name])

    def tenants_streams(self):
        raise NotImplementedError("the archive lists streams from its registry")


class ArchiveTier(ColdTier):
    """Archived partitions in S3, read by the cold tier's engines; see the module doc.

    `pool` reaches PostgreSQL (registry); `keys` is the key dictionary (default: PostgreSQL);
    `engine` duckdb | trino (default settings.cold_engine); `prefix` the bucket folder;
    Trino tables live in schema `trino_schema` of the `hive` catalog.
    """

    name = "archive"

    def __init__(self, settings, *, pool=None, keys=None, engine: str | None = None, prefix: str = DEFAULT_PREFIX,
                 trino_schema: str = "tierstore_archive", s3_client=None,
                 multipart_threshold: int = MULTIPART_THRESHOLD) -> None:
        from tiers.cold_keys import PgKeyDictionary
        from tiers.db import make_pool
        from tiers.s3util import make_s3_client

        self.settings = settings
        self._own_pool = pool is None
        self.pool = pool if pool is not None else make_pool(settings.postgres_url, max_size=8, name="archive")
        self.registry = ArchiveRegistry(self.pool)
        client = s3_client or make_s3_client(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
                                             settings.s3_region)
        self.store = ArchiveStore(client, settings.s3_bucket, prefix, object_lock=settings.s3_object_lock,
                                  multipart_threshold=multipart_threshold)
        self.root = S3Path(f"/{settings.s3_bucket}/{self.store.prefix}")
        self.layout = ArchiveLayout(self.root, self.registry)
        self._own_keys = keys is None
        self.keys = keys if keys is not None else PgKeyDictionary(pool=self.pool)
        self.engine_name = engine or settings.cold_engine
        if self.engine_name == "duckdb":
            self.engine = ArchiveDuckDBEngine(pyarrow_s3(settings, settings.query_timeout / 1000), self.store)
        elif self.engine_name == "trino":
            self.engine = ArchiveTrinoEngine(settings.trino_url, trino_schema, str(self.root),
                                             timeout=settings.query_timeout / 1000)
        else:
            raise ValueError(f"cold_engine must be duckdb or trino, not {self.engine_name!r}")
        self._staging = Path(settings.home) / "archive-staging"
        self._reachable_until = 0.0
        self._write_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings, **kwargs) -> "ArchiveTier":
        return cls(settings, **kwargs)

    # ---- reads ---------------------------------------------------------------------------------

    @property
    def granularities(self) -> Sequence[Granularity]:
        return GRANULARITIES

    def aggregate(self, tenant: str, stream: str, pieces: Sequence[Piece], group: Group,
                  key: str | None = None) -> pa.Table:
        self._require_s3()
        with self._translate():
            return super().aggregate(tenant, stream, pieces, group, key)

    def read_raw(self, tenant: str, stream: str, rng: TimeRange) -> Iterator[pa.RecordBatch]:
        self._require_s3()
        with self._translate():
            yield from super().read_raw(tenant, stream, rng)

    def top_k(self, tenant: str, stream: str, pieces: Sequence[Piece], k: int, by: str,
              stats: dict | None = None) -> list[Ranked]:
        """Exact top-k by the full merge through the engine (archive ranges are rarely hot paths)."""
        if stats is not None:
            stats.update(method="merge", segments=len(pieces))
        return exact_top_k(merge_partials([self.aggregate(tenant, stream, pieces, "key")], "key"), k, by)

    def streams(self, tenant: str) -> list[str]:
        with self._translate():
            return self.registry.streams(tenant)

    def stats(self) -> dict[str, int]:
        """Raw events and bytes the archive holds (from the registry: no S3 listing)."""
        with self._translate():
            return self.registry.totals()

    def data_version(self, tenant: str, stream: str) -> str:
        """Changes whenever a partition of the stream is registered, rewritten or retired.

        Raises TierUnavailable while S3 is down, so a results cache never answers for the
        archive when the archive itself could not (the router then reads, and fails, uncached)."""
        self._require_s3()
        with self._translate():
            return self.registry.version(tenant, stream)

    def _tenant_streams(self, tenant: str | None, stream: str | None) -> list[tuple[str, str]]:
        return self.registry.tenants_streams(tenant, stream)

    def health(self) -> None:
        try:
            self.store.health()
        except Exception as exc:  # noqa: BLE001 - any failure means unavailable
            raise TierUnavailable("archive", f"The archive bucket does not answer: {exc}") from exc
        self.engine.health()
        self._reachable_until = time.monotonic() + 2.0

    def sync(self) -> None:
        """Let the engine see the partitions in S3 (Trino: its metastore; DuckDB reads the registry)."""
        with self._translate():
            self.engine.sync_partitions(TRINO_TABLES)

    def close(self) -> None:
        self.engine.close()
        if self._own_keys and hasattr(self.keys, "close"):
            self.keys.close()
        if self._own_pool:
            self.pool.close()
            self._own_pool = False

    def _require_s3(self) -> None:
        """Fail fast (503 naming the archive) when S3 is down, even for ranges with no partitions."""
        if time.monotonic() < self._reachable_until:
            return
        self.health()

    def _translate(self):
        return _Translate()

    # ---- archiving partitions (the archive job and writes share these) --------------------------

    def retain_until(self, stream: str, end: int) -> int:
        return end + retention_ms(self.settings, stream)

    def upload_partition(self, source: PL.Layout, tenant: str, stream: str, period: str, start: int,
                         on_uploaded: Callable[[], None] | None = None) -> Manifest | None:
        """Upload one partition's files from a local layout and verify them; return its manifest.

        The manifest (not yet registered: see `register`) is uploaded and verified too. Returns
        None when the source holds no file of the partition.
        """
        files = [(t, Path(p)) for t, p in period_files(source, tenant, stream, period, start) if Path(p).exists()]
        if not files:
            return None
        m = Manifest(tenant, stream, period, start)
        until = self.retain_until(stream, m.end)
        for table, path in files:
            totals = PL.read_totals(path) or PL.totals_of(pq.read_table(path))
            rel = Path(path).relative_to(source.root).as_posix()
            obj = self.store.put_file(path, self.store.key(rel), retain_until=until)
            obj.update(table=table, rows=totals.rows, count=totals.count, sum=totals.sum, min=totals.min,
                       max=totals.max)
            m.objects.append(obj)
        _check_consistent(m)
        if on_uploaded is not None:
            on_uploaded()
        return m

    def put_manifest(self, m: Manifest) -> tuple[str, str]:
        """Upload the manifest object; returns (key, sha256)."""
        obj = self.store.put_bytes(m.to_bytes(), self.store.manifest_key(m), content_type="application/json",
                                   retain_until=self.retain_until(m.stream, m.end))
        return obj["key"], obj["sha256"]

    def verify_partition(self, m: Manifest, manifest_obj: tuple[str, str]) -> None:
        for obj in m.objects:
            self.store.verify(obj)
        data = self.store.get_bytes(manifest_obj[0], manifest_obj[1])
        if json.loads(data) != m.to_dict():
            raise ArchiveVerifyFailed(f"manifest {manifest_obj[0]} does not read back as written")

    def register(self, conn: psycopg.Connection, m: Manifest, manifest_obj: tuple[str, str]) -> None:
        self.registry.register(conn, m, *manifest_obj)

    def build_period(self, tenant: str, stream: str, gran: Granularity, start: int,
                     daily: Callable[[int], Path | bytes | None], staging: Path) -> PL.Layout | None:
        """Build a week/month rollup in `staging` from its days' daily rollups.

        `daily(day_start)` gives a day's rollup_1d file (a local path or the object's bytes) or None.
        Returns the staging layout holding the period's files, or None when no day has data.
        """
        layout = PL.Layout(staging)
        found = False
        for day in PL.period_days(gran, start):
            src = daily(day)
            if src is None:
                continue
            dst = Path(layout.rollup_file(tenant, stream, G1D, day))
            dst.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, bytes):
                dst.write_bytes(src)
            else:
                shutil.copyfile(src, dst)
            found = True
        if not found:
            return None
        PL.write_period(layout, tenant, stream, gran, start)
        return layout

    def archived_daily(self, tenant: str, stream: str, day: int) -> bytes | None:
        """The archived rollup_1d of a day (checked against its manifest), or None."""
        m = self.registry.manifest(tenant, stream, "day", day)
        obj = m.object("rollup_1d") if m else None
        return self.store.get_bytes(obj["key"], obj["sha256"]) if obj else None

    def delete_objects(self, m: Manifest, manifest_key: str | None = None) -> int:
        keys = [o["key"] for o in m.objects] + ([manifest_key] if manifest_key else [self.store.manifest_key(m)])
        return self.store.delete(keys)

    def staging_dir(self) -> tempfile.TemporaryDirectory:
        self._staging.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(dir=self._staging, prefix="stage-")

    def read_day_raw(self, m: Manifest) -> tuple[pa.Table, dict[str, Any]]:
        """A day partition's raw events (RAW_SCHEMA) read from S3 and checked against the manifest."""
        obj = m.object("events")
        if obj is None:
            return PL.RAW_SCHEMA.empty_table(), {}
        data = self.store.get_bytes(obj["key"], obj["sha256"])
        return pq.read_table(pa.BufferReader(data)), obj

    # ---- the Tier contract's writes (whole-partition rewrites) ---------------------------------

    def write(self, tenant: str, events: pa.Table) -> int:
        events = events.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)
        stored = 0
        with self._write_lock, self._translate():
            for stream in pc.unique(events["stream"]).to_pylist():
                batch = events.filter(pc.equal(events["stream"], stream))
                stored += self._merge_days(tenant, stream, batch)
            self.sync()
        return stored

    def replace_days(self, tenant: str, stream: str, batch: pa.Table, *, merge: bool, progress=None) -> int:
        """Write `batch` (EVENT_SCHEMA, one stream) as whole archived day partitions (see ColdTier):
        merge=True adds to each day (ids already stored skipped), merge=False replaces the days.
        For `tierstore import` of events older than b_archive. Returns the events stored."""
        with self._write_lock, self._translate():
            stored = self._merge_days(tenant, stream, batch, merge=merge, progress=progress)
            self.sync()
        return stored

    def write_day(self, tenant: str, stream: str, day: int, events: pa.Table, *, expect=None, step=None) -> None:
        """Replace one archived day of one stream with `events` and rebuild its week and month."""
        with self._write_lock, self._translate():
            ids = self.keys.ids(tenant, stream, events["key"].to_pylist())
            self._replace_day(tenant, stream, day, PL.raw_table(events["ts"], ids, events["key"], events["value"],
                                                                 events["id"]))
            self._rebuild_periods(tenant, stream, [day])

    def remove_day(self, tenant: str, stream: str, day: int) -> None:
        with self._write_lock, self._translate():
            self._replace_day(tenant, stream, day, PL.RAW_SCHEMA.empty_table())
            self._rebuild_periods(tenant, stream, [day])

    def _merge_days(self, tenant: str, stream: str, batch: pa.Table, *, merge: bool = True, progress=None) -> int:
        ids = self.keys.ids(tenant, stream, batch["key"].to_pylist())
        days = pa.array(_floor_days(batch["ts"]))
        stored, touched = 0, []
        for day in sorted(pc.unique(days).to_pylist()):
            mask = pc.equal(days, day)
            rows = batch.filter(mask)
            raw = PL.raw_table(rows["ts"], ids[pc.indices_nonzero(mask).to_numpy()], rows["key"], rows["value"],
                               rows["id"])
            m = self.registry.manifest(tenant, stream, "day", day) if merge else None
            if m is not None:
                old, _ = self.read_day_raw(m)
                known = old["id"].drop_null()
                if len(known):
                    raw = raw.filter(pc.or_(pc.is_null(raw["id"]), pc.invert(pc.is_in(raw["id"], value_set=known))))
                stored += raw.num_rows
                raw = pa.concat_tables([old, raw.cast(PL.RAW_SCHEMA)])
            else:
                stored += raw.num_rows
            self._replace_day(tenant, stream, day, raw)
            touched.append(day)
            if progress is not None:
                progress(rows.num_rows)
        self._rebuild_periods(tenant, stream, touched)
        return stored

    def _replace_day(self, tenant: str, stream: str, day: int, raw: pa.Table) -> None:
        """Write a day's partition (empty: remove it) through staging, upload, verify, register."""
        old = self.registry.manifest(tenant, stream, "day", day)
        if raw.num_rows == 0:
            if old is not None:
                with self.pool.connection() as conn:
                    self.registry.forget(conn, tenant, stream, "day", day)
                self.delete_objects(old)
            return
        with self.staging_dir() as tmp:
            layout = PL.Layout(Path(tmp))
            PL.write_day(layout, tenant, stream, day, raw)
            self._publish(layout, tenant, stream, "day", day)

    def _publish(self, layout: PL.Layout, tenant: str, stream: str, period: str, start: int) -> Manifest | None:
        m = self.upload_partition(layout, tenant, stream, period, start)
        if m is None:
            return None
        mobj = self.put_manifest(m)
        self.verify_partition(m, mobj)
        with self.pool.connection() as conn:
            self.register(conn, m, mobj)
        return m

    def _rebuild_periods(self, tenant: str, stream: str, days: Sequence[int]) -> None:
        for gran, start in sorted({(g, g.floor(d)) for d in days for g in PL.PERIOD_GRANULARITIES},
                                  key=lambda p: (p[0].name, p[1])):
            self.rebuild_period(tenant, stream, gran, start)

    def rebuild_period(self, tenant: str, stream: str, gran: Granularity, start: int) -> Manifest | None:
        """Rebuild a week/month from the archived daily rollups (removed when none is left)."""
        period = PERIOD_OF[gran.name]
        with self.staging_dir() as tmp:
            layout = self.build_period(tenant, stream, gran, start,
                                       lambda d: self.archived_daily(tenant, stream, d), Path(tmp))
            if layout is not None:
                return self._publish(layout, tenant, stream, period, start)
        old = self.registry.manifest(tenant, stream, period, start)
        if old is not None:
            with self.pool.connection() as conn:
                self.registry.forget(conn, tenant, stream, period, start)
            self.delete_objects(old)
        return None

    def delete_range(self, tenant: str | None, stream: str | None, rng: TimeRange) -> int:
        deleted = 0
        with self._write_lock, self._translate():
            for t, s in self.registry.tenants_streams(tenant, stream):
                touched = []
                for m in self.registry.manifests(t, s, "day", rng):
                    old, _ = self.read_day_raw(m)
                    inside = pc.and_(pc.greater_equal(old["ts"], rng.start), pc.less(old["ts"], rng.end))
                    n = int(pc.sum(inside).as_py() or 0)
                    if n:
                        self._replace_day(t, s, m.start, old.filter(pc.invert(inside)))
                        deleted += n
                        touched.append(m.start)
                if touched:
                    self._rebuild_periods(t, s, touched)
            self.sync()
        return deleted


def _floor_days(ts) -> np.ndarray:
    a = np.asarray(ts.to_numpy(), dtype=np.int64)
    return a - np.mod(a, DAY_MS)


def _check_consistent(m: Manifest) -> None:
    """The raw events and every rollup of a partition hold the same event count and value sum."""
    measured = [o for o in m.objects if o["table"] in ("events", "rollup_1h", "rollup_1d", "rollup_1w", "rollup_1mo")]
    if not measured:
        return
    ref = measured[0]
    for o in measured[1:]:
        if o["count"] != ref["count"] or not PL.close(o["sum"], ref["sum"]):
            raise ArchiveVerifyFailed(f"{m.tenant}/{m.stream} {m.period} {m.name}: {o['table']} holds "
                                      f"count {o['count']} sum {o['sum']}, {ref['table']} {ref['count']} {ref['sum']}")


class _Translate:
    """Driver errors of S3 (botocore) and PostgreSQL become TierUnavailable("archive")."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, TierUnavailable):
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, (BotoCoreError, psycopg.Error, OSError)) or (
                isinstance(exc, ClientError) and _server_side(exc)):
            raise TierUnavailable("archive", f"The archive is unavailable: {exc}") from exc
        return False


def _server_side(exc) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status >= 500 or status == 0


__all__ = ["ArchiveTier", "ArchiveStore", "ArchiveRegistry", "Manifest", "ArchiveVerifyFailed", "S3Path",
           "period_files", "retention_ms"]
