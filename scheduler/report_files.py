"""What a compliance report's files hold: the row schemas of each kind, the rows themselves, and
one writer per format (csv | parquet | json), plus the SHA-256 helpers the manifest records.

    kind=totals  TOTALS_SCHEMA: stream, key, count, sum, min, max, avg (keys in byte order)
    kind=events  EVENTS_SCHEMA: time (RFC 3339 ms), ts_ms, stream, key, value, id
                 (ordered by ts, then key, value)
"""
from __future__ import annotations

import hashlib
import io
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rollups.timeutil import format_time

if TYPE_CHECKING:
    from scheduler.reports import ReportRequest

MEDIA_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet", "json": "application/json"}
TOTALS_SCHEMA = pa.schema([("stream", pa.string()), ("key", pa.string()), ("count", pa.int64()),
                           ("sum", pa.float64()), ("min", pa.float64()), ("max", pa.float64()),
                           ("avg", pa.float64())])
EVENTS_SCHEMA = pa.schema([("time", pa.string()), ("ts_ms", pa.int64()), ("stream", pa.string()),
                           ("key", pa.string()), ("value", pa.float64()), ("id", pa.string())])


def canonical_csv(t: pa.Table) -> bytes:
    buf = io.BytesIO()
    pacsv.write_csv(t, buf, pacsv.WriteOptions(include_header=False))
    return buf.getvalue()



def totals_rows(merged: pa.Table, stream: str) -> pa.Table:
    merged = merged.sort_by([("key", "ascending")])
    n = merged.num_rows
    avg = pc.divide(merged["sum"], pc.cast(merged["count"], pa.float64())) if n else pa.array([], pa.float64())
    return pa.table({"stream": pa.array([stream] * n, pa.string()), "key": merged["key"], "count": merged["count"],
                     "sum": merged["sum"], "min": merged["min"], "max": merged["max"], "avg": avg},
                    schema=TOTALS_SCHEMA)


def events_rows(t: pa.Table, stream: str) -> pa.Table:
    t = t.sort_by([("ts", "ascending"), ("key", "ascending"), ("value", "ascending")])
    times = [format_time(v) for v in t["ts"].to_pylist()]
    return pa.table({"time": pa.array(times, pa.string()), "ts_ms": t["ts"],
                     "stream": pa.array([stream] * t.num_rows, pa.string()), "key": t["key"],
                     "value": t["value"], "id": t["id"]}, schema=EVENTS_SCHEMA)


# ---- output files --------------------------------------------------------------------------------

class _Writer:
    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path, self.schema, self.rows = path, schema, 0

    def write(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        self._write(table.cast(self.schema))

    def _write(self, table: pa.Table) -> None:
        raise NotImplementedError

    def close(self, manifest: list[dict[str, Any]]) -> int:
        return self.rows

    def abort(self) -> None:
        pass


class _ArrowFileWriter(_Writer):
    """A writer over a pyarrow file writer `self._w` (CSV, Parquet)."""

    _w: Any

    def close(self, manifest):
        self._w.close()
        return self.rows

    def abort(self):
        try:
            self._w.close()
        except Exception:  # noqa: BLE001 - already closed
            pass


class _CsvWriter(_ArrowFileWriter):
    def __init__(self, path, schema):
        super().__init__(path, schema)
        self._w = pacsv.CSVWriter(str(path), schema)

    def _write(self, table):
        self._w.write_table(table)


class _ParquetWriter(_ArrowFileWriter):
    def __init__(self, path, schema, meta: dict[str, str]):
        super().__init__(path, schema.with_metadata({"tierstore.report": json.dumps(meta)}))
        self._w = pq.ParquetWriter(str(path), self.schema, compression="zstd")

    def _write(self, table):
        self._w.write_table(table.replace_schema_metadata(self.schema.metadata))


class _JsonWriter(_Writer):
    """{"report": {...}, "rows": [...], "manifest": [...]} written row by row."""

    def __init__(self, path, schema, meta: dict[str, Any]):
        super().__init__(path, schema)
        self._f = open(path, "w", encoding="utf-8")
        self._f.write('{"report": ' + json.dumps(meta) + ',\n "rows": [')
        self._first = True

    def _write(self, table):
        for row in table.to_pylist():
            self._f.write(("\n  " if self._first else ",\n  ") + json.dumps(row, ensure_ascii=False))
            self._first = False

    def close(self, manifest):
        self._f.write('\n ],\n "manifest": ' + json.dumps(manifest) + "\n}\n")
        self._f.close()
        return self.rows

    def abort(self):
        if not self._f.closed:
            self._f.close()


def open_writer(req: ReportRequest, path: Path, report_id: str, version: int) -> _Writer:
    schema = TOTALS_SCHEMA if req.kind == "totals" else EVENTS_SCHEMA
    meta = {"id": report_id, "tenant": req.tenant, "stream": req.stream, "from": format_time(req.from_ms),
            "to": format_time(req.to_ms), "kind": req.kind, "catalog_version": version}
    if req.format == "csv":
        return _CsvWriter(path, schema)
    if req.format == "parquet":
        return _ParquetWriter(path, schema, meta)
    return _JsonWriter(path, schema, meta)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- finished files in S3 (shared by every router replica) ---------------------------------------

class ReportObjects:
    """Finished report files as S3 objects `<prefix>/<tenant>/<id>.<format>` in `bucket`, so any
    router replica serves a download (issue 12): the worker uploads the file, checks the object
    (size, ETag, SHA-256 in its metadata) and only then marks the report done.

    `store` is a tiers.s3_store.ArchiveStore over the reports prefix (Content-MD5 and SHA-256 sent on
    upload, multipart for large files). Raises botocore errors when S3 cannot be reached.
    """

    def __init__(self, store) -> None:
        self.store = store

    @classmethod
    def from_client(cls, client, bucket: str, prefix: str) -> "ReportObjects":
        from tiers.s3_store import ArchiveStore

        return cls(ArchiveStore(client, bucket, prefix))

    def uri(self, key: str) -> str:
        return f"s3://{self.store.bucket}/{key}"

    def key_of(self, uri: str) -> str | None:
        """The object key of an `s3://bucket/key` path this store wrote, else None (a local path)."""
        head = f"s3://{self.store.bucket}/"
        return uri[len(head):] if uri.startswith(head) else None

    def upload(self, path: Path, tenant: str, report_id: str, fmt: str, sha256: str) -> str:
        """Upload the finished file and verify the object; returns its s3:// URI."""
        key = self.store.key(f"{tenant}/{report_id}.{fmt}")
        obj = self.store.put_file(path, key)
        if obj["sha256"] != sha256:  # the file changed between hashing and upload
            raise OSError(f"report {report_id}: uploaded bytes differ from the file's SHA-256")
        self.store.verify(obj)
        return self.uri(key)

    def open(self, key: str) -> tuple[Any, int]:
        """(streaming body, size in bytes) of an object; the body has iter_chunks() and close()."""
        r = self.store.s3.get_object(Bucket=self.store.bucket, Key=key)
        return r["Body"], int(r["ContentLength"])

    def download(self, key: str, dest: Path, sha256: str) -> Path:
        """Copy the object to `dest` (temp name, checked against `sha256`, renamed): a local cache."""
        import os
        import uuid

        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}")
        body, _ = self.open(key)
        h = hashlib.sha256()
        try:
            with tmp.open("wb") as f:
                for chunk in body.iter_chunks(1 << 20):
                    h.update(chunk)
                    f.write(chunk)
            if h.hexdigest() != sha256:
                raise OSError(f"s3://{self.store.bucket}/{key}: content does not match the report's SHA-256")
            os.replace(tmp, dest)
        finally:
            body.close()
            tmp.unlink(missing_ok=True)
        return dest


