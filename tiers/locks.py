"""PostgreSQL advisory locks: every lock name tierstore uses, and one way to take each kind.

Names are strings hashed to a bigint key (`advisory_key`), the same in every process:
  job_lock_name(job)        held by the job runner for a whole run of `job` (scheduler.runner);
                            other writers that must not overlap a job take the same name
                            (ARCHIVE_LOCK, RETENTION_LOCK, FLUSH_LOCK)
  report_lock_name(id)      held while one compliance report is built
  alert_lock_name(id)       an alert rule's state transition (transaction lock, tiers/alerts.py);
  alert_delivery_lock_name(id)  while its notifications are delivered (scheduler/alerts.py)
  WARM_REFRESH_LOCK         one warm rollup refresh at a time (both warm modes)
  WARM_PARTITIONS_LOCK      creating or dropping warm's daily partitions (postgres mode)

Session locks (`session_lock`, and `session_locks` for several in a fixed order) are held on one connection in autocommit until the
`with` block ends; transaction locks (`xact_lock`) until the caller's transaction ends.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterable, Iterator

import psycopg

JOB_LOCK_PREFIX = "tierstore.job."
WARM_REFRESH_LOCK = "tierstore.warm.refresh"
WARM_PARTITIONS_LOCK = "tierstore.warm.partitions"


def job_lock_name(job: str) -> str:
    """The lock the job runner holds for a whole run of `job`."""
    return JOB_LOCK_PREFIX + job


def report_lock_name(report_id: int | str) -> str:
    """The lock held while compliance report `report_id` is built."""
    return f"tierstore.report.{report_id}"


def alert_lock_name(rule_id: int | str) -> str:
    """The lock an evaluation of alert rule `rule_id` holds while it changes the rule's state."""
    return f"tierstore.alert.{rule_id}"


def alert_delivery_lock_name(rule_id: int | str) -> str:
    """The lock held while the notifications of alert rule `rule_id` are delivered."""
    return f"tierstore.alert.{rule_id}.delivery"


ARCHIVE_LOCK = job_lock_name("archive")
RETENTION_LOCK = job_lock_name("retention")
FLUSH_LOCK = job_lock_name("flush")


def advisory_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name (same in every process)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


@contextmanager
def session_lock(pool_or_conn, name: str, *, wait: bool = True) -> Iterator[bool]:
    """Hold the session advisory lock `name` for the `with` block; yields whether it is held.

    `pool_or_conn`: a psycopg_pool ConnectionPool (one of its connections holds the lock) or a
    psycopg Connection (the lock is taken on it; it must be idle on entry and on exit). The
    connection runs in autocommit while the lock is taken and released; its previous autocommit
    setting is restored. `wait=False` tries once and yields False (holding nothing) when another
    session holds the lock. Raises psycopg.Error when PostgreSQL cannot be reached.
    """
    if isinstance(pool_or_conn, psycopg.Connection):
        with _locked(pool_or_conn, [name], wait) as locked:
            yield locked
        return
    with pool_or_conn.connection() as conn, _locked(conn, [name], wait) as locked:
        yield locked


@contextmanager
def session_locks(pool, names: Iterable[str]) -> Iterator[None]:
    """Hold every lock in `names` on one session of `pool`, taken (waiting) in the order given and
    released in reverse. The order is the caller's to fix: a holder of several locks must take
    them in the order other code nests them (retention holds its job lock, then ARCHIVE_LOCK), or
    the two wait on each other in a cycle. Raises psycopg.Error."""
    with pool.connection() as conn, _locked(conn, list(names), True):
        yield


def xact_lock(conn: psycopg.Connection, name: str) -> None:
    """Take the transaction advisory lock `name` in `conn`'s transaction (released at its end)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(name),))


@contextmanager
def _locked(conn: psycopg.Connection, names: list[str], wait: bool) -> Iterator[bool]:
    previous = conn.autocommit
    conn.autocommit = True
    taken: list[int] = []
    try:
        for key in map(advisory_key, names):
            if wait:
                conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            elif not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                break
            taken.append(key)
        yield len(taken) == len(names)
    finally:
        try:
            conn.autocommit = True
            for key in reversed(taken):
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        finally:
            conn.autocommit = previous
