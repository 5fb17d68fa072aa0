"""Access control (API.md, Access) over the real tiers: every route of the app x every kind of
credential, JWTs of each algorithm, tenant isolation, rate limits shared through Redis, and the
refusal of `tierstore serve` to listen on a public address with auth off."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import jwt
import psycopg
import pytest
import redis as redis_lib
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from rollups.timeutil import HOUR_MS, MINUTE_MS, ceil_to, floor_to, now_ms, parse_time
from router import context, create_app, policy
from router.auth import bind_refusal, is_loopback
from router.reports import register_reports
from tests.api_support import ApiServer, isolated_settings, unique_stream
from tierstore.app import build_app, close_app
from tiers.eventlog import STREAM_KEY

ROOT = Path(__file__).resolve().parent.parent
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


@pytest.fixture(scope="module")
def world(settings, tmp_path_factory):
    s = isolated_settings(settings, "access", redis_db=32).model_copy(update={
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
                        tmp=tmp_path_factory.mktemp("access"))
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


# ---- what "nothing changed" means --------------------------------------------------------------

def state(w) -> tuple:
    client = redis_lib.Redis.from_url(w.settings.redis_url)
    try:
        log_len, keys = client.xlen(STREAM_KEY), client.dbsize()
    finally:
        client.close()
    with psycopg.connect(w.settings.postgres_url) as conn:
        runs = conn.execute("SELECT count(*), max(id) FROM job_runs").fetchone()
        reports = conn.execute("SELECT count(*) FROM reports").fetchone()
        catalog = conn.execute("SELECT b_archive, b_cold, b_warm, version FROM catalog").fetchone()
    return log_len, keys, runs, reports, catalog, tenant_view(w, w.admin)


def tenant_view(w, headers) -> tuple:
    """What a tenant sees of the test stream: its top-K, a series total and a report-free rank."""
    q = {"stream": w.stream, "from": w.start, "to": w.end}
    top = w.api.get("/v1/query/topk", {**q, "k": 100, "by": "sum"}, headers=headers).json()["items"]
    series = w.api.get("/v1/query/series", {**q, "step": "1d", "agg": "count"}, headers=headers).json()["points"]
    return tuple((i["key"], i["value"]) for i in top), sum(p["value"] or 0 for p in series)


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


# ---- the routes and an example request for each -------------------------------------------------

@dataclass
class Example:
    method: str
    path: str
    json: object = None
    params: dict = field(default_factory=dict)
    ok: int | None = None  # the status with the right scope; None: anything but 401/403
    scope: str | None = "?"  # the scope API.md gives the route (None: public), written here independently

    def send(self, api, headers=None):
        return api.request(self.method, self.path, params=self.params, headers=headers or {},
                           **({"json": self.json} if self.json is not None else {}))


def examples(w) -> dict[tuple[str, str], Example]:
    q = {"stream": w.stream, "from": w.start, "to": w.end}
    event = [{"stream": w.stream, "key": "kz", "ts": w.start + 7}]
    report = {"stream": w.stream, "from": w.start, "to": w.end, "kind": "totals", "format": "json"}
    return {
        ("GET", "/healthz"): Example("GET", "/healthz", ok=200, scope=None),
        ("GET", "/readyz"): Example("GET", "/readyz", ok=200, scope=None),
        ("GET", "/metrics"): Example("GET", "/metrics", ok=200, scope=None),
        ("GET", "/openapi.json"): Example("GET", "/openapi.json", ok=200, scope=None),
        ("GET", "/static/<>"): Example("GET", "/static/nothing.css", ok=404, scope=None),
        ("POST", "/v1/events"): Example("POST", "/v1/events", event, ok=202, scope="ingest"),
        ("POST", "/v1/streams/<>/keys/<>/score"): Example("POST", f"/v1/streams/{w.stream}/keys/kaa/score",
                                                          {"delta": 1}, ok=200, scope="ingest"),
        ("GET", "/v1/query/series"): Example("GET", "/v1/query/series", params={**q, "step": "1h", "agg": "sum"},
                                             ok=200, scope="query"),
        ("GET", "/v1/query/topk"): Example("GET", "/v1/query/topk", params=q, ok=200, scope="query"),
        ("GET", "/v1/query/rank"): Example("GET", "/v1/query/rank", params={**q, "key": "kab"}, ok=200,
                                           scope="query"),
        ("POST", "/v1/reports"): Example("POST", "/v1/reports", report, ok=202, scope="query"),
        ("GET", "/v1/reports/<>"): Example("GET", f"/v1/reports/{w.report_id}", ok=200, scope="query"),
        ("GET", "/v1/reports/<>/download"): Example("GET", f"/v1/reports/{w.report_id}/download", ok=200,
                                                    scope="query"),
        ("GET", "/v1/tiers"): Example("GET", "/v1/tiers", ok=200, scope="admin"),
        ("GET", "/v1/jobs"): Example("GET", "/v1/jobs", ok=200, scope="admin"),
        ("POST", "/v1/jobs/<>/run"): Example("POST", "/v1/jobs/refresh/run", {}, ok=202, scope="admin"),
        ("GET", "/v1/jobs/runs/<>"): Example("GET", f"/v1/jobs/runs/{w.run_id}", ok=200, scope="admin"),
    }


def served_routes(app) -> list[tuple[str, str]]:
    """Every (method, rule) the app serves; HEAD and the automatic OPTIONS are covered by GET's entry."""
    return sorted({(m, r.rule) for r in app.url_map.iter_rules() for m in r.methods if m not in ("HEAD", "OPTIONS")})


