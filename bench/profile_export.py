"""Stage profile of one export_cold run (issue 11): where the time of bench/export_cold.py goes.

Loads N events into warm once (PostgreSQL database tierstore_prof_export_<N>, Redis database
--redis-db; kept between runs), then per run: resets b_cold and the cold folder, runs export_cold
with timers wrapped around its stages, and prints the seconds per stage, wall and CPU of the
calling thread, plus the run's process CPU and the local PostgreSQL's CPU (every backend's:
other clients of the same server count too) (stages run in worker threads are summed over threads, so they may add up to
more than the run's wall time; nested stages count in their callers too). JSON last line.

    TIERSTORE_HOME=... TIERSTORE_PORT_BASE=... .venv/bin/python -m bench.profile_export --events 1000000 --days 30
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from rollups.timeutil import DAY_MS, now_ms

TIMES: dict[str, float] = defaultdict(float)
CPU: dict[str, float] = defaultdict(float)  # the same, in CPU seconds of the calling thread
SPANS: list[tuple[str, float, float]] = []  # (label, start, end) of every timed call (perf_counter)
_LOCK = threading.Lock()


def timed(owner, name: str, label: str | None = None) -> None:
    """Wrap owner.name so its wall time adds to TIMES[label]."""
    fn = getattr(owner, name)

    def wrapper(*a, **k):
        t, c = time.perf_counter(), time.thread_time()
        try:
            return fn(*a, **k)
        finally:
            with _LOCK:
                SPANS.append((label or name, t, time.perf_counter()))
                TIMES[label or name] += time.perf_counter() - t
                CPU[label or name] += time.thread_time() - c
    setattr(owner, name, wrapper)


def instrument() -> None:
    import os

    import pyarrow.csv as pacsv

    from scheduler import export_cold as E
    from tiers import parquet_layout as PL
    from tiers import parquet_totals as PT
    from tiers import sketch_files as SF
    from tiers import warm_export as W

    for mod, names in ((E, ["read_range", "day_totals", "_by_stream_day", "_remove_stale", "_days_to_export",
                            "rebuild_periods", "_advance", "stream_names", "_export_days", "_write_day", "_sync_files"]),
                       (W, [n for n in ("read_copy", "parse_copy", "read_range", "day_totals", "verify_totals")
                            if hasattr(W, n)]),
                       (PL, ["rollup_raw", "topk_copy", "write_temp", "verify_temp", "write_day", "write_period"]),
                       (SF, ["day_table"]), (PT, ["day_totals"]), (pacsv, ["read_csv"])):
        for n in names:
            if hasattr(mod, n):
                timed(mod, n, f"{mod.__name__.split('.')[-1]}.{n}")
    timed(os, "sync", "os.sync")
    for extra in ("prepare_days", "write_prepared"):
        if hasattr(E, extra):
            timed(E, extra, f"export_cold.{extra}")


def timeline(t0: float) -> dict[str, list[float]]:
    """{stage: [first start, last end, busy]} in seconds from the run's start; busy = the union of
    its calls' spans (how long at least one was running), so a stage on the critical path shows
    busy close to its last end minus first start."""
    out: dict[str, list[float]] = {}
    for label in sorted({s[0] for s in SPANS}):
        spans = sorted((a - t0, b - t0) for name, a, b in SPANS if name == label)
        busy, end = 0.0, float("-inf")
        for a, b in spans:
            if b > end:
                busy += b - max(a, end)
                end = b
        out[label] = [round(spans[0][0], 2), round(max(b for _, b in spans), 2), round(busy, 2)]
    return dict(sorted(out.items(), key=lambda kv: kv[1][0]))


def postgres_cpu_s() -> float | None:
    """CPU seconds used so far by the local PostgreSQL ($TIERSTORE_HOME/pg/postmaster.pid): the
    postmaster, its live backends and its reaped children (Linux /proc), or None."""
    import os

    try:
        pid = int(Path(os.environ["TIERSTORE_HOME"], "pg", "postmaster.pid").read_text().split()[0])
    except (KeyError, OSError, ValueError, IndexError):
        return None
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid:
            ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
        elif int(fields[1]) == pid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--redis-db", type=int, default=77)
    ap.add_argument("--runs", type=int, default=1)
    a = ap.parse_args()

    import psycopg

    from bench.history import make_events
    from bench.support import isolated
    from scheduler.export_cold import export_cold
    from tierstore.settings import load_settings
    from tierstore.wiring import open_resources

    settings = load_settings()
    db = f"tierstore_prof_export_{a.events}_{a.days}"
    with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone() is not None
    now = now_ms()
    hi = now - now % DAY_MS - settings.warm_age - DAY_MS
    lo = hi - a.days * DAY_MS
    cold_dir = Path(tempfile.mkdtemp(prefix="prof_export_"))
    inst = isolated(settings, a.redis_db, db, reset=not exists, cold_dir=cold_dir)
    instrument()
    out: dict = {"events": a.events, "days": a.days, "runs": []}
    try:
        with open_resources(inst) as r:
            if not exists:
                events = make_events(a.events, a.keys, "plays", lo, hi, seed=3, id_base=0)
                for off in range(0, events.num_rows, 1_000_000):
                    with r.warm.pool.connection() as conn:
                        r.warm.insert(conn, "bench", events.slice(off, 1_000_000))
            for _ in range(a.runs):
                with r.warm.pool.connection() as conn:
                    conn.execute("UPDATE catalog SET b_cold = b_archive")
                shutil.rmtree(cold_dir, ignore_errors=True)
                cold_dir.mkdir()
                r.cold.sync()
                TIMES.clear()
                CPU.clear()
                SPANS.clear()
                t, cpu, pg, ot = time.perf_counter(), time.process_time(), postgres_cpu_s(), os.times()
                stats = export_cold(r.redis, r.warm, r.cold, r.catalog, now, warm_age_ms=settings.warm_age,
                                    grace_ms=3_600_000)
                took = time.perf_counter() - t
                pg_after = postgres_cpu_s()
                ot2 = os.times()
                run = {"export_s": round(took, 2), "cpu_s": round(time.process_time() - cpu, 2),
                       "user_s": round(ot2.user - ot.user, 2), "system_s": round(ot2.system - ot.system, 2),
                       "postgres_cpu_s": None if pg is None or pg_after is None else round(pg_after - pg, 2),
                       "events": stats["events"],
                       "events_per_s": round(stats["events"] / took),
                       "stages_wall_s": {k: round(v, 3) for k, v in sorted(TIMES.items(), key=lambda kv: -kv[1])},
                       "stages_cpu_s": {k: round(v, 3) for k, v in sorted(CPU.items(), key=lambda kv: -kv[1])},
                       "timeline_s": timeline(t)}
                print(json.dumps(run, indent=1))
                out["runs"].append(run)
    finally:
        shutil.rmtree(cold_dir, ignore_errors=True)
    print(json.dumps({"events": a.events, "export_s": [r["export_s"] for r in out["runs"]]}))


if __name__ == "__main__":
    main()
