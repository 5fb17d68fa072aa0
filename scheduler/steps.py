"""The migration steps of the hot -> warm path, as plain functions (jobs and tests call them).

flush       event log (Redis Stream, consumer group) -> warm raw events, exactly once
refresh     warm rollups from the dirty buckets
expire_hot  advance b_warm once warm's rollups cover it, then trim the hot tier after the grace

Each step is idempotent and resumable: run it again after a crash at any point (scheduler.faults)
and the result is as if it had run once.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Protocol

import psycopg
import pyarrow as pa
from redis.exceptions import ResponseError

from rollups.errors import Conflict
from rollups.timeutil import DAY_MS, MIN_MS, MINUTE_MS, TimeRange, floor_to, now_ms
from scheduler.faults import crash_point
from tiers.catalog_pg import PgCatalog
from tiers.eventlog import FLUSH_GROUP, HOT_FLOOR_KEY, STREAM_KEY, decode_entry, raise_mark
from tiers.warm import WarmTier

FLUSH_CONSUMER = "flusher"
EntryId = tuple[int, int]


class Report(Protocol):
    """How a step reports to the run that executes it (scheduler.runner.JobContext)."""

    def progress(self, fraction: float) -> None: ...

    def record(self, conn: psycopg.Connection, stats: dict[str, Any]) -> None:
        """Write stats into the run's record inside `conn`'s open transaction."""


class NullReport:
    """The report of a step called outside the job runner (tests, the CLI): records nothing."""

    run_id = None

    def progress(self, fraction: float) -> None:
        pass

    def record(self, conn: psycopg.Connection, stats: dict[str, Any]) -> None:
        pass


class NotCovered(Conflict):
    """expire_hot refused to move b_warm: warm's rollups do not cover the target yet."""

    code = "warm_not_covered"


# ---- flush ---------------------------------------------------------------------------------

def flush(redis, warm: WarmTier, *, batch_entries: int = 256, report: Report | None = None) -> dict[str, Any]:
    """Copy every entry logged before this call into warm's raw events, exactly once.

    Per chunk of entries: COPY the events and write the checkpoint (the last entry id applied) in
    one transaction, commit, then XACK and trim the log. Entries at or below the checkpoint
    (a crash between commit and XACK) are acknowledged without inserting; entries left pending
    by a crashed consumer are claimed and re-read first.
    """
    report = report or NullReport()
    _ensure_group(redis)
    stop_at = _entry_id(redis.xinfo_stream(STREAM_KEY)["last-generated-id"])
    claimed = _claim_pending(redis)
    checkpoint = read_checkpoint(warm)
    backlog = max(1, redis.xlen(STREAM_KEY))
    stats: dict[str, Any] = {"entries": 0, "events": 0, "skipped_entries": 0, "claimed_entries": claimed,
                             "oldest_entry_age_ms": None}
    source = "0"  # our own pending entries first (a crashed run's, or claimed ones), then new ones
    while True:
        reply = redis.xreadgroup(FLUSH_GROUP, FLUSH_CONSUMER, {STREAM_KEY: source}, count=batch_entries)
        entries = reply[0][1] if reply else []
        if not entries:
            if source == "0":
                source = ">"
                continue
            break
        crash_point("flush.after_read")
        if stats["oldest_entry_age_ms"] is None:
            stats["oldest_entry_age_ms"] = max(0, now_ms() - _entry_id(entries[0][0])[0])
        checkpoint = _apply(redis, warm, entries, checkpoint, stats)
        report.progress(min(1.0, (stats["entries"] + stats["skipped_entries"]) / backlog))
        if source == ">" and _entry_id(entries[-1][0]) >= stop_at:
            break
    stats["checkpoint"] = _format_id(checkpoint) if checkpoint else None
    return stats


