"""GET /v1/query/trending: keys ranked by an exponentially decayed score (rollups/trending.py).

The window where weights matter is cut into slices; each slice is covered per tier through the
planner (one catalog snapshot, rollups/cover.py per tier), every piece's per-key partials are read
(Planner.execute_pieces with each=True: a tier's slices in few `aggregate_each` calls, results
cache included), weighted at their slice's start
and summed per key. `min_change` hysteresis keeps the previous reported order of
(tenant, stream, k, half_life, by) in Redis (settings.redis_url) so successive calls are stable.
"""
from __future__ import annotations

import logging
import time
import weakref
from typing import Any, Literal, Optional

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import redis
from flask import Blueprint, current_app, request
from pydantic import BaseModel, ConfigDict, Field

from rollups import trending as tr
from rollups.cover import cover
from rollups.clock import check_clock
from rollups.errors import ValidationFailed
from rollups.timeutil import DAY_MS, MINUTE_MS, format_duration, format_time, now_ms, parse_duration, parse_time
from router import context, freshness, streams
from router.models import MAX_K, Missing, Stream, Strict, Time, TimeOut, Watermarks, validate
from router.planner import Plan, PlannedPiece, QuerySpec, missing_meta

bp = Blueprint("trending", __name__)
log = logging.getLogger("tierstore.router")

MIN_HALF_LIFE, MAX_HALF_LIFE = MINUTE_MS, 30 * DAY_MS
DEFAULT_MAX_ERROR = 0.05
STATE_PREFIX = "trending:"
STATE_TTL_S = 7 * 86_400
REDIS_EXTENSION = "tierstore.trending.redis"


class TrendingParams(Strict):
    stream: Stream
    k: int = Field(10, ge=1, le=MAX_K)
    half_life: str = Field("1h", pattern=r"^\d{1,9}[smhdw]$", description="1m..30d: the age at which an "
                           "event's weight halves.", examples=["1h", "30m", "1d"])
    by: Literal["sum", "count"] = Field("sum", description="sum: each event weighs its value; count: 1.")
    min_change: float = Field(0.0, ge=0.0, le=100.0, allow_inf_nan=False, description=(
        "Hysteresis (relative): a key overtakes another in the reported order only when its score exceeds "
        "the other's by this fraction of it; the previous order is kept per (stream, k, half_life, by)."))
    as_of: Optional[Time] = Field(None, description="Score as of this time (rounded up to the minute); default "
                                  "now. Later than now + clock_skew: 422 clock_override_disabled unless "
                                  "allow_clock_override.")
    allow_partial: bool = Field(False, description="1: when a tier is down, answer from the others.")


class TrendingItem(BaseModel):
    rank: int
    key: str
    score: float = Field(description="sum(value * 2^(-(as_of - t)/half_life)), each bucket weighted at its "
                                     "start (meta.trending states the error).")


class TrendingSegment(BaseModel):
    tier: Literal["hot", "warm", "cold", "archive"]
    granularity: str
    from_: TimeOut = Field(alias="from")
    to: TimeOut
    pieces: int = Field(description="Pieces read (one per slice and granularity).")
    cached: int = Field(description="Of those, served by the results cache.")


class TrendingWeighting(BaseModel):
    weighting: Literal["bucket_start"]
    slice: str = Field(description="Every event of a slice is weighted at the slice's start.")
    max_relative_error: float = Field(description="2^(slice/half_life) - 1: for keys with non-negative values "
                                      "exact/(1 + e) <= score <= exact (scores never over-estimate).")
    cutoff_weight: float = Field(description="Events whose weight is below this are not read.")
    window_from: TimeOut
    window_to: TimeOut
    slices: int


class TrendingHysteresis(BaseModel):
    min_change: float
    previous: Optional[int] = Field(description="Keys in the stored previous order; null when Redis could "
                                                "not be read (the answer is then by score).")


class TrendingMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    exact: bool = Field(description="Always false: scores carry the bucket-start weighting error.")
    took_ms: float
    catalog_version: int
    segments: list[TrendingSegment]
    partial: bool
    missing: list[Missing]
    watermarks: Watermarks
    trending: TrendingWeighting
    hysteresis: TrendingHysteresis


class TrendingResponse(BaseModel):
    stream: str
    k: int
    half_life: str
    by: str
    as_of: TimeOut
    items: list[TrendingItem]
    meta: TrendingMeta


@bp.get("/v1/query/trending")
def trending():
    started = time.perf_counter()
    ctx = context.get()
    p = validate(TrendingParams, request.args.to_dict())
    half_life = parse_duration(p.half_life, field="half_life")
    if not MIN_HALF_LIFE <= half_life <= MAX_HALF_LIFE:
        raise ValidationFailed("half_life must be between 1m and 30d.",
                               [{"field": "half_life", "problem": "must be 1m..30d"}])
    now = now_ms()
    as_of = now if p.as_of is None else parse_time(p.as_of, now, field="as_of")
    check_clock(as_of, ctx.settings, now, what="trending reads")
    streams.require_known(context.tenant(), p.stream)
    ref = tr.reference_time(as_of)
    max_error = float(getattr(ctx.settings, "trending_max_relative_error", DEFAULT_MAX_ERROR))
    width = tr.slice_ms(half_life, max_error)
    rng = tr.window(ref, half_life, width)
    spec = QuerySpec(context.tenant(), p.stream, rng, "key")
    plan = sliced(ctx.planner, ctx.planner.plan(spec, allow_partial=p.allow_partial), width)
    tables, outcome = ctx.planner.execute_pieces(plan, allow_partial=p.allow_partial, each=True)
    scores = weighted_scores(plan, tables, ref, half_life, width, p.by)

    state_key = f"{STATE_PREFIX}{{{spec.tenant}}}:{p.stream}:{p.k}:{half_life}:{p.by}"
    previous = load_state(state_key)
    order = tr.stable_order(scores, previous or [], p.k, p.min_change)
    save_state(state_key, order)
    items = [{"rank": i + 1, "key": key, "score": scores[key]} for i, key in enumerate(order)]
    missing = outcome.missing
    meta = {
        "exact": False, "took_ms": round((time.perf_counter() - started) * 1000, 3),
        "catalog_version": plan.snapshot.version, "segments": segments_summary(outcome.runs),
        "partial": bool(missing), "missing": missing_meta(missing), "watermarks": freshness.watermarks(),
        "trending": {"weighting": "bucket_start", "slice": format_duration(width),
                     "max_relative_error": tr.relative_error(half_life, width), "cutoff_weight": tr.CUTOFF,
                     "window_from": format_time(rng.start), "window_to": format_time(rng.end),
                     "slices": len(tr.slices(rng, width))},
        "hysteresis": {"min_change": p.min_change, "previous": None if previous is None else len(previous)},
    }
    return context.json({"stream": p.stream, "k": p.k, "half_life": p.half_life, "by": p.by,
                         "as_of": format_time(ref), "items": items, "meta": meta})


