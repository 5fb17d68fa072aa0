"""GET /v1/query/series, /v1/query/topk, /v1/query/rank."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
from flask import Blueprint, request

from rollups.calendar import bucket_bounds, bucket_count, parse_query_time, parse_step
from rollups.errors import BadRequest
from rollups.timeutil import MAX_MS, MINUTE_MS, TimeRange, ceil_to, floor_to, format_time, now_ms
from rollups.topk import RankResult, rank_of, top_k
from router import approx, context, freshness, ranking_cache, streams
from router.calendar_query import calendar_points, query_zone
from router.series_values import bucket_values, format_times
from router.models import MAX_POINTS, RankParams, SeriesParams, TopkParams, validate
from router.rank_pieces import fast_rank
from router.rank_ta import ranked_rank
from router.ranking import ranked_top_k
from router.planner import Outcome, Plan, QuerySpec, missing_meta, planned_meta, segments_meta

bp = Blueprint("query", __name__)


LAST_MINUTE = floor_to(MAX_MS, MINUTE_MS)


def query_range(start: Any, end: Any, now: int, zone=None) -> TimeRange:
    """[from, to) from the parameters, from rounded down and to rounded up to the minute; dates and
    offset-less local times are read in `zone` (None: UTC), rollups.calendar.parse_query_time."""
    lo = parse_query_time(start, zone, now, field="from")
    hi = parse_query_time(end, zone, now, field="to")
    if lo >= hi:
        raise BadRequest(f"from ({format_time(lo)}) must be before to ({format_time(hi)}).",
                         [{"field": "from", "problem": "not before to"}], code="invalid_range")
    # the last minute of year 9999 is not a whole minute below MAX_MS: no tier could cover it
    start, end = floor_to(lo, MINUTE_MS), min(ceil_to(hi, MINUTE_MS), LAST_MINUTE)
    if start >= end:
        raise BadRequest(f"from must be before {format_time(LAST_MINUTE)}.",
                         [{"field": "from", "problem": "out of range"}], code="invalid_range")
    return TimeRange(start, end)


def params(model):
    return validate(model, request.args.to_dict())


def meta(plan: Plan, outcome: Outcome | None, started: float, **extra: Any) -> dict:
    missing = plan.absent if outcome is None else outcome.missing
    segments = planned_meta(plan) if outcome is None else segments_meta(outcome.runs)
    return {"exact": not missing, "took_ms": round((time.perf_counter() - started) * 1000, 3),
            "catalog_version": plan.snapshot.version, "segments": segments,
            "partial": bool(missing), "missing": missing_meta(missing), "watermarks": freshness.watermarks(), **extra}


def explained(head: dict, plan: Plan, started: float) -> dict:
    return {"explain": True, **head, "meta": meta(plan, None, started)}


@bp.get("/v1/query/series")
def series():
    return context.json(series_answer(params(SeriesParams), time.perf_counter()))


def series_answer(p: SeriesParams, started: float) -> dict:
    """The body of GET /v1/query/series for validated parameters (the Grafana data source's too).
    Raises BadRequest (step, too_many_points, range) and the planner's errors (tier_unavailable)."""
    ctx = context.get()
    zone = query_zone(p.tz, context.tenant(), p.stream)
    rng = query_range(p.from_, p.to, now_ms(), zone)
    calendar_step = parse_step(p.step, zone)
    step = calendar_step.ms
    if calendar_step.calendar:
        points = bucket_count(rng.start, rng.end, calendar_step, zone)
    else:
        first = floor_to(rng.start, step)
        points = -(-(rng.end - first) // step)
    if points > MAX_POINTS:
        raise BadRequest(f"The range holds {points} steps of {p.step}; at most {MAX_POINTS} points are returned — "
                         "ask for a larger step.", [{"field": "step", "problem": "too many points"}],
                         code="too_many_points")
    streams.require_known(context.tenant(), p.stream)  # after every 400: bad input is bad for any stream
    head = {"stream": p.stream, "from": format_time(rng.start), "to": format_time(rng.end), "step": p.step,
            "agg": p.agg, "key": p.key}
    if zone is not None:  # tz, or the stream's default zone
        head["tz"] = getattr(zone, "key", p.tz)
    if calendar_step.calendar:
        bounds = bucket_bounds(rng.start, rng.end, calendar_step, zone)
        spec = QuerySpec(context.tenant(), p.stream, rng, "bucket", key=p.key, bounds=tuple(bounds))
    else:
        spec = QuerySpec(context.tenant(), p.stream, rng, "bucket", key=p.key, step_ms=step)
    plan = ctx.planner.plan(spec, allow_partial=p.allow_partial or p.explain)
    if p.explain:
        return explained(head, plan, started)
    outcome = ctx.planner.execute(plan, allow_partial=p.allow_partial)
    points = (calendar_points(outcome.partials, bounds, p.agg) if calendar_step.calendar
              else series_points(outcome.partials, first, rng.end, step, p.agg))
    return {**head, "points": points, "meta": meta(plan, outcome, started)}


def series_points(partials: pa.Table, first: int, end: int, step: int, agg: str) -> list[dict]:
    """One point per step bucket from `first` up to `end`; a bucket aggregates the partial buckets
    (which nest in it and lie inside the query range) that start within it (router/series_values.py:
    vectorised, sums compensated)."""
    n = max(0, -(-(end - first) // step))
    idx = (np.asarray(partials["bucket"].to_numpy(), np.int64) - first) // step if partials.num_rows else None
    values = bucket_values(partials, idx, n, agg)
    times = format_times(first + step * np.arange(n, dtype=np.int64))
    return [{"t": t, "value": v} for t, v in zip(times, values)]


@bp.get("/v1/query/topk")
def topk():
    return context.json(topk_answer(params(TopkParams), time.perf_counter()))


def topk_answer(p: TopkParams, started: float) -> dict:
    """The body of GET /v1/query/topk for validated parameters (the Grafana data source's too)."""
    ctx = context.get()
    rng = query_range(p.from_, p.to, now_ms(), query_zone(p.tz, context.tenant(), p.stream))
    streams.require_known(context.tenant(), p.stream)
    head = {"stream": p.stream, "from": format_time(rng.start), "to": format_time(rng.end), "k": p.k,
            "by": p.by, "mode": p.mode}
    plan = ctx.planner.plan(QuerySpec(context.tenant(), p.stream, rng, "key"), allow_partial=p.allow_partial or p.explain)
    if p.explain:
        return explained(head, plan, started)
    extra: dict = {}
    if p.mode == "approx":
        done = approx.answer_topk(plan, p, started)
        if done.items is not None:
            return {**head, "items": done.items, "meta": meta(plan, done.outcome, started, **done.meta)}
        extra = done.meta
    # by count, one tier holding the whole range ranks in place (counts are exact integers);
    # anything else runs the threshold algorithm across tiers (router/ranking.py); both answers go
    # through the shared whole-answer cache (router/ranking_cache.py), keyed by the data versions,
    # except hot's in-place ones (in_place below)
    threshold = getattr(ctx.settings, "topk_threshold", True)
    tier = ctx.planner.ranks_in_place(plan, "top_k") if p.by == "count" or not threshold else None
    if tier is not None:
        ranked, outcome, extra["ranking"] = in_place(
            ctx.planner, plan, ("top_k", p.by, p.k),
            lambda pieces: tier.top_k(plan.spec.tenant, p.stream, pieces, p.k, p.by), p.allow_partial,
            ranking_cache.encode_top_k, ranking_cache.decode_top_k)
        ranked = ranked or []
    elif threshold and p.by in ("count", "sum"):
        ranked, outcome, extra["ranking"] = ranked_top_k(ctx.planner, plan, p.k, p.by, allow_partial=p.allow_partial)
    else:
        outcome = ctx.planner.execute(plan, allow_partial=p.allow_partial)
        ranked = top_k(outcome.partials, p.k, p.by)
    items = [{"rank": r.rank, "key": r.key, "value": r.value} for r in ranked]
    if p.mode == "approx":  # answered exactly (fallback): the bounds are the value
        for item in items:
            item.update(lower_bound=item["value"], upper_bound=item["value"], error_bound=0.0)
    return {**head, "items": items, "meta": meta(plan, outcome, started, **extra)}


def in_place(planner, plan: Plan, what: tuple, call, allow_partial: bool, encode, decode) -> tuple[Any, Outcome, dict]:
    """`call(pieces)` on the one tier holding the plan: (answer, outcome, ranking meta). Cold and
    archive answers go through the shared whole-answer cache (router/ranking_cache.py); hot's never
    do: its data versions (hour totals) do not see a bucket its safety TTL deleted, which only its
    script's own check reports (503 or meta.missing, never an answer without the bucket)."""
    def compute() -> tuple[Any, Outcome, dict]:
        answer, outcome = planner.execute_in_place(plan, call, allow_partial=allow_partial)
        return answer, outcome, {"method": "in_place"}

    if plan.pieces and plan.pieces[0].tier == "hot":
        answer, outcome, info = compute()
        return answer, outcome, {**info, "cached": False}
    return ranking_cache.cached(planner, plan, what, compute, encode, decode)


@bp.get("/v1/query/rank")
def rank():
    started = time.perf_counter()
    ctx = context.get()
    p = params(RankParams)
    rng = query_range(p.from_, p.to, now_ms(), query_zone(p.tz, context.tenant(), p.stream))
    streams.require_known(context.tenant(), p.stream)
    head = {"stream": p.stream, "key": p.key, "from": format_time(rng.start), "to": format_time(rng.end), "by": p.by}
    plan = ctx.planner.plan(QuerySpec(context.tenant(), p.stream, rng, "key"), allow_partial=p.allow_partial or p.explain)
    if p.explain:
        return context.json(explained(head, plan, started))
    tier = ctx.planner.ranks_in_place(plan, "rank")
    extra: dict = {}
    # hot alone: merged on key ids, closed hours cached (router/rank_pieces.py), not re-unioned in Redis
    fast = fast_rank(ctx.planner, plan, p.key, p.by, p.around) if tier is not None and tier.name == "hot" else None
    if fast is not None:
        r, outcome, extra["ranking"] = fast[0], fast[1], {**fast[2], "cached": False}
    elif tier is not None:
        r, outcome, extra["ranking"] = in_place(
            ctx.planner, plan, ("rank", p.by, p.key, p.around),
            lambda pieces: tier.rank(plan.spec.tenant, p.stream, pieces, p.key, p.by, p.around), p.allow_partial,
            ranking_cache.encode_rank, ranking_cache.decode_rank)
        r = r or RankResult(None, None, 0, [])
    elif getattr(ctx.settings, "topk_threshold", True):  # sorted access down to the key (router/rank_ta.py)
        r, outcome, extra["ranking"] = ranked_rank(ctx.planner, plan, p.key, p.by, p.around,
                                                   allow_partial=p.allow_partial)
    else:
        outcome = ctx.planner.execute(plan, allow_partial=p.allow_partial)
        r = rank_of(outcome.partials, p.key, p.by, p.around)
    return context.json({**head, "rank": r.rank, "value": r.value, "total_keys": r.total_keys,
                         "around": [{"rank": n.rank, "key": n.key, "value": n.value} for n in r.around],
                         "meta": meta(plan, outcome, started, **extra)})
