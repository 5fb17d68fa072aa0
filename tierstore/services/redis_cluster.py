"""Redis Cluster on loopback: 3 masters and 3 replicas of the Debian redis-server (issue 12).

`tierstore services up --redis cluster` (or TIERSTORE_REDIS_MODE=cluster) runs six cluster-enabled
nodes instead of the one standalone server. The first node listens on the layout's redis_port, so
the instance's redis_url (redis://127.0.0.1:<base>/0) names a node of the cluster; the others on
port_base + 4 .. port_base + 8 (their cluster bus: port + 10000). Each node keeps its data and
nodes.conf under $TIERSTORE_HOME/redis-cluster/<port>/ and its PID in run/redis-<port>.pid; a
restart of the nodes finds the cluster they formed. The first `up` creates the cluster with
`redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`; every `up` waits until each
node reports cluster_state:ok, the 16384 slots are covered and every master has a replica in sync.
`down` stops the six recorded PIDs.
"""
from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tierstore.layout import REDIS_OFFSET, InstanceLayout
from tierstore.services.base import Service
from tierstore.services.redis import RedisService
from tierstore.services.support import ServiceError, port_in_use, say

# offsets from the port base of the six nodes: the first is the standalone Redis' port
NODE_OFFSETS = (REDIS_OFFSET, 4, 5, 6, 7, 8)
MASTERS = 3
SLOTS = 16384
BUS_OFFSET = 10000
MODES = ("standalone", "cluster")


def mode_file(layout: InstanceLayout) -> Path:
    """Records the mode of the Redis that `up` last started (`down` and `status` follow it)."""
    return layout.run_dir / "redis.mode"


def recorded_mode(layout: InstanceLayout) -> str | None:
    try:
        mode = mode_file(layout).read_text().strip()
    except FileNotFoundError:
        return None
    return mode if mode in MODES else None


def record_mode(layout: InstanceLayout, mode: str) -> None:
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    mode_file(layout).write_text(mode + "\n")


def cluster_ports(layout: InstanceLayout) -> list[int]:
    """The six nodes' ports; the first three become the masters at creation."""
    return [layout.port_base + offset for offset in NODE_OFFSETS]


