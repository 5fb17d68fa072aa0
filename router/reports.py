"""Compliance reports (API.md "Reports"):

    POST /v1/reports                {"stream", "from", "to", "kind": "totals|events", "format": "csv|parquet|json"}
                                    -> 202 {"id"}
    GET  /v1/reports/{id}           -> {"id", "status", "progress", "rows", "sha256", "manifest", "error", ...}
    GET  /v1/reports/{id}/download  -> the file (409 report_not_ready until status is done)

Reports are exact to the millisecond: from/to are NOT aligned to the minute. The blueprint talks to
a report service (scheduler.reports.ReportService, built by tierstore/) through `ReportService`
below; wire it with `register_reports(app, service)` after `create_app`.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Protocol

from flask import Blueprint, Flask, Response, current_app, request, send_file
from pydantic import BaseModel, Field

from rollups.errors import BadRequest, NotFound, TierUnavailable
from rollups.timeutil import format_time, now_ms, parse_time
from router import context
from router.models import ErrorResponse, Stream, Strict, Time, TimeOut, json_object, validate

EXTENSION = "tierstore.reports"

reports_bp = Blueprint("reports", __name__)


class ReportService(Protocol):
    def submit(self, tenant: str, stream: str, from_ms: int, to_ms: int, kind: str, fmt: str) -> str:
        """Queue a report; return its id at once."""

    def status(self, tenant: str, report_id: str) -> dict[str, Any] | None:
        """The report's status document (ReportStatus), or None if the tenant has no such report."""

    def file(self, tenant: str, report_id: str) -> tuple[Any, str, str]:
        """(path, media type, download name); NotFound, or Conflict while not done."""

    def download(self, tenant: str, report_id: str) -> Any:
        """A scheduler.report_files.ReportDownload: a local `path`, or an S3 `body` to stream (any
        replica serves any report); NotFound, or Conflict while not done."""


# ---- models (also for /openapi.json) ------------------------------------------------------------

class ReportCreate(Strict):
    stream: Stream
    from_: Time = Field(alias="from", description="Range start (inclusive), exact to the millisecond.")
    to: Time = Field(description="Range end (exclusive), exact to the millisecond.")
    kind: Literal["totals", "events"] = Field(
        description="totals: one row per key (count, sum, min, max, avg); events: every raw event.")
    format: Literal["csv", "parquet", "json"] = "csv"


class ReportAccepted(BaseModel):
    id: str


class ReportSource(BaseModel):
    model_config = {"extra": "allow"}
    tier: Literal["archive", "cold", "warm"]
    source: str = Field(description="The object or file read (s3://..., file://..., or warm's table and range).")
    rows: int = Field(description="Events taken from this source (inside the report's range).")
    sha256: str = Field(description="SHA-256 of the source's bytes (warm: of the rows read, as headerless CSV).")


class ReportStatus(BaseModel):
    model_config = {"extra": "allow"}
    id: str
    status: Literal["queued", "running", "done", "failed"]
    progress: float = Field(ge=0, le=1)
    rows: Optional[int]
    sha256: Optional[str] = Field(description="SHA-256 of the report file.")
    manifest: list[ReportSource]
    error: Optional[str]
    stream: str
    from_: TimeOut = Field(alias="from")
    to: TimeOut
    kind: str
    format: str


# ---- wiring ------------------------------------------------------------------------------------

def register_reports(app: Flask, service: ReportService) -> None:
    """Serve the reports API of `service` in `app` (call once, after create_app)."""
    app.extensions[EXTENSION] = service
    app.register_blueprint(reports_bp)


def _service() -> ReportService:
    service = current_app.extensions.get(EXTENSION)
    if service is None:
        raise TierUnavailable("reports", "Reports are not configured in this process.")
    return service


def _json_body() -> dict:
    return json_object(request.get_data(cache=False), '{"stream", "from", "to", "kind", "format"}',
                       allow_empty=False)


# ---- routes ------------------------------------------------------------------------------------

