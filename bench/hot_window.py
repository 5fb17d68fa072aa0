"""Sliding windows on the hot tier: top-100 by count and by sum, and the rank of a key, over the
last 1 h / 6 h / 24 h, repeated as a refreshing dashboard asks them (a minute of "now" apart, a few
late events between calls), with the materialised unions off (baseline) and on, in one run.

Data is written through RedisHotTier directly (`write`: aggregates only), then every closed hour
is folded as compaction would have. Every answer of the two modes is compared, and the final
state is checked against a numpy oracle of the raw events. Usage (services up, env exported):
    .venv/bin/python -m bench.hot_window [--events 1500000] [--keys 300000] [--calls 10]
The last line is a JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import pyarrow as pa

from rollups.cover import cover
from rollups.timeutil import G1M, HOUR_MS, MAX_MS, MIN_MS, MINUTE_MS, TimeRange, now_ms
from tiers.base import EVENT_SCHEMA
from tiers.hot import RedisHotTier

STREAM = "clicks"
WINDOWS = {"1h": HOUR_MS, "6h": 6 * HOUR_MS, "24h": 24 * HOUR_MS}


def zipf_keys(rnd: np.random.Generator, n: int, keys: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, keys + 1)
    cdf = np.cumsum(weights) / weights.sum()
    return np.minimum(np.searchsorted(cdf, rnd.random(n)), keys - 1)


def table(ids: np.ndarray, ts: np.ndarray, values: np.ndarray) -> pa.Table:
    names = np.char.add("k", np.char.zfill(ids.astype(str), 7))
    return pa.table({"stream": [STREAM] * len(ids), "key": names, "ts": ts, "value": values,
                     "id": pa.nulls(len(ids), pa.string())}, schema=EVENT_SCHEMA)


class Events:
    """The raw events, for the oracle."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, ids, ts, values) -> None:
        self.parts.append((ids, ts, values))

    def top(self, rng: TimeRange, k: int, by: str) -> list[tuple[str, float]]:
        ids, ts, values = (np.concatenate(c) for c in zip(*self.parts))
        inside = (ts >= rng.start) & (ts < rng.end)
        weights = None if by == "count" else values[inside]
        totals = np.bincount(ids[inside], weights=weights)
        present = np.flatnonzero(np.bincount(ids[inside]) > 0)
        order = np.lexsort((present, -totals[present]))[:k]  # value desc, key (= id, zero-padded) asc
        return [(f"k{i:07d}", float(totals[i])) for i in present[order]]


def ingest(hot: RedisHotTier, tenant: str, n: int, keys: int, now: int, rnd: np.random.Generator,
           events: Events) -> float:
    start = time.perf_counter()
    ts = np.sort(rnd.integers(now - 23 * HOUR_MS, now, n))
    ids = zipf_keys(rnd, n, keys)
    values = rnd.integers(1, 51, n).astype(np.float64)
    events.add(ids, ts, values)
    for i in range(0, n, 100_000):
        hot.write(tenant, table(ids[i:i + 100_000], ts[i:i + 100_000], values[i:i + 100_000]))
    hot.compact(tenant, STREAM, now_ms=now)
    return time.perf_counter() - start


def late_events(hot: RedisHotTier, tenant: str, now: int, keys: int, rnd: np.random.Generator,
                events: Events) -> None:
    """200 events in the current minute and 20 late ones spread over the last 23 hours."""
    ts = np.concatenate([rnd.integers(G1M.floor(now), now + 1, 200), rnd.integers(now - 23 * HOUR_MS, now, 20)])
    ids = zipf_keys(rnd, len(ts), keys)
    values = rnd.integers(1, 51, len(ts)).astype(np.float64)
    events.add(ids, ts, values)
    hot.write(tenant, table(ids, ts, values))


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_500_000)
    parser.add_argument("--keys", type=int, default=300_000)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    from tierstore.settings import Settings
    settings = Settings()
    on = RedisHotTier.from_settings(settings)
    off = RedisHotTier(on.settings.model_copy(update={"window_unions": False}))
    tenant = f"benchwin{int(time.time())}"
    rnd = np.random.default_rng(7)
    events = Events()
    start_now = now_ms()
    took = ingest(on, tenant, args.events, args.keys, start_now, rnd, events)
    print(f"ingested {args.events:,} events, {args.keys:,} Zipf keys over 23 h in {took:.1f} s")
    rank_key = "k0001000"
    times: dict[tuple[str, str, str], list[float]] = {}
    identical = True
    for call in range(args.calls):
        now = start_now + call * MINUTE_MS
        if call:
            late_events(on, tenant, now, args.keys, rnd, events)
            on.compact(tenant, STREAM, now_ms=now)
        for name, width in WINDOWS.items():
            pieces = cover(TimeRange(G1M.floor(now) + MINUTE_MS - width, G1M.floor(now) + MINUTE_MS), on.granularities)
            answers = {}
            for mode, tier in (("off", off), ("on", on)):
                for what, fn in (("top_count", lambda: tier.top_k(tenant, STREAM, pieces, 100, "count")),
                                 ("top_sum", lambda: tier.top_k(tenant, STREAM, pieces, 100, "sum")),
                                 ("rank", lambda: tier.rank(tenant, STREAM, pieces, rank_key, "count", around=2))):
                    answers[mode, what], ms = timed(fn)
                    times.setdefault((name, what, mode), []).append(ms)
            identical &= all(answers["off", w] == answers["on", w] for w in ("top_count", "top_sum", "rank"))
    last = TimeRange(G1M.floor(now) + MINUTE_MS - 24 * HOUR_MS, G1M.floor(now) + MINUTE_MS)
    pieces = cover(last, on.granularities)
    for by in ("count", "sum"):
        got = [(r.key, r.value) for r in on.top_k(tenant, STREAM, pieces, 100, by)]
        identical &= got == events.top(last, 100, by)
    print(f"{'window':<7}{'query':<11}{'off p50':>9}{'on p50':>9}{'on first':>10}{'on max':>9}{'ratio':>8}")
    result: dict = {"events": args.events, "keys": args.keys, "calls": args.calls, "identical": identical}
    for (name, what, mode), series in times.items():
        if mode != "on":
            continue
        base, fast = statistics.median(times[name, what, "off"]), statistics.median(series)
        print(f"{name:<7}{what:<11}{base:9.1f}{fast:9.1f}{series[0]:10.1f}{max(series):9.1f}{base / fast:8.1f}")
        result[f"{what}_{name}_off_p50_ms"] = round(base, 1)
        result[f"{what}_{name}_on_p50_ms"] = round(fast, 1)
        result[f"{what}_{name}_on_max_ms"] = round(max(series), 1)
        result[f"{what}_{name}_ratio"] = round(base / fast, 1)
    on.delete_range(tenant, None, TimeRange(MIN_MS, MAX_MS))
    on.close()
    off.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
