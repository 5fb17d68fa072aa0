"""`tierstore import`, the bulk path: each day placed in its tier, written in that tier's format.

Where events go (`plan`): on a FRESH instance (export_cold has never moved b_cold: b_cold =
b_archive = -inf, and warm holds no event below C once the ingest seal is raised to C and the
event log flushed) by the tier ages, relative to now:
    archive   ts <  A = the day of now - cold_age (only with an archive tier; else A = -inf)
    cold      A <= ts < C = the day of now - warm_age (never above the day of b_warm)
    warm      C <= ts < the hot boundary (b_warm, or the ingest seal if later)
    hot       newer: the ingest path (event log, dedup, hot aggregates)
and b_archive := A, b_cold := C move in the import's one transaction. Otherwise the current
boundaries place them: cold days are merged with what they hold (events whose non-null id the day
already holds are skipped); events below b_archive are merged the same way into their archived days
and packs, rewritten at versioned object keys and swapped in the one transaction of step 3
(tierstore.history_archive; refused with Trino as the engine).

Steps (`place`), all under the export_cold and archive job locks (every stream's keys interned
once first; on a fresh instance a stream's days are all written at once by tiers.day_batch, the
same files as write_day, in forked workers; archive days are staged first, in /dev/shm when it has
room, and uploaded in a background thread while the cold days are written):
 1. cold days: per stream the events are grouped by day once (a sort on the day number) and their
    key ids interned once (vectorised); each day is written by parquet_layout.write_day (raw,
    1h/1d rollups, value-sorted copies, sketch; temp files, verified, renamed), its week and month
    once per stream. Fresh: [A, C) belongs to nobody until the commit, so days are written whole
    (a rerun rewrites them) and leftover days of a crashed run below C are removed first.
    Owned days (not fresh) are visible at their rename; the day's row count before the merge is
    recorded ('<part>/pending') before the rename and the day itself right after, so a rerun
    after a crash at either point skips it (a count that moved means the merge is in the file).
 2. archive days: written the same way into a local staging folder, with the weeks and months
    ending at or below the boundary (built from the staged days and the days archived before),
    uploaded and verified a few at a time (scheduler.archive's upload; small days as packs when
    packing is on, archive_pack_below, as the archive job sends them), registered only in step 3.
    Not fresh: merged with the archived days (tierstore.history_archive), uploaded at versioned
    keys, swapped in step 3 (compare-and-swap), the replaced objects deleted after it (`sweep`).
 3. ONE PostgreSQL transaction: warm's COPY of its range with its rollups (postgres mode:
    rollup_1m/1h/1d and total_* written from numpy group-bys, tierstore.history_warm, so no
    refresh is needed; timescale mode: pre-aggregated deltas, then warm's refresh, its input
    committed with the rows, so a crash before it only delays it), the archive registry rows, the
    catalog move (one version), the ledger's 'placed' row. Warm's COPY and rollups run first, on
    their own connection while steps 1-2 are written (PostgreSQL's work overlaps ours: 10M events,
    188k -> 221k events/s); the rest waits for steps 1-2 to be durable, and a failure there rolls
    the transaction back (nothing of warm's part is visible before the commit).
The caller (tierstore.importer) then ingests the newer events (chunks recorded in the ledger;
id-less events given ids from the digest, see importer.newer_events) and records 'done'. The ledger
(table import_ledger) is keyed by the digest of the files' bytes and the tenant option: a rerun
of an import that was placed writes nothing to archive, cold or warm again.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import types
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rollups.timeutil import DAY_MS, MIN_MS, floor_to
from tiers import parquet_layout as PL
from tiers.day_batch import write_days, write_periods
from tiers.day_writer import in_threads, rebuild_periods

Advance = Callable[[int], None]
UPLOAD_THREADS = 8  # archive objects in flight: each is a round trip or three to S3
SHM = "/dev/shm"
SHM_MIN_FREE = 8 << 30  # staged archive files go to SHM only with this much room left (bytes)


@dataclass
class Placement:
    """Where the import puts events (epoch ms): archive below b_archive, cold below b_cold, warm
    below to_warm, the ingest path above. fresh: b_archive and b_cold move to these values."""

    b_archive: int
    b_cold: int
    to_warm: int
    fresh: bool
    moves: dict[str, int] = field(default_factory=dict)


def files_digest(paths: Iterable[Path], tenant: str | None) -> str:
    """SHA-256 (hex) of the files' bytes in order, and the tenant option: the ledger's key."""
    h = hashlib.sha256(json.dumps({"tenant": tenant}).encode())
    for p in paths:
        h.update(b"\0file\0")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def ledger_parts(pool, digest: str) -> dict[str, Any]:
    """{part: its stats} of this import already recorded (see the module doc)."""
    with pool.connection() as conn:
        return dict(conn.execute("SELECT part, stats FROM import_ledger WHERE digest = %s", (digest,)).fetchall())


def record(conn, digest: str, part: str, stats: Mapping[str, Any] | None = None) -> None:
    conn.execute("INSERT INTO import_ledger (digest, part, stats) VALUES (%s, %s, %s) "
                 "ON CONFLICT (digest, part) DO NOTHING", (digest, part, json.dumps(stats, default=str)))


def plan(settings, resources: Mapping[str, Any], now: int) -> Placement:
    """The placement (see the module doc); on a fresh instance raises the ingest seal to C and
    flushes the event log first, so no accepted event is left below the new b_cold."""
    from scheduler.steps import flush
    from tiers.eventlog import SEAL_KEY, raise_mark, read_mark

    warm, catalog, redis = resources["warm"], resources["catalog"], resources["redis"]
    snap = catalog.snapshot()
    seal = max(read_mark(redis, SEAL_KEY, MIN_MS), snap.b_cold)
    current = Placement(snap.b_archive, snap.b_cold, max(seal, snap.b_warm), fresh=False)
    if snap.b_cold > MIN_MS:
        return current
    c = min(floor_to(now - settings.warm_age, DAY_MS), floor_to(snap.b_warm, DAY_MS))
    a = min(floor_to(now - settings.cold_age, DAY_MS), c) if resources.get("archive") is not None else MIN_MS
    if c <= MIN_MS or warm.days_with_events(MIN_MS, c):
        return current
    raise_mark(redis, SEAL_KEY, c)
    flush(redis, warm)
    if warm.days_with_events(MIN_MS, c):  # the log held old events: they stay warm's
        return current
    seal = max(read_mark(redis, SEAL_KEY, MIN_MS), c)
    return Placement(a, c, max(seal, snap.b_warm), fresh=True,
                     moves={k: v for k, v in (("b_archive", a), ("b_cold", c)) if v > MIN_MS})


def job_locks(resources: Mapping[str, Any]):
    """The export_cold and archive job locks (no job moves data while the import writes)."""
    from tiers.locks import ARCHIVE_LOCK, job_lock_name, session_locks

    return session_locks(resources["warm"].pool, [job_lock_name("export_cold"), ARCHIVE_LOCK])


# ---- events of one stream, by day -------------------------------------------------------------

def stream_days(warm, tenant: str, events: pa.Table) -> Iterator[tuple[str, Iterator[tuple[int, pa.Table]]]]:
    """(stream, its days) for every stream in `events` (EVENT_SCHEMA); a stream's days are
    (day start, RAW_SCHEMA table of that day), oldest first, key ids interned once per stream."""
    streams = pc.unique(events["stream"]).to_pylist()
    for stream in streams:
        part = events.filter(pc.equal(events["stream"], stream)) if len(streams) > 1 else events
        yield stream, _days(warm, tenant, stream, part)


def stream_raw(warm, tenant: str, events: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """(stream, RAW_SCHEMA table of its events in file order, key ids interned once) per stream."""
    streams = pc.unique(events["stream"]).to_pylist()
    for stream in streams:
        part = events.filter(pc.equal(events["stream"], stream)) if len(streams) > 1 else events
        if part.num_rows:
            yield stream, _raw(warm, tenant, stream, part)


def _raw(warm, tenant: str, stream: str, part: pa.Table) -> pa.Table:
    sid = warm.keys.stream_id(tenant, stream, create=True)
    ids = warm.keys.key_id_array(sid, part["key"])
    return pa.table({"ts": part["ts"], "key_id": ids, "key": part["key"], "value": part["value"], "id": part["id"]})


def _days(warm, tenant: str, stream: str, part: pa.Table) -> Iterator[tuple[int, pa.Table]]:
    if part.num_rows == 0:
        return
    raw = _raw(warm, tenant, stream, part)
    ts = part["ts"].to_numpy()
    day_no = np.floor_divide(ts, DAY_MS)
    lo = int(day_no.min())
    rel = day_no - lo
    # a small integer type sorts by radix; a stable sort keeps file order inside a day
    order = np.argsort(rel.astype(np.int16 if rel.max() < 2 ** 15 else np.int64), kind="stable")
    raw = raw.take(pa.array(order))
    rel_sorted = rel[order]
    cuts = np.flatnonzero(np.diff(rel_sorted)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(rel_sorted)]])
    for s, e in zip(starts.tolist(), ends.tolist()):
        yield (lo + int(rel_sorted[s])) * DAY_MS, raw.slice(s, e - s)


def intern_keys(warm, tenant: str, events: pa.Table) -> None:
    """Every stream's keys in `events` (EVENT_SCHEMA) interned in one round trip per stream (the
    key cache then answers the archive, cold and warm parts without PostgreSQL)."""
    streams = pc.unique(events["stream"]).to_pylist()
    for stream in streams:
        part = events.filter(pc.equal(events["stream"], stream)) if len(streams) > 1 else events
        # only the distinct keys are mapped here (the cache is what is wanted, not every row's id)
        warm.keys.key_id_array(warm.keys.stream_id(tenant, stream, create=True), pc.unique(part["key"]))


class Skipped:
    """How many events an import skipped because the day they belong to already stores their id
    (archive, cold; warm counts its own): thread-safe, the days are merged in threads."""

    def __init__(self) -> None:
        self.events = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.events += n


def unseen(raw: pa.Table, old: pa.Table, skipped: Skipped | None = None) -> pa.Table:
    """The rows of `raw` whose id is null or not among `old`'s ids (the others are added to
    `skipped`)."""
    known = old["id"].drop_null()
    if not len(known):
        return raw
    new = raw.filter(pc.or_(pc.is_null(raw["id"]), pc.invert(pc.is_in(raw["id"], value_set=known))))
    if skipped is not None:
        skipped.add(raw.num_rows - new.num_rows)
    return new


# ---- cold --------------------------------------------------------------------------------------

def write_cold(cold, warm, tenant: str, events: pa.Table, place: Placement, digest: str,
               done: Mapping[str, Any], advance: Advance, skipped: Skipped | None = None) -> int:
    """Write the events (all below place.b_cold, none below place.b_archive) as cold day
    partitions, a few days at a time; returns the events stored (see the module doc, step 1);
    events whose id their day already holds are skipped and counted in `skipped`."""
    owned = not place.fresh  # unowned days (fresh) are made durable at once before the commit

    def one(tenant: str, stream: str, day: int, raw: pa.Table) -> int:
        part = f"cold/{tenant}/{stream}/{day}"
        if part in done:
            return 0
        old = cold.partitions.read_day(tenant, stream, day) if owned else None
        if owned:
            # crash safety of a merge into an owned day: the day's row count before this import
            # is committed BEFORE the rename (a 'pending' row, never overwritten), so a rerun after
            # a crash between the rename and the day's ledger row sees the file already holds the
            # merge (its count moved) and writes nothing: events without ids are never counted twice
            before = old.num_rows if old is not None else 0
            pending = (done.get(part + "/pending") or {}).get("rows_before")
            if pending is not None and before != pending:
                with warm.pool.connection() as conn:
                    record(conn, digest, part)
                return 0
            with warm.pool.connection() as conn:
                record(conn, digest, part + "/pending", {"rows_before": before})
        if old is not None:
            new = unseen(raw, old, skipped).cast(PL.RAW_SCHEMA)
            raw = pa.concat_tables([old.cast(PL.RAW_SCHEMA), new])
        PL.write_day(cold.layout, tenant, stream, day, raw, durable=owned)
        if owned:
            with warm.pool.connection() as conn:
                record(conn, digest, part)
        return raw.num_rows if old is None else new.num_rows

    stored = 0
    if place.fresh:  # nobody owns these days yet: all of a stream's days written at once (tiers.day_batch)
        for stream, raw in stream_raw(warm, tenant, events):
            written = write_days(cold.layout, tenant, stream, raw, durable=False, advance=advance)
            stored += sum(n for _, n in written)
            cold.partitions.changed(tenant, stream)
            write_periods(cold.layout, tenant, stream, [d for d, _ in written], durable=False)
            cold.partitions.changed(tenant, stream)
        return stored
    for stream, days in stream_days(warm, tenant, events):
        written = in_threads(one, ((tenant, stream, day, raw) for day, raw in days), advance)
        stored += sum(n for _, n in written)
        rebuild_periods(cold.partitions, tenant, stream, sorted(item[2] for item, _ in written), durable=owned)
    return stored


def remove_leftovers(cold, place: Placement, keep: set[tuple[str, str, int]]) -> int:
    """Fresh only: cold days below b_cold that this import does not write (left by a crashed run
    with other files; nobody owns them yet) are removed. Returns the stream-days removed."""
    removed = 0
    for tenant, stream in cold.partitions.tenants_streams():
        for day in cold.layout.days(tenant, stream):
            if day < place.b_cold and (tenant, stream, day) not in keep:
                cold.remove_day(tenant, stream, day)
                removed += 1
    return removed


# ---- archive -----------------------------------------------------------------------------------

def staging_dir(archive) -> tempfile.TemporaryDirectory:
    """A folder for staged archive partitions: in memory (/dev/shm) when it has room (S3 is the
    copy; writes and the cleanup cost no disk I/O), else the archive's staging folder."""
    try:
        st = os.statvfs(SHM)
        if st.f_bavail * st.f_frsize >= SHM_MIN_FREE:
            return tempfile.TemporaryDirectory(dir=SHM, prefix="tierstore-import-")
    except OSError:
        pass
    return archive.partitions.staging_dir()


