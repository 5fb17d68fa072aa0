"""`tierstore import` into an archive that already holds data: merging history into archived days.

Events below b_archive of an instance that is not fresh (tierstore.history_import) are merged
into the archived partitions of their days as cold's owned-day merge does for cold: per stream,
per day, events whose non-null id the day already holds are skipped, the rest appended, and the
day written whole again (raw events, 1h/1d rollups, value-sorted copies, sketch, stream totals:
tiers.parquet_layout.write_day into a local staging folder). A day inside an archived pack
(tiers.archive_packs; a day of the pack's span the pack does not hold yet included) rewrites the
whole pack as a new pack with the same start and end. The weeks and months over the touched days
that end at or below b_archive are rebuilt from the new daily rollups and the archived ones.
A day whose events are all already held is not rewritten.

Every object goes to a versioned key (tiers.archive_rewrite: one version per import run) and is
verified before the import's ONE transaction (tierstore.history_import.commit) swaps the registry
rows — each a compare-and-swap on the manifest SHA-256 the merge was built from, so a concurrent
delete or retention is never overwritten (the import fails, nothing committed, rerun it) — and
records the replaced partitions' keys in the ledger (part "archive/garbage"). After the commit
those objects are deleted (`sweep`; "archive/swept" recorded); a rerun after a crash between
the commit and the sweep sweeps them (tierstore.importer). Crash safety and idempotence: nothing
is visible before the commit, and the commit records the ledger's 'placed' row with the swap, so
a rerun either rebuilds the merge from the unchanged registry (crash before) or skips the placing
altogether (crash after): an event without an id is never counted twice. Uploads of a run that
crashed before its commit stay as unregistered garbage at keys nobody names.

Object Lock: the new objects get their retention; the replaced ones cannot be deleted and are
left (counted as kept). Trino (reads partitions by folder, would read old and new files alike):
refused (ImportRefused) before anything is written.
"""
from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rollups.timeutil import DAY_MS, G1D, format_time
from tiers import archive_rewrite as R
from tiers import parquet_layout as PL
from tiers.archive_manifest import Manifest
from tiers.archive_packs import read_table as read_pack
from tiers.archive_packs import upload_pack, write_pack

Advance = Callable[[int], None]
UPLOAD_THREADS = 8
GARBAGE, SWEPT = "archive/garbage", "archive/swept"


def refuse_trino(parts, b_archive: int) -> None:
    """ImportRefused: with Trino reading the archive, archived days are not rewritten (see module doc)."""
    from tierstore.importer import ImportRefused

    old = [a for _, (a, *_r) in parts if a.num_rows]
    n = sum(a.num_rows for a in old)
    raise ImportRefused(
        f"{n} event(s) are older than the archive boundary {format_time(b_archive)}, and merging them into "
        "archived days is not supported with cold_engine trino (Trino reads an archived partition's whole "
        "folder, so a rewritten partition's old and new objects would both be read); nothing was written. "
        "Run the import with cold_engine duckdb, or import only events at or after "
        f"{format_time(b_archive)}.",
        [{"field": "ts", "problem": f"before the archive boundary {format_time(b_archive)}", "count": n}])


def _row(conn, tenant: str, stream: str, period: str, start: int) -> tuple[Manifest, str] | None:
    row = conn.execute("SELECT manifest, manifest_sha256 FROM archive_partitions WHERE tenant = %s AND stream = %s "
                       "AND period = %s AND start_ms = %s AND status = 'archived'",
                       (tenant, stream, period, start)).fetchone()
    return (Manifest.from_dict(row[0]), row[1]) if row else None


def _unseen(raw: pa.Table, old: pa.Table | None, skipped=None) -> pa.Table:
    from tierstore.history_import import unseen

    return raw if old is None or old.num_rows == 0 else unseen(raw, old, skipped)


def _day_of(t: pa.Table, day: int) -> pa.Table:
    return t.filter(pc.and_(pc.greater_equal(t["ts"], day), pc.less(t["ts"], day + DAY_MS)))


