"""The values of series points from merged bucket partials, vectorised (numpy, no Python per row).

`bucket_values` aggregates the partial buckets that fall in each point (an index per row) into the
point's value: count, sum and avg with compensated sums (rollups.exactsum: the order in which
pieces were merged does not matter), min, max; None where a point has no events. Used by fixed-step
series (router/query.py) and calendar series (router/calendar_query.py).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from rollups.exactsum import grouped_sum
from rollups.timeutil import MAX_MS, MIN_MS


def bucket_values(partials: pa.Table, idx: np.ndarray, n: int, agg: str) -> list[float | None]:
    """Per point 0..n-1, `agg` (count | sum | min | max | avg) over the rows of `partials`
    (bucket, count, sum, min, max) whose point index `idx` is that point; rows with an index
    outside [0, n) or a zero count are ignored. None for a point without events."""
    if partials.num_rows == 0 or n <= 0:
        return [None] * max(n, 0)
    idx = np.asarray(idx, np.int64)
    c = np.asarray(partials["count"].to_numpy(), np.int64)
    keep = (c > 0) & (idx >= 0) & (idx < n)
    idx, c = idx[keep], c[keep]
    counts = np.zeros(n, np.int64)
    np.add.at(counts, idx, c)
    if agg in ("sum", "avg"):
        v = np.asarray(partials["sum"].to_numpy(), np.float64)[keep]
        if "sum_lo" in partials.column_names:  # the hot tier's exact sums: their low parts too (rollups.pairsum)
            v = grouped_sum(np.concatenate([idx, idx]), np.concatenate(
                [v, np.asarray(partials["sum_lo"].to_numpy(), np.float64)[keep]]), n)
        else:
            v = grouped_sum(idx, v, n)
        if agg == "avg":
            v = v / np.maximum(counts, 1)
    elif agg in ("min", "max"):
        col = np.asarray(partials[agg].to_numpy(), np.float64)[keep]
        v = np.full(n, np.inf if agg == "min" else -np.inf)
        (np.minimum if agg == "min" else np.maximum).at(v, idx, col)
    else:
        v = counts.astype(np.float64)
    return [x if k else None for x, k in zip(v.tolist(), counts.tolist())]


def format_times(times: np.ndarray) -> list[str]:
    """rollups.timeutil.format_time of each epoch ms (clamped likewise), in one numpy call."""
    ms = np.clip(np.asarray(times, np.int64), MIN_MS, MAX_MS)
    return [t + "Z" for t in np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms").tolist()]


__all__ = ["bucket_values", "format_times"]
