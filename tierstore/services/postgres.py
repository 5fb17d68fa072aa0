"""PostgreSQL 15, the warm tier's server: its own cluster, run as the postgres OS user.

TimescaleDB is preloaded when the machine has the extension; the tierstore role and database are
created once the server answers.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from tierstore.layout import PG_DATABASE, PG_USER
from tierstore.services.base import Service
from tierstore.services.support import ServiceError, apt_install, run_logged, say

PG_MAJOR = 15
PG_BIN = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
PG_SUPERUSER = "postgres"
PG_OS_USER = "postgres"
UNIX_SOCKET_PATH_MAX = 100


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
