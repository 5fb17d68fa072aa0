"""Exact top-100 over long ranges from the cold tier, against scanning the raw Parquet.

Data (generated once, cached under <cold_dir>/_bench): 420 days from 2025-01-01, 125k events a
day (52.5M), 1M keys drawn Zipf(1), values 1..50, key ids given in order of first appearance
(as interning at ingest would), written with the cold tier's own layout code
(tiers.parquet_layout: raw + 1h/1d/1w/1mo rollups + value-sorted copies). One process.

Measured in one run, each query repeated, medians reported:
  tier      ColdTier.top_k (threshold algorithm over value-sorted segments, exact)
  duckdb    DuckDB GROUP BY over the raw Parquet of the same range
  trino     Trino GROUP BY over the same raw Parquet (Hive tables over the same files)
for 1 year (12 whole calendar months) and for arbitrary ranges (minute-aligned, random ends).
Every answer is checked identical (keys and values). JSON on the last line.

    TIERSTORE_HOME=... TIERSTORE_PORT_BASE=... python -m bench.cold [--generate-only] [--repeat N]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench import support
from rollups.timeutil import DAY_MS, MINUTE_MS, RAW, TimeRange, parse_time
from tiers import parquet_layout as PL

TENANT, STREAM = "bench", "plays"
START = parse_time("2025-01-01T00:00:00Z")
PARAMS = {"days": 420, "events_per_day": 125_000, "keys": 1_000_000, "zipf_s": 1.0, "values": [1, 50],
          "seed": 7, "format": 1}


def bench_root(cold_dir: Path) -> Path:
    return cold_dir / "_bench"


def generate(root: Path, params: dict | None = None, start: int | None = None, tenant: str = TENANT,
             stream: str = STREAM) -> None:
    """Zipf events (params: days, events_per_day, keys, zipf_s, values, seed) written as cold day
    partitions from `start` (epoch ms), their weeks and months, and the key dictionary as
    root/_keys.parquet (key_id -> key); cached: a second call with the same params does nothing."""
    params, start = params or PARAMS, START if start is None else start
    done = root / "_complete.json"
    if done.exists() and json.loads(done.read_text()) == params:
        print(f"bench data cached in {root}", file=sys.stderr)
        return
    layout = PL.Layout(root)
    rng = np.random.default_rng(params["seed"])
    n_keys, per_day = params["keys"], params["events_per_day"]
    weights = 1.0 / np.arange(1, n_keys + 1, dtype=np.float64) ** params["zipf_s"]
    cum = np.cumsum(weights)
    cum /= cum[-1]
    key_of_rank = pa.array([f"key-{r}" for r in range(n_keys)], pa.string())
    id_of_rank = np.full(n_keys, -1, np.int64)
    next_id = 0
    t0 = time.time()
    for d in range(params["days"]):
        day = start + d * DAY_MS
        ts = np.sort(rng.integers(0, DAY_MS, per_day)) + day
        ranks = np.minimum(np.searchsorted(cum, rng.random(per_day)), n_keys - 1)
        uniq, first = np.unique(ranks, return_index=True)
        new = uniq[id_of_rank[uniq] < 0]
        if len(new):
            order = np.argsort(first[id_of_rank[uniq] < 0], kind="stable")
            id_of_rank[new[order]] = np.arange(next_id, next_id + len(new))
            next_id += len(new)
        values = rng.integers(params["values"][0], params["values"][1] + 1, per_day).astype(np.float64)
        raw = pa.table({"ts": ts, "key_id": id_of_rank[ranks], "key": key_of_rank.take(pa.array(ranks)),
                        "value": values, "id": pa.nulls(per_day, pa.string())}, schema=PL.RAW_SCHEMA)
        PL.write_day(layout, tenant, stream, day, raw)
        if d % 20 == 0:
            print(f"day {d}/{params['days']} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
    end = start + params["days"] * DAY_MS
    for gran, start in sorted(PL.complete_periods(range(start, end, DAY_MS), end), key=lambda p: (p[0].name, p[1])):
        PL.write_period(layout, tenant, stream, gran, start)
    rank_of_id = np.empty(next_id, np.int64)
    seen = id_of_rank >= 0
    rank_of_id[id_of_rank[seen]] = np.nonzero(seen)[0]
    keys = pa.table({"key_id": pa.array(np.arange(next_id)), "key": key_of_rank.take(pa.array(rank_of_id))})
    import pyarrow.parquet as pq
    pq.write_table(keys, root / "_keys.parquet", compression="zstd")
    done.write_text(json.dumps(params))
    print(f"generated {params['days'] * per_day:,} events in {time.time() - t0:.0f}s", file=sys.stderr)


def _raw_top(engine_query, source, params, kd, k: int = 100) -> list[tuple[str, float]]:
    """Top-k by sum from a raw GROUP BY; exact with ties by key (reads 3k rows past the cut)."""
    sql = (f"SELECT key_id, sum(value) AS v FROM {source}ts >= ? AND ts < ? GROUP BY key_id "
           f"ORDER BY v DESC, key_id LIMIT {3 * k}")
    t = engine_query(sql, params)
    ids, vals = t["key_id"].to_pylist(), t["v"].to_pylist()
    if len(vals) == 3 * k:
        assert vals[k - 1] > vals[-1], "ties reach past the fetched rows"
    keys = kd.keys(TENANT, STREAM, ids).to_pylist()
    return sorted(zip(keys, vals), key=lambda kv: (-kv[1], kv[0]))[:k]


def run(settings, root: Path, args) -> int:
    import pyarrow.parquet as pq

    from rollups.cover import cover
    from tiers.cold import ColdTier
    from tiers.cold_keys import MemoryKeyDictionary

    kd = MemoryKeyDictionary()
    kd.load(TENANT, STREAM, pq.read_table(root / "_keys.parquet")["key"].to_pylist())
    tier = ColdTier(settings, keys=kd, root=root, engine="duckdb")
    trino = ColdTier(settings, keys=kd, root=root, engine="trino", trino_schema="tierstore_bench")
    t = time.perf_counter()
    trino.sync()
    print(f"trino partitions synced in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    end = START + PARAMS["days"] * DAY_MS
    year = TimeRange(parse_time("2025-02-01T00:00:00Z"), parse_time("2026-02-01T00:00:00Z"))
    rnd = random.Random(42)
    ranges = []
    for _ in range(args.ranges):
        length = rnd.randrange(300 * DAY_MS, 380 * DAY_MS) // MINUTE_MS * MINUTE_MS
        a = START + rnd.randrange(0, end - START - length) // MINUTE_MS * MINUTE_MS
        ranges.append(TimeRange(a, a + length))

    def tier_top(rng: TimeRange, stats=None):
        got = tier.top_k(TENANT, STREAM, cover(rng, tier.granularities), 100, "sum", stats=stats)
        return [(r.key, r.value) for r in got]

    def duck_raw(rng: TimeRange):
        scan = tier._scan(TENANT, STREAM, RAW, rng)
        src, p = tier.engine.source(scan, TENANT, STREAM)
        return _raw_top(tier.engine.query, src, [*p, rng.start, rng.end], kd)

    def trino_raw(rng: TimeRange):
        scan = trino._scan(TENANT, STREAM, RAW, rng)
        src, p = trino.engine.source(scan, TENANT, STREAM)
        return _raw_top(trino.engine.query, src, [*p, rng.start, rng.end], kd)

    results, identical = {}, True
    for label, rngs, rep_tier, rep_raw in (("year", [year], max(args.repeat, 7), 3), ("ranges", ranges, args.repeat, 1)):
        per = {"tier_ms": [], "tier_first_ms": [], "duckdb_raw_ms": [], "trino_raw_ms": [], "methods": []}
        for rng in rngs:
            stats = {}
            tier_top(rng, stats)
            per["methods"].append(stats.get("method"))
            ms, a, first = support.median_ms(lambda: tier_top(rng), rep_tier)
            per["tier_ms"].append(ms)
            per["tier_first_ms"].append(first)
            ms, b, _ = support.median_ms(lambda: duck_raw(rng), rep_raw)
            per["duckdb_raw_ms"].append(ms)
            ms, c, _ = support.median_ms(lambda: trino_raw(rng), rep_raw)
            per["trino_raw_ms"].append(ms)
            same = a == b == c
            identical &= same
            print(f"{label} {rng}: tier {per['tier_ms'][-1]:.1f} ms ({stats.get('method')}), duckdb raw "
                  f"{per['duckdb_raw_ms'][-1]:.0f} ms, trino raw {per['trino_raw_ms'][-1]:.0f} ms, identical={same}",
                  file=sys.stderr, flush=True)
        med = {k: round(statistics.median(v), 1) for k, v in per.items() if k != "methods"}
        med["ratio_vs_duckdb_raw"] = round(med["duckdb_raw_ms"] / med["tier_ms"], 1)
        med["ratio_vs_trino_raw"] = round(med["trino_raw_ms"] / med["tier_ms"], 1)
        med["methods"] = per["methods"]
        results[label] = med
    tier.close()
    trino.close()
    out = {"events": PARAMS["days"] * PARAMS["events_per_day"], "keys": PARAMS["keys"], "days": PARAMS["days"],
           "k": 100, "by": "sum", "year": results["year"], "arbitrary_ranges": results["ranges"],
           "identical": identical}
    print(json.dumps(out))
    return 0 if identical else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ranges", type=int, default=5)
    args = ap.parse_args(argv)
    from tierstore.settings import load_settings

    settings = load_settings()
    root = bench_root(settings.cold_dir)
    generate(root)
    if args.generate_only:
        return 0
    return run(settings, root, args)


if __name__ == "__main__":
    sys.exit(main())
