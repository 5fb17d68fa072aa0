"""The warm tier: PostgreSQL, with or without TimescaleDB — the system of record.

Schema (sql/migrations): raw `events` (stream_id, key_id, ts timestamptz, value, id) and rollups
`rollup_1m`, `rollup_1h`, `rollup_1d` (stream_id, key_id, bucket, count, sum, min, max), with keys
and streams interned to ids (tiers.db.KeyDictionary). Two modes, the same table names for readers:
  timescale  events is a hypertable (daily chunks); the rollups are hierarchical continuous
             aggregates 1m -> 1h -> 1d (materialized only) that `refresh` re-materialises with
             refresh_continuous_aggregate over the windows that changed;
  postgres   events is range-partitioned by day (partitions created as data arrives); the rollups
             are tables that `refresh` recomputes for exactly the buckets that changed.
Every change to raw events writes its minute buckets to `warm_dirty` in the same transaction;
`refresh` recomputes those buckets and deletes the dirty rows it handled, so late events reach the
rollups on the next refresh and nothing is ever recomputed in full.

`write` (the Tier contract) inserts and refreshes; the flush job calls `insert` inside its own
transaction (with its checkpoint) and the refresh job calls `refresh`.
"""
from __future__ import annotations

import datetime
import io
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import psycopg
from psycopg import sql
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg_pool import ConnectionPool, PoolTimeout

from rollups.cover import Piece
from rollups.errors import TierUnavailable
from rollups.partials import AGGS, empty_partials, partial_schema
from rollups.timeutil import (DAY_MS, G1D, G1H, G1M, MAX_MS, MIN_MS, MINUTE_MS, RAW, Granularity, TimeRange,
                              to_datetime)
from rollups.topk import Ranked, RankResult
from tiers.base import EVENT_SCHEMA, Group, Tier
from tiers.db import KeyDictionary, advisory_key, make_pool, resolve_warm_mode
from tiers import versions

ROLLUPS = (G1M, G1H, G1D)
_REFRESH_LOCK = advisory_key("tierstore.warm.refresh")
_PARTITION_LOCK = advisory_key("tierstore.warm.partitions")
_COPY_EVENTS = "COPY events (stream_id, key_id, ts, value, id) FROM STDIN"
_COPY_DELTAS = "COPY warm_delta (stream_id, key_id, bucket, count, sum, min, max) FROM STDIN (FORMAT binary)"
# PostgreSQL's binary COPY: signature, flags, header extension; each row: field count, then per
# field its length (-1 = NULL) and big-endian bytes; timestamptz = microseconds since 2000-01-01.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
_PG_EPOCH_MS = 946_684_800_000
_RAW_BATCH = 50_000
# A manual refresh otherwise splits the window into batches of a few buckets and re-materialises
# every batch from the first invalidation on (seconds for a day of 1m buckets); unbatched, it
# touches only the invalidated ranges.
_NO_BATCHES = '{"buckets_per_batch": 0}'


# a bound parameter of epoch milliseconds as timestamptz (exact; beyond Python's datetime range)
_TS = "(timestamptz 'epoch' + %s::bigint * interval '1 millisecond')"


def _clamp(ms: int) -> int:
    """Events lie in [MIN_MS, MAX_MS]; wider bounds are clamped to stay inside PostgreSQL's range."""
    return min(max(ms, MIN_MS), MAX_MS + 1)


def _ms(column: str) -> str:
    """SQL for a timestamptz column as exact epoch milliseconds."""
    return f"(extract(epoch FROM {column}) * 1000)::bigint"


