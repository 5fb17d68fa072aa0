"""Helpers of the access tests (test_access*.py): credentials, tokens and a router with auth on."""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from rollups.timeutil import HOUR_MS, MINUTE_MS, ceil_to, floor_to, now_ms, parse_time
from router import create_app
from router.reports import register_reports
from tests.api_support import ApiServer, isolated_settings, unique_stream
from tierstore.app import build_app, close_app

SECRET = "access-test-secret-0123456789abcdef"
ALL = ["ingest", "query", "admin"]
KEYS = {
    "key-a-all": {"tenant": "ta", "scopes": ALL},
    "key-a-no-ingest": {"tenant": "ta", "scopes": ["query", "admin"]},
    "key-a-no-query": {"tenant": "ta", "scopes": ["ingest", "admin"]},
    "key-a-no-admin": {"tenant": "ta", "scopes": ["ingest", "query"]},
    "key-b": "tb",  # the older form: scopes ingest and query
    "key-rl": {"tenant": "trl", "scopes": ALL},
    "key-ev": {"tenant": "tev", "scopes": ALL},
}
MISSING_SCOPE_KEY = {"ingest": "key-a-no-ingest", "query": "key-a-no-query", "admin": "key-a-no-admin"}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def pem(private_key) -> str:
    return private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def token(key, alg: str = "HS256", *, tenant: str | None = "ta", scope: str | None = "ingest query admin",
          exp_s: float | None = 600, **claims) -> str:
    body = {"sub": "alice", **claims}
    if tenant is not None:
        body["tenant"] = tenant
    if scope is not None:
        body["scope"] = scope
    if exp_s is not None:
        body["exp"] = int(time.time() + exp_s)
    return jwt.encode(body, key, algorithm=alg)


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def make_world(settings, name: str, redis_db: int, tmp: Path):
    """A router over the real tiers with auth on (KEYS, HS256 SECRET, RS256 RSA_KEY); tenant ta holds 30
    events of `stream` in [start, end) (hot), a finished report and a finished job run. Yields it."""
    s = isolated_settings(settings, name, redis_db=redis_db).model_copy(update={
        "auth_enabled": True, "api_keys": KEYS, "jwt_secret": SECRET, "jwt_public_key": pem(RSA_KEY)})
    app = build_app(s)
    api = ApiServer(app)
    admin = bearer("key-a-all")
    b_warm = parse_time(api.get("/v1/tiers", headers=admin).json()["boundaries"]["warm"])
    now = now_ms()
    start = ceil_to(max(b_warm, now - 6 * HOUR_MS), MINUTE_MS)
    end = floor_to(now, MINUTE_MS) - 2 * MINUTE_MS
    stream = unique_stream("acc")
    events = [{"stream": stream, "key": "ka" + "abc"[i % 3], "ts": start + i * MINUTE_MS, "value": float(i)}
              for i in range(30)]
    assert api.post("/v1/events", json=events, headers=admin).status_code == 202
    assert api.post(f"/v1/streams/{stream}/keys/kaa/score", json={"delta": 5}, headers=admin).status_code == 200
    w = SimpleNamespace(app=app, api=api, settings=s, stream=stream, start=start, end=end, admin=admin,
                        tmp=tmp)
    w.report_id = finished_report(api, admin, stream, start, end)
    r = api.post("/v1/jobs/refresh/run", json={}, headers=admin)
    assert r.status_code == 202, r.text
    w.run_id = r.json()["run_id"]
    wait_run(api, admin, w.run_id)
    yield w
    api.close()
    close_app(app)


def finished_report(api, headers, stream, start, end, kind="totals") -> str:
    r = api.post("/v1/reports", json={"stream": stream, "from": start, "to": end, "kind": kind, "format": "json"},
                 headers=headers)
    assert r.status_code == 202, r.text
    rid = r.json()["id"]
    deadline = time.monotonic() + 120
    while (st := api.get(f"/v1/reports/{rid}", headers=headers).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, st
        time.sleep(0.1)
    assert st["status"] == "done", st
    return rid


def wait_run(api, headers, run_id) -> dict:
    deadline = time.monotonic() + 120
    while (run := api.get(f"/v1/jobs/runs/{run_id}", headers=headers).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, run
        time.sleep(0.1)
    return run


def side_app(w, **settings):
    """Another router over the same real tiers and Redis, with other access settings."""
    ctx = w.app.extensions["tierstore"]
    app = create_app(w.settings.model_copy(update=settings), tiers=ctx.tiers, catalog=ctx.catalog, jobs=ctx.jobs,
                     hot=ctx.hot)
    register_reports(app, w.app.extensions["tierstore.reports"])
    return app


def assert_error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    err = body["error"]
    assert err["code"] == code and err["message"] and isinstance(err["details"], list), err
    assert "Traceback" not in resp.text
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    return err
