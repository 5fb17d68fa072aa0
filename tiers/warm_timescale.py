"""The warm tier's timescale mode: events is a hypertable (daily chunks); the rollups are hierarchical
continuous aggregates 1m -> 1h -> 1d (materialized only, sql/migrations/warm_timescale) that
`refresh` re-materialises with refresh_continuous_aggregate over the windows that changed.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
from sqlalchemy import (BigInteger, Boolean, any_, bindparam, cast, column, delete, func, literal, literal_column,
                        select, table, true)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, REGCLASS
from sqlalchemy.types import Integer

from rollups.timeutil import DAY_MS, G1H, MINUTE_MS
from tiers import versions
from tiers.locks import WARM_REFRESH_LOCK, session_lock
from tiers.warm_sql import (ROLLUPS, TSTZ, Call, Statement, epoch_ms, events, ms_of,
                            named, rollup, total, warm_dirty)
from tiers.warm_strategy import DeferFrom, Step, WarmStrategy

# A manual refresh otherwise splits the window into batches of a few buckets and re-materialises
# every batch from the first invalidation on (seconds for a day of 1m buckets); unbatched, it
# touches only the invalidated ranges.
_NO_BATCHES = '{"buckets_per_batch": 0}'
_LO, _HI = epoch_ms(bindparam("lo", type_=BigInteger)), epoch_ms(bindparam("hi", type_=BigInteger))
_VIEWS = [t.name for g in ROLLUPS for t in (rollup[g.name], total[g.name])]  # bottom-up, per level


class TimescaleStrategy(WarmStrategy):
    mode = "timescale"
    pending_tables = (warm_dirty,)

    def record_insert(self, conn: psycopg.Connection, rows: pa.Table) -> None:
        """Mark the batch's (stream, minute) buckets dirty."""
        ms = rows["ts"].cast(pa.int64()).to_numpy()
        minutes = pa.array(ms - np.mod(ms, MINUTE_MS))
        pairs = pa.table({"s": rows["stream_id"], "m": minutes}).group_by(["s", "m"]).aggregate([])
        _MARK_DIRTY.run(conn, {"s": pairs["s"].to_pylist(), "m": pairs["m"].to_pylist()})

    def refresh(self, step: Step, defer_from: DeferFrom = None) -> dict[str, Any]:
        # continuous aggregates re-materialise whole windows: nothing is deferred in this mode
        with self._pool.connection() as conn, session_lock(conn, WARM_REFRESH_LOCK):
            return _refresh_locked(conn, step)

    def compress(self, before_ms: int) -> int:
        """Compress the raw chunks that end at or before before_ms (idempotent); returns how many
        were compressed now. Late events into them still work (DML on compressed chunks).

        One chunk per transaction (autocommit): the locks one statement takes stay bounded
        (compressing 1,949 chunks in one statement ran out of max_locks_per_transaction)."""
        with self._pool.connection() as conn:
            chunks = [r[0] for r in _UNCOMPRESSED.run(conn, {"before": before_ms})]
            conn.commit()
            conn.autocommit = True
            try:
                for chunk in chunks:
                    _COMPRESS_CHUNK.run(conn, {"chunk": chunk})
            finally:
                conn.autocommit = False
        return len(chunks)

    def drop_days(self, lo: int, hi: int) -> int:
        bounds = {"lo": lo, "hi": hi}
        with self._pool.connection() as conn:
            conn.autocommit = True
            try:
                rows = _COUNT_EVENTS.run(conn, bounds).fetchone()[0]
                _DROP_CHUNKS.run(conn, bounds)
                # chunks are whole days here; anything left in the range (none expected) goes row by row
                _DELETE_EVENTS.run(conn, bounds)
                # drop_chunks leaves the aggregates as they were: re-materialise the days from (no) raw
                for view in _VIEWS:
                    _FORCE_REFRESH.run(conn, {**bounds, "view": view})
                _DELETE_DIRTY.run(conn, bounds)
                versions.bump_warm_everything(conn)  # after the data (autocommit)
            finally:
                conn.autocommit = False
        return rows

    def stats(self) -> tuple[int, int]:
        with self._pool.connection() as conn:
            return _STATS.run(conn).fetchone()


