"""Bearer API keys: with settings.auth_enabled every /v1 request needs a key of settings.api_keys
(key -> tenant), and the tenant scopes all its data; without auth everything is tenant `default`.
"""
from __future__ import annotations

import hmac

from flask import Flask, g, request

from rollups.errors import Unauthorized

DEFAULT_TENANT = "default"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})


def tenant_for(header: str | None, api_keys: dict[str, str]) -> str:
    if not header:
        raise Unauthorized("An API key is required: send Authorization: Bearer <key>.",
                           [{"field": "Authorization", "problem": "missing"}])
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("The Authorization header must be `Bearer <key>`.",
                           [{"field": "Authorization", "problem": "not a bearer token"}])
    found = None
    for key, tenant in api_keys.items():
        if hmac.compare_digest(key.encode(), token.encode()):
            found = tenant
    if found is None:
        raise Unauthorized("The API key is not valid.", [{"field": "Authorization", "problem": "unknown key"}])
    return found


def init_app(app: Flask, settings) -> None:
    enabled = bool(settings.auth_enabled)
    api_keys = dict(settings.api_keys)

    @app.before_request
    def authenticate() -> None:
        if not enabled or request.path in PUBLIC_PATHS:
            g.tenant = DEFAULT_TENANT
            return
        g.tenant = tenant_for(request.headers.get("Authorization"), api_keys)
