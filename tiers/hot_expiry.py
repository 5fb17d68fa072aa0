"""Expiry of the hot tier: the catalog decides what hot deletes, the clock only guards memory.

Hot data leaves Redis through expire_hot alone (scheduler/steps.py `_trim_hot`): it deletes the
buckets that every catalog snapshot a query may still hold gives to warm, once the grace period
has passed (shared/DESIGN.md). A Redis TTL remains only as a far safety net against jobs that
never come back: every key of a bucket (its count, sum, min and max zsets, the folded mark of an
hour or day) expires at one same instant, max(bucket end, its last write) + hot_safety_ttl, set
again at every write that touches the bucket. So nothing the catalog gives hot can expire while
expire_hot runs at least every hot_safety_ttl - hot_age; `expiry_risk` raises the alarm long
before that (tierstore_hot_expiry_at_risk, and a log warning).

Should the safety TTL fire anyway, the loss is reported, never answered as empty:
- The index of each (stream, granularity) (`<g>:buckets`) and its totals (`<g>:total:<agg>`) never
  expire; only expire_hot's trim (hot_delete.lua) removes their entries, with the buckets' keys.
- A bucket the index lists whose marker is gone (a minute's count zset; an hour's or day's folded
  mark) was lost. The marker proves the bucket intact: all its keys share one expiry, and a script
  sees keys expire against the time it started, so within one script they exist or vanish together.
- A write into a lost bucket recreates its keys with the new events only: it first records the
  bucket in the stream's `<g>:lost` zset (member = score = bucket start), which only the trim clears.
- Reads of keys (top-K, rank, per-key aggregates, one key's series) meeting a lost bucket raise
  TierUnavailable("hot") naming it: 503, or with allow_partial=1 the hot range in meta.missing.
  Series without a key read the totals, which never expire: they stay exact.
- Compaction never folds past a lost bucket, so reads of its hour or day still meet it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from rollups.errors import TierUnavailable
from rollups.timeutil import G1D, G1H, G1M, format_time

log = logging.getLogger("tierstore.hot")

_WIDTH = {g.name: g.ms for g in (G1M, G1H, G1D)}
_MAX_LISTED = 10


@dataclass(frozen=True)
class ExpiryRisk:
    """How close the safety TTL is to data the catalog gives hot (all in ms)."""

    owned_age_ms: int  # now - b_warm: the age of the oldest instant hot owns
    margin_ms: int     # b_warm + safety TTL - now: how long before the TTL may fire on hot's data
    at_risk: bool      # expire_hot has stalled for over half of safety TTL - hot age


def expiry_risk(b_warm: int, now: int, hot_age_ms: int, safety_ttl_ms: int) -> ExpiryRisk:
    """The risk that the safety TTL deletes hot data the catalog still gives hot.

    A bucket hot owns ends after b_warm, so its TTL fires at b_warm + safety_ttl_ms at the earliest.
    Normally b_warm trails now by hot_age_ms; the alarm sounds once less than half of the headroom
    (safety_ttl_ms - hot_age_ms) is left. Times in epoch ms.
    """
    margin = b_warm + safety_ttl_ms - now
    return ExpiryRisk(now - b_warm, margin, margin < (safety_ttl_ms - hot_age_ms) / 2)


def check_safety_ttl(safety_ttl_ms: int, hot_age_ms: int, grace_ms: int) -> str | None:
    """A sentence naming the problem when the safety TTL could fire on data hot owns in normal
    operation (it must exceed hot_age + grace_period), else None."""
    if safety_ttl_ms > hot_age_ms + grace_ms:
        return None
    return (f"TIERSTORE_HOT_SAFETY_TTL ({safety_ttl_ms} ms) must be longer than hot_age + grace_period "
            f"({hot_age_ms + grace_ms} ms): the safety TTL would expire data the hot tier still owns.")


def lost_error(tenant: str, stream: str, lost: list) -> TierUnavailable:
    """The error for reads that met lost buckets; `lost` is hot_query.lua's flat list of
    (granularity, start) as bytes."""
    buckets = [(g.decode(), int(start)) for g, start in zip(lost[::2], lost[1::2])]
    ranges = [{"tier": "hot", "granularity": g, "from": format_time(s), "to": format_time(s + _WIDTH[g])}
              for g, s in buckets]
    listed = ", ".join(f"{r['granularity']} {r['from']}" for r in ranges[:_MAX_LISTED])
    more = f" and {len(ranges) - _MAX_LISTED} more" if len(ranges) > _MAX_LISTED else ""
    log.error("hot tier: tenant %r stream %r lost %d bucket(s) to the safety TTL (expire_hot has not run "
              "for too long): %s%s", tenant, stream, len(ranges), listed, more)
    return TierUnavailable("hot", f"The hot tier lost {len(ranges)} bucket(s) of stream {stream!r} to its safety "
                                  f"TTL ({listed}{more}): expire_hot has not run for too long.",
                           ranges[:_MAX_LISTED])