def _apply(redis, warm: WarmTier, entries: list, checkpoint: EntryId | None, stats: dict) -> EntryId | None:
    ids = [_entry_id(raw_id) for raw_id, _ in entries]
    unapplied = [(eid, fields) for eid, (_, fields) in zip(ids, entries) if checkpoint is None or eid > checkpoint]
    fresh = [(eid, fields) for eid, fields in unapplied if fields]
    stats["skipped_entries"] += len(entries) - len(unapplied)
    # pending entries whose data was trimmed away (only by hand: flush trims behind its checkpoint)
    stats["missing_entries"] = stats.get("missing_entries", 0) + len(unapplied) - len(fresh)
    if fresh:
        by_tenant: dict[str, list[pa.Table]] = defaultdict(list)
        for _, fields in fresh:
            tenant, events = decode_entry(fields)
            by_tenant[tenant].append(events)
        with warm.pool.connection() as conn:
            for tenant, tables in by_tenant.items():
                stats["events"] += warm.insert(conn, tenant, pa.concat_tables(tables))
            crash_point("flush.after_copy")
            checkpoint = fresh[-1][0]
            _write_checkpoint(conn, checkpoint)
            crash_point("flush.before_commit")
        crash_point("flush.after_commit")
        stats["entries"] += len(fresh)
    redis.xack(STREAM_KEY, FLUSH_GROUP, *[_format_id(i) for i in ids])
    crash_point("flush.after_ack")
    last = max(ids)
    redis.xtrim(STREAM_KEY, minid=_format_id((last[0], last[1] + 1)), approximate=False)
    crash_point("flush.after_trim")
    return checkpoint


