"""`tierstore demo`: two years of synthetic plays moved through all four tiers, then example queries.

Everything goes through the product's own front doors: events through POST /v1/events of a
`tierstore serve` process, migrations through the jobs API with as_of, queries and a compliance
report through the HTTP API. The printed curl commands work as written while the server runs.

The jobs run with as_of now, so the server keeps the production default allow_clock_override=false
(it goes on serving after the demo). SIGTERM, SIGINT or SIGHUP to the demo stops the server's
whole process group (gunicorn master and workers) before the demo exits; if the demo dies without
a chance to clean up, the kernel sends the server SIGTERM (PR_SET_PDEATHSIG, Linux).
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np
import orjson
import requests

from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, floor_to, format_time, now_ms

STREAM = "plays"
KEYS = 20_000
JOBS = ("flush", "refresh", "expire_hot", "export_cold", "archive")


def synthetic_events(days: int, now: int, seed: int = 42) -> list[list[dict[str, Any]]]:
    """Batches of Zipf-distributed song plays over `days`, denser in the last day (hot)."""
    rng = np.random.default_rng(seed)
    start = floor_to(now - days * DAY_MS, DAY_MS)
    n_old = days * 1_200
    n_recent = 60_000
    ts = np.concatenate([rng.integers(start, now - HOUR_MS * 25, n_old),
                         rng.integers(now - 23 * HOUR_MS, now - MINUTE_MS, n_recent)])
    keys = np.minimum(rng.zipf(1.3, ts.size), KEYS)
    values = rng.integers(1, 6, ts.size).astype(float)
    order = np.argsort(ts)
    events = [{"stream": STREAM, "key": f"song_{int(k)}", "ts": int(t), "value": float(v), "id": f"demo-{i}"}
              for i, (t, k, v) in enumerate(zip(ts[order], keys[order], values[order]))]
    return [events[i:i + 5_000] for i in range(0, len(events), 5_000)]


class Demo:
    def __init__(self, settings, base_url: str):
        self.settings = settings
        self.url = base_url
        self.http = requests.Session()

    def get(self, path: str, **params) -> dict:
        r = self.http.get(self.url + path, params=params, timeout=300)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: Any) -> dict:
        r = self.http.post(self.url + path, data=orjson.dumps(body), timeout=300,
                           headers={"Content-Type": "application/json"})
        if r.status_code >= 400:
            raise RuntimeError(f"POST {path} -> {r.status_code}: {r.text[:300]}")
        return r.json()

    def wait_ready(self, proc: subprocess.Popen | None, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"tierstore serve exited with {proc.returncode}; see its output above")
            try:
                if self.http.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:  # not listening yet, or a worker still booting
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the API at {self.url} did not become ready in {timeout:.0f} s")

    def has_data(self) -> bool:
        body = self.get("/v1/query/topk", stream=STREAM, **{"from": "2000-01-01T00:00:00Z", "to": "now+1h"}, k=1)
        return bool(body["items"])

    def load(self, days: int) -> int:
        from rich.progress import Progress

        batches = synthetic_events(days, now_ms())
        total = sum(len(b) for b in batches)
        with Progress() as bar:
            task = bar.add_task(f"ingest {total:,} events over {days} days", total=total)
            for batch in batches:
                self.post("/v1/events", batch)
                bar.advance(task, len(batch))
        return total

    def run_job(self, name: str, as_of: str = "now") -> dict:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        run_id = self.post(f"/v1/jobs/{name}/run", {"as_of": as_of})["run_id"]
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()) as bar:
            task = bar.add_task(f"job {name}", total=1.0)
            while True:
                run = self.get(f"/v1/jobs/runs/{run_id}")
                bar.update(task, completed=float(run.get("progress") or 0), description=f"job {name} {run['status']}")
                if run["status"] in ("done", "failed", "skipped"):
                    break
                time.sleep(0.3)
        if run["status"] != "done":
            raise RuntimeError(f"job {name} ended {run['status']}: {run.get('error')}")
        return run

    def show(self, title: str, path: str, params: dict[str, Any], pick=lambda b: b) -> dict:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        print(f"\n## {title}\n$ curl -s '{self.url}{path}?{query}'")
        body = self.get(path, **params)
        print(json.dumps(pick(body), indent=1, ensure_ascii=False)[:1800])
        return body

    def report(self, body: dict) -> dict:
        print(f"\n## A compliance report: exact totals from raw events in every tier\n"
              f"$ curl -s -X POST {self.url}/v1/reports -H 'Content-Type: application/json' -d '{json.dumps(body)}'")
        rid = self.post("/v1/reports", body)["id"]
        while True:
            rep = self.get(f"/v1/reports/{rid}")
            if rep["status"] in ("done", "failed"):
                break
            time.sleep(0.5)
        print(f"$ curl -s {self.url}/v1/reports/{rid}")
        print(json.dumps(rep, indent=1)[:2500])
        if rep["status"] == "done":
            print(f"$ curl -s {self.url}/v1/reports/{rid}/download | head -5")
            text = self.http.get(f"{self.url}/v1/reports/{rid}/download", timeout=60).text
            print("\n".join(text.splitlines()[:5]))
        return rep


def _segments(body: dict) -> dict:
    meta = body["meta"]
    return {**{k: v for k, v in body.items() if k != "meta"},
            "meta": {"exact": meta["exact"], "took_ms": meta["took_ms"],
                     "segments": [f"{s['tier']} {s['granularity']} {s['from']} .. {s['to']}" for s in meta["segments"]]}}


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stopped(Exception):
    """A stop signal reached the demo."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, _frame) -> None:
    raise Stopped(signum)


