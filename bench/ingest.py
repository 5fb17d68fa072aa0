"""Ingest throughput: tierstore's POST /v1/events against the seed's one-request-per-event pattern.

Measured in one run, on this home's Redis (and PostgreSQL, which the app needs):
  direct    RedisHotTier.ingest() in-process, no HTTP: the Redis path alone (and the Redis CPU
            it costs per batch, from INFO cpu, which CPU contention on a shared box cannot inflate)
  tierstore `tierstore serve` (gunicorn, 2 workers x 4 threads, the real app); clients POST JSON
            arrays of 5,000 events
  baseline  the seed's pattern: a plain Flask app under gunicorn (same workers and threads), one
            request per event doing ZINCRBY then ZREVRANK
Events: 100k keys drawn Zipf(1), timestamps uniform over the last hour, value 1 (--values mixed:
0.5, 1, 2 or 5), no ids (--ids: a fresh 36-character id on every event, as real producers send;
each request's ids differ from every other's, so none is a duplicate), stream `bench.ingest` of tenant `default` (auth off). Clients: processes
with keep-alive http.client connections sending pre-encoded bodies, so the client stays cheap. Each
phase warms up before it is timed. The bench stream starts empty; afterwards the hot tier must hold
exactly the events the server accepted (checked), and the bench removes its stream, its log
entries and the baseline's key (unless --keep).

On a shared machine events/s depends on the neighbours, so the tierstore phase also reports CPU
time per 5,000-event batch, which they cannot inflate much: Redis (INFO cpu, main thread), the
server (every process of `tierstore serve`) and the clients; and the events/s those imply for this
machine's cores: Redis runs commands on one core, everything shares all of them.
The direct phase also splits Redis's time per batch by command (INFO commandstats: the costliest
commands the ingest script runs, and the script's own overhead): where the Redis time goes.
Last line: JSON {"events_per_s", "baseline_events_per_s", "ratio", "redis_cpu_ms_per_batch",
"server_cpu_ms_per_batch", "client_cpu_ms_per_batch", "implied_events_per_s",
"direct_redis_ms_per_batch_by_command", ...}.

    TIERSTORE_HOME=... TIERSTORE_PORT_BASE=... python -m bench.ingest [--seconds 20] [--clients 4]
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import redis

from rollups.timeutil import HOUR_MS, MAX_MS, MIN_MS, TimeRange, now_ms
from tiers.base import EVENT_SCHEMA
from tiers.eventlog import decode_batch, stream_log_key

TENANT, STREAM = "default", "bench.ingest"
BASELINE_KEY = "bench:seed:leaderboard"
BATCH, KEYS, ZIPF_S = 5_000, 100_000, 1.0
ID_TOKEN = b"@@@@@@@@@@@@@@@@"  # --ids: replaced in each request body by a token unique to the request


# ---- the seed's pattern, served by gunicorn: `bench.ingest:baseline_app()` -------------------

def baseline_app():
    from flask import Flask, jsonify, request

    app = Flask("seed-baseline")
    client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])

    @app.post("/score/<key>")
    def score(key: str):
        delta = float(request.get_json()["delta"])
        total = client.zincrby(BASELINE_KEY, delta, key)
        return jsonify({"key": key, "score": total, "rank": client.zrevrank(BASELINE_KEY, key) + 1})

    return app


# ---- data ------------------------------------------------------------------------------------

def make_events(n_batches: int, seed: int = 1, values: str = "1", ids: bool = False) -> list[list[dict]]:
    """values "1": every value is 1 (a counting stream); "mixed": 0.5, 1, 2 or 5. ids: every event
    has the id "<ID_TOKEN>-<batch:04x>-<row:013x>" (36 characters, like a UUID's text): the token
    is replaced by one unique to each request (`fresh_ids`)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, KEYS + 1) ** ZIPF_S
    names = np.array([f"song_{i}" for i in range(1, KEYS + 1)], dtype=object)
    start = now_ms()
    batches = []
    for _ in range(n_batches):
        keys = names[rng.choice(KEYS, BATCH, p=p / p.sum())].tolist()
        ts = (start - rng.integers(0, HOUR_MS, BATCH)).tolist()
        vals = [1] * BATCH if values == "1" else rng.choice([0.5, 1, 2, 5], BATCH).tolist()
        events = [{"stream": STREAM, "key": k, "ts": t, "value": v} for k, t, v in zip(keys, ts, vals)]
        if ids:
            b = len(batches)
            for row, e in enumerate(events):
                e["id"] = f"{ID_TOKEN.decode()}-{b:04x}-{row:013x}"
        batches.append(events)
    return batches


