"""Who is asking, and may they: credentials, the principal on flask.g, the scope check (API.md, Access).

Credentials are `Authorization: Bearer <token>`; the token is an API key of settings.api_keys
(key -> tenant, meaning scopes ingest and query, or key -> {"tenant", "scopes"}) or a JWT:
HS256 signed with settings.jwt_secret, or RS256/ES256 verified with settings.jwt_public_key (PEM
text or the path of a PEM file); `exp` is required, `aud`/`iss` are checked when jwt_audience /
jwt_issuer are set, the tenant is the claim named by jwt_tenant_claim and the scopes are the
space-separated `scope` claim. Missing or bad credentials raise Unauthorized (401); a scope the
route needs (router.policy) and the principal lacks raises Forbidden (403) naming it.
With auth disabled every request is tenant `default` with every scope.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from flask import Flask, g, request

from rollups.errors import ConfigError, Forbidden, Unauthorized
from router import policy

DEFAULT_TENANT = "default"
LEGACY_SCOPES = frozenset({policy.INGEST, policy.QUERY})
JWT_LEEWAY_S = 30
MAX_TENANT_CHARS = 64


@dataclass(frozen=True)
class Principal:
    """Who asked: the tenant whose data the request sees, its scopes, and a printable name for audit
    (`t1:key:<sha256 prefix>`, `t1:jwt:<sub>`, `default:anonymous`); never the secret itself."""

    tenant: str
    scopes: frozenset[str]
    subject: str

    @property
    def name(self) -> str:
        return f"{self.tenant}:{self.subject}"

    def __str__(self) -> str:
        return self.name


ANONYMOUS = Principal(DEFAULT_TENANT, frozenset(policy.SCOPES), "anonymous")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _grant(key: str, grant: Any) -> Principal:
    if isinstance(grant, str):
        tenant, scopes = grant, LEGACY_SCOPES
    else:
        fields = grant if isinstance(grant, Mapping) else vars(grant)
        tenant, scopes = fields["tenant"], frozenset(fields.get("scopes", LEGACY_SCOPES))
    return Principal(tenant, frozenset(scopes), "key:" + _digest(key).hex()[:12])


def load_public_key(text: str):
    """settings.jwt_public_key as a key object: PEM text, or the path of a PEM file. ConfigError otherwise."""
    pem = text.strip()
    if not pem.startswith("-----BEGIN"):
        try:
            pem = Path(pem).read_text()
        except OSError as exc:
            raise ConfigError(f"TIERSTORE_JWT_PUBLIC_KEY is neither PEM text nor a readable PEM file: {exc}") from None
    try:
        key = load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise ConfigError(f"TIERSTORE_JWT_PUBLIC_KEY is not a PEM public key: {exc}") from None
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise ConfigError("TIERSTORE_JWT_PUBLIC_KEY must be an RSA (RS256) or EC P-256 (ES256) public key.")
    return key


def _unauthorized(message: str, problem: str) -> Unauthorized:
    return Unauthorized(message, [{"field": "Authorization", "problem": problem}])


_JWT_PROBLEMS = (
    (jwt.ExpiredSignatureError, "expired", "The token has expired."),
    (jwt.InvalidSignatureError, "bad signature", "The token's signature is not valid."),
    (jwt.MissingRequiredClaimError, "missing claim", "The token lacks a required claim."),
    (jwt.InvalidAudienceError, "wrong audience", "The token is not meant for this service (aud)."),
    (jwt.InvalidIssuerError, "wrong issuer", "The token comes from an issuer this service does not trust (iss)."),
    (jwt.ImmatureSignatureError, "not yet valid", "The token is not valid yet (nbf/iat)."),
    (jwt.PyJWTError, "invalid token", "The token is not a valid JWT."),
)


class Authenticator:
    """Turns an Authorization header into a Principal (settings: see the module docstring)."""

    def __init__(self, settings: Any):
        self.keys = [(_digest(k), _grant(k, v)) for k, v in dict(getattr(settings, "api_keys", {}) or {}).items()]
        self.secret = getattr(settings, "jwt_secret", "") or ""
        public = getattr(settings, "jwt_public_key", "") or ""
        self.public_key = load_public_key(public) if public else None
        self.algorithms: dict[str, Any] = {}
        if self.secret:
            self.algorithms["HS256"] = self.secret
        if isinstance(self.public_key, rsa.RSAPublicKey):
            self.algorithms["RS256"] = self.public_key
        elif self.public_key is not None:
            self.algorithms["ES256"] = self.public_key
        self.audience = getattr(settings, "jwt_audience", "") or None
        self.issuer = getattr(settings, "jwt_issuer", "") or None
        self.tenant_claim = getattr(settings, "jwt_tenant_claim", "tenant") or "tenant"

    @property
    def configured(self) -> bool:
        return bool(self.keys or self.algorithms)

    def principal(self, header: str | None) -> Principal:
        """The principal of `Authorization: Bearer <token>`; Unauthorized when missing or bad."""
        if not header:
            raise _unauthorized("Credentials are required: send Authorization: Bearer <API key or JWT>.", "missing")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("The Authorization header must be `Bearer <API key or JWT>`.", "not a bearer token")
        digest = _digest(token)
        found = None
        for key_digest, grant in self.keys:  # every key compared, so timing tells nothing
            if hmac.compare_digest(key_digest, digest):
                found = grant
        if found is not None:
            return found
        if self.algorithms and token.count(".") == 2:
            return self._jwt(token)
        raise _unauthorized("The API key is not valid.", "unknown key")

    def _jwt(self, token: str) -> Principal:
        try:
            alg = jwt.get_unverified_header(token).get("alg")
            if alg not in self.algorithms:
                raise _unauthorized(f"Tokens signed with {alg!r} are not accepted here; accepted: "
                                    f"{', '.join(sorted(self.algorithms))}.", "algorithm not accepted")
            claims = jwt.decode(token, self.algorithms[alg], algorithms=[alg], audience=self.audience,
                                issuer=self.issuer, leeway=JWT_LEEWAY_S,
                                options={"require": ["exp"], "verify_aud": self.audience is not None})
        except jwt.PyJWTError as exc:
            for kind, problem, message in _JWT_PROBLEMS:
                if isinstance(exc, kind):
                    raise _unauthorized(message, problem) from None
            raise  # pragma: no cover - PyJWTError is the last entry
        tenant = claims.get(self.tenant_claim)
        if not isinstance(tenant, str) or not 0 < len(tenant) <= MAX_TENANT_CHARS or not tenant.isprintable():
            raise _unauthorized(f"The token's {self.tenant_claim!r} claim must name a tenant "
                                f"(1..{MAX_TENANT_CHARS} printable characters).", "no tenant")
        scope = claims.get("scope", "")
        names = scope.split() if isinstance(scope, str) else []
        sub = claims.get("sub")
        subject = "jwt:" + (sub if isinstance(sub, str) and sub.isprintable() else "?")
        return Principal(tenant, frozenset(names) & frozenset(policy.SCOPES), subject)


def authorize(principal: Principal, scope: str | None) -> None:
    """Forbidden (403) naming `scope` when the principal lacks it; None means public."""
    if scope is not None and scope not in principal.scopes:
        raise Forbidden(f"This credential lacks the {scope!r} scope that {request.method} {request.path} needs.",
                        [{"field": "scope", "problem": "missing", "scope": scope}])


def init_app(app: Flask, settings: Any) -> None:
    """Authenticate and authorize every request before its view runs. Sets g.principal, g.tenant and
    g.scope (the scope the route needs, None when public or unmatched)."""
    enabled = bool(settings.auth_enabled)
    authenticator = Authenticator(settings)
    if enabled and not authenticator.configured:
        raise ConfigError("TIERSTORE_AUTH_ENABLED is true but no credential is configured: set "
                          "TIERSTORE_API_KEYS, TIERSTORE_JWT_SECRET or TIERSTORE_JWT_PUBLIC_KEY.")

    @app.before_request
    def authenticate() -> None:
        rule = request.url_rule
        # unmatched requests need credentials but no scope: routing answers 404/405 afterwards
        scope = None if rule is None else policy.required_scope(
            request.method, rule.rule, getattr(rule, "provide_automatic_options", False))
        public = rule is not None and scope is None
        header = request.headers.get("Authorization")
        principal = ANONYMOUS if not enabled or public else authenticator.principal(header)
        g.principal, g.tenant, g.scope = principal, principal.tenant, scope
        if enabled:
            authorize(principal, scope)


def bind_refusal(host: str, settings: Any) -> str | None:
    """Why `tierstore serve --host host` must not start (a non-loopback address while auth is off and
    allow_unauthenticated is false), or None when it may."""
    if settings.auth_enabled or getattr(settings, "allow_unauthenticated", False) or is_loopback(host):
        return None
    return (f"Refusing to serve on {host} while auth is off: anyone who can reach it could read and delete "
            "every tenant's data. Turn auth on (TIERSTORE_AUTH_ENABLED=true with TIERSTORE_API_KEYS or a JWT "
            "key), bind a loopback address (--host 127.0.0.1), or set TIERSTORE_ALLOW_UNAUTHENTICATED=true "
            "(allow_unauthenticated) to do it on purpose.")


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback address (a unix socket counts as local)."""
    if host.startswith("unix:"):
        return True
    name = host.strip("[]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)
