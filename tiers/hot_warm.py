"""Keep the sliding-window unions of watched streams built ahead of the dashboards' reads (the
compact_hot job calls `warm_windows` after folding; tiers/hot_window.lua has the unions).

A stream is watched while its window index lists a union (a top-K or rank read one within the
unions' TTL, 15 minutes) or a read left a union it wanted unbuilt (win:wanted: the read's build
budget, window_build_budget, was too small; it read the buckets instead), and always when it has
at least `min_keys` keys (its all-time
leaderboard's; setting standing_min_keys): building a large stream's unions from scratch is one
long script (3-3.6 s at 500k keys and 4M events in 24 h, Redis busy meanwhile), so it is done
here, once, and kept up by the next runs, not by a dashboard's first ask after a quiet quarter
of an hour. For each watched stream the job reads the zset lists (hot_query.lua mode
`lists`) of "last `span`" ending at the job's minute, by count and by sum: that builds what the
fold or the hour boundary made stale (the union of the closed hours extends in place by the hour
just folded; a window whose start crossed an hour is rebuilt from its blocks' unions), so the
next refresh of the dashboard reuses it. Reads stay exact without it: every read validates each
union by its version. A stream whose read fails (a bucket lost to the safety TTL: TierUnavailable)
is skipped; the read reports it."""
from __future__ import annotations

from typing import Any

from rollups.cover import cover
from rollups.errors import TierstoreError
from rollups.timeutil import DAY_MS, G1M, TimeRange
from tiers.errors import translate

WARM_SPANS_MS = (DAY_MS,)  # "last 24 h": the dashboards' window (issue 10)


def warm_windows(hot: Any, now_ms: int, spans_ms=WARM_SPANS_MS, *, floor_ms: int | None = None,
                 min_keys: int = 0) -> dict[str, int]:
    """Build the unions of the windows `spans_ms` (ms) ending at floor_minute(now_ms) for every
    watched stream of `hot` (tiers.hot.RedisHotTier), each window cut at `floor_ms` (b_warm: the
    router reads only hot's part), and with `floor_ms` also [floor_ms, end): hot's part of every range
    of days (7 d, 30 d, ...); `min_keys` > 0: also every stream with at least that many keys.
    Returns {"streams": watched streams, "warmed": windows read, "failed": reads that raised}.
    Never raises for one stream's read."""
    from tiers.hot import _TENANTS_KEY, UNBOUNDED, _decoded, _prefix

    end = G1M.floor(now_ms)
    stats = {"streams": 0, "warmed": 0, "failed": 0}
    if not getattr(hot.settings, "window_unions", True):
        return stats
    client = hot._client
    for tenant in sorted(_decoded(client.smembers(_TENANTS_KEY))):
        for stream in hot._registered_streams(tenant):
            prefix = _prefix(tenant, stream)
            if not client.zcard(prefix + "win:index") and not client.exists(prefix + "win:wanted") and not (
                    min_keys > 0 and client.zcard(prefix + "all:count") >= min_keys):
                continue
            stats["streams"] += 1
            starts = {max(end - span, floor_ms) if floor_ms is not None else end - span for span in spans_ms}
            if floor_ms is not None:
                starts.add(floor_ms)  # hot's whole part: what every range reaching past b_warm reads of hot
            for start in sorted(starts):
                if start >= end:
                    continue
                pieces = cover(TimeRange(start, end), hot.granularities)
                for by in ("count", "sum"):
                    try:
                        with translate("hot"):
                            hot._query(tenant, stream, pieces, "lists", by, build=UNBOUNDED)
                        stats["warmed"] += 1
                    except TierstoreError:
                        stats["failed"] += 1
    return stats