class StagedArchive:
    """Archive partitions built in a local folder, then uploaded and verified (not registered)."""

    def __init__(self, archive, pack=None) -> None:
        self.archive = archive
        self.pack = pack  # tiers.archive_packs.PackRule: small days go as packs, as the archive job sends them
        self._dir = staging_dir(archive)
        self.layout = PL.Layout(Path(self._dir.name))
        self.days: list = []
        self.uploaded: list = []
        self.skipped = Skipped()

    def add(self, warm, tenant: str, events: pa.Table, place: Placement, advance: Advance) -> int:
        """Stage the events' days (merged with the archived day when the archive owns it)."""
        from scheduler.archive import Partition

        def one(stream: str, day: int, raw: pa.Table) -> int:
            old = None if place.fresh else self.archive.partitions.read_day(tenant, stream, day)
            if old is not None and old.num_rows:
                new = unseen(raw, old, self.skipped).cast(PL.RAW_SCHEMA)
                raw = pa.concat_tables([old.cast(PL.RAW_SCHEMA), new])
                stored = new.num_rows
            else:
                stored = raw.num_rows
            PL.write_day(self.layout, tenant, stream, day, raw, durable=False)  # staging: S3 is the copy
            return stored

        stored = 0
        if place.fresh:  # nothing archived to merge with: all of a stream's days at once (tiers.day_batch)
            for stream, raw in stream_raw(warm, tenant, events):
                written = write_days(self.layout, tenant, stream, raw, durable=False, advance=advance)
                stored += sum(n for _, n in written)
                self.days.extend(Partition(tenant, stream, "day", d) for d, _ in written)
            return stored
        for stream, days in stream_days(warm, tenant, events):
            written = in_threads(one, ((stream, day, raw) for day, raw in days), advance)
            stored += sum(n for _, n in written)
            self.days.extend(Partition(tenant, stream, "day", item[1]) for item, _ in sorted(written, key=lambda w: w[0][1]))
        return stored

    def upload(self, b_archive: int) -> dict[str, Any]:
        """Upload and verify the staged days and the weeks/months ending at or below b_archive."""
        from scheduler.archive import _periods_ending, _upload

        stats = {"partitions": 0, "days": 0, "periods": 0, "objects": 0, "bytes": 0, "events": 0}
        if not self.days:
            return stats
        periods = _periods_ending(self.days, MIN_MS, b_archive)
        source = types.SimpleNamespace(layout=self.layout)
        self.uploaded = _upload(source, self.archive, self.days, periods, stats, _NoProgress(), threads=UPLOAD_THREADS,
                                pack=self.pack)
        self.archive.sync()
        return stats

    def register(self, conn) -> None:
        for m, mobj in self.uploaded:
            self.archive.registry.register(conn, m, *mobj)

    def close(self) -> None:
        self._dir.cleanup()


