"""The warm tier's postgres mode: native daily range partitions and rollup tables kept by refresh.

Inserts land pre-aggregated per (stream, key, minute) in warm_delta; deletes mark warm_dirty
buckets. `refresh` folds the deltas into rollup_1m/1h/1d (count and sum add, min and max combine)
and recomputes the dirty buckets from the level below, so its cost follows what changed.

Deferral (issue 11, write path at scale): with `defer_from` (the scheduled refresh passes b_warm)
the 1h and 1d buckets that end after it are not folded but recorded in warm_stale: no query reads
them from warm (the hot tier owns part of their time; the router covers warm's segment with whole
buckets), and under live ingest every delta lands there, so the 1h/1d folds (most of a refresh's
work: each hour's row was upserted at every refresh, each day's all day long) run once per bucket
instead, as a recompute from the level below when a refresh's bound passes the bucket's end
(expire_hot refreshes with its target before it moves b_warm). rollup_1m is never deferred.
"""
from __future__ import annotations

import datetime
import functools
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
from sqlalchemy import (MetaData, Table, and_, any_, bindparam, cast, column, delete, exists, func, literal,
                        literal_column, select, table, union)
from sqlalchemy.dialects.postgresql import INTERVAL, REGCLASS, insert
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import DropTable
from sqlalchemy.sql.expression import ClauseElement, Executable
from sqlalchemy.types import BigInteger, Integer

from rollups.timeutil import DAY_MS, G1D, G1H, G1M, MAX_MS, MINUTE_MS, Granularity, to_datetime
from tiers import versions
from tiers.locks import WARM_PARTITIONS_LOCK, WARM_REFRESH_LOCK, session_lock, xact_lock
from rollups.exactsum import exactly_summable
from rollups.pairsum import grouped_pair_sum
from tiers.warm_copy import binary_copy, pg_us
from tiers.warm_pairs import fold_set, mark_off_grid, pair_sum
from tiers.warm_sql import (INTERVALS, ROLLUPS, TSTZ, Analyze, clamp,
                            CreateTempTableAs, Statement, copy_sql, date_bin, epoch_ms, events, ms_of, rollup, run,
                            total, warm_delta, warm_dirty, warm_stale)
from tiers.warm_strategy import DeferFrom, Step, WarmStrategy

_COPY_DELTAS = copy_sql(warm_delta, "(FORMAT binary)")
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()


