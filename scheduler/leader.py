"""One scheduler leader among several `tierstore scheduler` processes (issue 12).

Every scheduler process opens one PostgreSQL connection of its own (autocommit, application_name
"tierstore-scheduler <host>:<pid>") and tries the session advisory lock LEADER_LOCK on it every
settings.scheduler_leader_poll ms. The process holding it is the leader: it alone runs APScheduler
(scheduler.runner.build_scheduler, with the PostgreSQL job store) and so every scheduled job; the
others are standbys that keep trying. The lock lives exactly as long as the leader's session: when
the leader process dies, even by SIGKILL, the kernel closes its socket, PostgreSQL ends the session
and frees the lock, and a standby takes it at its next poll; its APScheduler starts from the job
store (each interval job next runs one period after the takeover).

The leader checks its connection at every poll and steps down (stops APScheduler, keeps trying)
when the connection broke, e.g. PostgreSQL restarted: another process may already lead. Whatever
happens to leadership, every run still holds its job's advisory lock (scheduler.runner: scheduled
runs are recorded `skipped` while another holds it), so even during a hand-over no job runs twice at
once. Scheduled runs record the leader's name in their stats ("scheduler").

Who leads is read from pg_locks (`current_leader`): `tierstore jobs leader` prints it and the
routers' /metrics carry tierstore_scheduler_leader{scheduler="<host>:<pid>"} 1 (`LeaderCollector`).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Callable

import psycopg

from tiers.locks import advisory_key

log = logging.getLogger("tierstore.jobs")

LEADER_LOCK = "tierstore.scheduler.leader"
APP_PREFIX = "tierstore-scheduler "
CONNECT_TIMEOUT_S = 5

_LEADER_SQL = (
    "SELECT a.application_name, a.pid, a.backend_start FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.classid::bigint = %s "
    "AND l.objid::bigint = %s AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())")


def default_name() -> str:
    """This process's scheduler name: <host>:<pid>."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _lock_parts() -> tuple[int, int]:
    """pg_locks' (classid, objid) of the bigint advisory key of LEADER_LOCK."""
    unsigned = advisory_key(LEADER_LOCK) & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


def current_leader(conn: psycopg.Connection) -> dict[str, Any] | None:
    """{"scheduler": "<host>:<pid>", "backend_pid", "connected": datetime} of the process holding
    the leader lock, or None when no scheduler leads. Raises psycopg.Error."""
    row = conn.execute(_LEADER_SQL, _lock_parts()).fetchone()
    if row is None:
        return None
    name, pid, started = row
    return {"scheduler": name[len(APP_PREFIX):] if name.startswith(APP_PREFIX) else name, "backend_pid": pid,
            "connected": started}


class SchedulerLeader:
    """Run APScheduler for `runner` while this process holds the leader lock (see the module doc).

    `run(stop)` polls until `stop` is set, then stops APScheduler and closes the lock's connection.
    `on_change(leading)` is called with the role `run` first finds and on every change after.
    `build(runner, settings)` makes the (unstarted) scheduler; default scheduler.runner.build_scheduler.
    """

    def __init__(self, runner, settings, *, name: str | None = None, poll_ms: int | None = None,
                 build: Callable[[Any, Any], Any] | None = None,
                 on_change: Callable[[bool], None] = lambda leading: None) -> None:
        from scheduler.runner import _setting, build_scheduler

        self.runner, self.settings = runner, settings
        self.name = name or default_name()
        runner.scheduler_name = self.name
        self.poll_s = (poll_ms if poll_ms is not None else _setting(settings, "scheduler_leader_poll")) / 1000
        self._postgres_url = _setting(settings, "postgres_url")
        self._build = build or build_scheduler
        self._on_change = on_change
        self._conn: psycopg.Connection | None = None
        self._scheduler = None

    @property
    def leading(self) -> bool:
        return self._scheduler is not None

    def run(self, stop: threading.Event) -> None:
        try:
            if not self.step():
                self._on_change(False)  # the first role found: standby
            while not stop.wait(self.poll_s):
                self.step()
        finally:
            self.close()

    def step(self) -> bool:
        """One poll: take the lock and start APScheduler if free, or check the held lock's
        connection (stepping down when it broke). Returns whether this process leads."""
        try:
            conn = self._connect()
            if self._scheduler is None:
                if conn.execute("SELECT pg_try_advisory_lock(%s)", (advisory_key(LEADER_LOCK),)).fetchone()[0]:
                    self._lead(conn)
            else:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            log.warning("scheduler %s: PostgreSQL connection of the leader lock failed (%s)", self.name, exc)
            self._step_down()
        return self.leading

    def close(self) -> None:
        """Stop APScheduler (runs in progress finish in the runner) and release the lock."""
        self._step_down()

    # ---- internals -----------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._postgres_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                         application_name=(APP_PREFIX + self.name)[:63], keepalives=1,
                                         keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
        return self._conn

    def _lead(self, conn: psycopg.Connection) -> None:
        try:
            scheduler = self._build(self.runner, self.settings)
            scheduler.start()
        except Exception:
            log.exception("scheduler %s: APScheduler could not start; releasing the leader lock", self.name)
            conn.execute("SELECT pg_advisory_unlock(%s)", (advisory_key(LEADER_LOCK),))
            return
        self._scheduler = scheduler
        log.info("scheduler %s leads: it runs the scheduled jobs", self.name,
                 extra={"event": "scheduler_leader", "scheduler": self.name, "leading": True})
        self._on_change(True)

    def _step_down(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            try:
                scheduler.shutdown(wait=False)
            except Exception:  # noqa: BLE001 - already stopped
                log.warning("scheduler %s: APScheduler did not stop cleanly", self.name, exc_info=True)
            self.runner.attach_scheduler(None)
            log.info("scheduler %s stepped down", self.name,
                     extra={"event": "scheduler_leader", "scheduler": self.name, "leading": False})
            self._on_change(False)
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                if scheduler is not None and not conn.closed:  # free the lock now, not when the server notices
                    conn.execute("SELECT pg_advisory_unlock(%s)", (advisory_key(LEADER_LOCK),))
            except Exception:  # noqa: BLE001 - the session is gone, and its lock with it
                pass
            try:
                conn.close()  # ends the session: the lock (if held) is free for a standby
            except Exception:  # noqa: BLE001
                pass


class LeaderCollector:
    """/metrics: tierstore_scheduler_leader{scheduler} 1 for the process holding the leader lock
    (nothing when no scheduler leads or PostgreSQL cannot be read). `pool`: a psycopg_pool pool."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def describe(self):
        return iter(())

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        try:
            with self._pool.connection(timeout=2.0) as conn:
                leader = current_leader(conn)
        except Exception:  # noqa: BLE001 - PostgreSQL down must not fail /metrics
            log.warning("metrics: the scheduler leader could not be read", exc_info=True)
            return
        family = GaugeMetricFamily("tierstore_scheduler_leader", "1 for the `tierstore scheduler` process that "
                                   "holds the leader lock and runs the scheduled jobs.", labels=["scheduler"])
        if leader is not None:
            family.add_metric([leader["scheduler"]], 1.0)
        yield family


__all__ = ["SchedulerLeader", "LeaderCollector", "current_leader", "default_name", "LEADER_LOCK"]
