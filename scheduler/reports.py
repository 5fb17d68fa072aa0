"""Compliance reports: exact totals or raw events of one stream over [from, to), to the millisecond.

Reports read RAW events, never rollups, from whichever tier holds them by one catalog snapshot:
    archive  [.., b_archive)   each day's raw object in S3, checked against its manifest's SHA-256
    cold     [b_archive, b_cold)  each day's raw Parquet file
    warm     [b_cold, to)      warm's raw table, after a flush of the event log
The hot tier keeps no raw events: everything accepted is in the event log (Redis Stream) until the
flush job copies it into warm's raw table. So before reading warm, the report flushes the log
(holding the flush job's advisory lock, so it never races a scheduled flush) and then reads
warm's raw events in ONE statement (one MVCC snapshot): every event accepted before the report
started is counted exactly once, and nothing accepted later is. A tier move during the report is
harmless: sources delete what they handed over only after the grace period (if a report outlives
it and a source file vanished, the report restarts from a new snapshot).

Every source read is listed in the manifest: {tier, source, rows, sha256} — the S3 object or file
and the SHA-256 of its bytes (for warm, of the rows read as headerless CSV ts,key,value,id), and
how many of its events fell in the range. The output file (csv | parquet | json) is written to a
temp name, fsynced and renamed; its SHA-256 is recorded. With a `ReportObjects` store (every
process built by tierstore.wiring has one) the finished file is then uploaded to S3 and checked, and
only then is the report marked done with its s3:// path: any router replica serves the download
(streamed from S3); the local file stays behind as this process's cache.

    kind=totals  one row per key: stream, key, count, sum, min, max, avg (keys in byte order)
    kind=events  one row per event: time (RFC 3339 ms), ts_ms, stream, key, value, id
                 (ordered by ts, then key, value)

`ReportService` queues reports in PostgreSQL (table reports) and builds them in worker threads
with progress; the `reports` job (and a restart) picks up reports whose worker died.
Crash points: reports.after_flush, after_read, after_write.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError, ClientError
from psycopg.types.json import Jsonb

from rollups.errors import BadRequest, Conflict, NotFound, TierUnavailable
from rollups.partials import empty_partials, merge_partials
from rollups.timeutil import DAY_MS, TimeRange, format_time
from scheduler.faults import crash_point
from scheduler.report_files import (MEDIA_TYPES, ReportDownload, ReportObjects, canonical_csv, events_rows,
                                    local_report_file, open_download, open_writer, sha256_file, totals_rows)
from tiers.archive_manifest import ArchiveVerifyFailed
from tiers.locks import FLUSH_LOCK, report_lock_name, session_lock
from tiers.parquet_layout import fsync_path

log = logging.getLogger("tierstore.reports")

KINDS = ("totals", "events")
FORMATS = ("csv", "parquet", "json")
RETRIES = 3
STREAM_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class ReportRequest:
    tenant: str
    stream: str
    from_ms: int
    to_ms: int
    kind: str
    format: str

    def __post_init__(self) -> None:
        if not isinstance(self.stream, str) or not STREAM_RE.match(self.stream):
            raise BadRequest("stream must match [a-z0-9][a-z0-9_.-]{0,63}.",
                             [{"field": "stream", "problem": "not a stream name"}])
        if self.kind not in KINDS:
            raise BadRequest(f"kind must be one of {', '.join(KINDS)}.", [{"field": "kind", "problem": "unknown"}])
        if self.format not in FORMATS:
            raise BadRequest(f"format must be one of {', '.join(FORMATS)}.",
                             [{"field": "format", "problem": "unknown"}])
        if self.from_ms >= self.to_ms:
            raise BadRequest("from must be before to.", [{"field": "from", "problem": "not before to"}],
                             code="invalid_range")

    @property
    def range(self) -> TimeRange:
        return TimeRange(self.from_ms, self.to_ms)


@dataclass
class ReportResult:
    path: Path
    rows: int
    sha256: str
    bytes: int
    catalog_version: int
    manifest: list[dict[str, Any]] = field(default_factory=list)


class SourceVanished(RuntimeError):
    """A source handed over and deleted while the report read an older snapshot."""


# ---- building one report -------------------------------------------------------------------------

class ReportBuilder:
    """Reads raw events across the tiers by one catalog snapshot and writes the report file.

    `flush()` drains the event log into warm (default: scheduler.steps.flush with `redis`); it is
    run under the flush job's advisory lock, taken through `pool`. Tiers that are None are
    unavailable: a report that needs them fails with TierUnavailable naming them.
    """

    def __init__(self, *, catalog, pool, out_dir: Path, warm=None, cold=None, archive=None, redis=None,
                 flush: Callable[[], Any] | None = None) -> None:
        self.catalog = catalog
        self.pool = pool
        self.out_dir = Path(out_dir)
        self.warm, self.cold, self.archive = warm, cold, archive
        if flush is None and redis is not None and warm is not None:
            from scheduler.steps import flush as flush_step

            flush = lambda: flush_step(redis, warm)  # noqa: E731
        self._flush = flush

    def build(self, report_id: str, req: ReportRequest, progress: Callable[[float], None] = lambda f: None
              ) -> ReportResult:
        for attempt in range(RETRIES):
            try:
                return self._build(report_id, req, progress)
            except SourceVanished as exc:
                log.warning("report %s: %s; restarting from a new snapshot (attempt %d)", report_id, exc, attempt + 1)
        raise Conflict("The report's sources kept moving under it (tier migrations); retry later.",
                       code="report_sources_moved")

    def _build(self, report_id: str, req: ReportRequest, progress) -> ReportResult:
        snap = self.catalog.snapshot()
        plan = self._plan(req, snap)
        if any(kind == "warm" for kind, _ in plan):
            self._flush_log()
        crash_point("reports.after_flush")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.out_dir.glob(f".tmp-{report_id}-*"):  # a crashed attempt's
            stale.unlink(missing_ok=True)
        final = self.out_dir / f"{report_id}.{req.format}"
        tmp = self.out_dir / f".tmp-{report_id}-{uuid.uuid4().hex[:8]}.{req.format}"
        manifest: list[dict[str, Any]] = []
        writer = open_writer(req, tmp, report_id, snap.version)
        totals: list[pa.Table] = []
        try:
            weights = [_weight(kind, part) for kind, part in plan]
            done, whole = 0.0, max(1.0, sum(weights))
            for (kind, part), w in zip(plan, weights):
                for entry, table in self._read(kind, req, part,
                                               lambda f: progress(0.95 * (done + w * f) / whole)):
                    if entry is not None:
                        manifest.append(entry)
                    if table is None or table.num_rows == 0:
                        continue
                    if req.kind == "events":
                        writer.write(events_rows(table, req.stream))
                    else:
                        totals.append(_partials_by_key(table))
                        if len(totals) >= 64:  # keep memory at the number of keys
                            totals = [merge_partials(totals, "key", compensated=True)]
                done += w
                progress(0.95 * done / whole)
            crash_point("reports.after_read")
            if req.kind == "totals":
                writer.write(totals_rows(merge_partials(totals, "key", compensated=True) if totals else empty_partials("key"),
                                          req.stream))
            rows = writer.close(manifest)
            fsync_path(tmp)
            os.replace(tmp, final)
        finally:
            writer.abort()
            tmp.unlink(missing_ok=True)
        crash_point("reports.after_write")
        progress(1.0)
        return ReportResult(final, rows, sha256_file(final), final.stat().st_size, snap.version, manifest)

    def _plan(self, req: ReportRequest, snap) -> list[tuple[str, TimeRange]]:
        """(tier, part) in time order: archive and cold parts as the snapshot says; everything from
        b_cold on is read from warm (hot keeps no raw events; the flush puts them in warm)."""
        out = []
        for tier, part in snap.segments(req.range):
            tier = "warm" if tier == "hot" else tier
            if out and out[-1][0] == tier == "warm":
                out[-1] = ("warm", TimeRange(out[-1][1].start, part.end))
            else:
                out.append((tier, part))
        for tier, _ in out:
            if getattr(self, tier) is None:
                raise TierUnavailable(tier, f"The {tier} tier is not configured here; the report needs it.")
        return out

    @contextmanager
    def _flush_lock(self):
        with session_lock(self.pool, FLUSH_LOCK, wait=True):
            yield

    def _flush_log(self) -> None:
        if self._flush is None:
            return
        with self._flush_lock():
            try:
                self._flush()
            except TierUnavailable:
                raise
            except Exception as exc:  # the log (Redis) or warm is down: the report cannot be exact
                raise TierUnavailable("hot", f"The event log could not be flushed into warm: {exc}") from exc

    # ---- sources -------------------------------------------------------------------------------

    def _read(self, kind: str, req: ReportRequest, part: TimeRange, progress
              ) -> Iterator[tuple[dict | None, pa.Table | None]]:
        """(manifest entry or None, events or None) per source or batch, in time order."""
        if kind == "archive":
            yield from self._read_archive(req, part, progress)
        elif kind == "cold":
            yield from self._read_cold(req, part, progress)
        else:
            yield from self._read_warm(req, part, progress)

    def _read_archive(self, req, part, progress):
        tier = self.archive
        try:
            manifests = tier.registry.manifests(req.tenant, req.stream, "day", part)
            for i, m in enumerate(manifests):
                obj = m.object("events")
                if obj is None:
                    continue
                data = tier.store.get_bytes(obj["key"], obj["sha256"])
                table = _in_range(pq.read_table(pa.BufferReader(data)), part)
                yield ({"tier": "archive", "source": f"s3://{tier.store.bucket}/{obj['key']}", "rows": table.num_rows,
                        "sha256": obj["sha256"], "partition": m.name, "object_rows": obj["rows"]}, table)
                progress((i + 1) / len(manifests))
        except (TierUnavailable, ArchiveVerifyFailed):
            raise
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise SourceVanished(f"an archive object was removed: {exc}") from exc
            raise TierUnavailable("archive", f"The archive could not be read: {exc}") from exc
        except (BotoCoreError, OSError, psycopg.Error) as exc:
            raise TierUnavailable("archive", f"The archive could not be read: {exc}") from exc

    def _read_cold(self, req, part, progress):
        from tiers import parquet_layout as PL

        layout = self.cold.layout
        days = [d for d in layout.days(req.tenant, req.stream) if d < part.end and d + DAY_MS > part.start]
        for i, day in enumerate(days):
            path = Path(layout.raw_file(req.tenant, req.stream, day))
            try:
                data = path.read_bytes()
            except FileNotFoundError as exc:
                raise SourceVanished(f"{path} was removed") from exc
            except OSError as exc:
                raise TierUnavailable("cold", f"The cold tier cannot read {path}: {exc}") from exc
            table = _in_range(pq.read_table(pa.BufferReader(data)), part)
            yield ({"tier": "cold", "source": path.as_uri(), "rows": table.num_rows,
                    "sha256": hashlib.sha256(data).hexdigest(), "partition": PL.day_name(day),
                    "object_rows": pq.read_metadata(pa.BufferReader(data)).num_rows}, table)
            progress((i + 1) / len(days))

    def _read_warm(self, req, part, progress):
        """Batches as they come (entry None), then the source's manifest entry (table None)."""
        sha = hashlib.sha256()
        rows = 0
        span = max(1, part.end - part.start)
        for batch in self.warm.read_raw(req.tenant, req.stream, part):
            t = pa.Table.from_batches([batch]).select(["ts", "key", "value", "id"])
            sha.update(canonical_csv(t))
            rows += t.num_rows
            yield None, t
            progress(min(1.0, (batch.column(2)[-1].as_py() - part.start) / span))
        source = (f"postgresql:events?tenant={req.tenant}&stream={req.stream}"
                  f"&from={format_time(part.start)}&to={format_time(part.end)}")
        yield {"tier": "warm", "source": source, "rows": rows, "sha256": sha.hexdigest()}, None


