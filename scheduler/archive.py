"""archive: hand closed cold periods to S3 (tiers.archive), then move b_archive forward.

For the days [b_archive, target) with target = the start of the day containing as_of - cold_age
(never above b_cold):
  1. plan: every cold day partition (tenant, stream, day) in that range, and every week and month
     that ends in (b_archive, target] — their rollups are built afresh from the days' daily
     rollups (the cold files of this run's days, the archived copies of earlier days);
  2. per partition: upload its files (same relative paths as on disk), check that raw events and
     rollups agree, upload its manifest, verify every object with HEAD (size, ETag = the server's
     MD5, stored SHA-256) and the manifest by reading it back;
  3. let the query engine see the new partitions (Trino: sync the Hive metastore over s3://);
  4. ONE transaction: the partitions' registry rows (what ArchiveTier reads), b_archive := target
     (PgCatalog.advance), and the run's record;
  5. purge: delete the cold files of archived partitions below the b_archive of the newest catalog
     version current for the grace period (catalog.settled), so a query holding an older snapshot
     still finds them.
Idempotent and resumable: b_archive is the checkpoint. Objects uploaded for days at or above
b_archive belong to nobody (readers list the registry, and the router never asks the archive for
them); a re-run uploads them again over the same keys. Cold files are deleted only when the
registry holds their partition, so a crash at any point loses nothing and counts nothing twice.
Crash points (scheduler.faults): archive.after_plan, after_upload, after_manifest, after_verify,
after_register, before_commit, after_commit, during_purge, after_purge.
"""
from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from rollups.timeutil import DAY_MS, MIN_MS, floor_to
from scheduler.faults import crash_point
from scheduler.steps import NullProgress
from tiers import parquet_layout as PL
from tiers.archive import ArchiveTier
from tiers.archive_manifest import Manifest
from tiers.archive_packs import PackRule, group_days, stage_pack, upload_pack
from tiers.archive_partitions import ManifestObject


log = logging.getLogger("tierstore.archive")

UPLOAD_THREADS = 4



@dataclass(frozen=True)
class Partition:
    tenant: str
    stream: str
    period: str  # day | week | month
    start: int


def archive_target(snapshot, as_of: int, cold_age_ms: int) -> int:
    """Where b_archive may move: the day containing as_of - cold_age, never above b_cold."""
    if snapshot.b_cold <= MIN_MS:
        return snapshot.b_archive
    return max(snapshot.b_archive, min(floor_to(as_of - cold_age_ms, DAY_MS), floor_to(snapshot.b_cold, DAY_MS)))


def archive(cold, archive_tier: ArchiveTier, catalog, as_of: int, *, cold_age_ms: int, grace_ms: int,
            progress=None, max_days: int | None = None, pack: PackRule | None = None) -> dict[str, Any]:
    """Archive every closed cold day older than cold_age (relative to as_of); see the module doc.

    `max_days` bounds one run (the next run continues); `pack` packs the run's small days of a
    stream into one partition each (tiers.archive_packs; None: one partition per day). Returns
    stats: partitions (packs among them) and objects uploaded, bytes, events, b_archive, and what
    the purge deleted.
    """
    progress = progress or NullProgress()
    snap = catalog.snapshot()
    target = archive_target(snap, as_of, cold_age_ms)
    stats: dict[str, Any] = {"target": target, "b_archive_before": snap.b_archive, "partitions": 0, "days": 0,
                             "periods": 0, "packs": 0, "packed_days": 0, "objects": 0, "bytes": 0, "events": 0,
                             "object_lock": archive_tier.store.object_lock_enabled()}
    if target > snap.b_archive:
        days = _cold_days(cold, snap.b_archive, target)
        distinct = sorted({p.start for p in days})
        if max_days is not None and len(distinct) > max_days:
            target = distinct[max_days]
            days = [p for p in days if p.start < target]
        stats["target"] = target
        periods = _periods_ending(days, snap.b_archive, target)
        crash_point("archive.after_plan")
        uploaded = _upload(cold, archive_tier, days, periods, stats, progress, pack=pack)
        archive_tier.sync()
        crash_point("archive.after_register")
        with archive_tier.pool.connection() as conn:
            for m, mobj in uploaded:
                archive_tier.registry.register(conn, m, *mobj)
            moved = catalog.advance(conn, b_archive=target)
            progress.record(conn, {"b_archive": target, "version": moved.version, "partitions": stats["partitions"],
                                 "events": stats["events"]})
            crash_point("archive.before_commit")
        crash_point("archive.after_commit")
    stats["b_archive"] = catalog.snapshot().b_archive
    progress.progress(0.95)
    stats["purged"] = purge_cold(cold, archive_tier, catalog, grace_ms)
    progress.progress(1.0)
    return stats