def fresh_ids(body: bytes, token: int) -> bytes:
    """The body with its ids made unique to `token` (a no-op without ids)."""
    return body.replace(ID_TOKEN, b"%016x" % token)


def run_nonce() -> int:
    """High bits of every id token of this run: ids of earlier runs (still in the dedup window) differ."""
    return (time.time_ns() // 1_000_000 & 0xFFFFFFFF) << 32


def as_table(events: list[dict]) -> pa.Table:
    return pa.table({"stream": [e["stream"] for e in events], "key": [e["key"] for e in events],
                     "ts": [e["ts"] for e in events], "value": [float(e["value"]) for e in events],
                     "id": [e.get("id") for e in events]}, schema=EVENT_SCHEMA)


def with_fresh_ids(table: pa.Table, token: int) -> pa.Table:
    if table.column("id").null_count == table.num_rows:
        return table
    ids = pc.replace_substring(table.column("id"), ID_TOKEN.decode(), "%016x" % token)
    return table.set_column(table.schema.get_field_index("id"), "id", ids)


# ---- clients ---------------------------------------------------------------------------------

def _client(port: int, requests: list[tuple[str, bytes, int]], start: float, warmup: float, seconds: float,
            out: mp.Queue, token0: int = 0) -> None:
    """POST requests round-robin until start + warmup + seconds; count events inside the window.
    Ids (if any) are made unique per request: token0 + the request's number."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    timed = total = errors = 0
    cpu0 = time.process_time()
    window = (start + warmup, start + warmup + seconds)
    while time.time() < start:
        time.sleep(0.001)
    i = 0
    while time.time() < window[1]:
        path, body, events = requests[i % len(requests)]
        i += 1
        conn.request("POST", path, fresh_ids(body, token0 + i), headers)
        resp = conn.getresponse()
        payload = resp.read()
        if resp.status >= 300:
            errors += 1
            continue
        accepted = orjson.loads(payload).get("accepted", events)
        total += accepted
        if window[0] <= time.time() < window[1]:
            timed += accepted
    conn.close()
    out.put((timed, total, errors, time.process_time() - cpu0))


def drive(port: int, requests: list, clients: int, warmup: float, seconds: float) -> dict:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    start = time.time() + 0.5
    nonce = run_nonce()
    procs = [ctx.Process(target=_client, args=(port, requests[c::clients], start, warmup, seconds, out,
                                                nonce + (c << 24)))
             for c in range(clients)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    timed, total, errors, cpu = (sum(r[i] for r in results) for i in range(4))
    return {"events_per_s": timed / seconds, "accepted": total, "errors": errors, "client_cpu_s": cpu}


# ---- servers ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(argv: list[str], port: int, ready_path: str, env: dict | None = None):
    # stderr goes to a file, never a pipe: a pipe nobody reads fills up and stalls the server.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _answers(port, ready_path):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"{argv[2:4]} did not start: {log.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()


def _answers(port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        return conn.getresponse().status < 500
    except OSError:
        return False


def gunicorn_argv(port: int, app: str) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4",
            "--timeout", "120", "--access-logfile", "/dev/null", app]


# ---- phases ----------------------------------------------------------------------------------

def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return info["used_cpu_user_main_thread"] + info["used_cpu_sys_main_thread"]


def command_usec(client: redis.Redis) -> dict[str, int]:
    """Microseconds Redis spent per command so far (INFO commandstats; commands a script runs are
    counted on their own too, and also in the script's EVALSHA)."""
    return {name.removeprefix("cmdstat_"): stats["usec"] for name, stats in client.info("commandstats").items()}


def redis_breakdown(before: dict[str, int], after: dict[str, int], batches: float, top: int = 6) -> dict[str, float]:
    """ms per batch of the commands that cost most inside the ingest script, and `script_other`:
    the rest of EVALSHA's time (the Lua interpreter, argument and reply conversions)."""
    spent = {k: (v - before.get(k, 0)) / batches / 1e3 for k, v in after.items() if v > before.get(k, 0)}
    script = spent.pop("evalsha", 0.0) + spent.pop("eval", 0.0)
    for k in ("info", "config|resetstat"):
        spent.pop(k, None)
    inner = sorted(spent.items(), key=lambda kv: -kv[1])
    out = {k: round(v, 1) for k, v in inner[:top]}
    out["script_other"] = round(script - sum(spent.values()), 1)
    return out


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) of the live processes of a process group."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields[0] is the state (field 3 of stat)
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def run_direct(settings, batches: list[list[dict]], seconds: float) -> dict:
    from tiers.hot import RedisHotTier

    tier = RedisHotTier.from_settings(settings)
    client = redis.Redis.from_url(settings.redis_url)
    tables = [as_table(b) for b in batches]
    token = run_nonce() + (0xFF << 24)  # the HTTP clients' tokens stay below
    for t in tables[:3]:  # warm-up
        token += 1
        tier.ingest(TENANT, with_fresh_ids(t, token), now_ms=now_ms())
    n = 0
    usec0 = command_usec(client)
    cpu0, wall0 = redis_cpu(client), time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        token += 1
        n += tier.ingest(TENANT, with_fresh_ids(tables[n // BATCH % len(tables)], token), now_ms=now_ms()).accepted
    wall, cpu = time.perf_counter() - wall0, redis_cpu(client) - cpu0
    breakdown = redis_breakdown(usec0, command_usec(client), n / BATCH)
    tier.close()
    return {"events_per_s": n / wall, "accepted": n + 3 * BATCH,
            "redis_cpu_ms_per_batch": cpu / (n / BATCH) * 1e3, "redis_cpu_share": cpu / wall,
            "redis_ms_per_batch_by_command": breakdown}


def run_tierstore(settings, batches, clients: int, warmup: float, seconds: float) -> dict:
    port = free_port()
    requests = [("/v1/events", orjson.dumps(b), len(b)) for b in batches]
    client = redis.Redis.from_url(settings.redis_url)
    argv = [sys.executable, "-m", "tierstore.cli", "serve", "--port", str(port), "--workers", "2", "--threads", "4"]
    with server(argv, port, "/healthz") as proc:
        cpu0, server0 = redis_cpu(client), group_cpu(proc.pid)
        result = drive(port, requests, clients, warmup, seconds)
        redis_s, server_s = redis_cpu(client) - cpu0, group_cpu(proc.pid) - server0
    batches = max(1, result["accepted"]) / BATCH
    result["redis_cpu_share"] = redis_s / (warmup + seconds)
    result.update(redis_cpu_ms_per_batch=redis_s / batches * 1e3, server_cpu_ms_per_batch=server_s / batches * 1e3,
                  client_cpu_ms_per_batch=result.pop("client_cpu_s") / batches * 1e3)
    return result


def implied_events_per_s(redis_ms: float, server_ms: float, client_ms: float, cores: int) -> float:
    """What the CPU costs allow on `cores` idle cores: Redis executes on one of them."""
    return BATCH * min(1e3 / redis_ms, cores * 1e3 / (redis_ms + server_ms + client_ms))


def run_baseline(settings, batches, clients: int, warmup: float, seconds: float) -> dict:
    port = free_port()
    body = b'{"delta": 1}'
    requests = [(f"/score/{e['key']}", body, 1) for e in batches[0]]
    with server(gunicorn_argv(port, "bench.ingest:baseline_app()"), port, "/",
                env={"BENCH_REDIS_URL": settings.redis_url}):
        return drive(port, requests, clients, warmup, seconds)


# ---- check and clean up ----------------------------------------------------------------------

def hot_count(client: redis.Redis) -> int:
    """Events the hot tier holds for the bench stream (its day totals)."""
    totals = client.zrange(f"tierstore:hot:{{{TENANT}:{STREAM}}}:1d:total:count", 0, -1, withscores=True)
    return int(sum(score for _, score in totals))


def clean_up(settings, log_from: bytes | None) -> None:
    """Remove the bench stream from the hot tier, the baseline's key and (log_from given) the log
    entries after log_from that hold only bench events."""
    from tiers.hot import RedisHotTier

    tier = RedisHotTier.from_settings(settings)
    tier.delete_range(TENANT, STREAM, TimeRange(MIN_MS, MAX_MS))
    tier.close()
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(BASELINE_KEY)
    prefix = f"tierstore:hot:{{{TENANT}:{STREAM}}}:"
    for pattern in ("id:*", "dd:*"):  # the dedup marks of the bench's ids (both layouts)
        keys = list(client.scan_iter(match=(prefix + pattern).replace("{", "\\{").replace("}", "\\}"), count=10_000))
        for i in range(0, len(keys), 10_000):
            client.unlink(*keys[i:i + 10_000])
    if log_from is None:
        return
    log = stream_log_key(TENANT, STREAM)  # the bench stream's own event log
    for entry_id, fields in client.xrange(log, min=f"({log_from.decode()}" if log_from else "-"):
        if set(decode_batch(fields[b"data"]).column("stream").to_pylist()) == {STREAM}:
            client.xdel(log, entry_id)


def last_log_id(client: redis.Redis) -> bytes:
    last = client.xrevrange(stream_log_key(TENANT, STREAM), count=1)
    return last[0][0] if last else b""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per phase")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=4, help="client processes for tierstore")
    parser.add_argument("--baseline-clients", type=int, default=8, help="client processes for the baseline")
    parser.add_argument("--batches", type=int, default=40, help="distinct pre-built batches")
    parser.add_argument("--values", choices=["1", "mixed"], default="1", help="event values: all 1, or mixed")
    parser.add_argument("--ids", action="store_true", help="a unique id on every event (dedup on every event)")
    parser.add_argument("--skip-http", action="store_true", help="measure the direct path only")
    parser.add_argument("--keep", action="store_true", help="leave the bench's data in Redis")
    args = parser.parse_args(argv)

    from tierstore.settings import load_settings

    settings = load_settings()
    client = redis.Redis.from_url(settings.redis_url)
    log_from = last_log_id(client)
    clean_up(settings, None)  # the count check below needs the bench stream empty
    batches = make_events(args.batches, values=args.values, ids=args.ids)
    out: dict = {}
    try:
        direct = run_direct(settings, batches, args.seconds)
        print(f"direct ingest(): {direct['events_per_s']:,.0f} events/s, Redis CPU "
              f"{direct['redis_cpu_ms_per_batch']:.1f} ms per {BATCH:,}-event batch "
              f"(Redis alone could take {BATCH / direct['redis_cpu_ms_per_batch'] * 1e3:,.0f} events/s)", flush=True)
        out["direct_events_per_s"] = round(direct["events_per_s"])
        out["direct_redis_cpu_ms_per_batch"] = round(direct["redis_cpu_ms_per_batch"], 1)
        out["direct_redis_ms_per_batch_by_command"] = direct["redis_ms_per_batch_by_command"]
        print(f"  Redis time per batch by command (wall inside Redis): {direct['redis_ms_per_batch_by_command']}",
              flush=True)
        out["values"] = args.values
        out["ids"] = args.ids
        accepted = direct["accepted"]
        if not args.skip_http:
            http_run = run_tierstore(settings, batches, args.clients, args.warmup, args.seconds)
            print(f"tierstore POST /v1/events: {http_run['events_per_s']:,.0f} events/s "
                  f"({args.clients} clients, {http_run['errors']} errors, Redis busy "
                  f"{http_run['redis_cpu_share']:.0%} of the time)", flush=True)
            cores = os.cpu_count() or 1
            implied = implied_events_per_s(http_run["redis_cpu_ms_per_batch"], http_run["server_cpu_ms_per_batch"],
                                           http_run["client_cpu_ms_per_batch"], cores)
            print(f"  CPU per {BATCH:,}-event batch: Redis {http_run['redis_cpu_ms_per_batch']:.1f} ms, server "
                  f"{http_run['server_cpu_ms_per_batch']:.1f} ms, clients {http_run['client_cpu_ms_per_batch']:.1f} ms "
                  f"-> {implied:,.0f} events/s on {cores} idle cores", flush=True)
            base = run_baseline(settings, batches, args.baseline_clients, args.warmup, args.seconds)
            print(f"seed baseline (1 request per event, ZINCRBY + ZREVRANK): {base['events_per_s']:,.0f} events/s "
                  f"({args.baseline_clients} clients, {base['errors']} errors)", flush=True)
            accepted += http_run["accepted"]
            out.update(events_per_s=round(http_run["events_per_s"]),
                       baseline_events_per_s=round(base["events_per_s"]),
                       ratio=round(http_run["events_per_s"] / base["events_per_s"], 1),
                       errors=http_run["errors"] + base["errors"],
                       **{k: round(http_run[k], 1) for k in ("redis_cpu_ms_per_batch", "server_cpu_ms_per_batch",
                                                             "client_cpu_ms_per_batch")},
                       implied_events_per_s=round(implied), cores=cores)
        held = hot_count(client)
        out["verified"] = held == accepted
        print(f"hot tier holds {held:,} bench events; accepted {accepted:,}: "
              f"{'match' if held == accepted else 'MISMATCH'}", flush=True)
    finally:
        if not args.keep:
            clean_up(settings, log_from)
    print(json.dumps(out))
    return 0 if out.get("verified") else 1


if __name__ == "__main__":
    sys.exit(main())
