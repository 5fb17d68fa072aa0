"""`up`, `down` and `status` over a selection of the services, run concurrently."""
from __future__ import annotations

import concurrent.futures
import time
from typing import Iterable

from tierstore.layout import InstanceLayout
from tierstore.services.base import Service
from tierstore.services.postgres import PostgresService
from tierstore.services.redis import RedisService
from tierstore.services.redis_cluster import redis_service
from tierstore.services.s3 import S3ProxyService
from tierstore.services.support import ServiceError, raise_open_files_limit, say
from tierstore.services.trino import TrinoService
from tierstore.services.trino_cluster import expand as expand_trino

SERVICE_CLASSES: dict[str, type[Service]] = {
    "redis": RedisService,
    "postgres": PostgresService,
    "trino": TrinoService,
    "s3": S3ProxyService,
}
SERVICE_NAMES = tuple(SERVICE_CLASSES)


def select(layout: InstanceLayout, only: Iterable[str] | None = None, redis_mode: str | None = None, *,
           recorded: bool = False) -> list[Service]:
    """The selected services. redis_mode: "standalone" or "cluster" (None: the mode `up` last started,
    standalone by default); `trino` brings its workers (trino_workers setting; with recorded=True also
    workers left running from a run with more of them)."""
    names = list(only) if only else list(SERVICE_NAMES)
    unknown = [n for n in names if n not in SERVICE_CLASSES]
    if unknown:
        raise ServiceError(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICE_NAMES)}")
    return expand_trino([redis_service(layout, redis_mode) if n == "redis" else SERVICE_CLASSES[n](layout)
                         for n in SERVICE_NAMES if n in names], recorded=recorded)


def prepare_home(layout: InstanceLayout) -> None:
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


def up(layout: InstanceLayout, only: Iterable[str] | None = None, redis_mode: str | None = None) -> None:
    """Install, configure, start and wait for the selected services (all four by default); redis_mode
    "cluster": Redis as a 3-master, 3-replica cluster (tierstore.services.redis_cluster)."""
    started = time.monotonic()
    services = select(layout, only, redis_mode or "standalone")
    prepare_home(layout)
    raise_open_files_limit()
    say(f"up: {', '.join(s.name for s in services)} in {layout.home} (port base {layout.port_base})")
    _run_all(services, "up")
    say(f"up: all ready in {time.monotonic() - started:.1f}s")


def down(layout: InstanceLayout, only: Iterable[str] | None = None) -> None:
    """Stop the selected services, only the processes whose PIDs `up` recorded."""
    services = select(layout, only, recorded=True)
    if not layout.run_dir.exists():
        say(f"down: nothing recorded in {layout.run_dir}")
        return
    _run_all(services, "down")


def status(layout: InstanceLayout, only: Iterable[str] | None = None) -> dict[str, tuple[str, int | None]]:
    """Print and return (state, pid) per service; state is ready, running (not ready) or stopped."""
    result = {}
    for svc in select(layout, only, recorded=True):
        state, pid = svc.status()
        result[svc.name] = (state, pid)
        print(f"{svc.name:<9} {state:<8} 127.0.0.1:{svc.port:<6} pid {pid if pid else '-'}", flush=True)
        for line in getattr(svc, "status_lines", lambda: [])():
            print(line, flush=True)
    return result
