"""The guarded clock: an `as_of` (epoch ms) ahead of the real clock is refused unless allowed.

Jobs run with as_of behave as if the clock read as_of (retention deletes, boundaries move), and a
query's as_of (trending) reads the data as of then; neither may move ahead of now + clock_skew
unless the setting allow_clock_override is true (tests and demos). API.md, Operations.
"""
from __future__ import annotations

from typing import Any, Mapping

from rollups.errors import ClockOverrideDisabled
from rollups.timeutil import format_time, now_ms


def check_clock(as_of: int, settings: Any, now: int | None = None, *, what: str = "a job runs") -> None:
    """Refuse `as_of` (epoch ms) later than now + settings.clock_skew (ms) unless
    settings.allow_clock_override is true. `what` completes the message ("a job runs", "trending
    reads"). Raises ClockOverrideDisabled (422 clock_override_disabled)."""
    get = settings.get if isinstance(settings, Mapping) else lambda name, default: getattr(settings, name, default)
    if get("allow_clock_override", False):
        return
    now = now_ms() if now is None else now
    skew = int(get("clock_skew", 0))
    if as_of > now + skew:
        raise ClockOverrideDisabled(
            f"as_of {format_time(as_of)} is later than now + clock_skew ({format_time(now + skew)}); {what} ahead "
            "of the real clock only when the setting allow_clock_override is true (tests and demos).",
            [{"field": "as_of", "problem": f"later than now + {skew // 1000} s"}])
