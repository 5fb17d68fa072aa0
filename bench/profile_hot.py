"""Profile one hot top-100 request end to end in-process (Flask test client, cProfile) over the
dataset bench/query.py built (Redis db 60, PostgreSQL tierstore_bench_query; run bench.query first);
`--range rNN` asks bench.query's arbitrary range NN (seed 42) instead of the last --span.

    TIERSTORE_HOME=... TIERSTORE_PORT_BASE=... python -m bench.profile_hot [--by count] [--span 24h]
        [--repeat 50] [--profile] [--top 40]
Prints the median in-process ms per request (and, with --profile, the cProfile top by cumulative).
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

from bench import support
from bench.query import DATABASE, REDIS_DB
from bench.query_data import STREAM
from rollups.timeutil import MINUTE_MS, floor_to, now_ms

SPANS = {"1h": 3_600_000, "24h": 86_400_000, "7d": 7 * 86_400_000, "30d": 30 * 86_400_000}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--by", default="count")
    ap.add_argument("--span", default="24h")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--rank", default=None, metavar="KEY", help="profile the rank of KEY instead of top-100")
    ap.add_argument("--first", action="store_true", help="no warm-up: time (profile) the first asks of a new process")
    ap.add_argument("--data", default=None, help="bench.query's --data folder (default $TIERSTORE_HOME/bench-query)")
    ap.add_argument("--range", dest="rng", default=None,
                    help="rNN: bench.query's arbitrary range NN (seed 42, 10 ranges) instead of --span")
    args = ap.parse_args(argv)
    from tierstore.app import build_app, close_app
    from tierstore.settings import load_settings

    base = load_settings()
    from pathlib import Path
    data = Path(args.data) if args.data else base.home / "bench-query"
    settings = support.isolated(base, REDIS_DB, DATABASE, reset=False, cold_dir=data / "cold")
    settings = settings.model_copy(update={"results_cache_entries": 0, "results_cache_ttl": 0})
    app = build_app(settings, migrate=False)
    client = app.test_client()

    fixed = None
    if args.rng:
        import json as _json
        from bench.query import arbitrary_ranges
        start = _json.loads((data / "build.json").read_text())["start"]
        fixed = {label: (a, b) for label, a, b in arbitrary_ranges(10, start, floor_to(now_ms(), MINUTE_MS))}[args.rng]

    def ask():
        end = floor_to(now_ms(), MINUTE_MS)
        a, b = fixed or (end - SPANS[args.span], end)
        if args.rank:
            r = client.get("/v1/query/rank", query_string={"stream": STREAM, "key": args.rank, "by": args.by, "from": a, "to": b})
        else:
            r = client.get("/v1/query/topk", query_string={"stream": STREAM, "k": 100, "by": args.by, "from": a, "to": b})
        assert r.status_code == 200, r.get_data(as_text=True)[:300]
        return r

    try:
        for _ in range(0 if args.first else 3):
            ask()
        times = []
        prof = cProfile.Profile() if args.profile else None
        for _ in range(args.repeat):
            t = time.perf_counter()
            if prof:
                prof.enable()
            ask()
            if prof:
                prof.disable()
            times.append((time.perf_counter() - t) * 1000)
        print(f"{args.rng or args.span} {args.by}: median {statistics.median(times):.2f} ms, min {min(times):.2f} ms "
              f"over {args.repeat}")
        if prof:
            pstats.Stats(prof).sort_stats("cumulative").print_stats(args.top)
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    finally:
        close_app(app)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
