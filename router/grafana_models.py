"""Request bodies of the Grafana data source (router/grafana.py), as the simpod-json-datasource plugin
sends them. Grafana adds fields freely (app, requestId, timezone, scopedVars, startTime, datasource,
editorMode, ...): the envelopes ignore what they do not use; a target's payload — what the dashboard
author wrote — is checked strictly, so a misspelled option is a 400 naming it.
"""
from __future__ import annotations

import re
from typing import Any, Literal, Optional, Union

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rollups.errors import BadRequest, ValidationFailed
from rollups.timeutil import now_ms
from router.models import MAX_K, Key, Strict, Time, check_key, validate

KINDS = ("series", "topk")
AGGS = ("count", "sum", "min", "max", "avg")
BYS = ("count", "sum")
STEP_CHOICES = ("auto", "1m", "5m", "15m", "1h", "6h", "1d")
"""The steps the query builder offers; a code-mode payload may name any step of /v1/query/series."""


class Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class RangeBody(Envelope):
    """Grafana's time range: {"from": "2016-10-31T06:33:44.866Z", "to": ..., "raw": {"from": "now-6h"}}."""

    from_: Time = Field(alias="from")
    to: Time

    def span(self) -> tuple[int, int]:
        """[from, to) in epoch ms, minute-aligned as every query range (router.query.query_range)."""
        from router.query import query_range

        rng = query_range(self.from_, self.to, now_ms())
        return rng.start, rng.end


class AdhocFilter(Envelope):
    key: str
    operator: str
    value: str


class Target(Envelope):
    """One query of a panel: {"refId": "A", "target": "<stream>", "payload": {...}, "hide": false}."""

    target: Optional[str] = None
    refId: Optional[str] = None
    hide: bool = False
    payload: Union[dict[str, Any], str, None] = None


class QueryRequest(Envelope):
    range: RangeBody
    targets: list[Target]
    intervalMs: Optional[float] = Field(None, ge=0)
    maxDataPoints: Optional[float] = Field(None, ge=0)
    adhocFilters: list[AdhocFilter] = Field(default_factory=list)


class GrafanaPayload(Strict):
    """What a target reads. series: agg, key (one, a list, or none: the whole stream), step (`auto`:
    Grafana's interval snapped to a valid step); topk: k, by. alias names the series."""

    kind: Literal["series", "topk"] = "series"
    agg: Literal["count", "sum", "min", "max", "avg"] = "count"
    key: Union[Key, list[Key], None] = None
    step: str = Field("auto", pattern=r"^(auto|\d{1,9}[smhdw])$")
    k: int = Field(10, ge=1, le=MAX_K)
    by: Literal["count", "sum"] = "count"
    alias: Optional[str] = None
    allow_partial: bool = False

    @field_validator("key")
    @classmethod
    def _key_bytes(cls, v):
        for key in v if isinstance(v, list) else [v]:
            check_key(key)
        return v

    def keys(self) -> list[str]:
        if self.key is None:
            return []
        return list(dict.fromkeys(self.key)) if isinstance(self.key, list) else [self.key]


def payload_of(target: Target, index: int) -> GrafanaPayload:
    """The target's payload as a GrafanaPayload. The query builder sends every value as a string and a
    cleared field as "" (dropped here: the default applies); a code-mode payload is JSON (an object,
    or its text). Raises ValidationFailed naming targets.<index>.payload.<field>."""
    raw = target.payload
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            raw = None
        if not isinstance(raw, dict):
            raise ValidationFailed("A target's payload must be a JSON object.",
                                   [{"field": f"targets.{index}.payload", "problem": "not a JSON object"}])
    data = {k: v for k, v in (raw or {}).items() if v != "" and v != []}
    try:
        return validate(GrafanaPayload, data)
    except ValidationFailed as exc:
        details = [{**d, "field": f"targets.{index}.payload.{d['field']}"} for d in exc.details]
        raise ValidationFailed(f"Invalid payload of target {index}: {exc.message}", details) from None


_KEYS_QUERY = re.compile(r"^\s*keys\s*\(\s*([^,\s)]+)\s*(?:,\s*(\d{1,5})\s*)?(?:,\s*(count|sum)\s*)?\)\s*$")
VARIABLE_HELP = ('a variable query is "streams" or "keys(<stream>[, <k>[, count|sum]])", or as JSON '
                 '{"target": "streams"} / {"target": "keys", "stream": "...", "k": 100, "by": "count"}')


class VariableQuery(Envelope):
    """POST /variable: {"payload": {"target": "<query text>"} (or the JSON the author wrote), "range"}."""

    payload: dict[str, Any]
    range: Optional[RangeBody] = None

    def parsed(self) -> tuple[str, str | None, int, str]:
        """("streams" | "keys", stream, k, by); BadRequest on anything else."""
        target = self.payload.get("target")
        if target in (None, "", "streams"):
            return "streams", None, 0, "count"
        if target == "keys":
            k, by = self.payload.get("k", 100), self.payload.get("by", "count")
            if isinstance(k, str) and k.isdigit():
                k = int(k)
            if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K or by not in BYS:
                raise BadRequest(f"Invalid variable query: {VARIABLE_HELP}.",
                                 [{"field": "payload", "problem": f"k 1..{MAX_K}, by count or sum"}])
            return "keys", self.payload.get("stream"), k, by
        m = _KEYS_QUERY.match(target) if isinstance(target, str) else None
        if m is None or not 1 <= int(m.group(2) or 100) <= MAX_K:
            raise BadRequest(f"Invalid variable query {target!r}: {VARIABLE_HELP}.",
                             [{"field": "payload.target", "problem": "not a variable query"}])
        return "keys", m.group(1), int(m.group(2) or 100), m.group(3) or "count"
