"""Job run metrics read from job_runs in PostgreSQL at scrape time, so they are right whichever
process ran the jobs (`tierstore scheduler`, another router, the CLI):

    tierstore_job_runs_total{job,status}                       finished runs: done, failed, skipped
    tierstore_job_run_duration_seconds{job}                    histogram of started -> finished
                                                               (done and failed runs)
    tierstore_job_last_success_timestamp_seconds{job}          end of the last run with status done
    tierstore_job_last_failure_timestamp_seconds{job}          end of the last run with status failed
    tierstore_job_interval_seconds{job}                        the schedule's period (settings)

Every router reports the same values (they come from one table): aggregate replicas with max(),
never sum(). The table is read incrementally: the first scrape aggregates the whole history in
SQL, later scrapes read only the runs created since the last one plus the runs that were still
unfinished then (a handful), by primary key. Runs deleted from job_runs stay counted (counters
never go down).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Iterable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("tierstore.metrics")

PG_TIMEOUT_S = 2.0
GIVE_UP_IDS = 1000  # a missing run id this far below the newest is taken for a rolled-back INSERT
FINISHED = ("done", "failed", "skipped")
TIMED = ("done", "failed")  # skipped runs never started
# seconds: flush and refresh take well under a second, export_cold and archive minutes to hours
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)

_DURATION = "extract(epoch FROM finished - started)::float8"
_HISTORY_SQL = ("SELECT job, status, count(*), max(extract(epoch FROM finished))::float8 FROM job_runs "
                "WHERE id <= %(upto)s AND finished IS NOT NULL GROUP BY job, status")
_HISTORY_DURATIONS_SQL = (
    "SELECT job, count(*), sum(d), ARRAY["
    + ", ".join(f"count(*) FILTER (WHERE d <= %(b{i})s)" for i in range(len(DURATION_BUCKETS)))
    + f"] FROM (SELECT job, {_DURATION} AS d FROM job_runs WHERE id <= %(upto)s AND finished IS NOT NULL "
    "AND started IS NOT NULL AND status = ANY(%(timed)s)) AS r GROUP BY job")
_UNFINISHED_SQL = "SELECT id FROM job_runs WHERE id <= %(upto)s AND finished IS NULL"
_NEWER_SQL = ("SELECT id, job, status, extract(epoch FROM finished)::float8, "
              f"CASE WHEN started IS NULL THEN NULL ELSE {_DURATION} END "
              "FROM job_runs WHERE id > %(after)s OR id = ANY(%(pending)s::bigint[]) ORDER BY id")


class _Duration:
    """One job's duration histogram: counts per bucket (cumulative, as Prometheus wants them)."""

    def __init__(self) -> None:
        self.buckets = [0] * len(DURATION_BUCKETS)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        for i, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1
        self.count += 1
        self.sum += seconds

    def add(self, count: int, total: float, cumulative: Iterable[int]) -> None:
        self.buckets = [a + b for a, b in zip(self.buckets, cumulative)]
        self.count += count
        self.sum += total

    def family_buckets(self) -> list[tuple[str, float]]:
        out = [(_le(bound), float(n)) for bound, n in zip(DURATION_BUCKETS, self.buckets)]
        return out + [("+Inf", float(self.count))]


def _le(bound: float) -> str:
    return str(float(bound))


