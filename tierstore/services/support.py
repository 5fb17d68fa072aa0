"""Shared machinery of the service modules: progress lines, processes, installs, locks.

Installs go through apt-get (servers) or Maven (jars, through ~/.m2) and unpack into the
machine-wide cache under a file lock, so instances never race on one cache entry.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import resource
import shutil
import socket
import subprocess
import threading
from pathlib import Path

MIN_OPEN_FILES = 4096


class ServiceError(RuntimeError):
    """A local service could not be installed, started, made ready or stopped."""


_print_lock = threading.Lock()
_apt_lock = threading.Lock()
_mvn_lock = threading.Lock()


def say(message: str) -> None:
    with _print_lock:
        print(f"[services] {message}", flush=True)


def cache_dir() -> Path:
    """Per-machine cache shared by every instance (unpacked servers, downloaded jars)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tierstore"

# --- small process helpers -------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in (b"Z", b"X")


def pid_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_logged(cmd: list[str], log_file: Path, what: str, **kwargs) -> None:
    """Run a setup command, appending its output to the service log; fail with a sentence."""
    with open(log_file, "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        result = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **kwargs)
    if result.returncode != 0:
        raise ServiceError(f"{what} failed (exit {result.returncode}); read {log_file}")


def apt_install(packages: list[str], log_file: Path) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    with _apt_lock:
        try:
            run_logged(install, log_file, f"apt-get install {' '.join(packages)}", env=env)
        except ServiceError:
            run_logged(["apt-get", "update"], log_file, "apt-get update", env=env)
            run_logged(install, log_file, f"apt-get install {' '.join(packages)}", env=env)


def mvn_copy(artifact: str, output_dir: Path, log_file: Path) -> Path:
    """Fetch one Maven artifact (through ~/.m2) into output_dir and return its path."""
    if shutil.which("mvn") is None:
        raise ServiceError(f"Maven (mvn) is not on PATH; it is needed to fetch {artifact}")
    output_dir.mkdir(parents=True, exist_ok=True)
    cmd = ["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={output_dir}"]
    with _mvn_lock:
        run_logged(cmd, log_file, f"fetching {artifact} with Maven")
    group, name, version, ext, *classifier = artifact.split(":")
    suffix = f"-{classifier[0]}" if classifier else ""
    path = output_dir / f"{name}-{version}{suffix}.{ext}"
    if not path.is_file():
        raise ServiceError(f"Maven reported success but {path} is missing; read {log_file}")
    return path


@contextlib.contextmanager
def file_lock(path: Path):
    """Machine-wide lock so two instances never unpack the same cache entry at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def java_major(java: Path) -> int:
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.TimeoutExpired):
        return 0
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def raise_open_files_limit() -> None:
    """Children inherit it: Trino refuses to start with fewer than 4096 open files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= MIN_OPEN_FILES:
        return
    if hard != resource.RLIM_INFINITY and hard < MIN_OPEN_FILES:
        hard = MIN_OPEN_FILES  # root may raise the hard limit too
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (MIN_OPEN_FILES, hard))
    except (ValueError, OSError) as exc:
        raise ServiceError(f"cannot raise the open-files limit to {MIN_OPEN_FILES} (Trino needs it): {exc}") from exc


def write_properties(path: Path, values: dict[str, str]) -> None:
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
