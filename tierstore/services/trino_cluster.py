"""Trino workers: with trino_workers = N > 0, `tierstore services up` runs the coordinator
(tierstore.services.trino.TrinoService, include-coordinator=false) plus N worker JVMs on loopback.

Worker i (1-based) lives in $TIERSTORE_HOME/trino-worker-i (its own etc/ and data/, node.id, PID
file run/trino-worker-i.pid, log logs/trino-worker-i.log) and listens on
InstanceLayout.trino_worker_port(i). Every worker has the coordinator's catalog (the Hive file
metastore under the cold root, the cold root itself, the s3proxy endpoint): the metastore is read
and written by the coordinator only, the data files by every worker, all on this machine's disk.
"""
from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path

from tierstore.layout import TRINO_MAX_WORKERS
from tierstore.services.base import Service
from tierstore.services.trino import TrinoService


class TrinoWorkerService(TrinoService):
    """One Trino worker of `coordinator`'s cluster; it announces itself to the coordinator's
    discovery service and runs the tasks the coordinator schedules."""

    ready_timeout = 240.0

    def __init__(self, coordinator: TrinoService, index: int) -> None:
        super().__init__(coordinator.layout, workers=coordinator.workers, cold_dir=coordinator.cold_dir,
                         s3_endpoint=coordinator.s3_endpoint)
        self.ready_timeout = TrinoWorkerService.ready_timeout
        self.coordinator = coordinator
        self.index = index
        self.name = f"trino-worker-{index}"

    @property
    def port(self) -> int:
        return self.layout.trino_worker_port(self.index)

    @property
    def coordinator_url(self) -> str:
        return self.coordinator.url

    @property
    def base_dir(self) -> Path:
        return self.layout.home / self.name

    def node_id(self) -> str:
        digest = hashlib.sha1(f"{self.layout.home}:{self.port}".encode()).hexdigest()[:16]
        return f"tierstore-w{self.index}-{digest}"

    def server_properties(self) -> dict[str, str]:
        return {
            "coordinator": "false",
            "http-server.http.port": str(self.port),
            "discovery.uri": self.coordinator_url,
            "query.max-memory": f"{max(self.workers, 1)}GB",
            "query.max-memory-per-node": "1GB",
            "memory.heap-headroom-per-node": "512MB",
        }

    def heap(self) -> str:
        """2G: 1G of query memory plus 512M headroom, the rest for the JVM itself."""
        return "-Xmx2G"

    def probe(self) -> bool:
        """Ready once the worker has started; the coordinator's probe waits for it to be active."""
        try:
            with urllib.request.urlopen(f"{self.url}/v1/info", timeout=3) as response:
                info = json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return info.get("starting", True) is False and info.get("coordinator") is False


def workers_of(coordinator: TrinoService, *, recorded: bool = False) -> list[TrinoWorkerService]:
    """The coordinator's workers 1..N; with recorded=True also any higher-numbered worker whose PID
    file exists (left from a run with more workers), so `down` and `status` still reach it."""
    count = coordinator.workers
    if recorded:
        for index in range(count + 1, TRINO_MAX_WORKERS + 1):
            if (coordinator.layout.run_dir / f"trino-worker-{index}.pid").exists():
                count = index
    return [TrinoWorkerService(coordinator, i) for i in range(1, count + 1)]


def stale_workers(coordinator: TrinoService) -> list[TrinoWorkerService]:
    """Workers with a PID file but beyond the coordinator's count (none for a worker itself)."""
    if type(coordinator) is not TrinoService:
        return []
    return workers_of(coordinator, recorded=True)[coordinator.workers:]


def expand(services: list[Service], *, recorded: bool = False) -> list[Service]:
    """services with each Trino coordinator followed by its workers (see workers_of)."""
    out: list[Service] = []
    for svc in services:
        out.append(svc)
        if type(svc) is TrinoService:
            out.extend(workers_of(svc, recorded=recorded))
    return out


def worker_node_ids(coordinator: TrinoService) -> dict[str, str]:
    """node_id -> http_uri of the active workers, as the coordinator sees them."""
    rows = coordinator.query(
        "SELECT node_id, http_uri FROM system.runtime.nodes WHERE coordinator = false AND state = 'active'"
    )
    return {r[0]: r[1] for r in rows}