def _weight(kind: str, part: TimeRange) -> float:
    return max(1.0, min(part.end - part.start, 3650 * DAY_MS) / DAY_MS)


def _in_range(table: pa.Table, part: TimeRange) -> pa.Table:
    mask = pc.and_(pc.greater_equal(table["ts"], part.start), pc.less(table["ts"], part.end))
    return table.filter(mask).select(["ts", "key", "value", "id"])


def _partials_by_key(t: pa.Table) -> pa.Table:
    """(key, count, sum, min, max, sum_lo) of raw events: each event a partial of its own, its sums
    kept as exact pairs (sum_lo: rollups.partials.merge_partials adds pairs), so the merges of a
    report's parts give every key's exact total, correctly rounded, as a compliance total must be."""
    ones = pa.array(np.ones(t.num_rows, np.int64))
    return merge_partials([pa.table({"key": t["key"], "count": ones, "sum": t["value"], "min": t["value"],
                                     "max": t["value"], "sum_lo": pa.array(np.zeros(t.num_rows))})], "key")


# ---- the queue and its workers -------------------------------------------------------------------

_COLUMNS = ("id, tenant, stream, from_ms, to_ms, kind, format, status, progress, rows, sha256, bytes, path, "
            "manifest, catalog_version, error, requested, started, finished")


