"""A dashboard refreshing "last 7 d": the results cache off, on, and on a fresh replica.

Data: EVENTS events over the last 7 days, KEYS Zipf(1) keys, values 1..50, ingested into the hot
tier (the event log) and moved to warm by the flush and refresh steps, so "last 7 d" reads warm
for its first ~6 days and hot for the last ~24 h (both as the jobs leave them). Own PostgreSQL
database and Redis database on the instance's servers.

Three routers over the same tiers (Flask test client: the router's work, no HTTP socket):
  off      results_cache_entries=0, results_cache_ttl=0 (no cache)
  on       defaults: in-process LRU in front of the shared Redis cache
  replica  results_cache_entries=0: only the shared Redis cache (what another replica sees)
Each refreshes top-100 by count, top-100 by sum and an hourly series of "now-7d .. now" REPEAT
times (the open edge, the last clock_skew, is read every time); the first "on" call fills the
cache and is left out of its median. Every cached answer is checked identical to the uncached
one. Ratios are against "off" measured in the same run. JSON on the last line.

    TIERSTORE_HOME=... TIERSTORE_PORT_BASE=... python -m bench.query_cache [--events N] [--repeat N]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


from bench import support
from rollups.timeutil import DAY_MS, now_ms
from scheduler import steps
from tierstore.app import build_app, close_app
from tierstore.settings import load_settings

TENANT, STREAM = "default", "plays"
REDIS_DB, DATABASE = 40, "tierstore_bench_query_cache"
MARGIN = 15 * 60_000  # events start this long after now-7d: the run's "last 7 d" holds them all


def isolated(settings):
    return support.isolated(settings, REDIS_DB, DATABASE)


def load(app, n_events: int, n_keys: int, seed: int = 7) -> dict:
    """Ingest n_events over the last 7 days through the hot tier, then flush and refresh."""
    resources = app.extensions["tierstore.resources"]
    hot, warm = resources["hot"], resources["warm"]
    now = now_ms()
    started = time.perf_counter()
    support.ingest_zipf(hot, TENANT, STREAM, n_events, n_keys, now - 7 * DAY_MS + MARGIN, 7 * DAY_MS - MARGIN - 60_000,
                        seed=seed, now=now)
    ingest_s = time.perf_counter() - started
    steps.flush(resources["redis"], warm)
    steps.refresh(warm)
    return {"ingest_s": round(ingest_s, 1), "load_s": round(time.perf_counter() - started, 1)}


QUERIES = {
    "topk_count": ("/v1/query/topk", {"k": 100, "by": "count"}),
    "topk_sum": ("/v1/query/topk", {"k": 100, "by": "sum"}),
    "series_1h": ("/v1/query/series", {"step": "1h", "agg": "sum"}),
}


def answer(body: dict):
    return body.get("items", body.get("points"))


def refresh(client, name: str, repeat: int) -> tuple[list[float], list, list[bool]]:
    path, params = QUERIES[name]
    took, answers, cached = [], [], []
    for _ in range(repeat):
        started = time.perf_counter()
        r = client.get(path, query_string={"stream": STREAM, "from": "now-7d", "to": "now", **params})
        took.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 200, r.get_data(as_text=True)
        body = r.get_json()
        answers.append(answer(body))
        segs = body["meta"]["segments"]
        cached.append(sum(s["cached"] for s in segs) / len(segs))
    return took, answers, cached


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--keys", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args(argv)
    base = isolated(load_settings())
    configs = {"off": {"results_cache_entries": 0, "results_cache_ttl": 0}, "on": {},
               "replica": {"results_cache_entries": 0}}
    apps = {name: build_app(base.model_copy(update=upd), migrate=name == "off") for name, upd in configs.items()}
    try:
        out: dict = {"events": args.events, "keys": args.keys, "repeat": args.repeat,
                     **load(apps["off"], args.events, args.keys)}
        identical = True
        rows = []
        for name in QUERIES:
            res = {cfg: refresh(apps[cfg].test_client(), name, args.repeat) for cfg in ("off", "on", "replica")}
            off = statistics.median(res["off"][0])
            on = statistics.median(res["on"][0][1:])
            replica = statistics.median(res["replica"][0][1:])
            truth = res["off"][1][0]
            identical &= all(a == truth for cfg in res for a in res[cfg][1])
            out[f"{name}_off_p50_ms"] = round(off, 2)
            out[f"{name}_on_p50_ms"] = round(on, 2)
            out[f"{name}_replica_p50_ms"] = round(replica, 2)
            out[f"{name}_on_first_ms"] = round(res["on"][0][0], 2)
            out[f"{name}_ratio_on"] = round(off / on, 2)
            out[f"{name}_ratio_replica"] = round(off / replica, 2)
            out[f"{name}_cached_fraction"] = round(statistics.median(res["on"][2][1:]), 3)
            rows.append((name, off, res["on"][0][0], on, replica, off / on, off / replica))
        out["identical"] = identical
        print(f"{'query':<12}{'off p50':>10}{'on first':>10}{'on p50':>10}{'replica':>10}{'x on':>8}{'x repl':>8}",
              file=sys.stderr)
        for name, off, first, on, replica, x_on, x_rep in rows:
            print(f"{name:<12}{off:>10.1f}{first:>10.1f}{on:>10.1f}{replica:>10.1f}{x_on:>8.1f}{x_rep:>8.1f}",
                  file=sys.stderr)
        print(json.dumps(out))
    finally:
        for app in apps.values():
            close_app(app)


if __name__ == "__main__":
    main()