def _cold_days(cold, lo: int, hi: int) -> list[Partition]:
    """Cold day partitions with day in [lo, hi), oldest first."""
    out = []
    for tenant, stream in _cold_streams(cold):
        out.extend(Partition(tenant, stream, "day", d) for d in cold.layout.days(tenant, stream) if lo <= d < hi)
    return sorted(out, key=lambda p: (p.start, p.tenant, p.stream))


def _cold_streams(cold) -> list[tuple[str, str]]:
    return [(unquote(t), unquote(s)) for t, s, _ in cold.layout.tenants_streams()]


def _periods_ending(days: list[Partition], lo: int, hi: int) -> list[Partition]:
    """Weeks and months that end in (lo, hi] and hold one of `days` or a day archived before lo."""
    out = set()
    streams = {(p.tenant, p.stream) for p in days}
    for gran in PL.PERIOD_GRANULARITIES:
        starts = {(p.tenant, p.stream, gran.floor(p.start)) for p in days}
        if lo > MIN_MS:
            starts |= {(t, s, gran.floor(lo - DAY_MS)) for t, s in streams}
        for t, s, start in starts:
            if lo < gran.next(start) <= hi:
                out.add(Partition(t, s, PL.PERIOD_OF[gran.name], start))
    return sorted(out, key=lambda p: (p.start, p.period, p.tenant, p.stream))


def _upload(cold, tier: ArchiveTier, days: list[Partition], periods: list[Partition], stats: dict,
            progress, threads: int = UPLOAD_THREADS, pack: PackRule | None = None
            ) -> list[tuple[Manifest, ManifestObject]]:
    """Upload, manifest and verify every planned partition (`threads` at a time: each object is a
    round trip or three); returns (manifest, manifest object) in plan order. With `pack`, the
    small days of a stream go as packs (tiers.archive_packs.group_days)."""
    planned = {(p.tenant, p.stream, p.start) for p in days}
    parts = tier.partitions
    packs: list[list[Partition]] = []
    if pack is not None:
        days, packs = group_days(days, lambda p: Path(cold.layout.raw_file(p.tenant, p.stream, p.start)).stat().st_size,
                                 pack)

    def daily_source(t: str, s: str):
        def daily(day: int) -> Path | bytes | None:
            if (t, s, day) in planned:
                return Path(cold.layout.rollup_file(t, s, PL.G1D, day))
            return parts.archived_daily(t, s, day)
        return daily

    def one(p: Partition | list[Partition]) -> tuple[Manifest, ManifestObject] | None:
        if isinstance(p, list):
            with parts.staging_dir() as tmp:
                staged, info = stage_pack(cold.layout, p[0].tenant, p[0].stream, [d.start for d in p], Path(tmp))
                m = upload_pack(parts, staged, p[0].tenant, p[0].stream, info,
                                on_uploaded=lambda: crash_point("archive.after_upload"))
        elif p.period == "day":
            m = parts.upload_partition(cold.layout, p.tenant, p.stream, "day", p.start,
                                       on_uploaded=lambda: crash_point("archive.after_upload"))
        else:
            with parts.staging_dir() as tmp:
                staged = parts.build_period(p.tenant, p.stream, PL.PERIODS[p.period], p.start,
                                            daily_source(p.tenant, p.stream), Path(tmp))
                if staged is not None and pack is not None:
                    slim_period(staged, p, pack)
                m = parts.upload_partition(staged, p.tenant, p.stream, p.period, p.start) if staged else None
        if m is None:
            return None
        mobj = parts.put_manifest(m)
        crash_point("archive.after_manifest")
        parts.verify_partition(m, mobj)
        return m, mobj

    plan = [*days, *packs, *periods]
    results: list[tuple[Manifest, ManifestObject] | None] = [None] * len(plan)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="archive-upload") as pool:
        futures = {pool.submit(one, p): i for i, p in enumerate(plan)}
        for n, future in enumerate(as_completed(futures), start=1):
            results[futures[future]] = future.result()
            progress.progress(0.9 * n / max(1, len(plan)))
    uploaded = [r for r in results if r is not None]
    for m, _ in uploaded:
        stats["partitions"] += 1
        if m.period == "pack":  # callers' stats without packs (the history import) need no keys for them
            stats["packs"] = stats.get("packs", 0) + 1
            stats["packed_days"] = stats.get("packed_days", 0) + len(m.days or ())
        else:
            stats["days" if m.period == "day" else "periods"] += 1
        stats["objects"] += len(m.objects) + 1
        stats["bytes"] += sum(o["size"] for o in m.objects)
        if m.raw:
            stats["events"] += m.totals()[0]
    crash_point("archive.after_verify")
    return uploaded


