"""Alert rules (admin API; tiers/alerts.py stores them, the `alerts` job evaluates them).

    POST   /v1/alerts         AlertRuleIn -> 201 AlertRule
    GET    /v1/alerts         -> [AlertRule]            the caller's tenant's rules, by id
    GET    /v1/alerts/{id}    -> AlertDetail            state plus the last notifications and attempts
    PUT    /v1/alerts/{id}    AlertRuleIn -> AlertRule  a new definition; the state is kept
    DELETE /v1/alerts/{id}    -> {"id", "deleted": true} (its notifications are kept)

Scope admin (router/policy.py), rules of the caller's tenant only. Wire with
`register_alerts(app, pool)` after create_app: it also adds the scrape-time metrics
tierstore_alerts_firing{rule} and tierstore_alert_notifications_total{status}.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator, Literal, Optional

import psycopg
from flask import Blueprint, Flask, current_app, request
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, Field

from rollups.errors import NotFound, TierUnavailable, ValidationFailed
from rollups.timeutil import DAY_MS, MINUTE_MS, format_duration, parse_duration
from router import context
from router.models import MAX_K, Key, Stream, Strict, TimeOut, Value, check_key, json_object, validate
from tiers.alerts import AlertStore, rule_json

EXTENSION = "tierstore.alerts"
MAX_WINDOW = 30 * DAY_MS
log = logging.getLogger("tierstore.alerts")
bp = Blueprint("alerts", __name__)

Aggregate = Literal["count", "sum", "avg", "min", "max"]
Comparison = Literal[">", ">=", "<", "<="]


class AlertRuleIn(Strict):
    name: str = Field("", max_length=200)
    stream: Stream
    key: Optional[Key] = Field(None, description="threshold: only this key (default every key); rank: required.")
    kind: Literal["threshold", "rank"] = Field("threshold", description="threshold: aggregate compared with "
                                               "threshold; rank: fires while key is in the top top_n.")
    aggregate: Aggregate = Field("count", description="rank rules: count or sum.")
    window: str = Field("5m", pattern=r"^\d{1,9}[mhdw]$", description="The last window before each "
                        "evaluation (whole minutes, 1m..30d).", examples=["5m", "1h"])
    comparison: Optional[Comparison] = Field(None, description="threshold rules (required).")
    threshold: Optional[Value] = Field(None, description="threshold rules (required).")
    top_n: Optional[int] = Field(None, ge=1, le=MAX_K, description="rank rules (required).")
    webhook_url: str = Field(pattern=r"^https?://[^\s]+$", max_length=2000,
                             description="Receives a JSON POST on each firing and resolved transition.")
    enabled: bool = True


class AlertRule(BaseModel):
    id: int
    tenant: str
    name: str
    stream: str
    key: Optional[str]
    kind: str
    aggregate: str
    window: str
    window_ms: int
    comparison: Optional[str]
    threshold: Optional[float]
    top_n: Optional[int]
    webhook_url: str
    enabled: bool
    state: Literal["ok", "firing", "resolved"]
    state_since: TimeOut
    transitions: int = Field(description="Transitions to firing or resolved so far (one notification each).")
    last_value: Optional[float]
    last_rank: Optional[int]
    last_evaluated: Optional[TimeOut]
    created: TimeOut
    updated: TimeOut


class AlertAttempt(BaseModel):
    attempt: int
    at: TimeOut
    ok: bool
    status_code: Optional[int]
    error: Optional[str]


class AlertNotification(BaseModel):
    id: int
    transition: int
    event: Literal["firing", "resolved"]
    status: Literal["pending", "sent", "failed"]
    attempts: list[AlertAttempt]
    created: TimeOut
    finished: Optional[TimeOut]
    payload: dict[str, Any]


class AlertDetail(AlertRule):
    notifications: list[AlertNotification] = Field(description="The last 10, newest first.")


class AlertDeleted(BaseModel):
    id: int
    deleted: bool


def register_alerts(app: Flask, pool) -> None:
    """Serve the alerts API in `app` over PostgreSQL `pool`, and add its metrics (call once)."""
    store = AlertStore(pool)
    app.extensions[EXTENSION] = store
    app.register_blueprint(bp)
    app.extensions[context.EXTENSION].metrics.add_collector(AlertsCollector(store))


def _store() -> AlertStore:
    store = current_app.extensions.get(EXTENSION)
    if store is None:
        raise TierUnavailable("warm", "Alerts are not configured in this process.")
    return store


@contextmanager
def _pg() -> Iterator[None]:
    try:
        yield
    except (psycopg.Error, PoolTimeout) as exc:
        raise TierUnavailable("warm", "PostgreSQL (the alert rules) is unavailable.") from exc


def definition(body: bytes) -> dict[str, Any]:
    """A rule definition from a request body (AlertRuleIn), checked; the columns tiers/alerts.py stores."""
    p = validate(AlertRuleIn, json_object(body, "(an alert rule)", allow_empty=False), strict=True)
    problems = []
    window = parse_duration(p.window, field="window")
    if window % MINUTE_MS or not MINUTE_MS <= window <= MAX_WINDOW:
        problems.append({"field": "window", "problem": "must be whole minutes, 1m..30d"})
    if p.kind == "threshold":
        problems += [{"field": f, "problem": "required for a threshold rule"}
                     for f in ("comparison", "threshold") if getattr(p, f) is None]
        if p.top_n is not None:
            problems.append({"field": "top_n", "problem": "only for a rank rule"})
    else:
        problems += [{"field": f, "problem": "required for a rank rule"} for f in ("key", "top_n")
                     if getattr(p, f) is None]
        if p.aggregate not in ("count", "sum"):
            problems.append({"field": "aggregate", "problem": "a rank rule ranks by count or sum"})
        problems += [{"field": f, "problem": "only for a threshold rule"} for f in ("comparison", "threshold")
                     if getattr(p, f) is not None]
    check_key(p.key)
    if problems:
        raise ValidationFailed("Invalid " + ", ".join(d["field"] for d in problems) + ".", problems)
    return {"name": p.name, "stream": p.stream, "key": p.key, "kind": p.kind, "aggregate": p.aggregate,
            "window_ms": window, "comparison": p.comparison, "threshold": p.threshold, "top_n": p.top_n,
            "webhook_url": p.webhook_url, "enabled": p.enabled}


def out(row: dict[str, Any]) -> dict[str, Any]:
    rule = rule_json(row)
    rule["window"] = format_duration(rule["window_ms"])
    return rule


def _rule_id(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise NotFound(f"No alert rule {raw!r}.", [{"field": "id", "problem": "not found"}])
    return int(raw)


def _found(row, raw: str):
    if row is None:
        raise NotFound(f"No alert rule {raw!r}.", [{"field": "id", "problem": "not found"}])
    return row


@bp.post("/v1/alerts")
def create_alert():
    rule = definition(request.get_data())
    with _pg():
        row = _store().create(context.tenant(), rule)
    return context.json(out(row), 201)


@bp.get("/v1/alerts")
def list_alerts():
    with _pg():
        rows = _store().list(context.tenant())
    return context.json([out(r) for r in rows])


@bp.get("/v1/alerts/<rule_id>")
def get_alert(rule_id: str):
    rid = _rule_id(rule_id)
    with _pg():
        store = _store()
        row = _found(store.get(context.tenant(), rid), rule_id)
        notifications = store.notifications(rid)
    return context.json({**out(row), "notifications": notifications})


@bp.put("/v1/alerts/<rule_id>")
def replace_alert(rule_id: str):
    rid = _rule_id(rule_id)
    rule = definition(request.get_data())
    with _pg():
        row = _found(_store().replace(context.tenant(), rid, rule), rule_id)
    return context.json(out(row))


@bp.delete("/v1/alerts/<rule_id>")
def delete_alert(rule_id: str):
    rid = _rule_id(rule_id)
    with _pg():
        _found(_store().delete(context.tenant(), rid) or None, rule_id)
    return context.json({"id": rid, "deleted": True})


METRICS_PG_TIMEOUT_S = 2.0  # a scrape while PostgreSQL is down must not hang (as router/metrics.py)


class AlertsCollector:
    """tierstore_alerts_firing{rule} (1 while firing) and tierstore_alert_notifications_total{status}
    (pending, sent, failed), read from PostgreSQL at scrape time; nothing when it is down."""

    def __init__(self, store: AlertStore) -> None:
        self.store = store

    def describe(self):
        return iter(())

    def collect(self):
        try:
            rules, statuses = self.store.counts(timeout_s=METRICS_PG_TIMEOUT_S)
        except Exception:  # a scrape never fails for this
            log.warning("alert metrics unavailable", exc_info=True)
            return
        firing = GaugeMetricFamily("tierstore_alerts_firing", "1 while the alert rule is firing.", labels=["rule"])
        for rule_id, _name, is_firing in rules:
            firing.add_metric([str(rule_id)], 1.0 if is_firing else 0.0)
        yield firing
        sent = CounterMetricFamily("tierstore_alert_notifications", "Alert notifications by delivery status "
                                   "(sent, failed after every retry, pending).", labels=["status"])
        for status in ("sent", "failed", "pending"):
            sent.add_metric([status], float(statuses.get(status, 0)))
        yield sent


def openapi_paths(ref, responses, path_param, json_content) -> dict[str, Any]:
    """The alerts paths, built with router/openapi.py's helpers."""
    rid = path_param("id", "Alert rule id.")
    body = {"required": True, "content": json_content(ref(AlertRuleIn))}
    return {
        "/v1/alerts": {
            "post": {"operationId": "createAlert", "tags": ["operations"],
                     "summary": "Create an alert rule (threshold or rank) with a webhook.",
                     "description": "Evaluated by the `alerts` job (settings.alerts_interval): ok -> firing -> "
                                    "resolved; each firing and resolved transition POSTs one JSON notification "
                                    "to webhook_url (retried with backoff, every attempt recorded).",
                     "requestBody": body,
                     "responses": responses("201", "Created.", ref(AlertRule), ("400", "401", "503"))},
            "get": {"operationId": "listAlerts", "tags": ["operations"], "summary": "The tenant's alert rules.",
                    "responses": responses("200", "Rules.", {"type": "array", "items": ref(AlertRule)},
                                           ("401", "503"))}},
        "/v1/alerts/{id}": {
            "get": {"operationId": "getAlert", "tags": ["operations"], "parameters": [rid],
                    "summary": "A rule with its state and its last notifications.",
                    "responses": responses("200", "The rule.", ref(AlertDetail), ("401", "404", "503"))},
            "put": {"operationId": "replaceAlert", "tags": ["operations"], "parameters": [rid],
                    "summary": "Replace a rule's definition (its state is kept).", "requestBody": body,
                    "responses": responses("200", "The rule.", ref(AlertRule), ("400", "401", "404", "503"))},
            "delete": {"operationId": "deleteAlert", "tags": ["operations"], "parameters": [rid],
                       "summary": "Delete a rule (its notifications are kept).",
                       "responses": responses("200", "Deleted.", ref(AlertDeleted), ("401", "404", "503"))}},
    }
