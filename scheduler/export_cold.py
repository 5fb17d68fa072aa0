"""export_cold: hand closed days from warm to cold (Parquet), then move b_cold forward.

For the days [b_cold, target) with target = the start of the day containing as_of - warm_age
(never above b_warm):
  1. seal: raise the ingest seal to target (tiers.eventlog SEAL_KEY), so ingest refuses events
     older than the new boundary from now on; then flush the event log, so everything accepted
     before the seal is in warm;
  2. warm's own count and sum of every stream-day holding events in the range, in one aggregate
     (tiers.warm_export.day_totals: empty days cost nothing; the figures every file is verified
     against); those stream-days oldest first, BATCH_DAYS days at a time: every stream's raw
     events of the batch in one COPY (tiers.warm_export; the next batch is read while this one is
     written), in file order
     (one stable sort by (stream, ts, key_id)), split into stream-days; each stream-day's raw + 1h/1d rollups
     (derived in one numpy pass when its values are exactly summable: tiers.day_rollups) written to temp files, verified
     against warm's figures, renamed into place (tiers.parquet_layout), a few stream-days at once
     and across batch edges; each week and month holding an exported day is rebuilt once (not
     once per day), as soon as its last stream-day of the run is written; cold files in the run's
     range of stream-days warm no longer holds are removed; every file is made durable by one
     syncfs(2) of the cold folder's filesystem (os.sync() where there is none; a background
     syncfs after each batch starts the writeback early); the engine sees the partitions once;
     then ONE transaction per run records the run and moves b_cold to the run's end (one catalog
     version per run, not per day) and deletes the approx_sketches rows of warm buckets now
     below b_cold (each exported day carries its sketch file: tiers/sketch_files.py);
  3. drop warm's events below the b_cold of the newest catalog version that has been current for
     the grace period (catalog.settled), BATCH_DAYS days holding events at a time, oldest first.
Idempotent and resumable: b_cold is the checkpoint (a crash before the run's one transaction
redoes the run's days; `max_days` bounds how much a crash can cost). Files of a day at or above b_cold belong to
nobody (queries never read them: the router sends cold only ranges below b_cold) and a re-run
rewrites them whole from warm; warm keeps every event above the settled boundary, so a crash at
any point loses nothing and counts nothing twice.
Crash points (scheduler.faults): export_cold.before_write, after_write, after_verify,
after_rename, after_catalog, during_drop.
"""
from __future__ import annotations

import ctypes
import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Iterator
from urllib.parse import unquote

import numpy as np
import pyarrow as pa

from rollups.timeutil import DAY_MS, MIN_MS, TimeRange, floor_to
from scheduler.faults import crash_point
from scheduler.steps import NullProgress
from tiers import parquet_layout as PL
from tiers.day_writer import WORKERS
from tiers.errors import translate
from tiers.warm_export import day_totals, read_range, stream_names
from tiers.eventlog import SEAL_KEY, raise_mark
from tiers.sketch_store import prune_left_warm

BATCH_DAYS = 16  # days read by one COPY (bounds the memory of a long catch-up)
FIRST_BATCH_DAYS = 2  # the first read is waited for; the next ones overlap the writes


def export_cold(redis, warm, cold, catalog, as_of: int, *, warm_age_ms: int, grace_ms: int,
                progress=None, flush=None, max_days: int | None = None) -> dict[str, Any]:
    """Export every closed day older than warm_age (relative to as_of) to cold; see the module doc.

    `flush(redis, warm)` drains the event log (default scheduler.steps.flush); `max_days` bounds
    one run (the next run continues). Returns stats: days exported, events, b_cold, dropped.
    """
    if flush is None:
        from scheduler.steps import flush
    progress = progress or NullProgress()
    snap = catalog.snapshot()
    target = min(floor_to(as_of - warm_age_ms, DAY_MS), floor_to(snap.b_warm, DAY_MS))
    stats: dict[str, Any] = {"target": target, "b_cold_before": snap.b_cold, "days": 0, "events": 0}
    if target > snap.b_cold:
        raise_mark(redis, SEAL_KEY, target)
        stats["flush"] = flush(redis, warm)
        totals = day_totals(warm, snap.b_cold, target)  # warm's count and sum per stream-day: one scan
        names = stream_names(warm)
        held = _days_to_export(totals, names)
        days = sorted(held)
        limited = max_days is not None and len(days) > max_days
        days = days[:max_days] if limited else days
        end = days[-1] + DAY_MS if limited else target  # this run's b_cold
        stats["stale_removed"] = _remove_stale(cold, held, snap.b_cold, end)
        _export_days(warm, cold, days, held, totals, names, stats, progress)  # with each week and month once
        if days or stats["stale_removed"]:
            _sync_files(cold.layout.root)  # every file written above, durable at once before the catalog owns them
            cold.sync()
        _advance(warm, catalog, progress, end, stats)  # once per run: one catalog version
    stats["b_cold"] = catalog.snapshot().b_cold
    stats["dropped"] = drop_exported(warm, catalog, grace_ms)
    progress.progress(1.0)
    return stats


