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
Without the results cache's Redis (results_cache_ttl 0) nothing is done.

    prefill(settings, resources) -> {"watched", "read", "cached", "failed"}; never raises.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
from typing import Any

from rollups.timeutil import MINUTE_MS, TimeRange, floor_to, now_ms

log = logging.getLogger("tierstore.scheduler.rank_prefill")
TIERS = ("archive", "cold", "warm", "hot")
#: at most this many watched ranges per run (the most recently asked)
MAX_RANGES = 32


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
                    _, runs, hits = rank_pieces.read_parts(planner, plan, by, names)
                    stats["read"] += len(runs) - hits
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
