"""mode=approx top-K: merge per-bucket frequent-items sketches over the range's cover.

The cover is the exact path's (router/planner.py). Each whole bucket of a 1h, 1d, 1w or 1mo piece
of warm, cold or archive is one sketch (tiers/sketch_buckets.py):
  warm     stored in approx_sketches (tiers/sketch_store.py), used when its data version is the
           bucket's current one, else built from warm's rollup and stored; the refresh job builds
           warm's day and hour sketches (scheduler/sketches.py);
  cold, archive  the sketch file of the bucket's partition (tiers/sketch_files.py: written by
           export_cold with the day, merged for weeks and months, carried to S3 by the archive job);
           a partition written before sketch files existed, and hour buckets (partial days at
           the range's ends), are read exactly from the tier's rollup and sketched then.
  hot      its closed hours (and days) like warm's: stored in approx_sketches at the bucket's hot
           version (tiers/versions.py: it changes with every event aggregated into the hour), built
           by the refresh job (scheduler/hot_sketches.py) or else by the query;
A piece of warm's minutes (the partial hour below b_warm, or a range's edge inside warm) is one
run sketched whole from warm's 1m rollup, memoised at its version (never stored).
What is not whole buckets — raw edges, hot's minutes, a hot bucket not closed yet — is read exactly
(results cache included; hot minutes through its ranked lists, router/approx_fold.py) and folded
into the merged sketch. The buckets' sketches are merged per tier through a memo of merged groups
keyed by their versions (router/approx_fold.py). meta.approx.exact lists every range read
exactly (tier, from, to). Bounds: rollups/sketches.py.

A by=sum range holding a negative sum cannot be sketched: the caller answers it exactly and says
so (ApproxRun.fallback).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from rollups import sketches
from rollups.errors import TierUnavailable
from rollups.partials import empty_partials
from rollups.timeutil import G1M, now_ms
from router import approx_fold
from router.planner import Outcome, PieceRun, Plan, PlannedPiece, Planner, unavailable
from tiers.catalog import TIER_ORDER
from tiers.sketch_buckets import RUN_MINUTES_TIER, STORED_TIERS, BucketSketch, buckets_of, fill
from tiers.sketch_store import SketchStore

#: tiers whose whole buckets are sketched (hot: closed buckets only)
SKETCHED_TIERS = ("warm", "cold", "archive", "hot")


@dataclass
class ApproxRun:
    """What the approx path produced: the answer (None when it fell back), its meta pieces."""

    answer: sketches.ApproxAnswer | None
    outcome: Outcome
    fallback: str | None = None
    stats: dict[str, int] = field(default_factory=dict)
    #: ranges read exactly: [{"tier", "from", "to"}] (epoch ms), adjacent ones of a tier joined
    exact: list[dict] = field(default_factory=list)


def _exact_ranges(pieces: list[PlannedPiece], buckets: list[BucketSketch]) -> list[dict]:
    """Exact pieces (hot, 1m and raw edges) and file-tier buckets sketched from their rollups now
    (warm's, built or stored, are sketches of warm's rollups by design and are not listed)."""
    spans = sorted([(pp.tier, pp.piece.range.start, pp.piece.range.end) for pp in pieces]
                   + [(b.tier, b.piece.range.start, b.piece.range.end) for b in buckets
                      if b.tier not in STORED_TIERS and b.source == "built"],
                   key=lambda x: (x[1], x[0]))
    out: list[dict] = []
    for tier, lo, hi in spans:
        if out and out[-1]["tier"] == tier and out[-1]["to"] == lo:
            out[-1]["to"] = hi
        else:
            out.append({"tier": tier, "from": lo, "to": hi})
    return out


class ApproxTopK:
    """Runs approximate top-K plans. `store` None: nothing is stored (every bucket built per query)."""

    def __init__(self, planner: Planner, store: SketchStore | None, lg_k: int):
        self.planner = planner
        self.store = store
        self.lg_k = lg_k

    def run(self, plan: Plan, k: int, by: str, error_type: str, *, allow_partial: bool) -> ApproxRun:
        """The approximate top-k of the plan's range. Raises TierUnavailable (503) for a tier that
        is down unless allow_partial (then its range is listed as missing)."""
        started = time.perf_counter()
        spec = plan.spec
        buckets: list[BucketSketch] = []
        exact: list[PlannedPiece] = []
        for i, pp in enumerate(plan.pieces):
            if self._sketched(pp):
                buckets.extend(buckets_of(pp.tier, pp.piece, i))
            else:
                exact.append(pp)
        filled = fill(self.store, self.planner.tiers, spec.tenant, spec.stream, by, self.lg_k, buckets,
                      self.planner.pool.submit)
        failed = filled.failed
        if failed and not allow_partial:
            cause = next(iter(failed.values()))
            raise unavailable(list(failed), cause) from cause
        drain = [pp for pp in exact if pp.tier not in failed and approx_fold.can_drain(self.planner.tiers[pp.tier])]
        sub = Plan(spec, plan.snapshot, [pp for pp in exact if pp.tier not in failed and pp not in drain], [])
        drained = self._drain(spec, drain, by) if drain else None
        edge = self.planner.execute(sub, allow_partial=allow_partial)
        edge_tables = [edge.partials]
        if drained is not None:
            table, took = drained.result()
            if isinstance(table, TierUnavailable):
                if not allow_partial:
                    raise unavailable([drain[0].tier], table) from table
                failed.setdefault(drain[0].tier, table)
            else:
                edge_tables.append(table)
                edge.runs.extend(PieceRun(pp.tier, pp.piece, False, took) for pp in drain)
        took_ms = (time.perf_counter() - started) * 1000
        outcome = self._outcome(plan, buckets, failed, edge, took_ms)
        stats = {"buckets": len(buckets), "stored": filled.stored, "built": filled.built, "empty": filled.empty,
                 "exact_pieces": len(sub.pieces) + len(drain), "files": filled.files}
        refused = next((b.refused for b in buckets if b.refused and b.tier not in failed), None)
        merged = sketches.KeySketch.empty(self.lg_k)
        if refused is None:
            try:
                for t in edge_tables:
                    if t.num_rows:
                        merged.merge(sketches.build(t, by, self.lg_k))
            except sketches.NotSketchable as exc:
                refused = str(exc)
        if refused is not None:
            return ApproxRun(None, outcome, refused, stats)
        parts, stats["merged_cached"] = approx_fold.merge_buckets(
            self.store, spec.tenant, spec.stream, by, self.lg_k, [b for b in buckets if b.tier not in failed])
        merged.merge(parts)
        exact_read = [pp for pp in sub.pieces + drain if pp.tier not in failed]
        return ApproxRun(sketches.answer(merged, k, by, error_type), outcome, None, stats,
                         _exact_ranges(exact_read, [b for b in buckets if b.tier not in failed]))

    def _drain(self, spec, pieces: list[PlannedPiece], by: str):
        """The hot edge pieces read exactly through their ranked lists, on the planner's pool:
        a future of (table or TierUnavailable, took_ms)."""
        tier = self.planner.tiers[pieces[0].tier]

        def read():
            started = time.perf_counter()
            try:
                table = approx_fold.drained(tier, spec.tenant, spec.stream, [pp.piece for pp in pieces], by)
            except TierUnavailable as exc:
                return exc, None
            return table, (time.perf_counter() - started) * 1000

        return self.planner.pool.submit(read)

    def _sketched(self, pp: PlannedPiece) -> bool:
        g = pp.piece.granularity
        tier = self.planner.tiers[pp.tier]
        if pp.tier == "hot" and pp.piece.range.end > now_ms():
            return False  # an open hot bucket changes with every event: read exactly
        if g == G1M and pp.tier != RUN_MINUTES_TIER:
            return False  # minutes of hot: read exactly (the open edge)
        return pp.tier in SKETCHED_TIERS and not g.is_raw and tier.supports("data_versions")

    @staticmethod
    def _outcome(plan: Plan, buckets: list[BucketSketch], failed: dict, edge: Outcome, took_ms: float) -> Outcome:
        runs: list[PieceRun] = []
        edge_runs = {(r.tier, r.piece): r for r in edge.runs}
        own: dict[int, list[BucketSketch]] = {}
        for b in buckets:
            own.setdefault(b.index, []).append(b)
        for i, pp in enumerate(plan.pieces):
            if pp.tier in failed:
                continue
            if i in own:  # cached: every bucket's sketch came from the store
                runs.append(PieceRun(pp.tier, pp.piece, all(b.stored for b in own[i]), took_ms))
            elif (pp.tier, pp.piece) in edge_runs:
                runs.append(edge_runs[(pp.tier, pp.piece)])
        missing = list(plan.absent) + list(edge.missing)
        for name in failed:
            part = plan.spec.range.intersect(plan.snapshot.owns(name))
            if part is not None:
                missing.append((name, part))
        missing.sort(key=lambda m: (TIER_ORDER.index(m[0]) if m[0] in TIER_ORDER else 99, m[1].start))
        return Outcome(empty_partials("key"), runs, missing)


def engine(planner: Planner, settings: Any, extensions: Mapping[str, Any]) -> ApproxTopK:
    """The app's approx engine over its sketch store (extensions[STORE_EXTENSION], when wired)."""
    return ApproxTopK(planner, extensions.get(STORE_EXTENSION), settings.approx_sketch_lg_k)


