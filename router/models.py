"""Pydantic models of every request and response of API.md.

They validate query parameters and small bodies, and they are the source of /openapi.json. The
ingest hot path validates events with a tight loop (router/ingest.py) that enforces exactly the
rules of `Event`; tests check the two agree.
"""
from __future__ import annotations

import orjson

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rollups.calendar import STEP_PATTERN, ZONE_PATTERN
from rollups.errors import BadRequest, ValidationFailed
from rollups.timeutil import MAX_MS, MIN_MS

STREAM_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
STREAM_RE = re.compile(STREAM_PATTERN[1:-1])  # used with fullmatch: `$` would accept a trailing newline
STREAM_PROBLEM = "must match [a-z0-9][a-z0-9_.-]{0,63}"
MAX_KEY_BYTES = 256
MAX_ID_BYTES = 256
MAX_POINTS = 10_000
MAX_K = 10_000
MAX_AROUND = 100
MAX_ABS_VALUE = 1e15
"""The largest |value| of an event and |delta| of a score (API.md, Ingest).

Every tier sums values as float64 (max ~1.8e308): a sum of N values of at most 1e15 stays below
N * 1e15, so about 1.8e293 events (or score deltas) would be needed to overflow to infinity: no
sum, in any tier, at any granularity, ever can in practice. Sums above 2**53 (~9e15) round like any
float64 sum. Integers up to 1e15 convert to float64 exactly."""
MAX_ABS_TEXT = "1e15"
TEXT_PATTERN = r"^[^\u0000]+$"
"""The pattern of keys and ids as the OpenAPI document states it: no U+0000 (NUL) anywhere."""

TIME_PATTERN = (r"^(now([+-][0-9]{1,9}[smhdw])?|-?[0-9]{1,16}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}"
                r":[0-9]{2}([.][0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$")
"""Times as strings, as the OpenAPI document states them (rollups.timeutil.parse_time judges)."""

Time = Annotated[Union[Annotated[str, Field(json_schema_extra={"pattern": TIME_PATTERN})],
                       Annotated[int, Field(ge=MIN_MS, le=MAX_MS)]], Field(
    description="RFC 3339 with a zone (`2026-11-22T10:00:00Z`, `2026-11-22T10:00:00.123+01:00`; a valid "
                "calendar date and time between years 1 and 9999, fractions below 1 ms truncated), epoch "
                f"milliseconds ({MIN_MS}..{MAX_MS}, a JSON integer or its decimal string), or `now`, "
                "`now-15m`, `now+5m` (units s m h d w).",
    examples=["2026-11-22T10:00:00Z", 1795341600000, "now-1h"])]
QUERY_TIME_PATTERN = (r"^(now([+-][0-9]{1,9}[smhdw])?|-?[0-9]{1,16}|[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}"
                      r"(:[0-9]{2}([.][0-9]{1,9})?)?([Zz]|[+-][0-9]{2}:[0-9]{2})?)?)$")
"""A query's from/to (rollups.calendar.parse_query_time judges): Time, plus dates and local date-times."""
QueryTime = Annotated[Union[Annotated[str, Field(json_schema_extra={"pattern": QUERY_TIME_PATTERN})],
                            Annotated[int, Field(ge=MIN_MS, le=MAX_MS)]], Field(
    description="As for every time (RFC 3339 with a zone, epoch milliseconds, `now-15m`), or a date "
                "(`2026-03-29`: its local midnight) or a local date-time without offset (`2026-03-29T12:00`), "
                "read in the query's zone: `tz`, else the stream's default zone, else UTC. A local time that "
                "occurs twice is its first occurrence; one in a DST gap takes the offset before the gap.",
    examples=["2026-11-22T10:00:00Z", "2026-03-29", 1795341600000, "now-1h"])]
TimeOut = Annotated[str, Field(description="RFC 3339 UTC with milliseconds.", examples=["2026-11-22T10:00:00.000Z"])]
Stream = Annotated[str, Field(pattern=STREAM_PATTERN, description="Stream name.", examples=["plays"])]
TEXT_NOTE = ("1..{n} bytes of UTF-8 without U+0000 (NUL); any other Unicode text (valid scalar values, so no "
             "lone surrogates) is stored byte-exact in every tier. maxLength counts characters: {n} bytes "
             "is the binding limit (a 4-byte character counts 4).")
Key = Annotated[str, Field(min_length=1, max_length=MAX_KEY_BYTES, json_schema_extra={"pattern": TEXT_PATTERN},
                           description="Key: " + TEXT_NOTE.format(n=MAX_KEY_BYTES), examples=["song_42"])]
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_BYTES, json_schema_extra={"pattern": TEXT_PATTERN},
                          description="Idempotency id: an id seen within the dedup window is not counted twice. "
                                      + TEXT_NOTE.format(n=MAX_ID_BYTES), examples=["evt-0001"])]
