"""Sustained ingest (issue 11, part 6): N minutes at a target rate through HTTP while the scheduler
runs its real intervals, watching whether the pipeline keeps pace.

An instance of its own (bench.support.isolated: Redis database 62, PostgreSQL database
tierstore_bench_sustained, its own cold directory, all emptied first): `tierstore serve` (gunicorn)
and `tierstore scheduler` (every job on its configured interval) run as subprocesses on it.
Sender processes POST batches of 5,000 events paced to the target rate: keys song_1..song_100000
drawn Zipf(1), values 0.5, 1, 2 or 5, a unique id on every event, ts = the send time minus up to
--ts-spread seconds (hot-owned, as live producers send). Each sender keeps the oracle of what the
server accepted: per key count and sum, per minute count and sum, per minute of song_1.

Sampled every --sample seconds (with the functions /metrics uses, router.pipeline_metrics):
    flush_lag     tierstore_flush_lag_seconds: age of the oldest log entry not yet in warm
    rollup_lag    tierstore_rollup_lag_seconds: now - the earliest minute bucket holding a change
                  warm's rollups do not reflect (so it includes up to 60 s of the bucket's own age,
                  and refresh_interval); hot-owned 1h/1d buckets that refresh defers to expire_hot
                  (warm_stale) do not count, as no query reads them from warm
    fold_lag      now - the ingest time up to which refresh has folded every event (the watermark
                  refresh publishes, tiers/watermarks.py): the same lag counted in ingest time
    used_memory   Redis INFO memory, also right after each expire_hot run the scheduler finished
    events/s      accepted events since the previous sample
At the end the answers of top-K (count, sum), rank and series (count, sum, one key's sum) over the
whole run are compared with the oracle (`exact`).
redis_memory_growth_ratio: used_memory after the last expire_hot run / after the first (basis
"expire_hot"); with fewer than two runs in the window, the last sample / the first sample after the
first minute (or third of the run, if shorter; basis "samples"). With the default hot age (24 h)
expire_hot trims nothing in a short run: the hot tier legitimately holds all of it (and the dedup
window every id), so growth there is not a leak.
Last line: JSON {"events_per_s", "target_events_per_s", "flush_lag_p99_s", "rollup_lag_p99_s",
"fold_lag_p99_s", "redis_memory_growth_ratio", "exact", "targets": {...}, ...}.

    TIERSTORE_HOME=... TIERSTORE_PORT_BASE=... python -m bench.sustained [--minutes 10] [--rate 100000]
        [--senders 4]
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager

import numpy as np
import orjson

from bench import support
from bench.ingest import _answers, free_port
from rollups.timeutil import MINUTE_MS, ceil_to, floor_to, format_time, now_ms

REDIS_DB, DATABASE = 62, "tierstore_bench_sustained"
STREAM, BATCH, KEYS = "bench.sustained", 5_000, 100_000
VALUES = np.array([0.5, 1.0, 2.0, 5.0])
TARGETS = {"flush_lag_p99_s": 5.0, "rollup_lag_p99_s": 15.0, "events_per_s": 100_000,
           "redis_memory_growth_ratio": "flat after each expire_hot"}


# ---- senders ---------------------------------------------------------------------------------

class SenderOracle:
    """What one sender got accepted: per key count/sum, per minute count/sum, song_1 per minute."""

    def __init__(self) -> None:
        self.count = np.zeros(KEYS, np.int64)
        self.sum = np.zeros(KEYS, np.float64)
        self.minutes: dict[int, list[float]] = {}  # minute -> [count, sum, song_1 sum]

    def add(self, keys: np.ndarray, ts: np.ndarray, values: np.ndarray) -> None:
        self.count += np.bincount(keys, minlength=KEYS)
        self.sum += np.bincount(keys, weights=values, minlength=KEYS)
        minute = ts - ts % MINUTE_MS
        for m in np.unique(minute).tolist():
            sel = minute == m
            cell = self.minutes.setdefault(m, [0, 0.0, 0.0])
            cell[0] += int(sel.sum())
            cell[1] += float(values[sel].sum())
            cell[2] += float(values[sel & (keys == 0)].sum())


def batch_body(rng: np.random.Generator, cum: np.ndarray, sender: int, seq: int, spread_ms: int):
    """(body, key indexes, ts, values) of one request: ids unique to (run, sender, request, row)."""
    keys = np.minimum(np.searchsorted(cum, rng.random(BATCH)), KEYS - 1)
    now = now_ms()
    ts = now - rng.integers(0, max(1, spread_ms), BATCH)
    values = VALUES[rng.integers(0, len(VALUES), BATCH)]
    prefix = b"%08x-%04x-%04x-%04x-" % (RUN_NONCE.value & 0xFFFFFFFF, sender & 0xFFFF, seq >> 16 & 0xFFFF, seq & 0xFFFF)
    body = b"[" + b",".join(  # ids of 36 characters, like a UUID's text, unique to the run
        b'{"stream":"%s","key":"song_%d","ts":%d,"value":%s,"id":"%s%012x"}'
        % (STREAM.encode(), k + 1, t, repr(v).encode(), prefix, i)
        for i, (k, t, v) in enumerate(zip(keys.tolist(), ts.tolist(), values.tolist()))) + b"]"
    return body, keys, ts, values


def _sender(port: int, sender: int, rate: float, start: float, stop: float, accepted, out: mp.Queue) -> None:
    """POST paced batches (rate events/s for this sender) from start to stop; a sender that falls
    more than 2 s behind its schedule drops the backlog (the shortfall shows in events/s)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rng = np.random.default_rng(1000 + sender)
    weights = 1.0 / np.arange(1, KEYS + 1)
    cum = np.cumsum(weights) / weights.sum()
    oracle, errors, seq = SenderOracle(), 0, 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "application/json"}
    interval = BATCH / rate
    cpu0 = time.process_time()
    due = start
    while time.time() < start:
        time.sleep(0.01)
    while due < stop:
        now = time.time()
        if now < due:
            time.sleep(due - now)
        elif now - due > 2.0:
            due = now
        body, keys, ts, values = batch_body(rng, cum, sender, seq, SPREAD_MS.value)
        seq += 1
        try:
            conn.request("POST", "/v1/events", body, headers)
            resp = conn.getresponse()
            payload = resp.read()
        except OSError:
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        else:
            if resp.status == 202 and orjson.loads(payload)["accepted"] == BATCH:
                oracle.add(keys, ts, values)
                with accepted.get_lock():
                    accepted.value += BATCH
            else:
                errors += 1
        due += interval
    conn.close()
    out.put((sender, oracle.count, oracle.sum, oracle.minutes, errors, seq, time.process_time() - cpu0))