def _refresh_locked(conn: psycopg.Connection, step: Step) -> dict[str, Any]:
    rows = _DIRTY.run(conn).fetchall()
    if not rows:
        return {"buckets_1m": 0, "buckets_1h": 0, "buckets_1d": 0, "windows": 0}
    minutes = {(s, m) for _, s, m in rows}
    days = sorted({m - m % DAY_MS for _, m in minutes})
    windows = _islands(days, DAY_MS)
    # hierarchical: each level reads the one below, so refresh bottom-up over the same windows
    for g in ROLLUPS:
        for view in (rollup[g.name].name, total[g.name].name):
            for lo, hi in windows:
                _REFRESH.run(conn, {"view": view, "lo": lo, "hi": hi})
        step(f"rollup_{g.name}")
    # the results cache's versions move after the data, with the dirty rows they stand for
    with conn.transaction():
        versions.bump_warm_rows(conn, versions.ROLLUP_KIND, pa.array([r[1] for r in rows], pa.int32()),
                                pa.array([r[2] for r in rows], pa.int64()))
        _DELETE_DIRTY_IDS.run(conn, {"ids": [r[0] for r in rows]})
    step("commit")
    return {"buckets_1m": len(minutes),
            "buckets_1h": len({(s, m - m % G1H.ms) for s, m in minutes}),
            "buckets_1d": len({(s, m - m % DAY_MS) for s, m in minutes}),
            "windows": len(windows)}


def _islands(sorted_starts: list[int], step: int) -> list[tuple[int, int]]:
    """Consecutive bucket starts merged into [lo, hi) windows."""
    out: list[tuple[int, int]] = []
    for s in sorted_starts:
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], s + step)
        else:
            out.append((s, s + step))
    return out


def _refresh_aggregate(**force) -> Statement:
    """CALL refresh_continuous_aggregate(view, lo, hi, [force => true,] options => unbatched)."""
    return Statement.of(Call(func.refresh_continuous_aggregate(
        bindparam("view"), _LO, _HI, *(named(k, v) for k, v in force.items()),
        named("options", cast(bindparam("options", _NO_BATCHES), JSONB)))))


def _qualified_name(schema, name):
    """A relation's regclass from its schema and name columns."""
    return cast(func.format(literal_column("'%I.%I'"), schema, name), REGCLASS)


def _events_in(stmt):
    return stmt.where(events.c.ts >= _LO, events.c.ts < _HI)


_d = func.unnest(bindparam("s", type_=ARRAY(Integer)), bindparam("m", type_=ARRAY(BigInteger))) \
    .table_valued("s", "m").render_derived(name="d")
_MARK_DIRTY = Statement.of(warm_dirty.insert().from_select(["stream_id", "bucket"], select(_d.c.s, epoch_ms(_d.c.m))))
_DIRTY = Statement.of(select(warm_dirty.c.id, warm_dirty.c.stream_id, ms_of(warm_dirty.c.bucket)))
_DELETE_DIRTY_IDS = Statement.of(delete(warm_dirty).where(
    warm_dirty.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger)))))
_DELETE_DIRTY = Statement.of(delete(warm_dirty).where(warm_dirty.c.bucket >= _LO, warm_dirty.c.bucket < _HI))
_REFRESH = _refresh_aggregate()
_FORCE_REFRESH = _refresh_aggregate(force=true())
_COUNT_EVENTS = Statement.of(_events_in(select(func.count()).select_from(events)))
_DELETE_EVENTS = Statement.of(_events_in(delete(events)))
_DROP_CHUNKS = Statement.of(select(func.drop_chunks(cast(literal(events.name), REGCLASS),
                                                    named("older_than", _HI), named("newer_than", _LO))))

_chunks = table("chunks", column("chunk_schema"), column("chunk_name"), column("hypertable_name"),
                column("is_compressed", Boolean), column("range_end", TSTZ), schema="timescaledb_information")
_UNCOMPRESSED = Statement.of(
    select(func.format(literal_column("'%I.%I'"), _chunks.c.chunk_schema, _chunks.c.chunk_name))
    .where(_chunks.c.hypertable_name == literal(events.name), ~_chunks.c.is_compressed,
           _chunks.c.range_end <= epoch_ms(bindparam("before", type_=BigInteger)))
    .order_by(_chunks.c.range_end))
_COMPRESS_CHUNK = Statement.of(select(func.compress_chunk(cast(bindparam("chunk"), REGCLASS),
                                                          named("if_not_compressed", true()))))

_caggs = table("continuous_aggregates", column("materialization_hypertable_schema"),
               column("materialization_hypertable_name"), schema="timescaledb_information")
_EVENTS_OID = cast(literal(events.name), REGCLASS)
_STATS = Statement.of(select(
    func.approximate_row_count(_EVENTS_OID),
    func.hypertable_size(_EVENTS_OID) + select(func.coalesce(func.sum(func.hypertable_size(_qualified_name(
        _caggs.c.materialization_hypertable_schema, _caggs.c.materialization_hypertable_name))), 0))
    .scalar_subquery()))
