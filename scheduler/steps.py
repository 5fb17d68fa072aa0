"""The migration steps of the hot -> warm path, as plain functions (jobs and tests call them).

flush       event log (Redis Stream, consumer group) -> warm raw events, exactly once
refresh     warm rollups from the dirty buckets
expire_hot  advance b_warm once warm's rollups cover it, then trim the hot tier after the grace

Each step is idempotent and resumable: run it again after a crash at any point (scheduler.faults)
and the result is as if it had run once.
"""
from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from typing import Any, Callable, Protocol

import psycopg
import pyarrow as pa

from rollups.errors import Conflict
from rollups.timeutil import DAY_MS, MIN_MS, MINUTE_MS, TimeRange, floor_to, now_ms
from scheduler.faults import crash_point
from tiers.catalog import b_warm_target
from tiers.catalog_pg import PgCatalog, b_warm_in
from tiers.deadletters import DeadLetterStore, Refusal, is_refusal
from tiers.eventlog import (STREAM_KEY, EntryId, EventLog, EventLogs, decode_entry, entry_id, format_id,
                            read_flush_checkpoints)
from tiers.locks import WARM_REFRESH_LOCK, xact_lock
from tiers.warm import WarmTier


class Progress(Protocol):
    """How a step reports to the run that executes it (scheduler.runner.JobContext)."""

    def progress(self, fraction: float) -> None: ...

    def record(self, conn: psycopg.Connection, stats: dict[str, Any]) -> None:
        """Write stats into the run's record inside `conn`'s open transaction."""


class NullProgress:
    """The progress of a step called outside the job runner (tests, the CLI): records nothing."""

    run_id = None

    def progress(self, fraction: float) -> None:
        pass

    def record(self, conn: psycopg.Connection, stats: dict[str, Any]) -> None:
        pass


class NotCovered(Conflict):
    """expire_hot refused to move b_warm: warm's rollups do not cover the target yet."""

    code = "warm_not_covered"


# ---- flush ---------------------------------------------------------------------------------

def flush(redis, warm: WarmTier, *, batch_entries: int = 256, progress: Progress | None = None) -> dict[str, Any]:
    """Copy every entry logged before this call into warm's raw events, exactly once.

    Per chunk of entries: COPY the events and write the checkpoint (the last entry id applied) in
    one transaction, commit, then XACK and trim the log. Entries at or below the checkpoint
    (a crash between commit and XACK) are acknowledged without inserting; entries left pending
    by a crashed consumer are claimed and re-read first.
    Events warm refuses (a data error: tiers.deadletters.is_refusal) are isolated by bisection,
    written to the dead-letter store before the commit, and the rest lands; a transient error
    (PostgreSQL down) fails the run, nothing is dead-lettered, and the next run retries.
    Every log (tiers.eventlog.EventLogs: the former single log and one per stream, registered
    before their first entry) is flushed in turn, each with its own checkpoint; logs holding no
    entry are skipped (the flush trims only after committing and acknowledging).
    """
    progress = progress or NullProgress()
    lengths = {key: n for key, n in EventLogs(redis).lengths().items() if n}
    checkpoints = read_checkpoint(warm)
    backlog = max(1, sum(lengths.values()))
    stats: dict[str, Any] = {"entries": 0, "events": 0, "skipped_entries": 0, "claimed_entries": 0,
                             "oldest_entry_age_ms": None, "logs": len(lengths)}
    for key in lengths:
        log = EventLog(redis, key=key)
        checkpoint = _flush_log(log, warm, checkpoints.get(key), stats, batch_entries, progress, backlog)
        if key == STREAM_KEY:
            stats["checkpoint"] = format_id(checkpoint) if checkpoint else None
    stats.setdefault("checkpoint", None)
    return stats


def _flush_log(log: EventLog, warm: WarmTier, checkpoint: EntryId | None, stats: dict, batch_entries: int,
               progress: Progress, backlog: int) -> EntryId | None:
    """Flush one log (flush's docstring); returns its checkpoint."""
    log.ensure_group()
    stop_at = log.last_id()
    stats["claimed_entries"] += log.claim_pending()
    source = "0"  # our own pending entries first (a crashed run's, or claimed ones), then new ones
    while True:
        entries = log.read_group(source, batch_entries)
        if not entries:
            if source == "0":
                source = ">"
                continue
            break
        crash_point("flush.after_read")
        age = max(0, now_ms() - entry_id(entries[0][0])[0])
        stats["oldest_entry_age_ms"] = max(age, stats["oldest_entry_age_ms"] or 0)
        checkpoint = _apply(log, warm, entries, checkpoint, stats, retried=source == "0")
        progress.progress(min(1.0, (stats["entries"] + stats["skipped_entries"]) / backlog))
        if source == ">" and entry_id(entries[-1][0]) >= stop_at:
            break
    return checkpoint


