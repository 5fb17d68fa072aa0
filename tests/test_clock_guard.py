"""The guarded clock (issue 8, findings 1 and 2), with allow_clock_override OFF as in production:
a job's as_of later than now + clock_skew is refused with 422 `clock_override_disabled` on every
path that starts a job (the HTTP API, `tierstore jobs run`, `tierstore retention`, the runner
itself), so nothing is deleted or sealed ahead of the real clock; now (+ a minute) and the past
still work; every run records who asked for it."""
from __future__ import annotations

import getpass
import os
import random
import subprocess
import sys
from pathlib import Path

import boto3
import psycopg
import pytest
from botocore.config import Config

from rollups.errors import ClockOverrideDisabled
from rollups.timeutil import DAY_MS, MINUTE_MS, TimeRange, floor_to, format_time, now_ms, parse_time
from tests.api_support import Oracle, check_topk, isolated_settings, run_job, served, unique_stream

ROOT = Path(__file__).resolve().parent.parent
WARM_AGE, COLD_AGE = 3 * DAY_MS, 6 * DAY_MS
Y2040, Y2030 = "2040-01-01T00:00:00Z", "2030-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def guarded_settings(settings):
    s = isolated_settings(settings, "clock_guard", redis_db=20).model_copy(update={
        "hot_age": DAY_MS, "warm_age": WARM_AGE, "cold_age": COLD_AGE, "grace_period": 0,
        "allow_clock_override": False})
    assert s.allow_clock_override is False and s.clock_skew == 5 * MINUTE_MS
    return s


@pytest.fixture(scope="module")
def api(guarded_settings):
    yield from served(guarded_settings)


@pytest.fixture(scope="module")
def loaded(api):
    """Events over the last 10 days moved down with as_of now: archive < now-6d <= cold < now-3d <= warm/hot."""
    stream, oracle, rnd = unique_stream("clk"), Oracle(), random.Random(3)
    now = now_ms()
    start, end = floor_to(now - 10 * DAY_MS, DAY_MS) + 5 * MINUTE_MS, now - 10 * MINUTE_MS
    batch = [{"stream": stream, "key": f"k{rnd.randint(0, 20)}", "ts": rnd.randrange(start, end),
              "value": rnd.randint(1, 9)} for _ in range(1500)]
    r = api.post("/v1/events", json=batch)
    assert r.status_code == 202, r.text
    oracle.add(batch)
    for job in ("flush", "refresh", "export_cold", "archive"):
        run = run_job(api, job, timeout_s=600)
        assert run["status"] == "done", run
    b = api.get("/v1/tiers").json()["boundaries"]
    assert parse_time(b["archive"]) == floor_to(now - COLD_AGE, DAY_MS)
    return {"stream": stream, "oracle": oracle, "range": TimeRange(floor_to(start, MINUTE_MS), end)}


def archived_objects(settings) -> list[str]:
    """Object keys of every archived partition (the registry), each checked to exist in S3."""
    with psycopg.connect(settings.postgres_url) as conn:
        manifests = [r[0] for r in conn.execute("SELECT manifest FROM archive_partitions WHERE status = 'archived'")]
    keys = sorted(o["key"] for m in manifests for o in m["objects"])
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint, aws_access_key_id=settings.s3_access_key,
                      aws_secret_access_key=settings.s3_secret_key, region_name=settings.s3_region,
                      config=Config(s3={"addressing_style": "path"}))
    for key in keys:
        s3.head_object(Bucket=settings.s3_bucket, Key=key)  # raises when the object is gone
    return keys


def job_runs(settings, job: str) -> list[tuple]:
    with psycopg.connect(settings.postgres_url) as conn:
        return conn.execute("SELECT id, as_of, requested_by FROM job_runs WHERE job = %s ORDER BY id",
                            (job,)).fetchall()


def assert_refused(r, as_of: str) -> None:
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "clock_override_disabled", err
    assert err["details"][0]["field"] == "as_of" and "allow_clock_override" in err["message"]


def test_retention_in_2040_is_refused_and_deletes_nothing(api, loaded, guarded_settings):
    before = archived_objects(guarded_settings)
    assert before, "the archive job archived nothing: the test would prove nothing"
    runs_before = job_runs(guarded_settings, "retention")
    r = api.post("/v1/jobs/retention/run", json={"as_of": Y2040})
    assert_refused(r, Y2040)
    assert job_runs(guarded_settings, "retention") == runs_before  # refused before anything was recorded
    assert archived_objects(guarded_settings) == before
    rng = loaded["range"]
    for by in ("count", "sum"):
        check_topk(api, loaded["oracle"], loaded["stream"], rng.start, rng.end, 10, by)


