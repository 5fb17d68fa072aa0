"""The archive's partitions: Parquet objects in S3 (tiers.s3_store) listed by the registry.

Objects live under `s3://<bucket>/<prefix>/` with exactly the cold tier's relative paths
(tiers.parquet_layout), so a partition moves from disk to S3 unchanged. A partition is written
whole: its files are built in a local staging folder by the cold tier's writer, uploaded, checked
(raw events and rollups agree), its manifest (tiers.archive_manifest) uploaded to
`<prefix>/_manifests/...`, every object verified, then registered (tiers.archive_registry) —
readers list the registry, never the bucket, so they see the partition from that commit on.
`ArchivePartitions` is the archive tier's tiers.parquet_core.Partitions, and the archive and
retention jobs build their uploads from the same steps.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from rollups.timeutil import DAY_MS, G1D, Granularity, TimeRange
from tiers import parquet_layout as PL
from tiers.archive_manifest import ArchiveVerifyFailed, Manifest
from tiers.archive_packs import PACK_TABLES, containing, day_rollup_bytes, object_path, unpack
from tiers.archive_packs import read_table as read_pack
from tiers.archive_registry import ArchiveRegistry
from tiers.s3_store import ArchiveStore, versioned_key
from tiers.sketch_files import stage_day_sketch

#: (manifest object key, its sha256): what `put_manifest` returns and `register` records
ManifestObject = tuple[str, str]


class ArchivePartitions:
    """Partitions in `store`, listed by `registry`, staged under `staging`.

    `retention(tenant, stream)` is how long (ms) a stream's partitions are kept after they end: objects
    are locked that long where the bucket has Object Lock.
    """

    def __init__(self, registry: ArchiveRegistry, store: ArchiveStore, staging: Path,
                 retention: Callable[[str, str], int]) -> None:
        self.registry = registry
        self.store = store
        self.layout = PL.Layout(store.root)
        self._staging = staging
        self._retention = retention
        #: keeps a copy of each uploaded file, (local path, manifest object) -> None: the archive tier's
        #: disk cache (tiers/archive_cache.ObjectCache.adopt), or None
        self.adopt: Callable[[Path, dict], None] | None = None
        #: the manifest object's local file when the disk cache holds it (scheduling its download when
        #: not), else None: (manifest object) -> Path | None (tiers/archive_cache.ObjectCache.path), or
        #: None. Set for DuckDB only: its scans read a cached object from local disk, not through S3.
        self.local_copy: Callable[[dict], Path | None] | None = None
        from tiers.parquet_totals import TotalsCache
        self.totals_cache = TotalsCache()  # key-less series: totals objects by SHA-256
        #: True (Trino reads partitions by folder): rewrites overwrite the layout keys in place;
        #: else they go to versioned keys (tiers.archive_rewrite)
        self.rewrite_in_place = False

    # ---- the Partitions protocol (tiers.parquet_core) -----------------------------------------

    def days(self, tenant: str, stream: str, table: str = "events") -> list[int]:
        """Archived days: day partitions and the days of packs (tiers.archive_packs)."""
        days = self.registry.starts(tenant, stream, "day")
        packed = [d for m in self.registry.packs(tenant, stream) for d in m.day_starts()]
        return sorted(days + packed) if packed else days

    def scan_files(self, table: str, tenant: str, stream: str, starts: list[int]) -> tuple[list[str], int]:
        """(the s3:// files holding `table` for these archived days — a pack's object once for all its
        days —, the lowest partition start among them) for tiers.parquet_core's scans. Every key is
        the registered manifest's (a rewritten partition's keys are versioned: tiers.archive_rewrite)."""
        listed = self.registry.manifests_many(tenant, stream, [("day", TimeRange(starts[0], starts[-1] + DAY_MS))])[0]
        packs = [m for m in listed if m.period == "pack"] if table in PACK_TABLES else []
        by_day = {m.start: m for m in listed if m.period == "day"}
        in_pack: dict[int, Any] = {}  # day -> its pack (the first, as archive_packs.containing): one pass
        for m in packs:               # (looked up day by day, a year of packed days took 20 ms)
            for d in m.day_starts():
                in_pack.setdefault(d, m)
        files, lowest = [], starts[0]
        seen = set()
        for d in starts:
            m = in_pack.get(d)
            if m is None:
                dm = by_day.get(d)
                if dm is not None and dm.object(table) is not None:
                    files.append(self._readable(dm, table))
                else:
                    folder = self.layout.partition_dir(table, tenant, stream, "day", PL.day_name(d))
                    files.append(str(folder / PL.FILE_NAME))
            elif m.start not in seen:
                seen.add(m.start)
                files.append(self._readable(m, table))
                lowest = min(lowest, m.start)
        return files, lowest

    def _readable(self, m, table: str) -> str:
        """The file a scan reads for manifest `m`'s object of `table`: its local copy in the disk
        cache (`local_copy`; named by SHA-256, so it is the manifest's bytes), else its s3:// path."""
        local = self.local_copy(m.object(table)) if self.local_copy is not None else None
        return str(local) if local is not None else object_path(self, m, table)

    def period_files(self, table: str, tenant: str, stream: str, column: str, starts: list[int]) -> list[str]:
        """The s3:// files of `table` for these archived weeks/months (column week | month), from
        their registered manifests (tiers.parquet_core's scans)."""
        listed = {m.start: m for m in self.registry.manifests_many(tenant, stream, [
            (column, TimeRange(starts[0], starts[-1] + 1))])[0]}
        gran = PL.PERIODS[column]
        out = []
        for s in starts:
            m = listed.get(s)
            if m is not None and m.object(table) is not None:
                out.append(self._readable(m, table))
            else:
                out.append(str(self.layout.partition_dir(table, tenant, stream, column, PL.period_name(gran, s))
                               / PL.FILE_NAME))
        return out

    def pack_of(self, tenant: str, stream: str, day: int) -> Manifest | None:
        """The archived pack holding `day`, or None."""
        return containing(self.registry.packs(tenant, stream), day)

    def periods(self, tenant: str, stream: str, gran: Granularity) -> list[int]:
        return self.registry.starts(tenant, stream, PL.PERIOD_OF[gran.name])

    def totals_files(self, tenant: str, stream: str, period: str, lo: int, hi: int) -> dict[int, tuple[str, str]]:
        """{start: (object key, sha256)} of the archived partitions overlapping [lo, hi) whose
        manifest lists a stream-totals object (tiers/parquet_totals.py)."""
        return self.registry.objects(tenant, stream, period, PL.PT_TABLES[period], lo, hi)

    def read_totals(self, obj: tuple[str, str]) -> pa.Table:
        """A totals object's table, downloaded once (checked against its SHA-256) and cached by it."""
        key, sha256 = obj
        return self.totals_cache.get(sha256, lambda: pq.read_table(pa.BufferReader(self.store.get_bytes(key, sha256))))

    def tenants_streams(self, tenant: str | None = None, stream: str | None = None) -> list[tuple[str, str]]:
        return self.registry.tenants_streams(tenant, stream)

    def read_day(self, tenant: str, stream: str, day: int) -> pa.Table | None:
        m = self.registry.manifest(tenant, stream, "day", day)
        if m is None:
            pack = self.pack_of(tenant, stream, day)
            return None if pack is None else read_pack(self, pack, "events", day, day + DAY_MS)
        return self.read_day_raw(m)

    def put_day(self, tenant: str, stream: str, day: int, raw: pa.Table, *, expect: PL.Totals | None = None,
                step: Callable[[str], None] | None = None) -> None:
        """Write a day's partition (empty: remove it) through staging, upload, verify, register.
        A day inside a pack is unpacked first (tiers.archive_packs.unpack)."""
        pack = self.pack_of(tenant, stream, day)
        if pack is not None:
            unpack(self, pack)
        if raw.num_rows == 0:
            self.retire(tenant, stream, "day", day)
            return
        with self.staging_dir() as tmp:
            layout = PL.Layout(Path(tmp))
            PL.write_day(layout, tenant, stream, day, raw, expect=expect, step=step)
            self.publish(layout, tenant, stream, "day", day)

    def put_period(self, tenant: str, stream: str, gran: Granularity, start: int) -> None:
        """Rebuild a week/month from the archived daily rollups (removed when none is left)."""
        if self.publish_period(tenant, stream, gran, start) is None:
            self.retire(tenant, stream, PL.PERIOD_OF[gran.name], start)

    def changed(self, tenant: str, stream: str) -> None:
        """Nothing to record: the registry's rows are the archive's data version."""

    # ---- publishing partitions (the archive and retention jobs share these) --------------------

    def retain_until(self, tenant: str, stream: str, end: int) -> int:
        return end + self._retention(tenant, stream)

    def upload_partition(self, source: PL.Layout, tenant: str, stream: str, period: str, start: int,
                         on_uploaded: Callable[[], None] | None = None, version: str | None = None
                         ) -> Manifest | None:
        """Upload one partition's files from a local layout and verify them; return its manifest.

        The manifest is not yet uploaded (`put_manifest`) nor registered. Returns None when the
        source holds no file of the partition. `version`: the keys carry it (a rewrite,
        tiers.archive_rewrite), recorded as the manifest's key_version.
        """
        files = [(t, Path(p)) for t, p in PL.period_files(source, tenant, stream, period, start) if Path(p).exists()]
        if not files:
            return None
        m = Manifest(tenant, stream, period, start, key_version=version)
        until = self.retain_until(tenant, stream, m.end)
        for table, path in files:
            totals = PL.read_totals(path) or PL.totals_of(pq.read_table(path))
            rel = Path(path).relative_to(source.root).as_posix()
            obj = self.store.put_file(path, versioned_key(self.store.key(rel), version), retain_until=until)
            if self.adopt is not None:
                self.adopt(path, obj)
            obj.update(table=table, rows=totals.rows, count=totals.count, sum=totals.sum, min=totals.min,
                       max=totals.max, abs=totals.abs_sum)
            m.objects.append(obj)
        m.check_consistent()
        if on_uploaded is not None:
            on_uploaded()
        return m

    def put_manifest(self, m: Manifest) -> ManifestObject:
        """Upload the manifest object; returns (key, sha256)."""
        obj = self.store.put_bytes(m.to_bytes(), self.store.manifest_key(m), content_type="application/json",
                                   retain_until=self.retain_until(m.tenant, m.stream, m.end))
        return obj["key"], obj["sha256"]

    def verify_partition(self, m: Manifest, manifest_obj: ManifestObject) -> None:
        for obj in m.objects:
            self.store.verify(obj)
        data = self.store.get_bytes(manifest_obj[0], manifest_obj[1])
        if json.loads(data) != m.to_dict():
            raise ArchiveVerifyFailed(f"manifest {manifest_obj[0]} does not read back as written")

    def publish(self, source: PL.Layout, tenant: str, stream: str, period: str, start: int, *,
                also: Callable[..., None] | None = None) -> Manifest | None:
        """Upload, verify and register a partition staged in `source` (None: it holds no file).

        A partition already registered is rewritten at versioned keys, swapped in one transaction,
        its old objects deleted after the commit (tiers.archive_rewrite; in place with Trino).
        `also(conn, manifest)` runs in the registering transaction (e.g. an audit row). Raises
        archive_rewrite.ArchiveChanged when the row changed meanwhile (nothing committed)."""
        from tiers import archive_rewrite as R

        with self.registry.pool.connection() as conn:
            row = conn.execute("SELECT manifest, manifest_sha256 FROM archive_partitions WHERE tenant = %s "
                               "AND stream = %s AND period = %s AND start_ms = %s AND status = 'archived'",
                               (tenant, stream, period, start)).fetchone()
        old, expect = (Manifest.from_dict(row[0]), row[1]) if row else (None, None)
        version = R.new_version() if old is not None and not self.rewrite_in_place else None
        m = self.upload_partition(source, tenant, stream, period, start, version=version)
        if m is None:
            return None
        mobj = self.put_manifest(m)
        self.verify_partition(m, mobj)
        with self.registry.pool.connection() as conn:
            if version is None:
                self.registry.register(conn, m, *mobj)
            else:
                R.swap(conn, m, *mobj, expect)
            if also is not None:
                also(conn, m)
        if version is not None:
            R.discard(self.store, R.object_keys(old, self.store), set(R.object_keys(m, self.store)))
        return m

    def publish_period(self, tenant: str, stream: str, gran: Granularity, start: int, *,
                       also: Callable[..., None] | None = None) -> Manifest | None:
        """Rebuild a week/month from the archived daily rollups and publish it (see `publish`).

        Returns None, leaving any older partition as it is, when no day of it is archived."""
        with self.staging_dir() as tmp:
            staged = self.build_period(tenant, stream, gran, start, lambda d: self.archived_daily(tenant, stream, d),
                                       Path(tmp))
            if staged is None:
                return None
            return self.publish(staged, tenant, stream, PL.PERIOD_OF[gran.name], start, also=also)

    def retire(self, tenant: str, stream: str, period: str, start: int) -> None:
        """Forget a partition and delete its objects (a rewrite left it empty; retention, which
        keeps the row as the record, marks it instead)."""
        old = self.registry.manifest(tenant, stream, period, start)
        if old is None:
            return
        with self.registry.pool.connection() as conn:
            self.registry.forget(conn, tenant, stream, period, start)
        self.delete_objects(old)

    def build_period(self, tenant: str, stream: str, gran: Granularity, start: int,
                     daily: Callable[[int], Path | bytes | None], staging: Path) -> PL.Layout | None:
        """Build a week/month rollup in `staging` from its days' daily rollups.

        `daily(day_start)` gives a day's rollup_1d file (a local path or the object's bytes) or None.
        Returns the staging layout holding the period's files, or None when no day has data.
        """
        layout = PL.Layout(staging)
        found = False
        for day in PL.period_days(gran, start):
            src = daily(day)
            if src is None:
                continue
            dst = Path(layout.rollup_file(tenant, stream, G1D, day))
            dst.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, bytes):
                dst.write_bytes(src)
            else:
                shutil.copyfile(src, dst)
            stage_day_sketch(layout, tenant, stream, day, src, self)  # mode=approx: the period's sketch
            found = True
        if not found:
            return None
        PL.write_period(layout, tenant, stream, gran, start, durable=False)  # staging: S3 is the copy, verified there
        return layout

    def archived_daily(self, tenant: str, stream: str, day: int) -> bytes | None:
        """The archived rollup_1d of a day (checked against its manifest; a packed day's rows), or None."""
        m = self.registry.manifest(tenant, stream, "day", day)
        if m is None:
            pack = self.pack_of(tenant, stream, day)
            return None if pack is None else day_rollup_bytes(self, pack, day)
        obj = m.object("rollup_1d") if m else None
        return self.store.get_bytes(obj["key"], obj["sha256"]) if obj else None

    def delete_objects(self, m: Manifest, manifest_key: str | None = None) -> int:
        """Delete a partition's objects and its manifest object; returns the objects deleted."""
        keys = [o["key"] for o in m.objects] + ([manifest_key] if manifest_key else [self.store.manifest_key(m)])
        return self.store.delete(keys)

    def staging_dir(self) -> tempfile.TemporaryDirectory:
        self._staging.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(dir=self._staging, prefix="stage-")

    def read_day_raw(self, m: Manifest) -> pa.Table:
        """A day partition's raw events (RAW_SCHEMA) read from S3 and checked against the manifest."""
        obj = m.object("events")
        if obj is None:
            return PL.RAW_SCHEMA.empty_table()
        return pq.read_table(pa.BufferReader(self.store.get_bytes(obj["key"], obj["sha256"])))


__all__ = ["ArchivePartitions", "ManifestObject"]
