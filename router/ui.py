"""The dashboard page (issue 13, part 1): GET /ui and GET /ui/{view}, and the router's static files.

    GET /ui            -> the page (text/html); its views are hash routes (#/tiers, #/jobs, ...)
    GET /ui/{view}     -> the same page, opening `view` (one of VIEWS); another name is 404 unknown_view
    GET /static/{path} -> router/static/: the page's scripts and styles (static/ui/) and the vendored
                          Apache ECharts build (static/vendor/echarts/, with its licence)

The page carries no data and needs no credentials (router/policy.py lists these routes PUBLIC): it
asks for an API key or a JWT, keeps it in the tab's sessionStorage and sends it as
`Authorization: Bearer` to the /v1 API, whose scopes decide what each view may show. Every script
and style comes from this router (a Content-Security-Policy says so), so the page works offline.
Wire with `create_app` registering `bp` (it also points the app's static folder at router/static).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, Response
from flask.blueprints import BlueprintSetupState

from rollups.errors import NotFound

STATIC_DIR = Path(__file__).with_name("static")
PAGE = STATIC_DIR / "ui" / "index.html"
VIEWS = ("tiers", "jobs", "live", "explore", "reports", "deadletters", "alerts")

# Scripts, styles and API calls only from this origin. ECharts sets inline styles on its elements,
# hence 'unsafe-inline' for styles (never for scripts); report downloads are blob: URLs.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; "
                           "base-uri 'none'; frame-ancestors 'none'; form-action 'none'")

bp = Blueprint("ui", __name__)


@bp.record_once
def _serve_router_static(state: BlueprintSetupState) -> None:
    # Flask("tierstore.router") has no package of that name, so its default static folder would be
    # the working directory's static/; the /static/<path> rule reads app.static_folder per request.
    state.app.static_folder = str(STATIC_DIR)


@bp.get("/ui")
@bp.get("/ui/<view>")
def page(view: str | None = None) -> Response:
    """The dashboard page; 404 unknown_view for a view name not in VIEWS."""
    if view is not None and view not in VIEWS:
        raise NotFound(f"There is no dashboard view {view!r}; choose from {', '.join(VIEWS)}.",
                       [{"field": "view", "problem": "unknown view"}], code="unknown_view")
    response = Response(PAGE.read_bytes(), mimetype="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response


def openapi_paths(responses, path_param) -> dict[str, Any]:
    """The page's paths, built with router/openapi.py's helpers."""
    def page_responses(errors: tuple[str, ...]) -> dict[str, Any]:
        out = responses("200", "The page.", None, errors)
        out["200"]["content"] = {"text/html": {"schema": {"type": "string"}}}
        return out

    view = path_param("view", "The view to open.", {"type": "string", "enum": list(VIEWS)})
    return {
        "/ui": {"get": {"operationId": "dashboard", "tags": ["operations"], "security": [{}],
                        "summary": "The dashboard page (no data: it asks for a key and calls /v1).",
                        "responses": page_responses(())}},
        "/ui/{view}": {"get": {"operationId": "dashboardView", "tags": ["operations"], "security": [{}],
                               "summary": "The dashboard page opening one view.",
                               "parameters": [view],
                               "responses": page_responses(("404",))}},
    }