@dataclass
class ReportDownload:
    """A finished report to send: `path` (a local file) or `body` (an S3 streaming body with
    iter_chunks() and close()), its media type, download name, SHA-256 and size in bytes."""

    media_type: str
    name: str
    sha256: str
    size: int
    path: Path | None = None
    body: Any = None


def _cached(objects: ReportObjects | None, row: dict[str, Any], cache_dir: Path) -> tuple[str | None, Path]:
    """(S3 key or None, the local file to use): a report stored in S3 is cached as
    cache_dir/<id>.<format>; an older report has only its local path."""
    key = objects.key_of(row["path"]) if objects is not None else None
    return key, (cache_dir / f"{row['id']}.{row['format']}" if key is not None else Path(row["path"]))


def _usable(key: str | None, local: Path, row: dict[str, Any]) -> bool:
    return local.is_file() and (key is None or local.stat().st_size == row["bytes"])


def _missing(row: dict[str, Any], where: str):
    from rollups.errors import NotFound

    return NotFound(f"The file of report {row['id']} is {where}.", [{"field": "id", "problem": "file missing"}],
                    code="report_file_missing")


def _s3_failed(exc: Exception):
    from rollups.errors import TierUnavailable

    return TierUnavailable("reports", f"The report file could not be read from S3: {exc}")


def open_download(objects: ReportObjects | None, row: dict[str, Any], cache_dir: Path) -> ReportDownload:
    """The download of a done report (`row`: its reports row): the local cached file when present,
    else the S3 object's streaming body (the caller closes it). NotFound report_file_missing when
    the file is gone; TierUnavailable("reports") when S3 cannot be read."""
    media, name = MEDIA_TYPES[row["format"]], f"report-{row['id']}.{row['format']}"
    key, local = _cached(objects, row, cache_dir)
    if _usable(key, local, row):
        return ReportDownload(media, name, row["sha256"], local.stat().st_size, path=local)
    if key is None:
        raise _missing(row, "not on this server")
    with _reading_s3(row):
        body, size = objects.open(key)
    return ReportDownload(media, name, row["sha256"], size, body=body)


def local_report_file(objects: ReportObjects | None, row: dict[str, Any], cache_dir: Path) -> Path:
    """A local copy of a done report's file: the cache, filled from S3 (checked) when missing."""
    key, local = _cached(objects, row, cache_dir)
    if _usable(key, local, row):
        return local
    if key is None:
        raise _missing(row, "not on this server")
    with _reading_s3(row):
        return objects.download(key, local, row["sha256"])


@contextmanager
def _reading_s3(row: dict[str, Any]) -> Iterator[None]:
    """NotFound report_file_missing for an object gone from S3; TierUnavailable("reports") when S3
    cannot be read."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise _missing(row, "gone from S3") from exc
        raise _s3_failed(exc) from exc
    except (BotoCoreError, OSError) as exc:
        raise _s3_failed(exc) from exc
