"""Helpers for the warm-tier, catalog and job tests: one scratch database per warm mode.

Each mode gets its own database on the instance's PostgreSQL, created fresh once per test session
and emptied by `reset` between tests, so postgres-mode and timescale-mode tests never share tables.
"""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tiers.db import apply_migrations, connect, timescale_available

_TABLES = ("events", "warm_dirty", "flush_checkpoint", "keys", "streams", "catalog", "catalog_history",
           "job_runs")


def database_url(base_url: str, name: str) -> str:
    parts = urlsplit(base_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def fresh_database(base_url: str, name: str) -> str:
    """Drop and create database `name` next to base_url's; return its URL."""
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return database_url(base_url, name)


def mode_params():
    """pytest params for the warm modes; timescale is skipped (with the reason) when absent."""
    return [pytest.param("postgres", id="postgres"),
            pytest.param("timescale", id="timescale", marks=pytest.mark.timescale)]


def require_mode(base_url: str, mode: str) -> None:
    if mode == "timescale":
        with connect(base_url, autocommit=True) as conn:
            if not timescale_available(conn):
                pytest.skip("timescaledb extension not available on this PostgreSQL "
                            "(not installed or not in shared_preload_libraries)")


def migrated_database(base_url: str, mode: str, suffix: str = "") -> str:
    require_mode(base_url, mode)
    url = fresh_database(base_url, f"tierstore_test_{mode}{suffix}")
    apply_migrations(url, mode)
    return url


def reset(url: str) -> None:
    """Empty every table the warm tier, catalog and jobs use (rollups included)."""
    with connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(_TABLES) + " RESTART IDENTITY CASCADE")
        for g in ("1m", "1h", "1d"):
            conn.execute(f"TRUNCATE rollup_{g}")