def example_for(w, method: str, rule: str) -> Example:
    known = examples(w).get(policy.rule_key(method, rule))
    if known is not None:
        return known
    path = re.sub(r"<[^>]*>", "x", rule)  # a route added after these tests: still checked, status unknown
    return Example(method, path, {} if method in ("POST", "PUT", "PATCH") else None)


def test_the_policy_gives_each_route_the_scope_of_the_contract(world):
    wrong = {f"{m} {r}": (policy.POLICY.get((m, r), "unlisted"), ex.scope) for (m, r), ex in examples(world).items()
             if policy.required_scope(m, r) != ex.scope}
    assert not wrong, f"policy vs API.md (got, want): {wrong}"


def test_every_served_route_is_in_the_policy(world):
    unlisted = [f"{m} {r}" for m, r in served_routes(world.app) if not policy.listed(m, r)]
    assert not unlisted, f"add these routes to router/policy.py POLICY with their scope: {unlisted}"


def test_the_policy_names_existing_scopes():
    assert set(policy.POLICY.values()) <= {None, *policy.SCOPES}
    assert policy.required_scope("GET", "/v1/something/<int:new>") == "admin"
    assert policy.required_scope("HEAD", "/v1/query/topk") == "query"
    assert policy.required_scope("OPTIONS", "/v1/jobs", automatic_options=True) is None
    assert policy.required_scope("POST", "/v1/jobs/<job_name>/run") == "admin"


CASES = ("no credentials", "bad signature", "expired token", "another tenant's key", "missing scope", "right scope")


def credential(case: str, scope: str | None) -> dict:
    wanted = scope or "query"
    if case == "no credentials":
        return {}
    if case == "bad signature":
        return bearer(token("not-the-secret-at-all-0123456789ab", scope=wanted))
    if case == "expired token":
        return bearer(token(SECRET, scope=wanted, exp_s=-3600))
    if case == "another tenant's key":
        return bearer("key-b")
    if case == "missing scope":
        return bearer(MISSING_SCOPE_KEY[wanted])
    return bearer(token(SECRET, scope=wanted))  # right scope, and only it


@pytest.mark.parametrize("case", CASES)
def test_matrix(world, case):
    """Each route x this kind of credential: the status and shape of API.md, and nothing changed on refusal."""
    failures = []
    for method, rule in served_routes(world.app):
        ex = example_for(world, method, rule)
        scope = policy.required_scope(method, rule) if ex.scope == "?" else ex.scope
        before = state(world)
        resp = ex.send(world.api, credential(case, scope))
        label = f"{case}: {method} {rule} -> {resp.status_code} {resp.text[:200]}"
        try:
            refused = check(world, case, scope, ex, resp)
            if refused:
                assert state(world) == before, "a refused request changed something"
        except AssertionError as exc:
            failures.append(f"{label}\n    {exc}")
        settle(world)
    assert not failures, "\n".join(failures)