@dataclass
class Answered:
    """The topk handler's approx result: items (None: answer exactly, meta says why) and meta.approx."""

    items: list[dict] | None
    outcome: Outcome | None
    meta: dict


def answer_topk(plan: Plan, p: Any, started: float) -> Answered:
    """Run a mode=approx topk (p: router.models.TopkParams) in the current app."""
    from flask import current_app

    from router import context

    ctx = context.get()
    eng = engine(ctx.planner, ctx.settings, current_app.extensions)
    error_type = p.error_type or ctx.settings.approx_error_type
    run = eng.run(plan, p.k, p.by, error_type, allow_partial=p.allow_partial)
    info = {"error_type": error_type, "sketch_size": 2 ** eng.lg_k, "lg_max_k": eng.lg_k, **run.stats}
    if run.answer is None:
        return Answered(None, None, {"approx": {**info, "fallback": "exact", "reason": run.fallback}})
    a = run.answer
    info.update(max_error=a.max_error, threshold=a.threshold, exact=run.exact)
    if p.by == "sum":
        info["sum_quantum"] = sketches.SUM_QUANTUM
    items = [{"rank": i.rank, "key": i.key, "value": i.value, "lower_bound": i.lower_bound,
              "upper_bound": i.upper_bound, "error_bound": i.error_bound} for i in a.items]
    meta = {"approx": info}
    if a.max_error > 0:
        meta["exact"] = False
    return Answered(items, run.outcome, meta)


#: app.extensions key of the SketchStore (tierstore/app.py sets it; without it nothing is stored)
STORE_EXTENSION = "tierstore.sketches"
