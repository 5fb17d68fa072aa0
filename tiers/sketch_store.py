"""Stored bucket sketches for mode=approx: table `approx_sketches` (sql/migrations/common/0075).

One row per (tenant, stream, tier, granularity, bucket start, rank_by, lg_k): the serialized
frequent-items sketch of that whole bucket as the tier held it at data version `version` (a
digest of the tier's `data_versions` value). A reader uses a row only when its version equals the
bucket's current version, so late events, imports and deletes (which change the version) make a
row stale instead of wrong; stale rows are overwritten by the next build. Every statement on the
table is here.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Sequence

from rollups.timeutil import GRANULARITIES
from tiers.errors import translate


def version_digest(version: Hashable) -> str:
    """A stable text form of a tier's data version (tuples of ints, strings, uuids)."""
    return hashlib.sha256(repr(version).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SketchKey:
    tier: str
    granularity: str
    bucket: int  # epoch ms
    #: the end of a run of buckets sketched as one (epoch ms; memo only, never stored), else 0
    end: int = 0


@dataclass(frozen=True)
class StoredSketch:
    version: str
    sketch: bytes | None
    refused: str | None


class SketchStore:
    """`approx_sketches` over a psycopg ConnectionPool, with an in-process memo of decoded sketches
    (`recall` / `remember`, keyed with the version like the table, bounded by serialized bytes).
    Errors: TierUnavailable("warm") when PostgreSQL is down (the table lives beside warm's rollups)."""

    def __init__(self, pool, *, memo_bytes: int = 64 * 1024 * 1024) -> None:
        self.pool = pool
        self.memo_bytes = memo_bytes
        self._memo: OrderedDict[tuple, tuple[str, Any, int]] = OrderedDict()
        self._memo_size = 0
        self._lock = threading.Lock()

    def recall(self, tenant: str, stream: str, rank_by: str, lg_k: int, key: SketchKey, version: str) -> Any:
        """The object remembered for this bucket at exactly this version, else None."""
        with self._lock:
            hit = self._memo.get((tenant, stream, rank_by, lg_k, key))
            if hit is None or hit[0] != version:
                return None
            self._memo.move_to_end((tenant, stream, rank_by, lg_k, key))
            return hit[1]

    def remember(self, tenant: str, stream: str, rank_by: str, lg_k: int, key: SketchKey, version: str,
                 obj: Any, size: int) -> None:
        """Keep `obj` (a decoded sketch, never mutated by callers) for this bucket and version."""
        name = (tenant, stream, rank_by, lg_k, key)
        with self._lock:
            old = self._memo.pop(name, None)
            if old is not None:
                self._memo_size -= old[2]
            if size > self.memo_bytes:
                return
            self._memo[name] = (version, obj, size)
            self._memo_size += size
            while self._memo_size > self.memo_bytes:
                _, (_, _, dropped) = self._memo.popitem(last=False)
                self._memo_size -= dropped

    def get_many(self, tenant: str, stream: str, rank_by: str, lg_k: int,
                 keys: Sequence[SketchKey]) -> dict[SketchKey, StoredSketch]:
        """The stored rows among `keys` (any version; the caller compares)."""
        if not keys:
            return {}
        with translate("warm"), self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT s.tier, s.granularity, s.bucket, s.version, s.sketch, s.refused FROM approx_sketches s "
                "JOIN unnest(%s::text[], %s::text[], %s::bigint[]) AS w(tier, granularity, bucket) "
                "ON s.tier = w.tier AND s.granularity = w.granularity AND s.bucket = w.bucket "
                "WHERE s.tenant = %s AND s.stream = %s AND s.rank_by = %s AND s.lg_k = %s",
                ([k.tier for k in keys], [k.granularity for k in keys], [k.bucket for k in keys],
                 tenant, stream, rank_by, lg_k)).fetchall()
        return {SketchKey(t, g, b): StoredSketch(v, None if s is None else bytes(s), r) for t, g, b, v, s, r in rows}

    def put_many(self, tenant: str, stream: str, rank_by: str, lg_k: int,
                 rows: Iterable[tuple[SketchKey, StoredSketch]]) -> None:
        """Insert or overwrite rows (one transaction)."""
        rows = list(rows)
        if not rows:
            return
        with translate("warm"), self.pool.connection() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO approx_sketches (tenant, stream, tier, granularity, bucket, rank_by, lg_k, version, "
                "sketch, refused) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (tenant, stream, tier, granularity, bucket, rank_by, lg_k) DO UPDATE SET "
                "version = EXCLUDED.version, sketch = EXCLUDED.sketch, refused = EXCLUDED.refused, built_at = now()",
                [(tenant, stream, k.tier, k.granularity, k.bucket, rank_by, lg_k, s.version, s.sketch, s.refused)
                 for k, s in rows])

    def count(self, tenant: str, stream: str) -> int:
        """Rows held for a stream (tests, operators)."""
        with translate("warm"), self.pool.connection() as conn:
            return conn.execute("SELECT count(*) FROM approx_sketches WHERE tenant = %s AND stream = %s",
                                (tenant, stream)).fetchone()[0]