class WarmTier(Tier):
    name = "warm"

    def __init__(self, postgres_url: str, *, mode: str = "auto", pool: ConnectionPool | None = None,
                 pool_size: int = 8):
        """Connect (failing now if PostgreSQL is unreachable) and resolve the mode the schema has.

        The schema must exist (tiers.db.apply_migrations). `mode` auto takes what the database holds.
        """
        self._own_pool = pool is None
        try:
            self._pool = pool or make_pool(postgres_url, max_size=pool_size, name="warm")
            with self._pool.connection() as conn:
                self.mode = resolve_warm_mode(conn, mode)
        except (psycopg.Error, PoolTimeout) as exc:
            raise TierUnavailable("warm") from exc
        self.keys = KeyDictionary(self._pool)
        self._closed = False

    @classmethod
    def from_settings(cls, settings) -> "WarmTier":
        return cls(settings.postgres_url, mode=settings.warm_mode)

    @property
    def pool(self) -> ConnectionPool:
        return self._pool

    @property
    def granularities(self) -> Sequence[Granularity]:
        return (G1M, G1H, G1D, RAW)

    # ---- writing -----------------------------------------------------------------------------

    def write(self, tenant: str, events: pa.Table) -> int:
        """Insert the batch and refresh the rollups, so every granularity sees it on return."""
        with self._translate(), self._pool.connection() as conn:
            n = self.insert(conn, tenant, events)
        self.refresh()
        return n

    def insert(self, conn: psycopg.Connection, tenant: str, events: pa.Table) -> int:
        """COPY a batch (EVENT_SCHEMA) into raw events and mark its minute buckets dirty, inside
        the caller's open transaction (nothing is visible until the caller commits)."""
        if events.num_rows == 0:
            return 0
        rows = self._rows(tenant, events.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA))
        self._ensure_partitions(rows["ts"])
        if rows["id"].null_count == rows.num_rows:  # the common case: fixed-width rows, binary COPY
            payload = _binary_copy([(">i4", rows["stream_id"]), (">i8", rows["key_id"]), (">i8", _pg_us(rows["ts"])),
                                    (">f8", rows["value"])], null_columns=1)
            with conn.cursor().copy(_COPY_EVENTS + " (FORMAT binary)") as copy:
                copy.write(payload)
        else:
            buf = io.BytesIO()
            pacsv.write_csv(rows, buf, pacsv.WriteOptions(include_header=False))
            with conn.cursor().copy(_COPY_EVENTS + " (FORMAT csv)") as copy:
                copy.write(buf.getbuffer())
        if self.mode == "postgres":
            self._write_deltas(conn, rows)
        else:
            self._mark_dirty(conn, rows["stream_id"], rows["ts"])
        versions.bump_warm_rows(conn, versions.RAW_KIND, rows["stream_id"], rows["ts"])
        return rows.num_rows

    @staticmethod
    def _write_deltas(conn: psycopg.Connection, rows: pa.Table) -> None:
        """postgres mode: the batch pre-aggregated per (stream, key, minute) into warm_delta."""
        ms = rows["ts"].cast(pa.int64()).to_numpy()
        t = pa.table({"stream_id": rows["stream_id"], "key_id": rows["key_id"],
                      "bucket": pa.array(ms - np.mod(ms, MINUTE_MS)), "value": rows["value"]})
        agg = t.group_by(["stream_id", "key_id", "bucket"], use_threads=False).aggregate(
            [("value", "count"), ("value", "sum"), ("value", "min"), ("value", "max")])
        payload = _binary_copy([(">i4", agg["stream_id"]), (">i8", agg["key_id"]),
                                (">i8", _pg_us(agg["bucket"])), (">i8", agg["value_count"]), (">f8", agg["value_sum"]),
                                (">f8", agg["value_min"]), (">f8", agg["value_max"])])
        with conn.cursor().copy(_COPY_DELTAS) as copy:
            copy.write(payload)

    def _rows(self, tenant: str, events: pa.Table) -> pa.Table:
        """Events with streams and keys replaced by ids, in the column order of _COPY_EVENTS."""
        parts = []
        for stream in pc.unique(events["stream"]).to_pylist():
            part = events.filter(pc.equal(events["stream"], stream))
            sid = self.keys.stream_id(tenant, stream, create=True)
            parts.append(pa.table({
                "stream_id": pa.array(np.full(part.num_rows, sid, dtype=np.int32)),
                "key_id": self.keys.key_id_array(sid, part["key"]),
                "ts": part["ts"].cast(pa.timestamp("ms", tz="UTC")),
                "value": part["value"],
                "id": part["id"],
            }))
        return pa.concat_tables(parts)

    def _mark_dirty(self, conn: psycopg.Connection, stream_ids: pa.ChunkedArray, ts: pa.ChunkedArray) -> None:
        ms = ts.cast(pa.int64()).to_numpy()
        minutes = pa.array(ms - np.mod(ms, MINUTE_MS))
        pairs = pa.table({"s": stream_ids, "m": minutes}).group_by(["s", "m"]).aggregate([])
        self._insert_dirty(conn, pairs["s"].to_pylist(), pairs["m"].to_pylist())

    @staticmethod
    def _insert_dirty(conn: psycopg.Connection, stream_ids: list[int], minutes_ms: list[int]) -> None:
        conn.execute("INSERT INTO warm_dirty (stream_id, bucket) "
                     "SELECT s, timestamptz 'epoch' + m * interval '1 millisecond' "
                     "FROM unnest(%s::int[], %s::bigint[]) AS d(s, m)", (stream_ids, minutes_ms))

    def _ensure_partitions(self, ts: pa.ChunkedArray) -> None:
        """postgres mode: create the daily partitions these timestamps need (own transaction).

        Checked against the database on every call (one index lookup): another process may have
        dropped a partition since (delete_range of whole days)."""
        if self.mode != "postgres":
            return
        days = np.unique(np.floor_divide(ts.cast(pa.int64()).to_numpy(), DAY_MS)).tolist()
        names = {_partition_name(d): d for d in days}
        with self._pool.connection() as conn:
            if self._existing(conn, names) == set(names):
                return
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PARTITION_LOCK,))
            existing = self._existing(conn, names)
            for name, day in sorted(names.items()):
                if name not in existing:
                    bound = "(timestamptz 'epoch' + {} * interval '1 millisecond')"
                    conn.execute(sql.SQL(f"CREATE TABLE {{}} PARTITION OF events FOR VALUES FROM {bound} TO {bound}")
                                 .format(sql.Identifier(name), sql.Literal(day * DAY_MS),
                                         sql.Literal((day + 1) * DAY_MS)))

    @staticmethod
    def _existing(conn: psycopg.Connection, names) -> set[str]:
        return {r[0] for r in conn.execute("SELECT relname FROM pg_class WHERE relname = ANY(%s) AND relkind = 'r'",
                                           (list(names),))}

    # ---- refreshing --------------------------------------------------------------------------

    def refresh(self, step: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Bring the rollups up to date with every committed change (the dirty buckets).

        Returns stats: the buckets recomputed per granularity. Concurrent refreshes serialise on
        an advisory lock. `step(name)` is called after each stage ("rollup_1m", "rollup_1h",
        "rollup_1d", "commit") — the scheduler hangs its crash points there.
        """
        step = step or (lambda name: None)
        with self._translate():
            if self.mode == "timescale":
                return self._refresh_timescale(step)
            return self._refresh_postgres(step)

    def _refresh_postgres(self, step: Callable[[str], None]) -> dict[str, Any]:
        # One REPEATABLE READ snapshot: the deltas and dirty buckets taken and the raw rows read
        # come from the same set of committed inserts (a later insert keeps its delta for the next
        # refresh and is invisible here). The lock is taken before the snapshot, so no other
        # refresh can commit rollup changes this snapshot does not see.
        with self._pool.connection() as conn:
            conn.autocommit = True
            conn.execute("SELECT pg_advisory_lock(%s)", (_REFRESH_LOCK,))
            try:
                conn.autocommit = False
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                with conn.transaction():
                    stats = self._refresh_postgres_snapshot(conn, step)
                step("commit")
                return stats
            finally:
                conn.rollback()
                conn.isolation_level = None
                conn.autocommit = True
                conn.execute("SELECT pg_advisory_unlock(%s)", (_REFRESH_LOCK,))
                conn.autocommit = False

    def _refresh_postgres_snapshot(self, conn: psycopg.Connection, step: Callable[[str], None]) -> dict[str, Any]:
        conn.execute("CREATE TEMP TABLE dirty_1m ON COMMIT DROP AS "
                     "WITH d AS (DELETE FROM warm_dirty RETURNING stream_id, bucket) "
                     "SELECT DISTINCT stream_id, bucket FROM d")
        conn.execute("CREATE TEMP TABLE delta_1m ON COMMIT DROP AS "
                     "WITH d AS (DELETE FROM warm_delta RETURNING *) "
                     "SELECT stream_id, key_id, bucket, sum(count)::bigint AS count, sum(sum) AS sum, "
                     "min(min) AS min, max(max) AS max FROM d GROUP BY 1, 2, 3")
        for coarse, fine in ((G1H, G1M), (G1D, G1H)):
            conn.execute(f"CREATE TEMP TABLE dirty_{coarse.name} ON COMMIT DROP AS "
                         f"SELECT DISTINCT stream_id, date_bin(%s::interval, bucket, timestamptz 'epoch') AS bucket "
                         f"FROM dirty_{fine.name}", (_interval(coarse),))
            conn.execute(f"CREATE TEMP TABLE delta_{coarse.name} ON COMMIT DROP AS "
                         f"SELECT stream_id, key_id, date_bin(%s::interval, bucket, timestamptz 'epoch') AS bucket, "
                         f"sum(count)::bigint AS count, sum(sum) AS sum, min(min) AS min, max(max) AS max "
                         f"FROM delta_{fine.name} GROUP BY 1, 2, 3", (_interval(coarse),))
        dirty = conn.execute("SELECT count(*) FROM dirty_1m").fetchone()[0]
        deltas = conn.execute("SELECT count(*) FROM delta_1m").fetchone()[0]
        stats: dict[str, Any] = {}
        for g, source in ((G1M, None), (G1H, G1M), (G1D, G1H)):
            if not (dirty or deltas):
                stats[f"buckets_{g.name}"] = stats[f"rows_{g.name}"] = 0
                step(f"rollup_{g.name}")
                continue
            conn.execute(f"CREATE TEMP TABLE touched_{g.name} ON COMMIT DROP AS "
                         f"SELECT stream_id, bucket FROM dirty_{g.name} UNION SELECT stream_id, bucket FROM delta_{g.name}")
            stats[f"buckets_{g.name}"] = conn.execute(f"SELECT count(*) FROM touched_{g.name}").fetchone()[0]
            rows = self._recompute(conn, g, source) if dirty else 0
            stats[f"rows_{g.name}"] = rows + (self._apply_deltas(conn, g) if deltas else 0)
            self._recompute_totals(conn, g)
            step(f"rollup_{g.name}")
        if dirty or deltas:  # the results cache's versions of what changed, in this transaction
            day = "(extract(epoch FROM date_bin('1 day', bucket, timestamptz 'epoch')) * 1000)::bigint"
            versions.bump_warm(conn, versions.ROLLUP_KIND, f"SELECT stream_id, {day} FROM dirty_1m "
                                                           f"UNION SELECT stream_id, {day} FROM delta_1m")
        return stats

    @staticmethod
    def _recompute_totals(conn: psycopg.Connection, g: Granularity) -> None:
        """The stream-wide totals of every bucket touched, from the (already updated) rollup."""
        conn.execute(f"DELETE FROM total_{g.name} t USING touched_{g.name} x "
                     f"WHERE t.stream_id = x.stream_id AND t.bucket = x.bucket")
        conn.execute(f"INSERT INTO total_{g.name} (stream_id, bucket, count, sum, min, max) "
                     f"SELECT r.stream_id, r.bucket, sum(r.count), sum(r.sum), min(r.min), max(r.max) "
                     f"FROM touched_{g.name} x JOIN rollup_{g.name} r ON r.stream_id = x.stream_id AND r.bucket = x.bucket "
                     f"GROUP BY 1, 2")

    @staticmethod
    def _apply_deltas(conn: psycopg.Connection, g: Granularity) -> int:
        """Fold the inserted deltas into rollup_g, except in buckets just recomputed from below."""
        return conn.execute(
            f"INSERT INTO rollup_{g.name} AS r (stream_id, key_id, bucket, count, sum, min, max) "
            f"SELECT d.stream_id, d.key_id, d.bucket, d.count, d.sum, d.min, d.max FROM delta_{g.name} d "
            f"WHERE NOT EXISTS (SELECT 1 FROM dirty_{g.name} x WHERE x.stream_id = d.stream_id AND x.bucket = d.bucket) "
            f"ON CONFLICT (stream_id, bucket, key_id) DO UPDATE SET count = r.count + excluded.count, "
            f"sum = r.sum + excluded.sum, min = least(r.min, excluded.min), max = greatest(r.max, excluded.max)"
        ).rowcount

    @staticmethod
    def _recompute(conn: psycopg.Connection, g: Granularity, source: Granularity | None) -> int:
        """Replace the rows of rollup_g in its dirty buckets, from raw (1m) or the finer rollup."""
        step = _interval(g)
        # islands of consecutive dirty buckets become range scans
        conn.execute(f"CREATE TEMP TABLE ranges_{g.name} ON COMMIT DROP AS "
                     f"SELECT stream_id, min(bucket) AS lo, max(bucket) + %s::interval AS hi FROM ("
                     f"  SELECT stream_id, bucket, bucket - row_number() OVER w * %s::interval AS island"
                     f"  FROM dirty_{g.name} WINDOW w AS (PARTITION BY stream_id ORDER BY bucket)) x "
                     f"GROUP BY stream_id, island", (step, step))
        conn.execute(f"ANALYZE ranges_{g.name}")
        conn.execute(f"DELETE FROM rollup_{g.name} r USING ranges_{g.name} d "
                     f"WHERE r.stream_id = d.stream_id AND r.bucket >= d.lo AND r.bucket < d.hi")
        if source is None:
            select = ("SELECT e.stream_id, e.key_id, date_bin(%s::interval, e.ts, timestamptz 'epoch') AS b, "
                      "count(*), sum(e.value), min(e.value), max(e.value) "
                      "FROM ranges_1m d JOIN events e ON e.stream_id = d.stream_id AND e.ts >= d.lo AND e.ts < d.hi "
                      "GROUP BY 1, 2, 3")
        else:
            select = (f"SELECT r.stream_id, r.key_id, date_bin(%s::interval, r.bucket, timestamptz 'epoch') AS b, "
                      f"sum(r.count), sum(r.sum), min(r.min), max(r.max) "
                      f"FROM ranges_{g.name} d JOIN rollup_{source.name} r "
                      f"ON r.stream_id = d.stream_id AND r.bucket >= d.lo AND r.bucket < d.hi "
                      f"GROUP BY 1, 2, 3")
        cur = conn.execute(f"INSERT INTO rollup_{g.name} (stream_id, key_id, bucket, count, sum, min, max) "
                           + select, (step,))
        return cur.rowcount

    def _refresh_timescale(self, step: Callable[[str], None]) -> dict[str, Any]:
        with self._pool.connection() as conn:
            conn.autocommit = True
            try:
                conn.execute("SELECT pg_advisory_lock(%s)", (_REFRESH_LOCK,))
                try:
                    return self._refresh_timescale_locked(conn, step)
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (_REFRESH_LOCK,))
            finally:
                conn.autocommit = False

    @staticmethod
    def _refresh_timescale_locked(conn: psycopg.Connection, step: Callable[[str], None]) -> dict[str, Any]:
        rows = conn.execute("SELECT id, stream_id, " + _ms("bucket") + " FROM warm_dirty").fetchall()
        if not rows:
            return {"buckets_1m": 0, "buckets_1h": 0, "buckets_1d": 0, "windows": 0}
        minutes = {(s, m) for _, s, m in rows}
        days = sorted({m - m % DAY_MS for _, m in minutes})
        windows = _islands(days, DAY_MS)
        # hierarchical: each level reads the one below, so refresh bottom-up over the same windows
        for g in ROLLUPS:
            for view in (f"rollup_{g.name}", f"total_{g.name}"):
                for lo, hi in windows:
                    conn.execute(f"CALL refresh_continuous_aggregate(%s, {_TS}, {_TS}, options => %s::jsonb)",
                                 (view, lo, hi, _NO_BATCHES))
            step(f"rollup_{g.name}")
        # the results cache's versions move after the data, with the dirty rows they stand for
        with conn.transaction():
            versions.bump_warm_rows(conn, versions.ROLLUP_KIND, pa.array([r[1] for r in rows], pa.int32()),
                                    pa.array([r[2] for r in rows], pa.int64()))
            conn.execute("DELETE FROM warm_dirty WHERE id = ANY(%s)", ([r[0] for r in rows],))
        step("commit")
        return {"buckets_1m": len(minutes),
                "buckets_1h": len({(s, m - m % G1H.ms) for s, m in minutes}),
                "buckets_1d": len({(s, m - m % DAY_MS) for s, m in minutes}),
                "windows": len(windows)}

    def dirty_before(self, conn: psycopg.Connection, ts_ms: int) -> int:
        """How many changes before ts_ms the rollups do not reflect yet (0 = they cover it)."""
        tables = ("warm_dirty", "warm_delta") if self.mode == "postgres" else ("warm_dirty",)
        return sum(conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM {t} WHERE bucket < {_TS} LIMIT 1000) x",
                                (_clamp(ts_ms),)).fetchone()[0] for t in tables)

    def compress(self, before_ms: int) -> int:
        """timescale mode: compress the raw chunks that end at or before before_ms (idempotent);
        returns how many were compressed now. Late events into them still work (DML on compressed
        chunks). postgres mode has no compression: 0."""
        if self.mode != "timescale":
            return 0
        with self._translate(), self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT compress_chunk(format('%%I.%%I', chunk_schema, chunk_name)::regclass, if_not_compressed => true) "
                "FROM timescaledb_information.chunks WHERE hypertable_name = 'events' AND NOT is_compressed "
                f"AND range_end <= {_TS}", (_clamp(before_ms),)).fetchall()
        return len(rows)

    # ---- reading -----------------------------------------------------------------------------

    def aggregate(self, tenant: str, stream: str, pieces: Sequence[Piece], group: Group,
                  key: str | None = None) -> pa.Table:
        with self._translate():
            sid = self.keys.stream_id(tenant, stream)
            if sid is None or not pieces:
                return empty_partials(group)
            key_id = None
            if key is not None:
                key_id = self.keys.key_ids(sid, [key], create=False).get(key)
                if key_id is None:
                    return empty_partials(group)
            sql, params = _aggregate_sql(sid, pieces, group, key_id)
            with self._pool.connection() as conn:
                rows = conn.execute(sql, params).fetchall()
        return _partials(rows, group)

    def data_versions(self, tenant: str, stream: str, pieces: Sequence[Piece]) -> list:
        """One version per piece for the router's results cache (tiers/versions.py): it changes in
        the transaction of every insert, refresh and delete that changes what the piece reads."""
        with self._translate():
            sid = self.keys.stream_id(tenant, stream)
            if sid is None:
                return [("no stream",)] * len(pieces)
            with self._pool.connection() as conn:
                return versions.warm_versions(conn, sid, pieces)

    def read_raw(self, tenant: str, stream: str, rng: TimeRange) -> Iterator[pa.RecordBatch]:
        with self._translate():
            sid = self.keys.stream_id(tenant, stream)
        if sid is None or rng.empty:
            return
        with self._translate(), self._pool.connection() as conn:
            with conn.cursor(name="warm_read_raw") as cur:
                cur.execute("SELECT k.key, " + _ms("e.ts") + ", e.value, e.id FROM events e "
                            "JOIN keys k ON k.id = e.key_id "
                            f"WHERE e.stream_id = %s AND e.ts >= {_TS} AND e.ts < {_TS} ORDER BY e.ts, k.key",
                            (sid, _clamp(rng.start), _clamp(rng.end)))
                while rows := cur.fetchmany(_RAW_BATCH):
                    keys, ts, values, ids = zip(*rows)
                    yield pa.RecordBatch.from_arrays(
                        [pa.array([stream] * len(rows), pa.string()), pa.array(keys, pa.string()),
                         pa.array(ts, pa.int64()), pa.array(values, pa.float64()), pa.array(ids, pa.string())],
                        schema=EVENT_SCHEMA)

    def streams(self, tenant: str) -> list[str]:
        with self._translate(), self._pool.connection() as conn:
            rows = conn.execute("SELECT s.stream FROM streams s WHERE s.tenant = %s AND EXISTS "
                                "(SELECT 1 FROM events e WHERE e.stream_id = s.id) ORDER BY s.stream",
                                (tenant,)).fetchall()
        return [r[0] for r in rows]

    def tenants_streams(self) -> list[tuple[str, str]]:
        """(tenant, stream) of every stream ever interned, sorted (it may hold no events now)."""
        with self._translate(), self._pool.connection() as conn:
            return [tuple(r) for r in conn.execute("SELECT tenant, stream FROM streams ORDER BY tenant, stream")]

    def first_event_ms(self, lo: int, hi: int) -> int | None:
        """The oldest event time (epoch ms) in [lo, hi) of any stream, or None (one indexed query)."""
        with self._translate(), self._pool.connection() as conn:
            row = conn.execute(f"SELECT {_ms('min(ts)')} FROM events WHERE ts >= {_TS} AND ts < {_TS}",
                               (_clamp(lo), _clamp(hi))).fetchone()
        return row[0] if row and row[0] is not None else None

    def top_k(self, tenant: str, stream: str, pieces: Sequence[Piece], k: int, by: str) -> list[Ranked]:
        """Exact top-k keys over the pieces, value desc then key asc (= rollups.topk.top_k), ranked
        inside PostgreSQL: only k keys leave the database.

        By count, or by sum when no value in the range is negative, the threshold algorithm
        (TPUT) reads the head of each rollup bucket through its value index and then exact
        totals of the few candidates; otherwise (or when the data is too flat for it to pay)
        every key of the range is aggregated."""
        value = _rank_value(by)
        with self._translate():
            sid = self.keys.stream_id(tenant, stream)
            if sid is None or not pieces or k <= 0:
                return []
            with self._pool.connection() as conn:
                key_ids = self._threshold_candidates(conn, sid, pieces, k, by) if by in ("count", "sum") else None
                per_key, params = _per_key_sql(sid, pieces, key_ids=key_ids)
                rows = conn.execute(
                    f"SELECT k.key, {value} AS v FROM ({per_key}) a JOIN keys k ON k.id = a.key_id "
                    f"ORDER BY v DESC, k.key COLLATE \"C\" LIMIT %s", (*params, k)).fetchall()
        return [Ranked(i + 1, key, float(v)) for i, (key, v) in enumerate(rows)]

    def _threshold_candidates(self, conn: psycopg.Connection, sid: int, pieces: Sequence[Piece], k: int,
                              by: str, max_candidates: int = 20_000) -> list[int] | None:
        """Keys that can be in the top k (TPUT phases 1 and 2), or None to aggregate every key.

        Lists: every 1h and 1d bucket of the pieces (read by their value index) plus one list of
        the exact per-key partials of the 1m and raw pieces. Phase 1: the k best of each list;
        tau = the k-th best of their per-key sums (a lower bound of the k-th total). A key whose
        total reaches tau has, values being non-negative, at least tau/m in some list (m lists):
        phase 2 collects those keys. Ties at tau are kept (their total is >= tau)."""
        heads = [(g, b) for p in pieces if p.granularity in (G1H, G1D) for g in (p.granularity,)
                 for b in g.buckets(p.range)]
        edges = [p for p in pieces if p.granularity not in (G1H, G1D) and not p.range.empty]
        if len(heads) < 2:
            return None
        if by == "sum" and self._range_min(conn, sid, pieces) < 0:
            return None
        m = len(heads) + (1 if edges else 0)
        lists_sql, params = self._lists_sql(sid, heads, edges, by, "LIMIT %s", [k])
        tau_row = conn.execute(f"SELECT v FROM (SELECT key_id, sum(v) AS v FROM ({lists_sql}) l GROUP BY key_id) t "
                               f"ORDER BY v DESC OFFSET %s LIMIT 1", (*params, k - 1)).fetchone()
        if tau_row is None or tau_row[0] <= 0:
            return None  # fewer than k keys, or only zeros: nothing to prune
        threshold = tau_row[0] / m
        lists_sql, params = self._lists_sql(sid, heads, edges, by, None, [], min_value=threshold)
        rows = conn.execute(f"SELECT DISTINCT key_id FROM ({lists_sql}) l LIMIT %s",
                            (*params, max_candidates + 1)).fetchall()
        return [r[0] for r in rows] if len(rows) <= max_candidates else None

    @staticmethod
    def _lists_sql(sid: int, heads: list[tuple[Granularity, int]], edges: list[Piece], by: str, limit: str | None,
                   limit_params: list, min_value: float | None = None) -> tuple[str, list]:
        """(key_id, v) rows of every list: each head bucket by its value index (best first, cut by
        `limit` and/or v >= min_value), and the edge pieces' per-key partials."""
        parts, params = [], []
        cut = " AND r.{by} >= %s".format(by=by) if min_value is not None else ""
        for g in (G1H, G1D):
            starts = [b for gg, b in heads if gg == g]
            if not starts:
                continue
            parts.append(f"SELECT r.key_id, r.{by}::float8 AS v FROM unnest(%s::bigint[]) AS b(ms) CROSS JOIN LATERAL "
                         f"(SELECT key_id, {by} FROM rollup_{g.name} r WHERE r.stream_id = %s "
                         f"AND r.bucket = timestamptz 'epoch' + b.ms * interval '1 millisecond'{cut} "
                         f"ORDER BY r.{by} DESC {limit or ''}) r")
            params += [starts, sid] + ([min_value] if min_value is not None else []) + (limit_params if limit else [])
        if edges:
            union, eparams = _union_sql(sid, edges, "key", None)
            agg = "sum(c)" if by == "count" else "sum(s)"
            having = " HAVING " + agg + " >= %s" if min_value is not None else ""
            parts.append(f"SELECT g AS key_id, {agg}::float8 AS v FROM ({union}) u GROUP BY g{having}")
            params += eparams + ([min_value] if min_value is not None else [])
        return " UNION ALL ".join(parts), params

    @staticmethod
    def _range_min(conn: psycopg.Connection, sid: int, pieces: Sequence[Piece]) -> float:
        union, params = _union_sql(sid, pieces, "bucket", None)  # stream totals: one row per bucket
        row = conn.execute(f"SELECT min(lo) FROM ({union}) u", params).fetchone()
        return row[0] if row and row[0] is not None else 0.0

    def rank(self, tenant: str, stream: str, pieces: Sequence[Piece], key: str, by: str,
             around: int = 0) -> RankResult:
        """1-based rank of `key` over the pieces and `around` neighbours each side
        (= rollups.topk.rank_of), computed inside PostgreSQL."""
        value = _rank_value(by)
        with self._translate():
            sid = self.keys.stream_id(tenant, stream)
            if sid is None or not pieces:
                return RankResult(None, None, 0, [])
            per_key, params = _per_key_sql(sid, pieces)
            with self._pool.connection() as conn:
                conn.execute(f"CREATE TEMP TABLE ranked ON COMMIT DROP AS SELECT k.key, {value} AS v, "
                             f"row_number() OVER (ORDER BY {value} DESC, k.key COLLATE \"C\") AS rn "
                             f"FROM ({per_key}) a JOIN keys k ON k.id = a.key_id", params)
                total = conn.execute("SELECT count(*) FROM ranked").fetchone()[0]
                at = conn.execute("SELECT rn, v FROM ranked WHERE key = %s", (key,)).fetchone()
                if at is None:
                    return RankResult(None, None, total, [])
                rows = conn.execute("SELECT rn, key, v FROM ranked WHERE rn BETWEEN %s AND %s ORDER BY rn",
                                    (at[0] - around, at[0] + around)).fetchall()
        return RankResult(at[0], float(at[1]), total, [Ranked(rn, k, float(v)) for rn, k, v in rows])

    def stats(self) -> dict[str, int]:
        """Estimated raw rows and bytes on disk (events and rollups) for GET /v1/tiers."""
        with self._translate(), self._pool.connection() as conn:
            if self.mode == "timescale":
                row = conn.execute(
                    "SELECT approximate_row_count('events'), hypertable_size('events') + "
                    "(SELECT coalesce(sum(hypertable_size(format('%I.%I', materialization_hypertable_schema, "
                    "materialization_hypertable_name)::regclass)), 0) "
                    " FROM timescaledb_information.continuous_aggregates)").fetchone()
            else:
                row = conn.execute(
                    "SELECT (SELECT coalesce(sum(greatest(c.reltuples, 0)), 0) FROM pg_inherits i "
                    "        JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass), "
                    "(SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0) FROM pg_inherits i "
                    " WHERE i.inhparent = 'events'::regclass) + pg_total_relation_size('rollup_1m') + "
                    "pg_total_relation_size('rollup_1h') + pg_total_relation_size('rollup_1d')").fetchone()
        return {"rows": int(row[0]), "bytes": int(row[1])}

    # ---- deleting ----------------------------------------------------------------------------

    def delete_range(self, tenant: str | None, stream: str | None, rng: TimeRange) -> int:
        """Delete raw events in rng and bring the rollups in line (buckets left empty disappear;
        buckets cut by rng's edges keep what lies outside rng).

        Whole days of every stream (tenant and stream None, as export_cold drops them) go at once:
        their partitions are dropped (postgres) or their chunks (timescale, drop_chunks)."""
        if rng.empty:
            return 0
        with self._translate():
            sids = self._stream_ids(tenant, stream)
            if sids == []:
                return 0
            parts, deleted = [rng], 0
            days = TimeRange(min(G1D.ceil(rng.start), rng.end), max(G1D.floor(rng.end), rng.start))
            if sids is None and days.start < days.end:
                deleted += self._drop_days(days)
                parts = [TimeRange(rng.start, days.start), TimeRange(days.end, rng.end)]
            for part in parts:
                if not part.empty:
                    deleted += self._delete_rows(sids, part)
        self.refresh()
        return deleted

    def _delete_rows(self, sids: list[int] | None, rng: TimeRange) -> int:
        where, params = f"ts >= {_TS} AND ts < {_TS}", [_clamp(rng.start), _clamp(rng.end)]
        if sids is not None:
            where += " AND stream_id = ANY(%s)"
            params.append(sids)
        with self._pool.connection() as conn:
            deleted = conn.execute(
                "WITH d AS (DELETE FROM events WHERE " + where + " RETURNING stream_id, ts), "
                "m AS (INSERT INTO warm_dirty (stream_id, bucket) "
                "      SELECT stream_id, date_bin('1 minute', ts, timestamptz 'epoch') FROM d GROUP BY 1, 2) "
                "SELECT count(*) FROM d", params).fetchone()[0]
            if deleted:
                versions.bump_warm_everything(conn)
            return deleted

    def _drop_days(self, days: TimeRange) -> int:
        """Drop every event in whole days [days.start, days.end) and their rollups; returns rows."""
        lo, hi = _clamp(days.start), _clamp(days.end)
        if self.mode == "timescale":
            return self._drop_chunks(lo, hi)
        with self._pool.connection() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PARTITION_LOCK,))
            partitions = [name for (name,) in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'events'::regclass")
                if lo <= _partition_day(name) * DAY_MS and (_partition_day(name) + 1) * DAY_MS <= hi]
            rows = 0
            for name in partitions:
                rows += conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))).fetchone()[0]
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
            # pending changes of those days must not resurrect rollup rows
            for table in ("rollup_1m", "rollup_1h", "rollup_1d", "total_1m", "total_1h", "total_1d", "warm_delta",
                          "warm_dirty"):
                conn.execute(f"DELETE FROM {table} WHERE bucket >= {_TS} AND bucket < {_TS}", (lo, hi))
            versions.bump_warm_everything(conn)
        return rows

    def _drop_chunks(self, lo: int, hi: int) -> int:
        with self._pool.connection() as conn:
            conn.autocommit = True
            try:
                rows = conn.execute(f"SELECT count(*) FROM events WHERE ts >= {_TS} AND ts < {_TS}",
                                    (lo, hi)).fetchone()[0]
                conn.execute(f"SELECT drop_chunks('events', older_than => {_TS}, newer_than => {_TS})", (hi, lo))
                # chunks are whole days here; anything left in the range (none expected) goes row by row
                conn.execute(f"DELETE FROM events WHERE ts >= {_TS} AND ts < {_TS}", (lo, hi))
                # drop_chunks leaves the aggregates as they were: re-materialise the days from (no) raw
                for view in [f"{kind}_{g.name}" for g in ROLLUPS for kind in ("rollup", "total")]:
                    conn.execute(f"CALL refresh_continuous_aggregate(%s, {_TS}, {_TS}, force => true, "
                                 f"options => %s::jsonb)", (view, lo, hi, _NO_BATCHES))
                conn.execute(f"DELETE FROM warm_dirty WHERE bucket >= {_TS} AND bucket < {_TS}", (lo, hi))
                versions.bump_warm_everything(conn)  # after the data (autocommit)
            finally:
                conn.autocommit = False
        return rows

    def _stream_ids(self, tenant: str | None, stream: str | None) -> list[int] | None:
        """Stream ids matching the filter; None means every stream."""
        if tenant is None and stream is None:
            return None
        sql, params = "SELECT id FROM streams WHERE true", []
        if tenant is not None:
            sql += " AND tenant = %s"
            params.append(tenant)
        if stream is not None:
            sql += " AND stream = %s"
            params.append(stream)
        with self._pool.connection() as conn:
            return [r[0] for r in conn.execute(sql, params)]

    # ---- life cycle --------------------------------------------------------------------------

    def health(self) -> None:
        with self._translate(), self._pool.connection(timeout=5) as conn:
            conn.execute("SELECT 1")

    def close(self) -> None:
        if not self._closed and self._own_pool:
            self._pool.close()
        self._closed = True

    @contextmanager
    def _translate(self):
        try:
            yield
        except (psycopg.Error, PoolTimeout) as exc:
            raise TierUnavailable("warm") from exc


