"""The catalog of tier ownership: three boundaries b_archive <= b_cold <= b_warm and a version.

    archive: [-inf, b_archive)   cold: [b_archive, b_cold)   warm: [b_cold, b_warm)   hot: [b_warm, +inf)

Boundaries are minute-aligned and move only forward, inside the job that copied and verified the
data, in one transaction that bumps the version (see tiers/catalog_pg.py for the PostgreSQL side).
b_warm moves on the handover grid (`handover_step`): whole hours when hot keeps 12 h or more.
"""
from __future__ import annotations

from dataclasses import dataclass

from rollups.timeutil import HOUR_MS, MAX_MS, MIN_MS, MINUTE_MS, TimeRange, floor_to

TIER_ORDER = ("archive", "cold", "warm", "hot")
#: hot ages from which b_warm moves by whole hours (handover_step)
HOURLY_HANDOVER_FROM_MS = 12 * HOUR_MS


def handover_step(hot_age_ms: int) -> int:
    """The grid b_warm moves on, in ms: an hour when hot keeps at least 12 h (the default 24 h),
    else a minute (short hot ages: tests, small deployments).

    On the hour grid warm's part of any range ends on an hour, so the cover of [b_cold, b_warm)
    is warm's daily and hourly rollups alone — no minute edge at b_warm for every process to
    aggregate on its first ask (the threshold algorithm reads hourly rollups as value-sorted
    lists; a minute edge is read whole) — and hot's own part [b_warm, now), whose union the
    hot tier keeps built for ranges of days, changes once an hour instead of every run. Hot
    holds up to one hour more (hot_age .. hot_age + 1 h)."""
    return HOUR_MS if hot_age_ms >= HOURLY_HANDOVER_FROM_MS else MINUTE_MS


def b_warm_target(now_ms: int, hot_age_ms: int) -> int:
    """Where b_warm belongs at now_ms (epoch ms): now - hot_age floored to handover_step."""
    return floor_to(now_ms - hot_age_ms, handover_step(hot_age_ms))


@dataclass(frozen=True)
class CatalogSnapshot:
    version: int
    b_archive: int
    b_cold: int
    b_warm: int
    #: the catalog could not be read: the last good snapshot narrowed by the Redis marks
    #: (tiers/catalog_fallback.py); only its hot part [b_warm, +inf) may be answered from
    stale: bool = False

    def __post_init__(self) -> None:
        if not (self.b_archive <= self.b_cold <= self.b_warm):
            raise ValueError(f"catalog boundaries out of order: {self}")

    def owns(self, tier: str) -> TimeRange:
        lo = {"archive": MIN_MS, "cold": self.b_archive, "warm": self.b_cold, "hot": self.b_warm}[tier]
        hi = {"archive": self.b_archive, "cold": self.b_cold, "warm": self.b_warm, "hot": MAX_MS}[tier]
        return TimeRange(lo, max(lo, hi))

    def owner(self, ts: int) -> str:
        if ts < self.b_archive:
            return "archive"
        if ts < self.b_cold:
            return "cold"
        if ts < self.b_warm:
            return "warm"
        return "hot"

    def segments(self, rng: TimeRange) -> list[tuple[str, TimeRange]]:
        """rng split by owner, oldest first; empty parts left out. Together they tile rng."""
        out = []
        for tier in TIER_ORDER:
            part = rng.intersect(self.owns(tier))
            if part is not None:
                out.append((tier, part))
        return out
