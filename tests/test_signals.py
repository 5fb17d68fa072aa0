"""No orphans (issue 8, finding 6): SIGTERM, SIGINT or SIGHUP to `tierstore serve` or `tierstore
demo` stops every process they started (gunicorn master and workers); SIGKILL to the demo still
stops its server (PR_SET_PDEATHSIG). Processes are found by scanning /proc (no psutil)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.api_support import isolated_settings

pytestmark = pytest.mark.slow  # each case boots a gunicorn server (~20 s on two cores)

ROOT = Path(__file__).resolve().parent.parent
STOP_S = 25  # gunicorn's graceful timeout is 10 s; idle workers stop at once


@pytest.fixture(scope="module")
def env(settings) -> dict[str, str]:
    s = isolated_settings(settings, "signals", redis_db=22)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERSTORE_") or k in
           ("TIERSTORE_HOME", "TIERSTORE_PORT_BASE")}
    env.update(TIERSTORE_POSTGRES_URL=s.postgres_url, TIERSTORE_REDIS_URL=s.redis_url, PYTHONPATH=str(ROOT))
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes() -> list[tuple[int, int, int, str]]:
    """(pid, ppid, pgid, state) of every process, from /proc/<pid>/stat."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out.append((int(entry), int(fields[1]), int(fields[2]), fields[0]))
    return out


def group(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    return [pid for pid, _, g, state in processes() if g == pgid and state != "Z"]


def children(pid: int) -> list[int]:
    return [p for p, ppid, _, state in processes() if ppid == pid and state != "Z"]


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or a worker still booting
            pass
        time.sleep(0.2)
    raise AssertionError(f"nothing answered /healthz on port {port} within {timeout} s")


def wait_gone(pgids: list[int], timeout: float = STOP_S) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for g in pgids for pid in group(g)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def start(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "tierstore.cli", *args], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_leftovers(pgids: list[int]) -> None:
    for g in pgids:
        try:
            os.killpg(g, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_to_serve_stops_master_and_workers(env, sig, tmp_path):
    port = free_port()
    proc = start(env, "serve", "--port", str(port), "--workers", "2", log=tmp_path / "serve.log")
    try:
        wait_healthy(port, proc)
        assert len(group(proc.pid)) >= 3, "expected gunicorn's master and two workers"
        proc.send_signal(sig)
        proc.wait(STOP_S)
        assert wait_gone([proc.pid]) == [], (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        kill_leftovers([proc.pid])
        proc.wait(10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL],
                         ids=lambda s: s.name)
def test_a_stop_signal_to_the_demo_stops_its_server(env, sig, tmp_path):
    port = free_port()
    demo = start(env, "demo", "--days", "3", "--port", str(port), log=tmp_path / "demo.log")
    pgids = [demo.pid]
    try:
        wait_healthy(port, demo)
        servers = children(demo.pid)
        assert len(servers) == 1, servers
        pgids.append(servers[0])  # the server runs in its own session: a group of its own
        assert len(group(servers[0])) >= 3, "expected gunicorn's master and two workers"
        demo.send_signal(sig)
        code = demo.wait(STOP_S + 10)
        log = (tmp_path / "demo.log").read_text()[-3000:]
        assert code == (-sig if sig == signal.SIGKILL else 128 + sig), (code, log)
        assert wait_gone(pgids) == [], log
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        kill_leftovers(pgids)
        demo.wait(10)