def _rank_value(by: str) -> str:
    if by not in AGGS:
        raise ValueError(f"by must be one of {', '.join(AGGS)}, not {by!r}")
    return _RANK_VALUE[by]


def _pg_us(ms: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Epoch milliseconds (int64 or timestamp) as PostgreSQL's binary timestamptz."""
    return (ms.cast(pa.int64()).to_numpy() - _PG_EPOCH_MS) * 1000


def _binary_copy(columns: list[tuple[str, Any]], null_columns: int = 0) -> bytes:
    """A binary COPY payload of fixed-width columns (numpy dtype, values) plus trailing NULL columns."""
    n = len(columns[0][1])
    fields = [("n", ">i2")]
    for i, (dtype, _) in enumerate(columns):
        fields += [(f"l{i}", ">i4"), (f"v{i}", dtype)]
    fields += [(f"z{j}", ">i4") for j in range(null_columns)]
    rows = np.empty(n, dtype=np.dtype(fields))
    rows["n"] = len(columns) + null_columns
    for i, (dtype, values) in enumerate(columns):
        rows[f"l{i}"] = np.dtype(dtype).itemsize
        rows[f"v{i}"] = values.to_numpy() if hasattr(values, "to_numpy") else values
    for j in range(null_columns):
        rows[f"z{j}"] = -1
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER


def _interval(g: Granularity) -> str:
    return {"1m": "1 minute", "1h": "1 hour", "1d": "1 day"}[g.name]


_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()


def _partition_name(day: int) -> str:
    d = to_datetime(day * DAY_MS)
    return f"events_p{d.year:04d}{d.month:02d}{d.day:02d}"


def _partition_day(name: str) -> int:
    """Inverse of _partition_name: the day number (days since the epoch) of a partition."""
    d = datetime.date(int(name[8:12]), int(name[12:14]), int(name[14:16]))
    return d.toordinal() - _EPOCH_ORDINAL


def _islands(sorted_starts: list[int], step: int) -> list[tuple[int, int]]:
    """Consecutive bucket starts merged into [lo, hi) windows."""
    out: list[tuple[int, int]] = []
    for s in sorted_starts:
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], s + step)
        else:
            out.append((s, s + step))
    return out


