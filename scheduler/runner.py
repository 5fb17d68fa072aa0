"""Jobs by name, run on demand or on a schedule, one at a time across processes, recorded.

A job is a function of a JobContext returning stats (a JSON-able dict); the jobs are one explicit
list, scheduler.jobs.JOBS (a Job each), which every JobRunner runs unless given another.

`JobRunner.run(name, as_of)` records a queued run in job_runs and executes it in a worker thread
of the calling process (the router's run endpoint and `tierstore jobs run` alike). The run holds a
PostgreSQL advisory lock per job name for its whole duration, so two runs of one job never overlap
on any replica:
  - on-demand runs WAIT for the lock (the caller asked for this run, with its as_of; it stays
    `queued` until the lock is free, then runs);
  - scheduled runs (APScheduler, `build_scheduler`) are recorded as `skipped` when the lock is
    held: the next tick comes soon, and replicas sharing the job store do not pile up.
Of several `tierstore scheduler` processes only the leader runs APScheduler (scheduler.leader: a
session advisory lock; a standby takes over when the leader dies); scheduled runs record the
leader's name in stats["scheduler"].
A run's status goes queued -> running -> done | failed (with the error) | skipped; progress 0..1
and stats are updated as it goes.

The clock is guarded here, where every run starts: an as_of later than now + clock_skew is
refused (ClockOverrideDisabled, 422) unless the setting allow_clock_override is on, so no run can
move a boundary or delete what the real clock would not allow. An as_of in the past is harmless
(boundaries only move forward; retention deletes less). Each run records who asked for it
(`requested_by`: "scheduler", "cli:<os user>", "api:<tenant>:<credential>").
"""
from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Mapping

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from rollups.clock import check_clock
from rollups.errors import TierUnavailable
from rollups.timeutil import format_duration, format_time, now_ms
from tiers.locks import job_lock_name, session_lock

log = logging.getLogger("tierstore.jobs")


@dataclass(frozen=True)
class Job:
    name: str
    func: Callable[["JobContext"], dict[str, Any]]
    interval: str | None = None  # name of the settings field holding the period in ms
    description: str = ""
    lag: Callable[[Mapping[str, Any], Any], float | None] | None = None  # (resources, settings) -> seconds


@dataclass
class JobContext:
    """What a running job sees: its run, the clock it must use, settings and shared clients."""

    job: str
    run_id: int
    as_of: int
    settings: Any
    resources: Mapping[str, Any]
    _runner: "JobRunner" = field(repr=False)
    _logged: tuple[float, float] | None = field(default=None, repr=False)  # (fraction, monotonic s) last logged

    def progress(self, fraction: float) -> None:
        fraction = min(1.0, max(0.0, fraction))
        self._runner._update(self.run_id, progress=fraction)
        # one log line per tenth of the way (or every PROGRESS_LOG_S), not one per call
        now = time.monotonic()
        last = self._logged
        if last is None or fraction - last[0] >= 0.1 or now - last[1] >= PROGRESS_LOG_S:
            self._logged = (fraction, now)
            log.info("job %s run %s progress %.0f%%", self.job, self.run_id, fraction * 100,
                     extra=run_fields(self.job, self.run_id, "job_progress", progress=round(fraction, 4)))

    def record(self, conn: psycopg.Connection, stats: dict[str, Any]) -> None:
        """Merge stats into this run's record inside the caller's transaction (e.g. together with
        a catalog move, so the move and its evidence commit as one)."""
        conn.execute("UPDATE job_runs SET stats = stats || %s WHERE id = %s", (Jsonb(_jsonable(stats)), self.run_id))


