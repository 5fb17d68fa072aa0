"""The dataset of bench/query.py: Zipf events over two years in all four tiers, as the jobs leave it.

Layout (T0 = the build's clock, floored to the minute; b_warm0 = the catalog's first b_warm =
T0 - hot_age; b_cold = the day of T0 - warm_age):
  [T0 - 730 d, b_cold)   written day by day with ColdTier.write_day(periods=False) and one
                         rebuild_periods at the end: export_cold's own writer (raw + 1h/1d rollups,
                         value-sorted lists, weeks and months), verified against the day's totals;
                         then b_cold is moved there (catalog.advance), as export_cold does.
  [b_cold, b_warm0)      COPY into warm (WarmTier.insert), rollups by the refresh job.
  [b_warm0, T0 - 1 min)  `hot_events` through RedisHotTier.ingest (log + hot aggregates).
Then the real jobs run through the HTTP API with as_of = now: flush (the log into warm), refresh
(warm rollups and sketches), expire_hot, compact_hot (closed hot minutes folded into hours, as steady
ingest leaves them), export_cold, archive (cold days older than cold_age to S3:
partitions, manifests, registry, b_archive).
Every event is also written once as raw Parquet (ts, key, value; one file per month, row groups
sorted by ts) for the DuckDB baseline. Keys `key-<r>`, r drawn Zipf(1) over `keys`; values 1..50.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rollups.timeutil import DAY_MS, MINUTE_MS, floor_to, format_time, now_ms
from tiers import parquet_layout as PL
from tiers.base import EVENT_SCHEMA

TENANT, STREAM = "default", "plays"
DAYS = 730
RAW_SCHEMA = pa.schema([("ts", pa.int64()), ("key", pa.string()), ("value", pa.float64())])
JOBS = ("flush", "refresh", "expire_hot", "compact_hot", "export_cold", "archive")


@dataclass
class Params:
    events: int
    keys: int
    hot_events: int
    seed: int = 7
    format: int = 1


class Zipf:
    """Draws (ts sorted, key strings, values) with keys `key-<rank>`, rank ~ Zipf(1) over n_keys."""

    def __init__(self, n_keys: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        w = 1.0 / np.arange(1, n_keys + 1, dtype=np.float64)
        self.cum = np.cumsum(w)
        self.cum /= self.cum[-1]
        self.n_keys = n_keys
        self.names = pa.array([f"key-{r}" for r in range(n_keys)], pa.string())

    def draw(self, n: int, lo: int, hi: int) -> pa.Table:
        """n events with ts uniform in [lo, hi) (sorted), EVENT_SCHEMA."""
        ts = np.sort(self.rng.integers(lo, hi, n))
        ranks = np.minimum(np.searchsorted(self.cum, self.rng.random(n)), self.n_keys - 1)
        values = self.rng.integers(1, 51, n).astype(np.float64)
        return pa.table({"stream": pa.array(np.full(n, STREAM, dtype=object), pa.string()),
                         "key": self.names.take(pa.array(ranks)), "ts": pa.array(ts), "value": pa.array(values),
                         "id": pa.nulls(n, pa.string())}, schema=EVENT_SCHEMA)


class RawWriter:
    """The raw events as Parquet for the baseline: one file per calendar month (UTC)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.writer, self.month = None, None

    def write(self, events: pa.Table, name: str) -> None:
        if name != self.month:
            self.close()
            self.writer = pq.ParquetWriter(self.root / f"{name}.parquet", RAW_SCHEMA, compression="zstd")
            self.month = name
        self.writer.write_table(events.select(["ts", "key", "value"]).cast(RAW_SCHEMA), row_group_size=1 << 20)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer, self.month = None, None


def _month(ms: int) -> str:
    return format_time(ms)[:7]


