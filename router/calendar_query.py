"""Time zones of queries and the points of calendar series (rollups/calendar.py has the calendar).

The zone of a query: its `tz` parameter, else the stream's default zone (`default_time_zone`,
the stream registry's `time_zone`), else UTC. It decides how date-only and offset-less from/to
are read (series, topk, rank) and where day and calendar buckets of a series start.
"""
from __future__ import annotations

from datetime import tzinfo
from typing import Sequence

import numpy as np
import pyarrow as pa

from rollups.calendar import time_zone


def default_time_zone(tenant: str, stream: str) -> str | None:
    """The IANA zone the stream registry gives `stream` of `tenant` (its `time_zone`), or None
    (router.streams.stream_time_zone: the router's copy of the registry, no PostgreSQL per call)."""
    from router.streams import stream_time_zone

    return stream_time_zone(tenant, stream)


def query_zone(tz: str | None, tenant: str, stream: str) -> tzinfo | None:
    """The zone of a query (None: UTC). Raises BadRequest (unknown_time_zone) for an unknown name."""
    name = tz if tz is not None else default_time_zone(tenant, stream)
    return None if name is None else time_zone(name, field="tz")


def calendar_points(partials: pa.Table, bounds: Sequence[int], agg: str) -> list[dict]:
    """One point per bucket [bounds[i], bounds[i+1]); a bucket aggregates the partial buckets
    (which the cover nested in it, rollups.cover.cover_buckets) that start within it."""
    from router.series_values import bucket_values, format_times  # vectorised, sums compensated

    edges = np.asarray(bounds, dtype=np.int64)
    which = (np.searchsorted(edges, partials["bucket"].to_numpy(), side="right") - 1 if partials.num_rows
             else None)
    values = bucket_values(partials, which, len(bounds) - 1, agg)
    return [{"t": t, "value": v} for t, v in zip(format_times(edges[:-1]), values)]