class JobRunner:
    def __init__(self, pool: ConnectionPool, settings: Any, resources: Mapping[str, Any], *,
                 jobs: Iterable[Job] | None = None, max_workers: int = 4):
        """`pool` reaches the database holding job_runs (it needs max_workers + 1 connections: a
        running job holds one for its lock); `resources` are the clients jobs use by name
        ("redis", "warm", "catalog", "hot", ...); `jobs` defaults to scheduler.jobs.JOBS."""
        self._pool = pool
        self.settings = settings
        self.resources = resources
        if jobs is None:
            from scheduler.jobs import JOBS as jobs  # the job modules import this one
        self._jobs = {job.name: job for job in jobs}
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="job")
        self._scheduler = None
        self.scheduler_name: str | None = None  # set by scheduler.leader: recorded in scheduled runs
        self._closed = threading.Event()

    # ---- API ---------------------------------------------------------------------------------

    def run(self, name: str, as_of: int | None = None, wait: bool = False, *, skip_if_locked: bool = False,
            requested_by: str = "unknown", stats: dict[str, Any] | None = None) -> int:
        """Record a run of job `name` as if the clock read `as_of` (epoch ms; None = now), asked
        for by `requested_by` (with initial `stats`), and execute it in a worker thread; return its
        run id at once, or after it ends when `wait`. Raises LookupError for an unknown job,
        ClockOverrideDisabled (nothing recorded) for an as_of beyond now + clock_skew while the
        override is off."""
        job = self._job(name)
        now = now_ms()
        as_of = now if as_of is None else int(as_of)
        check_clock(as_of, self.settings, now)
        with self._store() as conn:
            run_id = conn.execute("INSERT INTO job_runs (job, as_of, requested_by, stats) VALUES (%s, %s, %s, %s) "
                                  "RETURNING id", (name, as_of, requested_by, Jsonb(_jsonable(stats or {})))
                                  ).fetchone()[0]
        future = self._executor.submit(self._execute, job, run_id, as_of, skip_if_locked)
        if wait:
            future.result()
        return run_id

    def get_run(self, run_id: Any) -> dict[str, Any] | None:
        """The run record, or None. Raises ValueError for an id that cannot be a run id."""
        rid = int(run_id)
        with self._store() as conn:
            row = conn.execute(_RUN_SELECT + " WHERE id = %s", (rid,)).fetchone()
        return _run_dict(row) if row else None

    def runs(self, name: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        sql, params = _RUN_SELECT, []
        if name:
            sql += " WHERE job = %s"
            params.append(name)
        with self._store() as conn:
            rows = conn.execute(sql + " ORDER BY id DESC LIMIT %s", (*params, limit)).fetchall()
        return [_run_dict(r) for r in rows]

    def list(self) -> list[dict[str, Any]]:
        """One entry per job: name, schedule, last_run, next_run, lag_seconds."""
        with self._store() as conn:
            last = {r[1]: _run_dict(r) for r in conn.execute(
                "SELECT DISTINCT ON (job) " + _RUN_SELECT[len("SELECT "):] + " ORDER BY job, id DESC")}
            done = {r[0]: r[1] for r in conn.execute(
                "SELECT job, max(finished) FROM job_runs WHERE status = 'done' GROUP BY job")}
            stored = self._stored_next_runs(conn) if self._scheduler is None else {}
        out = []
        for job in sorted(self._jobs.values(), key=lambda j: j.name):
            next_run = self._next_run(job) if self._scheduler is not None else stored.get(job.name)
            out.append({"name": job.name, "schedule": self._schedule(job), "last_run": last.get(job.name),
                        "next_run": next_run, "lag_seconds": self._lag(job, done.get(job.name)),
                        "description": job.description})
        return out

    @staticmethod
    def _stored_next_runs(conn) -> dict[str, datetime]:
        """job -> next run time as the scheduler process stored it (APScheduler's job store, table
        apscheduler_jobs), for a process that runs no scheduler itself (the router); {} when no
        scheduler ever ran."""
        try:
            with conn.transaction():  # a savepoint: a missing table must not spoil the caller's reads
                rows = conn.execute("SELECT id, next_run_time FROM apscheduler_jobs "
                                    "WHERE next_run_time IS NOT NULL").fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
        return {job_id: datetime.fromtimestamp(t, timezone.utc) for job_id, t in rows}

    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def attach_scheduler(self, scheduler) -> None:
        """Let list() report the scheduler's next run times."""
        self._scheduler = scheduler

    def close(self, wait: bool = True) -> None:
        self._closed.set()
        self._executor.shutdown(wait=wait, cancel_futures=True)

    @contextmanager
    def _store(self) -> Iterator[psycopg.Connection]:
        """A connection to job_runs for the API side; PostgreSQL down (or a connection its
        restart broke) is TierUnavailable("jobs") (503: retry), not an internal error."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise TierUnavailable("jobs", "The job store (PostgreSQL) is unavailable; retry later.") from exc

    # ---- execution ---------------------------------------------------------------------------

    def _job(self, name: str) -> Job:
        try:
            return self._jobs[name]
        except KeyError:
            raise LookupError(f"unknown job {name!r}") from None

    def _execute(self, job: Job, run_id: int, as_of: int, skip_if_locked: bool) -> None:
        try:
            with session_lock(self._pool, job_lock_name(job.name), wait=not skip_if_locked) as locked:
                if not locked:
                    self._update(run_id, status="skipped", finished=True,
                                 error="another run of this job held its lock")
                    log.info("job %s run %s skipped: another run holds its lock", job.name, run_id,
                             extra=run_fields(job.name, run_id, "job_end", status="skipped"))
                    return
                self._run_locked(job, run_id, as_of)
        except Exception as exc:  # the run record says what happened; never kill the worker thread
            log.exception("job %s run %s could not be executed", job.name, run_id)
            try:  # e.g. a pooled connection PostgreSQL's restart broke: the run must not stay queued
                self._update(run_id, status="failed", finished=True, error=f"{type(exc).__name__}: {exc}")
            except Exception:
                log.warning("job %s run %s: its failure could not be recorded", job.name, run_id, exc_info=True)

    def _run_locked(self, job: Job, run_id: int, as_of: int) -> None:
        self._update(run_id, status="running", started=True)
        started = time.perf_counter()
        log.info("job %s run %s started", job.name, run_id,
                 extra=run_fields(job.name, run_id, "job_start", as_of=format_time(as_of)))
        ctx = JobContext(job.name, run_id, as_of, self.settings, self.resources, self)
        try:
            stats = job.func(ctx) or {}
        except Exception as exc:
            log.exception("job %s run %s failed", job.name, run_id, extra=run_fields(
                job.name, run_id, "job_end", status="failed", took_ms=_took_ms(started),
                error=f"{type(exc).__name__}: {exc}"))
            self._update(run_id, status="failed", finished=True, error=f"{type(exc).__name__}: {exc}")
            return
        self._update(run_id, status="done", finished=True, progress=1.0, stats=stats)
        log.info("job %s run %s done", job.name, run_id, extra=run_fields(
            job.name, run_id, "job_end", status="done", took_ms=_took_ms(started), stats=_jsonable(stats)))

    def _update(self, run_id: int, *, status: str | None = None, started: bool = False, finished: bool = False,
                progress: float | None = None, stats: dict | None = None, error: str | None = None) -> None:
        sets, params = [], []
        for column, value in (("status", status), ("progress", progress), ("error", error)):
            if value is not None:
                sets.append(f"{column} = %s")
                params.append(value)
        if stats is not None:
            sets.append("stats = stats || %s")
            params.append(Jsonb(_jsonable(stats)))
        if started:
            sets.append("started = now()")
        if finished:
            sets.append("finished = now()")
        with self._pool.connection() as conn:
            conn.execute("UPDATE job_runs SET " + ", ".join(sets) + " WHERE id = %s", (*params, run_id))

    # ---- listing -----------------------------------------------------------------------------

    def _interval_ms(self, job: Job) -> int | None:
        if not job.interval:
            return None
        return _setting(self.settings, job.interval)

    def _schedule(self, job: Job) -> str | None:
        ms = self._interval_ms(job)
        return f"every {format_duration(ms)}" if ms else None

    def _next_run(self, job: Job) -> datetime | None:
        if self._scheduler is None:
            return None
        scheduled = self._scheduler.get_job(job.name)
        return getattr(scheduled, "next_run_time", None) if scheduled else None

    def _lag(self, job: Job, last_done: datetime | None) -> float | None:
        """The job's own measure of how far behind it is, else seconds since its last success."""
        if job.lag is not None:
            try:
                return job.lag(self.resources, self.settings)
            except Exception:
                log.warning("lag of job %s could not be measured", job.name, exc_info=True)
                return None
        if last_done is None:
            return None
        return max(0.0, (datetime.now(timezone.utc) - last_done).total_seconds())


_RUN_SELECT = ("SELECT id, job, status, as_of, requested, requested_by, started, finished, progress, stats, error "
               "FROM job_runs")


def _run_dict(row: tuple) -> dict[str, Any]:
    rid, job, status, as_of, requested, requested_by, started, finished, progress, stats, error = row
    return {"run_id": rid, "job": job, "status": status, "as_of": as_of, "requested": requested,
            "requested_by": requested_by, "started": started, "finished": finished, "progress": progress,
            "stats": stats, "error": error}


PROGRESS_LOG_S = 10.0


def run_fields(job: str, run_id: Any, event: str, **fields: Any) -> dict[str, Any]:
    """The structured fields of a job run's log line (event: job_start, job_progress, job_end)."""
    return {"event": event, "job": job, "run_id": run_id, **fields}


def _took_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _setting(settings: Any, name: str) -> Any:
    return settings[name] if isinstance(settings, Mapping) else getattr(settings, name)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# ---- APScheduler ---------------------------------------------------------------------------

_SCHEDULED: dict[str, JobRunner] = {}


def run_scheduled(name: str) -> None:
    """What APScheduler calls (by reference, so the PostgreSQL job store can persist it)."""
    runner = _SCHEDULED.get("runner")
    if runner is not None:
        runner.run(name, wait=True, skip_if_locked=True, requested_by="scheduler",
                   stats={"scheduler": runner.scheduler_name} if runner.scheduler_name else None)


def sqlalchemy_url(postgres_url: str) -> str:
    scheme, sep, rest = postgres_url.partition("://")
    return f"postgresql+psycopg://{rest}"


def build_scheduler(runner: JobRunner, settings_values: Any):
    """An APScheduler 3 BackgroundScheduler (not started) with a PostgreSQL job store that runs
    every job of the runner with an interval setting through `runner` (skipped while locked).

    `settings_values`: the Settings object or a mapping with postgres_url and the interval fields.
    """
    from apscheduler.executors.pool import ThreadPoolExecutor as APSThreadPool
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    store = SQLAlchemyJobStore(url=sqlalchemy_url(_setting(settings_values, "postgres_url")),
                               tablename="apscheduler_jobs")
    scheduler = BackgroundScheduler(
        jobstores={"default": store}, executors={"default": APSThreadPool(max(4, len(runner.jobs())))},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60}, timezone=timezone.utc)
    _SCHEDULED["runner"] = runner
    for job in runner.jobs():
        ms = _setting(settings_values, job.interval) if job.interval else None
        if ms:
            scheduler.add_job("scheduler.runner:run_scheduled", "interval", seconds=ms / 1000, args=[job.name],
                              id=job.name, name=job.name, replace_existing=True)
    runner.attach_scheduler(scheduler)
    return scheduler