@reports_bp.post("/v1/reports")
def create_report():
    req = validate(ReportCreate, _json_body(), strict=True)
    now = now_ms()
    lo = parse_time(req.from_, now, field="from")
    hi = parse_time(req.to, now, field="to")
    if lo >= hi:
        raise BadRequest(f"from ({format_time(lo)}) must be before to ({format_time(hi)}).",
                         [{"field": "from", "problem": "not before to"}], code="invalid_range")
    rid = _service().submit(context.tenant(), req.stream, lo, hi, req.kind, req.format)
    response = context.json({"id": rid}, 202)
    response.headers["Location"] = f"/v1/reports/{rid}"
    return response


@reports_bp.get("/v1/reports/<report_id>")
def get_report(report_id: str):
    st = _service().status(context.tenant(), report_id)
    if st is None:
        raise NotFound(f"There is no report {report_id!r}.", [{"field": "id", "problem": "unknown report"}],
                       code="report_not_found")
    return context.json(st)


@reports_bp.get("/v1/reports/<report_id>/download")
def download_report(report_id: str):
    """The file from this process's cache (send_file: conditional and range requests), else streamed
    from S3 with the same headers (Content-Type, attachment filename, ETag = SHA-256, X-Content-SHA256)."""
    dl = _service().download(context.tenant(), report_id)
    if dl.path is not None:
        response = send_file(dl.path, mimetype=dl.media_type, as_attachment=True, download_name=dl.name,
                             etag=dl.sha256 or True, conditional=True)
    else:
        response = _streamed(dl)
    if dl.sha256:
        response.headers["X-Content-SHA256"] = dl.sha256
    return response


def _streamed(dl) -> Response:
    body = dl.body
    if dl.sha256 and dl.sha256 in request.if_none_match:
        body.close()
        response = Response(status=304)
    else:
        def chunks():
            try:
                yield from body.iter_chunks(1 << 20)
            finally:
                body.close()

        response = Response(chunks(), mimetype=dl.media_type, direct_passthrough=True)
        response.headers["Content-Length"] = str(dl.size)
        response.headers.set("Content-Disposition", "attachment", filename=dl.name)
    if dl.sha256:
        response.set_etag(dl.sha256)
    return response


# ---- OpenAPI (merged into /openapi.json by router/openapi.py) ----------------------------------

SCHEMA_MODELS = [ReportCreate, ReportAccepted, ReportStatus]


def openapi_paths(ref, responses, path_param, json_content) -> dict[str, Any]:
    """The reports paths, built with router/openapi.py's helpers (ref, responses, path_param, json_content)."""
    rid = path_param("id", "Report id from POST /v1/reports.")
    return {
        "/v1/reports": {"post": {
            "operationId": "createReport", "tags": ["reports"],
            "summary": "Start a compliance report (exact, from raw events in every tier).",
            "description": "Runs asynchronously: poll GET /v1/reports/{id}. [from, to) is exact to the millisecond. "
                           "Reports read raw events (never rollups) and list every object they read, with its "
                           "SHA-256, in `manifest`.",
            "requestBody": {"required": True, "content": json_content(ref(ReportCreate))},
            "responses": responses("202", "Queued.", ref(ReportAccepted), ("400", "401", "503")),
        }},
        "/v1/reports/{id}": {"get": {
            "operationId": "getReport", "tags": ["reports"],
            "summary": "A report's status, progress, row count, checksum and source manifest.",
            "parameters": [rid],
            "responses": responses("200", "The report.", ref(ReportStatus), ("401", "404")),
        }},
        "/v1/reports/{id}/download": {"get": {
            "operationId": "downloadReport", "tags": ["reports"],
            "summary": "The report file (CSV, Parquet or JSON) once status is done.",
            "parameters": [rid],
            "responses": {"200": {"description": "The file; header X-Content-SHA256 carries its checksum.",
                                  "content": {"text/csv": {}, "application/vnd.apache.parquet": {},
                                              "application/json": {}}},
                          **{k: v for k, v in responses("200", "", None, ("401", "404")).items() if k != "200"},
                          "409": {"description": "report_not_ready: the report is not done (yet).",
                                  "content": json_content(ref(ErrorResponse))}},
        }},
    }
