"""The service skeleton: PID bookkeeping, start, wait until ready, stop, status.

A concrete service says how to install, configure, launch and probe its server; `Service.up`
and `Service.down` do the rest the same way for every one of them.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path

from tierstore.layout import InstanceLayout
from tierstore.services.support import ServiceError, pid_alive, pid_cmdline, port_in_use, say


class Service(ABC):
    name: str
    ready_timeout: float = 60.0
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 30.0

    def __init__(self, layout: InstanceLayout) -> None:
        self.layout = layout

    @property
    @abstractmethod
    def port(self) -> int: ...

    @property
    def pid_file(self) -> Path:
        return self.layout.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.layout.home / "logs" / f"{self.name}.log"

    @abstractmethod
    def marker(self) -> str:
        """Text in /proc/<pid>/cmdline proving a recorded PID is still our process."""

    def install(self) -> None:
        """Install the server if it is missing."""

    @abstractmethod
    def configure(self) -> None:
        """Write this instance's configuration (idempotent)."""

    @abstractmethod
    def launch(self, log) -> subprocess.Popen:
        """Start the server detached, its output going to log."""

    @abstractmethod
    def probe(self) -> bool:
        """One readiness check: True only when the server really answers."""

    def after_ready(self) -> None:
        """Idempotent provisioning once the server answers (roles, buckets, ...)."""

    def config_files(self) -> list[Path]:
        """Files whose change needs a restart to take effect."""
        return []

    def restart_reason(self) -> str | None:
        """Why a running, ready server must be restarted to pick up its configuration."""
        self.configure()
        recorded = self.config_stamp_file.read_text() if self.config_stamp_file.exists() else None
        if recorded is not None and recorded != self.config_fingerprint():
            return "its configuration changed"
        return None

    @property
    def config_stamp_file(self) -> Path:
        return self.layout.run_dir / f"{self.name}.config-sha256"

    def config_fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path in self.config_files():
            digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()

    # -- PID bookkeeping

    def recorded_pid(self) -> int | None:
        """The recorded PID if that process is alive and still ours."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if pid_alive(pid) and self.marker() in pid_cmdline(pid):
            return pid
        return None

    def record_pid(self, pid: int) -> None:
        tmp = self.pid_file.with_suffix(".pid.tmp")
        tmp.write_text(f"{pid}\n")
        tmp.replace(self.pid_file)

    # -- lifecycle

    def up(self) -> None:
        started = time.monotonic()
        pid = self.recorded_pid()
        if pid is not None:
            self.wait_ready(pid, None)
            reason = self.restart_reason()
            if reason is None:
                self.after_ready()
                say(f"{self.name}: already running and ready on 127.0.0.1:{self.port} (pid {pid})")
                return
            say(f"{self.name}: restarting, {reason}")
            self.down()
        if port_in_use(self.port):
            raise ServiceError(
                f"{self.name}: port {self.port} is already in use by a process this instance did not "
                f"start (pid file {self.pid_file}); stop it or choose another TIERSTORE_PORT_BASE"
            )
        self.install()
        self.configure()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        say(f"{self.name}: starting on 127.0.0.1:{self.port} (log {self.log_file})")
        with open(self.log_file, "ab") as log:
            log.write(f"\n=== {self.name} start {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
            log.flush()
            proc = self.launch(log)
        self.record_pid(proc.pid)
        self.config_stamp_file.write_text(self.config_fingerprint())
        self.wait_ready(proc.pid, proc)
        self.after_ready()
        say(f"{self.name}: ready on 127.0.0.1:{self.port} (pid {proc.pid}) in {time.monotonic() - started:.1f}s")

    def wait_ready(self, pid: int, proc: subprocess.Popen | None) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if proc is not None and proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with code {proc.returncode} during start-up; read {self.log_file}"
                )
            if not pid_alive(pid):
                raise ServiceError(f"{self.name} (pid {pid}) died during start-up; read {self.log_file}")
            if self.probe():
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{self.name} (pid {pid}) did not become ready within {self.ready_timeout:.0f}s; "
                    f"read {self.log_file}"
                )
            time.sleep(0.25)

    def down(self) -> None:
        pid = self.recorded_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            say(f"{self.name}: not running")
            return
        say(f"{self.name}: stopping pid {pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, self.stop_signal)
        deadline = time.monotonic() + self.stop_timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            say(f"{self.name}: pid {pid} ignored the stop signal for {self.stop_timeout:.0f}s, killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        say(f"{self.name}: stopped")

    def status(self) -> tuple[str, int | None]:
        pid = self.recorded_pid()
        if pid is None:
            return "stopped", None
        return ("ready" if self.probe() else "running"), pid

    def spawn(self, cmd: list[str], log, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            **kwargs,
        )
