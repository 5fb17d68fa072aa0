"""Redis, the hot tier's server: the Debian redis-server with an append-only file."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tierstore.services.base import Service
from tierstore.services.support import ServiceError, apt_install, say


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

    def up(self) -> None:
        """Start the standalone server, after stopping this instance's cluster if that ran (its first
        node holds the same port)."""
        from tierstore.services.redis_cluster import RedisClusterService, record_mode, recorded_mode

        if recorded_mode(self.layout) == "cluster":
            cluster = RedisClusterService(self.layout)
            if any(node.recorded_pid() is not None for node in cluster.nodes):
                say("redis: stopping the cluster, standalone mode asked for")
                cluster.down()
        record_mode(self.layout, "standalone")
        super().up()

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
                    "databases 128",
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