def slim_period(staged: PL.Layout, p: Partition, pack: PackRule) -> None:
    """A small week/month (its rollup below pack.below bytes) goes as its rollup alone: readers
    read a partition without value-sorted copies whole (tiers.archive_ranked), without stream
    totals key-level (tiers.parquet_totals), without a sketch from its exact partials — all exact,
    and 2 objects instead of 6."""
    files = PL.period_files(staged, p.tenant, p.stream, p.period, p.start)
    if Path(files[0][1]).stat().st_size >= pack.below:
        return
    for _, path in files[1:]:
        Path(path).unlink(missing_ok=True)


def purge_cold(cold, tier: ArchiveTier, catalog, grace_ms: int) -> dict[str, Any]:
    """Delete cold files of partitions the archive holds below the settled b_archive.

    A day's files go only when the registry has the day (archived, or since deleted by retention);
    weeks and months below the boundary go with their days. Returns counts.
    """
    below = min(catalog.settled(grace_ms).b_archive, catalog.snapshot().b_archive)
    stats = {"below": below, "days": 0, "periods": 0, "files": 0, "kept_unregistered": 0, "kept_changed": 0}
    if below <= MIN_MS:
        return stats
    touched = False
    for tenant, stream in _cold_streams(cold):
        held = set(tier.registry.starts(tenant, stream, "day", status=None))
        held |= {d for m in tier.registry.packs(tenant, stream, status=None) for d in m.day_starts()}
        for day in cold.layout.days(tenant, stream):
            if day + DAY_MS > below:
                continue
            if day not in held:
                stats["kept_unregistered"] += 1
                continue
            if not _same_as_archived(cold, tier, tenant, stream, day):
                stats["kept_changed"] += 1
                log.warning("cold %s/%s %s changed after it was archived; kept (re-archive it)", tenant, stream,
                            PL.day_name(day))
                continue
            stats["files"] += _remove(cold.layout, tenant, stream, "day", day)
            stats["days"] += 1
            touched = True
            crash_point("archive.during_purge")
        for gran in PL.PERIOD_GRANULARITIES:
            for start in cold.layout.periods(tenant, stream, gran):
                if gran.next(start) <= below and not _has_days(cold, tenant, stream, gran, start):
                    stats["files"] += _remove(cold.layout, tenant, stream, PL.PERIOD_OF[gran.name], start)
                    stats["periods"] += 1
                    touched = True
    if touched:
        cold.sync()
    crash_point("archive.after_purge")
    return stats


def _same_as_archived(cold, tier: ArchiveTier, tenant: str, stream: str, day: int) -> bool:
    """The cold raw file is byte-identical to the archived one (nothing rewrote it since), or the
    registry no longer holds the day (retention deleted it: the cold copy is an orphan)."""
    m = tier.registry.manifest(tenant, stream, "day", day)  # archived; None if retention took it
    obj = m.object("events") if m else None
    path = Path(cold.layout.raw_file(tenant, stream, day))
    pack = tier.partitions.pack_of(tenant, stream, day) if m is None else None
    if pack is not None:  # a packed day: the SHA-256 of the cold file it was packed from
        source = next(d["source_sha256"] for d in pack.days if d["start"] == day)
        return not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() == source
    if obj is None or not path.exists():
        return True
    # a day an import merged history into names the file it was archived from (tierstore.history_archive)
    return hashlib.sha256(path.read_bytes()).hexdigest() in (obj["sha256"], obj.get("source_sha256"))


def _has_days(cold, tenant: str, stream: str, gran, start: int) -> bool:
    end = gran.next(start)
    return any(start <= d < end for d in cold.layout.days(tenant, stream))


def _remove(layout: PL.Layout, tenant: str, stream: str, period: str, start: int) -> int:
    # the raw file last: cold.layout.days() lists a day by it, so a crash midway is retried
    files = PL.period_files(layout, tenant, stream, period, start)
    return sum(PL.remove_partition(Path(p)) for _, p in reversed(files))


# ---- the scheduler's job -----------------------------------------------------------------------

def run_archive(ctx) -> dict[str, Any]:
    r = ctx.resources
    return archive(r["cold"], r["archive"], r["catalog"], ctx.as_of,
                   cold_age_ms=ctx.settings.cold_age, grace_ms=ctx.settings.grace_period, progress=ctx,
                   pack=PackRule.from_settings(ctx.settings))


__all__ = ["archive", "archive_target", "purge_cold", "run_archive"]
