"""Warm tier benchmark: flush throughput and lag, and 30-day queries from rollups vs raw.

    python -m bench.warm [--mode auto|postgres|timescale] [--events 3000000] [--keys 20000]
                         [--live-seconds 15] [--rate 100000]

Uses the instance's PostgreSQL and Redis ($TIERSTORE_HOME / TIERSTORE_PORT_BASE) with a scratch
database `tierstore_bench_warm` (dropped and recreated) and the instance's event log.
1. backlog: `--events` events spread over 30 days (Zipf keys), logged in batches of 5,000 as ingest
   does, then flushed (COPY) and refreshed — events/s of each;
2. live: a producer logs `--rate` events/s for `--live-seconds` while the flush job runs every
   second and the refresh job every 10 s (threads, as the scheduler runs them); lag = age of the
   oldest unflushed log entry, sampled every 0.25 s;
3. a 30-day top-100 (by sum) and a 30-day hourly series (sum), each from the rollups (WarmTier,
   as the router reads them) and from a GROUP BY over warm's raw table, same run; answers must
   match. The last line is a JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rollups.cover import cover  # noqa: E402
from rollups.partials import merge_partials  # noqa: E402
from rollups.timeutil import DAY_MS, G1H, G1M, HOUR_MS, MINUTE_MS, TimeRange, floor_to, now_ms  # noqa: E402
from rollups.topk import top_k  # noqa: E402
from scheduler import steps  # noqa: E402
from tiers.base import EVENT_SCHEMA  # noqa: E402
from tiers.db import apply_migrations, make_pool  # noqa: E402
from tiers.eventlog import STREAM_KEY, encode_batch  # noqa: E402
from tiers.warm import WarmTier  # noqa: E402
from tierstore.settings import load_settings  # noqa: E402

TENANT, STREAM, BATCH = "bench", "plays", 5_000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="auto")
    ap.add_argument("--events", type=int, default=3_000_000)
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--live-seconds", type=float, default=15.0)
    ap.add_argument("--rate", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    settings = load_settings()
    import redis

    r = redis.Redis.from_url(settings.redis_url)
    url = scratch_database(settings.postgres_url, "tierstore_bench_warm")
    mode = apply_migrations(url, args.mode)
    warm = WarmTier(url, mode=mode)
    r.delete(STREAM_KEY)
    out: dict = {"mode": mode, "events": args.events, "keys": args.keys}
    rng = np.random.default_rng(42)
    names = np.array([f"song_{i}" for i in range(args.keys)], dtype=object)
    end = floor_to(now_ms(), HOUR_MS) - HOUR_MS
    window = TimeRange(end - 30 * DAY_MS, end)

    # 1. backlog over 30 days
    batches = make_batches(rng, names, args.events, window)
    t = time.perf_counter()
    pipe = r.pipeline(transaction=False)
    for b in batches:
        pipe.xadd(STREAM_KEY, {"tenant": TENANT, "data": b, "dups": "[]"})
    pipe.execute()
    out["log_append_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    stats = steps.flush(r, warm, batch_entries=40)
    flush_s = time.perf_counter() - t
    assert stats["events"] == args.events, stats
    out["flush_events_per_s"] = round(args.events / flush_s)
    t = time.perf_counter()
    rstats = warm.refresh()
    refresh_s = time.perf_counter() - t
    out["refresh_s"] = round(refresh_s, 2)
    out["refresh_events_per_s"] = round(args.events / refresh_s)
    out["refresh_buckets_1m"] = rstats["buckets_1m"]
    with warm.pool.connection() as conn:
        conn.execute("ANALYZE")
    print(f"backlog: flush {out['flush_events_per_s']:,} ev/s, refresh {refresh_s:.1f} s", file=sys.stderr)

    # 2. live: producer at --rate while the flush job runs every second
    out.update(live(r, warm, rng, names, args.rate, args.live_seconds))
    print(f"live: {out['live_flush_events_per_s']:,} ev/s flushed, max lag {out['live_max_lag_s']} s",
          file=sys.stderr)

    # 3. 30-day queries, rollups vs raw GROUP BY (range with ragged edges, as queries come)
    q = TimeRange(window.start + 7 * MINUTE_MS, window.end - 13 * MINUTE_MS)
    out.update(queries(warm, q, args.repeat))
    warm.close()
    print(json.dumps(out))


def scratch_database(base_url: str, name: str) -> str:
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return base_url.rsplit("/", 1)[0] + "/" + name


def make_batches(rng, names, n: int, window: TimeRange, ts_fixed: int | None = None) -> list[bytes]:
    """Log entries of BATCH events each: Zipf-distributed keys, values 1..50."""
    keys = (rng.zipf(1.1, n) - 1) % len(names)
    ts = rng.integers(window.start, window.end, n) if ts_fixed is None else np.full(n, ts_fixed)
    values = rng.integers(1, 51, n).astype(np.float64)
    out = []
    for i in range(0, n, BATCH):
        j = min(n, i + BATCH)
        out.append(encode_batch(pa.table({
            "stream": pa.array([STREAM] * (j - i)), "key": pa.array(names[keys[i:j]].tolist()),
            "ts": pa.array(ts[i:j], pa.int64()), "value": pa.array(values[i:j]),
            "id": pa.nulls(j - i, pa.string())}, schema=EVENT_SCHEMA)))
    return out


def live(r, warm, rng, names, rate: int, seconds: float, refresh_every: float = 10.0) -> dict:
    """A producer logs `rate` events/s; the flush job runs every second and the refresh job every
    `refresh_every` seconds, each in its own thread, as the scheduler runs them."""
    per_tick = max(1, rate // BATCH)  # batches per second
    ticks = int(seconds)
    batches = make_batches(rng, names, per_tick * BATCH * ticks, TimeRange(now_ms() - MINUTE_MS, now_ms()))
    stop, lags, flushed, refreshes, last_flush = threading.Event(), [], [0], [], [0.0]

    def every(period: float, work) -> None:
        while True:
            started = time.perf_counter()
            done = stop.is_set()
            work()
            if done:
                return
            stop.wait(max(0.0, period - (time.perf_counter() - started)))

    def flush_once():
        n = steps.flush(r, warm, batch_entries=40)["events"]
        flushed[0] += n
        if n:
            last_flush[0] = time.perf_counter()

    def refresh_once():
        t = time.perf_counter()
        warm.refresh()
        refreshes.append(time.perf_counter() - t)

    def sample():
        lags.append(steps.flush_lag_seconds(r))

    threads = [threading.Thread(target=every, args=(1.0, flush_once)),
               threading.Thread(target=every, args=(refresh_every, refresh_once)),
               threading.Thread(target=every, args=(0.25, sample))]
    for th in threads:
        th.start()
    t0 = time.perf_counter()
    for tick in range(ticks):
        time.sleep(max(0.0, t0 + tick - time.perf_counter()))
        pipe = r.pipeline(transaction=False)
        for b in batches[tick * per_tick:(tick + 1) * per_tick]:
            pipe.xadd(STREAM_KEY, {"tenant": TENANT, "data": b, "dups": "[]"})
        pipe.execute()
    time.sleep(max(0.0, t0 + ticks - time.perf_counter()))
    produced_s = time.perf_counter() - t0
    stop.set()
    for th in threads:
        th.join()
    flush_once()  # whatever the last scheduled flush left
    drained_s = last_flush[0] - t0
    n = per_tick * BATCH * ticks
    return {"live_rate_offered": round(n / produced_s), "live_seconds": round(produced_s, 1),
            "live_flush_events_per_s": round(flushed[0] / drained_s),
            "live_drain_after_s": round(max(0.0, drained_s - produced_s), 2),
            "live_max_lag_s": round(max(lags), 2) if lags else 0.0,
            "live_p50_lag_s": round(statistics.median(lags), 2) if lags else 0.0,
            "live_refresh_max_s": round(max(refreshes), 2) if refreshes else 0.0}


def timed(fn, repeat: int):
    fn()  # warm the cache
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), result


def queries(warm: WarmTier, q: TimeRange, repeat: int) -> dict:
    sid = warm.keys.stream_id(TENANT, STREAM)
    pool = make_pool(warm.pool.conninfo, max_size=2)

    def topk_rollups():  # ranked in place, as the router asks warm when it holds the whole range
        return [(x.key, x.value) for x in warm.top_k(TENANT, STREAM, cover(q, warm.granularities), 100, "sum")]

    def topk_merge():  # per-key partials shipped and merged, as the router does across tiers
        t = merge_partials([warm.aggregate(TENANT, STREAM, cover(q, warm.granularities), "key")], "key")
        return [(x.key, x.value) for x in top_k(t, 100, "sum")]

    def topk_raw():
        with pool.connection() as conn:
            rows = conn.execute(
                "SELECT k.key, t.s FROM (SELECT key_id, sum(value) AS s FROM events WHERE stream_id = %s "
                "AND ts >= timestamptz 'epoch' + %s * interval '1 ms' AND ts < timestamptz 'epoch' + %s * interval '1 ms' GROUP BY key_id) t "
                "JOIN keys k ON k.id = t.key_id ORDER BY t.s DESC, k.key COLLATE \"C\" LIMIT 100", (sid, q.start, q.end)).fetchall()
        return [(k, s) for k, s in rows]

    def series_rollups():
        pieces = cover(q, [G1M, G1H])  # a 1h step reads whole hours, minutes at the edges
        t = merge_partials([warm.aggregate(TENANT, STREAM, pieces, "bucket")], "bucket")
        by_hour: dict[int, float] = {}
        for b, s in zip(t["bucket"].to_pylist(), t["sum"].to_pylist()):
            by_hour[b - b % HOUR_MS] = by_hour.get(b - b % HOUR_MS, 0.0) + s
        return sorted(by_hour.items())

    def series_raw():
        with pool.connection() as conn:
            rows = conn.execute(
                "SELECT (extract(epoch FROM date_bin('1 hour', ts, timestamptz 'epoch')) * 1000)::bigint, sum(value) "
                "FROM events WHERE stream_id = %s AND ts >= timestamptz 'epoch' + %s * interval '1 ms' AND ts < timestamptz 'epoch' + %s * interval '1 ms' "
                "GROUP BY 1 ORDER BY 1", (sid, q.start, q.end)).fetchall()
        return [(b, s) for b, s in rows]

    top_ms, top = timed(topk_rollups, repeat)
    merge_ms, merged = timed(topk_merge, repeat)
    assert merged == top, "in-place top-100 differs from the merged one"
    top_raw_ms, top_raw = timed(topk_raw, repeat)
    ser_ms, ser = timed(series_rollups, repeat)
    ser_raw_ms, ser_raw = timed(series_raw, repeat)
    pool.close()
    assert [k for k, _ in top] == [k for k, _ in top_raw], "top-100 differs"
    assert all(abs(a - b) < 1e-6 for (_, a), (_, b) in zip(top, top_raw))
    assert [b for b, _ in ser] == [b for b, _ in ser_raw] and all(
        abs(a - b) < 1e-6 for (_, a), (_, b) in zip(ser, ser_raw)), "series differs"
    print(f"30-day top-100: rollups {top_ms:.1f} ms vs raw {top_raw_ms:.1f} ms; "
          f"hourly series: rollups {ser_ms:.1f} ms vs raw {ser_raw_ms:.1f} ms", file=sys.stderr)
    return {"topk_30d_rollups_ms": round(top_ms, 2), "topk_30d_raw_ms": round(top_raw_ms, 2),
            "topk_30d_ratio": round(top_raw_ms / top_ms, 1), "topk_30d_merge_ms": round(merge_ms, 2),
            "series_30d_1h_rollups_ms": round(ser_ms, 2), "series_30d_1h_raw_ms": round(ser_raw_ms, 2),
            "series_30d_1h_ratio": round(ser_raw_ms / ser_ms, 1)}


if __name__ == "__main__":
    main()