SPREAD_MS = mp.Value("q", 5_000, lock=False)  # set in main before the senders fork
RUN_NONCE = mp.Value("q", 0, lock=False)


# ---- the instance ------------------------------------------------------------------------------

def instance_env(iso) -> dict:
    return {**os.environ, "TIERSTORE_REDIS_URL": iso.redis_url, "TIERSTORE_POSTGRES_URL": iso.postgres_url,
            "TIERSTORE_COLD_DIR": str(iso.cold_dir)}


@contextmanager
def logged_process(argv: list[str], env: dict, log_path, ready=lambda: True):
    """A subprocess (own session) writing to log_path — never a pipe nobody drains, which would
    block a long-running server once it is full — started when `ready()`, stopped at exit."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        time.sleep(3)
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[2:5]} did not start: {open(log_path).read()[-2000:]}")
            time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[2:5]} exited: {open(log_path).read()[-2000:]}")
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


class Probe:
    """The pipeline's lags and Redis memory, read as /metrics reads them."""

    def __init__(self, iso) -> None:
        import redis

        from router.pipeline_metrics import LagCollector
        from tiers.db import make_pool
        from tiers.warm import WarmTier

        self.redis = redis.Redis.from_url(iso.redis_url)
        self.pool = make_pool(iso.postgres_url, max_size=2, name="bench-sustained")
        self.warm = WarmTier.from_settings(iso)
        self.lags = LagCollector(self.redis, self.pool, self.warm)
        self.seen_expire: set[int] = set()

    def sample(self) -> dict:
        from tiers.eventlog import read_mark
        from tiers.watermarks import REFRESHED_KEY

        out = {"t": time.time(), "used_memory": int(self.redis.info("memory")["used_memory"])}
        for name, read in (("flush_lag", self.lags.flush_lag), ("rollup_lag", self.lags.rollup_lag)):
            try:
                out[name] = read()
            except Exception as exc:  # noqa: BLE001  (a busy PostgreSQL: the sample says so)
                out[name] = None
                out[f"{name}_error"] = type(exc).__name__
        folded = read_mark(self.redis, REFRESHED_KEY, 0)
        out["fold_lag"] = (now_ms() - folded) / 1000 if folded else None
        return out

    def new_expire_hot_runs(self) -> list[dict]:
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT id, stats FROM job_runs WHERE job = 'expire_hot' AND status = 'done' "
                                "ORDER BY id").fetchall()
        fresh = [{"run_id": rid, "moved": (stats or {}).get("moved"), "trimmed": (stats or {}).get("trimmed")}
                 for rid, stats in rows if rid not in self.seen_expire]
        self.seen_expire.update(r["run_id"] for r in fresh)
        return fresh

    def job_summary(self) -> dict:
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT job, status, count(*), avg(extract(epoch FROM finished - started)), "
                                "max(extract(epoch FROM finished - started)) FROM job_runs GROUP BY job, status "
                                "ORDER BY job, status").fetchall()
        return {f"{job}:{status}": {"runs": n, "avg_s": round(float(a or 0), 3), "max_s": round(float(m or 0), 3)}
                for job, status, n, a, m in rows}

    def close(self) -> None:
        self.warm.close()
        self.pool.close()
        self.redis.close()


