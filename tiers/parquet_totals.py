"""Stream totals: per-bucket partials over ALL keys of a stream, kept next to the per-key rollups.

A series without a key (GET /v1/query/series without `key`) needs one row per bucket, not one per
key and bucket: a year of days over the key-level daily rollups groups ~1.5M rows. Each partition
(tiers.parquet_layout) therefore also holds a small totals file, written with its other files by
the same atomic publish (parquet_layout.write_day / write_period, so export_cold, the importer,
the archive and retention jobs write them too):

    totals_1h/tenant=T/stream=S/day=YYYY-MM-DD/part-0.parquet    hourly totals of one UTC day
                                                                 (<= 24 rows), from its raw events
    totals_1d/tenant=T/stream=S/week=YYYY-MM-DD/part-0.parquet   daily totals of the week / month
    totals_1d/tenant=T/stream=S/month=YYYY-MM/part-0.parquet     (<= 31 rows), from its daily rollups

Columns bucket int64 (epoch ms), count int64, sum/min/max float64, sum_lo float64, sorted by
bucket; sum + sum_lo is the exact sum of the raw values as a normalised pair (rollups.pairsum;
sum is the correctly rounded total). Files written before sum_lo existed lack it: read as 0. Footer totals and
verification as every file of the layout (count and sum must equal the partition's).

`series_totals` answers `aggregate(pieces, "bucket")` without a key from these files: for each
piece, the months, then weeks, then days wholly inside it that hold a totals file, floored to the
piece's granularity; anything else (raw edges, old partitions written before totals existed) is
left to the key-level read, whose pieces it returns. Files are a few hundred bytes: the tiers read
them whole through a TotalsCache (cold: local files checked by inode, mtime and size on every
read; archive: objects by their manifest's SHA-256, checked on download), never through an engine.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Callable, Hashable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rollups.cover import Piece
from rollups.pairsum import pair_reduceat
from rollups.timeutil import DAY_MS, G1D, G1H, G1MO, G1W, HOUR_MS, Granularity, TimeRange
from tiers import parquet_layout as PL

#: the totals table of a partition kind: day -> hourly totals, week / month -> daily totals
TABLES = PL.PT_TABLES
SCHEMA = pa.schema([("bucket", pa.int64()), ("count", pa.int64()), ("sum", pa.float64()),
                    ("min", pa.float64()), ("max", pa.float64()), ("sum_lo", pa.float64())])


def table_of(period: str) -> str:
    """The totals table name of a partition kind (day | week | month)."""
    return TABLES[period]


def _rows(buckets: np.ndarray, values: np.ndarray, lows: np.ndarray | None, starts: np.ndarray) -> pa.Table:
    """One row per run [starts[i], starts[i+1]) of `values` (and their low parts `lows`)."""
    ends = np.concatenate([starts[1:], [len(values)]])
    hi, lo = pair_reduceat(values, lows, starts)
    return pa.table({"bucket": pa.array(buckets, pa.int64()), "count": pa.array(ends - starts, pa.int64()),
                     "sum": pa.array(hi + 0.0), "min": pa.array(np.minimum.reduceat(values, starts)),
                     "max": pa.array(np.maximum.reduceat(values, starts)), "sum_lo": pa.array(lo + 0.0)},
                    schema=SCHEMA)


def day_totals(raw: pa.Table) -> pa.Table:
    """Hourly totals of one day's raw events (RAW_SCHEMA sorted by ts): one row per non-empty hour."""
    return bucket_totals(raw, HOUR_MS)


def bucket_totals(raw: pa.Table, width_ms: int) -> pa.Table:
    """SCHEMA rows of raw events (columns ts, value) per epoch-aligned bucket of `width_ms`: one
    row per non-empty bucket, in bucket order, sums as exact pairs."""
    if raw.num_rows == 0:
        return SCHEMA.empty_table()
    ts = np.asarray(raw["ts"].to_numpy(), np.int64)
    values = np.asarray(raw["value"].to_numpy(), np.float64)
    buckets = ts - np.mod(ts, width_ms)
    order = np.argsort(buckets, kind="stable")
    buckets, values = buckets[order], values[order]
    starts = np.flatnonzero(np.concatenate([[True], buckets[1:] != buckets[:-1]]))
    return _rows(buckets[starts], values, None, starts)


def period_totals(dailies: Iterable[pa.Table]) -> pa.Table:
    """Daily totals of a week or month from its days' rollup_1d tables (one bucket each)."""
    rows = []
    for t in dailies:
        if t.num_rows == 0:
            continue
        counts = np.asarray(t["count"].to_numpy(), np.int64)
        hi, lo = pair_reduceat(np.asarray(t["sum"].to_numpy(), np.float64), PL.sum_lo_of(t), np.zeros(1, np.int64))
        rows.append((int(t["bucket"][0].as_py()), int(counts.sum()), float(hi[0]) + 0.0,
                     float(np.min(t["min"].to_numpy())), float(np.max(t["max"].to_numpy())), float(lo[0]) + 0.0))
    rows.sort()
    cols = list(zip(*rows)) if rows else [[] for _ in SCHEMA.names]
    return pa.table({n: pa.array(list(c), f.type) for n, c, f in zip(SCHEMA.names, cols, SCHEMA)}, schema=SCHEMA)


def with_sum_lo(t: pa.Table) -> pa.Table:
    """A totals table as SCHEMA, `sum_lo` 0 where the file predates it."""
    if "sum_lo" not in t.column_names:
        t = t.append_column("sum_lo", pa.array(np.zeros(t.num_rows)))
    return t.select(SCHEMA.names).cast(SCHEMA)


# ---- reading ----------------------------------------------------------------------------------

