"""History import at scale (issue 11 item 7): N events over two years into a fresh instance with
`tierstore import`, the jobs run as the scheduler would, then a sample of answers checked through
HTTP against DuckDB over the same input files.

Input: numpy/Arrow, keys `k<rank>` from a Zipf(1.1) law over --keys, times uniform over the last
730 days (epoch ms), values mixed (integers 1..50, some halves, some negatives), an id on ~10 % of
events (unique), written as --files files (Parquet by default). The instance: Redis database 3 and
a fresh PostgreSQL database, a cold directory of its own; the baseline: a slice of the same events
through POST /v1/events on Redis database 4 and another fresh database, in the same run.
Needs the services (redis, postgres, s3) of TIERSTORE_HOME / TIERSTORE_PORT_BASE. Last line JSON:
events, events_per_s (import), jobs_s, exact, baseline_events_per_s, ratio, checks, ...

    .venv/bin/python -m bench.history --events 1000000
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, format_time, now_ms

SPAN_DAYS = 730
BASELINE_EVENTS = 100_000


def make_events(n: int, n_keys: int, stream: str, lo: int, hi: int, seed: int, id_base: int) -> pa.Table:
    """n events (stream, key, ts, value, id) with Zipf keys, uniform times in [lo, hi), mixed values."""
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(1.1, n)
    ranks = np.where(ranks > n_keys, rng.integers(1, n_keys + 1, n), ranks)
    keys = pa.array(np.char.add("k", ranks.astype(str)).astype(object), pa.string())
    ts = rng.integers(lo, hi, n, dtype=np.int64)
    values = rng.integers(1, 51, n).astype(np.float64)
    kind = rng.random(n)
    values = np.where(kind < 0.1, values + 0.5, values)
    values = np.where(kind > 0.97, -values, values)
    with_id = rng.random(n) < 0.1
    ids = np.char.add("h", (np.arange(n) + id_base).astype(str)).astype(object)
    ids = pa.array(ids, pa.string(), mask=~with_id)
    return pa.table({"stream": pa.array(np.full(n, stream, dtype=object), pa.string()), "key": keys,
                     "ts": pa.array(ts, pa.int64()), "value": pa.array(values), "id": ids})


def write_files(folder: Path, n: int, n_keys: int, n_files: int, fmt: str, stream: str, lo: int, hi: int) -> list[Path]:
    out = []
    per = math.ceil(n / n_files)
    for i in range(n_files):
        size = min(per, n - i * per)
        if size <= 0:
            break
        table = make_events(size, n_keys, stream, lo, hi, seed=100 + i, id_base=i * per)
        path = folder / f"part-{i:03d}.{fmt}"
        if fmt == "parquet":
            pq.write_table(table, path, row_group_size=1_000_000)
        elif fmt == "csv":
            pacsv.write_csv(table, path)
        else:
            with path.open("wb") as f:
                import orjson

                for row in table.to_pylist():
                    f.write(orjson.dumps({k: v for k, v in row.items() if v is not None}) + b"\n")
        out.append(path)
    return out


def duckdb_source(files: list[Path], fmt: str) -> str:
    names = ", ".join(f"'{p}'" for p in files)
    if fmt == "parquet":
        return f"read_parquet([{names}])"
    if fmt == "csv":
        return f"read_csv([{names}], header=true, columns={{'stream':'VARCHAR','key':'VARCHAR','ts':'BIGINT'," \
               f"'value':'DOUBLE','id':'VARCHAR'}})"
    return f"read_json([{names}], format='newline_delimited', columns={{'stream':'VARCHAR','key':'VARCHAR'," \
           f"'ts':'BIGINT','value':'DOUBLE','id':'VARCHAR'}})"


def close(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def check_answers(api, con, src: str, stream: str, lo: int, hi: int, seed: int) -> tuple[int, list[str]]:
    """Top-K by count and sum over several ranges, a rank, a daily series; returns (checks, failures)."""
    rng = np.random.default_rng(seed)
    ranges = [(lo, hi), (hi - 30 * DAY_MS, hi), (lo, lo + 200 * DAY_MS), (hi - 400 * DAY_MS, hi - 300 * DAY_MS)]
    for _ in range(4):
        a, b = sorted(int(x) for x in rng.integers(lo, hi, 2))
        ranges.append((a, max(b, a + HOUR_MS)))
    ranges = [(a - a % MINUTE_MS, b - b % MINUTE_MS) for a, b in ranges]
    failures, checks = [], 0
    con.execute(f"CREATE OR REPLACE TEMP VIEW ev AS SELECT * FROM {src} WHERE stream = '{stream}'")
    for i, (a, b) in enumerate(ranges):
        for by, agg in (("count", "count(*)"), ("sum", "sum(coalesce(value, 1.0))")):
            want = con.execute(f"SELECT key, {agg}::DOUBLE AS v FROM ev WHERE ts >= {a} AND ts < {b} "
                               "GROUP BY key ORDER BY v DESC, key").fetchall()
            body = api.get("/v1/query/topk", {"stream": stream, "from": a, "to": b, "k": 10, "by": by}).json()
            got = [(it["key"], it["value"]) for it in body.get("items", [])]
            checks += 1
            # ties at the cut are ordered by key in both; compare values by position and keys where unique
            if len(got) != min(10, len(want)) or not all(close(g[1], w[1]) for g, w in zip(got, want)) \
                    or [g[0] for g in got] != [w[0] for w in want[:len(got)]]:
                failures.append(f"topk {by} [{a},{b}): got {got[:5]} want {want[:5]}")
            if i < 3:
                key = want[min(len(want) - 1, 7)][0] if want else "absent"
                body = api.get("/v1/query/rank", {"stream": stream, "from": a, "to": b, "key": key, "by": by}).json()
                pos = [k for k, _ in want].index(key) if key in [k for k, _ in want] else None
                checks += 1
                if body.get("total_keys") != len(want) or (pos is not None and (
                        body.get("rank") != pos + 1 or not close(body.get("value"), want[pos][1]))):
                    failures.append(f"rank {key} {by} [{a},{b}): got {body} want {pos} {want[pos] if pos is not None else None}")
    a, b = ranges[1]
    a -= a % DAY_MS
    b -= b % DAY_MS
    want = dict(con.execute(f"SELECT (ts // {DAY_MS}) * {DAY_MS} AS d, sum(coalesce(value, 1.0))::DOUBLE FROM ev "
                            f"WHERE ts >= {a} AND ts < {b} GROUP BY d").fetchall())
    body = api.get("/v1/query/series", {"stream": stream, "from": a, "to": b, "step": "1d", "agg": "sum"}).json()
    from rollups.timeutil import parse_time

    got = {parse_time(p["t"]): p["value"] for p in body.get("points", [])}
    checks += 1
    bad = [(t, got.get(t), want.get(t)) for t in sorted(set(got) | set(want))
           if not close(got.get(t) or 0.0, want.get(t) or 0.0)]
    if bad:
        failures.append(f"series 1d sum: {bad[:3]}")
    return checks, failures


def baseline_http(settings, table: pa.Table, database: str) -> float:
    """events/s of POST /v1/events (batches of 5000, JSON with epoch ms) on an isolated instance."""
    from bench.support import isolated
    from tests.api_support import served

    base = isolated(settings, 4, database, cold_dir=Path(tempfile.mkdtemp(prefix="hist_base_")))
    rows = [{k: v for k, v in r.items() if v is not None} for r in table.to_pylist()]
    gen = served(base)
    api = next(gen)
    try:
        t = time.perf_counter()
        for pos in range(0, len(rows), 5000):
            r = api.post("/v1/events", json=rows[pos:pos + 5000])
            assert r.status_code == 202, r.text
        return len(rows) / (time.perf_counter() - t)
    finally:
        gen.close()
        shutil.rmtree(base.cold_dir, ignore_errors=True)


def note(text: str) -> None:
    print(f"[history {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000_000)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--format", choices=["parquet", "csv", "ndjson"], default="parquet")
    ap.add_argument("--keep", action="store_true", help="keep the input files, cold directory and databases")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--no-jobs", action="store_true", help="check the answers right after the import (profiling)")
    a = ap.parse_args()

    import duckdb

    from bench.support import isolated
    from tests.api_support import run_job, served
    from tierstore.importer import run_import
    from tierstore.settings import load_settings

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    settings = load_settings(allow_clock_override=True)
    run = uuid.uuid4().hex[:8]
    stream = f"hist_{run}"
    now = now_ms()
    hi = now - now % MINUTE_MS - HOUR_MS
    lo = hi - SPAN_DAYS * DAY_MS
    work = Path(tempfile.mkdtemp(prefix="bench_history_"))
    cold_dir = work / "cold"
    out: dict = {"events": a.events, "keys": a.keys, "files": a.files, "format": a.format,
                 "load": os.getloadavg()[0]}
    try:
        t = time.perf_counter()
        files = write_files(work, a.events, a.keys, a.files, a.format, stream, lo, hi)
        out["generate_s"] = round(time.perf_counter() - t, 2)
        note(f"generated {a.events} events in {len(files)} files: {out['generate_s']} s")
        inst = isolated(settings, 3, "tierstore_bench_history", cold_dir=cold_dir)
        gen = served(inst)
        api = next(gen)
        try:
            t = time.perf_counter()
            stats = run_import(inst, files, progress=False)
            took = time.perf_counter() - t
            out["import_s"] = round(took, 2)
            out["events_per_s"] = round(a.events / took)
            note(f"import: {out['import_s']} s, {out['events_per_s']} events/s, {stats}")
            out["import"] = {k: v for k, v in stats.items() if k in ("archive", "cold", "warm", "ingested", "duplicates")}
            as_of = format_time(now)
            t = time.perf_counter()
            out["jobs"] = {}
            for name in () if a.no_jobs else ("flush", "refresh", "expire_hot", "export_cold", "archive"):
                t1 = time.perf_counter()
                res = run_job(api, name, as_of=as_of, timeout_s=7200)
                out["jobs"][name] = round(time.perf_counter() - t1, 2)
                note(f"job {name}: {out['jobs'][name]} s")
                if res["status"] != "done":
                    out.setdefault("job_errors", []).append({name: res.get("error")})
            out["jobs_s"] = round(time.perf_counter() - t, 2)
            out["boundaries"] = api.get("/v1/tiers").json().get("boundaries")
            con = duckdb.connect()
            checks, failures = check_answers(api, con, duckdb_source(files, a.format), stream, lo, hi, seed=11)
            out["checks"] = checks
            out["exact"] = not failures and "job_errors" not in out
            if failures:
                out["failures"] = failures[:5]
        finally:
            gen.close()
        if not a.no_baseline:
            head = pq.read_table(files[0]).slice(0, min(BASELINE_EVENTS, a.events)) if a.format == "parquet" \
                else make_events(min(BASELINE_EVENTS, a.events), a.keys, stream, lo, hi, seed=100, id_base=0)
            out["baseline_events"] = head.num_rows
            out["baseline_events_per_s"] = round(baseline_http(settings, head, "tierstore_bench_history_base"))
            note(f"baseline: {out['baseline_events_per_s']} events/s")
            out["ratio"] = round(out["events_per_s"] / out["baseline_events_per_s"], 2)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