# ---- the oracle check ------------------------------------------------------------------------

def merged(results: list) -> tuple[np.ndarray, np.ndarray, dict]:
    count, total, minutes = np.zeros(KEYS, np.int64), np.zeros(KEYS), {}
    for _, c, s, mins, *_ in results:
        count += c
        total += s
        for m, (n, v, k1) in mins.items():
            cell = minutes.setdefault(m, [0, 0.0, 0.0])
            cell[0] += n
            cell[1] += v
            cell[2] += k1
    return count, total, minutes


def ordered(values: np.ndarray, count: np.ndarray) -> list[tuple[str, float]]:
    """(key, value) of every key with events, value descending then key ascending."""
    keys = np.flatnonzero(count)
    pairs = [(f"song_{i + 1}", float(values[i])) for i in keys.tolist()]
    return sorted(pairs, key=lambda kv: (-kv[1], kv[0]))


def check_answers(port: int, results: list, start_ms: int, end_ms: int) -> dict:
    """Compare top-K, rank and series over [start_ms, end_ms) with the oracle; {check: bool}."""
    count, total, minutes = merged(results)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def get(path: str, **params) -> dict:
        from urllib.parse import urlencode

        query = {"stream": STREAM, "from": format_time(start_ms), "to": format_time(end_ms), **params}
        conn.request("GET", f"{path}?{urlencode(query)}")
        resp = conn.getresponse()
        body = orjson.loads(resp.read())
        if resp.status != 200:
            raise RuntimeError(f"{path} {params}: {resp.status} {body}")
        return body

    checks: dict[str, bool] = {}
    for by, values in (("count", count.astype(np.float64)), ("sum", total)):
        want = ordered(values, count)
        got = get("/v1/query/topk", k=10, by=by)["items"]
        checks[f"topk_{by}"] = [(i["key"], i["value"]) for i in got] == want[:10]
        key, rank = want[4][0], 5
        r = get("/v1/query/rank", key=key, by=by)
        checks[f"rank_{by}"] = (r["rank"], r["value"], r["total_keys"]) == (rank, want[4][1], len(want))
    for agg, col, key in (("count", 0, None), ("sum", 1, None), ("sum", 2, "song_1")):
        params = {"step": "1m", "agg": agg, **({"key": key} if key else {})}
        got = {p["t"]: p["value"] for p in get("/v1/query/series", **params)["points"] if p["value"] is not None}
        want = {format_time(m): cell[col] for m, cell in minutes.items() if cell[col]}  # values are > 0
        checks[f"series_{agg}" + (f"_{key}" if key else "")] = got.keys() == want.keys() and all(
            math.isclose(got[t], v, rel_tol=1e-12) for t, v in want.items())
    conn.close()
    return checks


# ---- main ------------------------------------------------------------------------------------