class JobRunsCollector(Collector):
    """The families above, from `pool` (psycopg_pool.ConnectionPool of the database holding
    job_runs). `intervals`: job name -> schedule period in seconds (jobs run on demand only are
    absent); every name in it (and in `jobs`) is reported from the first scrape on, with zero
    counts, so a first failure shows as an increase. A scrape while PostgreSQL is down yields
    nothing (tierstore_metrics_source_up{source="postgres"} says so)."""

    def __init__(self, pool: Any, intervals: Mapping[str, float], jobs: Iterable[str] = ()) -> None:
        self._pool = pool
        self._intervals = dict(intervals)
        self._jobs = set(jobs) | set(intervals)
        self._lock = threading.Lock()
        self._after: int | None = None   # every run with a larger id is still to be read
        self._pending: set[int] = set()  # ids at or below _after not finished when last read
        self._runs: dict[tuple[str, str], int] = {}
        self._last: dict[tuple[str, str], float] = {}
        self._durations: dict[str, _Duration] = {}

    def describe(self) -> Iterator[Any]:
        return iter(())  # read at scrape time only (never at registration)

    def collect(self) -> Iterator[Any]:
        try:
            with self._lock:
                self._read()
                families = self._families()
        except Exception:  # noqa: BLE001  (PostgreSQL down must not fail /metrics)
            log.warning("metrics: job_runs unavailable in this scrape", exc_info=True)
            return
        yield from families

    # ---- reading ------------------------------------------------------------------------------

    def _read(self) -> None:
        with self._pool.connection(timeout=PG_TIMEOUT_S) as conn:
            if self._after is None:
                self._read_history(conn)
                return
            rows = conn.execute(_NEWER_SQL, {"after": self._after, "pending": sorted(self._pending)}).fetchall()
        previous, seen = self._after, {row[0] for row in rows}
        for rid, job, status, finished, seconds in rows:
            self._after = max(self._after, rid)
            if finished is None or status not in FINISHED:
                self._pending.add(rid)
                continue
            self._pending.discard(rid)
            self._count(job, status, 1, finished)
            if seconds is not None and status in TIMED:
                self._durations.setdefault(job, _Duration()).observe(seconds)
        # an id not visible yet (its INSERT committed after a larger one) is read when it is; ids
        # that never appear (a rolled-back INSERT) are given up once far behind
        self._pending |= set(range(previous + 1, self._after)) - seen
        self._pending -= {rid for rid in self._pending - seen if rid < self._after - GIVE_UP_IDS}

    def _read_history(self, conn: Any) -> None:
        upto = conn.execute("SELECT coalesce(max(id), 0) FROM job_runs").fetchone()[0]
        params = {"upto": upto, "timed": list(TIMED), **{f"b{i}": b for i, b in enumerate(DURATION_BUCKETS)}}
        for job, status, count, finished in conn.execute(_HISTORY_SQL, params):
            if status in FINISHED:
                self._count(job, status, count, finished)
        for job, count, total, cumulative in conn.execute(_HISTORY_DURATIONS_SQL, params):
            self._durations.setdefault(job, _Duration()).add(count, total or 0.0, cumulative)
        self._pending = {rid for (rid,) in conn.execute(_UNFINISHED_SQL, params)}
        self._after = upto

    def _count(self, job: str, status: str, n: int, finished: float | None) -> None:
        self._jobs.add(job)
        self._runs[(job, status)] = self._runs.get((job, status), 0) + n
        if finished is not None and status in TIMED:
            self._last[(job, status)] = max(finished, self._last.get((job, status), finished))

    # ---- families -----------------------------------------------------------------------------

    def _families(self) -> list[Any]:
        runs = CounterMetricFamily("tierstore_job_runs", "Finished job runs by job and status (done, failed, "
                                   "skipped), from job_runs: every process's runs.", labels=["job", "status"])
        hist = HistogramMetricFamily("tierstore_job_run_duration_seconds", "How long job runs took (started to "
                                     "finished; done and failed runs), in seconds.", labels=["job"])
        success = GaugeMetricFamily("tierstore_job_last_success_timestamp_seconds", "When the job's last "
                                    "successful run finished (epoch seconds).", labels=["job"])
        failure = GaugeMetricFamily("tierstore_job_last_failure_timestamp_seconds", "When the job's last "
                                    "failed run finished (epoch seconds).", labels=["job"])
        interval = GaugeMetricFamily("tierstore_job_interval_seconds", "The period the scheduler runs the job "
                                     "at (settings), in seconds.", labels=["job"])
        for job in sorted(self._jobs):
            for status in FINISHED:
                runs.add_metric([job, status], float(self._runs.get((job, status), 0)))
            duration = self._durations.get(job) or _Duration()
            hist.add_metric([job], duration.family_buckets(), duration.sum)
            for family, status in ((success, "done"), (failure, "failed")):
                if (job, status) in self._last:
                    family.add_metric([job], self._last[(job, status)])
            if job in self._intervals:
                interval.add_metric([job], self._intervals[job])
        return [runs, hist, success, failure, interval]


def job_intervals(runner: Any, settings: Any) -> dict[str, float]:
    """Scheduled jobs' periods in seconds, from a scheduler.runner.JobRunner's jobs and settings."""
    out = {}
    for job in runner.jobs():
        ms = getattr(settings, job.interval, None) if job.interval else None
        if ms:
            out[job.name] = ms / 1000
    return out