def sliced(planner, plan: Plan, width: int) -> Plan:
    """The plan's pieces cut at the slice boundaries, each part covered again with its tier's
    granularities (so a piece never straddles two slices: one weight per piece)."""
    pieces = []
    for pp in plan.pieces:
        grans = planner.tiers[pp.tier].granularities
        for part in tr.slices(pp.piece.range, width):
            pieces.extend(PlannedPiece(pp.tier, q) for q in cover(part, grans))
    return Plan(plan.spec, plan.snapshot, pieces, plan.absent)


def weighted_scores(plan: Plan, tables: dict[int, pa.Table], ref: int, half_life: int, width: int,
                    by: str) -> dict[str, float]:
    """sum over pieces of weight(piece's slice start) * the piece's per-key sum (or count)."""
    parts = []
    for i, t in tables.items():
        if not t.num_rows:
            continue
        w = tr.weight(ref, plan.pieces[i].piece.range.start, half_life, width)
        col = pc.cast(t["count"], pa.float64()) if by == "count" else t["sum"]
        parts.append(pa.table({"key": t["key"], "score": pc.multiply(col, w)}))
    if not parts:
        return {}
    out = pa.concat_tables(parts).group_by("key", use_threads=False).aggregate([("score", "sum")])
    return dict(zip(out["key"].to_pylist(), out["score_sum"].to_pylist()))


def segments_summary(runs) -> list[dict]:
    """meta.segments, one entry per (tier, granularity): the range spanned and the pieces read."""
    acc: dict[tuple[str, str], dict] = {}
    for r in runs:
        e = acc.get((r.tier, r.piece.granularity.name))
        if e is None:
            acc[(r.tier, r.piece.granularity.name)] = {"tier": r.tier, "granularity": r.piece.granularity.name,
                                                       "lo": r.piece.range.start, "hi": r.piece.range.end,
                                                       "pieces": 1, "cached": int(r.cached)}
        else:
            e["lo"], e["hi"] = min(e["lo"], r.piece.range.start), max(e["hi"], r.piece.range.end)
            e["pieces"] += 1
            e["cached"] += int(r.cached)
    return [{"tier": e["tier"], "granularity": e["granularity"], "from": format_time(e["lo"]),
             "to": format_time(e["hi"]), "pieces": e["pieces"], "cached": e["cached"]}
            for e in sorted(acc.values(), key=lambda e: (e["lo"], e["tier"]))]


def _redis() -> redis.Redis | None:
    client = current_app.extensions.get(REDIS_EXTENSION)
    if client is None:
        from tierstore.wiring import redis_of

        settings = context.get().settings
        if not getattr(settings, "redis_url", ""):
            return None
        client = current_app.extensions[REDIS_EXTENSION] = redis_of(
            settings, socket_timeout=0.5, socket_connect_timeout=0.5)
        weakref.finalize(current_app._get_current_object(), client.close)
    return client


def load_state(key: str) -> list[str] | None:
    """The previous reported order ([] when none), or None when Redis cannot be read (logged)."""
    try:
        client = _redis()
        raw = client.get(key) if client is not None else None
    except redis.RedisError:
        log.warning("trending: the previous order could not be read; answering by score", exc_info=True)
        return None
    return [] if raw is None else list(orjson.loads(raw))


def save_state(key: str, order: list[str]) -> None:
    try:
        client = _redis()
        if client is not None:
            client.set(key, orjson.dumps(order), ex=STATE_TTL_S)
    except redis.RedisError:
        log.warning("trending: the order could not be stored", exc_info=True)


def openapi_paths(ref, responses) -> dict[str, Any]:
    """The trending path, built with router/openapi.py's helpers."""
    from router.openapi import query_parameters

    return {"/v1/query/trending": {"get": {
        "operationId": "queryTrending", "tags": ["query"],
        "summary": "Keys ranked by an exponentially decayed score.",
        "description": (
            "score = sum(value * 2^(-(as_of - t)/half_life)) over events before as_of (rounded up to the minute), "
            "computed from minute and hour rollups: the window where weights reach cutoff_weight (1e-9) is cut "
            "into slices and every event of a slice is weighted at the slice's start, so a score under-estimates "
            "by at most meta.trending.max_relative_error (for non-negative values). min_change adds hysteresis: "
            "a key overtakes another only when its score exceeds the other's by that fraction. half_life 1m..30d."),
        "parameters": query_parameters(TrendingParams),
        "responses": responses("200", "The ranking.", ref(TrendingResponse), ("400", "401", "404", "422", "503")),
    }}}
