"""Access over the real tiers: JWTs of each algorithm and their checks, start-up errors of the access
settings, rate limits shared by two routers through Redis, and `tierstore serve` refusing a public
address while auth is off."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import jwt
import pytest

from router.auth import bind_refusal, is_loopback
from tests.access_support import (EC_KEY, RSA_KEY, SECRET, assert_error, bearer, make_world, pem, side_app,
                                  token)
from tests.api_support import ApiServer, unique_stream

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world(settings, tmp_path_factory):
    yield from make_world(settings, "access_jwt_limits", 33, tmp_path_factory.mktemp("access"))


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


def test_api_keys_that_are_not_json_fail_with_a_sentence(monkeypatch):
    from rollups.errors import ConfigError
    from tierstore.settings import load_settings

    monkeypatch.setenv("TIERSTORE_API_KEYS", "not json")
    with pytest.raises(ConfigError, match="TIERSTORE_API_KEYS: not valid JSON"):
        load_settings()


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