Value = Annotated[float, Field(ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE, allow_inf_nan=False)]


def text_problem(value: str, max_bytes: int) -> str | None:
    """Why `value` cannot be a key or an id (None when it can): the one statement of the rule.

    A key or id is 1..max_bytes bytes of UTF-8 without U+0000: PostgreSQL text cannot hold NUL,
    and a lone surrogate (possible in a Python str, never from orjson) has no UTF-8 form at all.
    """
    if "\x00" in value:
        return "must not contain U+0000 (NUL)"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "must be valid Unicode text (no lone surrogates)"
    if not 1 <= size <= max_bytes:
        return f"must be 1..{max_bytes} UTF-8 bytes"
    return None


def value_problem(value: float) -> str | None:
    """Why a float cannot be an event value or a score delta (None when it can); NaN fails both tests."""
    if not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:
        return "must be a finite number" if value - value != 0.0 else f"must be within -{MAX_ABS_TEXT}..{MAX_ABS_TEXT}"
    return None


def check_key(value: str | None, field: str = "key", max_bytes: int = MAX_KEY_BYTES) -> str | None:
    """`value` (None passes) for pydantic validators; ValueError naming the problem otherwise."""
    problem = None if value is None else text_problem(value, max_bytes)
    if problem:
        raise ValueError(f"{field} {problem}")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---- errors -----------------------------------------------------------------------------------

class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: Optional[int] = Field(None, description="Index of the offending event in an ingest batch.")
    field: Optional[str] = Field(None, description="The offending field or parameter.")
    problem: Optional[str] = Field(None, description="What is wrong with it.")
    tier: Optional[str] = Field(None, description="The unavailable tier (503).")


class ErrorBody(BaseModel):
    code: str = Field(description="snake_case code, e.g. validation_failed, range_sealed, ts_in_future, "
                                  "payload_too_large, tier_unavailable, not_found, unauthorized.")
    message: str = Field(description="A human sentence.")
    details: list[ErrorDetail]


class ErrorResponse(BaseModel):
    error: ErrorBody


# ---- ingest -----------------------------------------------------------------------------------

class Event(Strict):
    stream: Stream
    key: Key
    ts: Time
    value: Value = Field(1.0, description=f"A finite number, |value| <= {MAX_ABS_TEXT} (so no sum can overflow).")
    id: Optional[Id] = None

    @field_validator("key")
    @classmethod
    def _key_bytes(cls, v: str) -> str:
        return check_key(v)

    @field_validator("id")
    @classmethod
    def _id_bytes(cls, v: str | None) -> str | None:
        return check_key(v, "id", MAX_ID_BYTES)


class IngestResponse(BaseModel):
    accepted: int = Field(description="Events accepted (counted).")
    duplicates: int = Field(description="Events whose id was seen before (not counted again).")


class ScoreRequest(Strict):
    delta: Value = Field(description=f"Added to the key's all-time score; finite, |delta| <= {MAX_ABS_TEXT}. "
                                     "A float64 total needs ~1.8e293 such deltas to overflow: it never does.")
    ts: Optional[Time] = Field(None, description="When it happened; default now.")


class ScoreResponse(BaseModel):
    stream: str
    key: str
    score: float = Field(description="All-time total.")
    rank: int = Field(description="1-based all-time rank.")


# ---- queries ----------------------------------------------------------------------------------

class QueryParams(Strict):
    stream: Stream
    from_: QueryTime = Field(alias="from", description="Range start (inclusive), rounded down to the minute.")
    to: QueryTime = Field(description="Range end (exclusive), rounded up to the minute.")
    tz: Optional[str] = Field(None, pattern=ZONE_PATTERN, examples=["Europe/Berlin", "Asia/Kolkata"],
                              description="IANA time zone of date-only and offset-less from/to and, for series, of "
                                          "day and calendar buckets (local midnight, DST included); default the "
                                          "stream's zone, else UTC. Unknown: 400 unknown_time_zone.")
    explain: bool = Field(False, description="1: return the plan (meta.segments) without running it.")
    allow_partial: bool = Field(False, description="1: when a tier is down, answer from the others "
                                                   "(meta.partial, meta.missing) instead of 503.")