class PostgresStrategy(WarmStrategy):
    mode = "postgres"
    pending_tables = (warm_dirty, warm_delta)
    stale_table = warm_stale

    # ---- writing -----------------------------------------------------------------------------

    def prepare_days(self, ts: pa.ChunkedArray) -> None:
        """Create the daily partitions these timestamps need (own transaction).

        Checked against the database on every call (one index lookup): another process may have
        dropped a partition since (delete_range of whole days)."""
        days = np.unique(np.floor_divide(ts.cast(pa.int64()).to_numpy(), DAY_MS)).tolist()
        names = {_partition_name(d): d for d in days}
        with self._pool.connection() as conn:
            if _existing(conn, names) == set(names):
                return
            xact_lock(conn, WARM_PARTITIONS_LOCK)
            existing = _existing(conn, names)
            for name, day in sorted(names.items()):
                if name not in existing:
                    run(conn, _CreateDayPartition(name, day * DAY_MS, (day + 1) * DAY_MS))

    def record_insert(self, conn: psycopg.Connection, rows: pa.Table) -> None:
        """The batch pre-aggregated per (stream, key, minute) into warm_delta."""
        ms = rows["ts"].cast(pa.int64()).to_numpy()
        t = pa.table({"stream_id": rows["stream_id"], "key_id": rows["key_id"],
                      "bucket": pa.array(ms - np.mod(ms, MINUTE_MS)), "value": rows["value"]})
        agg = t.group_by(["stream_id", "key_id", "bucket"], use_threads=False).aggregate(
            [("value", "count"), ("value", "sum"), ("value", "min"), ("value", "max")])
        hi, lo = _delta_pairs(t, agg)
        mark_off_grid(conn, rows["stream_id"], rows["value"])  # reads of those streams sum as pairs
        payload = binary_copy([(">i4", agg["stream_id"]), (">i8", agg["key_id"]),
                               (">i8", pg_us(agg["bucket"])), (">i8", agg["value_count"]), (">f8", hi),
                               (">f8", agg["value_min"]), (">f8", agg["value_max"]), (">f8", lo)])
        with conn.cursor().copy(_COPY_DELTAS) as copy:
            copy.write(payload)

    # ---- refreshing --------------------------------------------------------------------------

    def refresh(self, step: Step, defer_from: DeferFrom = None) -> dict[str, Any]:
        # One REPEATABLE READ snapshot: the deltas and dirty buckets taken and the raw rows read
        # come from the same set of committed inserts (a later insert keeps its delta for the next
        # refresh and is invisible here). The lock is taken before the snapshot, so no other
        # refresh can commit rollup changes this snapshot does not see.
        with self._pool.connection() as conn, session_lock(conn, WARM_REFRESH_LOCK):
            try:
                conn.autocommit = False
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                with conn.transaction():
                    stats = self._refresh_snapshot(conn, step, defer_from)
                step("commit")
                return stats
            finally:
                conn.rollback()
                conn.isolation_level = None

    @staticmethod
    def _refresh_snapshot(conn: psycopg.Connection, step: Step, defer_from: DeferFrom) -> dict[str, Any]:
        _WORK_MEM.run(conn)  # the changes' sorts and hashes stay in memory (this transaction only)
        # read after the lock, in this snapshot: expire_hot moves b_warm holding the same lock
        bound = defer_from(conn) if callable(defer_from) else defer_from
        for statement in _take_changes():
            statement.run(conn, {"bound": clamp(MAX_MS if bound is None else bound)})
        stats: dict[str, Any] = {"deferred_from": bound}
        for g in (G1H, G1D):
            stats[f"stale_{g.name}"] = _defer(conn, g.name, bound)
        changed = False
        for g, source in ((G1M, None), (G1H, G1M), (G1D, G1H)):
            dirty = _has_rows(conn, f"dirty_{g.name}")
            deltas = _has_rows(conn, f"delta_{g.name}")
            if not (dirty or deltas):
                stats[f"buckets_{g.name}"] = stats[f"rows_{g.name}"] = 0
                step(f"rollup_{g.name}")
                continue
            changed = True
            touch, count_touched = _touched(g.name)
            touch.run(conn)
            stats[f"buckets_{g.name}"] = count_touched.run(conn).fetchone()[0]
            rows = _recompute(conn, g, source) if dirty else 0
            stats[f"rows_{g.name}"] = rows + (_apply_deltas(g.name).run(conn).rowcount if deltas else 0)
            for statement in _recompute_totals(g.name):
                statement.run(conn)
            step(f"rollup_{g.name}")
        if changed:  # the results cache's versions of what changed, in this transaction
            versions.bump_warm(conn, versions.ROLLUP_KIND, _CHANGED_DAYS)
        return stats

    # ---- deleting and stats ------------------------------------------------------------------

    def drop_days(self, lo: int, hi: int) -> int:
        with self._pool.connection() as conn:
            xact_lock(conn, WARM_PARTITIONS_LOCK)
            partitions = [name for (name,) in _PARTITIONS.run(conn)
                          if lo <= _partition_day(name) * DAY_MS and (_partition_day(name) + 1) * DAY_MS <= hi]
            rows = 0
            for name in partitions:
                rows += run(conn, select(func.count()).select_from(table(name))).fetchone()[0]
                run(conn, DropTable(Table(name, MetaData())))
            # pending changes of those days must not resurrect rollup rows
            for statement in _DELETE_DAYS:
                statement.run(conn, {"lo": lo, "hi": hi})
            versions.bump_warm_everything(conn)
        return rows

    def stats(self) -> tuple[int, int]:
        with self._pool.connection() as conn:
            return _STATS.run(conn).fetchone()