# ---- pruning (export_cold, retention, stream delete): statements on a caller's transaction ----

def prune_left_warm(conn, b_cold: int) -> int:
    """Delete the warm sketches of buckets that end at or below `b_cold` (their events now belong
    to cold, whose sketches are files), and any cold or archive rows (sketch files replace them);
    hot rows are pruned as their hours leave hot (prune_hot_left). A bucket that reaches above
    b_cold — events still owned by warm — is kept. Run in the
    transaction that moves b_cold (scheduler/export_cold.py). Returns the rows deleted."""
    rows = conn.execute("SELECT DISTINCT granularity, bucket FROM approx_sketches WHERE tier = 'warm' "
                        "AND bucket < %s", (b_cold,)).fetchall()
    gone = [(g, b) for g, b in rows if g in GRANULARITIES and GRANULARITIES[g].next(b) <= b_cold]
    n = conn.execute("DELETE FROM approx_sketches WHERE tier NOT IN ('warm', 'hot')").rowcount
    if gone:
        n += conn.execute("DELETE FROM approx_sketches s USING unnest(%s::text[], %s::bigint[]) AS w(g, b) "
                          "WHERE s.tier = 'warm' AND s.granularity = w.g AND s.bucket = w.b",
                          ([g for g, _ in gone], [b for _, b in gone])).rowcount
    return n


def prune_range(conn, tenant: str, stream: str | None, start: int, end: int) -> int:
    """Delete every sketch row of the stream (None: every stream of the tenant) whose bucket
    overlaps [start, end) (retention of archived days, stream deletes). Returns rows deleted."""
    sql = "DELETE FROM approx_sketches WHERE tenant = %s AND bucket < %s AND bucket > %s"
    params: list = [tenant, end, start - 32 * 24 * 3600 * 1000]  # a month is the longest bucket
    if stream is not None:
        sql += " AND stream = %s"
        params.append(stream)
    rows = conn.execute(sql.replace("DELETE", "SELECT DISTINCT granularity, bucket, stream", 1), params).fetchall()
    doomed = {(g, b, s) for g, b, s in rows if g in GRANULARITIES and GRANULARITIES[g].next(b) > start}
    if not doomed:
        return 0
    return conn.execute("DELETE FROM approx_sketches a USING unnest(%s::text[], %s::bigint[], %s::text[]) "
                        "AS w(g, b, s) WHERE a.tenant = %s AND a.granularity = w.g AND a.bucket = w.b "
                        "AND a.stream = w.s", ([g for g, _, _ in doomed], [b for _, b, _ in doomed],
                                              [s for _, _, s in doomed], tenant)).rowcount


def prune_hot_left(conn, b_warm: int) -> int:
    """Delete the hot sketches of buckets that end at or below `b_warm` (warm owns their events
    now; scheduler/hot_sketches.py). Returns the rows deleted."""
    return conn.execute("DELETE FROM approx_sketches WHERE tier = 'hot' AND ((granularity = '1h' AND bucket <= %s) "
                        "OR (granularity = '1d' AND bucket <= %s))",
                        (b_warm - GRANULARITIES["1h"].ms, b_warm - GRANULARITIES["1d"].ms)).rowcount
