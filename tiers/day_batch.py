"""Many days of one stream written at once: parquet_layout.write_day's files, computed for all days together.

`write_days` takes a stream's raw events over many days (RAW_SCHEMA, any order) and writes, for
every day, exactly the files `parquet_layout.write_day` writes (raw, 1h/1d rollups, value-sorted
copies, sketch, stream totals: same tables, same row groups, same footers, same publish order:
temp files, verified, renamed), but:

- the group-bys run once per chunk of days, vectorised (one stable sort by (ts, key_id) of the
  events, one by (hour, key_id), one by (day, key_id); numpy reduceat), not once per day;
- a file is encoded in memory, verified by reading that buffer back (rows, count and sum as
  written and as the source's), and written with one write call (no read back from disk);
- sums: when every value is an integer multiple of 2^-s (s <= 30) and the sum of |values| stays
  below 2^52 quanta (`exact_sums`), every partial sum is exact in float64, so a plain numpy sum
  equals math.fsum and the pair sums of rollups.pairsum bit for bit (sum_lo 0); otherwise the same
  pair sums (rollups.pairsum.pair_reduceat: sum, sum_lo) as write_day are used;
- chunks of whole days run in `workers` forked processes (the GIL is not shared), each writing
  its own days (distinct files), so both cores work.

Weeks and months: `write_periods`, parquet_layout.write_period for each, in forked workers too.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rollups.pairsum import pair_reduceat
from rollups.timeutil import DAY_MS, HOUR_MS
from tiers import parquet_layout as PL
from tiers import parquet_totals as PT
from tiers import sketch_files as SF

WORKERS = min(2, os.cpu_count() or 1)
#: rows per chunk of days a worker computes at once (bounds its memory)
CHUNK_ROWS = 4_000_000
_BOTH = ("count", "sum")


def exact_sums(values: np.ndarray) -> bool:
    """True when any sum of any subset of `values` (float64), in any order, is exact: every value
    is an integer multiple of 2^-s for some s <= 30 and sum(|values|) * 2^s < 2^52. Then numpy's
    sums equal math.fsum and Neumaier's compensated sums bit for bit."""
    if len(values) == 0:
        return True
    total = float(np.abs(values).sum())
    if not math.isfinite(total):
        return False
    for s in (0, 1, 2, 4, 8, 16, 20, 30):
        if total * 2.0 ** s >= 2.0 ** 52:
            return False
        scaled = values * 2.0 ** s
        if np.array_equal(scaled, np.floor(scaled)):
            return True
    return False


def fsum(values: np.ndarray) -> float:
    """math.fsum(values) (correctly rounded), by numpy when the sum is exact anyway."""
    values = np.asarray(values, np.float64)
    if exact_sums(values):
        return float(values.sum()) + 0.0
    return math.fsum(values.tolist())


def totals_of(table: pa.Table) -> PL.Totals:
    """parquet_layout.totals_of, with `fsum` for the sums (same values)."""
    names = table.column_names
    if "value" in names:
        lo, hi = PL._minmax(table["value"])
        return PL.Totals(table.num_rows, table.num_rows, _colsum(table["value"]), lo, hi, PL.abs_sum(table["value"]))
    count = int(np.asarray(table["count"].to_numpy()).sum()) if "count" in names and table.num_rows else 0
    total = _colsum(table["sum"], table["sum_lo"] if "sum_lo" in names else None) if "sum" in names else 0.0
    lo = PL._minmax(table["min"])[0] if "min" in names else None
    hi = PL._minmax(table["max"])[1] if "max" in names else None
    return PL.Totals(table.num_rows, count, total, lo, hi, PL.abs_sum(table["sum"]) if "sum" in names else 0.0)


def _colsum(col, low=None) -> float:
    """fsum of a column and of its low parts `low` (a column or None)."""
    if not len(col):
        return 0.0
    x = np.asarray(col.to_numpy(), np.float64)
    if low is not None:
        lo = np.asarray(low.to_numpy(), np.float64)
        x = np.concatenate([x, lo[lo != 0]])
    return fsum(x)


# ---- publishing: encode in memory, verify the buffer, write once, rename --------------------------