def test_moving_boundaries_to_2030_is_refused_and_ingest_keeps_working(api, loaded):
    tiers_before = api.get("/v1/tiers").json()
    for job in ("expire_hot", "export_cold", "archive"):
        assert_refused(api.post(f"/v1/jobs/{job}/run", json={"as_of": Y2030}), Y2030)
        assert_refused(api.post(f"/v1/jobs/{job}/run", json={"as_of": "now+1d"}), "now+1d")
    after = api.get("/v1/tiers").json()
    assert (after["catalog_version"], after["boundaries"]) == (tiers_before["catalog_version"],
                                                               tiers_before["boundaries"])
    now = now_ms()
    events = [{"stream": loaded["stream"], "key": "fresh", "ts": now - MINUTE_MS, "value": 2.0},
              {"stream": loaded["stream"], "key": "fresh", "ts": now - 2 * DAY_MS, "value": 3.0}]
    r = api.post("/v1/events", json=events)
    assert r.status_code == 202, r.text
    loaded["oracle"].add(events)
    check_topk(api, loaded["oracle"], loaded["stream"], loaded["range"].start, now + MINUTE_MS, 5, "sum")


def test_as_of_now_plus_a_minute_and_in_the_past_run_and_record_who_asked(api, loaded):
    boundaries = api.get("/v1/tiers").json()["boundaries"]
    soon = format_time(now_ms() + MINUTE_MS)
    run = run_job(api, "expire_hot", as_of=soon)
    assert run["status"] == "done", run
    assert run["requested_by"] == "api:default:anonymous"
    assert run["as_of"] == parse_time(soon)
    past = run_job(api, "export_cold", as_of="2001-01-01T00:00:00Z")
    assert past["status"] == "done" and past["requested_by"] == "api:default:anonymous", past
    after = api.get("/v1/tiers").json()["boundaries"]
    assert after["cold"] == boundaries["cold"] and after["archive"] == boundaries["archive"]
    listed = {j["name"]: j for j in api.get("/v1/jobs").json()}
    assert listed["export_cold"]["last_run"]["requested_by"] == "api:default:anonymous"


def test_the_runner_refuses_a_future_clock_whoever_calls_it(api, loaded, guarded_settings):
    from scheduler.runner import _SCHEDULED, build_scheduler, run_scheduled

    runner = api.app.extensions["tierstore"].jobs
    runs_before = job_runs(guarded_settings, "retention")
    with pytest.raises(ClockOverrideDisabled):
        runner.run("retention", as_of=parse_time(Y2040), requested_by="test")
    with pytest.raises(ClockOverrideDisabled):
        runner.run("export_cold", as_of=now_ms() + guarded_settings.clock_skew + 60_000)
    assert job_runs(guarded_settings, "retention") == runs_before
    run_id = runner.run("flush", as_of=now_ms() + guarded_settings.clock_skew - 60_000, wait=True,
                        requested_by="test")
    assert runner.get_run(run_id)["requested_by"] == "test"
    build_scheduler(runner, guarded_settings)  # not started: run_scheduled is what its ticks call
    try:
        run_scheduled("refresh")
    finally:
        _SCHEDULED.pop("runner", None)
    assert job_runs(guarded_settings, "refresh")[-1][2] == "scheduler"


def cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TIERSTORE_ALLOW_CLOCK_OVERRIDE"}
    env.update(TIERSTORE_POSTGRES_URL=settings.postgres_url, TIERSTORE_REDIS_URL=settings.redis_url,
               TIERSTORE_HOT_AGE="1d", TIERSTORE_WARM_AGE="3d", TIERSTORE_COLD_AGE="6d",
               TIERSTORE_GRACE_PERIOD="0", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tierstore.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_cli_refuses_a_future_clock_and_records_the_os_user(api, loaded, guarded_settings):
    before = archived_objects(guarded_settings)
    for args in (("jobs", "run", "retention", "--as-of", Y2040, "--quiet"),
                 ("jobs", "run", "export_cold", "--as-of", Y2030, "--quiet"),
                 ("retention", "--as-of", Y2040)):
        done = cli(guarded_settings, *args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert "allow_clock_override" in done.stderr, done.stderr
    assert archived_objects(guarded_settings) == before
    dry = cli(guarded_settings, "retention", "--as-of", Y2040, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr  # a dry run deletes nothing: planning ahead is allowed
    assert archived_objects(guarded_settings) == before
    ok = cli(guarded_settings, "jobs", "run", "flush", "--quiet")
    assert ok.returncode == 0, ok.stderr
    assert job_runs(guarded_settings, "flush")[-1][2] == f"cli:{getpass.getuser()}"