def _delta_pairs(t: pa.Table, agg: pa.Table) -> tuple[pa.Array, pa.Array]:
    """Each delta's sum as the exact pair (hi, lo) of its events (rollups.pairsum): Arrow's sum
    when every value is exactly summable (lo 0), else grouped_pair_sum over the rows."""
    values = t["value"].to_numpy()
    if exactly_summable(values):
        return agg["value_sum"], pa.array(np.zeros(agg.num_rows))
    # group index of each event: its (stream, key, bucket) row in agg
    rows = pa.table({"stream_id": agg["stream_id"], "key_id": agg["key_id"], "bucket": agg["bucket"],
                     "g": pa.array(np.arange(agg.num_rows))})
    g = t.join(rows, ["stream_id", "key_id", "bucket"], use_threads=False)
    hi, lo = grouped_pair_sum(g["g"].to_numpy(), g["value"].to_numpy(), agg.num_rows)
    return pa.array(hi), pa.array(lo)


# ---- partitions ------------------------------------------------------------------------------

class _CreateDayPartition(Executable, ClauseElement):
    """CREATE TABLE name PARTITION OF events for [lo, hi) (epoch ms; DDL takes no parameters)."""
    inherit_cache = False

    def __init__(self, name: str, lo: int, hi: int):
        self.name, self.lo, self.hi = name, lo, hi


@compiles(_CreateDayPartition)
def _compile_create_partition(element, compiler, **kw) -> str:
    lo, hi = (compiler.process(epoch_ms(literal(ms, BigInteger)), literal_binds=True)
              for ms in (element.lo, element.hi))
    return (f"CREATE TABLE {compiler.preparer.quote(element.name)} PARTITION OF "
            f"{compiler.preparer.format_table(events)} FOR VALUES FROM {lo} TO {hi}")


_pg_class = table("pg_class", column("oid"), column("relname"), column("relkind"), column("reltuples"))
_pg_inherits = table("pg_inherits", column("inhrelid"), column("inhparent"))
_EVENTS_OID = cast(literal(events.name), REGCLASS)
_EXISTING = Statement.of(select(_pg_class.c.relname).where(
    _pg_class.c.relname == any_(bindparam("names")), _pg_class.c.relkind == literal_column("'r'")))
_PARTITIONS = Statement.of(
    select(_pg_class.c.relname).select_from(_pg_inherits.join(_pg_class, _pg_class.c.oid == _pg_inherits.c.inhrelid))
    .where(_pg_inherits.c.inhparent == _EVENTS_OID))


def _existing(conn: psycopg.Connection, names) -> set[str]:
    return {r[0] for r in _EXISTING.run(conn, {"names": list(names)})}


def _partition_name(day: int) -> str:
    d = to_datetime(day * DAY_MS)
    return f"events_p{d.year:04d}{d.month:02d}{d.day:02d}"


def _partition_day(name: str) -> int:
    """Inverse of _partition_name: the day number (days since the epoch) of a partition."""
    d = datetime.date(int(name[8:12]), int(name[12:14]), int(name[14:16]))
    return d.toordinal() - _EPOCH_ORDINAL


def _delete_days(t: Table) -> Statement:
    return Statement.of(delete(t).where(t.c.bucket >= epoch_ms(bindparam("lo", type_=BigInteger)),
                                        t.c.bucket < epoch_ms(bindparam("hi", type_=BigInteger))))


_DELETE_DAYS = [_delete_days(t) for t in (*rollup.values(), *total.values(), warm_delta, warm_dirty, warm_stale)]


