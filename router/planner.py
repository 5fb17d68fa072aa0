"""The read path: one catalog snapshot -> segments per tier -> the cover of each segment ->
pieces run concurrently -> partials merged.

Every query kind reduces to partial aggregates grouped by key (topk, rank) or by bucket
(series); the query layer turns the merged partials into the answer. A piece is one cover
element (a tier, a granularity, a bucket-aligned range): the unit of execution, of timing in
meta.segments and of the results cache.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import pyarrow as pa

from rollups.cover import Piece, cover, cover_buckets, series_granularities
from rollups.errors import TierstoreError, TierUnavailable
from rollups.partials import empty_partials, merge_partials
from rollups.timeutil import TimeRange, format_time, now_ms
from router import piece_batches
from router.cache import ResultsCache
from router.protocols import Catalog, PieceReader
from tiers.base import Tier
from tiers.catalog import TIER_ORDER, CatalogSnapshot

Group = Literal["key", "bucket"]
log = logging.getLogger("tierstore.router")


#: pieces per aggregate_each call (router: Planner.execute_pieces(each=True)): a trending window is
#: ~430 slices; two calls per tier keep both cores busy
EACH_PIECES = 256


@dataclass(frozen=True)
class QuerySpec:
    """What to read: partials of `stream` over `range`, grouped by key or by bucket."""

    tenant: str
    stream: str
    range: TimeRange
    group: Group
    key: str | None = None
    #: series only: the cover then uses only granularities whose buckets nest in a step
    step_ms: int | None = None
    #: series with calendar buckets (rollups/calendar.py): their edges, epoch ms; each bucket is
    #: covered on its own, and the many pieces are read in batches (BATCH_PIECES a call)
    bounds: tuple[int, ...] | None = None


@dataclass(frozen=True)
class PlannedPiece:
    tier: str
    piece: Piece


@dataclass
class Plan:
    spec: QuerySpec
    snapshot: CatalogSnapshot
    pieces: list[PlannedPiece]
    #: segments whose tier is not configured at all
    absent: list[tuple[str, TimeRange]] = field(default_factory=list)


@dataclass
class PieceRun:
    tier: str
    piece: Piece
    cached: bool
    took_ms: float | None


@dataclass
class Outcome:
    """Merged partials plus what served them and what could not be read."""

    partials: pa.Table
    runs: list[PieceRun]
    missing: list[tuple[str, TimeRange]]


def unavailable(tiers: Sequence[str], cause: TierUnavailable | None = None) -> TierUnavailable:
    names = list(dict.fromkeys(tiers))
    if len(names) == 1:
        message = cause.message if cause is not None else f"The {names[0]} tier is unavailable."
    else:
        message = f"The {', '.join(names)} tiers are unavailable."
    return TierUnavailable(names[0], message + " Retry later, or pass allow_partial=1 for what the other tiers hold.",
                           [{"tier": n} for n in names])


class Planner:
    def __init__(self, tiers: Mapping[str, PieceReader], catalog: Catalog, *, pool: cf.Executor,
                 cache: ResultsCache, timeout_ms: int,
                 on_piece: Callable[[str, str, bool], None] | None = None):
        self.tiers = tiers
        self.catalog = catalog
        self.pool = pool
        self.cache = cache
        self.timeout_s = timeout_ms / 1000
        self.on_piece = on_piece

    def snapshot(self) -> CatalogSnapshot:
        try:
            return self.catalog.snapshot()
        except TierstoreError:
            raise
        except Exception as exc:  # a driver error the catalog did not translate
            raise TierUnavailable("catalog", "The catalog (PostgreSQL) is unavailable.") from exc

    def plan(self, spec: QuerySpec, *, allow_partial: bool) -> Plan:
        """Split spec.range by owner (one snapshot) and cover each segment with the tier's buckets.

        Raises TierUnavailable for a segment whose tier is not configured, unless allow_partial.
        A stale snapshot (the catalog's PostgreSQL is down, tiers/catalog_fallback.py) is exact
        only for its hot part: every other segment is unavailable the same way.
        """
        snap = self.snapshot()
        pieces: list[PlannedPiece] = []
        absent: list[tuple[str, TimeRange]] = []
        for tier_name, part in snap.segments(spec.range):
            tier = self.tiers.get(tier_name)
            if tier is None or (snap.stale and tier_name != "hot"):
                absent.append((tier_name, part))
                continue
            grans = list(tier.granularities)
            if spec.step_ms is not None:
                grans = series_granularities(spec.step_ms, grans)
            covered = cover(part, grans) if spec.bounds is None else cover_buckets(part, spec.bounds, grans)
            pieces.extend(PlannedPiece(tier_name, p) for p in covered)
        if absent and not allow_partial:
            names = [t for t, _ in absent]
            cause = TierUnavailable(names[0], f"The {names[0]} tier cannot be read while the catalog (PostgreSQL) "
                                              "is unavailable; ranges the hot tier owns still answer.") \
                if snap.stale else None
            raise unavailable(names, cause)
        return Plan(spec, snap, pieces, absent)

    def execute(self, plan: Plan, *, allow_partial: bool) -> Outcome:
        """Run every piece (concurrently), merge what came back.

        A tier that raises TierUnavailable (or does not answer within the query timeout) fails
        the query with 503, unless allow_partial: then its segments are reported as missing.
        """
        tables, outcome = self.execute_pieces(plan, allow_partial=allow_partial)
        outcome.partials = merge_partials([tables[i] for i in sorted(tables)], plan.spec.group)
        return outcome

    def execute_pieces(self, plan: Plan, *, allow_partial: bool,
                       each: bool = False) -> tuple[dict[int, pa.Table], Outcome]:
        """As `execute`, without the merge: the partial table of each piece read, by its index in
        plan.pieces (pieces of a failed tier left out), and the outcome (its partials empty).
        Trending (router/trending.py) weights each piece before it sums them. `each` (group
        "key"): a tier's pieces are read EACH_PIECES per `aggregate_each` call (hundreds of
        slices), not one call per piece."""
        spec = plan.spec
        runs: dict[int, PieceRun] = {}
        tables: dict[int, pa.Table] = {}
        todo: list[int] = []
        keys = self._cache_keys(plan)
        hits = dict(zip(keys, self.cache.get_many(list(keys.values())))) if keys else {}
        for i, pp in enumerate(plan.pieces):
            hit = hits.get(i)
            if hit is not None:
                runs[i] = PieceRun(pp.tier, pp.piece, True, 0.0)
                tables[i] = hit
            else:
                todo.append(i)
        failed: dict[str, TierUnavailable] = {}
        fresh: list[tuple[tuple, pa.Table]] = []
        for i, result, took_ms in (self._run_each(plan, todo) if each and spec.group == "key"
                                   else self._run(plan, todo)):
            pp = plan.pieces[i]
            if isinstance(result, TierUnavailable):
                failed.setdefault(pp.tier, result)
                continue
            runs[i] = PieceRun(pp.tier, pp.piece, False, took_ms)
            tables[i] = result
            if i in keys:
                fresh.append((keys[i], result))
        if fresh:
            self.cache.put_many(fresh)
        if failed and not allow_partial:
            cause = next(iter(failed.values()))
            raise unavailable(list(failed), cause) from cause
        missing = list(plan.absent)
        for tier_name in failed:
            part = spec.range.intersect(plan.snapshot.owns(tier_name))
            if part is not None:
                missing.append((tier_name, part))
        missing.sort(key=lambda m: (TIER_ORDER.index(m[0]) if m[0] in TIER_ORDER else 99, m[1].start))
        kept = [i for i in sorted(tables) if plan.pieces[i].tier not in failed]
        if self.on_piece is not None:
            for i in kept:
                self.on_piece(runs[i].tier, runs[i].piece.granularity.name, runs[i].cached)
        return {i: tables[i] for i in kept}, Outcome(empty_partials(spec.group), [runs[i] for i in kept], missing)

    def ranks_in_place(self, plan: Plan, capability: Literal["top_k", "rank"]):
        """The tier holding the whole plan when it supports the ranking `capability` (top_k, rank):
        the hot tier ranks inside Redis, the cold tier by the threshold algorithm, without
        shipping every key. None when the plan spans tiers (the router merges then)."""
        tiers = {p.tier for p in plan.pieces}
        if len(tiers) != 1 or plan.absent:
            return None
        tier = self.tiers[tiers.pop()]
        return tier if tier.supports(capability) else None

    def execute_in_place(self, plan: Plan, call: Callable[[list[Piece]], Any], *,
                         allow_partial: bool) -> tuple[Any, Outcome]:
        """Run `call(pieces)` once, on the one tier that holds the whole plan.

        Returns (call's result or None when the tier is down and allow_partial, the outcome's meta).
        """
        tier = plan.pieces[0].tier
        started = time.perf_counter()
        try:
            result = call([p.piece for p in plan.pieces])
        except TierUnavailable as exc:
            if not allow_partial:
                raise unavailable([tier], exc) from exc
            part = plan.spec.range.intersect(plan.snapshot.owns(tier))
            return None, Outcome(empty_partials(plan.spec.group), [], [(tier, part)] if part else [])
        took_ms = (time.perf_counter() - started) * 1000
        runs = [PieceRun(p.tier, p.piece, False, took_ms) for p in plan.pieces]
        if self.on_piece is not None:
            for run in runs:
                self.on_piece(run.tier, run.piece.granularity.name, False)
        return result, Outcome(empty_partials(plan.spec.group), runs, [])

    def _run(self, plan: Plan, todo: list[int]):
        """Yield (piece index, table or TierUnavailable, took_ms); other errors propagate."""
        if plan.spec.group == "bucket":  # series: a tier's pieces in one call (few rows each)
            yield from self._run_batched(plan, todo)
            return
        if len(todo) == 1:
            i = todo[0]
            yield (i, *self._read(plan, plan.pieces[i]))
            return
        futures = {self.pool.submit(self._read, plan, plan.pieces[i]): [i] for i in todo}
        for (i,), result in self._gather(plan, futures):
            yield (i, result, None) if isinstance(result, TierUnavailable) else (i, *result)

    def _gather(self, plan: Plan, futures: dict[cf.Future, list[int]]):
        """(piece indices, the call's result) of each call; a call that did not answer within the
        query timeout is cancelled and gives TierUnavailable naming its tier."""
        done, pending = cf.wait(futures, timeout=self.timeout_s)
        for fut in pending:
            fut.cancel()
            tier = plan.pieces[futures[fut][0]].tier
            yield futures[fut], TierUnavailable(tier, f"The {tier} tier did not answer within {self.timeout_s:g} s.")
        for fut in done:
            yield futures[fut], fut.result()

    def _run_batched(self, plan: Plan, todo: list[int]):
        """_run for series: a year of local days is hundreds of pieces, and a fixed-step series
        has a few edge pieces per tier, each a round trip; read BATCH_PIECES per tier call
        (router/piece_batches.py); each piece reports its batch's took_ms."""
        batches = piece_batches.batches(plan.pieces, todo)
        futures = {self.pool.submit(piece_batches.read, self.tiers[plan.pieces[b[0]].tier], plan.spec,
                                    [plan.pieces[i].piece for i in b]): b for b in batches}
        for idx, result in self._gather(plan, futures):
            if isinstance(result, TierUnavailable):
                yield from ((i, result, None) for i in idx)
            else:
                yield from zip(idx, *result)

    def _run_each(self, plan: Plan, todo: list[int]):
        """_run through the tiers' aggregate_each: EACH_PIECES of a tier's pieces per call, the
        calls concurrent; each piece reports its call's took_ms."""
        by_tier: dict[str, list[int]] = {}
        for i in todo:
            by_tier.setdefault(plan.pieces[i].tier, []).append(i)
        calls = []
        for name, idx in by_tier.items():
            n = EACH_PIECES if reads_each(self.tiers[name]) else 1  # else concurrent single pieces
            calls.extend(idx[a:a + n] for a in range(0, len(idx), n))
        futures = {self.pool.submit(self._read_each, plan, b): b for b in calls}
        for idx, result in self._gather(plan, futures):
            if isinstance(result, TierUnavailable):
                yield from ((i, result, None) for i in idx)
            else:
                tables, took_ms = result
                yield from ((i, table, took_ms) for i, table in zip(idx, tables))

    def _read_each(self, plan: Plan, idx: list[int]) -> tuple[list, float]:
        spec, tier = plan.spec, plan.pieces[idx[0]].tier
        started = time.perf_counter()
        try:
            reader, pieces = self.tiers[tier], [plan.pieces[i].piece for i in idx]
            tables = (reader.aggregate_each(spec.tenant, spec.stream, pieces, spec.key) if reads_each(reader)
                      else [reader.aggregate(spec.tenant, spec.stream, [p], "key", spec.key) for p in pieces])
        except TierUnavailable as exc:
            tables = [exc] * len(idx)
        return tables, (time.perf_counter() - started) * 1000

    def _read(self, plan: Plan, pp: PlannedPiece) -> tuple[pa.Table | TierUnavailable, float]:
        spec = plan.spec
        started = time.perf_counter()
        try:
            table = self.tiers[pp.tier].aggregate(spec.tenant, spec.stream, [pp.piece], spec.group, spec.key)
        except TierUnavailable as exc:
            return exc, (time.perf_counter() - started) * 1000
        return table, (time.perf_counter() - started) * 1000

    def _cache_keys(self, plan: Plan) -> dict[int, tuple]:
        """Cache keys of the plan's cacheable pieces by index (router/cache.py says what a key
        holds and why it is enough). Versions are read here, before any piece: a piece read
        later is at least as new as its version. A tier that cannot tell its versions right now
        is read uncached — the cache is an optimisation, never a reason to fail a query."""
        spec, now = plan.spec, now_ms()
        by_tier: dict[str, list[int]] = {}
        for i, pp in enumerate(plan.pieces):
            if self.cache.cacheable(pp.tier, self.tiers[pp.tier], pp.piece, now):
                by_tier.setdefault(pp.tier, []).append(i)
        keys: dict[int, tuple] = {}
        if len(by_tier) > 1:  # one round trip per tier, concurrently
            futures = {t: self.pool.submit(self._versions, plan, t, idx) for t, idx in by_tier.items()}
            found = {t: f.result() for t, f in futures.items()}
        else:
            found = {t: self._versions(plan, t, idx) for t, idx in by_tier.items()}
        for tier_name, idx in by_tier.items():
            versions = found[tier_name]
            if versions is None:
                continue
            owned = plan.snapshot.owns(tier_name)
            for i, version in zip(idx, versions):
                if version is None:
                    continue
                p = plan.pieces[i].piece
                keys[i] = (spec.tenant, spec.stream, spec.group, spec.key, tier_name, p.granularity.name,
                           p.range.start, p.range.end, owned.start, owned.end, version)
        return keys

    def _versions(self, plan: Plan, tier_name: str, idx: list[int]) -> list | None:
        """The tier's data version of each of these pieces; None when it cannot tell (logged)."""
        spec, tier = plan.spec, self.tiers[tier_name]
        try:
            return tier.data_versions(spec.tenant, spec.stream, [plan.pieces[i].piece for i in idx])
        except Exception:
            log.warning("%s tier: data versions failed; pieces read uncached", tier_name, exc_info=True)
            return None


def reads_each(tier: Any) -> bool:
    """Whether the tier reads many pieces apart in one call (overrides Tier.aggregate_each)."""
    own = getattr(type(tier), "aggregate_each", None)
    return own is not None and own is not Tier.aggregate_each


def segments_meta(runs: Sequence[PieceRun]) -> list[dict]:
    return [{"tier": r.tier, "from": format_time(r.piece.range.start), "to": format_time(r.piece.range.end),
             "granularity": r.piece.granularity.name, "cached": r.cached,
             "took_ms": None if r.took_ms is None else round(r.took_ms, 3)} for r in runs]


def planned_meta(plan: Plan) -> list[dict]:
    """meta.segments of a plan not run (explain=1): took_ms null."""
    return segments_meta([PieceRun(p.tier, p.piece, False, None) for p in plan.pieces])


def missing_meta(missing: Sequence[tuple[str, TimeRange]]) -> list[dict]:
    return [{"tier": t, "from": format_time(r.start), "to": format_time(r.end)} for t, r in missing]
