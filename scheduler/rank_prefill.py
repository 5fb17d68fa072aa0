"""Read the closed pieces of the ranges the rank path was asked recently (router/rank_watch.py)
into the shared results cache, right after a job changed pieces (refresh, compact_hot,
export_cold, archive), so a dashboard's first rank or top-K fallback on any router worker or
replica takes them from Redis instead of reading every piece.

Exact by construction: the pieces are read by router/rank_pieces.read_parts itself, which reads
every piece's data version BEFORE its data and stores the columns under a key holding that
version (and the piece's range and the tier's owned range); a late event, an import, a flush,
refresh, export or archive after the prefill changes the version, so the prefilled entry is
simply never looked up again. Pieces already in Redis under their current version are not read
again. A piece read as key strings (hot) is stored with its shared ids, and the stream's key
dictionary is stored too when Redis lacks it (router/key_dictionary.py).

Standing ranges: besides the watched ones, "last 24 h" (STANDING_SPANS_MS) by count and by sum of
every hot stream whose all-time leaderboard holds at least `standing_min_keys` keys (smaller ones
are read fast enough on the first ask), the largest first, up to MAX_RANGES in all, so even the very first rank of a dashboard's day on a fresh replica finds its
closed hours in Redis: at 500k keys and 4M hot events that first ask read and mapped 23 hours
(1.15M members) in 2.5-3.4 s. A standing range costs the job its new closed hours only (the
others are cached under unchanged versions).
Without the results cache's Redis (results_cache_ttl 0) nothing is done.

    prefill(settings, resources) -> {"watched", "read", "cached", "failed"}; never raises.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import logging
from typing import Any

from rollups.timeutil import DAY_MS, MINUTE_MS, TimeRange, floor_to, now_ms

log = logging.getLogger("tierstore.scheduler.rank_prefill")
TIERS = ("archive", "cold", "warm", "hot")
#: at most this many ranges per run (the most recently asked first, then the standing ones)
MAX_RANGES = 32
#: the standing ranges' spans (ms): "last N" of every hot stream, prefilled even before any ask
STANDING_SPANS_MS = (DAY_MS,)


def prefill(settings, resources, now: int | None = None) -> dict[str, Any]:
    """Prefill every watched range's closed pieces (module doc); the counts of this run."""
    from router import key_dictionary, rank_pieces, rank_watch
    from router.cache import ResultsCache
    from router.planner import Planner, QuerySpec

    stats = {"watched": 0, "read": 0, "cached": 0, "failed": 0}
    cache = ResultsCache.from_settings(settings)
    try:
        if cache._redis_url is None or not cache._redis_ok():
            return stats
        now = now_ms() if now is None else now
        try:
            entries = rank_watch.watched(cache._redis, now, MAX_RANGES)
        except Exception as exc:
            log.warning("rank prefill: the watch list could not be read (%s)", exc)
            return stats
        entries += standing(resources.get("hot"), entries, MAX_RANGES - len(entries),
                            getattr(settings, "standing_min_keys", 0))
        tiers = {t: resources[t] for t in TIERS if resources.get(t) is not None}
        dictionaries: set[int] = set()
        with cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="rank-prefill") as pool:
            planner = Planner(tiers, resources["catalog"], pool=pool, cache=cache,
                              timeout_ms=getattr(settings, "query_timeout", 60_000))
            for entry in entries:
                stats["watched"] += 1
                try:
                    tenant, stream, by, kind, *bounds = entry
                    if kind == "last":
                        end = floor_to(now, MINUTE_MS)
                        rng = TimeRange(end - int(bounds[0]), end)
                    else:
                        rng = TimeRange(int(bounds[0]), int(bounds[1]))
                    plan = planner.plan(QuerySpec(tenant, stream, rng, "key"), allow_partial=False)
                    if not rank_pieces._usable(planner, plan, by):
                        continue
                    names = rank_pieces._Names(planner, plan.spec)  # hot's strings stored with their ids
                    parts, _, hits = rank_pieces.read_parts(planner, plan, by, names)
                    stats["read"] += len(parts) - hits  # parts: one per read call and per cached piece
                    stats["cached"] += hits
                    warm = tiers["warm"]
                    sid = warm.keys.stream_id(tenant, stream)
                    if sid is not None and sid not in dictionaries:
                        dictionaries.add(sid)
                        if key_dictionary._get_shared(cache, warm, sid) is None:
                            key_dictionary.prefill(cache, warm, sid)
                except Exception as exc:  # one range's failure never stops the job
                    stats["failed"] += 1
                    log.warning("rank prefill of %s failed: %s", entry, exc)
    finally:
        cache.close()
    return stats


def standing(hot, watched: list[list], limit: int, min_keys: int) -> list[list]:
    """The standing ranges (module doc) not already among `watched`, at most `limit`: entries
    [tenant, stream, by, "last", span_ms] of the hot streams whose all-time leaderboard holds at
    least `min_keys` (> 0) keys, the largest first. [] without a hot tier, with min_keys 0, or when
    Redis fails (a hint only)."""
    from tiers.hot import _TENANTS_KEY, _decoded, _prefix

    if hot is None or limit <= 0 or min_keys <= 0 or not hasattr(hot, "_registered_streams"):
        return []
    try:
        client = hot._client
        sized = []
        for tenant in sorted(_decoded(client.smembers(_TENANTS_KEY))):
            for stream in hot._registered_streams(tenant):
                prefix = _prefix(tenant, stream)
                members = client.zcard(prefix + "all:count")  # its all-time leaderboard's keys
                if members >= min_keys:
                    sized.append((-members, tenant, stream))
    except Exception as exc:
        log.warning("rank prefill: the hot streams could not be listed (%s)", exc)
        return []
    seen = {json.dumps(e) for e in watched}
    out = []
    for _, tenant, stream in sorted(sized):
        for span in STANDING_SPANS_MS:
            for by in ("count", "sum"):
                entry = [tenant, stream, by, "last", span]
                if json.dumps(entry) not in seen and len(out) < limit:
                    out.append(entry)
    return out