def check(w, case: str, scope: str | None, ex: Example, resp) -> bool:
    """Assert the answer for this case; True when the request was refused."""
    if scope is None:
        assert resp.status_code not in (401, 403)
        if ex.ok is not None:
            assert resp.status_code == ex.ok
        return False
    if case in ("no credentials", "bad signature", "expired token"):
        err = assert_error(resp, 401, "unauthorized")
        want = {"no credentials": "missing", "bad signature": "bad signature", "expired token": "expired"}[case]
        assert err["details"] == [{"field": "Authorization", "problem": want}], err
        return True
    if case == "missing scope" or (case == "another tenant's key" and scope == "admin"):
        err = assert_error(resp, 403, "forbidden")
        assert err["details"] == [{"field": "scope", "problem": "missing", "scope": scope}], err
        return True
    if case == "another tenant's key":
        check_other_tenant(w, ex, resp)
        return False
    assert resp.status_code not in (401, 403)
    if ex.ok is not None:
        assert resp.status_code == ex.ok
    return False


def check_other_tenant(w, ex: Example, resp) -> None:
    """Tenant tb, authorized for the route, sees or touches nothing of tenant ta."""
    if "/v1/reports/" in ex.path:
        err = assert_error(resp, 404, "report_not_found")
        unknown = w.api.get(ex.path.replace(w.report_id, "no-such-report"), headers=bearer("key-b"))
        assert unknown.json()["error"]["details"] == err["details"]
        assert unknown.json()["error"]["message"].replace("no-such-report", w.report_id) == err["message"]
        return
    assert resp.status_code not in (401, 403)
    body = resp.json() if resp.headers.get("Content-Type", "").startswith("application/json") else {}
    if ex.path == "/v1/query/topk":
        assert resp.status_code == 200 and body["items"] == [], body
    elif ex.path == "/v1/query/series":
        assert resp.status_code == 200 and all(p["value"] is None for p in body["points"]), body
    elif ex.path == "/v1/query/rank":
        assert resp.status_code == 200 and (body["rank"], body["total_keys"]) == (None, 0), body
    elif ex.path.endswith("/score"):
        assert resp.status_code == 200 and body["score"] == 1.0 and body["rank"] == 1, body
    elif ex.ok is not None:
        assert resp.status_code == ex.ok


def settle(w) -> None:
    """Let work a request started (a job run, a report) finish, so the next state() is stable."""
    with psycopg.connect(w.settings.postgres_url) as conn:
        deadline = time.monotonic() + 120
        while conn.execute("SELECT count(*) FROM job_runs WHERE status IN ('queued', 'running')").fetchone()[0] \
                + conn.execute("SELECT count(*) FROM reports WHERE status IN ('queued', 'running')").fetchone()[0]:
            assert time.monotonic() < deadline, "a job run or report is still running"
            time.sleep(0.1)


def test_other_tenant_never_sees_tenant_a(world):
    """Tenant B's queries, reports and downloads over A's stream hold nothing of A, and B's writes
    to a stream of the same name leave A's answers as they were."""
    b = bearer("key-b")
    a_before = tenant_view(world, world.admin)
    assert any(k.startswith("ka") for k, _ in a_before[0]) and a_before[1] >= 30
    b_before = tenant_view(world, b)
    assert not any(k.startswith("ka") for k, _ in b_before[0])
    r = world.api.post("/v1/events", json=[{"stream": world.stream, "key": "kb-only", "ts": world.start + 1}],
                       headers=b)
    assert r.status_code == 202, r.text
    assert tenant_view(world, world.admin) == a_before
    b_after = tenant_view(world, b)
    assert ("kb-only", 1.0) in b_after[0] and b_after[1] == b_before[1] + 1
    assert not any(k.startswith("ka") for k, _ in b_after[0])
    rid = finished_report(world.api, b, world.stream, world.start, world.end, kind="events")
    download = world.api.get(f"/v1/reports/{rid}/download", headers=b)
    keys = [row["key"] for row in download.json()["rows"]]
    assert "kb-only" in keys and not any(k.startswith("ka") for k in keys), keys
    for path in (f"/v1/reports/{rid}", f"/v1/reports/{rid}/download"):
        assert_error(world.api.get(path, headers=world.admin), 404, "report_not_found")


