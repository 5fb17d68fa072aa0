"""Structured logs (issue 13, part 5): a JSON line per request with its id, tenant, route, status and
took_ms; the X-Request-Id header reused or generated and echoed; job runs' start, progress and end;
the text format; and `tierstore serve` (gunicorn) writing JSON lines, its own included.

Records are captured from the real handler (tierstore/logs.py) writing into a buffer.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from scheduler.runner import Job, JobRunner
from tests.api_support import isolated_settings, run_job, served, unique_stream
from tierstore.logs import configure_logging

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"logs-key": {"tenant": "tlogs", "scopes": ["ingest", "query", "admin"]}}
AUTH = {"Authorization": "Bearer logs-key"}
HEX_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def logs_settings(settings):
    return isolated_settings(settings, "logs", redis_db=47).model_copy(
        update={"auth_enabled": True, "api_keys": KEYS})


@pytest.fixture(scope="module")
def api(logs_settings):
    for server in served(logs_settings):
        server.http.headers.update(AUTH)
        yield server


class Captured:
    def __init__(self, log_format: str):
        self.buffer = io.StringIO()
        self.root = logging.getLogger()
        self.level = self.root.level
        self.handler = configure_logging(log_format, "INFO", stream=self.buffer)

    def lines(self) -> list[str]:
        self.handler.flush()
        return [line for line in self.buffer.getvalue().splitlines() if line]

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.lines() if line.startswith("{")]

    def close(self) -> None:
        self.root.removeHandler(self.handler)
        self.root.setLevel(self.level)
        logging.captureWarnings(False)


@pytest.fixture
def captured():
    c = Captured("json")
    yield c
    c.close()


def request_lines(captured: Captured, request_id: str, deadline_s: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + deadline_s
    while True:  # the server thread writes its line after the response left
        found = [r for r in captured.records() if r.get("logger") == "tierstore.requests"
                 and r.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_every_line_is_json_and_a_request_logs_its_fields(api, captured):
    stream = unique_stream()
    assert api.request("PUT", f"/v1/streams/{stream}", json={"description": "logs test"}).status_code == 201
    r = api.get("/v1/query/topk", {"stream": stream, "from": "now-1h", "to": "now"},
                headers={"X-Request-Id": "grafana-abc-123"})
    assert r.status_code == 200, r.text
    assert r.headers["X-Request-Id"] == "grafana-abc-123"
    [line] = request_lines(captured, "grafana-abc-123")
    assert line["level"] == "INFO" and line["time"].endswith(("Z", "+00:00"))
    assert {k: line[k] for k in ("tenant", "route", "method", "path", "status")} == {
        "tenant": "tlogs", "route": "/v1/query/topk", "method": "GET", "path": "/v1/query/topk", "status": 200}
    assert isinstance(line["took_ms"], float) and line["took_ms"] > 0
    assert all(text.startswith("{") for text in captured.lines())


def test_a_request_id_is_generated_when_absent_or_unusable(api, captured):
    r = api.get("/healthz")
    rid = r.headers["X-Request-Id"]
    assert HEX_ID.fullmatch(rid)
    [line] = request_lines(captured, rid)
    assert (line["route"], line["status"], line["tenant"]) == ("/healthz", 200, "default")
    for bad in ("two words", "x" * 129, "new\\nline", ""):
        r = api.get("/healthz", headers={"X-Request-Id": bad})
        assert HEX_ID.fullmatch(r.headers["X-Request-Id"]) and r.headers["X-Request-Id"] != bad
    assert api.get("/healthz", headers={"X-Request-Id": "x" * 128}).headers["X-Request-Id"] == "x" * 128


def test_refused_and_unmatched_requests_log_and_echo_the_id_too(api, captured):
    r = api.get("/v1/query/topk", {"stream": "s"}, headers={"Authorization": None, "X-Request-Id": "no-credentials"})
    assert r.status_code == 401 and r.headers["X-Request-Id"] == "no-credentials"
    assert r.json()["error"]["code"] == "unauthorized"
    [line] = request_lines(captured, "no-credentials")
    assert (line["status"], line["tenant"], line["route"]) == (401, None, "/v1/query/topk")

    r = api.get("/v1/query/topk", {"stream": "s"}, headers={"X-Request-Id": "bad-params"})
    assert r.status_code == 400 and r.headers["X-Request-Id"] == "bad-params"
    assert set(r.json()["error"]) == {"code", "message", "details"}
    [line] = request_lines(captured, "bad-params")
    assert (line["status"], line["tenant"]) == (400, "tlogs")

    r = api.get("/nowhere", headers={"X-Request-Id": "unmatched"})
    assert r.status_code == 404 and r.headers["X-Request-Id"] == "unmatched"
    [line] = request_lines(captured, "unmatched")
    assert (line["status"], line["route"], line["path"]) == (404, None, "/nowhere")


def test_any_record_written_during_a_request_names_its_id(api, captured):
    """An unhandled error's traceback (router/errors.py logs it) is found by the request id."""
    with api.app.test_request_context("/v1/query/topk", headers={**AUTH, "X-Request-Id": "in-context"}):
        api.app.preprocess_request()
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("tierstore.router").exception("unhandled error on GET /v1/query/topk")
    logging.getLogger("tierstore.router").warning("outside any request")
    by_message = {r["message"]: r for r in captured.records() if r["logger"] == "tierstore.router"}
    inside = by_message["unhandled error on GET /v1/query/topk"]
    assert inside["request_id"] == "in-context" and "ValueError: boom" in inside["exc_info"]
    assert by_message["outside any request"]["request_id"] is None