def _sync_files(root) -> None:
    """Make every file written under `root` durable: syncfs(2) of its filesystem (only the cold
    folder's disk, not every dirty page of the machine as os.sync() does), else os.sync()."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(root, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):  # no syncfs (not Linux) or no folder: the whole machine's
        pass
    os.sync()


def _advance(warm, catalog, progress, b_cold: int, stats: dict[str, Any]) -> None:
    """Move b_cold and record the run's progress in one transaction."""
    with warm.pool.connection() as conn:
        moved = catalog.advance(conn, b_cold=b_cold)
        stats["sketches_pruned"] = prune_left_warm(conn, b_cold)  # mode=approx: cold's are files now
        progress.record(conn, {"b_cold": b_cold, "version": moved.version, "days": stats["days"],
                             "events": stats["events"]})
    crash_point("export_cold.after_catalog")


def _days_to_export(totals: dict[tuple[int, int], tuple[int, float]],
                    names: dict[int, tuple[str, str]]) -> dict[int, list[tuple[str, str]]]:
    """{day start: [(tenant, stream) holding warm events that day, in name order]} from warm's
    totals per (stream id, day) (days without events cost nothing; ids without a name, none)."""
    held: dict[int, list[tuple[str, str]]] = {}
    for day, name in sorted((day, names[sid]) for sid, day in totals if sid in names):
        held.setdefault(day, []).append(name)
    return held


def _remove_stale(cold, held: dict[int, list[tuple[str, str]]], lo: int, hi: int) -> int:
    """Remove cold day files in [lo, hi) of streams warm holds no events of that day (left by an
    earlier run that crashed before moving b_cold, whose events warm has since lost): b_cold is
    about to cover them. Returns the stream-days removed."""
    removed = 0
    for qt, qs, _ in cold.layout.tenants_streams():
        tenant, stream = unquote(qt), unquote(qs)
        for day in cold.layout.days(tenant, stream):
            if lo <= day < hi and (tenant, stream) not in held.get(day, ()):
                cold.remove_day(tenant, stream, day)
                removed += 1
    return removed


def _export_days(warm, cold, days: list[int], held: dict[int, list[tuple[str, str]]],
                 totals: dict[tuple[int, int], tuple[int, float]], names: dict[int, tuple[str, str]],
                 stats: dict[str, Any], progress) -> None:
    """Copy the days' events of the streams `held` names from warm to cold files, a batch of days
    per COPY (tiers.warm_export, the next batch read while this one is written), WORKERS
    stream-days written at once across batch edges (no barrier per batch), each verified against
    warm's own count and sum; each week and month holding a written day is rebuilt once, as soon as
    its last stream-day of the run is written (overlapping the later days' writes); the dirty
    pages of each batch start going to disk (syncfs in a background thread) while the next is
    written (stats["events"] counts the events written)."""
    crash_point("export_cold.before_write")
    left: dict[tuple, int] = {}  # (tenant, stream, granularity, start) -> its stream-days not yet written
    for day in days:
        for name in held[day]:
            for g in PL.PERIOD_GRANULARITIES:
                key = (*name, g, g.floor(day))
                left[key] = left.get(key, 0) + 1
    touched = sorted({name for day in days for name in held[day]})
    for name in touched:
        cold.partitions.changed(*name)
    dirty: set[tuple] = set()
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="export-days") as pool:
        pending: dict = {}

        def collect(when) -> None:
            finished, _ = wait(list(pending), return_when=when)
            for f in finished:
                kind, item = pending.pop(f)
                n = f.result()
                if kind != "day":
                    continue
                tenant, stream, day = item[:3]
                stats["events"] += n
                for g in PL.PERIOD_GRANULARITIES:
                    key = (tenant, stream, g, g.floor(day))
                    if n:
                        dirty.add(key)
                    left[key] -= 1
                    if left[key] == 0 and key in dirty:  # the period's last day of this run is written
                        pending[pool.submit(PL.write_period, cold.partitions.layout, tenant, stream, g, key[3],
                                            durable=False)] = ("period", key)

        for item in _day_items(warm, cold, days, held, totals, names, stats, progress):
            pending[pool.submit(_write_day, cold, *item)] = ("day", item)
            if len(pending) >= 2 * WORKERS:
                collect(FIRST_COMPLETED)
        while pending:
            collect(FIRST_COMPLETED)
    for name in touched:
        cold.partitions.changed(*name)


