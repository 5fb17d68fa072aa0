"""A day's derived tables in one numpy pass, for export_cold and the importer (issue 11).

tiers.parquet_layout.write_day derives from one day's raw events (RAW_SCHEMA, sorted by (ts,
key_id)) its hourly and daily rollups (Arrow group-bys, then compensated sums), the sketch file's
per-key partials (a dictionary encoding of the key texts, sums_by again) and the hourly stream
totals (math.fsum per hour). When every value of the day is exactly summable
(rollups.exactsum.exactly_summable: every partial sum exact in float64, in any order: integers,
halves, ...), finite and no value is -0.0, every sum equals the plain sum of its terms in any order
and every min/max is unambiguous, so `day_parts` computes the same tables bit for bit from the
key ranks with one argsort and a few reduceats. Otherwise it returns None and the caller takes the
general path.

    day_parts(raw) -> DayParts(hourly, daily, partials, totals) | None
        hourly, daily   ROLLUP_SCHEMA, sorted (bucket, key_id) (= parquet_layout.rollup_raw)
        partials        (key, count, sum) in the keys' order of first appearance
                        (= sketch_files.key_partials)
        totals          parquet_totals.SCHEMA, one row per non-empty hour (= parquet_totals.day_totals)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rollups.exactsum import exactly_summable
from rollups.timeutil import DAY_MS, HOUR_MS


@dataclass(frozen=True)
class DayParts:
    hourly: pa.Table
    daily: pa.Table
    partials: pa.Table
    totals: pa.Table


def fast_eligible(values: np.ndarray) -> bool:
    """True when every grouped sum of `values` is order-independent and min/max unambiguous."""
    if len(values) == 0 or not exactly_summable(values):  # exactly_summable refuses inf and NaN
        return False
    return not np.any((values == 0) & np.signbit(values))


def day_parts(raw: pa.Table) -> DayParts | None:
    """The day's hourly/daily rollups, sketch partials and hourly totals (see the module doc), or
    None when the values need the general path. `raw`: one UTC day's events in file order."""
    from tiers.parquet_layout import ROLLUP_SCHEMA
    from tiers.parquet_totals import SCHEMA as TOTALS_SCHEMA

    values = np.asarray(raw["value"].to_numpy(), np.float64)
    if not fast_eligible(values):
        return None
    ts = np.asarray(raw["ts"].to_numpy(), np.int64)
    kid = np.asarray(raw["key_id"].to_numpy(), np.int64)
    n = len(ts)
    day = int(ts[0] - np.mod(ts[0], DAY_MS))
    if int(ts.min()) < day or int(ts.max()) >= day + DAY_MS:
        return None
    uk, rank = np.unique(kid, return_inverse=True)
    rank = rank.reshape(-1).astype(np.int64)
    nk = len(uk)
    hour = (ts - day) // HOUR_MS

    # hourly: groups of (hour, key rank), ascending = (bucket, key_id)
    code = hour * nk + rank
    order = np.argsort(code)  # not stable: every reduction below is order-independent (exact sums, min, max)
    sc, sv = code[order], values[order]
    starts = np.flatnonzero(np.concatenate([[True], sc[1:] != sc[:-1]]))
    counts = np.diff(np.append(starts, n))
    g = sc[starts]
    hourly = pa.table({"bucket": pa.array(day + (g // nk) * HOUR_MS, pa.int64()),
                       "key_id": pa.array(uk[g % nk], pa.int64()),
                       "count": pa.array(counts, pa.int64()),
                       "sum": pa.array(np.add.reduceat(sv, starts) + 0.0, pa.float64()),
                       "min": pa.array(np.minimum.reduceat(sv, starts), pa.float64()),
                       "max": pa.array(np.maximum.reduceat(sv, starts), pa.float64()),
                       "sum_lo": pa.array(np.zeros(len(starts)))}, schema=ROLLUP_SCHEMA)

    # daily: one group per key rank, from the hourly groups (exact sums: any grouping is the same)
    hk = g % nk
    dcount = np.bincount(hk, weights=counts, minlength=nk).astype(np.int64)
    dsum = np.bincount(hk, weights=hourly["sum"].to_numpy(), minlength=nk) + 0.0
    dmin = np.full(nk, np.inf)
    np.minimum.at(dmin, hk, hourly["min"].to_numpy())
    dmax = np.full(nk, -np.inf)
    np.maximum.at(dmax, hk, hourly["max"].to_numpy())
    daily = pa.table({"bucket": pa.array(np.full(nk, day, np.int64)), "key_id": pa.array(uk, pa.int64()),
                      "count": pa.array(dcount), "sum": pa.array(dsum), "min": pa.array(dmin),
                      "max": pa.array(dmax), "sum_lo": pa.array(np.zeros(nk))}, schema=ROLLUP_SCHEMA)

    # sketch partials: keys in order of first appearance in the raw rows
    first = np.full(nk, n, np.int64)
    np.minimum.at(first, rank, np.arange(n, dtype=np.int64))
    by_first = np.argsort(first)  # distinct first positions: one order
    keys = raw["key"].take(pa.array(first[by_first]))
    partials = pa.table({"key": keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys,
                         "count": pa.array(dcount[by_first], pa.int64()),
                         "sum": pa.array(dsum[by_first], pa.float64())})

    # hourly stream totals: one row per non-empty hour
    hk_hour = g // nk
    hours = np.unique(hk_hour)
    hcount = np.bincount(hk_hour, weights=counts, minlength=24).astype(np.int64)[hours]
    hsum = np.bincount(hk_hour, weights=hourly["sum"].to_numpy(), minlength=24)[hours] + 0.0
    hmin = np.full(24, np.inf)
    np.minimum.at(hmin, hk_hour, hourly["min"].to_numpy())
    hmax = np.full(24, -np.inf)
    np.maximum.at(hmax, hk_hour, hourly["max"].to_numpy())
    totals = pa.table({"bucket": pa.array(day + hours * HOUR_MS, pa.int64()), "count": pa.array(hcount),
                       "sum": pa.array(hsum), "min": pa.array(hmin[hours]), "max": pa.array(hmax[hours]),
                       "sum_lo": pa.array(np.zeros(len(hours)))},
                      schema=TOTALS_SCHEMA)
    return DayParts(hourly, daily, partials, totals)


def _plain(values: np.ndarray) -> bool:
    """No NaN and no -0.0: min, max and sort orders are unambiguous."""
    return not (np.any(np.isnan(values)) or np.any((values == 0) & np.signbit(values)))


def merge_exact(tables: list[pa.Table], bucket: int) -> pa.Table | None:
    """parquet_layout.merge_rollups (one period's partials from its days' non-empty rollups, by
    key_id) in numpy, bit for bit, when the partial sums are exactly summable and no float column
    holds NaN or -0.0; else None."""
    from tiers.parquet_layout import ROLLUP_SCHEMA

    cols = {c: np.concatenate([np.asarray(t[c].to_numpy(), np.float64 if c in ("sum", "min", "max") else np.int64)
                               for t in tables]) for c in ("key_id", "count", "sum", "min", "max")}
    if any(np.any(np.asarray(t["sum_lo"].to_numpy(), np.float64) != 0) for t in tables):
        return None
    if not exactly_summable(cols["sum"]) or not all(_plain(cols[c]) for c in ("sum", "min", "max")):
        return None
    if len(cols["count"]) and int(np.abs(cols["count"]).max()) * len(cols["count"]) >= 2**53:
        return None  # counts summed as float64 below: exact only under 2**53
    uk, at = np.unique(cols["key_id"], return_inverse=True)
    at = at.reshape(-1)
    nk = len(uk)
    lo, hi = np.full(nk, np.inf), np.full(nk, -np.inf)
    np.minimum.at(lo, at, cols["min"])
    np.maximum.at(hi, at, cols["max"])
    return pa.table({"bucket": pa.array(np.full(nk, bucket, np.int64)), "key_id": pa.array(uk, pa.int64()),
                     "count": pa.array(np.bincount(at, weights=cols["count"], minlength=nk).astype(np.int64)),
                     "sum": pa.array(np.bincount(at, weights=cols["sum"], minlength=nk) + 0.0),
                     "min": pa.array(lo), "max": pa.array(hi), "sum_lo": pa.array(np.zeros(nk))}, schema=ROLLUP_SCHEMA)


def topk_order(rollup: pa.Table, by: str) -> pa.Table | None:
    """parquet_layout.topk_copy ((key_id, by) by `by` desc, key_id asc) by one numpy lexsort,
    the same table, when `by` holds no NaN and no -0.0 (else None)."""
    kid = np.asarray(rollup["key_id"].to_numpy(), np.int64)
    m = rollup[by].to_numpy()
    if m.dtype.kind == "f" and not _plain(m):
        return None
    if m.dtype.kind == "i" and len(m) and int(m.min()) == np.iinfo(np.int64).min:
        return None
    ascending = len(kid) < 2 or bool(np.all(kid[1:] > kid[:-1]))  # rollups come sorted by key_id
    if ascending and m.dtype.kind == "i" and len(m) and (int(m.max()) - int(m.min()) + 1) * len(m) < 2**62:
        order = np.argsort((int(m.max()) - m) * len(m) + np.arange(len(m)))  # distinct codes: one order
    else:
        order = np.argsort(-m, kind="stable") if ascending else np.lexsort((kid, -m))
    cols = {"key_id": pa.array(kid[order], pa.int64()), by: pa.array(m[order], rollup.schema.field(by).type)}
    if by == "sum":  # the exact values' low parts ride along (parquet_layout.topk_copy)
        from tiers.parquet_layout import sum_lo_of

        cols["sum_lo"] = pa.array(sum_lo_of(rollup)[order])
    out = pa.table(cols)
    return out.replace_schema_metadata(rollup.schema.metadata)


__all__ = ["DayParts", "day_parts", "fast_eligible", "merge_exact", "topk_order"]