def p99(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return round(float(np.percentile(vals, 99)), 2) if vals else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100_000, help="target events/s (all senders)")
    parser.add_argument("--senders", type=int, default=4, help="sender processes")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--ts-spread", type=float, default=5.0, help="event ts = send time - U(0, this) s")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of tierstore serve")
    args = parser.parse_args(argv)

    from tierstore.settings import load_settings

    settings = load_settings()
    iso = support.isolated(settings, REDIS_DB, DATABASE, cold_dir=settings.cold_dir / "_bench_sustained")
    env = instance_env(iso)
    SPREAD_MS.value = int(args.ts_spread * 1000)
    RUN_NONCE.value = time.time_ns() // 1_000_000
    port = free_port()
    load_before = os.getloadavg()
    argv_serve = [sys.executable, "-m", "tierstore.cli", "serve", "--port", str(port), "--workers",
                  str(args.workers), "--threads", "4"]
    samples, after_expire = [], []
    with ExitStack() as stack:
        logs = iso.home / "run"
        stack.enter_context(logged_process(argv_serve, env, logs / "bench-sustained-serve.log",
                                           ready=lambda: _answers(port, "/healthz")))
        stack.enter_context(logged_process([sys.executable, "-m", "tierstore.cli", "scheduler"], env,
                                           logs / "bench-sustained-scheduler.log"))
        probe = Probe(iso)
        stack.callback(probe.close)
        ctx = mp.get_context("fork")
        accepted, out = ctx.Value("q", 0), ctx.Queue()
        start = time.time() + 1.0
        stop = start + args.minutes * 60
        procs = [ctx.Process(target=_sender, args=(port, s, args.rate / args.senders, start, stop, accepted, out))
                 for s in range(args.senders)]
        for p in procs:
            p.start()
        last_t, last_n = start, 0
        while time.time() < stop:
            time.sleep(max(0.0, min(args.sample, stop - time.time())))
            s = probe.sample()
            n = accepted.value
            s["events_per_s"] = (n - last_n) / max(1e-9, s["t"] - last_t)
            last_t, last_n = s["t"], n
            samples.append(s)
            for run in probe.new_expire_hot_runs():
                after_expire.append({**run, "used_memory": s["used_memory"], "t": s["t"] - start})
            print(f"[{s['t'] - start:6.0f}s] {s['events_per_s']:9,.0f} ev/s  flush lag {s['flush_lag']}  "
                  f"rollup lag {s['rollup_lag']}  fold lag {s['fold_lag']}  redis {s['used_memory'] / 2**20:,.0f} MiB",
                  flush=True)
        results = [out.get() for _ in procs]
        for p in procs:
            p.join()
        elapsed = time.time() - start
        total_events = sum(int(r[1].sum()) for r in results)
        errors = sum(r[4] for r in results)
        end_ms = ceil_to(now_ms() + 1, MINUTE_MS) + MINUTE_MS
        start_ms = floor_to(int(start * 1000) - int(args.ts_spread * 1000) - MINUTE_MS, MINUTE_MS)
        checks = check_answers(port, results, start_ms, end_ms)
        jobs = probe.job_summary()
    growth, basis = memory_growth(samples, after_expire, start)
    result = {
        "events_per_s": round(total_events / elapsed), "target_events_per_s": args.rate, "minutes": args.minutes,
        "senders": args.senders, "events": total_events, "errors": errors,
        "sender_cpu_s": round(sum(r[6] for r in results), 1), "elapsed_s": round(elapsed, 1),
        "flush_lag_p99_s": p99([s["flush_lag"] for s in samples]),
        "rollup_lag_p99_s": p99([s["rollup_lag"] for s in samples]),
        "fold_lag_p99_s": p99([s["fold_lag"] for s in samples]),
        "flush_lag_max_s": max((s["flush_lag"] or 0 for s in samples), default=None),
        "rollup_lag_max_s": max((s["rollup_lag"] or 0 for s in samples), default=None),
        "redis_memory_growth_ratio": growth, "redis_memory_basis": basis,
        "redis_used_memory_mib": [round(s["used_memory"] / 2**20, 1) for s in samples[:: max(1, len(samples) // 12)]],
        "after_expire_hot": after_expire, "exact": all(checks.values()), "checks": checks, "jobs": jobs,
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "cores": os.cpu_count(), "targets": TARGETS,
    }
    print(json.dumps(result))
    return 0 if result["exact"] else 1


def memory_growth(samples: list[dict], after_expire: list[dict], start: float) -> tuple[float | None, str]:
    if len(after_expire) >= 2:
        return round(after_expire[-1]["used_memory"] / after_expire[0]["used_memory"], 3), "expire_hot"
    run_s = samples[-1]["t"] - start if samples else 0.0
    settled = [s for s in samples if s["t"] - start >= min(60.0, run_s / 3)] or samples
    if not settled:
        return None, "none"
    return round(samples[-1]["used_memory"] / settled[0]["used_memory"], 3), "samples"


if __name__ == "__main__":
    sys.exit(main())
