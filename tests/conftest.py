"""Shared fixtures: REAL services of $TIERSTORE_HOME / TIERSTORE_PORT_BASE (`tierstore services up`).

Tests never mock a tier. Each fixture that owns state resets it; tests of one run share servers.
Add fixtures here only when several test modules need them.
"""
from __future__ import annotations

import os

import pytest

from tierstore.settings import Settings, load_settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The instance's settings, with allow_clock_override on: tests run jobs ahead of the clock
    (as_of now + 8h). tests/test_clock_guard.py proves the default (off) with its own settings.
    topk_merge_keys off: the suites of the threshold algorithm rank streams of a few keys;
    tests/test_rank_pieces.py proves the default (the id merge for small streams) with its own."""
    return load_settings(allow_clock_override=True, topk_merge_keys=0)


@pytest.fixture(scope="session")
def redis_client(settings):
    from tierstore.wiring import redis_of

    client = redis_of(settings)  # a RedisCluster with TIERSTORE_REDIS_MODE=cluster
    client.ping()
    yield client
    client.close()


@pytest.fixture(scope="session")
def pg_url(settings) -> str:
    import psycopg

    with psycopg.connect(settings.postgres_url, connect_timeout=5) as conn:
        conn.execute("SELECT 1")
    return settings.postgres_url


def pytest_report_header(config):
    return f"tierstore services: TIERSTORE_HOME={os.environ.get('TIERSTORE_HOME', '.tierstore')} " \
           f"TIERSTORE_PORT_BASE={os.environ.get('TIERSTORE_PORT_BASE', '17400')}"


@pytest.fixture(scope="module")
def receiver():
    """A webhook receiver on loopback (tests/webhook_support.py), one per test module."""
    from tests.webhook_support import Receiver

    r = Receiver()
    yield r
    r.close()
