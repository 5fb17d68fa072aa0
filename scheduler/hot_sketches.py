"""The hot tier's bucket sketches for mode=approx, built where hot's hour rollups live: after each
refresh, every closed hour (and whole day) hot owns, [b_warm, the current hour's start), whose
stored sketch is missing or older than the bucket's hot data version (tiers/versions.py: the
hour's total count, which every event aggregated into it raises, and the stream's generation,
which a delete changes) is built from the hot tier and stored in approx_sketches
(tiers/sketch_buckets.py), for by=count and by=sum. A late event into a closed hour changes its
version: the stored sketch is stale from that moment (never used again) and rebuilt by the next
run or by the first query that needs it. Rows of hours that left hot (ending at or below b_warm)
are deleted here. The open hour and the minutes are read exactly by queries (router/approx.py).
"""
from __future__ import annotations

import logging
from typing import Any

from rollups.cover import Piece, cover
from rollups.errors import TierstoreError
from rollups.timeutil import G1D, G1H, HOUR_MS, TimeRange, now_ms
from scheduler.sketches import fill_streams
from tiers.sketch_store import prune_hot_left

log = logging.getLogger("tierstore.scheduler")

#: the refresh job sketches at most this many of hot's closed hours before now
MAX_HOURS = 7 * 24


def build_hot_sketches(hot, pool, catalog, *, lg_k: int, now: int | None = None) -> dict[str, Any]:
    """Build the missing or stale sketches of hot's closed hours and whole days, for every stream
    hot holds. Returns {"streams", "stored", "built", "pruned"}. Raises TierUnavailable when hot,
    PostgreSQL or the catalog is down."""
    snap = catalog.snapshot()
    now = now_ms() if now is None else now
    hi = now - now % HOUR_MS
    # hot's closed hours, at most MAX_HOURS back: while expire_hot lags (or a catalog starts far
    # in the past) older hours are sketched by the first query that needs them, not all at once
    lo = max(snap.b_warm + (-snap.b_warm) % HOUR_MS, hi - MAX_HOURS * HOUR_MS)
    stats = {"streams": 0, "stored": 0, "built": 0, "pruned": 0}
    with pool.connection() as conn:
        stats["pruned"] = prune_hot_left(conn, snap.b_warm)
    if hot is None or lo >= hi:
        return stats
    pieces = [Piece(G1H, TimeRange(lo, hi))] + [p for p in cover(TimeRange(lo, hi), hot.granularities)
                                                 if p.granularity == G1D]
    fill_streams("hot", hot, pool, pieces, _streams(hot, pool), lg_k, stats)
    return stats


def build_hot_sketches_logged(hot, pool, catalog, *, lg_k: int, now: int | None = None) -> dict[str, Any]:
    """build_hot_sketches for the refresh job (`now`: its as_of, epoch ms): any failure is logged
    and reported in the stats, it does not fail the refresh (queries build what is missing)."""
    try:
        return build_hot_sketches(hot, pool, catalog, lg_k=lg_k, now=now)
    except TierstoreError as exc:
        log.warning("hot sketches not built: %s", exc)
        return {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001  (best effort: a sketch must never fail the rollups' job)
        log.warning("hot sketches not built", exc_info=True)
        return {"error": f"{type(exc).__name__}: {exc}"}


def _streams(hot, pool) -> list[tuple[str, str]]:
    """(tenant, stream) of every stream hot holds, over the tenants PostgreSQL knows (warm's streams,
    the stream registry) and the default one (a tenant's first events are hot before any flush)."""
    from router.auth import DEFAULT_TENANT

    with pool.connection() as conn:
        tenants = {t for (t,) in conn.execute("SELECT tenant FROM streams UNION SELECT tenant FROM stream_registry")}
    return [(t, s) for t in sorted(tenants | {DEFAULT_TENANT}) for s in sorted(hot.streams(t))]
