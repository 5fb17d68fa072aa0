"""The history import's warm part with its rollups written directly (postgres mode): no refresh.

`warm.insert` normally records each batch's changes (warm_delta: partials per stream, key and
minute) for the refresh job, which folds them into rollup_1m/1h/1d and total_1m/1h/1d with
upserts through temporary tables. For the import that fold costs more than the COPY itself, so
`DirectRollups` replaces the recording: it keeps the rows the import copies and, in the same
transaction, writes the rollups of all of them at once, grouped in numpy:

- rollup_g: per (stream, g-bucket, key) count, sum, min, max of the raw values (g = 1m, 1h, 1d);
- total_g: per (stream, g-bucket) the same over every key;
- the results cache's rollup versions of the (stream, day) pairs touched.

Into buckets the tables hold no row of yet (a fresh import), one binary COPY per table; otherwise
through a temporary table and the refresh job's own fold (count and sum add, min and max combine,
the same ON CONFLICT statement), so what is there already stays counted. Dirty buckets pending
for the next refresh (deletes) are recomputed by it from raw, which then includes these rows. The
refresh lock is taken in the transaction first, so no refresh writes the rollups between the check
and the write. Sums: when every partial sum of the values is exact (tiers.day_batch.exact_sums) a
plain numpy sum, equal bit for bit to any order of additions refresh could take; otherwise the
exact pairs of rollups.pairsum (sum, sum_lo: tiers/warm_pairs.py), as refresh keeps them.
Timescale mode keeps the recording (its continuous aggregates are refreshed by the job).
"""
from __future__ import annotations

import functools

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import BigInteger, Column, MetaData, Table, and_, any_, bindparam, exists, false, literal, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.schema import DropTable

from rollups.pairsum import pair_reduceat
from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, floor_to
from tiers import versions
from tiers.day_batch import exact_sums
from tiers.locks import WARM_REFRESH_LOCK, xact_lock
from tiers.warm_copy import binary_copy, pg_us
from tiers.warm_pairs import fold_set, mark_off_grid
from tiers.warm_sql import CreateTempTableAs, Statement, copy_sql, epoch_ms, rollup, total

STEPS = (("1m", MINUTE_MS), ("1h", HOUR_MS), ("1d", DAY_MS))


class DirectRollups:
    """Collects the rows warm.insert copies (`record`, its record hook) and writes their rollups
    (`fold`) in the caller's open transaction; see the module doc."""

    def __init__(self) -> None:
        self._parts: list[pa.Table] = []

    @staticmethod
    def applies(warm) -> bool:
        """True in postgres mode (the only mode whose rollups are plain tables)."""
        return warm.mode == "postgres"

    def record(self, conn: psycopg.Connection, rows: pa.Table) -> None:
        self._parts.append(rows.select(["stream_id", "key_id", "ts", "value"]))

    def fold(self, conn: psycopg.Connection) -> dict[str, int]:
        """Write the rollups of every recorded row; returns rows written per table."""
        if not self._parts:
            return {}
        rows = pa.concat_tables(self._parts)
        self._parts = []
        xact_lock(conn, WARM_REFRESH_LOCK)
        sid = np.asarray(rows["stream_id"].to_numpy(), np.int64)
        kid = np.asarray(rows["key_id"].to_numpy(), np.int64)
        ms = np.asarray(rows["ts"].cast(pa.int64()).to_numpy(), np.int64)
        values = np.asarray(rows["value"].to_numpy(), np.float64)
        exact = exact_sums(values)
        mark_off_grid(conn, sid, values)  # reads of those streams sum as pairs (tiers/warm_pairs.py)
        out: dict[str, int] = {}
        for g, step in STEPS:
            bucket = ms - np.mod(ms, step)
            per_key = _grouped((kid, bucket, sid), values, exact)
            out[f"rollup_{g}"] = _write(conn, rollup[g], per_key, step, with_key=True)
            per_stream = _grouped((bucket, sid), values, exact)
            out[f"total_{g}"] = _write(conn, total[g], per_stream, step, with_key=False)
        versions.bump_warm_rows(conn, versions.ROLLUP_KIND, rows["stream_id"], rows["ts"])
        return out


def _grouped(keys: tuple[np.ndarray, ...], values: np.ndarray, exact: bool) -> dict[str, np.ndarray]:
    """Groups of equal `keys` (lexsort order: last key primary): each key's value per group, and
    count, sum, min, max of `values`."""
    order = np.lexsort(keys)
    ks = [k[order] for k in keys]
    v = values[order]
    change = np.zeros(len(v), bool)
    change[0] = True
    for k in ks:
        change[1:] |= k[1:] != k[:-1]
    starts = np.flatnonzero(change)
    n = len(starts)
    count = np.diff(np.append(starts, len(v))).astype(np.int64)
    if exact:
        total, low = np.add.reduceat(v, starts), np.zeros(n)
    else:  # exact pairs (hi, lo), as the rollups keep them (tiers/warm_pairs.py)
        total, low = pair_reduceat(v, None, starts)
    out = {f"k{i}": k[starts] for i, k in enumerate(ks)}
    out.update(count=count, sum=total, min=np.minimum.reduceat(v, starts), max=np.maximum.reduceat(v, starts),
               sum_lo=low)
    return out


