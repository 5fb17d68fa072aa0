"""deploy/prometheus checked by Debian's real Prometheus (issue 13, part 4): promtool validates the
example configuration and the alert rules and runs their unit tests (rules_test.yml), which fail
once a rule is broken; a prometheus server scrapes a running router on loopback, stores every
tierstore metric, and evaluates rules.yml into pending/firing alerts after a dead letter and a
failing job. Prometheus is installed by tierstore.services.prometheus (apt-get) when missing.
Real Redis (database 51) and PostgreSQL (its own database)."""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from rollups.timeutil import MINUTE_MS, floor_to, now_ms
from scheduler.runner import Job, JobRunner
from tests.api_support import isolated_settings, run_job, served, unique_stream
from tierstore.services.prometheus import PrometheusServer, install_prometheus
from tiers.db import make_pool

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "prometheus"

# every name README's metrics table documents, present from a router's first scrape on
EXPECTED = {
    "tierstore_http_requests_total", "tierstore_http_request_duration_seconds_bucket", "tierstore_ingest_events_total",
    "tierstore_ingest_batches_total", "tierstore_job_runs_total", "tierstore_job_run_duration_seconds_bucket",
    "tierstore_job_run_duration_seconds_count", "tierstore_job_last_success_timestamp_seconds",
    "tierstore_job_last_failure_timestamp_seconds", "tierstore_job_interval_seconds",
    "tierstore_eventlog_backlog_entries", "tierstore_eventlog_oldest_entry_age_seconds",
    "tierstore_flush_lag_seconds", "tierstore_rollup_lag_seconds", "tierstore_deadletter_events",
    "tierstore_catalog_boundary_timestamp_seconds", "tierstore_catalog_version", "tierstore_tier_up",
    "tierstore_tier_rows", "tierstore_tier_bytes", "tierstore_results_cache_hits_total",
    "tierstore_results_cache_misses_total", "tierstore_results_cache_errors_total",
    "tierstore_ratelimit_refusals_total", "tierstore_metrics_source_up", "tierstore_hot_oldest_owned_age_seconds",
}

REFUSE_POISON = """
CREATE OR REPLACE FUNCTION test_refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM keys WHERE id = NEW.key_id AND key = 'poison') THEN
    RAISE EXCEPTION 'test trigger: key poison is refused';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER test_refuse_poison BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION test_refuse_poison();
"""


@pytest.fixture(scope="module")
def tools(settings) -> tuple[str, str]:
    return install_prometheus(settings.home / "logs" / "prometheus-install.log")


def promtool(tools, *args: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess:
    return subprocess.run([tools[1], *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_config_and_the_rules_and_runs_their_tests(tools):
    for args in (("check", "config", "prometheus.yml"), ("check", "rules", "rules.yml"),
                 ("test", "rules", "rules_test.yml")):
        done = promtool(tools, *args)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        assert "SUCCESS" in done.stdout


def test_the_rule_tests_fail_for_a_broken_rule(tools, tmp_path):
    """rules_test.yml really constrains the rules: dead letters tolerated up to 5 fail it."""
    rules = (DEPLOY / "rules.yml").read_text()
    broken = rules.replace("(tierstore_deadletter_events) > 0", "(tierstore_deadletter_events) > 5")
    assert broken != rules
    (tmp_path / "rules.yml").write_text(broken)
    shutil.copy(DEPLOY / "rules_test.yml", tmp_path / "rules_test.yml")
    done = promtool(tools, "test", "rules", "rules_test.yml", cwd=tmp_path)
    assert done.returncode != 0 and "TierstoreDeadLetters" in done.stdout + done.stderr


@pytest.fixture(scope="module")
def p_settings(settings):
    return isolated_settings(settings, "prometheus", redis_db=51)


@pytest.fixture(scope="module")
def api(p_settings):
    yield from served(p_settings)


def dead_letter_one_event(api, url: str) -> None:
    """Flush an event PostgreSQL refuses (a trigger): the flush dead-letters it."""
    stream, ts = unique_stream("prom"), floor_to(now_ms() - 30 * MINUTE_MS, MINUTE_MS)
    events = [{"stream": stream, "key": key, "ts": ts, "value": 1} for key in ("poison", "fine")]
    assert api.post("/v1/events", json=events).status_code == 202
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(REFUSE_POISON)
    try:
        run = run_job(api, "flush")
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TRIGGER test_refuse_poison ON events")
    assert run["status"] == "done" and api.get("/readyz").json()["deadletter_events"] == 1, run


def fail_a_job(url: str, settings) -> None:
    """A run of job "boom" fails, recorded by a runner that is not the router's."""
    def boom(ctx):
        raise RuntimeError("boom on purpose")

    pool = make_pool(url, max_size=3, name="boom-runner")
    runner = JobRunner(pool, settings, {}, jobs=[Job("boom", boom)])
    try:
        runner.run("boom", wait=True, requested_by="test")
    finally:
        runner.close()
        pool.close()


def test_prometheus_scrapes_the_router_and_evaluates_the_rules(tools, api, p_settings, tmp_path):
    dead_letter_one_event(api, p_settings.postgres_url)
    fail_a_job(p_settings.postgres_url, p_settings)
    target = api.url.removeprefix("http://")
    with PrometheusServer(tmp_path / "prometheus", targets=[target], rule_files=[DEPLOY / "rules.yml"],
                          interval_s=1.0) as prom:
        deadline = time.monotonic() + 30
        while True:
            alerts = {(a["labels"]["alertname"], a["labels"].get("job")): a["state"]
                      for a in prom.api("alerts")["alerts"]}
            if {("TierstoreDeadLetters", "tierstore"), ("TierstoreJobFailing", "boom")} <= alerts.keys():
                break
            assert time.monotonic() < deadline, f"no alerts after 30 s: {alerts}; read {prom.log_file}"
            time.sleep(0.5)
        assert alerts[("TierstoreDeadLetters", "tierstore")] in ("pending", "firing")
        assert alerts[("TierstoreJobFailing", "boom")] in ("pending", "firing")
        assert ("TierstoreTierDown", "tierstore") not in alerts and ("TierstoreJobLate", "flush") not in alerts

        targets = prom.api("targets")["activeTargets"]
        assert [(t["health"], t["scrapeUrl"]) for t in targets] == [("up", f"{api.url}/metrics")], targets
        names = set(prom.api("label/__name__/values"))
        assert EXPECTED <= names, f"not scraped: {sorted(EXPECTED - names)}"
        assert [float(s["value"][1]) for s in prom.query("tierstore_deadletter_events")] == [1.0]
        failed = prom.query('tierstore_job_runs_total{job="boom", status="failed"}')
        assert [float(s["value"][1]) for s in failed] == [1.0], failed  # honor_labels kept the job label
        assert {s["metric"]["tier"] for s in prom.query("tierstore_tier_up == 1")} == {"hot", "warm", "cold", "archive"}
        groups = prom.api("rules")["groups"]
        assert {r["name"]: r["health"] for g in groups for r in g["rules"]} == \
            {name: "ok" for name in _alert_names()}
    assert prom.proc is None


def _alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", (DEPLOY / "rules.yml").read_text(), re.MULTILINE)
