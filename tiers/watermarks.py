"""Per-tier watermarks: the ingest time (epoch ms) up to which a tier's answers include every
acknowledged event of the range it owns. Ingest time is the event-log entry id's time (the time
the POST /v1/events batch was acknowledged).

    hot      now: ingest updates the hot aggregates inside the script that appends to the log,
             so every acknowledged event is visible the moment it is acknowledged. Except while
             expire_hot hands minutes over to warm (the hot floor is above b_warm): events for those
             minutes acknowledged meanwhile reach only warm, visible once b_warm moves, so hot
             is null (unknown) then.
    warm     min(flushed, folded): `flushed` is the time before which every log entry is committed
             in warm (the flush checkpoint; now when nothing is pending); when refresh still has a
             change below b_warm to fold (a late event), the watermark is instead the `flushed`
             value the last refresh read BEFORE it started (REFRESHED_KEY), since that refresh folded
             everything committed before it. "Folded" means: into rollup_1m everywhere and into
             every rollup of warm's own range; the 1h/1d buckets of hot-owned time wait for
             expire_hot (tiers/warm_postgres.py, deferral), which folds them before b_warm passes
             them, so warm's part of an answer never reads one.
    cold,    the time their content was last changed: when the boundary above them (b_cold,
    archive  b_archive) reached its current value (catalog_history). Events older than the seal
             are refused, so nothing acknowledged since can enter their range: every event they
             will ever hold was there at that time. null while the tier owns nothing.

`record_refresh(redis, warm_pool, refresh)` is how a refresh publishes its watermark; the router
reads the four with `read_watermarks` (router/freshness.py caches them).
"""
from __future__ import annotations

from typing import Any, Callable

from rollups.timeutil import MIN_MS, now_ms
from tiers.eventlog import HOT_FLOOR_KEY, EventLogs, raise_mark, read_mark

REFRESHED_KEY = "tierstore:refreshed_upto"

# When each boundary reached its current value: the first version after the last one below it.
_REACHED_SQL = """
SELECT (SELECT extract(epoch FROM h.changed_at) * 1000 FROM catalog_history h
         WHERE h.version > coalesce((SELECT max(version) FROM catalog_history WHERE b_cold < c.b_cold), 0)
         ORDER BY h.version LIMIT 1),
       (SELECT extract(epoch FROM h.changed_at) * 1000 FROM catalog_history h
         WHERE h.version > coalesce((SELECT max(version) FROM catalog_history WHERE b_archive < c.b_archive), 0)
         ORDER BY h.version LIMIT 1),
       c.b_cold, c.b_archive, c.b_warm
FROM catalog c WHERE c.id = 1
"""


def flushed_upto(redis: Any, conn: Any) -> int:
    """Epoch ms before which every event-log entry is committed in warm: the first entry after the
    flush checkpoint, or now (read before the log) when there is none. `conn`: a psycopg connection
    of the database holding flush_checkpoint. Raises the drivers' errors."""
    now = now_ms()
    logs = EventLogs(redis)  # every registered per-stream log and the old shared one
    first = logs.oldest_after(logs.read_checkpoint(conn))
    return now if first is None else min(now, first[0])


def record_refresh(redis: Any, pool: Any, refresh: Callable[[], dict]) -> dict:
    """Run `refresh()` (warm's rollups), then raise REFRESHED_KEY to what was flushed before it
    started: every event logged before that is folded in once it returns. Returns its stats with
    `watermark` (epoch ms). `pool`: a psycopg_pool of the flush checkpoint's database."""
    with pool.connection() as conn:
        mark = flushed_upto(redis, conn)
    stats = refresh()
    raise_mark(redis, REFRESHED_KEY, mark)
    return {**stats, "watermark": mark}


def warm_watermark(redis: Any, conn: Any, warm: Any, b_warm: int, timeout_s: float | None = None) -> int | None:
    """The warm watermark (module doc): `flushed_upto` when no change below b_warm awaits refresh,
    else the last refresh's mark (None before any refresh recorded one)."""
    flushed = flushed_upto(redis, conn)  # first: a flush committed after this read shows as pending below
    oldest = warm.oldest_pending_ms(timeout_s=timeout_s)
    if oldest is None or oldest >= b_warm:
        return flushed
    refreshed = read_mark(redis, REFRESHED_KEY, MIN_MS)
    return None if refreshed == MIN_MS else min(refreshed, flushed)


def read_watermarks(redis: Any, pool: Any, warm: Any, tiers: set[str], *, timeout_s: float = 2.0) -> dict:
    """{tier: epoch ms or None} for hot, warm, cold and archive (None: the tier is not configured,
    owns nothing yet, or its sources could not be read within `timeout_s`)."""
    out: dict[str, int | None] = {"hot": now_ms() if "hot" in tiers else None, "warm": None, "cold": None,
                                  "archive": None}
    with pool.connection(timeout=timeout_s) as conn:
        cold_at, archive_at, b_cold, b_archive, b_warm = conn.execute(_REACHED_SQL).fetchone()
        if read_mark(redis, HOT_FLOOR_KEY, MIN_MS) > b_warm:  # a handover to warm is under way
            out["hot"] = None
        if "warm" in tiers and warm is not None:
            out["warm"] = warm_watermark(redis, conn, warm, b_warm, timeout_s)
    if "cold" in tiers and b_cold > b_archive and cold_at is not None:
        out["cold"] = int(cold_at)
    if "archive" in tiers and b_archive > MIN_MS and archive_at is not None:
        out["archive"] = int(archive_at)
    return out