def _stats() -> Statement:
    c, i = _pg_class.c, _pg_inherits.c
    rows = (select(func.coalesce(func.sum(func.greatest(c.reltuples, 0)), 0))
            .select_from(_pg_inherits.join(_pg_class, c.oid == i.inhrelid)).where(i.inhparent == _EVENTS_OID))
    size = func.pg_total_relation_size
    raw_bytes = select(func.coalesce(func.sum(size(i.inhrelid)), 0)).where(i.inhparent == _EVENTS_OID)
    total_bytes = raw_bytes.scalar_subquery()
    for g in ROLLUPS:
        total_bytes = total_bytes + size(cast(literal(rollup[g.name].name), REGCLASS))
    return Statement.of(select(rows.scalar_subquery(), total_bytes))


_STATS = _stats()


# ---- refresh statements (temporary tables of one snapshot, per granularity) ------------------

def _buckets(name: str):
    return table(name, column("stream_id", Integer), column("bucket", TSTZ))


def _partials(name: str):
    return table(name, *(column(c.name, c.type) for c in warm_delta.columns))


def _aggregated(src, bucket, stream_key=("stream_id", "key_id")) -> tuple[list, list]:
    """(columns, group by): the partials of `src` merged per stream (and key) and `bucket`."""
    keys = [src.c[k] for k in stream_key]
    hi, lo = pair_sum(src.c["sum"], src.c["sum_lo"])
    return ([*keys, bucket.label("bucket"), cast(func.sum(src.c["count"]), BigInteger).label("count"),
             hi.label("sum"), func.min(src.c["min"]).label("min"),
             func.max(src.c["max"]).label("max"), lo.label("sum_lo")], [*keys, bucket])


@functools.cache
def _take_changes() -> tuple[Statement, ...]:
    """Move warm_dirty and warm_delta into dirty_g and delta_g (g = 1m, and rolled up to 1h, 1d;
    delta_1h and delta_1d only in buckets ending by `bound`, epoch ms: the others are deferred)."""
    d = delete(warm_dirty).returning(warm_dirty.c.stream_id, warm_dirty.c.bucket).cte("d")
    out = [CreateTempTableAs("dirty_1m", select(d.c.stream_id, d.c.bucket).distinct())]
    d = delete(warm_delta).returning(*warm_delta.c).cte("d")
    columns, group = _aggregated(d, d.c.bucket)
    out.append(CreateTempTableAs("delta_1m", select(*columns).group_by(*group)))
    for coarse, fine in ((G1H, G1M), (G1D, G1H)):
        step = bindparam("step", INTERVALS[coarse.name], type_=INTERVAL)
        dirty = _buckets(f"dirty_{fine.name}")
        out.append(CreateTempTableAs(f"dirty_{coarse.name}", select(
            dirty.c.stream_id, date_bin(step, dirty.c.bucket).label("bucket")).distinct()))
        delta = _partials(f"delta_{fine.name}")
        columns, group = _aggregated(delta, date_bin(step, delta.c.bucket))
        in_time = date_bin(step, delta.c.bucket) + step <= epoch_ms(bindparam("bound", type_=BigInteger))
        out.append(CreateTempTableAs(f"delta_{coarse.name}", select(*columns).where(in_time).group_by(*group)))
    return tuple(Statement.of(s) for s in out)


def _changed_days() -> str:
    """SQL (no parameters) of the (stream id, day start ms) pairs the changes taken touch: every
    minute changed, and the stale hours and days recomputed (their 1h/1d rows change only now)."""
    tables = (_buckets("dirty_1m"), _partials("delta_1m"), _buckets("dirty_1h"), _buckets("dirty_1d"))
    return Statement.of(union(*(select(t.c.stream_id, ms_of(date_bin(literal_column("'1 day'"), t.c.bucket)))
                                for t in tables))).sql


_CHANGED_DAYS = _changed_days()
_WORK_MEM = Statement.of(select(func.set_config(literal("work_mem"), literal("64MB"), literal(True))))


def _has_rows(conn: psycopg.Connection, name: str) -> int:
    """Whether the temporary table `name` (one of this refresh's dirty_g, delta_g) has rows: 0 or 1."""
    return _HAS_ROWS[name].run(conn).fetchone()[0]