def _apply(log: EventLog, warm: WarmTier, entries: list, checkpoint: EntryId | None, stats: dict, *,
           retried: bool = False) -> EntryId | None:
    ids = [entry_id(raw_id) for raw_id, _ in entries]
    unapplied = [(eid, fields) for eid, (_, fields) in zip(ids, entries) if checkpoint is None or eid > checkpoint]
    fresh = [(eid, fields) for eid, fields in unapplied if fields]
    stats["skipped_entries"] += len(entries) - len(unapplied)
    # pending entries whose data was trimmed away (only by hand: flush trims behind its checkpoint)
    stats["missing_entries"] = stats.get("missing_entries", 0) + len(unapplied) - len(fresh)
    if fresh:
        decoded = [(eid, *decode_entry(fields)) for eid, fields in fresh]
        with warm.pool.connection() as conn, conn.transaction():
            refused = _insert_isolating(conn, warm, decoded, stats)
            crash_point("flush.after_copy")
            _dead_letter(log.redis, decoded, refused, retried, stats, per_stream=log.key != STREAM_KEY)
            checkpoint = fresh[-1][0]
            log.write_checkpoint(conn, checkpoint)
            crash_point("flush.before_commit")
        crash_point("flush.after_commit")
        stats["entries"] += len(fresh)
    log.ack_and_trim(ids, after_ack=lambda: crash_point("flush.after_ack"))
    crash_point("flush.after_trim")
    return checkpoint


def _insert_isolating(conn: psycopg.Connection, warm: WarmTier, decoded: list[tuple[EntryId, str, pa.Table]],
                      stats: dict) -> dict[int, list[Refusal]]:
    """Insert every entry's events (per tenant, in the caller's transaction); events warm refuses
    (tiers.deadletters.is_refusal) are left out, found by bisection under savepoints.
    Returns position in `decoded` -> its refused rows. Any other error propagates (the flush fails
    and retries later: a server down is never a reason to dead-letter)."""
    by_tenant: dict[str, list[int]] = defaultdict(list)
    for pos, (_, tenant, _events) in enumerate(decoded):
        by_tenant[tenant].append(pos)
    refused: dict[int, list[Refusal]] = defaultdict(list)
    for tenant, positions in by_tenant.items():
        tables = [decoded[p][2] for p in positions]
        starts = list(itertools.accumulate((t.num_rows for t in tables), initial=0))

        def locate(offset: int, positions=positions, starts=starts) -> tuple[int, int]:
            i = bisect.bisect_right(starts, offset) - 1
            return positions[i], offset - starts[i]

        stats["events"] += _insert_or_bisect(conn, warm, tenant, pa.concat_tables(tables), 0, locate, refused)
    return refused


def _insert_or_bisect(conn: psycopg.Connection, warm: WarmTier, tenant: str, events: pa.Table, offset: int,
                      locate: Callable[[int], tuple[int, int]], refused: dict[int, list[Refusal]]) -> int:
    try:
        with conn.transaction():  # a savepoint: a refusal undoes only this part
            return warm.insert(conn, tenant, events)
    except Exception as exc:  # noqa: BLE001  (is_refusal decides; anything else is re-raised)
        if not is_refusal(exc):
            raise
        if events.num_rows == 1:
            pos, row = locate(offset)
            refused[pos].append(Refusal(row, f"{type(exc).__name__}: {exc}"))
            return 0
    mid = events.num_rows // 2
    return (_insert_or_bisect(conn, warm, tenant, events.slice(0, mid), offset, locate, refused)
            + _insert_or_bisect(conn, warm, tenant, events.slice(mid), offset + mid, locate, refused))


def _dead_letter(redis, decoded: list[tuple[EntryId, str, pa.Table]], refused: dict[int, list[Refusal]],
                 retried: bool, stats: dict, per_stream: bool = False) -> None:
    """Write the refused events to the dead-letter store BEFORE the checkpoint commits. Entries
    re-read after a crash (`retried`) get their dead letters rewritten to exactly this run's
    refusals, so a re-run never leaves a dead letter for an event that now landed in warm."""
    if not refused and not retried:
        return
    if refused:
        crash_point("flush.after_isolate")
    store = DeadLetterStore(redis)
    for pos, (eid, tenant, events) in enumerate(decoded):
        if pos in refused or retried:
            if per_stream and not events.num_rows:
                continue  # nothing of it was ever refused; its entry id may be another log's
            scope = events["stream"][0].as_py() if per_stream else None
            stats["deadletters"] = stats.get("deadletters", 0) + store.put_entry(tenant, eid, events,
                                                                               refused.get(pos, ()), scope)
    stats["deadlettered_events"] = stats.get("deadlettered_events", 0) + sum(len(r) for r in refused.values())
    crash_point("flush.after_deadletter")


