"""N routers and one scheduler leader (issue 12, item 3), with real processes: two `tierstore serve`
on different ports and homes (nothing shared but the stores: Redis, PostgreSQL, S3, the cold
directory) answer identically, share the results cache and the rate limits, and serve each other's
reports from S3; two `tierstore scheduler` processes never run one job twice at once, only the
leader runs scheduled jobs, and when the leader is SIGKILLed the other takes over."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import orjson
import psycopg
import pytest
import requests

from rollups.timeutil import MINUTE_MS, format_time
from tests.api_support import Oracle, check_rank, check_series, check_topk, hot_window, isolated_settings
from tests.test_signals import free_port, kill_leftovers, start, wait_healthy

pytestmark = pytest.mark.slow  # boots two gunicorn servers and two schedulers (~30 s on two cores)

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"key-main": {"tenant": "main", "scopes": ["ingest", "query", "admin"]}, "key-other": "other"}
EVENTS_LIMIT = 1000  # events per tenant per hour, counted in Redis across both routers


@pytest.fixture(scope="module")
def stores(settings):
    return isolated_settings(settings, "scale_out", redis_db=24)


def process_env(stores, home: Path, **extra: str) -> dict[str, str]:
    """The environment of one process: its own home, the shared stores."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERSTORE_") or k == "TIERSTORE_PORT_BASE"}
    env.update(TIERSTORE_HOME=str(home), TIERSTORE_POSTGRES_URL=stores.postgres_url,
               TIERSTORE_REDIS_URL=stores.redis_url, TIERSTORE_S3_ENDPOINT=stores.s3_endpoint,
               TIERSTORE_S3_BUCKET=stores.s3_bucket, TIERSTORE_COLD_DIR=str(stores.cold_dir),
               TIERSTORE_AUTH_ENABLED="true", TIERSTORE_API_KEYS=orjson.dumps(KEYS).decode(),
               TIERSTORE_RATE_LIMITS=orjson.dumps({"events": f"{EVENTS_LIMIT}/hour"}).decode(),
               TIERSTORE_REPORTS_S3_PREFIX=f"_test/scale-out-{uuid.uuid4().hex[:8]}",
               PYTHONPATH=str(ROOT), **extra)
    return env


class Remote:
    """A client of one router process (the interface of tests.api_support.ApiServer)."""

    def __init__(self, port: int, key: str = "key-main") -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {key}"

    def get(self, path: str, params: dict | None = None, **kw) -> requests.Response:
        return self.http.get(self.url + path, params=params, timeout=60, **kw)

    def post(self, path: str, json=None, **kw) -> requests.Response:
        return self.http.post(self.url + path, data=orjson.dumps(json), timeout=60,
                              headers={"Content-Type": "application/json"}, **kw)

    def as_(self, key: str) -> "Remote":
        other = Remote(0, key)
        other.url = self.url
        return other


@pytest.fixture(scope="module")
def routers(stores, tmp_path_factory):
    """Two `tierstore serve` processes (one gunicorn worker each), homes of their own."""
    procs, remotes = [], []
    try:
        for name in ("a", "b"):
            home = tmp_path_factory.mktemp(f"router-{name}")
            port = free_port()
            procs.append((start(process_env(stores, home), "serve", "--port", str(port), "--workers", "1",
                                log=home / "serve.log"), port))
        for proc, port in procs:
            wait_healthy(port, proc)
            remotes.append(Remote(port))
        yield remotes
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs:
            try:
                proc.wait(30)
            except Exception:  # noqa: BLE001
                pass
        kill_leftovers([proc.pid for proc, _ in procs])


