"""Partial aggregates (count, sum, min, max) and their merge.

A partial table is a pyarrow Table with one group column — `key` (string) or `bucket` (int64 epoch
ms) — and `count` (int64), `sum`, `min`, `max` (float64). Tiers return them; the router merges
them. pyarrow's group_by is ~5x faster than a Python dict loop at a million rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rollups.exactsum import grouped_sum

AGGS = ("count", "sum", "min", "max", "avg")
AGG_COLUMNS = ("count", "sum", "min", "max")


def partial_schema(group: str) -> pa.Schema:
    gtype = pa.string() if group == "key" else pa.int64()
    return pa.schema([(group, gtype), ("count", pa.int64()), ("sum", pa.float64()),
                      ("min", pa.float64()), ("max", pa.float64())])


def empty_partials(group: str) -> pa.Table:
    return partial_schema(group).empty_table()


def merge_partials(tables: Iterable[pa.Table], group: str, *, compensated: bool = False) -> pa.Table:
    """Merge partial tables on `group`: counts and sums add, min of mins, max of maxes.
    compensated: sums always added with Neumaier's compensation (reports: within a couple of ulps
    of the exact sum); else only when a sum is negative. A table may carry its sums' low parts in a
    `sum_lo` column (rollups.pairsum: the hot tier's exact sums): then sums add as pairs and the
    result keeps `sum_lo`, so a later merge (a series point over several buckets) stays exact."""
    tables = [t for t in tables if t.num_rows]
    if any("sum_lo" in t.column_names for t in tables):
        return _merge_pairs(tables, group)
    tables = [t.select([group, *AGG_COLUMNS]).cast(partial_schema(group)) for t in tables]
    if not tables:
        return empty_partials(group)
    if len(tables) == 1 and _unique(tables[0], group):
        return tables[0]
    t = pa.concat_tables(tables)
    if compensated or (pc.min(t["sum"]).as_py() or 0.0) < 0:
        return _merge_compensated(t, group)
    # non-negative terms: the plain sum is within (pieces x 1e-16) relative, far inside the
    # ordering tolerance (rollups.topk.REL_TOL), and no cancellation can lose a term
    out = t.group_by(group, use_threads=False).aggregate(
        [("count", "sum"), ("sum", "sum"), ("min", "min"), ("max", "max")])
    out = out.rename_columns({"count_sum": "count", "sum_sum": "sum", "min_min": "min", "max_max": "max"})
    return out.select([group, *AGG_COLUMNS]).cast(partial_schema(group))


def _merge_compensated(t: pa.Table, group: str) -> pa.Table:
    """merge_partials with signed sums: compensated (rollups.exactsum), so 1e16 + 1 - 1e16 = 1."""
    codes = pc.dictionary_encode(t[group]).combine_chunks()
    ids = codes.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    out = pa.table({"_g": codes.indices, "count": t["count"], "min": t["min"], "max": t["max"]}).group_by(
        "_g", use_threads=False).aggregate([("count", "sum"), ("min", "min"), ("max", "max")])
    g = out["_g"].to_numpy()
    sums = grouped_sum(ids, t["sum"].to_numpy(), len(codes.dictionary))[g]
    return pa.table({group: pc.take(codes.dictionary, out["_g"]), "count": out["count_sum"], "sum": pa.array(sums),
                     "min": out["min_min"], "max": out["max_max"]}).cast(partial_schema(group))


def _merge_pairs(tables: list[pa.Table], group: str) -> pa.Table:
    """merge_partials of tables some of which carry `sum_lo`: sums (and low parts) added as pairs."""
    from rollups.pairsum import grouped_pair_sum

    lows = [t["sum_lo"].to_numpy().astype(np.float64) if "sum_lo" in t.column_names else np.zeros(t.num_rows)
            for t in tables]
    t = pa.concat_tables([x.select([group, *AGG_COLUMNS]).cast(partial_schema(group)) for x in tables])
    codes = pc.dictionary_encode(t[group]).combine_chunks()
    ids = codes.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    out = pa.table({"_g": codes.indices, "count": t["count"], "min": t["min"], "max": t["max"]}).group_by(
        "_g", use_threads=False).aggregate([("count", "sum"), ("min", "min"), ("max", "max")])
    g = out["_g"].to_numpy()
    hi, lo = grouped_pair_sum(np.concatenate([ids, ids]), np.concatenate([t["sum"].to_numpy(), *lows]),
                              len(codes.dictionary))
    merged = pa.table({group: pc.take(codes.dictionary, out["_g"]), "count": out["count_sum"], "sum": pa.array(hi[g]),
                       "min": out["min_min"], "max": out["max_max"]}).cast(partial_schema(group))
    return merged.append_column("sum_lo", pa.array(lo[g]))


def _unique(t: pa.Table, group: str) -> bool:
    return pc.count_distinct(t[group]).as_py() == t.num_rows


def value_column(t: pa.Table, agg: str) -> pa.ChunkedArray:
    """The requested aggregate of a merged partial table (avg = sum / count)."""
    if agg == "avg":
        return pc.divide(t["sum"], pc.cast(t["count"], pa.float64()))
    if agg == "count":
        return pc.cast(t["count"], pa.float64())
    return t[agg]


@dataclass
class Agg:
    """A single partial aggregate; the reference (and the oracle's) implementation of the merge."""

    count: int = 0
    sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def add(self, value: float) -> "Agg":
        self.count += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        return self

    def merge(self, other: "Agg") -> "Agg":
        return Agg(self.count + other.count, self.sum + other.sum, min(self.min, other.min), max(self.max, other.max))

    def value(self, agg: str) -> float | None:
        if self.count == 0:
            return None
        if agg == "avg":
            return self.sum / self.count
        return float(getattr(self, agg))