class ReportService:
    """Queue, build and serve reports (router/reports.py calls submit/status/file).

    Reports are rows of table `reports`; a worker holds an advisory lock per report while it builds
    it, so `run_pending` (the `reports` job, or a restarted process) rebuilds exactly those whose
    worker died. Finished files are S3 objects (`objects`, shared by every replica; None: only the
    local files in `builder.out_dir`, served by the process that built them); `builder.out_dir`
    caches them locally.
    """

    def __init__(self, builder: ReportBuilder, pool, *, workers: int = 2, objects: ReportObjects | None = None
                 ) -> None:
        """workers=0: submissions only queue; `run_pending` (the `reports` job) or `run` builds them."""
        self.builder = builder
        self.pool = pool
        self.objects = objects
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="report") if workers else None
        self._closed = threading.Event()

    def submit(self, tenant: str, stream: str, from_ms: int, to_ms: int, kind: str, fmt: str) -> str:
        req = ReportRequest(tenant, stream, from_ms, to_ms, kind, fmt)
        report_id = uuid.uuid4().hex
        with self.pool.connection() as conn:
            conn.execute("INSERT INTO reports (id, tenant, stream, from_ms, to_ms, kind, format) "
                         "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                         (report_id, req.tenant, req.stream, req.from_ms, req.to_ms, req.kind, req.format))
        if self._executor is not None and not self._closed.is_set():
            self._executor.submit(self._run_logged, report_id)
        return report_id

    def status(self, tenant: str, report_id: str) -> dict[str, Any] | None:
        """The API's view of a report of this tenant, or None."""
        row = self._row(report_id)
        if row is None or row["tenant"] != tenant:
            return None
        return {"id": row["id"], "status": row["status"], "progress": round(float(row["progress"]), 4),
                "rows": row["rows"], "sha256": row["sha256"],
                "manifest": [{k: e[k] for k in ("tier", "source", "rows", "sha256")} | _extra(e)
                             for e in row["manifest"]],
                "error": row["error"], "stream": row["stream"], "from": format_time(row["from_ms"]),
                "to": format_time(row["to_ms"]), "kind": row["kind"], "format": row["format"],
                "bytes": row["bytes"], "catalog_version": row["catalog_version"],
                "requested": _iso(row["requested"]), "started": _iso(row["started"]),
                "finished": _iso(row["finished"])}

    def file(self, tenant: str, report_id: str) -> tuple[Path, str, str]:
        """(local path, media type, download name) of a finished report, copied from S3 into this
        process's cache first if needed; NotFound / Conflict otherwise, TierUnavailable("reports")
        when S3 cannot be read."""
        row = self._done_row(tenant, report_id)
        path = local_report_file(self.objects, row, self.builder.out_dir)
        return path, MEDIA_TYPES[row["format"]], f"report-{report_id}.{row['format']}"

    def download(self, tenant: str, report_id: str) -> ReportDownload:
        """What GET /v1/reports/{id}/download sends (report_files.open_download); NotFound, Conflict."""
        return open_download(self.objects, self._done_row(tenant, report_id), self.builder.out_dir)

    def _done_row(self, tenant: str, report_id: str) -> dict[str, Any]:
        row = self._row(report_id)
        if row is None or row["tenant"] != tenant:
            raise NotFound(f"There is no report {report_id!r}.", [{"field": "id", "problem": "unknown report"}],
                           code="report_not_found")
        if row["status"] != "done":
            raise Conflict(f"Report {report_id} is {row['status']}, not done.",
                           [{"field": "status", "problem": row["status"]}], code="report_not_ready")
        return row

    def run(self, report_id: str, progress: Callable[[float], None] | None = None) -> bool:
        """Build one report now in this thread, unless another worker holds it. True if built here.

        `progress(fraction)` is called as it goes (besides the recorded progress)."""
        with session_lock(self.pool, report_lock_name(report_id), wait=False) as locked:
            if not locked:
                return False
            row = self._row(report_id)
            if row is None or row["status"] in ("done", "failed"):
                return False
            self._build(row, progress)
            return True

    def run_pending(self, progress: Callable[[float], None] | None = None) -> dict[str, Any]:
        """Build every queued report and every running one whose worker is gone (the `reports` job)."""
        with self.pool.connection() as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM reports WHERE status IN ('queued', 'running') "
                                              "ORDER BY requested").fetchall()]
        built = 0
        for i, rid in enumerate(ids):
            built += self.run(rid)
            if progress is not None:
                progress((i + 1) / len(ids))
        return {"pending": len(ids), "built": built}

    def close(self, wait: bool = True) -> None:
        self._closed.set()
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=True)

    # ---- internals -----------------------------------------------------------------------------

    def _run_logged(self, report_id: str) -> None:
        try:
            self.run(report_id)
        except Exception:  # the report row says what happened
            log.exception("report %s could not be run", report_id)

    def _build(self, row: dict[str, Any], observer: Callable[[float], None] | None = None) -> None:
        rid = row["id"]
        req = ReportRequest(row["tenant"], row["stream"], row["from_ms"], row["to_ms"], row["kind"], row["format"])
        self._update(rid, "status = 'running', started = now(), progress = 0, error = NULL")
        last = [0.0]

        def progress(f: float) -> None:
            if observer is not None:
                observer(f)
            if f - last[0] >= 0.02 or f >= 1.0:
                last[0] = f
                self._update(rid, "progress = %s", (min(1.0, max(0.0, f)),))

        try:
            result = self.builder.build(rid, req, progress)
        except Exception as exc:
            log.warning("report %s failed: %s", rid, exc, exc_info=True)
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            self._update(rid, "status = 'failed', finished = now(), error = %s", (message,))
            return
        path = str(result.path)
        if self.objects is not None:  # upload, verify, and only then mark done: every replica can serve it
            try:
                path = self.objects.upload(result.path, req.tenant, rid, req.format, result.sha256)
            except (BotoCoreError, ClientError, OSError) as exc:  # S3 down: done, served by this process only
                log.warning("report %s: the file could not be stored in S3 (%s); only this process serves it",
                            rid, exc)
        self._update(rid, "status = 'done', finished = now(), progress = 1, rows = %s, sha256 = %s, bytes = %s, "
                          "path = %s, manifest = %s, catalog_version = %s",
                     (result.rows, result.sha256, result.bytes, path, Jsonb(result.manifest),
                      result.catalog_version))

    def _update(self, rid: str, sets: str, params: tuple = ()) -> None:
        with self.pool.connection() as conn:
            conn.execute(f"UPDATE reports SET {sets} WHERE id = %s", (*params, rid))

    def _row(self, report_id: str) -> dict[str, Any] | None:
        with self.pool.connection() as conn:
            cur = conn.execute(f"SELECT {_COLUMNS} FROM reports WHERE id = %s", (str(report_id),))
            row = cur.fetchone()
            return dict(zip([d.name for d in cur.description], row)) if row else None


