"""Top-100 across hot + warm + cold: the threshold algorithm (after) against main's path (before).

Data (built directly by the tier layout code, as the jobs would leave it): KEYS Zipf(1) keys,
values 1..50; cold holds COLD events over [now-400d, b_cold = now-30d) as Parquet day partitions
with weeks, months and value-sorted copies (ColdTier.replace_days), warm WARM events over
[b_cold, b_warm) (COPY + refresh), hot HOT events over the last 24 h (ingest, then compacted
as the compact_hot job leaves it). Own PostgreSQL
database, Redis database 59 and cold folder.

Two routers over the same tiers, both without the results cache (uncached reads):
  before   topk_threshold=false: one tier ranks in place, otherwise every piece is merged
  after    topk_threshold=true: TA over every tier's sorted and random access (router/ranking.py)
With --signed F (a fraction F of the values negative) a fourth, `declined`: the threshold path
with TA patched to decline, i.e. what a range holding a negative value got before TA took
negative values (the id merge, router/rank_pieces.fast_top_k; first ask and p50 reported).
And a third, `cached`: the threshold path with the results cache on (shared Redis only, no
in-process LRU): its first call per query is a miss (meta.ranking.cache_ms: the versions read and
the lookup), the rest answer whole from the cache (router/ranking_cache.py).
Last, a moving phase (moving()): the cached app while the hot tier takes MOVING_EVENTS events
before every ask, as a refreshing dashboard sees it (whole answers miss, closed pieces hit).
Each asks top-100 by count and by sum for now-7d, now-30d, now-365d REPEAT times (Flask test
client: the router's work, no socket) over the same fixed [end - range, end); p50 per query,
answers checked identical (keys, values within 1e-9 relative). JSON on the last line.

    TIERSTORE_HOME=... TIERSTORE_PORT_BASE=... python -m bench.topk_ta [--keys N] [--cold N] ...
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from unittest.mock import patch

import numpy as np
import pyarrow as pa

from bench import support
from rollups.timeutil import DAY_MS, MINUTE_MS, floor_to, now_ms
from tiers.base import EVENT_SCHEMA
from tiers.catalog_pg import PgCatalog
from tierstore.app import build_app, close_app
from tierstore.settings import load_settings

TENANT, STREAM = "default", "plays"
REDIS_DB, DATABASE = 59, "tierstore_bench_topk_ta"
RANGES = ("7d", "30d", "365d")
MOVING_EVENTS = 20  # events into hot before each of the moving phase's asks


def isolated(settings, reset: bool = True):
    cold_dir = settings.cold_dir / "bench-topk-ta"
    if reset and cold_dir.exists():
        import shutil
        shutil.rmtree(cold_dir)
    return support.isolated(settings, REDIS_DB, DATABASE, reset=reset, cold_dir=cold_dir,
                            results_cache_entries=0, results_cache_ttl=0)


def events(rng, n: int, n_keys: int, lo: int, hi: int, signed: float = 0.0) -> pa.Table:
    """n events of Zipf(1) keys, values 1..50, a fraction `signed` of them negated (-50..-1)."""
    weights = 1.0 / np.arange(1, n_keys + 1, dtype=np.float64)
    cum = np.cumsum(weights) / weights.sum()
    ranks = np.minimum(np.searchsorted(cum, rng.random(n)), n_keys - 1)
    return pa.table({"stream": pa.array([STREAM] * n), "key": pa.array([f"key-{r}" for r in ranks]),
                     "ts": pa.array(np.sort(rng.integers(lo, hi, n))),
                     "value": pa.array(rng.integers(1, 51, n).astype(np.float64)
                                       * np.where(rng.random(n) < signed, -1.0, 1.0)),
                     "id": pa.nulls(n, pa.string())}, schema=EVENT_SCHEMA)


def load(app, args, seed: int = 11, signed: float = 0.0) -> dict:
    res = app.extensions["tierstore.resources"]
    hot, warm, cold = res["hot"], res["warm"], res["cold"]
    rng = np.random.default_rng(seed)
    now = now_ms()
    catalog = PgCatalog(res["pool"])
    b_warm = catalog.snapshot().b_warm
    b_cold = floor_to(now - 30 * DAY_MS, DAY_MS)
    out = {}
    started = time.perf_counter()
    cold.replace_days(TENANT, STREAM, events(rng, args.cold, args.keys, now - 400 * DAY_MS, b_cold, signed), merge=False)
    out["cold_load_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    for lo in range(0, args.warm, 500_000):
        batch = events(rng, min(500_000, args.warm - lo), args.keys, b_cold, b_warm, signed)
        with warm.pool.connection() as conn:
            warm.insert(conn, TENANT, batch)
    warm.refresh()
    out["warm_load_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    for lo in range(0, args.hot, 50_000):
        hot.ingest(TENANT, events(rng, min(50_000, args.hot - lo), args.keys, b_warm, now - MINUTE_MS, signed), now_ms=now_ms())
    # as the scheduler's compact_hot leaves it: closed minutes folded into hours, hours into days
    # (a bulk load leaves every hour as 60 minute zsets, which steady ingest never does)
    hot.compact(TENANT, STREAM, now_ms=now_ms())
    out["hot_load_s"] = round(time.perf_counter() - started, 1)
    with res["pool"].connection() as conn:
        catalog.advance(conn, b_cold=b_cold)
    return out


def ask(client, rng: str, by: str, repeat: int, end: int) -> tuple[list[float], list, dict, float | None]:
    """top-100 of [end - rng, end): fixed ends, so every run asks the very same range; the last
    item: the first call's meta.ranking.cache_ms (the results cache's cost on a miss)."""
    took, answers, meta, miss_cache_ms = [], [], {}, None
    start = end - int(rng[:-1]) * DAY_MS
    for _ in range(repeat):
        started = time.perf_counter()
        r = client.get("/v1/query/topk", query_string={"stream": STREAM, "from": start, "to": end,
                                                       "k": 100, "by": by})
        took.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 200, r.get_data(as_text=True)
        body = r.get_json()
        answers.append([(i["key"], i["value"]) for i in body["items"]])
        meta = body["meta"]
        if miss_cache_ms is None:
            miss_cache_ms = meta.get("ranking", {}).get("cache_ms")
    return took, answers, meta, miss_cache_ms


def same(a: list, b: list) -> bool:
    ok = [k for k, _ in a] == [k for k, _ in b] and all(math.isclose(x, y, rel_tol=1e-9) for (_, x), (_, y) in zip(a, b))
    if not ok:
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x[0] != y[0] or not math.isclose(x[1], y[1], rel_tol=1e-9)),
                  min(len(a), len(b)))
        print(f"differ at rank {at + 1}: {a[max(0, at - 1):at + 2]} vs {b[max(0, at - 1):at + 2]} "
              f"(lengths {len(a)}, {len(b)})", file=sys.stderr)
    return ok


def moving(apps: dict, args, out: dict) -> bool:
    """A dashboard's view: the results cache on (the `cached` app) while the hot tier moves, so
    whole answers miss and the closed pieces come from the cache. Before each ask MOVING_EVENTS
    events land in the hot tier at now; the range ends at now. Records top100_{by}_{range}_moving
    p50 (the threshold path) and, with --signed for sums, _moving_declined p50 (TA declining: the id
    merge) over the same data; every answer checked against `before`'s full merge (untimed).
    Returns whether all were identical."""
    hot = apps["cached"].extensions["tierstore.resources"]["hot"]
    rng, identical = np.random.default_rng(23), True
    for span in RANGES:
        for by in ("count", "sum"):
            took: dict[str, list[float]] = {"moving": [], "moving_declined": []}
            for _ in range(args.repeat + 1):  # the first ask of each range is left out of the p50
                variants = [("moving", None)]
                if args.signed and by == "sum":
                    variants.append(("moving_declined", patch("router.ranking.threshold_top_k", return_value=None)))
                for name, ctx in variants:  # new events before each: no variant reads another's cached answer
                    now = now_ms()
                    hot.ingest(TENANT, events(rng, MOVING_EVENTS, args.keys, now - 30_000, now - 1_000, args.signed),
                               now_ms=now)
                    end = now_ms()
                    if ctx is None:
                        t, answers, _, _ = ask(apps["cached"].test_client(), span, by, 1, end)
                    else:
                        with ctx:
                            t, answers, _, _ = ask(apps["cached"].test_client(), span, by, 1, end)
                    took[name].append(t[0])
                    identical &= same(answers[0], ask(apps["before"].test_client(), span, by, 1, end)[1][0])
            for name, ms in took.items():
                if ms:
                    out[f"top100_{by}_{span}_{name}_p50_ms"] = round(statistics.median(ms[1:]), 1)
                    print(f"top100_{by}_{span} {name}: p50 {statistics.median(ms[1:]):.1f} ms "
                          f"(first {ms[0]:.1f})", file=sys.stderr)
    return identical


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--cold", type=int, default=3_000_000)
    ap.add_argument("--warm", type=int, default=1_500_000)
    ap.add_argument("--hot", type=int, default=500_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--reuse", action="store_true", help="query the data a previous run left (no load)")
    ap.add_argument("--signed", type=float, default=0.0,
                    help="fraction of negative values; adds `declined`: the threshold path with TA declining "
                         "(its answer before TA took negative values: the id merge, router/rank_pieces.fast_top_k)")
    args = ap.parse_args(argv)
    base = isolated(load_settings(), reset=not args.reuse)
    apps = {"before": build_app(base.model_copy(update={"topk_threshold": False}), migrate=True),
            "after": build_app(base.model_copy(update={"topk_threshold": True}), migrate=False),
            "cached": build_app(base.model_copy(update={"topk_threshold": True, "results_cache_entries": 0,
                                                        "results_cache_ttl": 3_600_000}), migrate=False)}
    try:
        out: dict = {"keys": args.keys, "events": args.cold + args.warm + args.hot, "cold": args.cold,
                     "warm": args.warm, "hot": args.hot, "repeat": args.repeat,
                     **({"reused": True} if args.reuse else load(apps["before"], args, signed=args.signed))}
        identical, rows = True, []
        end = floor_to(now_ms(), MINUTE_MS)
        for rng in RANGES:
            for by in ("count", "sum"):
                res = {name: ask(app.test_client(), rng, by, args.repeat, end) for name, app in apps.items()}
                if args.signed and by == "sum":
                    with patch("router.ranking.threshold_top_k", return_value=None):
                        declined = ask(apps["after"].test_client(), rng, by, args.repeat, end)
                    identical &= all(same(a, res["before"][1][0]) for a in declined[1])
                    out[f"top100_sum_{rng}_declined_first_ms"] = round(declined[0][0], 1)
                    out[f"top100_sum_{rng}_declined_p50_ms"] = round(statistics.median(declined[0]), 1)
                    out[f"top100_sum_{rng}_declined_ratio"] = round(statistics.median(declined[0])
                                                                    / statistics.median(res["after"][0]), 2)
                    out[f"top100_sum_{rng}_after_first_ms"] = round(res["after"][0][0], 1)
                before, after = statistics.median(res["before"][0]), statistics.median(res["after"][0])
                truth = res["before"][1][0]
                identical &= all(same(a, truth) for name in res for a in res[name][1])
                name = f"top100_{by}_{rng}"
                ranking = res["after"][2].get("ranking", {})
                out[f"{name}_before_p50_ms"] = round(before, 1)
                out[f"{name}_after_p50_ms"] = round(after, 1)
                out[f"{name}_ratio"] = round(before / after, 2)
                out[f"{name}_method"] = ranking.get("method")
                out[f"{name}_touched"] = ranking.get("touched")
                hit_ms = statistics.median(res["cached"][0][1:] or res["cached"][0])
                out[f"{name}_cached_p50_ms"] = round(hit_ms, 2)
                out[f"{name}_cached_ratio"] = round(after / hit_ms, 1)
                out[f"{name}_miss_ms"] = round(res["cached"][0][0], 1)
                out[f"{name}_miss_cache_ms"] = res["cached"][3]
                tiers = sorted({s["tier"] for s in res["after"][2]["segments"]})
                rows.append((name, before, after, before / after, ranking.get("method"), ranking.get("touched"), tiers))
        identical &= moving(apps, args, out)
        out["identical"] = identical
        print(f"{'query':<22}{'before':>10}{'after':>10}{'x':>7}{'cached':>8}{'miss+':>7}  method     touched  tiers",
              file=sys.stderr)
        for name, before, after, x, method, touched, tiers in rows:
            print(f"{name:<22}{before:>10.1f}{after:>10.1f}{x:>7.1f}{out[name + '_cached_p50_ms']:>8.2f}"
                  f"{out[name + '_miss_cache_ms'] or 0:>7.2f}  {str(method):<10}{str(touched):>8}  {','.join(tiers)}",
                  file=sys.stderr)
        hits = [out[f"top100_{by}_{r}_cached_p50_ms"] for r in RANGES for by in ("count", "sum")]
        misses = [out[f"top100_{by}_{r}_miss_cache_ms"] or 0.0 for r in RANGES for by in ("count", "sum")]
        out["cached_p50_ms"] = round(statistics.median(hits), 2)
        out["miss_overhead_p50_ms"] = round(statistics.median(misses), 2)
        print(json.dumps(out))
    finally:
        for app in apps.values():
            close_app(app)


if __name__ == "__main__":
    main()
