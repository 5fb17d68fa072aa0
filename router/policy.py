"""Which scope each route needs: the one policy table of the router (API.md, Access).

A route is named by its method and its Flask url rule with the variable parts written `<>`
(`POST /v1/jobs/<>/run`), so a renamed path parameter or converter keeps its entry. Scopes:

- `ingest`: writes of the caller's own events.
- `query`: reads of the caller's own tenant (queries, its reports, the stream list).
- `admin`: the operator API — jobs, job runs, holds, retention, dead letters, stream registry
  writes — and every cross-tenant view. `admin` is operator-wide (jobs move every tenant's data)
  and does not imply `ingest` or `query`.
- PUBLIC (None): probes, metrics, the OpenAPI document and static files; no credentials needed.

/v1/tiers is `admin`: its rows and bytes add up every tenant's data, so it is a cross-tenant view;
a query client learns the tiers that answered it from its answer's `meta.segments`.

SAFE BY DEFAULT: a route missing here needs `admin` (and tests/test_access.py fails until it is
added, so the choice is made on purpose). HEAD follows GET; Flask's automatic OPTIONS answer
(only the Allow header) is public.
"""
from __future__ import annotations

import re

PUBLIC = None
INGEST, QUERY, ADMIN = "ingest", "query", "admin"
SCOPES = (INGEST, QUERY, ADMIN)
DEFAULT_SCOPE = ADMIN

POLICY: dict[tuple[str, str], str | None] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/static/<>"): PUBLIC,
    ("GET", "/ui"): PUBLIC,
    ("GET", "/ui/<>"): PUBLIC,

    ("POST", "/v1/events"): INGEST,
    ("POST", "/v1/streams/<>/keys/<>/score"): INGEST,

    ("GET", "/v1/query/series"): QUERY,
    ("GET", "/v1/query/topk"): QUERY,
    ("GET", "/v1/query/rank"): QUERY,
    ("GET", "/v1/query/trending"): QUERY,
    ("POST", "/v1/reports"): QUERY,
    ("GET", "/v1/reports/<>"): QUERY,
    ("GET", "/v1/reports/<>/download"): QUERY,
    ("GET", "/v1/streams"): QUERY,
    ("GET", "/v1/streams/<>"): QUERY,
    ("GET", "/grafana"): QUERY,
    ("POST", "/grafana/metrics"): QUERY,
    ("POST", "/grafana/metric-payload-options"): QUERY,
    ("POST", "/grafana/query"): QUERY,
    ("POST", "/grafana/variable"): QUERY,
    ("POST", "/grafana/tag-keys"): QUERY,
    ("POST", "/grafana/tag-values"): QUERY,

    ("PUT", "/v1/streams/<>"): ADMIN,
    ("DELETE", "/v1/streams/<>"): ADMIN,
    ("GET", "/v1/tiers"): ADMIN,
    ("GET", "/v1/jobs"): ADMIN,
    ("POST", "/v1/jobs/<>/run"): ADMIN,
    ("GET", "/v1/jobs/runs/<>"): ADMIN,
    ("GET", "/v1/deadletters"): ADMIN,
    ("GET", "/v1/deadletters/<>"): ADMIN,
    ("POST", "/v1/deadletters/<>/replay"): ADMIN,
    ("DELETE", "/v1/deadletters/<>"): ADMIN,
    ("POST", "/v1/alerts"): ADMIN,
    ("GET", "/v1/alerts"): ADMIN,
    ("GET", "/v1/alerts/<>"): ADMIN,
    ("PUT", "/v1/alerts/<>"): ADMIN,
    ("DELETE", "/v1/alerts/<>"): ADMIN,
}

_VARIABLE = re.compile(r"<[^>]*>")


def rule_key(method: str, rule: str) -> tuple[str, str]:
    """(method, rule) as POLICY names it: HEAD as GET, every `<converter:name>` as `<>`."""
    method = method.upper()
    return ("GET" if method == "HEAD" else method), _VARIABLE.sub("<>", rule)


def listed(method: str, rule: str) -> bool:
    """Whether POLICY names this route explicitly."""
    return rule_key(method, rule) in POLICY


def required_scope(method: str, rule: str, automatic_options: bool = False) -> str | None:
    """The scope `method rule` needs, or None when it is public; unlisted routes need DEFAULT_SCOPE."""
    if method.upper() == "OPTIONS" and automatic_options:
        return PUBLIC
    return POLICY.get(rule_key(method, rule), DEFAULT_SCOPE)