def _day_items(warm, cold, days: list[int], held: dict[int, list[tuple[str, str]]],
               totals: dict[tuple[int, int], tuple[int, float]], names: dict[int, tuple[str, str]],
               stats: dict[str, Any], progress) -> Iterator[tuple]:
    """(tenant, stream, day, warm's totals, rows) of every stream-day to export, oldest first, read a
    batch of days per COPY with the next batch read ahead; after each batch, a background syncfs
    of the cold folder (the final one in export_cold then has little left to write)."""
    sids = {name: sid for sid, name in names.items()}
    first = days[:FIRST_BATCH_DAYS]  # small: the only read nothing else overlaps
    batches = ([first] if first else []) + [days[b:b + BATCH_DAYS] for b in range(len(first), len(days), BATCH_DAYS)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-read") as reader, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-sync") as syncer:
        ahead = reader.submit(_read_batch, warm, batches[0]) if batches else None
        syncing = None
        for i, batch in enumerate(batches):
            groups = ahead.result()
            ahead = reader.submit(_read_batch, warm, batches[i + 1]) if i + 1 < len(batches) else None
            for day in batch:
                for tenant, stream in held[day]:
                    sid = sids[(tenant, stream)]
                    count, total = totals.get((sid, day), (0, 0.0))
                    yield (tenant, stream, day, PL.Totals(count, count, total, None, None),
                           groups.pop((sid, day), _EMPTY))
            del groups
            stats["days"] += len(batch)
            progress.progress(0.85 * min(1.0, (stats["days"]) / len(days)))
            if syncing is None or syncing.done():  # early writeback only; durability is export_cold's final sync
                syncing = syncer.submit(_sync_files, cold.layout.root)


_EMPTY = PL.RAW_SCHEMA.empty_table()


def _read_batch(warm, batch: list[int]) -> dict[tuple[int, int], pa.Table]:
    """The batch's rows by (stream_id, day) in file order."""
    return _by_stream_day(read_range(warm, batch[0], batch[-1] + DAY_MS, in_file_order=True))


def _by_stream_day(rows: pa.Table) -> dict[tuple[int, int], pa.Table]:
    """{(stream_id, day start): its rows as RAW_SCHEMA} of rows sorted by (stream_id, ts, key_id)
    (read_range in_file_order: each stream-day's rows already in its raw file's order)."""
    if rows.num_rows == 0:
        return {}
    sid = rows["stream_id"].to_numpy()
    ts = rows["ts"].to_numpy()
    day = ts - np.mod(ts, DAY_MS)
    raw = rows.select(PL.RAW_SCHEMA.names)
    cuts = np.flatnonzero((np.diff(sid) != 0) | (np.diff(day) != 0)) + 1
    starts, ends = np.concatenate([[0], cuts]), np.concatenate([cuts, [len(sid)]])
    return {(int(sid[s]), int(day[s])): raw.slice(s, e - s) for s, e in zip(starts.tolist(), ends.tolist())}


def _write_day(cold, tenant: str, stream: str, day: int, expect: PL.Totals, rows: pa.Table) -> int:
    """One stream-day's files from its warm rows (verified against `expect`); returns the events."""
    if rows.num_rows == 0:
        if expect.count:
            raise PL.VerifyFailed(f"warm read no events of {tenant}/{stream} on {PL.day_name(day)} "
                                  f"but counts {expect.count}")
        if cold.layout.raw_file(tenant, stream, day).exists():
            cold.remove_day(tenant, stream, day)
        return 0
    with translate("cold"):
        PL.write_day(cold.layout, tenant, stream, day, rows, expect=expect, durable=False,
                     step=lambda name: crash_point(f"export_cold.after_{name}"))
    return rows.num_rows


def drop_exported(warm, catalog, grace_ms: int) -> dict[str, Any]:
    """Delete warm's events below the settled b_cold, BATCH_DAYS days with events at a time, oldest first."""
    settled = catalog.settled(grace_ms)
    end = min(settled.b_cold, catalog.snapshot().b_cold)
    deleted, days = 0, 0
    held = sorted({day for _, _, day in warm.days_with_events(MIN_MS, end)}) if end > MIN_MS else []
    for i in range(0, len(held), BATCH_DAYS):  # days without events cost nothing; one refresh a batch
        batch = held[i:i + BATCH_DAYS]
        deleted += warm.delete_range(None, None, TimeRange(max(batch[0], MIN_MS), min(batch[-1] + DAY_MS, end)))
        days += len(batch)
        crash_point("export_cold.during_drop")
    return {"below": end, "deleted": deleted, "days": days}


def run_export_cold(ctx) -> dict[str, Any]:
    """The scheduler's job: export_cold with the context's clients (tierstore.wiring.Resources)."""
    r = ctx.resources
    return export_cold(r["redis"], r["warm"], r["cold"], r["catalog"], ctx.as_of, warm_age_ms=ctx.settings.warm_age,
                       grace_ms=ctx.settings.grace_period, progress=ctx)