def _union_sql(sid: int, pieces: Sequence[Piece], group: Group, key_id: int | None,
               key_ids: list[int] | None = None) -> tuple[str, list]:
    """UNION ALL of the rows of every piece: columns g (key_id or bucket ms), c, s, lo, hi.

    Rows, not per-piece aggregates: one hash aggregate over the union beats per-piece group-bys,
    which lead the planner into key-ordered index scans of whole rollups."""
    parts, params = [], []
    key_filter, key_params, probe = "", [], False
    if key_id is not None:
        key_filter, key_params = " AND key_id = %s", [key_id]
    elif key_ids is not None:
        # a few candidate keys: probe each one's (stream, key, bucket) index, not the whole range
        key_filter, probe = " AND key_id = wanted.id", True

    def source(table: str) -> str:
        return f"FROM unnest(%s::bigint[]) AS wanted(id) JOIN {table} ON " if probe else f"FROM {table} WHERE "

    for p in pieces:
        if p.range.empty:
            continue
        bounds: list[Any] = ([key_ids] if probe else []) + [sid, _clamp(p.range.start), _clamp(p.range.end)]
        bounds += key_params
        if p.granularity.is_raw:
            gcol = "key_id" if group == "key" else _ms("date_bin('1 minute', ts, timestamptz 'epoch')")
            parts.append(f"SELECT {gcol} AS g, 1::bigint AS c, value AS s, value AS lo, value AS hi "
                         f"{source('events')}stream_id = %s AND ts >= {_TS} AND ts < {_TS}{key_filter}")
        else:
            gcol = "key_id" if group == "key" else _ms("bucket")
            # a series of the whole stream reads the stream-wide totals: one row per bucket
            table = "total" if group == "bucket" and key_id is None else "rollup"
            parts.append(f"SELECT {gcol} AS g, count AS c, sum AS s, min AS lo, max AS hi "
                         f"{source(f'{table}_{p.granularity.name}')}stream_id = %s AND bucket >= {_TS} "
                         f"AND bucket < {_TS}{key_filter}")
        params += bounds
    union = " UNION ALL ".join(parts) or "SELECT NULL::bigint AS g, 0::bigint AS c, 0 AS s, 0 AS lo, 0 AS hi WHERE false"
    return union, params


