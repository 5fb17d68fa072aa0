"""/metrics (issue 13, part 4): job runs counted from job_runs whichever process ran them (the CLI
in a subprocess, another JobRunner), flush and rollup lag moving with flush and refresh, the
tiers' health and sizes, the catalog version, results-cache hits and misses, rate-limit refusals.
Real Redis (database 50) and PostgreSQL (its own database)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rollups.timeutil import HOUR_MS, MINUTE_MS, floor_to, now_ms, parse_time
from scheduler.runner import Job, JobRunner
from tests.api_support import isolated_settings, run_job, served, unique_stream
from tiers.db import make_pool

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def m_settings(settings):
    return isolated_settings(settings, "metrics", redis_db=50).model_copy(
        update={"rate_limits": {"events": "1000/minute"}})


@pytest.fixture(scope="module")
def api(m_settings):
    yield from served(m_settings)


def scrape(api) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    r = api.get("/metrics")
    assert r.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_job_runs_of_other_processes_are_counted(api, m_settings):
    before = scrape(api)
    started = time.time()
    env = {**os.environ, "TIERSTORE_POSTGRES_URL": m_settings.postgres_url, "TIERSTORE_REDIS_URL": m_settings.redis_url}
    cli = subprocess.run([sys.executable, "-m", "tierstore.cli", "jobs", "run", "flush", "--quiet"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr

    def boom(ctx):
        raise RuntimeError("boom on purpose")

    pool = make_pool(m_settings.postgres_url, max_size=3, name="other-runner")
    other = JobRunner(pool, m_settings, {}, jobs=[Job("boom", boom), Job("fine", lambda ctx: {"ok": 1})])
    try:
        other.run("boom", wait=True, requested_by="test")
        other.run("fine", wait=True, requested_by="test")
        other.run("fine", wait=True, requested_by="test")
    finally:
        other.close()
        pool.close()
    after = scrape(api)

    def delta(name, **labels):
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    assert delta("tierstore_job_runs_total", job="flush", status="done") == 1
    assert delta("tierstore_job_runs_total", job="boom", status="failed") == 1
    assert delta("tierstore_job_runs_total", job="fine", status="done") == 2
    assert delta("tierstore_job_runs_total", job="fine", status="failed") == 0
    assert delta("tierstore_job_run_duration_seconds_count", job="fine") == 2
    assert delta("tierstore_job_run_duration_seconds_bucket", job="fine", le="+Inf") == 2
    assert value(after, "tierstore_job_run_duration_seconds_bucket", job="fine", le="1.0") >= 2
    assert value(after, "tierstore_job_last_success_timestamp_seconds", job="flush") >= started - 1
    assert value(after, "tierstore_job_last_failure_timestamp_seconds", job="boom") >= started - 1
    assert value(after, "tierstore_job_last_failure_timestamp_seconds", job="fine") is None
    assert value(after, "tierstore_job_interval_seconds", job="flush") == m_settings.flush_interval / 1000
    assert value(after, "tierstore_job_runs_total", job="archive", status="failed") == 0  # known jobs from the start


def test_a_fresh_router_counts_the_whole_history(api, m_settings):
    """A router started later reads the same totals (the first scrape aggregates job_runs in SQL)."""
    seen = scrape(api)
    second = served(m_settings)
    other = next(second)
    try:
        fresh = scrape(other)
    finally:
        second.close()
    for key in [k for k in seen if k[0].startswith("tierstore_job_run")]:
        assert fresh.get(key) == seen[key], key


def test_flush_and_rollup_lag(api):
    stream = unique_stream("lag")
    ts = floor_to(now_ms() - 30 * MINUTE_MS, MINUTE_MS)
    assert api.post("/v1/events", json=[{"stream": stream, "key": "a", "ts": ts, "value": 1}]).status_code == 202
    time.sleep(1.1)
    lagging = scrape(api)
    assert value(lagging, "tierstore_flush_lag_seconds") >= 1.0
    assert value(lagging, "tierstore_eventlog_backlog_entries") >= 1
    assert run_job(api, "flush")["status"] == "done"
    flushed = scrape(api)
    assert value(flushed, "tierstore_flush_lag_seconds") == 0
    assert 30 * 60 - 5 <= value(flushed, "tierstore_rollup_lag_seconds") <= 32 * 60  # the event's minute
    assert run_job(api, "refresh")["status"] == "done"
    assert value(scrape(api), "tierstore_rollup_lag_seconds") == 0


def test_tiers_and_catalog(api):
    """Health, rows and bytes of every tier, as GET /v1/tiers gives them (exact, tiers/sizes.py)."""
    samples = scrape(api)
    tiers = api.get("/v1/tiers").json()
    assert value(samples, "tierstore_catalog_version") == tiers["catalog_version"]
    for tier in tiers["tiers"]:
        name = tier["name"]
        assert value(samples, "tierstore_tier_up", tier=name) == 1.0
        assert value(samples, "tierstore_tier_rows", tier=name) == tier["rows"], name
        if name in ("cold", "archive"):  # hot and warm bytes are the servers' sizes, which move by themselves
            assert value(samples, "tierstore_tier_bytes", tier=name) == tier["bytes"], name
        else:
            assert value(samples, "tierstore_tier_bytes", tier=name) > 0, name
    b_warm = parse_time(tiers["boundaries"]["warm"])
    assert value(samples, "tierstore_catalog_boundary_timestamp_seconds", boundary="warm") == b_warm / 1000


def test_results_cache_hits_and_misses(api):
    stream = unique_stream("cache")
    start = floor_to(now_ms() - 3 * HOUR_MS, HOUR_MS)
    events = [{"stream": stream, "key": f"k{i % 3}", "ts": start + i * MINUTE_MS, "value": i} for i in range(60)]
    assert api.post("/v1/events", json=events).status_code == 202
    params = {"stream": stream, "from": start, "to": start + 2 * HOUR_MS, "step": "1h", "agg": "sum"}
    before = scrape(api)
    first = api.get("/v1/query/series", params=params)
    middle = scrape(api)
    second = api.get("/v1/query/series", params=params)
    after = scrape(api)
    assert first.status_code == second.status_code == 200 and first.json()["points"] == second.json()["points"]
    misses = value(middle, "tierstore_results_cache_misses_total") - \
        (value(before, "tierstore_results_cache_misses_total") or 0)
    assert misses >= 1
    assert value(after, "tierstore_results_cache_misses_total") == value(middle, "tierstore_results_cache_misses_total")
    hits = value(after, "tierstore_results_cache_hits_total", layer="local") - \
        (value(middle, "tierstore_results_cache_hits_total", layer="local") or 0)
    assert hits == misses  # every piece the first query stored, the second found


def test_rate_limit_refusals_are_counted(api):
    stream = unique_stream("limit")
    before = value(scrape(api), "tierstore_ratelimit_refusals_total", limit="events") or 0
    too_many = [{"stream": stream, "key": "a", "ts": "now", "value": 1}] * 1500
    r = api.post("/v1/events", json=too_many)
    assert r.status_code == 429, r.text
    assert value(scrape(api), "tierstore_ratelimit_refusals_total", limit="events") == before + 1
