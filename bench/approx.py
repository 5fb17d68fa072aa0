"""Approximate top-K (mode=approx, router/approx.py) against exact top-K over a long cold range
with many keys.

Data (generated once, cached under <cold_dir>/_bench_approx): 730 days from 2024-01-01, 12k events
a day (8.8M), 300k keys drawn Zipf(1), values 1..50, written with the cold tier's own layout code
(raw + 1h/1d/1w/1mo rollups + value-sorted copies + the per-partition sketch files of
tiers/sketch_files.py, as export_cold writes them), as bench/cold.py does.

Measured in one run over the same cover (rollups.cover over the cold tier's granularities),
medians of repeated runs, for 1 year and 2 years, k=100:
  exact_tput   ColdTier.top_k (threshold algorithm, exact; what a cold-only range runs)
  exact_merge  every piece's per-key partials merged, then ranked (what a range across tiers runs)
  approx       ApproxTopK.run: the cold partitions' sketch files (day, week, month; then the
               in-process memo) merged, plus the exact 1h/1m/raw edges folded in; sketch lg_k 12
               (map of 4096) unless --lg-k; `approx_first_ms` is the first run, which reads the
               sketch files (`files`: buckets read from them) and builds the edge hours from the
               rollups
Recall (approx's top 100 keys among the exact top 100) and whether every exact value lies within
its item's bounds are reported. JSON on the last line.

    TIERSTORE_HOME=... TIERSTORE_PORT_BASE=... python -m bench.approx [--repeat N]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

from bench import support
from rollups.timeutil import DAY_MS, TimeRange, parse_time

TENANT, STREAM = "bench", "approx"
START = parse_time("2024-01-01T00:00:00Z")
PARAMS = {"days": 730, "events_per_day": 12_000, "keys": 300_000, "zipf_s": 1.0, "values": [1, 50],
          "seed": 11, "format": 2}  # format 2: with sketch files
K, LG_K = 100, 12


def generate(root: Path) -> None:
    """The bench data (bench.cold's generator with this bench's parameters), cached under root."""
    from bench.cold import generate as generate_cold

    generate_cold(root, PARAMS, START, TENANT, STREAM)


def run(settings, root: Path, repeat: int, lg_k: int = LG_K) -> dict:
    import concurrent.futures as cf

    from rollups.cover import cover
    from rollups.partials import merge_partials
    from rollups.topk import top_k
    from router.approx import ApproxTopK
    from router.cache import ResultsCache
    from router.planner import Plan, PlannedPiece, Planner, QuerySpec
    from tiers.catalog import CatalogSnapshot
    from tiers.cold import ColdTier
    from tiers.cold_keys import MemoryKeyDictionary
    from tiers.db import apply_migrations, make_pool
    from tiers.sketch_store import SketchStore

    kd = MemoryKeyDictionary()
    kd.load(TENANT, STREAM, pq.read_table(root / "_keys.parquet")["key"].to_pylist())
    tier = ColdTier(settings, keys=kd, root=root, engine="duckdb")
    apply_migrations(settings.postgres_url, settings.warm_mode)
    pg = make_pool(settings.postgres_url, max_size=4, name="bench-approx")
    store = SketchStore(pg)
    with pg.connection() as conn:  # a fresh run builds its sketches again
        conn.execute("DELETE FROM approx_sketches WHERE tenant = %s AND stream = %s", (TENANT, STREAM))
    pool = cf.ThreadPoolExecutor(8)
    snapshot = CatalogSnapshot(1, START + PARAMS["days"] * DAY_MS, START + PARAMS["days"] * DAY_MS,
                               START + PARAMS["days"] * DAY_MS)
    planner = Planner({"cold": tier}, catalog=None, pool=pool, cache=ResultsCache(0), timeout_ms=600_000)
    engine = ApproxTopK(planner, store, lg_k)
    end = START + PARAMS["days"] * DAY_MS
    ranges = {"1y": TimeRange(end - 365 * DAY_MS + 7 * 3_600_000, end - 13 * 60_000),
              "2y": TimeRange(START + 3 * 3_600_000 + 60_000, end - 60_000)}
    out: dict = {"events": PARAMS["days"] * PARAMS["events_per_day"], "keys": PARAMS["keys"], "k": K, "by": "count",
                 "lg_k": lg_k}
    for label, rng in ranges.items():
        pieces = cover(rng, tier.granularities)
        plan = Plan(QuerySpec(TENANT, STREAM, rng, "key"), snapshot, [PlannedPiece("cold", p) for p in pieces])

        def exact_tput():
            return [(r.key, r.value) for r in tier.top_k(TENANT, STREAM, pieces, K, "count")]

        def exact_merge():
            tables = list(pool.map(lambda p: tier.aggregate(TENANT, STREAM, [p], "key"), pieces))
            return [(r.key, r.value) for r in top_k(merge_partials(tables, "key"), K, "count")]

        def approx():
            return engine.run(plan, K, "count", "no_false_negatives", allow_partial=False)

        tput_ms, exact, _ = support.median_ms(exact_tput, repeat)
        merge_ms, exact2, _ = support.median_ms(exact_merge, max(2, repeat // 2))
        approx_ms, run_, first_ms = support.median_ms(approx, repeat + 1)
        truth = dict(exact_merge_all(tier, pieces, pool))
        items = run_.answer.items
        within = all(i.lower_bound <= truth.get(i.key, 0) <= i.upper_bound for i in items)
        recall = len({k for k, _ in exact} & {i.key for i in items[:K]}) / K
        res = {"pieces": len(pieces), "buckets": run_.stats["buckets"], "files": run_.stats.get("files"),
               "exact_ranges": len(run_.exact), "exact_tput_ms": round(tput_ms, 1),
               "exact_merge_ms": round(merge_ms, 1), "approx_ms": round(approx_ms, 1),
               "approx_first_ms": round(first_ms, 1), "ratio_vs_tput": round(tput_ms / approx_ms, 1),
               "ratio_vs_merge": round(merge_ms / approx_ms, 1), "recall_at_k": recall, "bounds_hold": within,
               "max_error": run_.answer.max_error, "items": len(items), "exact_agree": exact == exact2}
        print(f"{label}: {res}", file=sys.stderr, flush=True)
        out[label] = res
    tier.close()
    pg.close()
    pool.shutdown()
    return out


def exact_merge_all(tier, pieces, pool) -> list[tuple[str, float]]:
    from rollups.partials import merge_partials
    from rollups.topk import order

    tables = list(pool.map(lambda p: tier.aggregate(TENANT, STREAM, [p], "key"), pieces))
    t = order(merge_partials(tables, "key"), "count")
    return list(zip(t["key"].to_pylist(), t["value"].to_pylist()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--lg-k", type=int, default=LG_K, help="sketch map size, log2 (default 12, as the setting)")
    args = ap.parse_args(argv)
    from tierstore.settings import load_settings

    settings = load_settings()
    root = settings.cold_dir / "_bench_approx"
    generate(root)
    if args.generate_only:
        return 0
    out = run(settings, root, args.repeat, args.lg_k)
    print(json.dumps(out))
    return 0 if all(out[r]["bounds_hold"] for r in ("1y", "2y")) else 1


if __name__ == "__main__":
    sys.exit(main())
