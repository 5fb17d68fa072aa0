"""Warm's bucket sketches for mode=approx, built where its rollups are built: after each refresh,
every day bucket (and the hours of the partial days at the ends) of warm's range
[max(b_cold, b_warm - window), b_warm) whose stored sketch is missing or older than the bucket's
data version is built from the rollups and stored (tiers/sketch_buckets.py), for by=count and
by=sum. Buckets already current cost one version and one store lookup per stream.

Cold and archive sketches are files of their partitions (tiers/sketch_files.py), written by
export_cold with each day (weeks and months merged from their days) and carried to S3 by the
archive job; export_cold deletes warm's rows of the buckets it moved below b_cold. Hot is folded
exactly at query time.
"""
from __future__ import annotations

import logging
from typing import Any

from rollups.cover import cover
from rollups.errors import TierstoreError
from rollups.timeutil import DAY_MS, G1D, G1H, TimeRange
from tiers.sketch_buckets import buckets_of, fill
from tiers.sketch_store import SketchStore

log = logging.getLogger("tierstore.scheduler")


def build_warm_sketches(warm, pool, catalog, *, lg_k: int, window_ms: int) -> dict[str, Any]:
    """Build the missing or stale day and hour sketches of every stream warm holds.

    Returns {"streams", "stored", "built"} (stored: buckets already current). Raises
    TierUnavailable when warm or the catalog is down.
    """
    snap = catalog.snapshot()
    start = snap.b_warm - window_ms
    lo = max(snap.b_cold, start - start % DAY_MS)
    stats = {"streams": 0, "stored": 0, "built": 0}
    if lo >= snap.b_warm:
        return stats
    pieces = [p for p in cover(TimeRange(lo, snap.b_warm), warm.granularities) if p.granularity in (G1D, G1H)]
    fill_streams("warm", warm, pool, pieces, _streams(warm, pool), lg_k, stats)
    return stats


def fill_streams(name: str, tier, pool, pieces, streams, lg_k: int, stats: dict[str, Any]) -> None:
    """Store the missing or stale sketches (count and sum) of tier `name`'s buckets in `pieces` for
    each (tenant, stream) of `streams`, adding to stats' "streams", "stored" and "built". Raises the
    first bucket's failure (TierUnavailable)."""
    store = SketchStore(pool)
    for tenant, stream in streams:
        stats["streams"] += 1
        tables: dict = {}  # each bucket read once for both measures
        for by in ("count", "sum"):
            buckets = [b for p in pieces for b in buckets_of(name, p)]  # fresh: fill() fills them in
            filled = fill(store, {name: tier}, tenant, stream, by, lg_k, buckets, tables=tables)
            if filled.failed:
                raise next(iter(filled.failed.values()))
            stats["stored"] += filled.stored
            stats["built"] += filled.built


def build_warm_sketches_logged(warm, pool, catalog, *, lg_k: int, window_ms: int) -> dict[str, Any]:
    """build_warm_sketches for the refresh job: a failure is logged and reported in the stats, it
    does not fail the refresh (queries build what is missing)."""
    try:
        return build_warm_sketches(warm, pool, catalog, lg_k=lg_k, window_ms=window_ms)
    except TierstoreError as exc:
        log.warning("warm sketches not built: %s", exc)
        return {"error": str(exc)}


def _streams(warm, pool) -> list[tuple[str, str]]:
    """(tenant, stream) of every stream warm holds events of."""
    with pool.connection() as conn:
        tenants = [t for (t,) in conn.execute("SELECT DISTINCT tenant FROM streams ORDER BY tenant").fetchall()]
    return [(t, s) for t in tenants for s in sorted(warm.streams(t))]
