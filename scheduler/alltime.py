"""rebuild_alltime: recompute every stream's all-time leaderboard from what the tiers hold.

The hot tier keeps, per stream, each key's all-time count and sum (zsets all:count and all:sum),
which every ingest updates and POST /v1/streams/{s}/keys/{k}/score reads for a key's score and
rank. This job recomputes them from the tiers — archive + cold + warm over all time, by one
catalog snapshot — after Redis lost or garbled them, or to drop what retention deleted.

Counting every accepted event exactly once while ingest goes on:
 1. Holding the advisory locks of the jobs that drain the event log into warm or move data between
    the tiers (flush, expire_hot, export_cold, retention, archive; reports flush under the flush
    lock), flush the log: warm's raw events are then exactly those of the log entries up to its
    checkpoint P, and stay so.
 2. One Redis script per stream, atomic with the stream's ingest, marks it: from then on each
    ingest also adds its all-time increments aside (all:rebuild:count|sum). The stream's log's
    last entry then is L (every stream has its own log and checkpoint P: tiers/eventlog.py).
 3. Totals per key = the tiers' aggregates over all time (warm holds every flushed event, hot's
    range included; its rollups are refreshed first) + the events of the log entries in (P, L],
    logged after the flush and before the mark (still in the log: nothing trims it meanwhile).
 4. Release the locks. Per stream, one script swaps in all-time = totals + what was counted aside
    and drops the mark.
Each accepted event lies in exactly one of: the tiers at P, the entries (P, L], the side zsets.
Events that never went through the log (RedisHotTier.write, for tests) are not in the tiers, so a
rebuild drops them. A stream whose mark expired before its swap (mark_ttl_ms) is left as it was
and the run fails naming it: run it again.
"""
from __future__ import annotations

import uuid
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rollups.cover import cover
from rollups.errors import TierUnavailable
from rollups.timeutil import DAY_MS, G1D, HOUR_MS, MIN_MS, TimeRange, now_ms
from scheduler import steps
from tiers.eventlog import EventLog, decode_entry
from tiers.locks import job_lock_name, session_locks

# The jobs that flush the log into warm (expire_hot and export_cold call flush themselves), move
# data out of warm, or rewrite or delete archived data: while their locks are held, warm's raw
# events stay those of the checkpoint and the other tiers hold still. Retention takes the archive
# lock while it holds its own: the same order here, so neither waits on the other in a cycle.
FROZEN_JOBS = ("flush", "expire_hot", "export_cold", "retention", "archive")
_TOTALS = pa.schema([("key", pa.string()), ("count", pa.int64()), ("sum", pa.float64())])
Pair = tuple[str, str]


