"""export_cold throughput (issue 11 goal: >= 500k events/s): N events in warm over D days older
than warm_age, handed to cold by one export_cold run; then every day's answer checked against the
events.

Setup (not timed): a fresh PostgreSQL database and Redis database 5 of the local services, a cold
folder of its own, the events COPYed into warm (WarmTier.insert; export_cold reads raw events, so
the rollups are not refreshed). Timed: the export (seal, flush, read, write, verify, rename,
catalog move), without the drop of warm's rows (the grace period keeps them). Keys Zipf over
--keys, times uniform over the days, values mixed. JSON on the last line: events, days,
events_per_s, exact.

    TIERSTORE_HOME=... TIERSTORE_PORT_BASE=... .venv/bin/python -m bench.export_cold --events 2000000 --days 60
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq

from rollups.timeutil import DAY_MS, now_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--keys", type=int, default=100_000)
    a = ap.parse_args()

    from bench.history import make_events
    from bench.support import isolated
    from scheduler.export_cold import export_cold
    from tierstore.settings import load_settings
    from tierstore.wiring import open_resources

    settings = load_settings()
    cold_dir = Path(tempfile.mkdtemp(prefix="bench_export_"))
    inst = isolated(settings, 5, "tierstore_bench_export", cold_dir=cold_dir)
    now = now_ms()
    hi = now - now % DAY_MS - settings.warm_age - DAY_MS
    lo = hi - a.days * DAY_MS
    out: dict = {"events": a.events, "days": a.days}
    try:
        with open_resources(inst) as r:
            events = make_events(a.events, a.keys, "plays", lo, hi, seed=3, id_base=0)
            t = time.perf_counter()
            for off in range(0, events.num_rows, 1_000_000):
                with r.warm.pool.connection() as conn:
                    r.warm.insert(conn, "bench", events.slice(off, 1_000_000))
            out["load_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            stats = export_cold(r.redis, r.warm, r.cold, r.catalog, now, warm_age_ms=settings.warm_age,
                                grace_ms=3_600_000)
            took = time.perf_counter() - t
            out["export_s"] = round(took, 2)
            out["events_per_s"] = round(stats["events"] / took)
            out["exported"] = stats["events"]
            con = duckdb.connect()
            con.register("ev", events)
            want = {int(d): (int(c), float(s)) for d, c, s in con.execute(
                f"SELECT (ts // {DAY_MS}) * {DAY_MS}, count(*), sum(value) FROM ev GROUP BY 1").fetchall()}
            got = {}
            for day in r.cold.layout.days("bench", "plays"):
                raw = pq.read_table(r.cold.layout.raw_file("bench", "plays", day), columns=["value"])
                got[day] = (raw.num_rows, float(np.sum(raw["value"].to_numpy())))
            out["exact"] = set(got) == set(want) and all(
                got[d][0] == want[d][0] and math.isclose(got[d][1], want[d][1], rel_tol=1e-9) for d in want)
    finally:
        shutil.rmtree(cold_dir, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
