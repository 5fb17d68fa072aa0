"""Archive packs: consecutive small days of one stream archived as ONE partition.

A day partition costs 8 S3 objects (raw events, 1h/1d rollups, two value-sorted copies, sketch,
stream totals, manifest) however few events it holds; engines that pay per object (Athena-like)
and the archive job itself pay for each. The archive job therefore packs the small days of a run:

    a day is small when its cold raw events file is below PackRule.below bytes; consecutive small
    days of one stream (consecutive among the days holding events: empty days cost nothing) form a
    pack until it holds PackRule.target bytes of raw files or spans PackRule.max_days calendar
    days; a large day closes the pack before it and stays one partition of its own.

A pack is one partition (registry period "pack", start = its first day, end = the day after its
last) of three objects plus its manifest, rows carrying their own times:

    events/tenant=T/stream=S/day=<first day>/pack-<last day>.parquet      raw events (RAW_SCHEMA)
    rollup_1h/.../day=<first day>/pack-<last day>.parquet                 hourly partials
    rollup_1d/.../day=<first day>/pack-<last day>.parquet                 daily partials

Its manifest lists, per day, the events, count, sum and the SHA-256 of the cold raw file it came
from (the cold purge deletes a cold day only when that still matches). No value-sorted copies,
sketch or stream totals: a pack is small by construction, so readers read its rollups whole with
a time filter (tiers.archive_ranked edges; key-level series; mode=approx reads the exact
partials), which is exact.

Readers see a pack through tiers.archive_partitions (days, scan files, a day's events or daily
rollup); a rewrite of one of its days (import, delete) first `unpack`s it into day partitions in
one transaction; retention deletes it whole when all of it is past retention and no legal hold
overlaps it (scheduler/retention.py). The registry refuses a day overlapping a pack.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rollups.timeutil import DAY_MS, G1D, G1H
from tiers import parquet_layout as PL
from tiers.archive_manifest import ArchiveVerifyFailed, Manifest

#: the tables a pack holds, and the column their rows' time is in
PACK_TABLES = {"events": "ts", "rollup_1h": "bucket", "rollup_1d": "bucket"}


@dataclass(frozen=True)
class PackRule:
    """When days are packed. below (bytes): a day whose cold raw file is smaller is small (0: never
    pack); target (bytes): a pack closes once its raw files reach it; max_days: a pack spans at
    most this many calendar days (retention deletes a pack only when its last day is past)."""

    below: int = 1 << 20
    target: int = 64 << 20
    max_days: int = 366

    @classmethod
    def from_settings(cls, settings) -> "PackRule | None":
        below = int(getattr(settings, "archive_pack_below", cls.below))
        if below <= 0:
            return None
        # not with Trino (it reads a partition's whole folder: a crashed run's leftover pack object
        # would be read too; untested) nor with Object Lock (unpacking deletes the pack's objects)
        if getattr(settings, "cold_engine", "duckdb") == "trino" or getattr(settings, "s3_object_lock", False):
            return None
        return cls(below, int(getattr(settings, "archive_pack_target", cls.target)),
                   int(getattr(settings, "archive_pack_max_days", cls.max_days)))


def group_days(days: Sequence, size_of: Callable[[object], int], rule: PackRule) -> tuple[list, list[list]]:
    """Split day partitions (objects with tenant, stream, start) into (single days, packs).

    A pack is a list of at least two days of one stream, ascending; see the module doc."""
    singles: list = []
    packs: list[list] = []
    by_stream: dict[tuple[str, str], list] = {}
    for p in days:
        by_stream.setdefault((p.tenant, p.stream), []).append(p)
    for parts in by_stream.values():
        current: list = []
        held = 0

        def close() -> None:
            nonlocal current, held
            (packs.append(current) if len(current) > 1 else singles.extend(current))
            current, held = [], 0

        for p in sorted(parts, key=lambda p: p.start):
            size = size_of(p)
            if size >= rule.below:
                close()
                singles.append(p)
                continue
            if current and (p.start - current[0].start >= rule.max_days * DAY_MS or held + size > rule.target):
                close()
            current.append(p)
            held += size
        close()
    return singles, packs


def pack_file(layout: PL.Layout, table: str, tenant: str, stream: str, start: int, last: int) -> Path:
    return layout.partition_dir(table, tenant, stream, "day", PL.day_name(start)) / f"pack-{PL.day_name(last)}.parquet"


def stage_pack(source: PL.Layout, tenant: str, stream: str, days: Sequence[int],
               staging: Path) -> tuple[PL.Layout, list[dict]]:
    """Build a pack of `days` (ascending) from their raw files in `source` into `staging`.

    Returns (the staging layout, the manifest's per-day entries)."""
    raws, info = [], []
    for d in days:
        path = Path(source.raw_file(tenant, stream, d))
        data = path.read_bytes()
        t = pq.read_table(pa.BufferReader(data)).select(PL.RAW_SCHEMA.names).cast(PL.RAW_SCHEMA)
        tot = PL.totals_of(t)
        info.append({"start": d, "rows": t.num_rows, "count": tot.count, "sum": tot.sum,
                     "source_sha256": hashlib.sha256(data).hexdigest()})
        raws.append(t)
    layout = PL.Layout(staging)
    write_pack(layout, tenant, stream, days[0], days[-1], pa.concat_tables(raws),
               rollups=_day_rollups(source, tenant, stream, days))
    return layout, info


def _day_rollups(source: PL.Layout, tenant: str, stream: str, days: Sequence[int]) -> dict[str, pa.Table] | None:
    """The pack's hourly and daily partials as its days' own rollup files concatenated (days
    ascending, each file by (bucket, key_id): the rows rollup_raw would compute from the pack's
    events), or None when a day lacks one (then they are computed from the events)."""
    out = {}
    for table, gran in (("rollup_1h", G1H), ("rollup_1d", G1D)):
        files = [Path(source.rollup_file(tenant, stream, gran, d)) for d in days]
        if not all(f.exists() for f in files):
            return None
        out[table] = pa.concat_tables([PL.with_sum_lo(pq.read_table(f)) for f in files])
    return out


def write_pack(layout: PL.Layout, tenant: str, stream: str, start: int, last: int, raw: pa.Table,
               rollups: dict[str, pa.Table] | None = None) -> None:
    """Write a pack's three files (raw events, hourly and daily partials) into `layout`.

    `rollups` ({"rollup_1h", "rollup_1d"}: the days' own partials, stage_pack) saves computing them
    from the events; the events are sorted by (ts, key_id) unless they already are (days in order)."""
    if not PL.in_file_order(raw):
        raw = raw.sort_by([("ts", "ascending"), ("key_id", "ascending")])
    if rollups is None:
        rollups = {"rollup_1h": PL.rollup_raw(raw, G1H), "rollup_1d": PL.rollup_raw(raw, G1D)}
    tables = {"events": (raw, PL.RAW_ROW_GROUP), "rollup_1h": (rollups["rollup_1h"], PL.ROLLUP_ROW_GROUP),
              "rollup_1d": (rollups["rollup_1d"], PL.ROLLUP_ROW_GROUP)}
    for table, (t, groups) in tables.items():
        path = pack_file(layout, table, tenant, stream, start, last)
        path.parent.mkdir(parents=True, exist_ok=True)
        PL.write_temp(path, t, groups)


def upload_pack(parts, staged: PL.Layout, tenant: str, stream: str, info: list[dict],
                on_uploaded: Callable[[], None] | None = None, version: str | None = None) -> Manifest:
    """Upload a staged pack's files (`parts` an ArchivePartitions) and check them: raw events and
    rollups agree, and equal the days' totals. The manifest is neither uploaded nor registered.
    `version`: a rewrite's key version (tiers.archive_rewrite)."""
    from tiers.s3_store import versioned_key

    start, last = info[0]["start"], info[-1]["start"]
    m = Manifest(tenant, stream, "pack", start, [], last + DAY_MS, info, version)
    until = parts.retain_until(tenant, stream, m.end)
    for table in PACK_TABLES:
        path = pack_file(staged, table, tenant, stream, start, last)
        totals = PL.read_totals(path) or PL.totals_of(pq.read_table(path))
        obj = parts.store.put_file(path, versioned_key(parts.store.key(path.relative_to(staged.root).as_posix()),
                                                       version), retain_until=until)
        obj.update(table=table, rows=totals.rows, count=totals.count, sum=totals.sum, min=totals.min, max=totals.max,
                   abs=totals.abs_sum)
        m.objects.append(obj)
    m.check_consistent()
    _, count, total = m.totals()
    scale = max((o.get("abs") or 0.0 for o in m.objects), default=0.0)
    if count != sum(d["count"] for d in info) or not PL.close(total, math.fsum(d["sum"] for d in info), scale):
        raise ArchiveVerifyFailed(f"{tenant}/{stream} pack {m.name}: holds count {count} sum {total}, its days "
                                  f"{sum(d['count'] for d in info)} {sum(d['sum'] for d in info)}")
    if on_uploaded is not None:
        on_uploaded()
    return m


# ---- reading ------------------------------------------------------------------------------------

def containing(packs: Sequence[Manifest], day: int) -> Manifest | None:
    """The pack among `packs` holding `day`, or None."""
    return next((m for m in packs if m.start <= day < m.end and day in m.day_starts()), None)


def read_table(parts, m: Manifest, table: str, lo: int | None = None, hi: int | None = None) -> pa.Table:
    """A pack's `table` read from S3 (checked against its SHA-256), rows with time in [lo, hi)."""
    obj = m.object(table)
    t = pq.read_table(pa.BufferReader(parts.store.get_bytes(obj["key"], obj["sha256"])))
    col = PACK_TABLES[table]
    if lo is not None:
        t = t.filter(pc.and_(pc.greater_equal(t[col], lo), pc.less(t[col], hi)))
    return t


def object_path(parts, m: Manifest, table: str) -> str:
    """The s3:// path of a pack's object, as the engines read it."""
    key = m.object(table)["key"]
    return str(parts.layout.root / key[len(parts.store.prefix) + 1:])


def day_rollup_bytes(parts, m: Manifest, day: int) -> bytes:
    """One day of a pack's daily partials as a Parquet file's bytes (week/month rebuilds)."""
    sink = pa.BufferOutputStream()
    pq.write_table(read_table(parts, m, "rollup_1d", day, day + DAY_MS), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


# ---- rewriting ----------------------------------------------------------------------------------

def unpack(parts, m: Manifest) -> list[Manifest]:
    """Replace a pack by one day partition per day, in one transaction, then delete its objects.

    Every day is staged (tiers.parquet_layout.write_day: rollups, copies, sketch, totals),
    uploaded and verified before the transaction that forgets the pack and registers the days, so
    a crash leaves either the pack or the days (objects of the loser belong to nobody)."""
    from tiers.archive_rewrite import new_version

    raw = read_table(parts, m, "events")
    version = None if getattr(parts, "rewrite_in_place", True) else new_version()
    staged = []
    with parts.staging_dir() as tmp:
        layout = PL.Layout(Path(tmp))
        for d in m.day_starts():
            day = raw.filter(pc.and_(pc.greater_equal(raw["ts"], d), pc.less(raw["ts"], d + DAY_MS)))
            PL.write_day(layout, m.tenant, m.stream, d, day, durable=False)
            dm = parts.upload_partition(layout, m.tenant, m.stream, "day", d, version=version)
            mobj = parts.put_manifest(dm)
            parts.verify_partition(dm, mobj)
            staged.append((dm, mobj))
    with parts.registry.pool.connection() as conn:
        parts.registry.forget(conn, m.tenant, m.stream, "pack", m.start)
        for dm, mobj in staged:
            parts.registry.register(conn, dm, *mobj)
    parts.delete_objects(m)
    return [dm for dm, _ in staged]


__all__ = ["PackRule", "PACK_TABLES", "group_days", "stage_pack", "write_pack", "upload_pack", "containing",
           "read_table", "object_path", "day_rollup_bytes", "unpack", "pack_file"]