def _per_key_sql(sid: int, pieces: Sequence[Piece], key_id: int | None = None,
                 key_ids: list[int] | None = None) -> tuple[str, list]:
    union, params = _union_sql(sid, pieces, "key", key_id, key_ids)
    return (f"SELECT g AS key_id, sum(c)::bigint AS c, sum(s) AS s, min(lo) AS lo, max(hi) AS hi "
            f"FROM ({union}) u GROUP BY g"), params


def _aggregate_sql(sid: int, pieces: Sequence[Piece], group: Group, key_id: int | None) -> tuple[str, list]:
    if group == "key":
        per_key, params = _per_key_sql(sid, pieces, key_id)
        return f"SELECT k.key, a.c, a.s, a.lo, a.hi FROM ({per_key}) a JOIN keys k ON k.id = a.key_id", params
    union, params = _union_sql(sid, pieces, group, key_id)
    return (f"SELECT g, sum(c)::bigint, sum(s), min(lo), max(hi) FROM ({union}) u GROUP BY g", params)


# the ranking value of a per-key row (as rollups.partials.value_column): count | sum | min | max | avg
_RANK_VALUE = {"count": "a.c::float8", "sum": "a.s", "min": "a.lo", "max": "a.hi", "avg": "a.s / a.c"}


def _partials(rows: list[tuple], group: Group) -> pa.Table:
    schema = partial_schema(group)
    if not rows:
        return schema.empty_table()
    cols = list(zip(*rows))
    return pa.table([pa.array(c, f.type) for c, f in zip(cols, schema)], schema=schema)

