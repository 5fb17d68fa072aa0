"""Access control (API.md, Access) over the real tiers: every route the app serves x every kind of
credential (status, error shape, nothing changed on refusal), tenant isolation, the principal."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import psycopg
import pytest
import redis as redis_lib

from router import context, policy
from tests.api_support import data_key_count
from tests.access_support import (ALL, MISSING_SCOPE_KEY, SECRET, assert_error, bearer, finished_report,
                                  make_world, side_app, token)
from tiers.eventlog import total_length


@pytest.fixture(scope="module")
def world(settings, tmp_path_factory):
    yield from make_world(settings, "access", 32, tmp_path_factory.mktemp("access"))


# ---- what "nothing changed" means --------------------------------------------------------------

def state(w) -> tuple:
    client = redis_lib.Redis.from_url(w.settings.redis_url)
    try:
        keys = data_key_count(client)
        log_len = total_length(client)
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
    grafana_topk = {"range": {"from": w.start, "to": w.end}, "targets": [
        {"refId": "A", "target": w.stream, "payload": {"kind": "topk", "k": 100}}]}
    return {
        ("GET", "/healthz"): Example("GET", "/healthz", ok=200, scope=None),
        ("GET", "/readyz"): Example("GET", "/readyz", ok=200, scope=None),
        ("GET", "/metrics"): Example("GET", "/metrics", ok=200, scope=None),
        ("GET", "/openapi.json"): Example("GET", "/openapi.json", ok=200, scope=None),
        ("GET", "/static/<>"): Example("GET", "/static/nothing.css", ok=404, scope=None),
        ("GET", "/ui"): Example("GET", "/ui", ok=200, scope=None),
        ("GET", "/ui/<>"): Example("GET", "/ui/explore", ok=200, scope=None),
        ("POST", "/v1/events"): Example("POST", "/v1/events", event, ok=202, scope="ingest"),
        ("POST", "/v1/streams/<>/keys/<>/score"): Example("POST", f"/v1/streams/{w.stream}/keys/kaa/score",
                                                          {"delta": 1}, ok=200, scope="ingest"),
        ("GET", "/v1/query/series"): Example("GET", "/v1/query/series", params={**q, "step": "1h", "agg": "sum"},
                                             ok=200, scope="query"),
        ("GET", "/v1/query/topk"): Example("GET", "/v1/query/topk", params=q, ok=200, scope="query"),
        ("GET", "/v1/query/rank"): Example("GET", "/v1/query/rank", params={**q, "key": "kab"}, ok=200,
                                           scope="query"),
        ("GET", "/grafana"): Example("GET", "/grafana", ok=200, scope="query"),
        ("POST", "/grafana/query"): Example("POST", "/grafana/query", grafana_topk, ok=200, scope="query"),
        ("POST", "/grafana/variable"): Example("POST", "/grafana/variable", {"payload": {"target": "streams"}},
                                               ok=200, scope="query"),
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
    if (ex.path.startswith("/v1/query/") or ex.path == "/grafana/query") and resp.status_code == 404:
        # tb never had a stream of that name: the same answer as for a stream nobody has
        assert body["error"]["code"] == "stream_not_found", body
    elif ex.path == "/v1/query/topk":
        assert resp.status_code == 200 and body["items"] == [], body
    elif ex.path == "/v1/query/series":
        assert resp.status_code == 200 and all(p["value"] is None for p in body["points"]), body
    elif ex.path == "/v1/query/rank":
        assert resp.status_code == 200 and (body["rank"], body["total_keys"]) == (None, 0), body
    elif ex.path == "/grafana/query":
        assert resp.status_code == 200 and body[0]["rows"] == [], body
    elif ex.path == "/grafana/variable":
        assert resp.status_code == 200 and w.stream not in [v["__value"] for v in body], body
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