def encode(table: pa.Table, row_groups) -> tuple[pa.Buffer, PL.Totals]:
    """The Parquet bytes parquet_layout.write_temp would write for `table`, and its totals."""
    totals = totals_of(table)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), PL.META_KEY: totals.to_json()})
    sink = pa.BufferOutputStream()
    PL.write_parquet(sink, table, row_groups)
    return sink.getvalue(), totals


def publish(staged: list[tuple[Path, pa.Table, object, tuple[str, ...]]], expect: PL.Totals,
            durable: bool) -> None:
    """parquet_layout.publish with in-memory verification: every file encoded and verified (its
    buffer read back: rows, count and sum as written and the source's), written to a temp file,
    then all renamed in order. Raises VerifyFailed (nothing renamed)."""
    tmps: list[tuple[Path, Path]] = []
    try:
        for path, table, groups, measures in staged:
            buf, wrote = encode(table, groups)
            got = totals_of(pq.ParquetFile(pa.BufferReader(buf)).read(use_threads=False))
            if got.rows != wrote.rows or not got.matches(wrote):
                raise PL.VerifyFailed(f"{path}: read back {got}, wrote {wrote}")
            PL.check_against(path, got, expect, measures)
            path.parent.mkdir(parents=True, exist_ok=True)
            PL.remove_temp_files(path.parent)
            tmp = path.parent / f".tmp-{uuid.uuid4().hex}.parquet"
            tmps.append((tmp, path))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(buf)
                while view:
                    view = view[os.write(fd, view):]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        for tmp, path in tmps:
            os.replace(tmp, path)
            if durable:
                PL.fsync_path(path.parent)
    finally:
        for tmp, _ in tmps:
            if tmp.exists():
                tmp.unlink()


# ---- vectorised group-bys --------------------------------------------------------------------------