def _write(conn: psycopg.Connection, t: Table, g: dict[str, np.ndarray], step: int, with_key: bool) -> int:
    """COPY the groups into table t (or fold them in, when t holds rows in their buckets already)."""
    if with_key:  # keys were (kid, bucket, sid)
        kid, bucket, sid = g["k0"], g["k1"], g["k2"]
        cols = [(">i4", sid), (">i8", kid)]
    else:  # (bucket, sid)
        bucket, sid = g["k0"], g["k1"]
        cols = [(">i4", sid)]
    cols += [(">i8", pg_us(pa.array(bucket))), (">i8", g["count"]), (">f8", g["sum"]), (">f8", g["min"]),
             (">f8", g["max"]), (">f8", g["sum_lo"])]
    payload = binary_copy(cols)
    streams = np.unique(sid).tolist()
    lo, hi = int(bucket.min()), int(bucket.max()) + step
    held = _holds(t.name).run(conn, {"sids": streams, "lo": lo, "hi": hi}).fetchone()[0]
    if not held:
        with conn.cursor().copy(copy_sql(t, "(FORMAT binary)")) as copy:
            copy.write(payload)
        return len(sid)
    create, staged, fold, drop = _fold_statements(t.name)
    create.run(conn)
    with conn.cursor().copy(copy_sql(staged, "(FORMAT binary)")) as copy:
        copy.write(payload)
    fold.run(conn)
    drop.run(conn)
    return len(sid)


def _table(name: str) -> Table:
    return rollup[name[len("rollup_"):]] if name.startswith("rollup_") else total[name[len("total_"):]]


@functools.cache
def _holds(name: str) -> Statement:
    """Whether table `name` holds a row of the streams `sids` in buckets [lo, hi) (epoch ms)."""
    t = _table(name)
    return Statement.of(select(exists().where(
        t.c.stream_id == any_(bindparam("sids")),
        t.c.bucket >= epoch_ms(bindparam("lo", type_=BigInteger)),
        t.c.bucket < epoch_ms(bindparam("hi", type_=BigInteger)))))


@functools.cache
def _fold_statements(name: str) -> tuple[Statement, Table, Statement, Statement]:
    """(create the staging temp table, it, fold it into `name` as refresh folds deltas, drop it)."""
    t = _table(name)
    staged = Table(f"import_{name}", MetaData(), *(Column(c.name, c.type) for c in t.columns))
    key = [t.c.stream_id, t.c.bucket] + ([t.c.key_id] if "key_id" in t.c else [])
    src = select(*staged.c).order_by(*(staged.c[c.name] for c in key))
    stmt = insert(t).from_select([c.name for c in t.columns], src)
    new = stmt.excluded
    stmt = stmt.on_conflict_do_update(index_elements=key, set_=fold_set(t, new))  # sums add as exact pairs
    create = CreateTempTableAs(staged.name, select(*t.c).where(and_(false(), literal(True))))
    return Statement.of(create), staged, Statement.of(stmt), Statement.of(DropTable(staged))


__all__ = ["DirectRollups"]


def unseen_in_warm(warm, tenant: str, events: pa.Table) -> pa.Table:
    """`events` (EVENT_SCHEMA) without those whose non-null id warm already stores for the same
    stream on the same UTC day (an import merged into a running instance: the rule of cold's and
    the archive's merged days, tierstore.history_import.unseen, which hold one day a file).
    Raises what psycopg raises."""
    if events.num_rows == 0 or events["id"].null_count == events.num_rows:
        return events
    gone = None
    for stream in pc.unique(events["stream"]).to_pylist():
        part = events.filter(pc.and_(pc.equal(events["stream"], stream), pc.is_valid(events["id"])))
        sid = warm.keys.stream_id(tenant, stream)
        if sid is None or part.num_rows == 0:
            continue
        lo = floor_to(pc.min(part["ts"]).as_py(), DAY_MS)
        hi = floor_to(pc.max(part["ts"]).as_py(), DAY_MS) + DAY_MS
        with warm.pool.connection() as conn:
            rows = conn.execute(
                "SELECT DISTINCT id, floor(extract(epoch FROM ts) * 1000 / %s)::bigint FROM events "
                "WHERE stream_id = %s AND ts >= timestamptz 'epoch' + %s * interval '1 millisecond' "
                "AND ts < timestamptz 'epoch' + %s * interval '1 millisecond' AND id = ANY(%s)",
                (DAY_MS, sid, lo, hi, pc.unique(part["id"]).to_pylist())).fetchall()
        if not rows:
            continue
        held = pa.array([f"{day}\x1f{i}" for i, day in rows])
        day = pc.cast(pa.array(np.floor_divide(events["ts"].to_numpy(), DAY_MS)), pa.string())
        day_id = pc.binary_join_element_wise(day, events["id"], "\x1f")  # null where id is null
        hit = pc.and_(pc.equal(events["stream"], stream), pc.fill_null(pc.is_in(day_id, value_set=held), False))
        gone = hit if gone is None else pc.or_(gone, hit)
    return events if gone is None else events.filter(pc.invert(gone))

