"""Rank of a key across all four tiers: sorted access down to its value (after) against the full
merge (before); and top-100 over archive-only ranges through the archive's value-sorted lists.

Data as bench.topk_ta builds it (Zipf(1) keys `key-<r>`, values 1..50: cold over [now-400d,
now-30d), warm to b_warm, hot the last day) plus the archive over [now-800d, now-400d) as day
partitions with weeks, months and value-sorted copies in S3 (ArchiveTier.replace_days). Own
PostgreSQL database, Redis database 27, cold folder and archive prefix.

Two routers over the same tiers without the results cache (uncached):
  before   topk_threshold=false: rank by the planner's full merge (rollups.topk.rank_of)
  after    topk_threshold=true: router/rank_ta.py (the merge beyond its budget of keys read)
and the same two with the results cache (`*_cached`: immutable pieces cached, the first call fills it).
Keys key-9, key-999, key-99999 (ranks near 10, 1k, 100k) by count over 30 d, 365 d and 800 d
(archive + cold + warm + hot); `total_keys_ms`: the distinct count alone (router.rank_ta.count_keys),
the floor of `after` while total_keys is counted over every piece. Answers checked identical.
JSON on the last line.

    TIERSTORE_HOME=... TIERSTORE_PORT_BASE=... python -m bench.rank [--keys N] [--reuse] ...
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np

from bench import support, topk_ta
from bench.topk_ta import STREAM, TENANT, events
from rollups.timeutil import DAY_MS, MINUTE_MS, TimeRange, floor_to, now_ms
from router.context import EXTENSION
from router.planner import QuerySpec
from router.rank_ta import count_keys
from tiers.catalog_pg import PgCatalog
from tierstore.app import build_app, close_app
from tierstore.settings import load_settings

REDIS_DB, DATABASE = 27, "tierstore_bench_rank"
RANGES = ("30d", "365d", "800d")
KEYS_AT = {"10": "key-9", "1k": "key-999", "100k": "key-99999"}


def isolated(settings, reset: bool = True):
    cold_dir = settings.cold_dir / "bench-rank"
    if reset and cold_dir.exists():
        import shutil
        shutil.rmtree(cold_dir)
    return support.isolated(settings, REDIS_DB, DATABASE, reset=reset, cold_dir=cold_dir,
                            results_cache_entries=0, results_cache_ttl=0)


def load(app, args, seed: int = 11) -> dict:
    """Cold, warm and hot by bench.topk_ta's own loader; `load_s` their total."""
    parts = topk_ta.load(app, args, seed)
    return {"load_s": round(sum(parts.values()), 1)}


def load_archive(app, args, seed: int = 13) -> dict:
    res = app.extensions["tierstore.resources"]
    now = now_ms()
    b_archive = floor_to(now - 400 * DAY_MS, DAY_MS)
    started = time.perf_counter()
    batch = events(np.random.default_rng(seed), args.archive, args.keys, now - 800 * DAY_MS, b_archive)
    res["archive"].replace_days(TENANT, STREAM, batch, merge=False)
    with res["pool"].connection() as conn:
        PgCatalog(res["pool"]).advance(conn, b_archive=b_archive)
    return {"archive_load_s": round(time.perf_counter() - started, 1)}


def archive_tier_topk(app, out: dict, repeat: int) -> bool:
    """Top-100 by sum over archive-only ranges at the tier: the value-sorted lists in S3
    (ArchiveTier.top_k, after) against the full merge through the engine (before); identical?"""
    from rollups.cover import cover
    from rollups.partials import merge_partials
    from rollups.topk import top_k

    tier = app.extensions["tierstore.resources"]["archive"]
    b_archive = floor_to(now_ms() - 400 * DAY_MS, DAY_MS)
    same = True
    for days in (30, 90, 300):
        pieces = cover(TimeRange(b_archive - days * DAY_MS, b_archive), tier.granularities)
        took = {"merge": [], "lists": []}
        for _ in range(repeat):
            t0 = time.perf_counter()
            want = top_k(merge_partials([tier.aggregate(TENANT, STREAM, pieces, "key")], "key"), 100, "sum")
            t1 = time.perf_counter()
            stats: dict = {}
            got = tier.top_k(TENANT, STREAM, pieces, 100, "sum", stats=stats)
            t2 = time.perf_counter()
            took["merge"].append((t1 - t0) * 1000)
            took["lists"].append((t2 - t1) * 1000)
            same &= [r.key for r in got] == [r.key for r in want]
        name = f"archive_tier_top100_sum_{days}d"
        before, after = statistics.median(took["merge"]), statistics.median(took["lists"])
        out.update({f"{name}_merge_p50_ms": round(before, 1), f"{name}_lists_p50_ms": round(after, 1),
                    f"{name}_ratio": round(before / after, 2), f"{name}_method": stats.get("method")})
        print(f"{name}: merge {before:.1f} ms, lists {after:.1f} ms ({stats})", file=sys.stderr)
    return same


def timed(client, path: str, params: dict, repeat: int) -> tuple[list[float], dict]:
    took, body = [], {}
    for _ in range(repeat):
        started = time.perf_counter()
        r = client.get(path, query_string=params)
        took.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 200, r.get_data(as_text=True)
        body = r.get_json()
    return took, body


def same_rank(a: dict, b: dict) -> bool:
    return (a["rank"], a["total_keys"]) == (b["rank"], b["total_keys"]) and (
        a["value"] == b["value"] or math.isclose(a["value"], b["value"], rel_tol=1e-9))


