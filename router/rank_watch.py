"""Which ranges the rank path (router/rank_pieces.py: rank, and top-K's merge fallback) was asked
recently, so the scheduler can read their closed pieces into the shared results cache ahead of the
next first ask (scheduler/rank_prefill.py).

A sorted set `WATCH_KEY` in the results cache's Redis: member JSON
[tenant, stream, by, "last", span_ms] for a range ending within LAST_SLACK_MS of now (a
dashboard's "last N", re-planned at the prefill's minute), or [tenant, stream, by, "fixed",
start, end] (epoch ms); score the last ask (epoch ms). Each process writes a member at most once
a minute. Only a hint: the entries it leads to are keyed by data version like any other.
Never raises (a Redis failure only skips the hint).
"""
from __future__ import annotations

import json
import threading
import time

from rollups.timeutil import now_ms

WATCH_KEY = "tierstore:rank_watch"
#: a range is watched this long after its last ask (ms)
WATCH_MS = 15 * 60_000
#: a range ending this close to now is a "last N" (ms)
LAST_SLACK_MS = 2 * 60_000
_AGAIN_S = 60.0
_recent: dict[str, float] = {}
_lock = threading.Lock()


def member(plan, by: str, now: int) -> str:
    """The registry member of a plan's range (module doc)."""
    spec, rng = plan.spec, plan.spec.range
    if rng.end >= now - LAST_SLACK_MS:
        return json.dumps([spec.tenant, spec.stream, by, "last", rng.end - rng.start])
    return json.dumps([spec.tenant, spec.stream, by, "fixed", rng.start, rng.end])


def watch(planner, plan, by: str) -> None:
    """Record that `plan`'s range was asked by `by` (no-op without the results cache's Redis)."""
    cache = getattr(planner, "cache", None)
    if cache is None or getattr(cache, "_redis_url", None) is None:
        return
    now = now_ms()
    name = member(plan, by, now)
    t = time.monotonic()
    with _lock:
        if _recent.get(name, -_AGAIN_S) > t - _AGAIN_S:
            return
        if len(_recent) > 4096:
            _recent.clear()
        _recent[name] = t
    try:
        if cache._redis_ok():
            cache._redis.zadd(WATCH_KEY, {name: now})
    except Exception:  # a hint only
        pass


def watched(client, now: int, limit: int) -> list[list]:
    """The members asked within WATCH_MS of `now`, most recent first (older ones removed)."""
    client.zremrangebyscore(WATCH_KEY, "-inf", now - WATCH_MS)
    out = []
    for raw in client.zrevrange(WATCH_KEY, 0, limit - 1):
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return out
