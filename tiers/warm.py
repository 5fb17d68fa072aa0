"""The warm tier: PostgreSQL, with or without TimescaleDB — the system of record.

Schema (sql/migrations; described as SQLAlchemy Core metadata in tiers.warm_sql): raw `events`
(stream_id, key_id, ts timestamptz, value, id) and rollups `rollup_1m`, `rollup_1h`, `rollup_1d`
(stream_id, key_id, bucket, count, sum, min, max) with stream-wide totals `total_*`, keys and
streams interned to ids (tiers.db.StreamKeyIds). Two modes, the same table names for readers, each
a strategy (tiers.warm_strategy) chosen once when the mode is resolved:
  timescale  events is a hypertable (daily chunks); the rollups are hierarchical continuous
             aggregates 1m -> 1h -> 1d (materialized only) that `refresh` re-materialises with
             refresh_continuous_aggregate over the windows that changed (tiers.warm_timescale);
  postgres   events is range-partitioned by day (partitions created as data arrives); the rollups
             are tables that `refresh` recomputes for exactly the buckets that changed
             (tiers.warm_postgres).
Every change to raw events records what it changed (dirty minute buckets, or postgres-mode deltas)
in the same transaction; `refresh` brings the rollups up to date with those changes and deletes
the rows it handled, so late events reach the rollups on the next refresh and nothing is ever
recomputed in full. Read statements are the same in both modes (tiers.warm_queries).

`write` (the Tier contract) inserts and refreshes; the flush job calls `insert` inside its own
transaction (with its checkpoint) and the refresh job calls `refresh`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg_pool import ConnectionPool

from rollups.cover import Piece, granularity_runs
from rollups.partials import empty_partials, partial_schema
from rollups.timeutil import G1D, G1H, G1M, RAW, Granularity, TimeRange
from rollups.topk import Ranked, RankResult
from tiers import versions, warm_keys, warm_queries as q
from tiers.base import EVENT_SCHEMA, Group, RankedAccess, Tier
from tiers.ranked_access import TableAccess, check_by
from tiers.warm_ranked import WarmRankedAccess
from tiers.db import StreamKeyIds, make_pool, resolve_warm_mode
from tiers.errors import tier_read, translate
from tiers.hot_sums import with_lows
from tiers.warm_pairs import needs_pairs
from tiers.warm_copy import binary_copy, pg_us
from tiers.warm_sql import clamp, copy_sql, events
from tiers.warm_strategy import DeferFrom, make_strategy

_COPY_BINARY = copy_sql(events, "(FORMAT binary)")
_RAW_BATCH = 50_000



class WarmTier(Tier):
    name = "warm"
    capabilities = frozenset({"top_k", "rank", "data_versions", "stats"})

    def __init__(self, postgres_url: str, *, mode: str = "auto", pool: ConnectionPool | None = None,
                 pool_size: int = 8):
        """Connect (failing now if PostgreSQL is unreachable) and resolve the mode the schema has.

        The schema must exist (tiers.db.apply_migrations). `mode` auto takes what the database holds.
        """
        self._own_pool = pool is None
        with translate(self.name):
            self._pool = pool or make_pool(postgres_url, max_size=pool_size, name="warm")
            with self._pool.connection() as conn:
                mode = resolve_warm_mode(conn, mode)
        self._strategy = make_strategy(mode, self._pool)
        #: sums kept and read as exact pairs hi + lo (postgres mode: tiers/warm_pairs.py)
        self.exact_sums = mode == "postgres"
        self.keys = StreamKeyIds(self._pool)
        self._names = None  # tiers.cold_keys.PgKeyDictionary: key id -> key, for ranked_access
        self._closed = False

    @classmethod
    def from_settings(cls, settings) -> "WarmTier":
        return cls(settings.postgres_url, mode=settings.warm_mode)

    @property
    def mode(self) -> str:
        """The warm mode in use: "postgres" or "timescale"."""
        return self._strategy.mode

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

    def insert(self, conn: psycopg.Connection, tenant: str, events: pa.Table,
               record: Callable[[psycopg.Connection, pa.Table], None] | None = None) -> int:
        """COPY a batch (EVENT_SCHEMA) into raw events and record what it changed for the next
        refresh, inside the caller's open transaction (nothing is visible until the caller commits).
        `record(conn, rows)`: instead of recording the change for refresh, the caller folds the rows
        (stream_id, key_id, ts, value, id) into the rollups itself (tierstore.history_warm)."""
        if events.num_rows == 0:
            return 0
        rows = self._rows(tenant, events.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA))
        self._strategy.prepare_days(rows["ts"])
        # binary COPY, encoded vectorised (the id column, when any event has one, as text)
        ids = None if rows["id"].null_count == rows.num_rows else rows["id"]
        payload = binary_copy([(">i4", rows["stream_id"]), (">i8", rows["key_id"]), (">i8", pg_us(rows["ts"])),
                               (">f8", rows["value"])], null_columns=0 if ids is not None else 1, text=ids)
        with conn.cursor().copy(_COPY_BINARY) as copy:
            copy.write(payload)
        (record or self._strategy.record_insert)(conn, rows)
        versions.bump_warm_rows(conn, versions.RAW_KIND, rows["stream_id"], rows["ts"])
        return rows.num_rows

    def _rows(self, tenant: str, events: pa.Table) -> pa.Table:
        """Events with streams and keys replaced by ids, in the column order of the events table."""
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

    # ---- refreshing --------------------------------------------------------------------------

    def refresh(self, step: Callable[[str], None] | None = None, *, defer_from: DeferFrom = None) -> dict[str, Any]:
        """Bring the rollups up to date with every committed change (the dirty buckets).

        Returns stats: the buckets recomputed per granularity. Concurrent refreshes serialise on
        an advisory lock. `step(name)` is called after each stage ("rollup_1m", "rollup_1h",
        "rollup_1d", "commit") — the scheduler hangs its crash points there.

        `defer_from` (postgres mode; epoch ms, or a function of the refresh's connection giving
        it inside the refresh's snapshot and lock, e.g. tiers.catalog_pg.b_warm_in): 1h and 1d
        buckets that end after it are left stale (recorded in warm_stale; rollup_1m still gets
        every change), and stale buckets ending at or before it are recomputed from the level
        below. No query reads a 1h or 1d bucket of warm that ends after b_warm (the hot tier owns
        part of it), so with defer_from = b_warm every answer stays exact and refresh skips most
        of its work under live ingest (issue 11); expire_hot refreshes with its target before it
        moves b_warm. None (the default): every rollup is brought up to date, stale ones too.
        """
        with self._translate():
            return self._strategy.refresh(step or (lambda name: None), defer_from)

    def dirty_before(self, conn: psycopg.Connection, ts_ms: int) -> int:
        """How many changes before ts_ms the rollups do not reflect yet (0 = they cover it): pending
        changes in buckets starting before it, and stale 1h/1d buckets ending at or before it."""
        stale = self._strategy.stale_table
        return sum(q.pending_before(t).run(conn, {"before": clamp(ts_ms)}).fetchone()[0]
                   for t in self._strategy.pending_tables) + (
            q.stale_before(stale).run(conn, {"before": clamp(ts_ms)}).fetchone()[0] if stale is not None else 0)

    def oldest_pending_ms(self, timeout_s: float | None = None) -> int | None:
        """The earliest bucket (epoch ms) holding a change the rollups do not reflect yet, None
        when they reflect every committed change: rollups are complete up to it (the rollup lag
        of /metrics). Stale 1h/1d buckets (refresh's defer_from) do not count: they all end after
        b_warm (expire_hot recomputes them, under the refresh lock, before b_warm passes them),
        where no reader needs them; rollup_1m and every rollup of warm's own range are complete. Raises TierUnavailable when PostgreSQL cannot be reached (within
        `timeout_s` seconds for a connection, default the pool's)."""
        with self._translate(), self._pool.connection(timeout=timeout_s) as conn:
            found = [q.oldest_pending(t).run(conn).fetchone()[0] for t in self._strategy.pending_tables]
        found = [ms for ms in found if ms is not None]
        return min(found) if found else None

    def compress(self, before_ms: int) -> int:
        """timescale mode: compress the raw chunks that end at or before before_ms (idempotent);
        returns how many were compressed now. Late events into them still work (DML on compressed
        chunks). postgres mode has no compression: 0."""
        with self._translate():
            return self._strategy.compress(clamp(before_ms))

    # ---- reading -----------------------------------------------------------------------------

    @tier_read
    def aggregate(self, tenant: str, stream: str, pieces: Sequence[Piece], group: Group,
                  key: str | None = None) -> pa.Table:
        sid = self.keys.stream_id(tenant, stream)
        if sid is None or not pieces:
            return empty_partials(group)
        shape, params = q.shape_of(pieces)
        if key is not None:
            params["key_id"] = self.keys.key_ids(sid, [key], create=False).get(key)
            if params["key_id"] is None:
                return empty_partials(group)
        with self._pool.connection() as conn:
            exact = needs_pairs(self, conn, sid)
            rows = q.aggregate(shape, group, key is not None, exact).run(conn, {**params, "sid": sid}).fetchall()
        return _partials(rows, group)

    @tier_read
    def aggregate_each(self, tenant: str, stream: str, pieces: Sequence[Piece],
                       key: str | None = None) -> list[pa.Table]:
        """Tier.aggregate_each in one statement per granularity (warm_queries.aggregate_each):
        400 slices of a trending window cost one statement, not 400 (3.5 ms each, pairs)."""
        out = [empty_partials("key")] * len(pieces)
        sid = self.keys.stream_id(tenant, stream)
        if sid is None or not pieces:
            return out
        params: dict[str, Any] = {"sid": sid}
        if key is not None:
            params["key_id"] = self.keys.key_ids(sid, [key], create=False).get(key)
            if params["key_id"] is None:
                return out
        runs = granularity_runs(pieces)
        with self._pool.connection() as conn:
            exact = needs_pairs(self, conn, sid)
            for idx in runs:  # pieces of one granularity, in time order, not overlapping
                gran = pieces[idx[0]].granularity.name
                bounds = [clamp(x) for i in idx for x in (pieces[i].range.start, pieces[i].range.end)]
                stmt = q.aggregate_each(gran, exact, key is not None)
                rows = stmt.run(conn, {**params, "thresholds": bounds, "lo_all": bounds[0],
                                       "hi_all": bounds[-1]}).fetchall()
                per_piece: dict[int, list[tuple]] = {}
                for j, *row in rows:
                    per_piece.setdefault(j, []).append(tuple(row))
                for j, part in per_piece.items():
                    out[idx[j]] = _partials(part, "key")
        return out

    @tier_read
    def data_versions(self, tenant: str, stream: str, pieces: Sequence[Piece]) -> list:
        """One version per piece for the router's results cache (tiers/versions.py): it changes in
        the transaction of every insert, refresh and delete that changes what the piece reads."""
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
                bounds = {"sid": sid, "lo0": clamp(rng.start), "hi0": clamp(rng.end)}
                cur.execute(q.READ_RAW.sql, q.READ_RAW.params(bounds))
                while rows := cur.fetchmany(_RAW_BATCH):
                    keys, ts, values, ids = zip(*rows)
                    yield pa.RecordBatch.from_arrays(
                        [pa.array([stream] * len(rows), pa.string()), pa.array(keys, pa.string()),
                         pa.array(ts, pa.int64()), pa.array(values, pa.float64()), pa.array(ids, pa.string())],
                        schema=EVENT_SCHEMA)

    @tier_read
    def streams(self, tenant: str) -> list[str]:
        with self._pool.connection() as conn:
            rows = q.STREAMS_WITH_EVENTS.run(conn, {"tenant": tenant}).fetchall()
        return [r[0] for r in rows]

    @tier_read
    def tenants_streams(self) -> list[tuple[str, str]]:
        """(tenant, stream) of every stream ever interned, sorted (it may hold no events now)."""
        with self._pool.connection() as conn:
            return [tuple(r) for r in q.ALL_STREAMS.run(conn)]

    @tier_read
    def first_event_ms(self, lo: int, hi: int) -> int | None:
        """The oldest event time (epoch ms) in [lo, hi) of any stream, or None (one indexed query)."""
        with self._pool.connection() as conn:
            row = q.FIRST_EVENT.run(conn, {"lo": clamp(lo), "hi": clamp(hi)}).fetchone()
        return row[0] if row and row[0] is not None else None

    @tier_read
    def ranked_access(self, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> RankedAccess:
        """Sorted access through the rollups' value indexes, random access by key id
        (Tier.ranked_access; tiers/warm_ranked.py)."""
        check_by(by)
        sid = self.keys.stream_id(tenant, stream)
        if sid is None or not pieces:
            return TableAccess.of(empty_partials("key"), by)
        names = self.key_names()
        return WarmRankedAccess(self, sid, pieces, by,
                                lambda ids: names.keys(tenant, stream, ids).to_pylist() if len(ids) else [])

    def key_names(self):
        """The shared key dictionary (tiers.cold_keys.PgKeyDictionary) on this tier's pool, cached."""
        if self._names is None:
            from tiers.cold_keys import PgKeyDictionary
            self._names = PgKeyDictionary(pool=self._pool)
        return self._names

    @tier_read
    def key_values(self, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> pa.Table:
        """Tier.key_values: key_id and the one value, grouped in PostgreSQL (tiers/warm_keys.py)."""
        return warm_keys.key_values(self, tenant, stream, pieces, by)

    @tier_read
    def distinct_keys(self, tenant: str, stream: str, pieces: Sequence[Piece]) -> pa.Array:
        """Tier.distinct_keys: DISTINCT key_id over the pieces' rows (tiers/warm_keys.py)."""
        return warm_keys.distinct_keys(self, tenant, stream, pieces)

    @tier_read
    def days_with_events(self, lo: int, hi: int) -> list[tuple[str, str, int]]:
        """(tenant, stream, day start epoch ms) of every stream-day holding events in [lo, hi),
        ordered by day then tenant, stream (one query: export_cold's cost follows the data)."""
        with self._pool.connection() as conn:
            return [(t, s, int(d)) for t, s, d in q.DAYS_WITH_EVENTS.run(conn, {"lo": clamp(lo), "hi": clamp(hi)})]

    @tier_read
    def top_k(self, tenant: str, stream: str, pieces: Sequence[Piece], k: int, by: str, *,
              stats: dict | None = None) -> list[Ranked]:
        """Exact top-k keys over the pieces, value desc then key asc (= rollups.topk.top_k), ranked
        inside PostgreSQL: only k keys leave the database.

        By count, or by sum when no value in the range is negative, the threshold algorithm
        (TPUT) reads the head of each rollup bucket through its value index and then exact
        totals of the few candidates; otherwise (or when the data is too flat for it to pay)
        every key of the range is aggregated."""
        q.check_by(by)
        sid = self.keys.stream_id(tenant, stream)
        if sid is None or not pieces or k <= 0:
            return []
        shape, params = q.shape_of(pieces)
        with self._pool.connection() as conn:
            exact = needs_pairs(self, conn, sid)
            key_ids = self._threshold_candidates(conn, sid, pieces, k, by, exact) if by in ("count", "sum") else None
            if key_ids is not None:
                params["key_ids"] = key_ids
            rows = q.top_k(shape, by, key_ids is not None, exact).run(
                conn, {**params, "sid": sid, "k": k}).fetchall()
        return [Ranked(i + 1, key, float(v)) for i, (key, v) in enumerate(rows)]

    def _threshold_candidates(self, conn: psycopg.Connection, sid: int, pieces: Sequence[Piece], k: int,
                              by: str, exact: bool = False, max_candidates: int = 20_000) -> list[int] | None:
        """Keys that can be in the top k (TPUT phases 1 and 2), or None to aggregate every key.

        Lists: every 1h and 1d bucket of the pieces (read by their value index) plus one list of
        the exact per-key partials of the 1m and raw pieces. Phase 1: the k best of each list;
        tau = the k-th best of their per-key sums (a lower bound of the k-th total). A key whose
        total reaches tau has, values being non-negative, at least tau/m in some list (m lists):
        phase 2 collects those keys. Ties at tau are kept (their total is >= tau)."""
        starts = {g.name: [b for p in pieces if p.granularity == g for b in g.buckets(p.range)] for g in (G1H, G1D)}
        n_heads = sum(len(s) for s in starts.values())
        edges, params = q.shape_of([p for p in pieces if p.granularity not in (G1H, G1D)])
        if n_heads < 2:
            return None
        if by == "sum" and self._range_min(conn, sid, pieces) < 0:
            return None
        m = n_heads + (1 if edges else 0)
        heads = tuple(g for g, s in starts.items() if s)
        params.update({f"starts_{g}": starts[g] for g in heads}, sid=sid)
        tau_row = q.threshold_tau(heads, edges, by).run(conn, {**params, "k": k, "k_offset": k - 1}).fetchone()
        if tau_row is None or tau_row[0] <= 0:
            return None  # fewer than k keys, or only zeros: nothing to prune
        # the lists' float sums may differ from the exact pairs by a few ulps: keep the keys at the margin
        min_value = tau_row[0] / m * (1 - 1e-9 if exact and by == "sum" else 1)
        rows = q.threshold_candidates(heads, edges, by).run(
            conn, {**params, "min_value": min_value, "max_rows": max_candidates + 1}).fetchall()
        return [r[0] for r in rows] if len(rows) <= max_candidates else None

    @staticmethod
    def _range_min(conn: psycopg.Connection, sid: int, pieces: Sequence[Piece]) -> float:
        shape, params = q.shape_of(pieces)
        row = q.range_min(shape).run(conn, {**params, "sid": sid}).fetchone()
        return row[0] if row and row[0] is not None else 0.0

    @tier_read
    def rank(self, tenant: str, stream: str, pieces: Sequence[Piece], key: str, by: str,
             around: int = 0) -> RankResult:
        """1-based rank of `key` over the pieces and `around` neighbours each side
        (= rollups.topk.rank_of), computed inside PostgreSQL."""
        q.check_by(by)
        sid = self.keys.stream_id(tenant, stream)
        if sid is None or not pieces:
            return RankResult(None, None, 0, [])
        shape, params = q.shape_of(pieces)
        with self._pool.connection() as conn:
            q.rank(shape, by, needs_pairs(self, conn, sid)).run(conn, {**params, "sid": sid})
            total = q.RANK_TOTAL.run(conn).fetchone()[0]
            at = q.RANK_AT.run(conn, {"key": key}).fetchone()
            if at is None:
                return RankResult(None, None, total, [])
            rows = q.RANK_AROUND.run(conn, {"first": at[0] - around, "last": at[0] + around}).fetchall()
        return RankResult(at[0], float(at[1]), total, [Ranked(rn, k, float(v)) for rn, k, v in rows])

    @tier_read
    def stats(self) -> dict[str, int]:
        """Estimated raw rows and bytes on disk (events and rollups) for GET /v1/tiers."""
        rows, size = self._strategy.stats()
        return {"rows": int(rows), "bytes": int(size)}

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
            # whole days inside rng (none when rng holds no midnight: the bounds cross, not a range)
            first, last = min(G1D.ceil(rng.start), rng.end), max(G1D.floor(rng.end), rng.start)
            days = TimeRange(first, last) if first < last else None
            if sids is None and days is not None:
                deleted += self._strategy.drop_days(clamp(days.start), clamp(days.end))
                parts = [TimeRange(rng.start, days.start), TimeRange(days.end, rng.end)]
            for part in parts:
                if not part.empty:
                    deleted += self._delete_rows(sids, part)
        self.refresh()
        return deleted

    def _delete_rows(self, sids: list[int] | None, rng: TimeRange) -> int:
        params: dict[str, Any] = {"lo0": clamp(rng.start), "hi0": clamp(rng.end)}
        if sids is not None:
            params["sids"] = sids
        with self._pool.connection() as conn:
            deleted = q.delete_rows(sids is not None).run(conn, params).fetchone()[0]
            if deleted:
                versions.bump_warm_everything(conn)
            return deleted

    def _stream_ids(self, tenant: str | None, stream: str | None) -> list[int] | None:
        """Stream ids matching the filter; None means every stream."""
        if tenant is None and stream is None:
            return None
        with self._pool.connection() as conn:
            return [r[0] for r in q.stream_ids(tenant is not None, stream is not None).run(
                conn, {"tenant": tenant, "stream": stream})]

    # ---- life cycle --------------------------------------------------------------------------

    @tier_read
    def health(self) -> None:
        with self._pool.connection(timeout=5) as conn:
            conn.execute("SELECT 1")

    def close(self) -> None:
        if not self._closed and self._own_pool:
            self._pool.close()
        self._closed = True

    def _translate(self):
        return translate(self.name)


def _partials(rows: list[tuple], group: Group) -> pa.Table:
    """Rows (g, c, s, lo, hi, sl) as a partial table, with `sum_lo` (the sums' low parts: exact
    pairs, tiers/warm_pairs.py) when any is not 0."""
    schema = partial_schema(group)
    if not rows:
        return schema.empty_table()
    cols = list(zip(*rows))
    t = pa.table([pa.array(c, f.type) for c, f in zip(cols, schema)], schema=schema)
    return with_lows(t, "sum_lo", np.array(cols[5], np.float64)) if len(cols) > 5 else t