def _subtract(spans: list[tuple[int, int]], a: int, b: int) -> list[tuple[int, int]]:
    out = []
    for lo, hi in spans:
        if b <= lo or a >= hi:
            out.append((lo, hi))
            continue
        if lo < a:
            out.append((lo, a))
        if b < hi:
            out.append((b, hi))
    return out


def _inside(spans: list[tuple[int, int]], a: int, b: int) -> bool:
    return any(lo <= a and b <= hi for lo, hi in spans)


Rest = list[tuple[Piece, "Granularity | None"]]


def plan_reads(pieces: Sequence[Piece], holding) -> tuple[list[tuple[Hashable, Piece]], Rest]:
    """Which totals files answer the pieces, and which pieces are left to the key-level read.

    `holding(period, lo, hi)` gives {start: file} for the partitions of that kind (day | week |
    month) overlapping [lo, hi) that hold a totals file (start in epoch ms, file whatever the
    tier's reader takes). Returns ([(file, piece), ...] — read the file's buckets inside
    piece.range, floored to piece.granularity — and the pieces left over as (piece, g): read
    them key-level, then floor their buckets to g (None: as read). Days without totals inside a
    week or month piece are read as 1d pieces (a weekly rollup would hold other days).
    """
    reads: list[tuple[Hashable, Piece]] = []
    rest: Rest = []
    for piece in pieces:
        g, rng = piece.granularity, piece.range
        if rng.empty:
            continue
        if g.is_raw or not (g in (G1H, G1D, G1W, G1MO)):
            rest.append((piece, None))
            continue
        gap_g, gap_floor = (g, None) if g in (G1H, G1D) else (G1D, g)
        spans = [(rng.start, rng.end)]
        if g != G1H:  # weeks and months hold daily totals: only for pieces of a day or coarser
            for period, gran in (("month", G1MO), ("week", G1W)):
                found = {s: f for lo, hi in spans for s, f in holding(period, lo, hi).items()}
                for s in sorted(found):
                    e = gran.next(s)
                    if s >= rng.start and e <= rng.end and _inside(spans, s, e):
                        reads.append((found[s], piece))
                        spans = _subtract(spans, s, e)
        days = {d: f for lo, hi in spans for d, f in holding("day", lo, hi).items()}
        for lo, hi in spans:
            gap = None  # a run of days without totals: one key-level piece
            for d in range(lo - lo % DAY_MS, hi, DAY_MS):
                a, b = max(lo, d), min(hi, d + DAY_MS)
                if d in days:
                    reads.append((days[d], Piece(g, TimeRange(a, b))))
                    if gap is not None:
                        rest.append((Piece(gap_g, TimeRange(*gap)), gap_floor))
                        gap = None
                else:
                    gap = (gap[0], b) if gap is not None else (a, b)
            if gap is not None:
                rest.append((Piece(gap_g, TimeRange(*gap)), gap_floor))
    return reads, rest


def floor_buckets(buckets: np.ndarray, g: Granularity) -> np.ndarray:
    """Bucket starts floored to `g` (fixed widths epoch-aligned, 1mo the UTC calendar month)."""
    if g.calendar:
        return np.array([g.floor(int(b)) for b in buckets], np.int64)
    return buckets - np.mod(buckets, g.ms)


class TotalsCache:
    """Totals tables by a key that changes whenever the content may (a local file's path with its
    inode, mtime and size: a rewrite renames a new file into place; an object's SHA-256), so a
    stale entry is never served. Bounded (least recently used out); thread-safe."""

    def __init__(self, entries: int = 8192) -> None:
        self.entries = entries
        self._d: OrderedDict[Hashable, pa.Table] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], pa.Table]) -> pa.Table:
        with self._lock:
            hit = self._d.get(key)
            if hit is not None:
                self._d.move_to_end(key)
                return hit
        t = with_sum_lo(load())
        with self._lock:
            self._d[key] = t
            while len(self._d) > self.entries:
                self._d.popitem(last=False)
        return t

    def read_local(self, path: str) -> pa.Table:
        """A local totals file's table (one stat per call when cached)."""
        st = os.stat(path)
        return self.get((path, st.st_ino, st.st_mtime_ns, st.st_size), lambda: pq.read_table(path))


def series_totals(pieces: Sequence[Piece], holding, read: Callable[[Hashable], pa.Table]
                  ) -> tuple[pa.Table | None, Rest]:
    """(bucket partials from the totals files, or None when none applies; the pieces left to the
    key-level read as plan_reads gives them). `holding` as for plan_reads; `read(file)` gives a
    totals file's table (SCHEMA). Columns bucket, count, sum, min, max, sum_lo."""
    reads, rest = plan_reads(pieces, holding)
    if not reads:
        return None, [(p, None) for p in pieces]
    parts = []
    for file, piece in reads:
        t = read(file)
        b = np.asarray(t["bucket"].to_numpy(), np.int64)
        at = (b >= piece.range.start) & (b < piece.range.end)
        if not at.any():
            continue
        t = t if at.all() else t.filter(pa.array(at))
        parts.append(floored(t, None if piece.granularity == G1H else piece.granularity))
    return (pa.concat_tables(parts) if parts else SCHEMA.empty_table()), rest


def floored(t: pa.Table, g: Granularity | None) -> pa.Table:
    """A bucket partial table with its buckets floored to g (None: unchanged)."""
    if g is None or t.num_rows == 0:
        return t
    b = floor_buckets(np.asarray(t["bucket"].to_numpy(), np.int64), g)
    return t.set_column(t.schema.get_field_index("bucket"), "bucket", pa.array(b, pa.int64()))


__all__ = ["TotalsCache", "floored", "TABLES", "SCHEMA", "table_of", "day_totals", "bucket_totals", "period_totals", "plan_reads",
           "series_totals",
           "floor_buckets"]