def test_refused_job_run_records_no_run(world):
    """The finding of issue 8: a tenant's key ran retention for everybody. Now 403 and no job_runs row."""
    before = state(world)
    for headers in (bearer("key-b"), bearer("key-a-no-admin"), {}):
        r = world.api.post("/v1/jobs/retention/run", json={"as_of": "2040-01-01T00:00:00Z"}, headers=headers)
        assert r.status_code in (401, 403), r.text
    assert state(world) == before


# ---- JWT ----------------------------------------------------------------------------------------

def test_jwt_of_each_algorithm(world):
    es_pem = world.tmp / "es256.pem"
    es_pem.write_text(pem(EC_KEY))
    q = {"stream": world.stream, "from": world.start, "to": world.end}
    cases = [(world.app, SECRET, "HS256"), (world.app, RSA_KEY, "RS256"),
             (side_app(world, jwt_secret="", jwt_public_key=str(es_pem)), EC_KEY, "ES256")]
    for app, key, alg in cases:
        client = app.test_client()
        ok = client.get("/v1/query/topk", query_string=q, headers=bearer(token(key, alg, scope="query")))
        assert ok.status_code == 200 and ok.get_json()["items"], (alg, ok.get_json())
        no_scope = client.get("/v1/jobs", headers=bearer(token(key, alg, scope="query ingest")))
        assert no_scope.status_code == 403 and no_scope.get_json()["error"]["details"][0]["scope"] == "admin"
        expired = client.get("/v1/query/topk", query_string=q, headers=bearer(token(key, alg, exp_s=-3600)))
        assert expired.status_code == 401, alg
        assert expired.get_json()["error"]["details"] == [{"field": "Authorization", "problem": "expired"}]
    es_client = cases[2][0].test_client()
    rs_on_es = es_client.get("/v1/query/topk", query_string=q, headers=bearer(token(RSA_KEY, "RS256")))
    assert rs_on_es.status_code == 401  # only ES256 is accepted with an EC key


@pytest.mark.parametrize("name, make, problem", [
    ("no exp", lambda: token(SECRET, exp_s=None), "missing claim"),
    ("no tenant", lambda: token(SECRET, tenant=None), "no tenant"),
    ("tenant not a string", lambda: jwt.encode({"tenant": 7, "scope": "query", "exp": int(time.time()) + 60},
                                               SECRET, algorithm="HS256"), "no tenant"),
    ("alg none", lambda: jwt.encode({"tenant": "ta", "scope": "query", "exp": int(time.time()) + 60}, None,
                                    algorithm="none"), "algorithm not accepted"),
    ("HS256 keyed with the RSA public key (algorithm confusion)",
     lambda: hs256_with(pem(RSA_KEY).encode()), "bad signature"),
    ("ES256 not configured on this app", lambda: token(EC_KEY, "ES256"), "algorithm not accepted"),
    ("garbage with two dots", lambda: "abc.def.ghi", "invalid token"),
    ("not bearer", None, "not a bearer token"),
])
def test_bad_tokens_are_401(world, name, make, problem):
    client = world.app.test_client()
    headers = {"Authorization": "Basic dXNlcjpwYXNz"} if make is None else bearer(make())
    resp = client.get("/v1/query/topk", query_string={"stream": world.stream, "from": "now-1h", "to": "now"},
                      headers=headers)
    assert resp.status_code == 401, resp.get_json()
    assert resp.get_json()["error"]["details"] == [{"field": "Authorization", "problem": problem}]