class _NoProgress:
    def progress(self, fraction: float) -> None:
        pass


# ---- warm and the one transaction --------------------------------------------------------------

class _Abandoned(Exception):
    """The archive or cold part failed: the warm transaction rolls back (its error is the caller's)."""


def commit(resources: Mapping[str, Any], place: Placement, warm_parts: list[tuple[str, pa.Table]],
           gate: Future, digest: str, stats: dict[str, Any], advance: Advance) -> None:
    """ONE transaction (step 3): warm's COPY (with its rollups in postgres mode) first — run on its
    own connection while the archive and cold parts are written, so PostgreSQL's work overlaps
    theirs — then, once `gate` has its result (the staged archive or None: those parts durable), the
    archive registry rows, the catalog move and the ledger's 'placed' row, and the commit; a gate
    that failed (_Abandoned) rolls it all back. Then warm's
    refresh when warm got events and its rollups were not written here (timescale mode).
    While it waits it holds warm's refresh lock (taken by the direct rollups): a scheduled refresh
    of a running instance waits for the import's commit."""
    from tiers.sketch_store import prune_left_warm

    from tierstore.history_warm import DirectRollups

    warm, catalog = resources["warm"], resources["catalog"]
    direct = DirectRollups() if DirectRollups.applies(warm) else None  # rollups written here, no refresh
    with warm._translate(), warm.pool.connection() as conn:
        for tenant, events in warm_parts:
            for off in range(0, events.num_rows, 1_000_000):
                part = events.slice(off, 1_000_000)
                stats["warm"] += warm.insert(conn, tenant, part, record=direct.record if direct else None)
                advance(part.num_rows)
        if direct is not None:
            direct.fold(conn)
        staged = gate.result()  # raises _Abandoned: the archive or cold part failed
        if staged is not None:
            staged.register(conn)
        if place.moves:
            moved = catalog.advance(conn, **place.moves)
            stats["catalog_version"] = moved.version
            prune_left_warm(conn, place.b_cold)
        record(conn, digest, "placed", {k: v for k, v in stats.items() if k in ("archive", "cold", "warm", "to_warm")})
    if stats["warm"] and direct is None:
        warm.refresh()