_HAS_ROWS = {f"{kind}_{g.name}": Statement.of(select(func.count()).select_from(
    select(literal_column("1")).select_from(table(f"{kind}_{g.name}")).limit(1).subquery("x")))
    for kind in ("dirty", "delta") for g in ROLLUPS}


def _defer(conn: psycopg.Connection, g: str, bound: int | None) -> int:
    """Split this refresh's changes of rollup_g (g = 1h or 1d) at `bound` (epoch ms; None: no
    deferral). Stale buckets ending at or before it join dirty_g (recomputed from the level below,
    which is exact: rollup_1m is never deferred, and 1h buckets that end before a day does were
    recomputed first); changed buckets ending after it are recorded stale and leave dirty_g
    (delta_g never held them: _take_changes; rollup_1m holds their changes). Returns the buckets
    recorded stale now."""
    promote, record, drop_dirty = _defer_statements(g)
    params = {"bound": clamp(MAX_MS if bound is None else bound)}
    promote.run(conn, params)
    if bound is None:
        return 0
    n = record.run(conn, params).rowcount
    drop_dirty.run(conn, params)
    return n


@functools.cache
def _defer_statements(g: str) -> tuple[Statement, ...]:
    step = bindparam("step", INTERVALS[g], type_=INTERVAL)
    bound = epoch_ms(bindparam("bound", type_=BigInteger))
    s, dirty, delta = warm_stale, _buckets(f"dirty_{g}"), _partials("delta_1m")
    taken = delete(s).where(s.c.grain == g, s.c.bucket_end <= bound).returning(s.c.stream_id, s.c.bucket).cte("s")
    already = exists().where(dirty.c.stream_id == taken.c.stream_id, dirty.c.bucket == taken.c.bucket)
    promote = insert(dirty).from_select(["stream_id", "bucket"], select(taken.c.stream_id, taken.c.bucket)
                                        .where(~already))
    touched = union(select(dirty.c.stream_id, dirty.c.bucket),
                    select(delta.c.stream_id, date_bin(step, delta.c.bucket))).subquery("t")
    record = insert(s).from_select(
        ["grain", "stream_id", "bucket", "bucket_end"],
        select(literal(g), touched.c.stream_id, touched.c.bucket, touched.c.bucket + step)
        .where(touched.c.bucket + step > bound)).on_conflict_do_nothing()
    return tuple(Statement.of(x) for x in (promote, record, delete(dirty).where(dirty.c.bucket + step > bound)))


@functools.cache
def _touched(g: str) -> tuple[Statement, Statement]:
    """touched_g: the buckets of g with a dirty bucket or a delta; and its count."""
    dirty, delta = _buckets(f"dirty_{g}"), _partials(f"delta_{g}")
    touched = union(select(dirty.c.stream_id, dirty.c.bucket), select(delta.c.stream_id, delta.c.bucket))
    return (Statement.of(CreateTempTableAs(f"touched_{g}", touched)),
            Statement.of(select(func.count()).select_from(_buckets(f"touched_{g}"))))


@functools.cache
def _recompute_totals(g: str) -> tuple[Statement, Statement, Statement]:
    """The stream-wide totals of every bucket changed: recomputed from the (already updated) rollup
    in the dirty buckets, the deltas (summed per stream and bucket) folded in everywhere else."""
    t, x, r, d = total[g], _buckets(f"dirty_{g}"), rollup[g], _partials(f"delta_{g}")
    same_bucket = and_(r.c.stream_id == x.c.stream_id, r.c.bucket == x.c.bucket)
    columns, group = _aggregated(r, r.c.bucket, ("stream_id",))
    recomputed = exists().where(x.c.stream_id == d.c.stream_id, x.c.bucket == d.c.bucket)
    folded_columns, folded_group = _aggregated(d, d.c.bucket, ("stream_id",))
    fold = insert(t).from_select([c.name for c in t.columns], select(*folded_columns).where(~recomputed)
                                 .group_by(*folded_group).order_by(*folded_group))
    new = fold.excluded
    fold = fold.on_conflict_do_update(
        index_elements=[t.c.stream_id, t.c.bucket], set_=fold_set(t, new))
    return (Statement.of(delete(t).where(t.c.stream_id == x.c.stream_id, t.c.bucket == x.c.bucket)),
            Statement.of(t.insert().from_select([c.name for c in t.columns],
                                                select(*columns).select_from(x.join(r, same_bucket)).group_by(*group))),
            Statement.of(fold))


