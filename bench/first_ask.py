"""First asks (issue 10, "Any range, fast"): every query the first time its range is asked, in a
FRESH `tierstore serve` process, with nothing in the results caches.

Reuses the dataset bench/query.py built (same --events/--keys/--hot-events/--data; build it first
with `python -m bench.query ... --parts series`). Before each query (or, with --per-process
once, once) the server process is restarted and the shared caches are cleared in Redis: the
results cache (router/cache.py, `tierstore:cache:*`, which also holds the whole answers of
router/ranking_cache.py and the rank path's piece columns) and the hot tier's materialised window
unions (`...:win:*`, tiers/hot_window.lua). So each timed call is what a client sees as the first
ask of that range after loading its data (the process's own startup is not timed: /readyz first).
With --after-jobs, compact_hot (and the rank prefill each job ends with, scheduler/rank_prefill.py)
runs once after the caches are cleared, then a fresh process asks: the first ask on an instance
whose scheduler has run since the data came, before anyone asked anything.

Asked (wall ms of the HTTP request, each answer checked against DuckDB over the raw Parquet as
bench/query.py checks it): top-100 by count and by sum for 1 h, 24 h, 7 d, 30 d, 1 y (ending now)
and --ranges arbitrary minute-aligned ranges; rank (by count) of the keys at ranks 10, 1k, 100k
for 24 h, 7 d, 30 d, 1 y. Prints one line per query and a JSON summary on the last line.

    TIERSTORE_HOME=... TIERSTORE_PORT_BASE=... python -m bench.first_ask --events N --keys N
        --hot-events N --data DIR [--ranges 4] [--per-process query|once] [--only topk,rank]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import redis

from bench import support
from bench.query import DATABASE, FIXED, REDIS_DB, Raw, arbitrary_ranges, same_ranking
from bench.query_data import STREAM, Params, load_manifest, progress
from rollups.timeutil import DAY_MS, MINUTE_MS, floor_to, now_ms

TOPK_RANGES = ("1h", "24h", "7d", "30d", "1y")
RANK_RANGES = ("24h", "7d", "30d", "1y")
RANKS = (10, 1_000, 100_000)
SPANS = dict(FIXED) | {"7d": 7 * DAY_MS}


def clear_caches(redis_url: str) -> int:
    """Delete the shared results cache and the hot window unions; the number of keys deleted."""
    client = redis.Redis.from_url(redis_url)
    n = 0
    try:
        for pattern in ("tierstore:cache:*", "tierstore:hot:*:win:*"):
            batch = []
            for key in client.scan_iter(match=pattern, count=10_000):
                batch.append(key)
                if len(batch) >= 1000:
                    n += client.unlink(*batch)
                    batch = []
            if batch:
                n += client.unlink(*batch)
    finally:
        client.close()
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=7_000_000)
    ap.add_argument("--keys", type=int, default=500_000)
    ap.add_argument("--hot-events", type=int, default=4_000_000)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--ranges", type=int, default=4)
    ap.add_argument("--per-process", choices=("query", "once"), default="query",
                    help="a fresh server (and cleared caches) before every query, or once")
    ap.add_argument("--only", default="topk,rank")
    ap.add_argument("--after-jobs", action="store_true",
                    help="after clearing the caches, run compact_hot once (with the rank prefill every job "
                         "ends with, as a scheduler would have) before the fresh server asks")
    ap.add_argument("--limit-ms", type=float, default=100.0)
    args = ap.parse_args(argv)
    from tierstore.settings import load_settings

    base = load_settings()
    data_dir = args.data.resolve()
    params = Params(args.events, args.keys, min(args.hot_events, args.events))
    manifest = load_manifest(data_dir, params)
    if manifest is None:
        raise SystemExit(f"no dataset with these parameters in {data_dir}: build it with bench.query first")
    settings = support.isolated(base, REDIS_DB, DATABASE, reset=False, cold_dir=data_dir / "cold")
    env = support.settings_env(settings)
    port = base.port_base + 16
    raw = Raw(data_dir / "raw")
    end = floor_to(now_ms(), MINUTE_MS)
    queries = []  # (kind, label, a, b, params, check)
    only = set(args.only.split(","))
    if "topk" in only:
        spans = [(label, end - SPANS[label], end) for label in TOPK_RANGES]
        spans += arbitrary_ranges(args.ranges, manifest["start"], end, seed=11)
        for label, a, b in spans:
            for by in ("count", "sum"):
                queries.append(("topk", f"{label}/{by}", a, b, {"k": 100, "by": by}, by))
    if "rank" in only:
        for label in RANK_RANGES:
            a = end - SPANS[label]
            _, at = raw.at_ranks(a, end, "count", RANKS)
            for r in RANKS:
                if r in at:
                    queries.append(("rank", f"{label}/#{r}", a, end, {"key": at[r][0], "by": "count"}, at[r]))
    rows, failures = [], []
    served = None
    try:
        for i, (kind, label, a, b, qp, check) in enumerate(queries):
            if served is None or args.per_process == "query":
                if served is not None:
                    served.__exit__(None, None, None)
                clear_caches(settings.redis_url)
                served = support.Served(env, port).__enter__()
                if args.after_jobs:  # what a running scheduler leaves: window unions built, closed pieces read
                    served.run_job("compact_hot")
                    served.__exit__(None, None, None)  # the asking process is a fresh one all the same
                    served = support.Served(env, port).__enter__()
            path = "/v1/query/topk" if kind == "topk" else "/v1/query/rank"
            try:
                ms, body = served.get(path, stream=STREAM, **qp, **{"from": a, "to": b})
            except RuntimeError as exc:
                failures.append(f"{kind} {label}: {exc}"[:300])
                progress(f"  {kind} {label:<14} FAILED {str(exc)[:200]}")
                continue
            if kind == "topk":
                _, truth = raw.topk(a, b, check)
                ok = same_ranking([(x["key"], x["value"]) for x in body["items"]], truth)
            else:
                ok = body["rank"] == int(label.split("#")[1]) and math.isclose(body["value"], check[1], rel_tol=1e-12) \
                    and body["total_keys"] == check[2]
            if not ok:
                failures.append(f"{kind} {label}: differs from the raw answer")
            ranking = body["meta"].get("ranking") or {}
            tiers = sorted({s["tier"] for s in body["meta"].get("segments", [])})
            rows.append({"kind": kind, "query": label, "ms": round(ms, 1), "identical": ok,
                         "method": ranking.get("method"), "tiers": tiers})
            progress(f"  {kind} {label:<14} {ms:8.1f} ms  {'OVER' if ms > args.limit_ms else 'ok  '}  "
                     f"{','.join(tiers):<22} {ranking.get('method')}  identical={ok}")
    finally:
        if served is not None:
            served.__exit__(None, None, None)
    over = [r for r in rows if r["ms"] > args.limit_ms]
    out = {"events": params.events, "keys": params.keys, "hot_events": params.hot_events,
           "per_process": args.per_process, "after_jobs": args.after_jobs, "queries": len(rows), "over_limit": len(over),
           "max_ms": max((r["ms"] for r in rows), default=None),
           "by_kind": {k: max((r["ms"] for r in rows if r["kind"] == k), default=None) for k in ("topk", "rank")},
           "identical": not failures, "failures": failures[:10], "rows": rows}
    print(json.dumps(out))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