def _stream_days(events: pa.Table) -> Iterator[tuple[str, int]]:
    """(stream, day start) of every stream-day holding events (epoch ms)."""
    streams = pc.unique(events["stream"]).to_pylist()
    for s in streams:
        part = events if len(streams) == 1 else events.filter(pc.equal(events["stream"], s))
        day = np.floor_divide(part["ts"].to_numpy(), DAY_MS)
        lo = int(day.min())
        for d in (np.flatnonzero(np.bincount(day - lo)) + lo).tolist():
            yield s, d * DAY_MS


def split(events: pa.Table, place: Placement) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table]:
    """(archive, cold, warm, newer) parts of `events` by the placement."""
    ts = events["ts"]
    below_a = pc.less(ts, place.b_archive)
    below_c = pc.less(ts, place.b_cold)
    below_w = pc.less(ts, place.to_warm)
    return (events.filter(below_a), events.filter(pc.and_(pc.invert(below_a), below_c)),
            events.filter(pc.and_(pc.invert(below_c), below_w)), events.filter(pc.invert(below_w)))


def place_events(resources: Mapping[str, Any], place: Placement, loaded: list[tuple[str, pa.Table]],
                 digest: str, done: Mapping[str, Any], advance: Advance, pack=None) -> dict[str, Any]:
    """Steps 1-3 of the module doc for every tenant's events below place.to_warm (`done`: the
    ledger's parts of this digest); returns stats. `pack` (tiers.archive_packs.PackRule or None):
    a fresh import's small archive days go as packs. Raises what the tiers raise (nothing is
    committed then)."""
    cold, warm, archive = resources["cold"], resources["warm"], resources.get("archive")
    stats: dict[str, Any] = {"archive": 0, "cold": 0, "warm": 0, "b_archive": place.b_archive,
                             "b_cold": place.b_cold, "to_warm": place.to_warm, "fresh": place.fresh}
    parts = [(t, split(e, place)) for t, e in loaded]
    if (not place.fresh and archive is not None and archive.partitions.rewrite_in_place
            and any(a.num_rows for _, (a, *_r) in parts)):
        from tierstore.history_archive import refuse_trino
        refuse_trino(parts, place.b_archive)  # before anything is written
    if place.fresh:
        keep = {(t, s, d) for t, (_, c, _, _) in parts if c.num_rows for s, d in _stream_days(c)}
        stats["leftovers_removed"] = remove_leftovers(cold, place, keep)
    for tenant, (a, c, w, _) in parts:  # every stream's keys interned at once (archive, cold and warm share them)
        intern_keys(warm, tenant, pa.concat_tables([a, c, w]))  # the events below to_warm, not copied
    staged = None
    if archive is not None and any(a.num_rows for _, (a, *_r) in parts):
        from tierstore.history_archive import ArchiveMerge
        staged = StagedArchive(archive, pack) if place.fresh else ArchiveMerge(archive, digest)
    warm_parts = [(t, w) for t, (_, _, w, _) in parts if w.num_rows]
    if not place.fresh:  # ids warm already holds are skipped, as cold days' are
        from tierstore.history_warm import unseen_in_warm
        kept = [(t, unseen_in_warm(warm, t, w)) for t, w in warm_parts]
        stats["duplicates"] = stats.get("duplicates", 0) + sum(w.num_rows - k.num_rows for (_, w), (_, k) in
                                                               zip(warm_parts, kept))
        warm_parts = [(t, k) for t, k in kept if k.num_rows]
    skipped = Skipped()  # cold days' ids already stored (the archive's count in staged.skipped)
    gate: Future = Future()  # the archive and cold parts durable: warm's transaction may commit
    try:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="import") as helpers:
            # warm's part of the one transaction runs while the archive and cold days are written
            committed = helpers.submit(commit, resources, place, warm_parts, gate, digest, stats, advance)
            try:
                # archive days first: their upload (S3 round trips) runs while the cold days are written
                for tenant, (old, _, _, _) in parts:
                    if old.num_rows and staged is not None:
                        stats["archive"] += (staged.add(warm, tenant, old, place, advance) if place.fresh
                                             else staged.add(warm, tenant, old, advance))
                upload = helpers.submit(staged.upload, place.b_archive) if staged is not None else None
                for tenant, (_, mid, _, _) in parts:
                    if mid.num_rows:
                        stats["cold"] += write_cold(cold, warm, tenant, mid, place, digest, done, advance, skipped)
                if any(mid.num_rows for _, (_, mid, _, _) in parts):
                    if place.fresh:
                        os.sync()  # the unowned days' files, durable at once before the commit owns them
                    cold.sync()
                if upload is not None:
                    stats["archive_upload"] = upload.result()
            except BaseException:
                gate.set_exception(_Abandoned())  # warm's transaction rolls back; the error raised is this part's
                try:
                    committed.result()
                except Exception:
                    pass
                raise
            gate.set_result(staged)
            committed.result()
        already = skipped.events + (staged.skipped.events if staged is not None else 0)
        if already:
            stats["duplicates"] = stats.get("duplicates", 0) + already
        if staged is not None and not place.fresh:  # the replaced archive objects, after the commit
            from tierstore.history_archive import sweep
            stats["archive_swept"] = sweep(archive, warm.pool, digest)
    finally:
        if staged is not None:
            staged.close()
    return stats


__all__ = ["Placement", "files_digest", "ledger_parts", "place_events", "plan", "record", "job_locks"]