def same_items(a: list, b: list) -> bool:
    return [i["key"] for i in a] == [i["key"] for i in b] and all(
        math.isclose(x["value"], y["value"], rel_tol=1e-9) for x, y in zip(a, b))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--archive", type=int, default=1_500_000)
    ap.add_argument("--cold", type=int, default=2_000_000)
    ap.add_argument("--warm", type=int, default=500_000)
    ap.add_argument("--hot", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--reuse", action="store_true", help="query the data a previous run left (no load)")
    ap.add_argument("--archive-only", action="store_true", help="only the archive top-100 (tier level)")
    args = ap.parse_args(argv)
    base = isolated(load_settings(), reset=not args.reuse)
    cached = {"results_cache_entries": 4096, "results_cache_ttl": 3_600_000, "results_cache_max_bytes": 64 << 20}
    apps = {"before": build_app(base.model_copy(update={"topk_threshold": False}), migrate=True),
            "after": build_app(base.model_copy(update={"topk_threshold": True}), migrate=False),
            "before_cached": build_app(base.model_copy(update={"topk_threshold": False, **cached}), migrate=False),
            "after_cached": build_app(base.model_copy(update={"topk_threshold": True, **cached}), migrate=False)}
    try:
        out: dict = {"keys": args.keys, "events": args.archive + args.cold + args.warm + args.hot,
                     "repeat": args.repeat}
        if args.reuse:
            out["reused"] = True
        else:
            out.update(load(apps["before"], args))
            out.update(load_archive(apps["before"], args))
        end = floor_to(now_ms(), MINUTE_MS)
        identical, rows = True, []
        identical &= archive_tier_topk(apps["after"], out, args.repeat)
        for rng in (() if args.archive_only else RANGES):
            start = end - int(rng[:-1]) * DAY_MS
            for depth, key in KEYS_AT.items():
                params = {"stream": STREAM, "from": start, "to": end, "key": key, "by": "count"}
                res = {name: timed(app.test_client(), "/v1/query/rank", params,
                                   args.repeat + (1 if name.endswith("cached") else 0))
                       for name, app in apps.items()}  # the cached ones: the first call fills the cache
                identical &= all(same_rank(res["before"][1], res[n][1]) for n in res)
                for n in ("before_cached", "after_cached"):
                    out[f"rank_{depth}_{rng}_{n}_p50_ms"] = round(statistics.median(res[n][0][1:]), 1)
                before, after = statistics.median(res["before"][0]), statistics.median(res["after"][0])
                ranking = res["after"][1]["meta"].get("ranking", {})
                name = f"rank_{depth}_{rng}"
                out[f"{name}_before_p50_ms"] = round(before, 1)
                out[f"{name}_after_p50_ms"] = round(after, 1)
                out[f"{name}_ratio"] = round(before / after, 2)
                out[f"{name}_rank"] = res["after"][1]["rank"]
                out[f"{name}_method"] = ranking.get("method")
                out[f"{name}_seen"] = ranking.get("seen")
                rows.append((name, before, after, res["after"][1]["rank"], ranking.get("method"), ranking.get("seen")))
            # the distinct count alone (what `after` waits for besides the sorted access)
            planner = apps["after"].extensions[EXTENSION].planner
            took = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                plan = planner.plan(QuerySpec(TENANT, STREAM, TimeRange(start, end), "key"), allow_partial=False)
                count_keys(planner, plan)
                took.append((time.perf_counter() - t0) * 1000)
            out[f"total_keys_{rng}_ms"] = round(statistics.median(took), 1)
        # top-100 over archive-only ranges: the archive's lists (after) against the merge (before)
        b_archive = floor_to(now_ms() - 400 * DAY_MS, DAY_MS)
        for days in (90, 300):
            params = {"stream": STREAM, "from": b_archive - days * DAY_MS, "to": b_archive, "k": 100, "by": "sum"}
            res = {name: timed(app.test_client(), "/v1/query/topk", params, args.repeat)
                   for name, app in apps.items() if not name.endswith("cached")}
            identical &= same_items(res["before"][1]["items"], res["after"][1]["items"])
            before, after = statistics.median(res["before"][0]), statistics.median(res["after"][0])
            name = f"archive_top100_sum_{days}d"
            out[f"{name}_before_p50_ms"], out[f"{name}_after_p50_ms"] = round(before, 1), round(after, 1)
            out[f"{name}_ratio"] = round(before / after, 2)
            rows.append((name, before, after, None, res["after"][1]["meta"].get("ranking", {}).get("method"), None))
        out["identical"] = identical
        print(f"{'query':<28}{'before':>10}{'after':>10}{'x':>7}{'rank':>8}  method     seen", file=sys.stderr)
        for name, before, after, rank, method, seen in rows:
            print(f"{name:<28}{before:>10.1f}{after:>10.1f}{before / after:>7.1f}{str(rank):>8}  {str(method):<10}"
                  f"{str(seen):>6}", file=sys.stderr)
        for rng in (() if args.archive_only else RANGES):
            print(f"cached {rng}: " + ", ".join(f"{d} {out[f'rank_{d}_{rng}_before_cached_p50_ms']:.1f} -> "
                                                 f"{out[f'rank_{d}_{rng}_after_cached_p50_ms']:.1f}" for d in KEYS_AT)
                  + f"; total_keys alone {out[f'total_keys_{rng}_ms']:.1f}", file=sys.stderr)
        print(json.dumps(out))
    finally:
        for app in apps.values():
            close_app(app)


if __name__ == "__main__":
    main()