def build(res, settings, params: Params, data_dir: Path, jobs, log=print) -> dict:
    """Load every tier through `res` (tierstore.wiring.Resources of the bench's settings) and write
    the raw Parquet under data_dir/raw; `jobs(name)` runs a job through the HTTP API with as_of now
    (called after the direct loads). Returns the build's timings and boundaries."""
    hot, warm, cold, catalog = res["hot"], res["warm"], res["cold"], res["catalog"]
    raw_dir = data_dir / "raw"
    shutil.rmtree(raw_dir, ignore_errors=True)
    raw = RawWriter(raw_dir)
    snap = catalog.snapshot()
    t0 = floor_to(now_ms(), MINUTE_MS)
    b_warm0 = snap.b_warm
    start = floor_to(t0 - DAYS * DAY_MS, DAY_MS)
    b_cold = floor_to(t0 - settings.warm_age, DAY_MS)
    hot_n = min(params.hot_events, params.events)
    hist_n = params.events - hot_n
    zipf = Zipf(params.keys, params.seed)
    days = list(range(start, b_warm0, DAY_MS))
    lengths = np.array([min(d + DAY_MS, b_warm0) - d for d in days], np.float64)
    per_day = zipf.rng.multinomial(hist_n, lengths / lengths.sum())
    out: dict = {"t0": t0, "start": start, "b_cold": b_cold, "b_warm0": b_warm0}
    timings: dict = {}

    began = time.perf_counter()
    cold_days, warm_n = [], 0
    for i, (day, n) in enumerate(zip(days, per_day)):
        events = zipf.draw(int(n), day, min(day + DAY_MS, b_warm0))
        raw.write(events, _month(day))
        if day < b_cold:
            total = float(np.sum(events["value"].to_numpy()))
            cold.write_day(TENANT, STREAM, day, events, periods=False,
                           expect=PL.Totals(events.num_rows, events.num_rows, total, None, None))
            cold_days.append(day)
        else:
            with warm.pool.connection() as conn:
                warm.insert(conn, TENANT, events)
            warm_n += events.num_rows
        if i % 50 == 0:
            log(f"  day {i}/{len(days)} ({time.perf_counter() - began:.0f} s)")
    timings["cold_days_s"] = time.perf_counter() - began
    t = time.perf_counter()
    cold.rebuild_periods(TENANT, STREAM, cold_days)
    cold.sync()
    with warm.pool.connection() as conn:
        catalog.advance(conn, b_cold=b_cold)
    timings["cold_periods_s"] = time.perf_counter() - t

    t = time.perf_counter()
    hot_hi = t0 - MINUTE_MS
    done = 0
    while done < hot_n:  # hour by hour, so the raw files and the hot log see ts in order
        n = min(100_000, hot_n - done)
        lo = b_warm0 + (hot_hi - b_warm0) * done // hot_n
        hi = b_warm0 + (hot_hi - b_warm0) * (done + n) // hot_n
        events = zipf.draw(n, lo, max(hi, lo + 1))
        raw.write(events, _month(lo))
        for off in range(0, n, 50_000):
            hot.ingest(TENANT, events.slice(off, 50_000), now_ms=now_ms())
        done += n
    raw.close()
    timings["hot_ingest_s"] = time.perf_counter() - t

    for name in JOBS:
        t = time.perf_counter()
        stats = jobs(name)
        timings[f"job_{name}_s"] = time.perf_counter() - t
        log(f"  job {name}: {time.perf_counter() - t:.1f} s {json.dumps(stats)[:200]}")
    timings["total_s"] = time.perf_counter() - began
    out.update({"timings": {k: round(v, 1) for k, v in timings.items()}, "cold_days": len(cold_days),
                "warm_events": warm_n, "hot_events": hot_n, "events": params.events,
                "catalog": {k: getattr(catalog.snapshot(), k) for k in ("version", "b_archive", "b_cold", "b_warm")}})
    return out


def load_manifest(data_dir: Path, params: Params) -> dict | None:
    """The build record of data_dir if it was built with these params, else None."""
    f = data_dir / "build.json"
    if not f.exists():
        return None
    rec = json.loads(f.read_text())
    return rec if rec.get("params") == asdict(params) else None


def save_manifest(data_dir: Path, params: Params, rec: dict) -> None:
    (data_dir / "build.json").write_text(json.dumps({**rec, "params": asdict(params)}, indent=1))


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
