"""Debian's Prometheus (package `prometheus`, which carries promtool) for checking the alert rules
and scraping a router: installed on demand, run on loopback with a generated configuration and its
own data directory, stopped by its PID.

    install_prometheus(log_file)                 -> (prometheus, promtool) paths
    with PrometheusServer(work_dir, targets=["127.0.0.1:8000"], rule_files=[rules]) as prom:
        prom.query("tierstore_deadletter_events")

Not one of the instance's services (`tierstore services up`): it needs a router to scrape, which
tests and operators start themselves. deploy/prometheus/prometheus.yml is the operators' example.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

from tierstore.services.support import ServiceError, apt_install, say

BIN_DIR = Path("/usr/bin")


def _binaries() -> tuple[str | None, str | None]:
    def find(name: str) -> str | None:
        return shutil.which(name) or (str(BIN_DIR / name) if (BIN_DIR / name).exists() else None)

    return find("prometheus"), find("promtool")


def install_prometheus(log_file: Path) -> tuple[str, str]:
    """The paths of prometheus and promtool, installing Debian's package when either is missing.
    Raises ServiceError when apt-get fails (its output is in log_file)."""
    prometheus, promtool = _binaries()
    if prometheus is None or promtool is None:
        say("prometheus: missing, installing the Debian package")
        log_file.parent.mkdir(parents=True, exist_ok=True)
        apt_install(["prometheus"], log_file)
        prometheus, promtool = _binaries()
        if prometheus is None or promtool is None:
            raise ServiceError(f"prometheus/promtool still missing after apt-get install; read {log_file}")
    return prometheus, promtool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_config(targets: Sequence[str], rule_files: Sequence[Path], *, interval_s: float = 1.0) -> dict[str, Any]:
    """A prometheus.yml (as a dict: JSON is YAML) scraping `targets` ("host:port") at /metrics and
    evaluating `rule_files`, both every `interval_s` seconds. honor_labels keeps the job metrics'
    own `job` label (deploy/prometheus/rules.yml)."""
    every = f"{int(interval_s * 1000)}ms"
    return {"global": {"scrape_interval": every, "evaluation_interval": every, "scrape_timeout": every},
            "rule_files": [str(Path(p).resolve()) for p in rule_files],
            "scrape_configs": [{"job_name": "tierstore", "honor_labels": True, "metrics_path": "/metrics",
                                "static_configs": [{"targets": list(targets)}]}]}


class PrometheusServer:
    """A prometheus process over `work_dir` (config, data, log), listening on a free loopback port."""

    def __init__(self, work_dir: Path, *, targets: Sequence[str], rule_files: Sequence[Path] = (),
                 interval_s: float = 1.0, ready_timeout_s: float = 30.0) -> None:
        self.work_dir = Path(work_dir)
        self.targets, self.rule_files, self.interval_s = list(targets), list(rule_files), interval_s
        self.ready_timeout_s = ready_timeout_s
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.work_dir / "prometheus.log"

    def start(self) -> "PrometheusServer":
        prometheus, _ = install_prometheus(self.log_file)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "prometheus.yml"
        config.write_text(json.dumps(scrape_config(self.targets, self.rule_files, interval_s=self.interval_s),
                                     indent=2))
        self.port = free_port()
        cmd = [prometheus, f"--config.file={config}", f"--storage.tsdb.path={self.work_dir / 'data'}",
               f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"]
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, close_fds=True, cwd=self.work_dir)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import requests

        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(f"prometheus exited with code {self.proc.returncode}; read {self.log_file}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise ServiceError(f"prometheus did not become ready in {self.ready_timeout_s:.0f}s; read {self.log_file}")

    def api(self, path: str, **params: Any) -> Any:
        """The `data` of a GET /api/v1/<path> answer; ServiceError unless its status is success."""
        import requests

        body = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        if body.get("status") != "success":
            raise ServiceError(f"prometheus /api/v1/{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{"metric": {labels}, "value": [ts, "text"]}]."""
        return self.api("query", query=expr)["result"]

    def stop(self) -> None:
        """SIGTERM to the recorded PID (SIGKILL after 20 s); idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
