"""The cold tier's engines reading the archive's objects over s3://.

DuckDB reads them through pyarrow's S3 file system, registered in DuckDB as an fsspec file system
(DuckDB's httpfs extension cannot be installed here); Trino through its native S3 file system
(Hive tables in their own schema located at s3://...). Failures to reach S3 are
TierUnavailable("archive").
"""
from __future__ import annotations

import threading

from pathlib import Path
from urllib.parse import urlparse

from rollups.errors import TierUnavailable
from tiers.cold_engines import DuckDBEngine, TrinoEngine
from tiers.s3_store import ArchiveStore


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


READ_ATTEMPTS = 3  # one query's reads tried again after a short or undecodable read (query's doc)
_READS = threading.Lock()  # ArchiveDuckDBEngine.query: one DuckDB read through the Python file system at a time


class ArchiveDuckDBEngine(DuckDBEngine):
    """DuckDB reading s3:// paths through a registered fsspec wrapper of pyarrow's S3 file system."""

    def __init__(self, pa_fs, store: ArchiveStore) -> None:
        super().__init__(Path("."))
        self.pa_fs = pa_fs  # tiers/parquet_keys.py reads key columns through it directly
        self._conn.register_filesystem(_fsspec_s3(pa_fs))
        self._conn.execute("SET threads = 1")  # one reader of the Python file system per query (query's doc)
        self._store = store

    def query(self, sql, params):
        """The query's rows; one archive query at a time per process (_READS): DuckDB reading through
        the registered Python file system from several threads at once read wrong bytes at random
        (zstd decompression failures, Thrift errors, short reads on files of many row groups; the
        same file read right from one thread, and by pyarrow from four); with one reader a short read
        ("only 0 bytes returned") still came about once in a few hundred queries, so an I/O failure
        is tried again, READ_ATTEMPTS in all. Raises TierUnavailable."""
        for attempt in range(READ_ATTEMPTS):  # a read is idempotent: a short read is tried again
            try:
                with _READS:
                    return self._cursor().sql(sql, params=list(params)).to_arrow_table()
            except OSError as exc:
                if attempt + 1 == READ_ATTEMPTS:
                    raise TierUnavailable("archive", f"The archive (S3) cannot be read: {exc}") from exc
            except self._duckdb.Error as exc:
                # I/O failures inside the registered file system arrive as the base duckdb.Error; a
                # file that cannot be decoded as read arrives as InvalidInputException("Failed to read file")
                if not (type(exc) in (self._duckdb.Error, self._duckdb.IOException, self._duckdb.HTTPException) or (
                        isinstance(exc, self._duckdb.InvalidInputException) and "Failed to read file" in str(exc))):
                    raise
                if attempt + 1 == READ_ATTEMPTS:
                    raise TierUnavailable("archive", f"The archive (S3) cannot be read: {_first_line(exc)}") from exc

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


__all__ = ["ArchiveDuckDBEngine", "ArchiveTrinoEngine", "pyarrow_s3"]