@functools.cache
def _apply_deltas(g: str) -> Statement:
    """Fold the inserted deltas into rollup_g, except in buckets just recomputed from below."""
    r, d, x = rollup[g], _partials(f"delta_{g}"), _buckets(f"dirty_{g}")
    recomputed = exists().where(x.c.stream_id == d.c.stream_id, x.c.bucket == d.c.bucket)
    # in the primary key's order: the upsert walks the index (and the heap it filled) sequentially
    stmt = insert(r).from_select([c.name for c in r.columns], select(*d.c).where(~recomputed)
                                 .order_by(d.c.stream_id, d.c.bucket, d.c.key_id))
    new = stmt.excluded
    return Statement.of(stmt.on_conflict_do_update(
        index_elements=[r.c.stream_id, r.c.bucket, r.c.key_id], set_=fold_set(r, new)))


def _recompute(conn: psycopg.Connection, g: Granularity, source: Granularity | None) -> int:
    """Replace the rows of rollup_g in its dirty buckets, from raw (1m) or the finer rollup."""
    for statement in _recompute_statements(g.name, source.name if source else None):
        cur = statement.run(conn)
    return cur.rowcount


@functools.cache
def _recompute_statements(g: str, source: str | None) -> tuple[Statement, ...]:
    step = bindparam("step", INTERVALS[g], type_=INTERVAL)
    dirty, ranges, r = _buckets(f"dirty_{g}"), table(f"ranges_{g}", column("stream_id", Integer),
                                                     column("lo", TSTZ), column("hi", TSTZ)), rollup[g]
    # islands of consecutive dirty buckets become range scans
    island = (dirty.c.bucket - func.row_number().over(partition_by=dirty.c.stream_id, order_by=dirty.c.bucket)
              * step).label("island")
    x = select(dirty.c.stream_id, dirty.c.bucket, island).subquery("x")
    islands = select(x.c.stream_id, func.min(x.c.bucket).label("lo"), (func.max(x.c.bucket) + step).label("hi")) \
        .group_by(x.c.stream_id, x.c.island)
    if source is None:
        src, ts = events, events.c.ts
        hi, lo = pair_sum(events.c.value)
        partials = [func.count(), hi, func.min(events.c.value), func.max(events.c.value), lo]
    else:
        src = rollup[source]
        ts = src.c.bucket
        hi, lo = pair_sum(src.c["sum"], src.c["sum_lo"])
        partials = [func.sum(src.c["count"]), hi, func.min(src.c["min"]), func.max(src.c["max"]), lo]
    b = date_bin(step, ts)
    in_range = and_(src.c.stream_id == ranges.c.stream_id, ts >= ranges.c.lo, ts < ranges.c.hi)
    recomputed = select(src.c.stream_id, src.c.key_id, b.label("b"), *partials) \
        .select_from(ranges.join(src, in_range)).group_by(src.c.stream_id, src.c.key_id, b)
    return tuple(Statement.of(s) for s in (
        CreateTempTableAs(f"ranges_{g}", islands),
        Analyze(f"ranges_{g}"),
        delete(r).where(r.c.stream_id == ranges.c.stream_id, r.c.bucket >= ranges.c.lo, r.c.bucket < ranges.c.hi),
        r.insert().from_select([c.name for c in r.columns], recomputed)))