def rebuild_alltime(redis, hot, warm, catalog, pool, *, cold=None, archive=None, clock_skew_ms: int = 0,
                    mark_ttl_ms: int = 6 * HOUR_MS, flush: Callable[[], Any] | None = None,
                    progress: steps.Progress | None = None,
                    step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Recompute all:count and all:sum of every stream from the tiers (see the module docstring).

    `pool` reaches the database of the job locks; `cold` and `archive` (tiers, or callables that
    build them) are needed only when the catalog gives them a range; `clock_skew_ms` bounds how
    far ahead of now an accepted event may lie; `step(name)` is called after each stage (tests
    ingest there). Returns stats; raises RuntimeError naming the streams whose mark expired.
    """
    progress = progress or steps.NullProgress()
    step = step or (lambda name: None)
    flush = flush or (lambda: steps.flush(redis, warm))
    token = uuid.uuid4().hex
    known = _streams_in_warm(warm)
    stats: dict[str, Any] = {}
    with session_locks(pool, map(job_lock_name, FROZEN_JOBS)):
        stats["flush"] = flush()
        checkpoints = steps.read_checkpoint(warm)
        step("after_flush")
        lasts, marked = hot.begin_alltime_rebuild(known, token, mark_ttl_ms)
        step("after_mark")
        logged = _log_totals(redis, checkpoints, lasts)
        warm.refresh()
        snap = catalog.snapshot()
        end = G1D.ceil(now_ms() + clock_skew_ms) + DAY_MS  # no accepted event lies beyond
        tiers = {"warm": warm, "cold": cold, "archive": archive}
        totals = {}
        for i, pair in enumerate(marked):
            totals[pair] = _tier_totals(tiers, snap, pair, end)
            progress.progress(0.8 * (i + 1) / len(marked))
    step("after_read")
    lost = []
    keys = 0
    for pair in marked:
        merged = _merge([totals[pair], *logged.get(pair, [])])
        keys += merged.num_rows
        if not hot.replace_alltime(*pair, token, merged):
            lost.append(pair)
        step("after_swap")
    progress.progress(1.0)
    stats.update(streams=len(marked) - len(lost), keys=keys, logged_entries_after_flush=sum(
        len(v) for v in logged.values()), catalog_version=snap.version)
    if lost:
        raise RuntimeError(f"the rebuild mark of {len(lost)} stream(s) expired before their swap (they were left "
                           f"as they were): {', '.join('/'.join(p) for p in lost[:10])}; run rebuild_alltime again")
    return stats


def _streams_in_warm(warm) -> list[Pair]:
    """Every stream interned in PostgreSQL's key dictionary: warm, cold and archive data all are."""
    with warm.pool.connection() as conn:
        return [tuple(r) for r in conn.execute("SELECT tenant, stream FROM streams ORDER BY tenant, stream")]


def _log_totals(redis, after: dict[str, tuple[int, int]], upto: dict[str, tuple[int, int]]
                ) -> dict[Pair, list[pa.Table]]:
    """Per (tenant, stream), per-key totals of the events of each log's entries in (after, upto]
    (log key -> entry id: its flush checkpoint, the last entry begin_alltime_rebuild read)."""
    out: dict[Pair, list[pa.Table]] = {}
    for _, fields in (e for log, last in upto.items() for e in EventLog(redis, key=log).entries(after.get(log), last)):
        tenant, events = decode_entry(fields)
        grouped = events.group_by(["stream", "key"]).aggregate([("value", "count"), ("value", "sum")])
        for stream in set(grouped.column("stream").to_pylist()):
            rows = grouped.filter(pc.equal(grouped["stream"], stream))
            out.setdefault((tenant, stream), []).append(pa.Table.from_arrays(
                [rows["key"], rows["value_count"].cast(pa.int64()), rows["value_sum"]], schema=_TOTALS))
    return out


def _tier_totals(tiers: dict[str, Any], snap, pair: Pair, end: int) -> pa.Table:
    """Per-key totals of one stream over [-inf, end) from the tiers that own it (hot's range from
    warm, which holds every flushed event)."""
    parts: list[tuple[str, TimeRange]] = []
    for owner, part in snap.segments(TimeRange(MIN_MS, end)):
        owner = "warm" if owner == "hot" else owner
        if parts and parts[-1][0] == owner:
            parts[-1] = (owner, TimeRange(parts[-1][1].start, part.end))
        else:
            parts.append((owner, part))
    tables = []
    for owner, part in parts:
        tier = tiers.get(owner)
        if callable(tier) and not hasattr(tier, "aggregate"):
            tier = tiers[owner] = tier()
        if tier is None:
            raise TierUnavailable(owner, f"The {owner} tier holds part of all time but is not configured here.")
        partials = tier.aggregate(*pair, cover(part, tier.granularities), "key")
        lows = ["sum_lo"] if "sum_lo" in partials.column_names else []  # warm's, cold's, the archive's exact pairs
        tables.append(partials.select(["key", "count", "sum", *lows]))
    return _merge(tables)


def _merge(tables: list[pa.Table]) -> pa.Table:
    """Per key, the counts added and the sums (with their low parts, `sum_lo` where a table has
    them) added exactly as pairs (rollups.pairsum): each total the float nearest the exact sum."""
    from rollups.pairsum import grouped_pair_sum

    tables = [t for t in tables if t.num_rows]
    if not tables:
        return _TOTALS.empty_table()
    keys = pa.concat_arrays([t["key"].combine_chunks().cast(pa.string()) for t in tables])
    codes = pc.dictionary_encode(keys)
    ids = np.asarray(codes.indices.to_numpy(zero_copy_only=False), np.int64)
    n = len(codes.dictionary)
    starts = np.cumsum([0] + [t.num_rows for t in tables])
    groups, terms = [ids], [np.concatenate([np.asarray(t["sum"].to_numpy(), np.float64) for t in tables])]
    for i, t in enumerate(tables):
        if "sum_lo" in t.column_names:
            groups.append(ids[starts[i]:starts[i + 1]])
            terms.append(np.asarray(t["sum_lo"].to_numpy(), np.float64))
    hi, _ = grouped_pair_sum(np.concatenate(groups), np.concatenate(terms), n)
    counts = np.zeros(n, np.int64)
    np.add.at(counts, ids, np.concatenate([np.asarray(t["count"].to_numpy(), np.int64) for t in tables]))
    return pa.Table.from_arrays([codes.dictionary, pa.array(counts), pa.array(hi)], schema=_TOTALS)


def run_rebuild_alltime(ctx) -> dict[str, Any]:
    r = ctx.resources
    if r.get("hot") is None:
        raise TierUnavailable("hot", "rebuild_alltime needs the hot tier (Redis), which is not configured here.")
    return rebuild_alltime(r["redis"], r["hot"], r["warm"], r["catalog"], r["pool"],
                           cold=lambda: r["cold"], archive=lambda: r["archive"],
                           clock_skew_ms=ctx.settings.clock_skew, progress=ctx)
