"""The archive's partition registry: table `archive_partitions` (sql/migrations/common/0050).

One row per partition (tenant, stream, period, start) with its manifest and a status:
    archived   readers see it (the archive job registers it in the transaction moving b_archive)
    deleting   retention has begun deleting its objects (readers no longer see it)
    deleted    retention deleted it; the row stays as the record
Every statement on the table is here; the tier and the jobs call these methods.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterable, Sequence

import psycopg
from psycopg.types.json import Jsonb

from rollups.timeutil import TimeRange
from tiers.archive_manifest import Manifest

# a status filter whose bound value None means any status (two parameters: status, status)
_STATUS_IS = "(%s::text IS NULL OR status = %s)"
#: parsed manifests kept in-process by manifests_many (a pack's lists its days: tens of KiB)
PARSED_MANIFESTS = 4096


class ArchiveRegistry:
    """`archive_partitions`: what the archive holds (status archived) and what it held."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self._parsed: OrderedDict[str, Manifest] = OrderedDict()  # manifests_many: by manifest_sha256
        self._parsed_lock = threading.Lock()

    def starts(self, tenant: str, stream: str, period: str, status: str | None = "archived") -> list[int]:
        """Partition starts (epoch ms) of a stream with that status (None: any status), ascending."""
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT start_ms FROM archive_partitions WHERE tenant = %s AND stream = %s "
                                f"AND period = %s AND {_STATUS_IS} ORDER BY start_ms",
                                (tenant, stream, period, status, status)).fetchall()
        return [r[0] for r in rows]

    def objects(self, tenant: str, stream: str, period: str, table: str, lo: int,
                hi: int) -> dict[int, tuple[str, str]]:
        """{start: (object key, sha256)} of the `table` object of every archived partition of the
        stream overlapping [lo, hi) whose manifest lists one."""
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT start_ms, o ->> 'key', o ->> 'sha256' FROM archive_partitions, "
                                "jsonb_array_elements(manifest -> 'objects') AS o WHERE tenant = %s AND stream = %s "
                                "AND period = %s AND status = 'archived' AND start_ms < %s AND end_ms > %s "
                                "AND o ->> 'table' = %s", (tenant, stream, period, hi, lo, table)).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def manifest(self, tenant: str, stream: str, period: str, start: int,
                 status: str | None = "archived") -> Manifest | None:
        """The partition's manifest if it has that status (None: any status), else None."""
        with self.pool.connection() as conn:
            row = conn.execute("SELECT manifest FROM archive_partitions WHERE tenant = %s AND stream = %s "
                               f"AND period = %s AND start_ms = %s AND {_STATUS_IS}",
                               (tenant, stream, period, start, status, status)).fetchone()
        return Manifest.from_dict(row[0]) if row else None

    def status(self, tenant: str, stream: str, period: str, start: int) -> str | None:
        """archived | deleting | deleted, or None when the registry never held the partition."""
        with self.pool.connection() as conn:
            row = conn.execute("SELECT status FROM archive_partitions WHERE tenant = %s AND stream = %s "
                               "AND period = %s AND start_ms = %s", (tenant, stream, period, start)).fetchone()
        return row[0] if row else None

    def manifests(self, tenant: str, stream: str, period: str, rng: TimeRange) -> list[Manifest]:
        """Archived partitions of a stream overlapping rng, oldest first. period "day" includes the
        packs (period "pack": many days in one partition, tiers.archive_packs) overlapping rng."""
        periods = ["day", "pack"] if period == "day" else [period]
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT manifest FROM archive_partitions WHERE tenant = %s AND stream = %s "
                                "AND period = ANY(%s) AND status = 'archived' AND start_ms < %s AND end_ms > %s "
                                "ORDER BY start_ms", (tenant, stream, periods, rng.end, rng.start)).fetchall()
        return [Manifest.from_dict(r[0]) for r in rows]

    def manifests_many(self, tenant: str, stream: str, asks: Sequence[tuple[str, TimeRange]]) -> list[list[Manifest]]:
        """`manifests` for every (period, range) of `asks` in one statement (a query's pieces: one
        round trip instead of one per piece); a list per ask, in ask order, each oldest first. The
        manifests are shared, parsed once per process by their SHA-256 (a manifest object never
        changes under its hash): read them, never change them."""
        if not asks:
            return []
        n, periods, lo, hi = [], [], [], []
        for i, (period, rng) in enumerate(asks):
            for p in (["day", "pack"] if period == "day" else [period]):
                n.append(i)
                periods.append(p)
                lo.append(rng.start)
                hi.append(rng.end)
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT q.n, a.manifest_sha256 FROM unnest(%s::int[], %s::text[], %s::bigint[], %s::bigint[]) "
                "AS q(n, period, lo, hi) JOIN archive_partitions a ON a.tenant = %s AND a.stream = %s "
                "AND a.period = q.period AND a.status = 'archived' AND a.start_ms < q.hi AND a.end_ms > q.lo "
                "ORDER BY q.n, a.start_ms", (n, periods, lo, hi, tenant, stream)).fetchall()
            with self._parsed_lock:
                missing = sorted({sha for _, sha in rows if sha not in self._parsed})
            if missing:  # a pack's manifest lists its days: parsing it costs more than the round trip
                fetched = conn.execute("SELECT DISTINCT ON (manifest_sha256) manifest_sha256, manifest "
                                       "FROM archive_partitions WHERE manifest_sha256 = ANY(%s)", (missing,)).fetchall()
                parsed = {sha: Manifest.from_dict(manifest) for sha, manifest in fetched}
                if len(parsed) < len(missing):  # replaced between the two statements: one read of them all
                    rows = conn.execute(
                        "SELECT q.n, a.manifest_sha256, a.manifest FROM unnest(%s::int[], %s::text[], %s::bigint[], "
                        "%s::bigint[]) AS q(n, period, lo, hi) JOIN archive_partitions a ON a.tenant = %s AND "
                        "a.stream = %s AND a.period = q.period AND a.status = 'archived' AND a.start_ms < q.hi "
                        "AND a.end_ms > q.lo ORDER BY q.n, a.start_ms", (n, periods, lo, hi, tenant, stream)).fetchall()
                    parsed = {sha: Manifest.from_dict(manifest) for _, sha, manifest in rows}
                    rows = [(i, sha) for i, sha, _ in rows]
                with self._parsed_lock:
                    self._parsed.update(parsed)
                    while len(self._parsed) > PARSED_MANIFESTS:
                        self._parsed.popitem(last=False)
            else:
                parsed = {}
        out: list[list[Manifest]] = [[] for _ in asks]
        with self._parsed_lock:
            for i, sha in rows:
                out[i].append(parsed.get(sha) or self._parsed[sha])
        return out

    def packs(self, tenant: str, stream: str, status: str | None = "archived") -> list[Manifest]:
        """The stream's packs (period "pack") with that status (None: any), oldest first."""
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT manifest FROM archive_partitions WHERE tenant = %s AND stream = %s "
                                f"AND period = 'pack' AND {_STATUS_IS} ORDER BY start_ms",
                                (tenant, stream, status, status)).fetchall()
        return [Manifest.from_dict(r[0]) for r in rows]

    def deleting_days(self) -> list[tuple[Manifest, str]]:
        """(manifest, manifest object key) of every day or pack partition left `deleting`, by stream
        and start."""
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT manifest, manifest_key FROM archive_partitions WHERE status = 'deleting' "
                                "AND period IN ('day', 'pack') ORDER BY tenant, stream, start_ms").fetchall()
        return [(Manifest.from_dict(r[0]), r[1]) for r in rows]

    def tenants_streams(self, tenant: str | None = None, stream: str | None = None) -> list[tuple[str, str]]:
        """(tenant, stream) of every stream with archived partitions (None: any), sorted."""
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT DISTINCT tenant, stream FROM archive_partitions WHERE status = 'archived' "
                                "AND (%s::text IS NULL OR tenant = %s) AND (%s::text IS NULL OR stream = %s) "
                                "ORDER BY 1, 2", (tenant, tenant, stream, stream)).fetchall()
        return [tuple(r) for r in rows]

    def streams(self, tenant: str) -> list[str]:
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT DISTINCT stream FROM archive_partitions WHERE tenant = %s "
                                "AND period IN ('day', 'pack') AND status = 'archived' ORDER BY stream",
                                (tenant,)).fetchall()
        return [r[0] for r in rows]

    def totals(self) -> dict[str, int]:
        """{"rows": raw events, "bytes": object bytes} of everything archived."""
        with self.pool.connection() as conn:
            rows, size = conn.execute(
                "SELECT coalesce(sum(raw_rows), 0), coalesce(sum((SELECT sum((o ->> 'size')::bigint) "
                "FROM jsonb_array_elements(manifest -> 'objects') AS o)), 0) "
                "FROM archive_partitions WHERE status = 'archived'").fetchone()
        return {"rows": int(rows), "bytes": int(size)}

    def version(self, tenant: str, stream: str) -> str:
        """Changes whenever a partition of the stream is registered, rewritten or retired."""
        with self.pool.connection() as conn:
            row = conn.execute("SELECT count(*) FILTER (WHERE status = 'archived'), count(*), "
                               "max(archived_at), max(deleted_at) FROM archive_partitions "
                               "WHERE tenant = %s AND stream = %s", (tenant, stream)).fetchone()
        return "/".join(str(v) for v in row)

    @staticmethod
    def register(conn: psycopg.Connection, manifest: Manifest, manifest_key: str, manifest_sha256: str) -> None:
        """Record a partition as archived inside the caller's transaction (replacing an older row).

        Raises ValueError when a day or pack would overlap an archived pack other than itself (its
        days would be counted twice; tiers.archive_packs.unpack the pack first)."""
        rows, count, total = manifest.totals()
        if manifest.raw:
            clash = conn.execute("SELECT start_ms FROM archive_partitions WHERE tenant = %s AND stream = %s "
                                 "AND period = 'pack' AND status = 'archived' AND start_ms < %s AND end_ms > %s "
                                 "AND NOT (%s = 'pack' AND start_ms = %s) LIMIT 1",
                                 (manifest.tenant, manifest.stream, manifest.end, manifest.start, manifest.period,
                                  manifest.start)).fetchone()
            if clash is not None:
                raise ValueError(f"{manifest.tenant}/{manifest.stream} {manifest.period} {manifest.name} overlaps "
                                 f"the archived pack starting at {clash[0]}: unpack it first")
        conn.execute(
            "INSERT INTO archive_partitions (tenant, stream, period, start_ms, end_ms, status, raw_rows, event_count, "
            "value_sum, manifest_key, manifest_sha256, manifest) VALUES (%s, %s, %s, %s, %s, 'archived', %s, %s, %s, "
            "%s, %s, %s) ON CONFLICT (tenant, stream, period, start_ms) DO UPDATE SET status = 'archived', "
            "raw_rows = EXCLUDED.raw_rows, event_count = EXCLUDED.event_count, value_sum = EXCLUDED.value_sum, "
            "manifest_key = EXCLUDED.manifest_key, manifest_sha256 = EXCLUDED.manifest_sha256, "
            "manifest = EXCLUDED.manifest, archived_at = now(), deleted_at = NULL",
            (manifest.tenant, manifest.stream, manifest.period, manifest.start, manifest.end, rows, count, total,
             manifest_key, manifest_sha256, Jsonb(manifest.to_dict())))

    @staticmethod
    def mark(conn: psycopg.Connection, manifests: Iterable[Manifest], old: str | None, new: str) -> None:
        """Set the partitions' status to `new` (deleted: stamping deleted_at) inside the caller's
        transaction; with `old`, only rows whose status is `old` change."""
        for m in manifests:
            conn.execute("UPDATE archive_partitions SET status = %s, deleted_at = CASE WHEN %s = 'deleted' "
                         "THEN now() ELSE deleted_at END WHERE tenant = %s AND stream = %s AND period = %s "
                         f"AND start_ms = %s AND {_STATUS_IS}",
                         (new, new, m.tenant, m.stream, m.period, m.start, old, old))

    @staticmethod
    def forget(conn: psycopg.Connection, tenant: str, stream: str, period: str, start: int) -> None:
        """Drop a partition's row (a rewrite that left it empty; not retention, which keeps the row)."""
        conn.execute("DELETE FROM archive_partitions WHERE tenant = %s AND stream = %s AND period = %s "
                     "AND start_ms = %s", (tenant, stream, period, start))


__all__ = ["ArchiveRegistry"]
