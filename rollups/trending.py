"""Trending: keys ranked by an exponentially decayed score, from rollups (pure domain).

The exact score of a key at time `as_of` (epoch ms) is

    score(key) = sum over its events e with e.ts < as_of of  e.value * 2^(-(as_of - e.ts) / half_life)

The router computes it from rollup partials instead of raw events: the window is cut into
*slices* of `slice_ms` (epoch-aligned, minute- or hour-aligned), every event of a slice is weighted
at the slice's start, so a slice contributes weight(slice start) * partial sum(slice). An event at
t in the slice [a, a + slice_ms) has exact weight 2^(-(as_of - t)/h) and is counted with
2^(-(as_of - a)/h), smaller by the factor 2^(-(t - a)/h) in (2^(-slice_ms/h), 1]. So for
non-negative values

    exact / (1 + max_relative_error) <= score <= exact,    max_relative_error = 2^(slice_ms/h) - 1

(the reported score never over-estimates; it under-estimates by at most that relative error).
Events older than where the weight falls below `cutoff` (1e-9 by default) are not read: they
change any score by less than cutoff * the sum of their |values|.

`slice_ms` is chosen from the half-life and the error budget: the largest width with
2^(slice/h) - 1 <= budget among the divisors of an hour in minutes (1, 2, 3, 4, 5, 6, 10, 12, 15,
20, 30), of a day in hours (1, 2, 3, 4, 6, 8, 12) and whole days, and at least one minute (so a
half-life under ~15 minutes has an error above a 5 % budget; meta says so). Epoch-aligned, such a
slice never straddles an hour (below an hour) or a day (below a day): each tier covers it with one
piece of one granularity (no raw or minute edges in the Parquet tiers, which read them per file).
The number of slices is about log2(1/cutoff) / log2(1 + budget) whatever the half-life (up to
twice that where the divisors round the width down).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, TimeRange, ceil_to, floor_to

CUTOFF = 1e-9


#: slice widths below a day: the divisors of an hour (minutes) and of a day (hours), so every slice
#: lies inside one hour or one day and is covered by one piece of one granularity
_MINUTE_WIDTHS = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30)
_HOUR_WIDTHS = (1, 2, 3, 4, 6, 8, 12)


def slice_ms(half_life_ms: int, max_error: float) -> int:
    """The slice width (ms) for this half-life and relative error budget (see the module)."""
    target = half_life_ms * math.log2(1.0 + max_error)
    if target >= DAY_MS:
        return int(target // DAY_MS) * DAY_MS
    if target >= HOUR_MS:
        return max(h for h in _HOUR_WIDTHS if h * HOUR_MS <= target) * HOUR_MS
    return max([m for m in _MINUTE_WIDTHS if m * MINUTE_MS <= target] or [1]) * MINUTE_MS


def relative_error(half_life_ms: int, slice_width: int) -> float:
    """The largest relative under-estimate of a score whose slices are `slice_width` wide."""
    return 2.0 ** (slice_width / half_life_ms) - 1.0


def reference_time(as_of: int) -> int:
    """The decay reference: as_of rounded up to the minute (events at or after it are not counted)."""
    return ceil_to(as_of, MINUTE_MS)


def window(now: int, half_life_ms: int, slice_width: int, cutoff: float = CUTOFF) -> TimeRange:
    """[start, now): from the slice holding the age where the weight falls below `cutoff`."""
    horizon = math.ceil(half_life_ms * math.log2(1.0 / cutoff))
    return TimeRange(floor_to(now - horizon, slice_width), now)


def slices(rng: TimeRange, slice_width: int) -> list[TimeRange]:
    """The epoch-aligned slices of `slice_width` intersected with rng, in time order."""
    out = []
    t = floor_to(rng.start, slice_width)
    while t < rng.end:
        out.append(TimeRange(max(t, rng.start), min(t + slice_width, rng.end)))
        t += slice_width
    return out


def weight(now: int, start: int, half_life_ms: int, slice_width: int) -> float:
    """The weight of everything in the slice holding `start`: 2^(-(now - slice start)/h)."""
    return 2.0 ** (-(now - floor_to(start, slice_width)) / half_life_ms)


def exact_score(events: Sequence[tuple[int, float]], now: int, half_life_ms: int) -> float:
    """The reference: sum of value * 2^(-(now - ts)/h) over (ts, value) with ts < now."""
    return sum(v * 2.0 ** (-(now - ts) / half_life_ms) for ts, v in events if ts < now)


def ranked(scores: Mapping[str, float]) -> list[str]:
    """Keys by score descending, then key ascending."""
    return sorted(scores, key=lambda key: (-scores[key], key))


def beats(a: float, b: float, min_change: float) -> bool:
    """Whether score a overtakes score b: a exceeds b by more than min_change relative to |b|."""
    return a > b + min_change * abs(b)


def stable_order(scores: Mapping[str, float], previous: Sequence[str], k: int, min_change: float) -> list[str]:
    """The top k keys with hysteresis: the previous order (its keys that still score) is kept and
    every other key follows by score; then each key, in that order, moves ahead of the key before it
    only while it `beats` it by min_change. So two keys change their relative order only when one
    exceeds the other by the margin. Without a previous order (or min_change 0): by score."""
    by_score = ranked(scores)
    if min_change <= 0 or not previous:
        return by_score[:k]
    seen: set[str] = set()
    kept = []
    for key in previous:
        if key in scores and key not in seen:
            seen.add(key)
            kept.append(key)
    newcomers = [key for key in by_score if key not in seen][:k]
    out: list[str] = []
    for key in kept + newcomers:
        i = len(out)
        while i > 0 and beats(scores[key], scores[out[i - 1]], min_change):
            i -= 1
        out.insert(i, key)
    return out[:k]