def hs256_with(key: bytes) -> str:
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"tenant": "ta", "scope": "admin", "exp": int(time.time()) + 60}).encode())
    sig = b64(hmac.new(key, head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def test_audience_and_issuer_are_checked_when_set(world):
    client = side_app(world, jwt_audience="tierstore", jwt_issuer="https://idp.example").test_client()

    def status(**claims):
        return client.get("/v1/jobs", headers=bearer(token(SECRET, **claims))).status_code

    assert status(aud="tierstore", iss="https://idp.example") == 200
    assert status(aud="other", iss="https://idp.example") == 401
    assert status(iss="https://idp.example") == 401
    assert status(aud="tierstore", iss="https://evil.example") == 401
    assert status(aud="tierstore") == 401
    plain = world.app.test_client()  # neither set: a token with aud/iss is accepted
    assert plain.get("/v1/jobs", headers=bearer(token(SECRET, aud="x", iss="y"))).status_code == 200


def test_principal_names_who_asked_and_unlisted_routes_need_admin(world):
    app = side_app(world)

    @app.get("/v1/brand-new-thing")
    def brand_new():
        p = context.principal()
        return {"who": str(p), "tenant": context.tenant(), "scopes": sorted(p.scopes)}

    client = app.test_client()
    refused = client.get("/v1/brand-new-thing", headers=bearer("key-a-no-admin"))
    assert refused.status_code == 403
    assert refused.get_json()["error"]["details"] == [{"field": "scope", "problem": "missing", "scope": "admin"}]
    by_key = client.get("/v1/brand-new-thing", headers=bearer("key-a-all")).get_json()
    assert re.fullmatch(r"ta:key:[0-9a-f]{12}", by_key["who"]) and "key-a-all" not in by_key["who"]
    assert by_key["tenant"] == "ta" and by_key["scopes"] == sorted(ALL)
    by_jwt = client.get("/v1/brand-new-thing", headers=bearer(token(SECRET, scope="admin"))).get_json()
    assert by_jwt == {"who": "ta:jwt:alice", "tenant": "ta", "scopes": ["admin"]}


def test_auth_disabled_is_tenant_default_with_every_scope(world):
    app = side_app(world, auth_enabled=False)

    @app.get("/v1/who")
    def who():
        return {"who": str(context.principal()), "scopes": sorted(context.principal().scopes)}

    client = app.test_client()
    assert client.get("/v1/who").get_json() == {"who": "default:anonymous", "scopes": sorted(ALL)}
    assert client.get("/v1/jobs").status_code == 200


def test_auth_on_without_any_credential_fails_at_start(world):
    from rollups.errors import ConfigError

    with pytest.raises(ConfigError, match="TIERSTORE_API_KEYS"):
        side_app(world, api_keys={}, jwt_secret="", jwt_public_key="")
    with pytest.raises(ConfigError, match="TIERSTORE_JWT_PUBLIC_KEY"):
        side_app(world, jwt_public_key=str(world.tmp / "missing.pem"))


# ---- rate limits --------------------------------------------------------------------------------

def test_request_limit_is_shared_by_two_routers(world):
    one = ApiServer(side_app(world, rate_limits={"query": "3/hour", "admin": "1000/hour"}))
    two = ApiServer(side_app(world, rate_limits={"query": "3/hour", "admin": "1000/hour"}))
    try:
        q = {"stream": world.stream, "from": world.start, "to": world.end}
        rl = bearer("key-rl")
        assert [s.get("/v1/query/topk", q, headers=rl).status_code for s in (one, two, one)] == [200, 200, 200]
        for server in (two, one):
            resp = server.get("/v1/query/topk", q, headers=rl)
            err = assert_error(resp, 429, "rate_limited")
            assert 3000 <= int(resp.headers["Retry-After"]) <= 3600, resp.headers
            assert err["details"][0]["field"] == "query"
        assert one.get("/v1/jobs", headers=rl).status_code == 200  # another scope, another budget
        assert two.get("/v1/query/topk", q, headers=bearer("key-b")).status_code == 200  # another tenant
        r = one.post("/v1/events", json=[{"stream": world.stream, "key": "rl", "ts": world.start}], headers=rl)
        assert r.status_code == 202  # ingest has no limit here
        assert one.get("/healthz").status_code == 200
    finally:
        one.close()
        two.close()


def test_events_quota_counts_events_and_refused_batches_store_nothing(world):
    one = ApiServer(side_app(world, rate_limits={"events": "100/day"}))
    two = ApiServer(side_app(world, rate_limits={"events": "100/day"}))
    ev = bearer("key-ev")
    stream = unique_stream("quota")

    def batch(n):
        return [{"stream": stream, "key": f"k{i}", "ts": world.start + i, "id": uuid.uuid4().hex} for i in range(n)]

    def stored():
        body = one.get("/v1/query/series", {"stream": stream, "from": world.start, "to": world.end, "step": "1d",
                                            "agg": "count"}, headers=ev).json()
        return sum(p["value"] or 0 for p in body["points"])

    try:
        assert one.post("/v1/events", json=batch(60), headers=ev).status_code == 202
        resp = two.post("/v1/events", json=batch(50), headers=ev)
        err = assert_error(resp, 429, "rate_limited")
        assert int(resp.headers["Retry-After"]) >= 1 and err["details"][0]["cost"] == 50
        assert stored() == 60
        assert two.post("/v1/events", json=batch(40), headers=ev).status_code == 202
        assert stored() == 100
        assert_error(one.post(f"/v1/streams/{stream}/keys/k0/score", json={"delta": 1}, headers=ev), 429,
                     "rate_limited")
        big = one.post("/v1/events", json=batch(101), headers=bearer("key-rl"))
        assert "exceeds the limit" in assert_error(big, 429, "rate_limited")["message"]
        assert one.post("/v1/events", json=batch(5), headers=bearer("key-b")).status_code == 202
        assert stored() == 100
    finally:
        one.close()
        two.close()


def test_no_rate_limits_by_default(world):
    assert world.app.extensions["tierstore.ratelimit"] is None


def test_bad_rate_limit_settings_fail_at_start(world):
    from rollups.errors import ConfigError

    with pytest.raises(ConfigError, match="TIERSTORE_RATE_LIMITS"):
        side_app(world, rate_limits={"everything": "5/minute"})
    with pytest.raises(ConfigError, match="TIERSTORE_RATE_LIMITS.query"):
        side_app(world, rate_limits={"query": "lots"})


# ---- tierstore serve on a public address --------------------------------------------------------

def test_serve_refuses_a_public_bind_while_auth_is_off(world):
    env = {**os.environ, "TIERSTORE_AUTH_ENABLED": "false", "TIERSTORE_ALLOW_UNAUTHENTICATED": "false",
           "TIERSTORE_POSTGRES_URL": world.settings.postgres_url, "TIERSTORE_REDIS_URL": world.settings.redis_url}
    env.pop("TIERSTORE_API_KEYS", None)
    proc = subprocess.run([sys.executable, "-m", "tierstore.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "TIERSTORE_ALLOW_UNAUTHENTICATED=true" in proc.stderr and "0.0.0.0" in proc.stderr, proc.stderr
    assert "serving on" not in proc.stdout


def test_bind_check(world):
    off = SimpleNamespace(auth_enabled=False, allow_unauthenticated=False)
    for host in ("127.0.0.1", "127.0.0.53", "localhost", "::1", "[::1]", "unix:/tmp/tierstore.sock"):
        assert is_loopback(host) and bind_refusal(host, off) is None, host
    for host in ("0.0.0.0", "::", "10.1.2.3", "192.168.0.1", "no-such-host.invalid"):
        assert "allow_unauthenticated" in bind_refusal(host, off), host
    assert bind_refusal("0.0.0.0", SimpleNamespace(auth_enabled=False, allow_unauthenticated=True)) is None
    assert bind_refusal("0.0.0.0", SimpleNamespace(auth_enabled=True, allow_unauthenticated=False)) is None