class RedisClusterNode(RedisService):
    """One cluster-enabled redis-server: the standalone service's configuration plus the cluster lines."""

    ready_timeout = 30.0

    def __init__(self, layout: InstanceLayout, port: int) -> None:
        super().__init__(layout)
        self._port = port
        self.name = f"redis-{port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def data_dir(self) -> Path:
        return self.layout.home / "redis-cluster" / str(self._port)

    @property
    def log_file(self) -> Path:
        return self.layout.home / "logs" / f"redis-cluster-{self._port}.log"

    up = Service.up  # a node is one plain server (RedisService.up switches modes)

    def configure(self) -> None:
        super().configure()
        with self.conf_file.open("a") as conf:
            conf.write("\n".join([
                "cluster-enabled yes",
                f'cluster-config-file "{self.data_dir / "nodes.conf"}"',
                "cluster-node-timeout 3000",
                "cluster-require-full-coverage yes",
                # a replica whose master died takes over however long its link was down
                "cluster-replica-validity-factor 0",
                "",
            ]))

    def cluster_info(self) -> dict[str, str]:
        """CLUSTER INFO of this node as text fields ({} when it does not answer)."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=1)
        try:
            text = client.execute_command("CLUSTER INFO")
        except redis.RedisError:
            return {}
        finally:
            client.close()
        if isinstance(text, dict):  # redis-py parses CLUSTER INFO itself
            return {str(k): str(v) for k, v in text.items()}
        text = text.decode() if isinstance(text, bytes) else str(text)
        return dict(line.split(":", 1) for line in text.strip().splitlines() if ":" in line)


class RedisClusterService(Service):
    """The six nodes as one service named "redis" (its port: the first node's, the layout's redis_port)."""

    name = "redis"
    ready_timeout = 90.0

    def __init__(self, layout: InstanceLayout) -> None:
        super().__init__(layout)
        self.nodes = [RedisClusterNode(layout, port) for port in cluster_ports(layout)]

    @property
    def port(self) -> int:
        return self.nodes[0].port

    @property
    def log_file(self) -> Path:
        return self.layout.home / "logs" / "redis-cluster.log"

    def marker(self) -> str:
        return self.nodes[0].marker()

    def configure(self) -> None:
        for node in self.nodes:
            node.configure()

    def launch(self, log) -> subprocess.Popen:  # pragma: no cover - the nodes launch themselves
        raise NotImplementedError

    def recorded_pid(self) -> int | None:
        return self.nodes[0].recorded_pid()

    # -- lifecycle

    def up(self) -> None:
        started = time.monotonic()
        standalone = RedisService(self.layout)
        if standalone.recorded_pid() is not None:
            say("redis: stopping the standalone server, cluster mode asked for")
            standalone.down()
        for node in self.nodes:
            if node.recorded_pid() is None and port_in_use(node.port):
                raise ServiceError(
                    f"redis: cluster port {node.port} is already in use by a process this instance did not "
                    f"start; stop it or choose another TIERSTORE_PORT_BASE"
                )
        record_mode(self.layout, "cluster")
        # Every node at once: started one by one, a replica whose master is not up yet would win an
        # election (after cluster-node-timeout) with the data it had when it stopped, and the master
        # starting later would resync from it, dropping newer acknowledged writes.
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            for done in [pool.submit(node.up) for node in self.nodes]:
                done.result()
        infos = [node.cluster_info() for node in self.nodes]
        if all(int(i.get("cluster_known_nodes", 0)) == 1 and int(i.get("cluster_slots_assigned", 0)) == 0
               for i in infos):
            self._create()
        elif any(int(i.get("cluster_known_nodes", 0)) != len(self.nodes) for i in infos):
            raise ServiceError(
                f"redis: the nodes under {self.nodes[0].data_dir.parent} belong to different clusters; "
                f"run `tierstore services down` and remove that directory to start afresh"
            )
        self.wait_cluster_ready()
        say(f"redis: cluster of {MASTERS} masters and {len(self.nodes) - MASTERS} replicas ready on "
            f"127.0.0.1:{','.join(str(n.port) for n in self.nodes)} in {time.monotonic() - started:.1f}s")

    def _create(self) -> None:
        cli = Path(self.nodes[0].binary() or "redis-server").with_name("redis-cli")
        cmd = [str(cli), "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
               "--cluster-replicas", "1", "--cluster-yes"]
        say(f"redis: creating the cluster ({' '.join(cmd[1:])})")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"\n=== redis-cli --cluster create {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
            log.flush()
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=120, check=False)
        if done.returncode != 0:
            raise ServiceError(f"redis: `redis-cli --cluster create` failed (exit {done.returncode}); "
                               f"read {self.log_file}")

    def problem(self) -> str | None:
        """Why the cluster is not ready (None: every node ok, every slot covered, every replica in sync)."""
        import redis

        for node in self.nodes:
            if node.recorded_pid() is None:
                return f"node {node.port} is not running"
            info = node.cluster_info()
            if info.get("cluster_state") != "ok":
                return f"node {node.port} reports cluster_state:{info.get('cluster_state', 'unreachable')}"
            if int(info.get("cluster_slots_ok", 0)) != SLOTS:
                return f"node {node.port} sees {info.get('cluster_slots_ok')} of {SLOTS} slots ok"
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=1)
        try:
            covered = 0
            for start, end, _master, *replicas in client.execute_command("CLUSTER SLOTS"):
                covered += int(end) - int(start) + 1
                if not replicas:
                    return f"slots {start}-{end} have no replica"
                for replica in replicas:
                    port = int(replica[1])
                    link = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=1)
                    try:
                        if link.info("replication").get("master_link_status") != "up":
                            return f"replica {port} is not in sync with its master"
                    finally:
                        link.close()
            if covered != SLOTS:
                return f"CLUSTER SLOTS covers {covered} of {SLOTS} slots"
        except redis.RedisError as exc:
            return f"node {self.port} does not answer CLUSTER SLOTS ({exc})"
        finally:
            client.close()
        return None

    def wait_cluster_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            problem = self.problem()
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise ServiceError(f"redis: the cluster is not ready within {self.ready_timeout:.0f}s: {problem}; "
                                   f"read {self.log_file} and {self.nodes[0].log_file.parent}/redis-cluster-*.log")
            time.sleep(0.25)

    def probe(self) -> bool:
        return self.problem() is None

    def down(self) -> None:
        for node in self.nodes:
            node.down()
        say("redis: cluster stopped")

    def status(self) -> tuple[str, int | None]:
        pid = self.recorded_pid()
        running = [n for n in self.nodes if n.recorded_pid() is not None]
        if not running:
            return "stopped", None
        return ("ready" if self.probe() else "running"), pid

    def status_lines(self) -> list[str]:
        """One line per node: its port, role and PID (`tierstore services status` prints them)."""
        lines = []
        for node in self.nodes:
            state, pid = node.status()
            role = "-"
            if state == "ready":
                import redis

                client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2, socket_connect_timeout=1)
                try:
                    role = {"slave": "replica"}.get(r := client.info("replication").get("role", "-"), r)
                except redis.RedisError:
                    pass
                finally:
                    client.close()
            lines.append(f"  {node.name:<11} {state:<8} 127.0.0.1:{node.port:<6} {role:<7} pid {pid or '-'}")
        return lines


def redis_service(layout: InstanceLayout, mode: str | None = None) -> Service:
    """The "redis" service of this mode; mode None: the one `up` last started (standalone by default)."""
    mode = mode or recorded_mode(layout) or "standalone"
    if mode not in MODES:
        raise ServiceError(f"unknown Redis mode {mode!r}; choose standalone or cluster")
    return RedisClusterService(layout) if mode == "cluster" else RedisService(layout)


__all__ = ["MODES", "RedisClusterNode", "RedisClusterService", "cluster_ports", "recorded_mode", "record_mode",
           "redis_service"]
