"""Flush and refresh throughput on sustained-ingest-shaped data (issue 11 item 1).

    python -m bench.flush [--mode auto|postgres|timescale] [--events 500000] [--keys 100000]
                          [--spread-s 60] [--ids/--no-ids] [--batch-entries 256] [--profile]

Its own instance inside the local services (bench.support.isolated: Redis database 39,
PostgreSQL database tierstore_bench_flush, both emptied first). The event log gets `--events`
events in entries of 5,000 as ingest logs them: keys song_1..song_<keys> drawn Zipf(1), values
0.5/1/2/5, a 36-character id on every event (--ids, as bench/sustained.py sends), ts = now minus up
to --spread-s seconds. Then scheduler.steps.flush drains it and WarmTier.refresh folds it; each is
timed (and with --profile, cProfile's top functions go to stderr). The answers are checked: total
count and sum per key from rollup_1d equal what was logged. Last line: JSON with
`flush_events_per_s`, `refresh_events_per_s`, `flush_s`, `refresh_s`, `exact`.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.support import isolated  # noqa: E402
from rollups.timeutil import now_ms  # noqa: E402
from scheduler import steps  # noqa: E402
from tiers.base import EVENT_SCHEMA  # noqa: E402
from tiers.db import apply_migrations  # noqa: E402
from tiers.eventlog import STREAM_KEY, encode_batch  # noqa: E402
from tiers.warm import WarmTier  # noqa: E402
from tierstore.settings import load_settings  # noqa: E402

TENANT, STREAM, BATCH, REDIS_DB = "bench", "plays", 5_000, 39
VALUES = np.array([0.5, 1.0, 2.0, 5.0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="auto")
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--spread-s", type=float, default=60.0)
    ap.add_argument("--ids", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--batch-entries", type=int, default=256)
    ap.add_argument("--warmup-events", type=int, default=100_000,
                    help="flushed and refreshed first, unmeasured (keys interned, as in steady state)")
    ap.add_argument("--compare", type=int, default=0, metavar="ROUNDS",
                    help="ROUNDS rounds each of the old code path (text COPY of ids, unsorted upserts, default "
                         "work_mem) and the new one, alternating in this run: medians and new/old ratios")
    ap.add_argument("--profile", action="store_true", help="cProfile and per-SQL-statement times to stderr")
    args = ap.parse_args()

    import redis

    settings = isolated(load_settings(), REDIS_DB, "tierstore_bench_flush")
    r = redis.Redis.from_url(settings.redis_url)
    if args.profile:  # plans of statements over 1 s go to PostgreSQL's log
        import psycopg

        with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
            for name, value in (("session_preload_libraries", "auto_explain"), ("auto_explain.log_min_duration", "1s"),
                                ("auto_explain.log_analyze", "on"), ("auto_explain.log_buffers", "on")):
                conn.execute(f"ALTER DATABASE tierstore_bench_flush SET {name} = '{value}'")
    mode = apply_migrations(settings.postgres_url, args.mode)
    warm = WarmTier(settings.postgres_url, mode=mode)
    out: dict = {"mode": mode, "events": args.events, "keys": args.keys, "ids": args.ids}
    rng = np.random.default_rng(7)
    weights = 1.0 / np.arange(1, args.keys + 1)
    cum = np.cumsum(weights) / weights.sum()
    expect_count = np.zeros(args.keys, np.int64)
    expect_sum = np.zeros(args.keys)
    seqs = iter(range(1 << 30))

    def log_events(total: int, count: bool) -> None:
        now = now_ms()
        pipe = r.pipeline(transaction=False)
        for lo in range(0, total, BATCH):
            log_batch(pipe, min(BATCH, total - lo), next(seqs), now, count)
        pipe.execute()

    def log_batch(pipe, n: int, seq: int, now: int, count: bool) -> None:
        keys = np.minimum(np.searchsorted(cum, rng.random(n)), args.keys - 1)
        values = VALUES[rng.integers(0, len(VALUES), n)]
        ts = now - rng.integers(0, max(1, int(args.spread_s * 1000)), n)
        if count:
            expect_count[:] += np.bincount(keys, minlength=args.keys)
            expect_sum[:] += np.bincount(keys, weights=values, minlength=args.keys)
        ids = pa.array([f"0000cafe-0001-{seq >> 16:04x}-{seq & 0xFFFF:04x}-{i:012x}" for i in range(n)]) \
            if args.ids else pa.nulls(n, pa.string())
        pipe.xadd(STREAM_KEY, {"tenant": TENANT, "dups": "[]", "data": encode_batch(pa.table({
            "stream": pa.array([STREAM] * n), "key": pa.array([f"song_{k + 1}" for k in keys.tolist()]),
            "ts": pa.array(ts, pa.int64()), "value": pa.array(values), "id": ids}, schema=EVENT_SCHEMA))})

    if args.warmup_events:
        log_events(args.warmup_events, True)
        steps.flush(r, warm, batch_entries=args.batch_entries)
        warm.refresh()
    if args.profile:
        _time_statements()

    def timed(name: str, fn):
        prof = cProfile.Profile() if args.profile else None
        t = time.perf_counter()
        if prof:
            prof.enable()
        result = fn()
        if prof:
            prof.disable()
        elapsed = time.perf_counter() - t
        if prof:
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(35)
            print(f"==== {name}\n{buf.getvalue()}", file=sys.stderr)
            for sql, secs in sorted(_STATEMENT_S.items(), key=lambda kv: -kv[1])[:12]:
                print(f"{secs:8.3f} s  {' '.join(sql.split())[:200]}", file=sys.stderr)
            _STATEMENT_S.clear()
        return result, elapsed

    def one_round() -> tuple[float, float, dict]:
        log_events(args.events, True)
        stats, flush_s = timed("flush", lambda: steps.flush(r, warm, batch_entries=args.batch_entries))
        assert stats["events"] == args.events, stats
        rstats, refresh_s = timed("refresh", warm.refresh)
        return flush_s, refresh_s, rstats

    rounds = 1 + 2 * args.compare
    if not args.compare:
        flush_s, refresh_s, rstats = one_round()
    else:
        times: dict[str, list] = {"old": [], "new": []}
        for i in range(args.compare):
            for path in ("old", "new"):
                with _old_code_path(path == "old"):
                    f, rf, rstats = one_round()
                times[path].append((f, rf))
                print(f"{path}: flush {args.events / f:,.0f} ev/s, refresh {args.events / rf:,.0f} ev/s",
                      file=sys.stderr)
        med = {p: [statistics.median(x[j] for x in times[p]) for j in (0, 1)] for p in times}
        out["old"] = {"flush_events_per_s": round(args.events / med["old"][0]),
                      "refresh_events_per_s": round(args.events / med["old"][1])}
        out["flush_ratio"] = round(med["old"][0] / med["new"][0], 2)
        out["refresh_ratio"] = round(med["old"][1] / med["new"][1], 2)
        flush_s, refresh_s = med["new"]
        rounds = 2 * args.compare
    out.update(flush_s=round(flush_s, 2), flush_events_per_s=round(args.events / flush_s),
               refresh_s=round(refresh_s, 2), refresh_events_per_s=round(args.events / refresh_s),
               refresh=rstats)
    with warm.pool.connection() as conn:
        rows = conn.execute("SELECT k.key, sum(r.count)::bigint, sum(r.sum) FROM rollup_1d r "
                            "JOIN keys k ON k.id = r.key_id GROUP BY k.key").fetchall()
    got_count = np.zeros(args.keys, np.int64)
    got_sum = np.zeros(args.keys)
    for key, c, s in rows:
        got_count[int(key[5:]) - 1] += c
        got_sum[int(key[5:]) - 1] += s
    assert got_count.sum() == rounds * args.events + args.warmup_events, got_count.sum()
    out["exact"] = bool((got_count == expect_count).all() and np.allclose(got_sum, expect_sum, rtol=0, atol=1e-6))
    out["load_1m"] = round(__import__("os").getloadavg()[0], 1)
    warm.close()
    print(json.dumps(out))


_STATEMENT_S: dict[str, float] = {}


@contextlib.contextmanager
def _old_code_path(active: bool):
    """--compare: the code before issue 11's flush work, patched in for a round (nothing when not
    `active`): ids sent as CSV through a text COPY, deltas upserted unsorted, default work_mem, every
    touched bucket's total recomputed from the rollup."""
    if not active:
        yield
        return
    import re

    import pyarrow.csv as pacsv

    from tiers import warm as warm_mod, warm_postgres as wp
    from tiers.warm_sql import Statement, copy_sql, events

    copy_csv = copy_sql(events, "(FORMAT csv)")
    new_insert, new_apply, new_work_mem = warm_mod.WarmTier.insert, wp._apply_deltas, wp._WORK_MEM

    def old_insert(self, conn, tenant, batch):
        if batch.num_rows == 0 or batch["id"].null_count == batch.num_rows:
            return new_insert(self, conn, tenant, batch)
        rows = self._rows(tenant, batch.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA))
        self._strategy.prepare_days(rows["ts"])
        buf = io.BytesIO()
        pacsv.write_csv(rows, buf, pacsv.WriteOptions(include_header=False))
        with conn.cursor().copy(copy_csv) as copy:
            copy.write(buf.getbuffer())
        self._strategy.record_insert(conn, rows)
        warm_mod.versions.bump_warm_rows(conn, warm_mod.versions.RAW_KIND, rows["stream_id"], rows["ts"])
        return rows.num_rows

    def old_apply(g):
        stmt = new_apply(g)
        return Statement(re.sub(r" ORDER BY [^)]*? ON CONFLICT", " ON CONFLICT", stmt.sql), stmt.bound)

    def old_totals(g):  # every touched bucket's total recomputed from the rollup
        from sqlalchemy import and_, delete, select

        t, x, r = wp.total[g], wp._buckets(f"touched_{g}"), wp.rollup[g]
        columns, group = wp._aggregated(r, r.c.bucket, ("stream_id",))
        return (Statement.of(delete(t).where(t.c.stream_id == x.c.stream_id, t.c.bucket == x.c.bucket)),
                Statement.of(t.insert().from_select([c.name for c in t.columns], select(*columns).select_from(
                    x.join(r, and_(r.c.stream_id == x.c.stream_id, r.c.bucket == x.c.bucket))).group_by(*group))))

    new_totals = wp._recompute_totals
    warm_mod.WarmTier.insert, wp._apply_deltas, wp._WORK_MEM = old_insert, old_apply, Statement("SELECT 1", {})
    wp._recompute_totals = old_totals
    try:
        yield
    finally:
        warm_mod.WarmTier.insert, wp._apply_deltas, wp._WORK_MEM = new_insert, new_apply, new_work_mem
        wp._recompute_totals = new_totals


def _time_statements() -> None:
    """--profile: add up the wall time of every SQL text psycopg executes (per text)."""
    import psycopg

    execute = psycopg.Connection.execute

    def timed_execute(self, query, *a, **kw):
        t = time.perf_counter()
        try:
            return execute(self, query, *a, **kw)
        finally:
            key = query if isinstance(query, str) else str(query)
            _STATEMENT_S[key] = _STATEMENT_S.get(key, 0.0) + time.perf_counter() - t

    psycopg.Connection.execute = timed_execute


if __name__ == "__main__":
    main()
