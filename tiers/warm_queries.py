"""The warm tier's read statements (the same in both modes), composed with SQLAlchemy Core.

A statement's text depends only on its shape — which granularities the pieces read, the grouping,
how keys are filtered — so each shape is compiled once (an LRU cache) and every call binds its
values: `sid`, `lo<i>`/`hi<i>` (epoch ms, clamped) per non-empty piece, `key_id` or `key_ids`.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

from sqlalchemy import (BigInteger, Integer, Table, and_, any_, bindparam, cast, column, delete, false, func,
                        literal_column, null, select, table, union_all)
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION
from sqlalchemy.types import Text

from rollups.cover import Piece
from rollups.partials import AGGS
from tiers.base import Group
from tiers.warm_pairs import ZERO, pair_sum_or_plain
from tiers.warm_sql import (Statement, CreateTempTableAs, clamp, date_bin, epoch_ms, events, keys, ms_of, rollup,
                            streams, total, warm_dirty)

Shape = tuple[str, ...]  # granularity names of the non-empty pieces, in order
_SID = bindparam("sid", type_=Integer)
_KEY_IDS = bindparam("key_ids", type_=ARRAY(BigInteger))
_MINUTE = literal_column("'1 minute'")
# compiling costs milliseconds (tens for a 7-piece union), a cached lookup under a microsecond;
# shapes are few (covers of a range: at most raw, 1m, 1h, 1d, 1h, 1m, raw), the bound is a guard
_by_shape = functools.lru_cache(maxsize=1024)


def shape_of(pieces: Sequence[Piece]) -> tuple[Shape, dict[str, Any]]:
    """The shape of the pieces and the values of their bounds (lo<i>, hi<i>)."""
    live = [p for p in pieces if not p.range.empty]
    params: dict[str, Any] = {}
    for i, p in enumerate(live):
        params[f"lo{i}"], params[f"hi{i}"] = clamp(p.range.start), clamp(p.range.end)
    return tuple(p.granularity.name for p in live), params


def _bounds(i: int, column_):
    return (column_ >= epoch_ms(bindparam(f"lo{i}", type_=BigInteger)),
            column_ < epoch_ms(bindparam(f"hi{i}", type_=BigInteger)))


def _piece(i: int, granularity: str, group: Group, keys_by: str | None, exact: bool = False):
    """The rows of one piece: columns g (key_id or bucket ms), c, s, lo, hi, sl (the sum's low
    part when `exact`, postgres mode: tiers/warm_pairs.py; else 0).

    keys_by: None (every key), "one" (= key_id) or "probe" (the candidate key_ids: probe each
    one's (stream, key, bucket) index, not the whole range)."""
    if granularity == "raw":
        t, time = events, events.c.ts
        g = t.c.key_id if group == "key" else ms_of(date_bin(_MINUTE, time))
        parts = [cast(literal_column("1"), BigInteger), t.c.value, t.c.value, t.c.value, ZERO]
    else:
        # a series of the whole stream reads the stream-wide totals: one row per bucket
        t = (total if group == "bucket" and keys_by is None else rollup)[granularity]
        time = t.c.bucket
        g = t.c.key_id if group == "key" else ms_of(time)
        parts = [t.c["count"], t.c["sum"], t.c["min"], t.c["max"], t.c["sum_lo"] if exact else ZERO]
    columns = [g.label("g"), *(c.label(n) for c, n in zip(parts, ("c", "s", "lo", "hi", "sl")))]
    where = [t.c.stream_id == _SID, *_bounds(i, time)]
    if keys_by == "one":
        where.append(t.c.key_id == bindparam("key_id", type_=BigInteger))
    if keys_by == "probe":
        wanted = func.unnest(_KEY_IDS).table_valued("id").render_derived(name="wanted")
        return select(*columns).select_from(wanted.join(t, and_(*where, t.c.key_id == wanted.c.id)))
    return select(*columns).where(*where)


def _union(shape: Shape, group: Group, keys_by: str | None, exact: bool = False):
    """UNION ALL of the rows of every piece, as subquery u.

    Rows, not per-piece aggregates: one hash aggregate over the union beats per-piece group-bys,
    which lead the planner into key-ordered index scans of whole rollups."""
    parts = [_piece(i, g, group, keys_by, exact) for i, g in enumerate(shape)]
    if not parts:
        zero = cast(literal_column("0"), BigInteger)
        parts = [select(cast(null(), BigInteger).label("g"), zero.label("c"),
                        *(literal_column("0").label(n) for n in ("s", "lo", "hi")), ZERO.label("sl")).where(false())]
    return (union_all(*parts) if len(parts) > 1 else parts[0]).subquery("u")


def _merged(u, g_label: str, exact: bool = False):
    """Per g: c, s, lo, hi, sl (s + sl the exact pair sum when `exact`, tiers/warm_pairs.py)."""
    hi, lo = pair_sum_or_plain(u.c.s, u.c.sl, exact)
    return select(u.c.g.label(g_label), cast(func.sum(u.c.c), BigInteger).label("c"), hi.label("s"),
                  func.min(u.c.lo).label("lo"), func.max(u.c.hi).label("hi"), lo.label("sl")).group_by(u.c.g)


def _per_key(shape: Shape, keys_by: str | None = None, exact: bool = False):
    """Subquery a: key_id, c, s, lo, hi, sl per key over the pieces."""
    return _merged(_union(shape, "key", keys_by, exact), "key_id", exact).subquery("a")


@_by_shape
def aggregate(shape: Shape, group: Group, one_key: bool, exact: bool = False) -> Statement:
    """Partials per key (key, c, s, lo, hi, sl) or per bucket (bucket ms, c, s, lo, hi, sl): sl
    the sums' low parts (exact pairs, postgres mode) or 0."""
    keys_by = "one" if one_key else None
    if group == "key":
        a = _per_key(shape, keys_by, exact)
        return Statement.of(select(keys.c.key, a.c.c, a.c.s, a.c.lo, a.c.hi, a.c.sl)
                            .select_from(a.join(keys, keys.c.id == a.c.key_id)))
    return Statement.of(_merged(_union(shape, group, keys_by, exact), "g", exact))


@_by_shape
def aggregate_each(granularity: str, exact: bool = False, one_key: bool = False) -> Statement:
    """Per piece and key over many pieces of one granularity, in one statement: rows (j, key, c,
    s, lo, hi, sl), j the 0-based position of the row's piece in time order.

    Binds `sid`, `thresholds` (bigint[]: the pieces' bounds lo0, hi0, lo1, hi1, ... in epoch ms,
    non-decreasing: the pieces must not overlap), `lo_all`/`hi_all` (its first and last) and
    `key_id` when `one_key`. A row's piece is found by binary search: width_bucket counts the
    thresholds <= its time, 2j + 1 inside piece j, even in a gap between pieces (dropped)."""
    if granularity == "raw":
        t, time = events, events.c.ts
        parts = [cast(literal_column("1"), BigInteger), t.c.value, t.c.value, t.c.value, ZERO]
    else:
        t = rollup[granularity]
        time = t.c.bucket
        parts = [t.c["count"], t.c["sum"], t.c["min"], t.c["max"], t.c["sum_lo"] if exact else ZERO]
    at = func.width_bucket(ms_of(time), bindparam("thresholds", type_=ARRAY(BigInteger)))
    where = [t.c.stream_id == _SID, time >= epoch_ms(bindparam("lo_all", type_=BigInteger)),
             time < epoch_ms(bindparam("hi_all", type_=BigInteger))]
    if one_key:
        where.append(t.c.key_id == bindparam("key_id", type_=BigInteger))
    rows = select(at.label("w"), t.c.key_id.label("g"),
                  *(c.label(n) for c, n in zip(parts, ("c", "s", "lo", "hi", "sl")))).where(*where).subquery("r")
    u = select(rows).where(rows.c.w.op("%")(2) == 1).subquery("u")
    hi, lo = pair_sum_or_plain(u.c.s, u.c.sl, exact)
    a = select((u.c.w.op("/")(2)).label("j"), u.c.g.label("key_id"), cast(func.sum(u.c.c), BigInteger).label("c"),
               hi.label("s"), func.min(u.c.lo).label("lo"), func.max(u.c.hi).label("hi"),
               lo.label("sl")).group_by(u.c.w, u.c.g).subquery("a")
    return Statement.of(select(a.c.j, keys.c.key, a.c.c, a.c.s, a.c.lo, a.c.hi, a.c.sl)
                        .select_from(a.join(keys, keys.c.id == a.c.key_id)))


def check_by(by: str) -> None:
    """Raises ValueError unless `by` is an aggregate a ranking can use (rollups.partials.AGGS)."""
    if by not in AGGS:
        raise ValueError(f"by must be one of {', '.join(AGGS)}, not {by!r}")


def _rank_value(a, by: str):
    """The ranking value of a per-key row (as rollups.partials.value_column)."""
    check_by(by)
    return {"count": lambda: cast(a.c.c, DOUBLE_PRECISION), "sum": lambda: a.c.s, "min": lambda: a.c.lo,
            "max": lambda: a.c.hi, "avg": lambda: a.c.s.op("/", return_type=DOUBLE_PRECISION)(a.c.c)}[by]()


@_by_shape
def top_k(shape: Shape, by: str, probe: bool, exact: bool = False) -> Statement:
    """key, v of the k best keys (value desc, key asc in bytes); binds k (and key_ids if probe)."""
    a = _per_key(shape, "probe" if probe else None, exact and by in ("sum", "avg"))
    v = _rank_value(a, by).label("v")
    return Statement.of(select(keys.c.key, v).select_from(a.join(keys, keys.c.id == a.c.key_id))
                        .order_by(v.desc(), keys.c.key.collate("C")).limit(bindparam("k", type_=Integer)))


_ranked = table("ranked", column("key", Text), column("v", DOUBLE_PRECISION), column("rn", BigInteger))
RANK_TOTAL = Statement.of(select(func.count()).select_from(_ranked))
RANK_AT = Statement.of(select(_ranked.c.rn, _ranked.c.v).where(_ranked.c.key == bindparam("key", type_=Text)))
RANK_AROUND = Statement.of(select(_ranked.c.rn, _ranked.c.key, _ranked.c.v)
                           .where(_ranked.c.rn.between(bindparam("first", type_=BigInteger),
                                                       bindparam("last", type_=BigInteger)))
                           .order_by(_ranked.c.rn))


@_by_shape
def rank(shape: Shape, by: str, exact: bool = False) -> Statement:
    """Temporary table `ranked` (key, v, rn) of every key over the pieces, rn 1-based."""
    a = _per_key(shape, None, exact and by in ("sum", "avg"))
    v = _rank_value(a, by)
    rn = func.row_number().over(order_by=(v.desc(), keys.c.key.collate("C")))
    return Statement.of(CreateTempTableAs("ranked", select(keys.c.key, v.label("v"), rn.label("rn"))
                                          .select_from(a.join(keys, keys.c.id == a.c.key_id))))


@_by_shape
def range_min(shape: Shape) -> Statement:
    """The least value over the pieces (stream totals: one row per bucket)."""
    u = _union(shape, "bucket", None)
    return Statement.of(select(func.min(u.c.lo)))


def _lists(heads: tuple[str, ...], edges: Shape, by: str, phase: int):
    """(key_id, v) rows of every list of the threshold algorithm: each head bucket of rollup g
    (starts_<g>: bucket starts, epoch ms) by its value index, best first, cut to the k best
    (phase 1, binds k) or to v >= min_value (phase 2); and the edge pieces' per-key partials."""
    parts = []
    for g in heads:
        r = rollup[g]
        b = func.unnest(bindparam(f"starts_{g}", type_=ARRAY(BigInteger))).table_valued("ms").render_derived(name="b")
        head = select(r.c.key_id, r.c[by]).where(r.c.stream_id == _SID, r.c.bucket == epoch_ms(b.c.ms))
        if phase == 2:
            head = head.where(r.c[by] >= bindparam("min_value", type_=DOUBLE_PRECISION))
        head = head.order_by(r.c[by].desc())
        if phase == 1:
            head = head.limit(bindparam("k", type_=Integer))
        head = head.lateral("r")
        parts.append(select(head.c.key_id, cast(head.c[by], DOUBLE_PRECISION).label("v"))
                     .select_from(b.join(head, literal_column("true"))))
    if edges:
        u = _union(edges, "key", None)
        agg = func.sum(u.c.c if by == "count" else u.c.s)
        edge = select(u.c.g.label("key_id"), cast(agg, DOUBLE_PRECISION).label("v")).group_by(u.c.g)
        if phase == 2:
            edge = edge.having(agg >= bindparam("min_value", type_=DOUBLE_PRECISION))
        parts.append(edge)
    return (union_all(*parts) if len(parts) > 1 else parts[0]).subquery("l")


@_by_shape
def threshold_tau(heads: tuple[str, ...], edges: Shape, by: str) -> Statement:
    """Phase 1: the k-th best per-key sum over the lists' heads (binds k, k_offset = k - 1)."""
    lists = _lists(heads, edges, by, 1)
    t = select(lists.c.key_id, func.sum(lists.c.v).label("v")).group_by(lists.c.key_id).subquery("t")
    return Statement.of(select(t.c.v).order_by(t.c.v.desc()).offset(bindparam("k_offset", type_=Integer)).limit(1))


@_by_shape
def threshold_candidates(heads: tuple[str, ...], edges: Shape, by: str) -> Statement:
    """Phase 2: the keys with v >= min_value in some list (binds min_value, max_rows)."""
    lists = _lists(heads, edges, by, 2)
    return Statement.of(select(lists.c.key_id).distinct().limit(bindparam("max_rows", type_=Integer)))


READ_RAW = Statement.of(
    select(keys.c.key, ms_of(events.c.ts), events.c.value, events.c.id)
    .select_from(events.join(keys, keys.c.id == events.c.key_id))
    .where(events.c.stream_id == _SID, *_bounds(0, events.c.ts)).order_by(events.c.ts, keys.c.key))

ALL_STREAMS = Statement.of(select(streams.c.tenant, streams.c.stream).order_by(streams.c.tenant, streams.c.stream))

FIRST_EVENT = Statement.of(
    select(ms_of(func.min(events.c.ts)))
    .where(events.c.ts >= epoch_ms(bindparam("lo", type_=BigInteger)),
           events.c.ts < epoch_ms(bindparam("hi", type_=BigInteger))))

_DAY = literal_column("'1 day'")
_EVENT_DAY = date_bin(_DAY, events.c.ts)
# (tenant, stream, day start as epoch ms) of every stream-day holding raw events in [lo, hi)
DAYS_WITH_EVENTS = Statement.of(
    select(streams.c.tenant, streams.c.stream, ms_of(literal_column("d.day")))
    .select_from(select(events.c.stream_id, _EVENT_DAY.label("day"))
                 .where(events.c.ts >= epoch_ms(bindparam("lo", type_=BigInteger)),
                        events.c.ts < epoch_ms(bindparam("hi", type_=BigInteger)))
                 .group_by(events.c.stream_id, _EVENT_DAY).subquery("d")
                 .join(streams, streams.c.id == literal_column("d.stream_id")))
    .order_by(literal_column("3"), streams.c.tenant, streams.c.stream))

STREAMS_WITH_EVENTS = Statement.of(
    select(streams.c.stream).where(streams.c.tenant == bindparam("tenant", type_=Text),
                                   select(literal_column("1")).where(events.c.stream_id == streams.c.id).exists())
    .order_by(streams.c.stream))


@functools.cache
def stream_ids(by_tenant: bool, by_stream: bool) -> Statement:
    """Ids of the streams of `tenant` and/or named `stream`."""
    stmt = select(streams.c.id)
    if by_tenant:
        stmt = stmt.where(streams.c.tenant == bindparam("tenant", type_=Text))
    if by_stream:
        stmt = stmt.where(streams.c.stream == bindparam("stream", type_=Text))
    return Statement.of(stmt)


@functools.cache
def delete_rows(some_streams: bool) -> Statement:
    """Delete raw events in [lo0, hi0) (of streams `sids` if some_streams), marking their minute
    buckets dirty in the same statement; returns the count."""
    where = list(_bounds(0, events.c.ts))
    if some_streams:
        where.append(events.c.stream_id == any_(bindparam("sids", type_=ARRAY(Integer))))
    d = delete(events).where(*where).returning(events.c.stream_id, events.c.ts).cte("d")
    minute = date_bin(_MINUTE, d.c.ts)
    m = warm_dirty.insert().from_select(["stream_id", "bucket"],
                                        select(d.c.stream_id, minute).group_by(d.c.stream_id, minute)).cte("m")
    return Statement.of(select(func.count()).select_from(d).add_cte(m))


@functools.cache
def oldest_pending(t: Table) -> Statement:
    """The earliest bucket (epoch ms, NULL when none) of a pending-change table."""
    return Statement.of(select(ms_of(func.min(t.c.bucket))))


def pending_before(t: Table) -> Statement:
    """Up to 1000 rows of a pending-change table with bucket before `before` (epoch ms)."""
    x = select(literal_column("1")).select_from(t).where(
        t.c.bucket < epoch_ms(bindparam("before", type_=BigInteger))).limit(1000).subquery("x")
    return Statement.of(select(func.count()).select_from(x))


def stale_before(t: Table) -> Statement:
    """Up to 1000 rows of warm_stale (postgres mode) whose bucket ends at or before `before`
    (epoch ms): rollup buckets a reader of time below `before` could read and that are not exact."""
    x = select(literal_column("1")).select_from(t).where(
        t.c.bucket_end <= epoch_ms(bindparam("before", type_=BigInteger))).limit(1000).subquery("x")
    return Statement.of(select(func.count()).select_from(x))