def _die_with_parent() -> None:
    """In the server's child process before exec: SIGTERM when the demo dies (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM to the process group `proc` leads, SIGKILL to what is left after `timeout` s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers the master left behind, if any
    except ProcessLookupError:
        pass
    proc.wait()


def run_demo(settings, *, serve: bool = True, days: int = 730, port: int | None = None) -> int:
    port = port or settings.layout.api_port
    base = f"http://127.0.0.1:{port}"
    previous = {s: signal.signal(s, _raise_stopped) for s in STOP_SIGNALS}
    proc = None
    try:
        # the server's request lines would bury the demo's own output: warnings only, unless asked
        env = {"TIERSTORE_LOG_LEVEL": "WARNING", **os.environ}
        proc = subprocess.Popen([sys.executable, "-m", "tierstore.cli", "serve", "--port", str(port)],
                                env=env, start_new_session=True, preexec_fn=_die_with_parent)
        return _run(settings, proc, base, serve=serve, days=days)
    except Stopped as stop:
        print(f"\ntierstore demo: {stop}; stopping the server", file=sys.stderr, flush=True)
        return 128 + stop.signum
    finally:
        for s in STOP_SIGNALS:  # a second signal must not interrupt the clean-up
            signal.signal(s, signal.SIG_IGN)
        if proc is not None and proc.poll() is None:
            stop_group(proc)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _run(settings, proc: subprocess.Popen, base: str, *, serve: bool, days: int) -> int:
    demo = Demo(settings, base)
    demo.wait_ready(proc)
    print(f"tierstore API at {base}")
    if demo.has_data():
        print(f"stream {STREAM!r} already holds demo data: skipping the load")
    else:
        n = demo.load(days)
        print(f"ingested {n:,} events")
    for job in JOBS:
        run = demo.run_job(job)
        print(f"  {job}: {json.dumps(run.get('stats'), default=str)[:300]}")
    tiers = demo.get("/v1/tiers")
    print("\n## Who owns what (GET /v1/tiers)")
    for t in tiers["tiers"]:
        print(f"  {t['name']:8s} [{t['owns']['from']}, {t['owns']['to']})")
    wide = {"from": "now-800d", "to": "now"}
    demo.show("Top 10 songs by plays over two years (archive + cold + warm + hot)", "/v1/query/topk",
              {"stream": STREAM, **wide, "k": 10, "by": "count"}, _segments)
    demo.show("Rank of song_42 by total value over two years, with neighbours", "/v1/query/rank",
              {"stream": STREAM, "key": "song_42", **wide, "by": "sum", "around": 2}, _segments)
    series = demo.show("Plays per week over the last 120 days (cold + warm + hot)", "/v1/query/series",
                       {"stream": STREAM, "from": "now-120d", "to": "now", "step": "7d", "agg": "count"},
                       _segments)
    demo.show("Top 5 in the last hour (hot only, from Redis)", "/v1/query/topk",
              {"stream": STREAM, "from": "now-1h", "to": "now", "k": 5, "by": "sum"}, _segments)
    demo.report({"stream": STREAM, "from": format_time(floor_to(now_ms() - 800 * DAY_MS, DAY_MS)),
                 "to": format_time(floor_to(now_ms(), MINUTE_MS)), "kind": "totals", "format": "csv"})
    if not series["points"]:
        print("the series came back empty: the demo did not work", file=sys.stderr)
        return 1
    if serve:
        print(f"\nThe API keeps serving at {base} (Ctrl-C stops it; `make down` stops the services).")
        proc.wait()
    return 0