def read_checkpoint(warm: WarmTier) -> dict[str, EntryId]:
    """log key -> the last entry of that log whose events are committed in warm."""
    with warm.pool.connection() as conn:
        return read_flush_checkpoints(conn)


def flush_lag_seconds(redis) -> float:
    """Age of the oldest entry not yet flushed (the logs are trimmed behind the flush), 0 if none."""
    return EventLogs(redis).backlog()[1]


# ---- refresh -------------------------------------------------------------------------------

def refresh(warm: WarmTier, as_of: int | None = None, *, progress: Progress | None = None,
            defer_hot: bool = False) -> dict[str, Any]:
    """Recompute warm's rollups for every bucket changed since the last refresh.

    `as_of` is recorded only: rollups always catch up with everything committed (events ahead of
    as_of included), so a run with any as_of leaves them exact. `defer_hot` (the scheduled runs):
    1h/1d buckets ending after b_warm (read in the refresh's snapshot) are left stale until
    expire_hot hands them to warm (WarmTier.refresh's defer_from); rollup_1m is always complete.
    """
    stats = warm.refresh(step=lambda stage: crash_point(f"refresh.after_{stage}"),
                         defer_from=b_warm_in if defer_hot else None)
    return {**stats, "as_of": as_of}


def compress_warm(warm: WarmTier, catalog: PgCatalog, *, margin_ms: int = DAY_MS) -> dict[str, Any]:
    """timescale mode: compress raw chunks wholly older than b_warm - margin (late events that far
    back are rare; they still land, in the compressed chunk)."""
    before = catalog.snapshot().b_warm - margin_ms
    return {"compressed_chunks": warm.compress(before), "compressed_before": before}


# ---- expire_hot ----------------------------------------------------------------------------

def expire_hot(redis, hot, warm: WarmTier, catalog: PgCatalog, as_of: int, *, hot_age_ms: int, grace_ms: int,
               progress: Progress | None = None, attempts: int = 3) -> dict[str, Any]:
    """Hand [b_warm, b_warm_target(as_of, hot_age)) from hot to warm: as_of - hot_age floored to
    the handover grid (tiers.catalog.handover_step: whole hours when hot_age >= 12 h).

    1. raise the hot floor to the target (ingest stops aggregating older events in hot; they
       still reach warm through the log); 2. flush what is logged; 3. refresh the rollups;
    4. in one transaction: check no dirty bucket lies below the target (the rollups cover it),
       advance b_warm, record the run; 5. trim hot below what every snapshot a query may still
       hold gives to warm (catalog.settled(grace)), and below b_warm - grace. This trim is how hot
       data leaves Redis: its keys' TTL is only a far safety net (tiers/hot_expiry.py).
    `hot` is any object with delete_range (None: no trimming). Raises NotCovered when late events
    keep arriving below the target faster than `attempts` refreshes catch up.
    """
    progress = progress or NullProgress()
    target = b_warm_target(as_of, hot_age_ms)
    before = catalog.snapshot()
    stats: dict[str, Any] = {"target": target, "b_warm_before": before.b_warm, "moved": False}
    # ingest stops aggregating in hot what hot no longer owns (at least below b_warm)
    EventLog(redis).raise_hot_floor(max(target, before.b_warm))
    if target > before.b_warm:
        crash_point("expire_hot.after_floor")
        stats["flush"] = flush(redis, warm)
        crash_point("expire_hot.after_flush")
        progress.progress(0.4)
        stats["version"] = _advance_when_covered(warm, catalog, target, stats, progress, attempts)
        stats["moved"] = True
        crash_point("expire_hot.after_advance")
    progress.progress(0.8)
    stats["trimmed"] = _trim_hot(hot, catalog, grace_ms)
    crash_point("expire_hot.after_trim")
    return stats


def _advance_when_covered(warm: WarmTier, catalog: PgCatalog, target: int, stats: dict, progress: Progress,
                          attempts: int) -> int:
    for _ in range(attempts):
        # everything below the target folded (stale hours and days ending there recomputed);
        # what lies above may stay deferred, as in the scheduled refreshes
        stats["refresh"] = warm.refresh(defer_from=target)
        crash_point("expire_hot.after_refresh")
        with warm.pool.connection() as conn:
            # under the refresh lock: a refresh that read the old b_warm (and left buckets below
            # the target stale) has committed, and the next one reads the new b_warm
            xact_lock(conn, WARM_REFRESH_LOCK)
            if warm.dirty_before(conn, target):
                continue  # late events flushed meanwhile: refresh again
            snap = catalog.advance(conn, b_warm=target)
            progress.record(conn, {k: v for k, v in stats.items() if k != "flush"} | {"version": snap.version})
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