class SeriesParams(QueryParams):
    step: str = Field(pattern=STEP_PATTERN, examples=["1m", "5m", "1h", "1d", "1w", "1mo"],
                      description="Bucket width, a multiple of 1m (Nm, Nh, Nd: epoch-aligned in UTC), or calendar: "
                                  "Nw (ISO weeks from Monday 00:00), 1mo, 1q, 1y; with tz, Nd are local days. Day "
                                  "and calendar buckets start at local midnight of tz (UTC without).")
    agg: Literal["count", "sum", "min", "max", "avg"] = "count"
    key: Optional[Key] = Field(None, description="Only this key's events.")

    @field_validator("key")
    @classmethod
    def _key_bytes(cls, v: str | None) -> str | None:
        return check_key(v)


class TopkParams(QueryParams):
    k: int = Field(10, ge=1, le=MAX_K)
    by: Literal["count", "sum"] = "count"
    mode: Literal["exact", "approx"] = Field(
        "exact", description="approx merges per-bucket frequent-items sketches: items carry lower_bound, "
                             "upper_bound and error_bound, meta.approx the error type and sketch size.")
    error_type: Optional[Literal["no_false_negatives", "no_false_positives"]] = Field(
        None, description="mode=approx: no_false_negatives (no key that may beat the k-th lower bound is left "
                          "out; the list may run past k) or no_false_positives (every item is certainly frequent); "
                          "default: the approx_error_type setting.")


class RankParams(QueryParams):
    key: Key
    by: Literal["count", "sum"] = "count"
    around: int = Field(0, ge=0, le=MAX_AROUND, description="Neighbours listed on each side of the key.")

    @field_validator("key")
    @classmethod
    def _key_bytes(cls, v: str) -> str:
        return check_key(v)


class Segment(BaseModel):
    tier: Literal["hot", "warm", "cold", "archive"]
    from_: TimeOut = Field(alias="from")
    to: TimeOut
    granularity: str = Field(description="1m, 1h, 1d, 1w, 1mo or raw.")
    cached: bool
    took_ms: Optional[float] = Field(description="null in an explain plan.")


class Missing(BaseModel):
    tier: str
    from_: TimeOut = Field(alias="from")
    to: TimeOut


class Watermarks(BaseModel):
    """Per tier, the ingest time (epoch ms: when POST /v1/events acknowledged the event) up to which
    the tier's answers include every acknowledged event of the range it owns; null when the tier is
    not configured, owns nothing yet, or its sources could not be read (tiers/watermarks.py)."""
    hot: Optional[int] = Field(description="The time the request started: ingest updates hot at once.")
    warm: Optional[int] = Field(description="Every event acknowledged before it is flushed to warm AND folded "
                                            "into its rollups; an event with a later ingest time whose ts "
                                            "warm owns (a late event) may be missing yet.")
    cold: Optional[int] = Field(description="When b_cold reached its value: cold's range is sealed, complete since.")
    archive: Optional[int] = Field(description="When b_archive reached its value: archive's range is complete since.")


class RankingMeta(BaseModel):
    """How a top-K or rank across tiers was answered (router/ranking.py, router/rank_ta.py)."""
    model_config = ConfigDict(extra="allow")
    method: str = Field(description="threshold (sorted access, proven exact), merge (every key) or in_place (one "
                                    "tier holds the range and ranks it by count itself).")
    cached: Optional[bool] = Field(None, description="true: the whole answer came from the results cache, stored "
                                                     "under the current data version of every piece (every "
                                                     "segment then says cached, took_ms 0).")
    cache_ms: Optional[float] = Field(None, description="On a computed answer: the time spent reading the pieces' "
                                                        "data versions and looking the answer up.")
    pieces_cached: Optional[int] = Field(None, description="rank merged on key ids: how many pieces came from the "
                                                           "router's in-process cache of closed pieces, under their "
                                                           "current data versions (their segments say took_ms 0).")


class Meta(BaseModel):
    model_config = ConfigDict(extra="allow")
    exact: bool
    took_ms: float
    catalog_version: int
    segments: list[Segment] = Field(description="One entry per cover piece: the tier, range and granularity read.")
    partial: bool
    missing: list[Missing]
    watermarks: Watermarks = Field(description="What each tier's part of the answer includes (freshness).")
    ranking: Optional[RankingMeta] = Field(None, description="top-K and rank across tiers only.")


class Point(BaseModel):
    t: TimeOut = Field(description="Bucket start.")
    value: Optional[float] = Field(description="null when the bucket holds no events.")


class SeriesResponse(BaseModel):
    stream: str
    from_: TimeOut = Field(alias="from")
    to: TimeOut
    step: str
    agg: str
    key: Optional[str]
    tz: Optional[str] = Field(None, description="The zone of the buckets: tz, else the stream's default zone; absent for UTC. Bucket times stay UTC.")
    points: list[Point]
    meta: Meta


