"""retention: delete archive partitions past their retention, never under legal hold, all audited.

A day partition (raw events and the rollups made from them) of stream S is past retention when it
ends at or before `as_of - retention(S)` (S's stream registry entry, else archive_retention),
floored to the day. It is deleted unless
  - an active legal hold (table legal_holds, `tierstore hold ...`) of its tenant, on its stream or
    on every stream, overlaps it (audited `kept_hold`), or
  - its manifest lacks its 1h/1d rollups: raw data with no rollups is never deleted (audited
    `kept_no_rollups`; it needs a rewrite, not a deletion).
A pack (consecutive small days archived as one partition, tiers/archive_packs.py) is decided whole:
past retention only when it ends at or before the cutoff (its last day is past), kept when a hold
overlaps any part of it. Deletion is whole partitions, so answers stay exact: every query equals the raw events minus the
deleted partitions' events. Weeks and months that hold a deleted day are rebuilt from the days
left (a held day keeps its week/month), or deleted with their last day.

Steps (one run):
  1. plan (dry_run: audit `would_delete` / `would_rebuild_period` / `kept_*` and stop there);
  2. ONE transaction: the days' registry rows -> `deleting` (ArchiveTier stops reading them), one
     `delete` audit row per partition (objects, rows, count, sum), the run's record;
  3. delete the days' objects; rebuild or delete the weeks/months holding them (audited);
  4. ONE transaction: `deleting` -> `deleted`; let the engine see it (Trino metastore sync);
  5. collect what crashed rewrites left in the bucket (scheduler/archive_gc.py: unregistered
     versioned objects older than a day, unfinished import sweeps; a dry run counts them).
A re-run first finishes partitions left `deleting` by a crash, so a crash at any point ends, after
the re-run, with exactly the planned deletions and their audit rows once each.
Crash points: retention.after_plan, after_mark, during_delete, after_delete, after_rebuild,
after_commit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from psycopg.types.json import Jsonb

from rollups.timeutil import DAY_MS, floor_to
from scheduler.faults import crash_point
from scheduler.steps import NullProgress
from tiers import parquet_layout as PL
from tiers.archive import ArchiveTier, retention_ms
from tiers.archive_manifest import Manifest
from scheduler.archive_gc import collect
from tiers.locks import ARCHIVE_LOCK, session_lock
from tiers.sketch_store import prune_range



# ---- legal holds ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hold:
    id: int
    tenant: str
    stream: str | None
    from_ms: int
    to_ms: int
    reason: str
    created_by: str
    created_at: Any
    released_at: Any = None
    released_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in self.__dict__.items()}


_HOLD_COLUMNS = "id, tenant, stream, from_ms, to_ms, reason, created_by, created_at, released_at, released_by"


class LegalHolds:
    """Legal holds in PostgreSQL (table legal_holds). Released holds stay as the record."""

    def __init__(self, pool) -> None:
        self.pool = pool

    def add(self, tenant: str, stream: str | None, from_ms: int, to_ms: int, reason: str, by: str) -> Hold:
        if to_ms <= from_ms:
            raise ValueError("a hold's end must be after its start")
        if not reason.strip():
            raise ValueError("a hold needs a reason")
        with self.pool.connection() as conn:
            row = conn.execute(f"INSERT INTO legal_holds (tenant, stream, from_ms, to_ms, reason, created_by) "
                               f"VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_HOLD_COLUMNS}",
                               (tenant, stream, from_ms, to_ms, reason, by)).fetchone()
        return Hold(*row)

    def remove(self, hold_id: int, by: str) -> Hold | None:
        """Release an active hold; None when there is no such active hold."""
        with self.pool.connection() as conn:
            row = conn.execute(f"UPDATE legal_holds SET released_at = now(), released_by = %s "
                               f"WHERE id = %s AND released_at IS NULL RETURNING {_HOLD_COLUMNS}",
                               (by, hold_id)).fetchone()
        return Hold(*row) if row else None

    def list(self, tenant: str | None = None, *, include_released: bool = False) -> list[Hold]:
        sql, params = f"SELECT {_HOLD_COLUMNS} FROM legal_holds WHERE true", []
        if tenant is not None:
            sql += " AND tenant = %s"
            params.append(tenant)
        if not include_released:
            sql += " AND released_at IS NULL"
        with self.pool.connection() as conn:
            return [Hold(*r) for r in conn.execute(sql + " ORDER BY id", params).fetchall()]

    def covering(self, tenant: str, stream: str, start: int, end: int) -> list[int]:
        """Ids of the active holds that keep [start, end) of the stream."""
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT id FROM legal_holds WHERE released_at IS NULL AND tenant = %s "
                                "AND (stream IS NULL OR stream = %s) AND from_ms < %s AND to_ms > %s ORDER BY id",
                                (tenant, stream, end, start)).fetchall()
        return [r[0] for r in rows]


# ---- the job -------------------------------------------------------------------------------------

@dataclass
class Decision:
    manifest: Manifest
    action: str       # delete | kept_hold | kept_no_rollups
    cutoff: int
    holds: list[int]
    reason: str = ""


def cutoff_for(settings, pool, tenant: str, stream: str, as_of: int) -> int:
    """Partitions ending at or before this instant are past retention (a day boundary); the
    retention is the stream's registry entry's (tiers.archive.retention_ms), else archive_retention."""
    return floor_to(as_of - retention_ms(settings, pool, tenant, stream), DAY_MS)


def retention(tier: ArchiveTier, settings, as_of: int, *, dry_run: bool = False, progress=None,
              holds: LegalHolds | None = None) -> dict[str, Any]:
    """Enforce retention on the archive as if the clock read `as_of`; see the module doc.

    Returns stats: deleted/kept counts, events and objects deleted, periods rebuilt, and (dry run)
    the plan.
    """
    # the archive job rebuilds weeks/months from archived days too: never both at once
    with session_lock(tier.pool, ARCHIVE_LOCK):
        return _retention(tier, settings, as_of, dry_run=dry_run, progress=progress or NullProgress(),
                          holds=holds or LegalHolds(tier.pool))


def _retention(tier: ArchiveTier, settings, as_of: int, *, dry_run: bool, progress, holds: LegalHolds
               ) -> dict[str, Any]:
    run_id = getattr(progress, "run_id", None)
    stats: dict[str, Any] = {"dry_run": dry_run, "deleted": 0, "kept_hold": 0, "kept_no_rollups": 0,
                             "events_deleted": 0, "objects_deleted": 0, "periods_rebuilt": 0, "periods_deleted": 0,
                             "resumed": 0}
    if not dry_run:
        stats["resumed"] = _finish_deleting(tier, as_of, run_id, stats)
    decisions = _plan(tier, settings, as_of, holds)
    crash_point("retention.after_plan")
    doomed = [d for d in decisions if d.action == "delete"]
    for d in decisions:
        stats[d.action if d.action != "delete" else "deleted"] += 1
        if d.action == "delete":
            stats["events_deleted"] += d.manifest.totals()[1]
    if dry_run:
        with tier.pool.connection() as conn:
            for d in decisions:
                _audit(conn, run_id, as_of, True, "would_delete" if d.action == "delete" else d.action, d)
            for t, s, gran, start in _periods_of(m.manifest for m in doomed):
                _audit_period(conn, run_id, as_of, True, "would_rebuild_period", t, s, gran, start, doomed)
        stats["plan"] = [{"action": d.action, "tenant": d.manifest.tenant, "stream": d.manifest.stream,
                          "day": d.manifest.name, "events": d.manifest.totals()[1], "holds": d.holds}
                         for d in decisions]
        stats["gc"] = collect(tier, dry_run=True)
        progress.progress(1.0)
        return stats
    with tier.pool.connection() as conn:
        for d in decisions:
            _audit(conn, run_id, as_of, False, d.action, d)
        tier.registry.mark(conn, [d.manifest for d in doomed], "archived", "deleting")
        for d in doomed:  # mode=approx rows of the days (their sketch files go with their objects)
            prune_range(conn, d.manifest.tenant, d.manifest.stream, d.manifest.start, d.manifest.end)
        progress.record(conn, {k: v for k, v in stats.items() if isinstance(v, (int, bool))})
    crash_point("retention.after_mark")
    progress.progress(0.3)
    if doomed:
        _finish_deleting(tier, as_of, run_id, stats)
    progress.progress(0.9)
    # what crashed rewrites left: unregistered versioned uploads, unfinished import sweeps
    stats["gc"] = collect(tier)
    progress.progress(1.0)
    return stats


def _plan(tier: ArchiveTier, settings, as_of: int, holds: LegalHolds) -> list[Decision]:
    out = []
    for tenant, stream in tier.registry.tenants_streams():
        cutoff = cutoff_for(settings, tier.pool, tenant, stream, as_of)
        for day in tier.registry.starts(tenant, stream, "day"):
            if day + DAY_MS > cutoff:
                break
            m = tier.registry.manifest(tenant, stream, "day", day)
            held = holds.covering(tenant, stream, m.start, m.end)
            if held:
                out.append(Decision(m, "kept_hold", cutoff, held, "under legal hold"))
            elif m.object("rollup_1h") is None or m.object("rollup_1d") is None:
                out.append(Decision(m, "kept_no_rollups", cutoff, [], "raw events without rollups are never deleted"))
            else:
                out.append(Decision(m, "delete", cutoff, []))
        for m in tier.registry.packs(tenant, stream):  # packed days: whole packs, once all is past
            if m.end > cutoff:
                continue
            held = holds.covering(tenant, stream, m.start, m.end)
            out.append(Decision(m, "kept_hold", cutoff, held, "under legal hold") if held
                       else Decision(m, "delete", cutoff, []))
    return out


def _finish_deleting(tier: ArchiveTier, as_of: int, run_id, stats: dict[str, Any]) -> int:
    """Delete the objects of every day marked `deleting`, fix their weeks/months, mark them deleted."""
    doomed = tier.registry.deleting_days()
    if not doomed:
        return 0
    for i, (m, key) in enumerate(doomed):
        stats["objects_deleted"] += tier.partitions.delete_objects(m, key)
        if i == 0:
            crash_point("retention.during_delete")
    crash_point("retention.after_delete")
    for tenant, stream, gran, start in _periods_of(m for m, _ in doomed):
        _fix_period(tier, as_of, run_id, tenant, stream, gran, start, stats)
    crash_point("retention.after_rebuild")
    with tier.pool.connection() as conn:
        tier.registry.mark(conn, [m for m, _ in doomed], "deleting", "deleted")
    crash_point("retention.after_commit")
    tier.sync()
    return len(doomed)


def _periods_of(manifests: Iterable[Manifest]) -> list[tuple[str, str, Any, int]]:
    keys = {(m.tenant, m.stream, g.name, g.floor(d)) for m in manifests for d in (m.day_starts() or [m.start])
            for g in PL.PERIOD_GRANULARITIES}
    return [(t, s, PL.PERIODS[PL.PERIOD_OF[g]], start) for t, s, g, start in sorted(keys)]


def _fix_period(tier: ArchiveTier, as_of: int, run_id, tenant: str, stream: str, gran, start: int,
                stats: dict[str, Any]) -> None:
    """Rebuild a week/month from the days still archived, or delete it when none is left."""
    period = PL.PERIOD_OF[gran.name]
    if tier.registry.status(tenant, stream, period, start) in (None, "deleted"):
        return  # never held whole (it ends above b_archive), or deleted already
    cutoff = floor_to(as_of, DAY_MS)
    rebuilt = tier.partitions.publish_period(
        tenant, stream, gran, start, also=lambda conn, m: _audit_manifest(
            conn, run_id, as_of, False, "rebuilt_period", m, cutoff, [], "rebuilt from the days left after retention"))
    if rebuilt is not None:
        stats["periods_rebuilt"] += 1
        return
    old = tier.registry.manifest(tenant, stream, period, start, status=None)
    stats["objects_deleted"] += tier.partitions.delete_objects(old)
    with tier.pool.connection() as conn:
        _audit_manifest(conn, run_id, as_of, False, "delete", old, cutoff, [], "every day of the period was deleted")
        tier.registry.mark(conn, [old], None, "deleted")
    stats["periods_deleted"] += 1


def _audit(conn, run_id, as_of: int, dry_run: bool, action: str, d: Decision) -> None:
    _audit_manifest(conn, run_id, as_of, dry_run, action, d.manifest, d.cutoff, d.holds, d.reason)


def _audit_manifest(conn, run_id, as_of: int, dry_run: bool, action: str, m: Manifest, cutoff: int,
                    hold_ids: list[int], reason: str) -> None:
    rows, count, total = m.totals()
    objects = [{"key": o["key"], "sha256": o["sha256"], "rows": o["rows"]} for o in m.objects]
    conn.execute("INSERT INTO retention_audit (run_id, as_of, dry_run, action, tenant, stream, period, start_ms, "
                 "end_ms, cutoff_ms, raw_rows, event_count, value_sum, objects, hold_ids, reason) "
                 "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                 (run_id, as_of, dry_run, action, m.tenant, m.stream, m.period, m.start, m.end, cutoff, rows, count,
                  total, Jsonb(objects), hold_ids, reason))


def _audit_period(conn, run_id, as_of, dry_run, action, tenant, stream, gran, start, doomed) -> None:
    m = Manifest(tenant, stream, PL.PERIOD_OF[gran.name], start)
    days = sorted(d.manifest.name for d in doomed if d.manifest.tenant == tenant and d.manifest.stream == stream
                  and start <= d.manifest.start < gran.next(start))
    _audit_manifest(conn, run_id, as_of, dry_run, action, m, floor_to(as_of, DAY_MS), [],
                    "would drop days " + ", ".join(days))


def audit_log(pool, tenant: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest audit rows (for the CLI and tests)."""
    sql, params = ("SELECT id, at, run_id, as_of, dry_run, action, tenant, stream, period, start_ms, end_ms, "
                   "cutoff_ms, raw_rows, event_count, value_sum, objects, hold_ids, reason FROM retention_audit"), []
    if tenant is not None:
        sql += " WHERE tenant = %s"
        params.append(tenant)
    with pool.connection() as conn:
        cur = conn.execute(sql + " ORDER BY id DESC LIMIT %s", (*params, limit))
        names = [d.name for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


# ---- the scheduler's job -----------------------------------------------------------------------

def run_retention(ctx) -> dict[str, Any]:
    return retention(ctx.resources["archive"], ctx.settings, ctx.as_of, progress=ctx)


__all__ = ["retention", "LegalHolds", "Hold", "cutoff_for", "audit_log", "run_retention"]