def _ensure_group(redis) -> None:
    try:
        redis.xgroup_create(STREAM_KEY, FLUSH_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _claim_pending(redis) -> int:
    """Move every pending entry of other consumers to ours (only one flush runs at a time: the
    job holds an advisory lock, so any other consumer's pending entries belong to a dead run)."""
    claimed, start = 0, "0-0"
    while True:
        # (redis-py drops the cursor from JUSTID replies, so take the entries)
        reply = redis.xautoclaim(STREAM_KEY, FLUSH_GROUP, FLUSH_CONSUMER, min_idle_time=0, start_id=start, count=1000)
        start = reply[0]
        claimed += len(reply[1])
        if _entry_id(start) == (0, 0):
            return claimed


def read_checkpoint(warm: WarmTier) -> EntryId | None:
    """The last log entry whose events are committed in warm."""
    with warm.pool.connection() as conn:
        row = conn.execute("SELECT entry_ms, entry_seq FROM flush_checkpoint WHERE log = %s",
                           (STREAM_KEY,)).fetchone()
    return (row[0], row[1]) if row else None


def _write_checkpoint(conn: psycopg.Connection, entry: EntryId) -> None:
    conn.execute("INSERT INTO flush_checkpoint (log, entry_ms, entry_seq) VALUES (%s, %s, %s) "
                 "ON CONFLICT (log) DO UPDATE SET entry_ms = excluded.entry_ms, entry_seq = excluded.entry_seq, "
                 "updated_at = now()", (STREAM_KEY, *entry))


def _entry_id(raw: bytes | str) -> EntryId:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _format_id(entry: EntryId) -> str:
    return f"{entry[0]}-{entry[1]}"


def flush_lag_seconds(redis) -> float:
    """Age of the oldest entry not yet flushed (the log is trimmed behind the flush), 0 if none."""
    first = redis.xrange(STREAM_KEY, count=1)
    return max(0.0, (now_ms() - _entry_id(first[0][0])[0]) / 1000) if first else 0.0


# ---- refresh -------------------------------------------------------------------------------

def refresh(warm: WarmTier, as_of: int | None = None, *, report: Report | None = None) -> dict[str, Any]:
    """Recompute warm's rollups for every bucket changed since the last refresh.

    `as_of` is recorded only: rollups always catch up with everything committed (events ahead of
    as_of included), so a run with any as_of leaves them exact.
    """
    stats = warm.refresh(step=lambda stage: crash_point(f"refresh.after_{stage}"))
    return {**stats, "as_of": as_of}


def compress_warm(warm: WarmTier, catalog: PgCatalog, *, margin_ms: int = DAY_MS) -> dict[str, Any]:
    """timescale mode: compress raw chunks wholly older than b_warm - margin (late events that far
    back are rare; they still land, in the compressed chunk)."""
    before = catalog.snapshot().b_warm - margin_ms
    return {"compressed_chunks": warm.compress(before), "compressed_before": before}


# ---- expire_hot ----------------------------------------------------------------------------

def expire_hot(redis, hot, warm: WarmTier, catalog: PgCatalog, as_of: int, *, hot_age_ms: int, grace_ms: int,
               report: Report | None = None, attempts: int = 3) -> dict[str, Any]:
    """Hand [b_warm, floor_to_minute(as_of - hot_age)) from hot to warm.

    1. raise the hot floor to the target (ingest stops aggregating older events in hot; they
       still reach warm through the log); 2. flush what is logged; 3. refresh the rollups;
    4. in one transaction: check no dirty bucket lies below the target (the rollups cover it),
       advance b_warm, record the run; 5. trim hot below what every snapshot a query may still
       hold gives to warm (catalog.settled(grace)), and below b_warm - grace. This trim is how hot
       data leaves Redis: its keys' TTL is only a far safety net (tiers/hot_expiry.py).
    `hot` is any object with delete_range (None: no trimming). Raises NotCovered when late events
    keep arriving below the target faster than `attempts` refreshes catch up.
    """
    report = report or NullReport()
    target = floor_to(as_of - hot_age_ms, MINUTE_MS)
    before = catalog.snapshot()
    stats: dict[str, Any] = {"target": target, "b_warm_before": before.b_warm, "moved": False}
    # ingest stops aggregating in hot what hot no longer owns (at least below b_warm)
    raise_mark(redis, HOT_FLOOR_KEY, max(target, before.b_warm))
    if target > before.b_warm:
        crash_point("expire_hot.after_floor")
        stats["flush"] = flush(redis, warm)
        crash_point("expire_hot.after_flush")
        report.progress(0.4)
        stats["version"] = _advance_when_covered(warm, catalog, target, stats, report, attempts)
        stats["moved"] = True
        crash_point("expire_hot.after_advance")
    report.progress(0.8)
    stats["trimmed"] = _trim_hot(hot, catalog, grace_ms)
    crash_point("expire_hot.after_trim")
    return stats


def _advance_when_covered(warm: WarmTier, catalog: PgCatalog, target: int, stats: dict, report: Report,
                          attempts: int) -> int:
    for _ in range(attempts):
        stats["refresh"] = warm.refresh()
        crash_point("expire_hot.after_refresh")
        with warm.pool.connection() as conn:
            if warm.dirty_before(conn, target):
                continue  # late events flushed meanwhile: refresh again
            snap = catalog.advance(conn, b_warm=target)
            report.record(conn, {k: v for k, v in stats.items() if k != "flush"} | {"version": snap.version})
            crash_point("expire_hot.before_commit")
        return snap.version
    raise NotCovered(f"warm's rollups do not cover b_warm={target} after {attempts} refreshes; "
                     f"late events keep arriving below it. b_warm was not moved.")


def _trim_hot(hot, catalog: PgCatalog, grace_ms: int) -> dict[str, Any] | None:
    if hot is None:
        return None
    current, settled = catalog.snapshot(), catalog.settled(grace_ms)
    end = floor_to(min(settled.b_warm, current.b_warm - grace_ms), MINUTE_MS)
    if end <= MIN_MS:
        return {"before": end, "deleted": 0}
    return {"before": end, "deleted": hot.delete_range(None, None, TimeRange(MIN_MS, end))}