def test_job_runs_log_start_progress_and_end(api, logs_settings, captured):
    def probe(ctx):
        for fraction in (0.05, 0.5, 0.55, 1.0):
            ctx.progress(fraction)
        return {"rows": 3}

    def broken(ctx):
        raise RuntimeError("disk on fire")

    resources = api.app.extensions["tierstore.resources"]
    runner = JobRunner(resources.pool, logs_settings, resources, jobs=[Job("probe", probe), Job("broken", broken)])
    try:
        ok = runner.run("probe", wait=True)
        failed = runner.run("broken", wait=True)
    finally:
        runner.close()
    lines = [r for r in captured.records() if r.get("logger") == "tierstore.jobs"]
    mine = [(r["event"], r.get("progress"), r.get("status")) for r in lines if r.get("run_id") == ok]
    assert mine == [("job_start", None, None), ("job_progress", 0.05, None), ("job_progress", 0.5, None),
                    ("job_progress", 1.0, None), ("job_end", None, "done")]
    end = [r for r in lines if r.get("run_id") == ok][-1]
    assert end["job"] == "probe" and end["stats"] == {"rows": 3} and end["took_ms"] >= 0
    start = [r for r in lines if r.get("run_id") == ok][0]
    assert start["as_of"].endswith("Z")
    [fail] = [r for r in lines if r.get("run_id") == failed and r["event"] == "job_end"]
    assert fail["status"] == "failed" and fail["level"] == "ERROR" and "disk on fire" in fail["error"]
    assert "RuntimeError: disk on fire" in fail["exc_info"]

    run = run_job(api, "refresh")
    events = [r["event"] for r in captured.records() if r.get("run_id") == run["run_id"] and r.get("job") == "refresh"]
    assert events[0] == "job_start" and events[-1] == "job_end"


def test_the_text_format_keeps_the_fields_readable(api):
    c = Captured("text")
    try:
        r = api.get("/healthz", headers={"X-Request-Id": "text-line-1"})
        assert r.status_code == 200
        deadline = time.monotonic() + 5
        while not [line for line in c.lines() if "[text-line-1]" in line] and time.monotonic() < deadline:
            time.sleep(0.02)
        [line] = [line for line in c.lines() if "[text-line-1]" in line]
    finally:
        c.close()
    assert " INFO tierstore.requests [text-line-1] GET /healthz 200 " in line
    assert "route=/healthz" in line and "status=200" in line and "tenant=default" in line
    assert not line.startswith("{")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tierstore_serve_writes_json_lines_gunicorns_own_included(logs_settings, tmp_path):
    port = _free_port()
    env = {**os.environ, "TIERSTORE_POSTGRES_URL": logs_settings.postgres_url,
           "TIERSTORE_REDIS_URL": logs_settings.redis_url, "TIERSTORE_LOG_FORMAT": "json"}
    stderr_path = tmp_path / "serve.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "tierstore.cli", "serve", "--port", str(port), "--workers", "1"],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Request-Id": "via-gunicorn"},
                                 timeout=30)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, stderr_path.read_text()[-2000:]
                time.sleep(0.2)
        assert r.status_code == 200 and r.headers["X-Request-Id"] == "via-gunicorn"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    lines = [line for line in stderr_path.read_text().splitlines() if line.strip()]
    not_json = [line for line in lines if not line.startswith("{")]
    assert not not_json, not_json[:5]
    records = [json.loads(line) for line in lines]
    gunicorn = [r for r in records if r["logger"] == "gunicorn.error"]
    assert any("Listening at" in r["message"] for r in gunicorn), records[:5]
    assert any("Booting worker" in r["message"] for r in gunicorn)
    [line] = [r for r in records if r.get("request_id") == "via-gunicorn"]
    assert (line["logger"], line["route"], line["status"], line["tenant"]) == ("tierstore.requests", "/healthz",
                                                                            200, "default")