@pytest.fixture(scope="module")
def data(routers):
    """Events of one stream in the hot window, ingested half through each router."""
    a, b = routers
    stream = f"so-{uuid.uuid4().hex[:8]}"
    window = hot_window(a)
    step = max(1, (window.end - window.start) // 600)
    events = [{"stream": stream, "key": f"k{(i * 7) % 23}", "ts": window.start + i * step, "value": float(i % 9)}
              for i in range(600)]
    oracle = Oracle()
    for router, batch in ((a, events[:300]), (b, events[300:])):
        r = router.post("/v1/events", batch)
        assert r.status_code == 202, r.text
        oracle.add(batch)
    return {"stream": stream, "window": window, "oracle": oracle}


def strip_meta(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "meta"}


def test_two_routers_answer_identically(routers, data):
    a, b = routers
    stream, w, oracle = data["stream"], data["window"], data["oracle"]
    start, end = format_time(w.start), format_time(w.end)
    for router in (a, b):  # each one right by the oracle ...
        check_series(router, oracle, stream, start, end, "1h", "sum")
        check_topk(router, oracle, stream, start, end, 5, "count")
        check_rank(router, oracle, stream, start, end, "k7", "sum", 2)
    queries = [("/v1/query/series", {"step": "15m", "agg": "avg"}), ("/v1/query/topk", {"k": 10, "by": "sum"}),
               ("/v1/query/rank", {"key": "k3", "by": "count", "around": 3})]
    for path, params in queries:  # ... and both the same, byte for byte but for meta
        params = {"stream": stream, "from": start, "to": end, **params}
        one, two = a.get(path, params), b.get(path, params)
        assert one.status_code == two.status_code == 200, (one.text, two.text)
        assert strip_meta(one.json()) == strip_meta(two.json()), path


def cache_hits(router: Remote, layer: str) -> float:
    text = router.get("/metrics").text
    m = re.search(r'^tierstore_results_cache_hits_total\{layer="%s"\} (\S+)$' % layer, text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_cache_entry_written_by_one_router_serves_the_other(routers, data):
    a, b = routers
    w = data["window"]
    stream = f"so-cache-{uuid.uuid4().hex[:8]}"  # never asked before: no piece of it is cached anywhere
    assert a.post("/v1/events", [{"stream": stream, "key": f"c{i % 5}", "ts": w.start + i * 60_000, "value": 2.0}
                                 for i in range(120)]).status_code == 202
    # closed hot pieces (ending clock_skew before now) are cached
    params = {"stream": stream, "from": format_time(w.start), "to": format_time(w.end - 30 * MINUTE_MS),
              "step": "5m", "agg": "max"}
    first = a.get("/v1/query/series", params).json()
    assert not any(s["cached"] for s in first["meta"]["segments"]), first["meta"]
    before = cache_hits(b, "redis")
    second = b.get("/v1/query/series", params).json()
    assert strip_meta(second) == strip_meta(first)
    assert any(s["cached"] for s in second["meta"]["segments"]), second["meta"]
    assert cache_hits(b, "redis") > before


def test_a_rate_limit_is_counted_across_both_routers(routers, data):
    a, b = (r.as_("key-other") for r in routers)
    stream, w = data["stream"], data["window"]
    batch = [{"stream": stream, "key": "rl", "ts": w.start + i, "value": 1.0} for i in range(EVENTS_LIMIT * 3 // 5)]
    assert a.post("/v1/events", batch).status_code == 202  # 600 of 1000 through a
    r = b.post("/v1/events", batch)                        # 600 more through b: over the shared budget
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1


def poll_report(router: Remote, rid: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = router.get(f"/v1/reports/{rid}").json()
        if body["status"] in ("done", "failed"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_report_built_by_one_router_downloads_from_the_other(routers, data, fmt):
    a, b = routers
    w = data["window"]
    body = {"stream": data["stream"], "from": w.start + 1234, "to": w.end - 5, "kind": "events", "format": fmt}
    r = a.post("/v1/reports", body)
    assert r.status_code == 202, r.text
    rid = r.json()["id"]
    st = poll_report(b, rid)  # the other router sees its progress
    assert st["status"] == "done", st["error"]
    one, two = a.get(f"/v1/reports/{rid}/download"), b.get(f"/v1/reports/{rid}/download")
    assert one.status_code == two.status_code == 200, two.text
    assert one.content == two.content and len(two.content) == st["bytes"]
    for h in ("Content-Type", "Content-Disposition", "X-Content-SHA256", "ETag"):
        assert one.headers[h] == two.headers[h], h
    assert two.headers["X-Content-SHA256"] == st["sha256"]
    assert two.headers["Content-Disposition"] == f"attachment; filename=report-{rid}.{fmt}"
    assert st["rows"] == sum(1 for e in data["oracle"].events if w.start + 1234 <= e[1] < w.end - 5)


# ---- two schedulers ------------------------------------------------------------------------------

def runs(stores) -> list[dict]:
    with psycopg.connect(stores.postgres_url) as conn:
        rows = conn.execute("SELECT id, job, status, stats->>'scheduler', requested, started, finished "
                            "FROM job_runs WHERE requested_by = 'scheduler' ORDER BY id").fetchall()
    return [dict(zip(("id", "job", "status", "scheduler", "requested", "started", "finished"), r)) for r in rows]


def overlaps(records: list[dict], killed_at: datetime) -> list[tuple[int, int]]:
    """Pairs of runs of one job whose started..finished intervals overlap (a run its killed
    process never finished ends at the kill, when its job lock went with the connection)."""
    spans: dict[str, list[tuple[datetime, datetime, int]]] = {}
    for r in records:
        if r["started"] is not None:
            spans.setdefault(r["job"], []).append((r["started"], r["finished"] or killed_at, r["id"]))
    out = []
    for items in spans.values():
        items.sort()
        out += [(p[2], q[2]) for p, q in zip(items, items[1:]) if q[0] < p[1]]
    return out


def leader_name(stores) -> str | None:
    from scheduler.leader import current_leader

    with psycopg.connect(stores.postgres_url) as conn:
        leader = current_leader(conn)
    return leader and leader["scheduler"]


def wait_for(what: str, check, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.2)


def test_two_schedulers_one_leader_and_a_takeover_after_sigkill(stores, routers, tmp_path):
    import socket

    fast = dict(TIERSTORE_FLUSH_INTERVAL="1000", TIERSTORE_REFRESH_INTERVAL="1000",
                TIERSTORE_ALERTS_INTERVAL="1000", TIERSTORE_SCHEDULER_LEADER_POLL="300")
    host = socket.gethostname()
    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda n: start(process_env(stores, tmp_path / n, **fast), "scheduler",
                                              log=tmp_path / f"{n}.log"), ("s1", "s2")))
    names = {f"{host}:{p.pid}": p for p in procs}
    logs = {f"{host}:{p.pid}": tmp_path / f"{n}.log" for p, n in zip(procs, ("s1", "s2"))}
    try:
        first = wait_for("a leader", lambda: leader_name(stores))
        assert first in names
        (standby,) = set(names) - {first}
        printed = lambda name, role: f"{name}: {role}" in logs[name].read_text()  # noqa: E731
        wait_for("the roles printed", lambda: printed(first, "leader") and printed(standby, "standby"), timeout=10)
        floor = max([r["id"] for r in runs(stores)], default=0)
        wait_for("runs of the leader", lambda: len([r for r in runs(stores) if r["id"] > floor
                                                    and r["status"] == "done"]) >= 8)
        before = [r for r in runs(stores) if r["id"] > floor]
        assert {r["scheduler"] for r in before} == {first}, "only the leader runs scheduled jobs"
        assert metric_leader(routers[0]) == first

        killed = names[first]
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        killed_at = datetime.now(timezone.utc)
        (survivor,) = set(names) - {first}
        assert wait_for("the takeover", lambda: leader_name(stores) == survivor, timeout=30)
        wait_for("flush and refresh runs of the new leader",
                 lambda: {r["job"] for r in runs(stores) if r["scheduler"] == survivor and r["status"] == "done"
                          and r["requested"] > killed_at} >= {"flush", "refresh"})
        assert metric_leader(routers[0]) == survivor
        out = subprocess.run([sys.executable, "-m", "tierstore.cli", "jobs", "leader"], capture_output=True, text=True,
                             env=process_env(stores, tmp_path / "cli"), cwd=ROOT, timeout=120)
        assert json.loads(out.stdout.strip().splitlines()[-1])["leader"]["scheduler"] == survivor, out.stderr[-2000:]
        records = [r for r in runs(stores) if r["id"] > floor]
        assert not overlaps(records, killed_at), overlaps(records, killed_at)
        assert all(r["scheduler"] == survivor for r in records if r["requested"] > killed_at)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except Exception:  # noqa: BLE001
                pass
        kill_leftovers([p.pid for p in procs])
    assert not leader_name(stores), "a stopped scheduler releases the leader lock"


def metric_leader(router: Remote) -> str | None:
    text = router.get("/metrics").text
    found = re.findall(r'^tierstore_scheduler_leader\{scheduler="([^"]+)"\} 1\.0$', text, re.M)
    return found[0] if len(found) == 1 else None


class RecordingScheduler:
    """What SchedulerLeader starts and stops (APScheduler's start/shutdown), recorded."""

    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def start(self) -> None:
        self.log.append(f"{self.name} start")

    def shutdown(self, wait: bool = True) -> None:
        self.log.append(f"{self.name} stop")


def test_the_leader_steps_down_when_its_session_ends_and_a_standby_takes_over(stores):
    from scheduler.leader import SchedulerLeader, current_leader
    from scheduler.runner import JobRunner

    log: list[str] = []

    def leader(name: str) -> SchedulerLeader:
        runner = JobRunner(None, stores, {}, jobs=[])
        return SchedulerLeader(runner, stores, name=name, poll_ms=100,
                               build=lambda r, s: RecordingScheduler(log, name))

    one, two = leader("one"), leader("two")
    try:
        assert one.step() and not two.step() and one.step()  # one leads; two stands by
        assert log == ["one start"]
        with psycopg.connect(stores.postgres_url, autocommit=True) as conn:
            held = current_leader(conn)
            assert held["scheduler"] == "one"
            # PostgreSQL ends the leader's session (a restart, a broken network): its lock is gone
            conn.execute("SELECT pg_terminate_backend(%s)", (held["backend_pid"],))
            wait_for("the session's end", lambda: current_leader(conn) is None, timeout=10)
            assert two.step() and current_leader(conn)["scheduler"] == "two"
            assert not one.step(), "the old leader noticed its session ended and stepped down"
            assert log == ["one start", "two start", "one stop"]
            assert not one.step()  # and stays a standby while two leads
            two.close()
            assert current_leader(conn) is None and one.step()  # released at once, not when the server notices
            assert log[-2:] == ["two stop", "one start"]
    finally:
        one.close()
        two.close()
