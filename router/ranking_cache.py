"""Whole answers of the threshold path — top-K (router/ranking.py) and rank (router/rank_ta.py) —
in the shared results cache (router/cache.py), exact by construction.

Key: (ANSWER_TAG, tenant, stream, what — ("top_k", by, k) or ("rank", by, key, around) —, the range
each tier of the plan owns in its catalog snapshot, and every piece of the plan as (tier,
granularity, start, end, the tier's data version of the piece)). The versions are those of the
per-piece cache (Tier.data_versions, tiers/versions.py): every write, late event, import, flush,
refresh, export, rebuild and delete that changes what a piece reads changes its version in the
same transaction / script, so it changes the key and a stale answer is never served. Unlike the
per-piece cache, open pieces take part: a hot piece's version is the total count of the hours it
overlaps, so an on-time event changes it as surely as a late one (the entry simply goes unused).
The versions are read BEFORE the answer is computed (one round per tier, concurrently), so the
answer stored under them is at least as new as they say.

Not cached: a plan with a piece whose tier lacks the "data_versions" capability, or whose
versions could not be read (logged; the answer is computed uncached); a plan with absent tiers;
an answer with missing ranges (allow_partial). Settings are the results cache's
(results_cache_ttl, results_cache_entries, results_cache_max_bytes) and so are its metrics
(tierstore_results_cache_hits / _misses: one lookup per answer).

Value: an Arrow table (ResultsCache stores tables) of the ranked items (rank, key, value) with the
rest — RankResult's rank, value, total_keys and the ranking meta of the computation — as JSON in
the schema metadata. A hit answers with every segment `cached: true, took_ms: 0` and
meta.ranking `{..., "cached": true}`; a computed answer has `"cached": false` and
`"cache_ms"`, the time spent reading the versions and looking up.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

import pyarrow as pa

from rollups.partials import empty_partials
from rollups.topk import Ranked, RankResult
from router.planner import Outcome, PieceRun, Plan, Planner

log = logging.getLogger("tierstore.router.ranking_cache")

ANSWER_TAG = "ranked-answer/1"
_META = b"answer"
_SCHEMA = pa.schema([("rank", pa.int64()), ("key", pa.string()), ("value", pa.float64())])

Computed = tuple[Any, Outcome, dict]


def answer_key(planner: Planner, plan: Plan, what: tuple) -> tuple | None:
    """The cache key of the answer `what` over `plan`, or None when it is not to be cached.
    Reads each tier's data versions (one call per tier, concurrently); never raises for them."""
    cache, spec = planner.cache, plan.spec
    if not cache.enabled or plan.absent or not plan.pieces:
        return None
    by_tier: dict[str, list[int]] = {}
    for i, pp in enumerate(plan.pieces):
        by_tier.setdefault(pp.tier, []).append(i)
    for name in by_tier:
        tier = planner.tiers[name]
        if not (hasattr(tier, "supports") and tier.supports("data_versions")):
            return None

    def versions(name: str) -> list | None:
        try:
            return planner.tiers[name].data_versions(spec.tenant, spec.stream,
                                                     [plan.pieces[i].piece for i in by_tier[name]])
        except Exception:
            log.warning("%s tier: data versions failed; the answer is computed uncached", name, exc_info=True)
            return None

    if len(by_tier) > 1:
        futures = {name: planner.pool.submit(versions, name) for name in by_tier}
        try:
            found = {name: fut.result(timeout=planner.timeout_s) for name, fut in futures.items()}
        except TimeoutError:
            log.warning("data versions did not come within %g s; the answer is computed uncached", planner.timeout_s)
            return None
    else:
        found = {name: versions(name) for name in by_tier}
    per_piece: list = [None] * len(plan.pieces)
    for name, idx in by_tier.items():
        got = found[name]
        if got is None or len(got) != len(idx) or any(v is None for v in got):
            return None
        for i, v in zip(idx, got):
            per_piece[i] = v
    owned = tuple((name, plan.snapshot.owns(name).start, plan.snapshot.owns(name).end) for name in sorted(by_tier))
    pieces = tuple((pp.tier, pp.piece.granularity.name, pp.piece.range.start, pp.piece.range.end, v)
                   for pp, v in zip(plan.pieces, per_piece))
    return (ANSWER_TAG, spec.tenant, spec.stream, *what, owned, pieces)


def cached(planner: Planner, plan: Plan, what: tuple, compute: Callable[[], Computed],
           encode: Callable[[Any, dict], pa.Table], decode: Callable[[pa.Table], tuple[Any, dict]]) -> Computed:
    """compute() — (answer, outcome, ranking meta) — or the answer stored under its key (module doc).
    Raises what compute raises."""
    started = time.perf_counter()
    key = answer_key(planner, plan, what)
    hit = planner.cache.get_many([key])[0] if key is not None else None
    if hit is not None:
        try:
            answer, info = decode(hit)
        except (KeyError, ValueError, TypeError):
            log.warning("results cache: undecodable answer ignored")
        else:
            return answer, hit_outcome(planner, plan), {**info, "cached": True}
    cache_ms = (time.perf_counter() - started) * 1000
    answer, outcome, info = compute()
    info = {**info, "cached": False, "cache_ms": round(cache_ms, 3)}
    if key is not None and not outcome.missing:
        planner.cache.put_many([(key, encode(answer, {k: v for k, v in info.items() if k not in ("cached", "cache_ms")}))])
    return answer, outcome, info


def hit_outcome(planner: Planner, plan: Plan) -> Outcome:
    """The Outcome for meta of an answer from the cache: every piece cached, took_ms 0."""
    runs = [PieceRun(pp.tier, pp.piece, True, 0.0) for pp in plan.pieces]
    if planner.on_piece is not None:
        for run in runs:
            planner.on_piece(run.tier, run.piece.granularity.name, True)
    return Outcome(empty_partials("key"), runs, [])


def _table(items: list[Ranked], meta: dict) -> pa.Table:
    return pa.table({"rank": pa.array([r.rank for r in items], pa.int64()),
                     "key": pa.array([r.key for r in items], pa.string()),
                     "value": pa.array([r.value for r in items], pa.float64())},
                    schema=_SCHEMA.with_metadata({_META: json.dumps(meta)}))


def _items(table: pa.Table) -> tuple[list[Ranked], dict]:
    meta = json.loads(table.schema.metadata[_META])
    cols = [table[c].to_pylist() for c in ("rank", "key", "value")]
    return [Ranked(r, k, v) for r, k, v in zip(*cols)], meta


def encode_top_k(ranked: list[Ranked], info: dict) -> pa.Table:
    return _table(ranked, {"info": info})


def decode_top_k(table: pa.Table) -> tuple[list[Ranked], dict]:
    items, meta = _items(table)
    return items, meta["info"]


def encode_rank(result: RankResult, info: dict) -> pa.Table:
    return _table(list(result.around), {"info": info, "rank": result.rank, "value": result.value,
                                        "total_keys": result.total_keys})


def decode_rank(table: pa.Table) -> tuple[RankResult, dict]:
    items, meta = _items(table)
    return RankResult(meta["rank"], meta["value"], meta["total_keys"], items), meta["info"]
