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
import math
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from rollups.timeutil import DAY_MS, G1MO, G1W, MINUTE_MS, TimeRange, format_time, parse_time
from tiers import parquet_layout as PL

TENANT, STREAM = "bench", "plays"
START = parse_time("2025-01-01T00:00:00Z")
PARAMS = {"days": 420, "events_per_day": 125_000, "keys": 1_000_000, "zipf_s": 1.0, "values": [1, 50],
          "seed": 7, "format": 1}


def bench_root(cold_dir: Path) -> Path:
    return cold_dir / "_bench"


def generate(root: Path) -> None:
    done = root / "_complete.json"
    if done.exists() and json.loads(done.read_text()) == PARAMS:
        print(f"bench data cached in {root}", file=sys.stderr)
        return
    layout = PL.Layout(root)
    rng = np.random.default_rng(PARAMS["seed"])
    n_keys, per_day = PARAMS["keys"], PARAMS["events_per_day"]
    weights = 1.0 / np.arange(1, n_keys + 1, dtype=np.float64) ** PARAMS["zipf_s"]
    cum = np.cumsum(weights)
    cum /= cum[-1]
    key_of_rank = pa.array([f"key-{r}" for r in range(n_keys)], pa.string())
    id_of_rank = np.full(n_keys, -1, np.int64)
    next_id = 0
    t0 = time.time()
    for d in range(PARAMS["days"]):
        day = START + d * DAY_MS
        ts = np.sort(rng.integers(0, DAY_MS, per_day)) + day
        ranks = np.minimum(np.searchsorted(cum, rng.random(per_day)), n_keys - 1)
        uniq, first = np.unique(ranks, return_index=True)
        new = uniq[id_of_rank[uniq] < 0]
        if len(new):
            order = np.argsort(first[id_of_rank[uniq] < 0], kind="stable")
            id_of_rank[new[order]] = np.arange(next_id, next_id + len(new))
            next_id += len(new)
        values = rng.integers(PARAMS["values"][0], PARAMS["values"][1] + 1, per_day).astype(np.float64)
        raw = pa.table({"ts": ts, "key_id": id_of_rank[ranks], "key": key_of_rank.take(pa.array(ranks)),
                        "value": values, "id": pa.nulls(per_day, pa.string())}, schema=PL.RAW_SCHEMA)
        PL.write_day(layout, TENANT, STREAM, day, raw)
        if d % 20 == 0:
            print(f"day {d}/{PARAMS['days']} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
    end = START + PARAMS["days"] * DAY_MS
    for gran, start in sorted(PL.complete_periods(range(START, end, DAY_MS), end), key=lambda p: (p[0].name, p[1])):
        PL.write_period(layout, TENANT, STREAM, gran, start)
    rank_of_id = np.empty(next_id, np.int64)
    seen = id_of_rank >= 0
    rank_of_id[id_of_rank[seen]] = np.nonzero(seen)[0]
    keys = pa.table({"key_id": pa.array(np.arange(next_id)), "key": key_of_rank.take(pa.array(rank_of_id))})
    import pyarrow.parquet as pq
    pq.write_table(keys, root / "_keys.parquet", compression="zstd")
    done.write_text(json.dumps(PARAMS))
    print(f"generated {PARAMS['days'] * per_day:,} events in {time.time() - t0:.0f}s", file=sys.stderr)


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
