"""Helpers for the warm-tier, catalog and job tests: one scratch database per warm mode.

Each mode gets its own database on the instance's PostgreSQL, created fresh once per test session
and emptied by `reset` between tests, so postgres-mode and timescale-mode tests never share tables.
"""
from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pyarrow as pa
import pytest

from rollups.partials import Agg, merge_partials
from rollups.timeutil import TimeRange
from tiers.base import EVENT_SCHEMA
from tiers.eventlog import STREAM_KEY, clear, encode_batch

from tiers.db import apply_migrations, connect, timescale_available

_TABLES = ("events", "warm_dirty", "warm_delta", "warm_stale", "flush_checkpoint", "keys", "streams", "catalog", "catalog_history",
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
        tables = [t for t in _TABLES if conn.execute("SELECT to_regclass(%s)", (t,)).fetchone()[0]]
        conn.execute("TRUNCATE " + ", ".join(tables) + " RESTART IDENTITY CASCADE")
        for g in ("1m", "1h", "1d"):
            conn.execute(f"TRUNCATE rollup_{g}, total_{g}")


# ---- events, the log and the oracle ----------------------------------------------------------




T0 = 1_763_805_600_000  # 2025-11-22T10:00:00Z


@dataclass(frozen=True)
class Ev:
    stream: str
    key: str
    ts: int
    value: float = 1.0
    id: str | None = None


def table(events: list[Ev]) -> pa.Table:
    return pa.table({"stream": [e.stream for e in events], "key": [e.key for e in events],
                     "ts": [e.ts for e in events], "value": [e.value for e in events],
                     "id": [e.id for e in events]}, schema=EVENT_SCHEMA)


def log_batch(redis, tenant: str, events: list[Ev], dups: list[int] = ()) -> str:
    """Append one batch to the event log as ingest does (tiers.eventlog's entry format)."""
    entry = redis.xadd(STREAM_KEY, {"tenant": tenant, "data": encode_batch(table(events)),
                                    "dups": json.dumps(sorted(dups))})
    return entry.decode() if isinstance(entry, bytes) else entry


def reset_redis(redis) -> None:
    clear(redis)  # every log, the marks and their per-stream copies


def random_events(rng: random.Random, n: int, start: int, span_ms: int, streams=("plays", "views"),
                  keys: int = 12) -> list[Ev]:
    return [Ev(rng.choice(streams), f"k{rng.randrange(keys):02d}", start + rng.randrange(span_ms),
               float(rng.randint(-3, 50)) / 2) for _ in range(n)]


def oracle(events: list[Ev], stream: str, lo: int, hi: int, group: str, key: str | None = None) -> dict:
    """group -> Agg over events of `stream` in [lo, hi); bucket = ts floored to `group` ms if int."""
    out: dict = defaultdict(Agg)
    for e in events:
        if e.stream == stream and lo <= e.ts < hi and (key is None or e.key == key):
            g = e.key if group == "key" else e.ts - e.ts % group
            out[g].add(e.value)
    return dict(out)


def as_aggs(t: pa.Table, group: str) -> dict:
    merged = merge_partials([t], group)
    return {r[group]: Agg(r["count"], r["sum"], r["min"], r["max"]) for r in merged.to_pylist()}


def assert_aggs_equal(got: dict, want: dict) -> None:
    assert set(got) == set(want), (sorted(set(got) ^ set(want))[:10])
    for g in want:
        a, b = got[g], want[g]
        assert (a.count, a.min, a.max) == (b.count, b.min, b.max), (g, a, b)
        assert abs(a.sum - b.sum) <= 1e-9 * max(1.0, abs(b.sum)), (g, a, b)


def raw_rows(warm, tenant: str, stream: str, lo: int, hi: int) -> list[tuple]:
    return sorted((r["key"], r["ts"], r["value"], r["id"]) for b in warm.read_raw(tenant, stream, TimeRange(lo, hi))
                  for r in b.to_pylist())


def expected_rows(events: list[Ev], stream: str, lo: int, hi: int) -> list[tuple]:
    return sorted((e.key, e.ts, e.value, e.id) for e in events if e.stream == stream and lo <= e.ts < hi)
