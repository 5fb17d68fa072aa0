"""Where the CPU of one ingest batch goes: the router's Python stages and the Redis script.

In-process, on bench.ingest's events (5,000 a batch, 100k Zipf keys, the last hour):
  python   CPU ms per batch of each stage of POST /v1/events after the HTTP layer: JSON decode,
           validation (router.ingest.validate_events), the batch's numpy form and id digests
           (tiers.hot_batch._Batch.of), the log entry, the script's ARGV (_Batch.encode), RESP
           packing (hiredis); medians over --repeat runs of one batch
  redis    CPU ms per batch of the ingest script (INFO cpu, Redis's main thread) over --batches
           batches ingested into an emptied Redis database (REDIS_DB) through RedisHotTier, each
           with fresh ids, and INFO commandstats' split (wall time inside Redis: bench.ingest.redis_breakdown)
  profile  (--profile) cProfile of whole requests through the Flask test client, top by own time
Redis's CPU per batch bounds what one Redis can take (5,000 / ms x 1000 events/s); on a shared
machine it varies by +-10% from run to run (CPU caches and frequency): compare medians of several.

    TIERSTORE_HOME=... TIERSTORE_PORT_BASE=... python -m bench.profile_ingest [--values mixed] [--ids]
        [--batches 100] [--repeat 40] [--profile]
Last line: JSON {"python_ms_per_batch": {stage: ms}, "redis_cpu_ms_per_batch", "redis_ms_per_batch_by_command"}.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import time

import hiredis
import orjson

from bench import support
from bench.ingest import (BATCH, STREAM, TENANT, as_table, command_usec, fresh_ids, make_events, redis_breakdown,
                          redis_cpu, with_fresh_ids)

REDIS_DB, DATABASE = 111, "tierstore_bench_profile_ingest"


def cpu_ms(fn, repeat: int) -> tuple[float, object]:
    """(median CPU ms of this process, last result) of fn() over `repeat` runs."""
    times, out = [], None
    for _ in range(repeat):
        t = time.process_time()
        out = fn()
        times.append((time.process_time() - t) * 1e3)
    return statistics.median(times), out


def python_stages(batch: list[dict], repeat: int) -> dict[str, float]:
    from rollups.timeutil import now_ms
    from router.ingest import decode_events, validate_events
    from tiers import eventlog
    from tiers.hot import _prefix
    from tiers.hot_batch import _Batch, _Marks

    body = fresh_ids(orjson.dumps(batch), 1)
    now = now_ms()
    out: dict[str, float] = {}
    out["json_decode"], events = cpu_ms(lambda: decode_events(body, False), repeat)
    out["validate"], table = cpu_ms(lambda: validate_events(events, now), repeat)
    out["batch_and_digests"], hot_batch = cpu_ms(lambda: _Batch.of(table, dedup=True), repeat)
    out["log_entry"], log = cpu_ms(lambda: eventlog.encode_batch(table), repeat)
    prefixes = [_prefix(TENANT, STREAM)]
    out["script_argv"], args = cpu_ms(lambda: hot_batch.encode("ingest", TENANT, prefixes, now, -1e300, 7 * 86_400_000,
                                                              86_400_000, log, None, _Marks()), repeat)
    out["resp_pack"], _ = cpu_ms(lambda: hiredis.pack_command(("EVALSHA", "0" * 40, 3, "a", "b", "c", *args)), repeat)
    out["total"] = sum(out.values())
    return {k: round(v, 2) for k, v in out.items()}


def redis_script(settings, batches: list[list[dict]], n: int) -> dict:
    import redis

    from rollups.timeutil import now_ms
    from tiers.hot import RedisHotTier

    tier = RedisHotTier.from_settings(settings)
    client = redis.Redis.from_url(settings.redis_url)
    tables = [as_table(b) for b in batches]
    for k in range(3):  # warm-up: the stream registered, the script loaded
        tier.ingest(TENANT, with_fresh_ids(tables[k % len(tables)], (1 << 40) + k), now_ms=now_ms())
    usec0, cpu0 = command_usec(client), redis_cpu(client)
    for k in range(n):
        tier.ingest(TENANT, with_fresh_ids(tables[k % len(tables)], k), now_ms=now_ms())
    cpu = redis_cpu(client) - cpu0
    out = {"redis_cpu_ms_per_batch": round(cpu / n * 1e3, 1),
           "redis_ms_per_batch_by_command": redis_breakdown(usec0, command_usec(client), n)}
    tier.close()
    client.flushdb()
    client.close()
    return out


def profile_requests(settings, batches: list[list[dict]], n: int, top: int) -> None:
    from tierstore.app import build_app, close_app

    app = build_app(settings)
    client = app.test_client()
    bodies = [orjson.dumps(b) for b in batches]

    def post(i: int) -> None:
        r = client.post("/v1/events", data=fresh_ids(bodies[i % len(bodies)], (1 << 41) + i),
                        content_type="application/json")
        assert r.status_code == 202, r.get_data(as_text=True)[:300]

    for i in range(3):
        post(i)
    prof = cProfile.Profile()
    prof.enable()
    for i in range(3, 3 + n):
        post(i)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)
    close_app(app)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--values", choices=["1", "mixed"], default="mixed")
    parser.add_argument("--ids", action="store_true", help="a unique id on every event")
    parser.add_argument("--batches", type=int, default=100, help="batches replayed into Redis")
    parser.add_argument("--repeat", type=int, default=40, help="runs of each Python stage")
    parser.add_argument("--profile", action="store_true", help="cProfile whole requests (Flask test client)")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)

    from tierstore.settings import load_settings

    settings = support.isolated(load_settings(), REDIS_DB, DATABASE)
    batches = make_events(20, values=args.values, ids=args.ids)
    out = {"values": args.values, "ids": args.ids, "events_per_batch": BATCH,
           "python_ms_per_batch": python_stages(batches[0], args.repeat)}
    print(f"python CPU ms per batch: {out['python_ms_per_batch']}", flush=True)
    out.update(redis_script(settings, batches, args.batches))
    print(f"redis CPU ms per batch: {out['redis_cpu_ms_per_batch']} "
          f"(one Redis takes at most {BATCH / out['redis_cpu_ms_per_batch'] * 1e3:,.0f} events/s); by command: "
          f"{out['redis_ms_per_batch_by_command']}", flush=True)
    if args.profile:
        profile_requests(settings, batches, args.batches // 4 or 1, args.top)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
