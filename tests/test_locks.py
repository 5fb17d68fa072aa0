"""tiers.locks against a real PostgreSQL: who holds what, on which session, and when it is let go."""
from __future__ import annotations

import psycopg
import pytest

from tiers.db import make_pool
from tiers.locks import (ARCHIVE_LOCK, RETENTION_LOCK, advisory_key, job_lock_name, report_lock_name, session_lock,
                         session_locks, xact_lock)


@pytest.fixture
def pool(pg_url):
    p = make_pool(pg_url, max_size=3)
    yield p
    p.close()


@pytest.fixture
def other(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


def held_elsewhere(conn: psycopg.Connection, name: str) -> bool:
    """True when another session holds `name` (a try from `conn` fails); leaves nothing held."""
    got = conn.execute("SELECT pg_try_advisory_lock(%s)", (advisory_key(name),)).fetchone()[0]
    if got:
        conn.execute("SELECT pg_advisory_unlock(%s)", (advisory_key(name),))
    return not got


def test_names_are_the_job_runners():
    assert job_lock_name("archive") == ARCHIVE_LOCK == "tierstore.job.archive"
    assert RETENTION_LOCK == "tierstore.job.retention"
    assert report_lock_name(7) == "tierstore.report.7"
    assert advisory_key("x") == advisory_key("x") != advisory_key("y")


def test_session_lock_holds_for_the_block_only(pool, other):
    name = "tierstore.test.block"
    with session_lock(pool, name) as locked:
        assert locked and held_elsewhere(other, name)
    assert not held_elsewhere(other, name)


def test_session_lock_without_wait_says_when_another_session_holds_it(pool, other):
    name = "tierstore.test.nowait"
    other.execute("SELECT pg_advisory_lock(%s)", (advisory_key(name),))
    try:
        with session_lock(pool, name, wait=False) as locked:
            assert locked is False
    finally:
        other.execute("SELECT pg_advisory_unlock_all()")
    with session_lock(pool, name, wait=False) as locked:
        assert locked is True


def test_session_lock_on_a_connection_restores_its_autocommit(pool, other):
    name = "tierstore.test.conn"
    with pool.connection() as conn:
        assert conn.autocommit is False
        with session_lock(conn, name) as locked:
            assert locked and conn.autocommit is True and held_elsewhere(other, name)
            conn.autocommit = False  # the caller may run transactions while it holds the lock
            conn.execute("SELECT 1")
            conn.rollback()
        assert conn.autocommit is False
    assert not held_elsewhere(other, name)


def test_session_locks_hold_all_and_release_all_even_on_error(pool, other):
    names = [job_lock_name("retention"), job_lock_name("archive")]
    with pytest.raises(RuntimeError):
        with session_locks(pool, names):
            assert all(held_elsewhere(other, n) for n in names)
            raise RuntimeError("boom")
    assert not any(held_elsewhere(other, n) for n in names)


def test_xact_lock_is_released_with_the_transaction(pool, other):
    name = "tierstore.test.xact"
    with pool.connection() as conn:
        with conn.transaction():
            xact_lock(conn, name)
            assert held_elsewhere(other, name)
        assert not held_elsewhere(other, name)
