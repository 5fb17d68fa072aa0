"""The catalog of tier ownership: three boundaries b_archive <= b_cold <= b_warm and a version.

    archive: [-inf, b_archive)   cold: [b_archive, b_cold)   warm: [b_cold, b_warm)   hot: [b_warm, +inf)

Boundaries are minute-aligned and move only forward, inside the job that copied and verified the
data, in one transaction that bumps the version (see tiers/catalog_pg.py for the PostgreSQL side).
"""
from __future__ import annotations

from dataclasses import dataclass

from rollups.timeutil import MAX_MS, MIN_MS, TimeRange

TIER_ORDER = ("archive", "cold", "warm", "hot")


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