class ArchiveMerge:
    """The archive part of one import into an instance whose archive may hold data (the module doc):
    `add` stages, `upload` uploads and verifies, `register` swaps in the commit, `sweep` after it."""

    def __init__(self, archive, digest: str) -> None:
        from tierstore.history_import import staging_dir

        self.archive = archive
        self.parts = archive.partitions
        self.digest = digest
        self.version = R.new_version()
        self._dir = staging_dir(archive)
        self.root = Path(self._dir.name)
        self.layout = PL.Layout(self.root / "days")
        self.days: list[tuple[str, str, int, str | None, Manifest | None]] = []  # + expected sha, old manifest
        self.packs: list[tuple[str, str, pa.Table, list[dict], str, Manifest]] = []  # merged raw, info, sha, old
        self.daily_bytes: dict[tuple[str, str, int], bytes] = {}  # a rewritten pack's days' daily rollups
        self.touched: set[tuple[str, str, int]] = set()
        self.uploaded: list[tuple[Manifest, tuple[str, str], str | None]] = []
        self.garbage: list[str] = []
        self.garbage_periods: list[Manifest] = []  # replaced weeks/months (appended by upload threads)
        from tierstore.history_import import Skipped
        self.skipped = Skipped()  # events whose id their archived day already holds

    # ---- staging -------------------------------------------------------------------------------

    def add(self, warm, tenant: str, events: pa.Table, advance: Advance) -> int:
        """Stage the merge of `events` (EVENT_SCHEMA, all below b_archive); returns the events stored."""
        from tierstore.history_import import stream_days

        from tiers.day_writer import in_threads

        stored = 0
        for stream, days in stream_days(warm, tenant, events):
            packs = self.archive.registry.packs(tenant, stream)
            by_pack: dict[int, list[tuple[int, pa.Table]]] = {}
            singles = []
            for day, raw in days:
                pack = next((p for p in packs if p.start <= day < p.end), None)
                if pack is not None:
                    by_pack.setdefault(pack.start, []).append((day, raw))
                else:
                    singles.append((tenant, stream, day, raw))
            stored += sum(n for _, n in in_threads(self._stage_day, iter(singles), advance))  # S3 reads overlap
            for start, items in by_pack.items():
                stored += self._stage_pack(tenant, stream, next(p for p in packs if p.start == start), items)
                advance(sum(r.num_rows for _, r in items))
        return stored

    def _stage_day(self, tenant: str, stream: str, day: int, raw: pa.Table) -> int:
        with self.archive.pool.connection() as conn:
            found = _row(conn, tenant, stream, "day", day)
        old = self.parts.read_day_raw(found[0]) if found else None
        new = _unseen(raw, old, self.skipped).cast(PL.RAW_SCHEMA)
        if new.num_rows == 0:
            return 0
        merged = new if old is None or old.num_rows == 0 else pa.concat_tables([old.cast(PL.RAW_SCHEMA), new])
        PL.write_day(self.layout, tenant, stream, day, merged, durable=False)  # staging: S3 is the copy
        self.days.append((tenant, stream, day, found[1] if found else None, found[0] if found else None))
        self.touched.add((tenant, stream, day))
        return new.num_rows

    def _stage_pack(self, tenant: str, stream: str, pack: Manifest, items: list[tuple[int, pa.Table]]) -> int:
        with self.archive.pool.connection() as conn:
            found = _row(conn, tenant, stream, "pack", pack.start)
        if found is None:  # the pack went meanwhile: the swap would refuse; say so now
            raise R.ArchiveChanged(f"{tenant}/{stream} pack {pack.name} changed in the archive during the import")
        pack, sha = found
        old = read_pack(self.parts, pack, "events").select(PL.RAW_SCHEMA.names).cast(PL.RAW_SCHEMA)
        added = []
        for day, raw in items:
            new = _unseen(raw, _day_of(old, day), self.skipped).cast(PL.RAW_SCHEMA)
            if new.num_rows:
                added.append(new)
                self.touched.add((tenant, stream, day))
        if not added:
            return 0
        merged = pa.concat_tables([old, *added])
        info_of = {int(d["start"]): d for d in pack.days or ()}
        days = sorted(set(info_of) | {d for (t, s, d) in self.touched if (t, s) == (tenant, stream)
                                      and pack.start <= d < pack.end})
        info = []
        for d in days:
            t = _day_of(merged, d)
            tot = PL.totals_of(t)
            # the cold file a day was packed from keeps its SHA-256 (the cold purge compares it)
            info.append({"start": d, "rows": t.num_rows, "count": tot.count, "sum": tot.sum,
                         "source_sha256": (info_of.get(d) or {}).get("source_sha256", "")})
            daily = PL.rollup_raw(t.sort_by([("ts", "ascending"), ("key_id", "ascending")]), G1D)
            sink = pa.BufferOutputStream()
            pq.write_table(daily, sink, compression="zstd")
            self.daily_bytes[(tenant, stream, d)] = sink.getvalue().to_pybytes()
        self.packs.append((tenant, stream, merged, info, sha, pack))
        return sum(a.num_rows for a in added)

    # ---- uploading (before the commit) ---------------------------------------------------------

    def upload(self, b_archive: int) -> dict[str, Any]:
        """Upload and verify the staged days and packs and the weeks/months over the touched days
        ending at or below b_archive, all at versioned keys (nothing registered)."""
        stats = {"partitions": 0, "days": 0, "packs": 0, "periods": 0, "objects": 0, "bytes": 0}
        parts, v = self.parts, self.version

        def finish(m: Manifest, expect: str | None) -> tuple[Manifest, tuple[str, str], str | None]:
            mobj = parts.put_manifest(m)
            parts.verify_partition(m, mobj)
            return m, mobj, expect

        def day(item) -> tuple:
            t, s, d, expect, old = item
            m = parts.upload_partition(self.layout, t, s, "day", d, version=v)
            was = old.object("events") if old is not None else None
            if was is not None:  # the cold file the day was archived from (the cold purge compares it)
                m.object("events")["source_sha256"] = was.get("source_sha256") or was["sha256"]
            return finish(m, expect)

        def pack(item) -> tuple:
            t, s, merged, info, expect, old = item
            with tempfile.TemporaryDirectory(dir=self.root) as tmp:
                staged = PL.Layout(Path(tmp))
                write_pack(staged, t, s, old.start, info[-1]["start"], merged)
                return finish(upload_pack(parts, staged, t, s, info, version=v), expect)

        with ThreadPoolExecutor(max_workers=UPLOAD_THREADS, thread_name_prefix="import-archive") as pool:
            done = list(pool.map(day, self.days)) + list(pool.map(pack, self.packs))
            done += [r for r in pool.map(self._period, self._periods(b_archive)) if r is not None]
        self.uploaded = done
        self.garbage = sorted({k for _, _, _, _, old in self.days if old is not None
                               for k in R.object_keys(old, parts.store)}
                              | {k for *_, old in self.packs for k in R.object_keys(old, parts.store)})
        for m, _, _ in done:
            stats["partitions"] += 1
            stats["days" if m.period == "day" else "packs" if m.period == "pack" else "periods"] += 1
            stats["objects"] += len(m.objects) + 1
            stats["bytes"] += sum(o["size"] for o in m.objects)
        self.archive.sync()
        return stats

    def _periods(self, b_archive: int) -> list[tuple[str, str, Any, int]]:
        return sorted({(t, s, g, g.floor(d)) for t, s, d in self.touched for g in PL.PERIOD_GRANULARITIES
                       if g.next(g.floor(d)) <= b_archive}, key=lambda p: (p[0], p[1], p[2].name, p[3]))

    def _period(self, item) -> tuple | None:
        t, s, gran, start = item
        period = PL.PERIOD_OF[gran.name]
        parts = self.parts
        with self.archive.pool.connection() as conn:
            found = _row(conn, t, s, period, start)
        staged_days = {d for (tt, ss, d, _, _) in self.days if (tt, ss) == (t, s)}

        def daily(d: int):
            if d in staged_days:
                return Path(self.layout.rollup_file(t, s, G1D, d))
            if (t, s, d) in self.daily_bytes:
                return self.daily_bytes[(t, s, d)]
            return parts.archived_daily(t, s, d)

        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            staged = parts.build_period(t, s, gran, start, daily, Path(tmp))
            if staged is None:
                return None
            m = parts.upload_partition(staged, t, s, period, start, version=self.version)
        if m is None:
            return None
        if found is not None:
            self.garbage_periods.append(found[0])
        mobj = parts.put_manifest(m)
        parts.verify_partition(m, mobj)
        return m, mobj, found[1] if found else None

    # ---- the commit and after ------------------------------------------------------------------

    def register(self, conn) -> None:
        """In the import's transaction: swap every registry row (compare-and-swap) and record the
        replaced objects' keys in the ledger."""
        from tierstore.history_import import record

        for m, mobj, expect in self.uploaded:
            R.swap(conn, m, *mobj, expect)
        keys = sorted(set(self.garbage) | {k for m in self.garbage_periods for k in R.object_keys(m, self.parts.store)})
        record(conn, self.digest, GARBAGE, {"keys": keys})

    def close(self) -> None:
        self._dir.cleanup()



def sweep(archive, pool, digest: str, done: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Delete the objects an import's commit replaced (its ledger's "archive/garbage"), once:
    keys a registered manifest names are kept; under Object Lock nothing is deleted. Records
    "archive/swept". Returns {"deleted", "kept"}."""
    from tierstore.history_import import ledger_parts, record

    done = ledger_parts(pool, digest) if done is None else done
    if GARBAGE not in done or SWEPT in done:
        return {"deleted": 0, "kept": 0}
    keys = list((done[GARBAGE] or {}).get("keys") or [])
    named = R.named_keys(pool, keys)
    out = R.discard(archive.store, keys, named)
    with pool.connection() as conn:
        record(conn, digest, SWEPT, out)
    return out


__all__ = ["ArchiveMerge", "sweep", "refuse_trino", "GARBAGE", "SWEPT"]
