"""A year of daily series in a time zone against the same series in UTC.

Data: EVENTS events over the last 400 days, KEYS Zipf(1) keys, values 1..50, ingested through the
hot tier's log and moved down by the jobs (flush, refresh, expire_hot, export_cold as of now), so
the year lies in cold (Parquet, DuckDB), its last 30 days in warm and the last day in hot. Own
PostgreSQL database and Redis database on the instance's servers; results cache off (every
piece is read).

Measured through the router (Flask test client), each query REPEAT times after a warm-up, medians:
  utc        step=1d, no tz: UTC days, whole day rollups (the baseline)
  <zone>     step=1d&tz=<zone>: local days; Berlin/New York days are hours (23 h / 25 h around DST),
             Kolkata (+05:30) and Kathmandu (+05:45) days also need minutes (warm, hot) or raw
             (cold) at their edges; covered per bucket, read BATCH_PIECES pieces a call
  unbatched  the same local days read one piece a call (BATCH_PIECES = 1), what batching saves
and weekly / monthly series (1w, 1mo) in UTC and in Europe/Berlin. Every series of one range must
count the same events in total (checked). Ratios are against utc, in the same run. JSON last.

    TIERSTORE_HOME=... TIERSTORE_PORT_BASE=... python -m bench.calendar [--events N] [--repeat N]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


from bench import support
from rollups.timeutil import DAY_MS, MINUTE_MS, format_time, now_ms
from router import piece_batches
from tierstore.app import build_app, close_app
from tierstore.settings import load_settings

TENANT, STREAM = "default", "plays"
REDIS_DB, DATABASE = 53, "tierstore_bench_calendar"
DAYS = 400


def isolated(settings):
    return support.isolated(settings, REDIS_DB, DATABASE, cold_dir=settings.cold_dir / "_bench_calendar",
                            results_cache_entries=0, results_cache_ttl=0)


def run_job(client, name: str, as_of: str) -> None:
    r = client.post(f"/v1/jobs/{name}/run", json={"as_of": as_of})
    assert r.status_code == 202, r.get_data(as_text=True)
    run_id = r.get_json()["run_id"]
    while True:
        run = client.get(f"/v1/jobs/runs/{run_id}").get_json()
        if run["status"] not in ("queued", "running"):
            assert run["status"] == "done", run
            return
        time.sleep(0.2)


def load(app, n_events: int, n_keys: int, seed: int = 11) -> dict:
    """Ingest n_events over the last DAYS days into the log, then move them down the tiers."""
    hot = app.extensions["tierstore.resources"]["hot"]
    now = now_ms()
    started = time.perf_counter()
    support.ingest_zipf(hot, TENANT, STREAM, n_events, n_keys, now - DAYS * DAY_MS, DAYS * DAY_MS - 5 * MINUTE_MS,
                        seed=seed, now=now)
    client = app.test_client()
    for job in ("flush", "refresh", "expire_hot", "export_cold"):
        run_job(client, job, format_time(now))
    return {"load_s": round(time.perf_counter() - started, 1)}


def measure(client, params: dict, repeat: int) -> tuple[float, dict]:
    """(median ms over `repeat` runs after one warm-up run, the answer)."""
    client.get("/v1/query/series", query_string={"stream": STREAM, **params})  # page cache, compiled statements
    took, body = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        r = client.get("/v1/query/series", query_string={"stream": STREAM, **params})
        took.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 200, r.get_data(as_text=True)
        body = r.get_json()
    return statistics.median(took), body


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--keys", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    app = build_app(isolated(load_settings()))
    try:
        out: dict = {"events": args.events, "keys": args.keys, "days": DAYS, **load(app, args.events, args.keys)}
        client = app.test_client()
        end = now_ms() // DAY_MS * DAY_MS - 2 * DAY_MS  # a range every series reads whole: totals compare
        year = {"from": end - 365 * DAY_MS, "to": end, "agg": "count"}
        cases = {"utc_1d": {"step": "1d"}, "berlin_1d": {"step": "1d", "tz": "Europe/Berlin"},
                 "new_york_1d": {"step": "1d", "tz": "America/New_York"},
                 "kolkata_1d": {"step": "1d", "tz": "Asia/Kolkata"},
                 "kathmandu_1d": {"step": "1d", "tz": "Asia/Kathmandu"},
                 "utc_1w": {"step": "1w"}, "berlin_1w": {"step": "1w", "tz": "Europe/Berlin"},
                 "utc_1mo": {"step": "1mo"}, "berlin_1mo": {"step": "1mo", "tz": "Europe/Berlin"}}
        totals, rows = {}, []
        for name, params in cases.items():
            ms, body = measure(client, {**year, **params}, args.repeat)
            totals[name] = sum(p["value"] or 0 for p in body["points"])
            out[f"{name}_p50_ms"] = round(ms, 1)
            out[f"{name}_pieces"] = len(body["meta"]["segments"])
            rows.append((name, ms, len(body["points"]), len(body["meta"]["segments"])))
        batch = piece_batches.BATCH_PIECES
        piece_batches.BATCH_PIECES = 1
        try:
            for zone in ("kolkata", "berlin"):
                ms, _ = measure(client, {**year, **cases[f"{zone}_1d"]}, max(1, args.repeat // 2))
                out[f"{zone}_1d_unbatched_p50_ms"] = round(ms, 1)
                out[f"{zone}_1d_batching_speedup"] = round(ms / out[f"{zone}_1d_p50_ms"], 2)
        finally:
            piece_batches.BATCH_PIECES = batch
        for name in cases:
            base = "utc_1mo" if name.endswith("1mo") else "utc_1w" if name.endswith("1w") else "utc_1d"
            out[f"{name}_ratio_vs_utc"] = round(out[f"{name}_p50_ms"] / out[f"{base}_p50_ms"], 2)
        out["identical_totals"] = len(set(totals.values())) == 1
        print(f"{'series':<16}{'p50 ms':>10}{'points':>8}{'pieces':>8}{'x utc':>8}", file=sys.stderr)
        for name, ms, points, pieces in rows:
            print(f"{name:<16}{ms:>10.1f}{points:>8}{pieces:>8}{out[f'{name}_ratio_vs_utc']:>8.2f}", file=sys.stderr)
        print(json.dumps(out))
    finally:
        close_app(app)


if __name__ == "__main__":
    main()