def _extra(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in ("tier", "source", "rows", "sha256")}


def _iso(value) -> str | None:
    from rollups.timeutil import from_datetime

    return format_time(from_datetime(value)) if value is not None else None


def report_service(settings, resources, *, workers: int = 2) -> ReportService:
    """A ReportService over the job resources (warm, cold, archive, catalog, redis, pool: a
    tierstore.wiring.Resources), writing files under $TIERSTORE_HOME/reports (the local cache) and
    storing the finished ones in S3 (settings.s3_bucket, or reports_s3_bucket, under
    reports_s3_prefix) through the archive's S3 client."""
    builder = ReportBuilder(catalog=resources["catalog"], pool=resources["pool"],
                            out_dir=Path(settings.home) / "reports", warm=resources["warm"],
                            cold=resources["cold"], archive=resources["archive"],
                            redis=resources.get("redis"))
    objects = None
    archive = resources["archive"]
    if archive is not None and getattr(settings, "reports_s3_prefix", "reports"):
        objects = ReportObjects.from_client(archive.store.s3, getattr(settings, "reports_s3_bucket", "")
                                            or archive.store.bucket, getattr(settings, "reports_s3_prefix", "reports"))
    return ReportService(builder, resources["pool"], workers=workers, objects=objects)


# ---- the scheduler's job -----------------------------------------------------------------------

def run_reports(ctx) -> dict[str, Any]:
    """Build the reports left queued or orphaned (e.g. by a restart) with the context's service."""
    service = ctx.resources.get("reports")
    if service is None:
        return {"pending": 0, "built": 0, "note": "no report service in this process"}
    return service.run_pending(ctx.progress)


__all__ = ["ReportBuilder", "ReportService", "ReportRequest", "ReportResult", "ReportDownload", "ReportObjects",
           "KINDS", "FORMATS", "run_reports", "report_service"]