def _group(bucket: np.ndarray, kid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stable order by (bucket, kid), start of each group in that order)."""
    n = len(bucket)
    lo = int(bucket.min())
    span = int(bucket.max()) - lo
    kmin = int(kid.min())
    kbits = max(1, (int(kid.max()) - kmin).bit_length())
    if span.bit_length() + kbits <= 62:
        key = ((bucket - lo) << kbits) | (kid - kmin)
        order = np.argsort(key, kind="stable")
        ks = key[order]
        change = ks[1:] != ks[:-1]
    else:
        order = np.lexsort((kid, bucket))
        b, k = bucket[order], kid[order]
        change = (b[1:] != b[:-1]) | (k[1:] != k[:-1])
    starts = np.flatnonzero(np.concatenate([[True], change])) if n else np.zeros(0, np.int64)
    return order, starts


def _reduce(values: np.ndarray, starts: np.ndarray, exact: bool) -> tuple[np.ndarray, ...]:
    """(count, sum, min, max, sum_lo) per group of `values` (in group order, groups from `starts`);
    sums as exact pairs (rollups.pairsum), sum_lo 0 when `exact`."""
    n = len(values)
    count = np.diff(np.concatenate([starts, [n]])).astype(np.int64)
    if exact:
        total, low = np.add.reduceat(values, starts), np.zeros(len(starts))
    else:
        total, low = pair_reduceat(values, None, starts)
        total, low = total + 0.0, low + 0.0
    return count, total, np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts), low


def _rollup(bucket: np.ndarray, kid: np.ndarray, values: np.ndarray, exact: bool) -> dict[str, np.ndarray]:
    order, starts = _group(bucket, kid)
    count, total, lo, hi, low = _reduce(values[order], starts, exact)
    first = order[starts]  # stable: each group's first row in file order (ts, key_id)
    return {"bucket": bucket[first], "key_id": kid[first], "count": count, "sum": total, "min": lo, "max": hi,
            "sum_lo": low, "first": first}


def _rollup_table(r: dict[str, np.ndarray], a: int, b: int) -> pa.Table:
    return pa.table({n: pa.array(r[n][a:b]) for n in PL.ROLLUP_SCHEMA.names}, schema=PL.ROLLUP_SCHEMA)


def _topk(r: dict[str, np.ndarray], a: int, b: int, by: str) -> pa.Table:
    order = np.lexsort((r["key_id"][a:b], -r[by][a:b]))
    names = ["key_id", by, *(["sum_lo"] if by == "sum" else [])]  # parquet_layout.topk_copy's columns
    schema = pa.schema([PL.ROLLUP_SCHEMA.field(n) for n in names])
    return pa.table({n: pa.array(r[n][a:b][order], schema.field(n).type) for n in names}, schema=schema)


def _hour_totals(ts: np.ndarray, values: np.ndarray, exact: bool) -> dict[str, np.ndarray]:
    """parquet_totals.day_totals for sorted ts, all days at once (pair sums per hour unless exact)."""
    hours = ts - np.mod(ts, HOUR_MS)
    starts = np.flatnonzero(np.concatenate([[True], hours[1:] != hours[:-1]]))
    count, total, lo, hi, low = _reduce(values, starts, exact)
    return {"bucket": hours[starts], "count": count, "sum": total, "min": lo, "max": hi, "sum_lo": low}


# ---- one chunk of whole days ---------------------------------------------------------------------

def write_chunk(layout: PL.Layout, tenant: str, stream: str, raw: pa.Table, durable: bool) -> list[tuple[int, int]]:
    """Write every day of `raw` (RAW_SCHEMA, whole days, any order); returns [(day start, rows)]."""
    if raw.num_rows == 0:
        return []
    raw = raw.select(PL.RAW_SCHEMA.names).cast(PL.RAW_SCHEMA)
    ts = np.asarray(raw["ts"].to_numpy(), np.int64)
    kid = np.asarray(raw["key_id"].to_numpy(), np.int64)
    order, _ = _group(ts, kid)  # file order (ts, key_id), stable: write_day's sort_by
    raw = raw.take(pa.array(order))
    ts, kid = ts[order], kid[order]
    values = np.asarray(raw["value"].to_numpy(), np.float64)
    exact = exact_sums(values)
    day = np.floor_divide(ts, DAY_MS) * DAY_MS
    hourly = _rollup(ts - np.mod(ts, HOUR_MS), kid, values, exact)
    daily = _rollup(day, kid, values, exact)
    totals = _hour_totals(ts, values, exact)
    keys = raw["key"]
    out = []
    d_starts = np.flatnonzero(np.concatenate([[True], day[1:] != day[:-1]]))
    d_ends = np.concatenate([d_starts[1:], [len(day)]])
    for s, e in zip(d_starts.tolist(), d_ends.tolist()):
        d = int(day[s])
        hs, he = np.searchsorted(hourly["bucket"], [d, d + DAY_MS])
        ds, de = np.searchsorted(daily["bucket"], [d, d + DAY_MS])
        ts_, te_ = np.searchsorted(totals["bucket"], [d, d + DAY_MS])
        day_raw = raw.slice(s, e - s)
        expect = totals_of(day_raw)
        daily_t = _rollup_table(daily, ds, de)
        staged = [(PL.totals_file(layout, tenant, stream, "day", d),
                   pa.table({n: pa.array(totals[n][ts_:te_]) for n in PT.SCHEMA.names}, schema=PT.SCHEMA), 1024, _BOTH),
                  (layout.sketch_file(tenant, stream, PL.G1D, d), _sketch(daily, ds, de, keys), 1, ()),
                  (layout.raw_file(tenant, stream, d), day_raw, PL.RAW_ROW_GROUP, _BOTH),
                  (layout.rollup_file(tenant, stream, PL.G1H, d), _rollup_table(hourly, hs, he), PL.ROLLUP_ROW_GROUP,
                   _BOTH),
                  (layout.rollup_file(tenant, stream, PL.G1D, d), daily_t, PL.ROLLUP_ROW_GROUP, _BOTH)]
        for by in PL.MEASURES:
            staged.append((layout.topk_file(tenant, stream, by, PL.G1D, d), _topk(daily, ds, de, by),
                           PL.TOPK_ROW_GROUPS, (by,)))
        publish(staged, expect, durable)
        out.append((d, e - s))
    return out


def _sketch(daily: dict[str, np.ndarray], a: int, b: int, keys: pa.ChunkedArray) -> pa.Table:
    """sketch_files.day_table of the day: its keys in order of first appearance (as key_partials)."""
    first = daily["first"][a:b]
    order = np.argsort(first, kind="stable")
    partials = pa.table({"key": keys.take(pa.array(first[order])),
                         "count": pa.array(daily["count"][a:b][order], pa.int64()),
                         "sum": pa.array(daily["sum"][a:b][order], pa.float64())})
    return SF.partials_table(partials)


# ---- many chunks, in processes -----------------------------------------------------------------------

_JOB: tuple | None = None  # (layout, tenant, stream, raw sorted by day, durable): inherited by forked workers


def _run(bounds: tuple[int, int]) -> list[tuple[int, int]]:
    layout, tenant, stream, raw, durable = _JOB
    return write_chunk(layout, tenant, stream, raw.slice(bounds[0], bounds[1] - bounds[0]), durable)


def write_days(layout: PL.Layout, tenant: str, stream: str, raw: pa.Table, *, durable: bool,
               advance: Callable[[int], None] = lambda n: None, workers: int = WORKERS) -> list[tuple[int, int]]:
    """Write every day of one stream's raw events (RAW_SCHEMA, any order, file order kept among
    equal (ts, key_id)) as write_day would; returns [(day start, rows)] ascending. Chunks of whole
    days (about CHUNK_ROWS rows, at least 2 per worker) run in `workers` forked processes;
    advance(rows) after each chunk. Raises VerifyFailed (the chunk's later days not written)."""
    global _JOB
    if raw.num_rows == 0:
        return []
    ts = np.asarray(raw["ts"].to_numpy(), np.int64)
    day_no = np.floor_divide(ts, DAY_MS)
    rel = day_no - int(day_no.min())
    order = np.argsort(rel.astype(np.int16 if rel.max() < 2 ** 15 else np.int64), kind="stable")
    raw = raw.take(pa.array(order))
    rel = rel[order]
    cuts = np.flatnonzero(np.diff(rel)) + 1
    bounds = _chunks(np.concatenate([[0], cuts, [len(rel)]]), max(2 * workers, math.ceil(len(rel) / CHUNK_ROWS)))
    out: list[tuple[int, int]] = []
    if workers <= 1 or len(bounds) <= 1:
        for b in bounds:
            out.extend(write_chunk(layout, tenant, stream, raw.slice(b[0], b[1] - b[0]), durable))
            advance(b[1] - b[0])
        return sorted(out)
    _JOB = (layout, tenant, stream, raw, durable)
    try:
        with _pool(workers) as pool:
            for b, res in zip(bounds, pool.map(_run, bounds)):
                out.extend(res)
                advance(b[1] - b[0])
    finally:
        _JOB = None
    return sorted(out)


def _run_period(item: tuple) -> None:
    layout, tenant, stream, durable = _JOB
    PL.write_period(layout, tenant, stream, item[0], item[1], durable=durable)


def write_periods(layout: PL.Layout, tenant: str, stream: str, days: Iterable[int], *, durable: bool,
                  workers: int = WORKERS) -> None:
    """parquet_layout.write_period for every week and month holding one of `days` (epoch ms),
    `workers` forked processes at a time (each period's files are its own)."""
    global _JOB
    periods = sorted({(g, g.floor(d)) for d in days for g in PL.PERIOD_GRANULARITIES}, key=lambda p: (p[0].name, p[1]))
    if workers <= 1 or len(periods) <= 1:
        for g, start in periods:
            PL.write_period(layout, tenant, stream, g, start, durable=durable)
        return
    _JOB = (layout, tenant, stream, durable)
    try:
        with _pool(workers) as pool:
            for _ in pool.map(_run_period, periods):
                pass
    finally:
        _JOB = None


def _pool(workers: int) -> ProcessPoolExecutor:
    """Forked workers (they inherit _JOB); a worker that dies raises BrokenProcessPool, never hangs."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))


def _chunks(day_edges: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Contiguous runs of whole days, about len/parts rows each, as (start row, end row)."""
    n = int(day_edges[-1])
    targets = np.linspace(0, n, parts + 1)[1:-1]
    inner = np.unique(day_edges[np.clip(np.searchsorted(day_edges, targets), 0, len(day_edges) - 1)])
    edges = np.unique(np.concatenate([[0], inner, [n]]))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


__all__ = ["write_days", "write_periods", "write_chunk", "publish", "exact_sums", "fsum", "totals_of", "WORKERS"]