class RankedItem(BaseModel):
    rank: int
    key: str
    value: float
    error_bound: Optional[float] = Field(None, description="mode=approx only: upper_bound - lower_bound.")
    lower_bound: Optional[float] = Field(None, description="mode=approx only: the true value is at least this.")
    upper_bound: Optional[float] = Field(None, description="mode=approx only: the true value is at most this.")


class TopkResponse(BaseModel):
    stream: str
    from_: TimeOut = Field(alias="from")
    to: TimeOut
    k: int
    by: str
    mode: str
    items: list[RankedItem]
    meta: Meta


class Neighbour(BaseModel):
    rank: int
    key: str
    value: float


class RankResponse(BaseModel):
    stream: str
    key: str
    from_: TimeOut = Field(alias="from")
    to: TimeOut
    by: str
    rank: Optional[int] = Field(description="1-based; null when the key has no events in the range.")
    value: Optional[float]
    total_keys: int
    around: list[Neighbour]
    meta: Meta


class ExplainResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    explain: Literal[True]
    stream: str
    from_: TimeOut = Field(alias="from")
    to: TimeOut
    meta: Meta


# ---- operations -------------------------------------------------------------------------------

class Owns(BaseModel):
    from_: TimeOut = Field(alias="from")
    to: TimeOut


class TierInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Literal["archive", "cold", "warm", "hot"]
    owns: Owns = Field(description="The half-open range the catalog gives this tier.")
    rows: Optional[int] = Field(description="Events in the range this tier owns, exact (the tiers' rows add up "
                                            "to every stored event); null when the tier cannot be read.")
    bytes: Optional[int] = Field(description="Bytes the tier occupies (hot: the Redis dataset; warm: its tables "
                                             "on disk; cold: its files; archive: its objects); null when the "
                                             "tier cannot be read.")
    healthy: bool
    configured: bool = Field(True, description="false when this process has no client for the tier.")


class Boundaries(BaseModel):
    """b_archive <= b_cold <= b_warm. A boundary at -inf reads 0001-01-01T00:00:00.000Z; a range
    open to +inf ends at 9999-12-31T23:59:59.999Z."""

    archive: TimeOut
    cold: TimeOut
    warm: TimeOut


class TiersResponse(BaseModel):
    catalog_version: int
    boundaries: Boundaries
    tiers: list[TierInfo]


class JobInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    schedule: Optional[Any]
    last_run: Optional[dict[str, Any]]
    next_run: Optional[TimeOut]
    lag_seconds: Optional[float]


class JobRunRequest(Strict):
    as_of: Optional[Time] = Field(None, description="Run as if the clock read this time; default now. Later than "
                                  "now + clock_skew: 422 clock_override_disabled unless allow_clock_override.")


class JobRunAccepted(BaseModel):
    run_id: Any


class JobRun(BaseModel):
    model_config = ConfigDict(extra="allow")
    run_id: Any
    job: str
    status: str
    requested_by: Optional[str] = Field(None, description='Who asked: "api:<tenant>:<credential>", '
                                        '"cli:<os user>" or "scheduler".')
    started: Optional[TimeOut]
    finished: Optional[TimeOut]
    progress: Optional[float]
    stats: Optional[dict[str, Any]]
    error: Optional[str]


class Health(BaseModel):
    status: str
    tiers: Optional[dict[str, bool]] = None


def validate(model: type[BaseModel], data: Any, *, strict: bool = False) -> Any:
    """model.model_validate with errors turned into a 400 whose details name each field.

    JSON bodies are validated strictly (a number must be a JSON number); query strings laxly
    (every value arrives as a string)."""
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        details = []
        for err in exc.errors(include_url=False, include_context=False, include_input=False):
            loc = [str(p) for p in err["loc"]]
            field = ".".join(loc) or "body"
            problem = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
            details.append({"field": field, "problem": problem})
        names = ", ".join(dict.fromkeys(d["field"] for d in details))
        raise ValidationFailed(f"Invalid {names}.", details) from None


def json_object(body: bytes, shape: str, *, allow_empty: bool) -> dict:
    """Parse a request body that must be one JSON object (`shape` names its fields for the error).

    An empty body is {} when `allow_empty`, else refused like any non-object.
    """
    try:
        data = orjson.loads(body) if body.strip() else ({} if allow_empty else None)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.", [{"field": "body", "problem": "invalid JSON"}],
                         code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest(f"The body must be a JSON object {shape}.", [{"field": "body", "problem": "not an object"}])
    return data
