"""The cold tier's files: one Parquet layout shared by the cold tier (local disk) and the archive (S3).

Under one root (settings.cold_dir locally, the bucket's prefix on S3):

    events/tenant=T/stream=S/day=YYYY-MM-DD/part-0.parquet         raw events of one UTC day
    rollup_1h/tenant=T/stream=S/day=YYYY-MM-DD/part-0.parquet      hourly partials of that day
    rollup_1d/tenant=T/stream=S/day=YYYY-MM-DD/part-0.parquet      daily partials
    rollup_1w/tenant=T/stream=S/week=YYYY-MM-DD/part-0.parquet     weekly partials (epoch-aligned
                                                                   weeks, named by their first day)
    rollup_1mo/tenant=T/stream=S/month=YYYY-MM/part-0.parquet      calendar-month partials
    topk_by_count_<g>/... and topk_by_sum_<g>/...  (g = 1d, 1w, 1mo; same partition folders)
                                                                   value-sorted copies for top-K
    totals_1h/.../day=..., totals_1d/.../week=... and .../month=...  stream totals (all keys) per
                                                                   hour / day: key-less series
                                                                   (tiers/parquet_totals.py)

Columns (partition values live only in the folder names, Hive style):
    events      ts int64 (epoch ms UTC), key_id int64, key string, value float64, id string (null)
                sorted by (ts, key_id); 64k-row groups so a time filter skips row groups.
    rollup_*    bucket int64 (bucket start, epoch ms), key_id int64, count int64, sum/min/max float64,
                sum_lo float64 (the sum's low part: sum + sum_lo is the exact sum of the values, as a
                normalised double-double pair, rollups.pairsum; 0 when sum holds it exactly)
                sorted by (bucket, key_id); 16k-row groups so a key lookup reads one row group.
                Files written before sum_lo existed lack the column: readers take it as 0.
    topk_by_m_* key_id int64, m (count int64 | sum float64, then sum_lo for sum), sorted by m
                descending then key_id;
                row groups of 1k, 2k, 4k, then 8k rows: the threshold algorithm (tiers.cold_topk)
                reads only the head. Trino never registers these trees.
Keys are interned per (tenant, stream) to integer ids (tiers.cold_keys); `events` keeps the key
string too, so raw files (and reports, and the archive) stand on their own.

All files: zstd, Parquet statistics on, and footer metadata `tierstore` = JSON
{"rows", "count", "sum", "min", "max"} of what the file holds (the measure totals used for
verification, for the threshold algorithm's per-segment mass and its negative-value check).

Writes are atomic per file: the table is written to `.tmp-<uuid>.parquet` in the partition folder
(hidden from Trino and Hive, which skip names starting with '.' or '_'), read back and verified
against the expected row count and sum, fsynced, then renamed over `part-0.parquet`. Readers only
ever open final names, so they see the old file or the new one, never half of one. A day's files
(raw, 1h, 1d, copies) are all staged and verified before the first rename. Weekly and monthly
rollups always reflect the daily files present: they are rebuilt from the daily rollups whenever
one of their days changes (a reader uses a week or month only when all its days are owned by
the tier, i.e. below b_cold, and by then its last rebuild has happened).
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rollups.exactsum import exactly_summable
from rollups.pairsum import pair_reduceat
from rollups.timeutil import DAY_MS, G1D, G1H, G1MO, G1W, HOUR_MS, WEEK_MS, Granularity, floor_to, to_datetime

#: Layout.days_in / periods_in probe at most this many partitions a file at a time; more: list the folder
MAX_PROBES = 64

RAW_SCHEMA = pa.schema([
    ("ts", pa.int64()),
    ("key_id", pa.int64()),
    ("key", pa.string()),
    ("value", pa.float64()),
    ("id", pa.string()),
])
ROLLUP_SCHEMA = pa.schema([
    ("bucket", pa.int64()),
    ("key_id", pa.int64()),
    ("count", pa.int64()),
    ("sum", pa.float64()),
    ("min", pa.float64()),
    ("max", pa.float64()),
    ("sum_lo", pa.float64()),
])
MEASURES = ("count", "sum")
FILE_NAME = "part-0.parquet"
META_KEY = b"tierstore"

RAW_ROW_GROUP = 65_536
ROLLUP_ROW_GROUP = 16_384
TOPK_ROW_GROUPS = (1_024, 2_048, 4_096, 8_192)

#: table name -> (granularity, partition column)
ROLLUP_TABLES = {"rollup_1h": (G1H, "day"), "rollup_1d": (G1D, "day"), "rollup_1w": (G1W, "week"),
                 "rollup_1mo": (G1MO, "month")}
TABLE_OF = {g.name: t for t, (g, _) in ROLLUP_TABLES.items()}
PERIOD_GRANULARITIES = (G1W, G1MO)
#: partition kinds (what a partition spans) <-> their main table's granularity
PERIODS = {"day": G1D, "week": G1W, "month": G1MO}
PERIOD_OF = {g.name: period for period, g in PERIODS.items()}

_SAFE = re.compile(r"[A-Za-z0-9_.-]")
_EPOCH_DATE = date(1970, 1, 1)


def topk_table(by: str, gran: Granularity) -> str:
    return f"topk_by_{by}_{gran.name}"


def escape(value: str) -> str:
    """A partition value as a folder-name-safe string (percent-encoding, injective)."""
    return "".join(c if _SAFE.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in value)


# ---- periods ---------------------------------------------------------------------------------

def day_name(day_start: int) -> str:
    return (_EPOCH_DATE + timedelta(days=day_start // DAY_MS)).isoformat()


def day_start_of(name: str) -> int:
    return (date.fromisoformat(name) - _EPOCH_DATE).days * DAY_MS


def period_name(gran: Granularity, start: int) -> str:
    """Partition value of the period of `gran` starting at `start`."""
    if gran == G1MO:
        d = to_datetime(start)
        return f"{d.year:04d}-{d.month:02d}"
    return day_name(start)


def period_start_of(gran: Granularity, name: str) -> int:
    return day_start_of(name + "-01" if gran == G1MO else name)


def partition_column(gran: Granularity) -> str:
    return "month" if gran == G1MO else "week" if gran == G1W else "day"


def period_days(gran: Granularity, start: int) -> list[int]:
    """Day starts inside the period (gran in 1d, 1w, 1mo) starting at `start`."""
    end = start + DAY_MS if gran in (G1D, G1H) else gran.next(start)
    return list(range(start, end, DAY_MS))


# ---- paths -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Paths of one root. Partition folders are created on write; readers list only final names."""

    root: Path

    def stream_dir(self, table: str, tenant: str, stream: str) -> Path:
        return self.root / table / f"tenant={escape(tenant)}" / f"stream={escape(stream)}"

    def partition_dir(self, table: str, tenant: str, stream: str, column: str, period: str) -> Path:
        return self.stream_dir(table, tenant, stream) / f"{column}={period}"

    def raw_file(self, tenant: str, stream: str, day_start: int) -> Path:
        return self.partition_dir("events", tenant, stream, "day", day_name(day_start)) / FILE_NAME

    def rollup_file(self, tenant: str, stream: str, gran: Granularity, start: int) -> Path:
        return self.partition_dir(TABLE_OF[gran.name], tenant, stream, partition_column(gran),
                                  period_name(gran, start)) / FILE_NAME

    def topk_file(self, tenant: str, stream: str, by: str, gran: Granularity, start: int) -> Path:
        return self.partition_dir(topk_table(by, gran), tenant, stream, partition_column(gran),
                                  period_name(gran, start)) / FILE_NAME

    def sketch_file(self, tenant: str, stream: str, gran: Granularity, start: int) -> Path:
        """mode=approx frequent-items sketches of the partition (tiers/sketch_files.py)."""
        return self.partition_dir("sketch_" + gran.name, tenant, stream, partition_column(gran),
                                  period_name(gran, start)) / FILE_NAME

    def days(self, tenant: str, stream: str, table: str = "events") -> list[int]:
        """Day starts that have a final file in `table` (a day-partitioned table), ascending."""
        return sorted(day_start_of(v) for v in self._periods(table, tenant, stream, "day"))

    def periods(self, tenant: str, stream: str, gran: Granularity) -> list[int]:
        table = TABLE_OF[gran.name]
        return sorted(period_start_of(gran, v) for v in self._periods(table, tenant, stream, partition_column(gran)))

    def days_in(self, tenant: str, stream: str, table: str, lo: int, hi: int) -> list[int]:
        """Day starts d that have a final file in `table` (day-partitioned) and meet [lo, hi)
        (epoch ms), ascending. A range of at most MAX_PROBES days is probed a file at a time (a
        stat each), so a query's cost follows its range, not the stream's history; a longer one
        lists the folder (days())."""
        first = floor_to(lo, DAY_MS)
        if hi <= lo:
            return []
        if (hi - first) // DAY_MS >= MAX_PROBES:
            return [d for d in self.days(tenant, stream, table) if d < hi and d + DAY_MS > lo]
        return [d for d in range(first, hi, DAY_MS)
                if os.path.exists(self.partition_dir(table, tenant, stream, "day", day_name(d)) / FILE_NAME)]

    def periods_in(self, tenant: str, stream: str, gran: Granularity, lo: int, hi: int) -> list[int]:
        """Starts of the `gran` periods (1w, 1mo) with a final rollup file that meet [lo, hi),
        ascending; probed a file at a time up to MAX_PROBES periods, else listed (periods())."""
        if hi <= lo:
            return []
        starts, s = [], gran.floor(lo)
        while s < hi:
            starts.append(s)
            if len(starts) > MAX_PROBES:
                return [p for p in self.periods(tenant, stream, gran) if p < hi and gran.next(p) > lo]
            s = gran.next(s)
        return [p for p in starts if os.path.exists(self.rollup_file(tenant, stream, gran, p))]

    def _periods(self, table: str, tenant: str, stream: str, column: str) -> Iterator[str]:
        d = self.stream_dir(table, tenant, stream)
        prefix = column + "="
        try:
            entries = list(os.scandir(d))
        except FileNotFoundError:
            return
        for e in entries:
            if e.name.startswith(prefix) and os.path.exists(os.path.join(e.path, FILE_NAME)):
                yield e.name[len(prefix):]

    def tenants_streams(self) -> Iterator[tuple[str, str, Path]]:
        """(escaped tenant, escaped stream, folder) of every stream with raw events."""
        base = self.root / "events"
        if not base.is_dir():
            return
        for t in sorted(base.iterdir()):
            if t.name.startswith("tenant=") and t.is_dir():
                for s in sorted(t.iterdir()):
                    if s.name.startswith("stream=") and s.is_dir():
                        yield t.name[7:], s.name[7:], s


# ---- building tables -------------------------------------------------------------------------

def raw_table(ts, key_ids, keys, values, ids=None) -> pa.Table:
    """A raw table in file order (ts, key_id)."""
    n = len(ts)
    t = pa.table({"ts": pa.array(ts, pa.int64()), "key_id": pa.array(key_ids, pa.int64()),
                  "key": pa.array(keys, pa.string()), "value": pa.array(values, pa.float64()),
                  "id": pa.array(ids if ids is not None else [None] * n, pa.string())}, schema=RAW_SCHEMA)
    return t.sort_by([("ts", "ascending"), ("key_id", "ascending")])


def floor_col(ts: pa.ChunkedArray | pa.Array, step: int) -> pa.Array:
    """Floor epoch ms to `step` (works for negative times)."""
    a = np.asarray(ts.to_numpy() if hasattr(ts, "to_numpy") else ts, dtype=np.int64)
    return pa.array(a - np.mod(a, step), pa.int64())


def rollup_raw(raw: pa.Table, gran: Granularity) -> pa.Table:
    """Partials of raw events at a fixed granularity (1h or 1d), sorted (bucket, key_id); sums as
    exact pairs (sum, sum_lo) (rollups.pairsum: 1e15 + 0.1 is (1e15 + 0.125, -0.025))."""
    if raw.num_rows == 0:
        return ROLLUP_SCHEMA.empty_table()
    bucket = np.asarray(floor_col(raw["ts"], gran.ms).to_numpy(), np.int64)
    t = pa.table({"bucket": bucket, "key_id": raw["key_id"], "value": raw["value"]})
    out = t.group_by(["bucket", "key_id"], use_threads=False).aggregate(
        [("value", "count"), ("value", "sum"), ("value", "min"), ("value", "max")])
    out = out.sort_by([("bucket", "ascending"), ("key_id", "ascending")])
    values = np.asarray(raw["value"].to_numpy(), np.float64)
    if exactly_summable(values):  # every partial sum exact: the plain sums, no low parts
        hi, lo = np.asarray(out["value_sum"].to_numpy(), np.float64), np.zeros(out.num_rows)
    else:
        kid = np.asarray(raw["key_id"].to_numpy(), np.int64)
        order = np.lexsort((kid, bucket))
        b, k = bucket[order], kid[order]
        starts = np.flatnonzero(np.concatenate([[True], (b[1:] != b[:-1]) | (k[1:] != k[:-1])]))
        hi, lo = pair_reduceat(values[order], None, starts)
        hi, lo = hi + 0.0, lo + 0.0
    return pa.table({"bucket": out["bucket"], "key_id": out["key_id"], "count": out["value_count"],
                     "sum": pa.array(hi), "min": out["value_min"], "max": out["value_max"],
                     "sum_lo": pa.array(lo)}, schema=ROLLUP_SCHEMA)


def sum_lo_of(table: pa.Table) -> np.ndarray:
    """A rollup or top-K table's `sum_lo` as float64 (zeros for a table written before it existed)."""
    if "sum_lo" in table.column_names:
        return np.asarray(table["sum_lo"].to_numpy(), np.float64)
    return np.zeros(table.num_rows)


def with_sum_lo(table: pa.Table) -> pa.Table:
    """A rollup table (ROLLUP_SCHEMA), `sum_lo` 0 where the file predates it."""
    if "sum_lo" not in table.column_names:
        table = table.append_column("sum_lo", pa.array(np.zeros(table.num_rows)))
    return table.select(ROLLUP_SCHEMA.names).cast(ROLLUP_SCHEMA)


def merge_rollups(tables: Iterable[pa.Table], bucket: int) -> pa.Table:
    """One period's partials from finer partials (e.g. its daily rollups), all in `bucket`; sums
    added as pairs (sum, sum_lo; a table without sum_lo: 0)."""
    tables = [with_sum_lo(t) for t in tables if t.num_rows]
    if not tables:
        return ROLLUP_SCHEMA.empty_table()
    from tiers.day_rollups import merge_exact  # exactly summable partials: numpy, the same table
    fast = merge_exact(tables, bucket)
    if fast is not None:
        return fast
    t = pa.concat_tables(tables)
    out = t.group_by("key_id", use_threads=False).aggregate([("count", "sum"), ("min", "min"), ("max", "max")])
    out = out.sort_by([("key_id", "ascending")])
    kid = np.asarray(t["key_id"].to_numpy(), np.int64)
    order = np.argsort(kid, kind="stable")
    k = kid[order]
    starts = np.flatnonzero(np.concatenate([[True], k[1:] != k[:-1]]))
    hi, lo = pair_reduceat(np.asarray(t["sum"].to_numpy(), np.float64)[order], sum_lo_of(t)[order], starts)
    n = out.num_rows
    return pa.table({"bucket": pa.array(np.full(n, bucket, np.int64)), "key_id": out["key_id"],
                     "count": out["count_sum"], "sum": pa.array(hi + 0.0), "min": out["min_min"],
                     "max": out["max_max"], "sum_lo": pa.array(lo + 0.0)}, schema=ROLLUP_SCHEMA)


def topk_copy(rollup: pa.Table, by: str) -> pa.Table:
    """The value-sorted copy of a one-bucket rollup: (key_id, by) by `by` desc, key_id asc; a copy
    by sum carries sum_lo too (exact values on sorted access)."""
    from tiers.day_rollups import topk_order  # no NaN, no -0.0: one numpy lexsort, the same table
    fast = topk_order(rollup, by)
    if fast is not None:
        return fast
    t = rollup.select(["key_id", by, *(["sum_lo"] if by == "sum" else [])])
    return t.sort_by([(by, "descending"), ("key_id", "ascending")])


# ---- file statistics and verification ---------------------------------------------------------

@dataclass(frozen=True)
class Totals:
    rows: int
    count: int
    sum: float
    min: float | None
    max: float | None
    #: sum of |value| (raw) or |sum| (rollups): the magnitude the sum's rounding is relative to
    #: (None: not known, e.g. a source total read from SQL or an older file's footer)
    abs_sum: float | None = None

    def to_json(self) -> bytes:
        return json.dumps({"rows": self.rows, "count": self.count, "sum": self.sum,
                           "min": self.min, "max": self.max, "abs_sum": self.abs_sum}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Totals":
        d = json.loads(data)
        return cls(d["rows"], d["count"], d["sum"], d["min"], d["max"], d.get("abs_sum"))

    def matches(self, other: "Totals") -> bool:
        return self.count == other.count and close(self.sum, other.sum, magnitude(self, other))


#: how far (in units of the magnitude sum |v|) two sums of the same values may differ when one is
#: a sum of rounded partials (each within eps/2 of its exact value: hours, days, a pack's days)
#: and the other the correctly rounded sum of the raw values; a few levels of partials, with room
SUM_SLACK = 16 * sys.float_info.epsilon


def magnitude(*totals: "Totals") -> float:
    """The largest known abs_sum among `totals` (0.0 when none is known)."""
    return max((t.abs_sum for t in totals if t.abs_sum is not None), default=0.0)


def close(a: float, b: float, magnitude: float = 0.0) -> bool:
    """Whether two sums of the same values agree: within 1e-9 relative (1e-6 absolute), or within
    SUM_SLACK x `magnitude` (sum of |values|): values that cancel (1e15 + 0.1 - 1e15) summed
    through rounded partials differ from their exact sum by ulps of the magnitude, not of the
    result. Event counts are compared exactly elsewhere, so a lost row is never hidden by this."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6) or abs(a - b) <= SUM_SLACK * magnitude


def _fsum(col, low=None) -> float:
    """math.fsum of a column (and of its low parts `low`, a column or None), correctly rounded."""
    x = np.asarray(col.to_numpy(), dtype=np.float64)
    if low is not None:
        lo = np.asarray(low.to_numpy(), dtype=np.float64)
        x = np.concatenate([x, lo[lo != 0]])
    if len(x) and exactly_summable(x):  # every partial sum exact: numpy's sum is math.fsum's
        return float(np.sum(x)) + 0.0
    return math.fsum(x) if len(x) else 0.0


def _minmax(col) -> tuple[float | None, float | None]:
    if len(col) == 0:
        return None, None
    mm = pc.min_max(col).as_py()
    return mm["min"], mm["max"]


def totals_of(table: pa.Table) -> Totals:
    """Totals of a raw, rollup or top-K table (measure totals: events counted, values summed)."""
    names = table.column_names
    if "value" in names:
        lo, hi = _minmax(table["value"])
        return Totals(table.num_rows, table.num_rows, _fsum(table["value"]), lo, hi, abs_sum(table["value"]))
    count = int(pc.sum(table["count"]).as_py() or 0) if "count" in names else 0
    total = _fsum(table["sum"], table["sum_lo"] if "sum_lo" in names else None) if "sum" in names else 0.0
    lo = _minmax(table["min"])[0] if "min" in names else None
    hi = _minmax(table["max"])[1] if "max" in names else None
    return Totals(table.num_rows, count, total, lo, hi, abs_sum(table["sum"]) if "sum" in names else 0.0)


def abs_sum(col) -> float:
    """sum of |x| over a float column (plain float: a magnitude, not a measure)."""
    return float(np.abs(np.asarray(col.to_numpy(), np.float64)).sum()) if len(col) else 0.0


def read_totals(path: Path | str) -> Totals | None:
    """The totals recorded in a file's footer (None if the file has none)."""
    md = pq.read_metadata(path).metadata or {}
    return Totals.from_json(md[META_KEY]) if META_KEY in md else None


class VerifyFailed(RuntimeError):
    """A written file does not hold what its source holds; nothing was renamed into place."""


def writer_options(schema: pa.Schema) -> dict[str, Any]:
    """The Parquet writer's options for a table of this schema: zstd, statistics, and per column
    the encoding that pays. A dictionary only where values repeat: a raw file's `ts` (sorted, almost
    unique) is DELTA_BINARY_PACKED and its `id` plain; a value-sorted copy (key_id and measures,
    one row per key, no bucket) is plain throughout; rollups keep dictionaries (buckets, key ids and
    small counts repeat). A day's five main files (33k events, 15k keys): encoding 15.8 ms and
    546 kB, against 21.3 ms and 665 kB with a dictionary on every column; every Parquet reader we use (Arrow, DuckDB,
    Trino) decodes both encodings (Parquet format spec, Encodings.md)."""
    names = schema.names
    options: dict[str, Any] = {"compression": "zstd", "write_statistics": True}
    if "ts" in names:
        options["use_dictionary"] = [c for c in names if c not in ("ts", "id")]
        if pa.types.is_integer(schema.field("ts").type):
            options["column_encoding"] = {"ts": "DELTA_BINARY_PACKED"}
    elif "key_id" in names and "bucket" not in names:
        options["use_dictionary"] = False
    return options


def write_parquet(sink, table: pa.Table, row_groups: Iterable[int] | int) -> None:
    """Write `table` to `sink` (a path or an Arrow output stream) in row groups of `row_groups`
    rows (one size, or a list whose last size repeats) with `writer_options`."""
    with pq.ParquetWriter(sink, table.schema, **writer_options(table.schema)) as writer:
        for off, size in _row_group_slices(table.num_rows, row_groups):
            writer.write_table(table.slice(off, size), row_group_size=max(size, 1))


def write_temp(tmp: Path, table: pa.Table, row_groups: Iterable[int] | int) -> Totals:
    """Write `table` to the temporary path `tmp` with its totals in the footer."""
    totals = totals_of(table)
    metadata = {**(table.schema.metadata or {}), META_KEY: totals.to_json()}
    write_parquet(tmp, table.replace_schema_metadata(metadata), row_groups)
    return totals


def verify_temp(tmp: Path, wrote: Totals, expect: Totals, measures: Iterable[str], durable: bool = True) -> None:
    """Read `tmp` back: it must hold what was written and the source's count and sum; fsync it
    (durable=False: the caller syncs many files at once, e.g. os.sync() before its commit)."""
    got = totals_of(pq.ParquetFile(tmp).read(use_threads=False))  # small files: a thread pool costs more
    if got.rows != wrote.rows or not got.matches(wrote):
        raise VerifyFailed(f"{tmp}: read back {got}, wrote {wrote}")
    check_against(tmp, got, expect, measures)
    if durable:
        fsync_path(tmp)


def check_against(path: Path, got: Totals, expect: Totals, measures: Iterable[str]) -> None:
    """Raise VerifyFailed unless `got` has the source's event count and value sum (where held)."""
    for m in measures:
        ok = got.count == expect.count if m == "count" else close(got.sum, expect.sum, magnitude(got, expect))
        if not ok:
            raise VerifyFailed(f"{path}: {m} {getattr(got, m)} differs from the source's {getattr(expect, m)}")


def publish(staged: list[tuple[Path, pa.Table, object, tuple[str, ...]]], expect: Totals,
            step: Callable[[str], None] | None = None, durable: bool = True) -> None:
    """Atomically replace several files: write each to a temp file, verify all, then rename all.

    `staged` items are (final path, table, row groups, measures to verify against `expect`).
    `step(name)` is called after "write", "verify" and "rename" (crash points). A failure or a
    crash before the renames leaves every old file in place; each rename is atomic on its own,
    and temp files (dot-names) are never read by anyone.
    """
    step = step or (lambda name: None)
    tmps: list[tuple[Path, Path, Totals, tuple[str, ...]]] = []
    try:
        for path, table, groups, measures in staged:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_temp_files(path.parent)
            tmp = path.parent / f".tmp-{uuid.uuid4().hex}.parquet"
            tmps.append((tmp, path, write_temp(tmp, table, groups), measures))
        step("write")
        for tmp, path, wrote, measures in tmps:
            verify_temp(tmp, wrote, expect, measures, durable)
        step("verify")
        for tmp, path, _, _ in tmps:
            os.replace(tmp, path)
            if durable:
                fsync_path(path.parent)
        step("rename")
    finally:
        for tmp, *_ in tmps:
            if tmp.exists():
                tmp.unlink()


def _row_group_slices(n: int, sizes: Iterable[int] | int) -> Iterator[tuple[int, int]]:
    sizes = [sizes] if isinstance(sizes, int) else list(sizes)
    if n == 0:
        yield 0, 0
        return
    off, i = 0, 0
    while off < n:
        size = sizes[min(i, len(sizes) - 1)]
        yield off, min(size, n - off)
        off += size
        i += 1


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (so a rename into it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_temp_files(folder: Path) -> None:
    """Leftovers of a crashed write (never read by anyone) are removed before a rewrite."""
    try:
        for e in os.scandir(folder):
            if e.name.startswith(".tmp-"):
                os.unlink(e.path)
    except FileNotFoundError:
        pass


def remove_partition(path: Path) -> bool:
    """Remove a partition's file and its folder; True if a file was removed."""
    existed = path.exists()
    if existed:
        path.unlink()
    remove_temp_files(path.parent)
    try:
        path.parent.rmdir()
    except OSError:
        pass
    return existed


# ---- writing a day and its periods -------------------------------------------------------------

def write_day(layout: Layout, tenant: str, stream: str, day_start: int, raw: pa.Table, *,
              expect: Totals | None = None, step: Callable[[str], None] | None = None,
              durable: bool = True) -> Totals:
    """Write one day's raw events (RAW_SCHEMA, all inside the day) and its 1h/1d rollups.

    `expect` is the source's totals (verified against every file); `step` sees "write", "verify"
    and "rename" (see `publish`). An empty `raw` removes the day. durable=False skips the fsyncs:
    the caller makes many files durable at once (os.sync()) before it commits to them.
    Returns the raw file's totals. Weekly/monthly rollups are written by `write_period`.
    """
    if raw.num_rows and (pc.min(raw["ts"]).as_py() < day_start or pc.max(raw["ts"]).as_py() >= day_start + DAY_MS):
        raise ValueError(f"events outside day {day_name(day_start)}")
    raw = raw.select(RAW_SCHEMA.names).cast(RAW_SCHEMA)
    if not in_file_order(raw):  # export_cold's rows come sorted: no second sort and copy
        raw = raw.sort_by([("ts", "ascending"), ("key_id", "ascending")])
    expect = expect or totals_of(raw)
    if raw.num_rows == 0:
        for _, path in period_files(layout, tenant, stream, "day", day_start):
            remove_partition(path)
        return expect
    from tiers.day_rollups import day_parts  # exactly summable values: all derived tables in one numpy pass
    parts = day_parts(raw)
    hourly = parts.hourly if parts else rollup_raw(raw, G1H)
    daily = parts.daily if parts else rollup_raw(raw, G1D)
    both = ("count", "sum")
    staged = [(layout.raw_file(tenant, stream, day_start), raw, RAW_ROW_GROUP, both),
              (layout.rollup_file(tenant, stream, G1H, day_start), hourly, ROLLUP_ROW_GROUP, both),
              (layout.rollup_file(tenant, stream, G1D, day_start), daily, ROLLUP_ROW_GROUP, both)]
    for by in MEASURES:
        staged.append((layout.topk_file(tenant, stream, by, G1D, day_start), topk_copy(daily, by),
                       TOPK_ROW_GROUPS, (by,)))
    from tiers.sketch_files import day_table, partials_table  # the day's approx sketches: renamed first
    sketch = partials_table(parts.partials) if parts else day_table(raw)
    staged.insert(0, (layout.sketch_file(tenant, stream, G1D, day_start), sketch, 1, ()))
    from tiers import parquet_totals as PT  # the day's stream totals (key-less series): renamed first too
    totals = parts.totals if parts else PT.day_totals(raw)
    staged.insert(0, (totals_file(layout, tenant, stream, "day", day_start), totals, 1024, both))
    publish(staged, expect, step, durable)
    return expect


def in_file_order(raw: pa.Table) -> bool:
    """True when the rows are already sorted by (ts, key_id) (so a stable sort would keep them)."""
    if raw.num_rows < 2:
        return True
    ts, kid = np.asarray(raw["ts"].to_numpy()), np.asarray(raw["key_id"].to_numpy())
    dt = np.diff(ts)
    return bool(np.all((dt > 0) | ((dt == 0) & (np.diff(kid) >= 0))))


def period_files(layout: Layout, tenant: str, stream: str, period: str, start: int) -> list[tuple[str, Path]]:
    """(table, path) of every file of one partition (period day, week or month) in `layout`."""
    if period == "day":
        return [("events", layout.raw_file(tenant, stream, start)),
                ("rollup_1h", layout.rollup_file(tenant, stream, G1H, start)),
                ("rollup_1d", layout.rollup_file(tenant, stream, G1D, start)),
                *((topk_table(by, G1D), layout.topk_file(tenant, stream, by, G1D, start)) for by in MEASURES),
                ("sketch_1d", layout.sketch_file(tenant, stream, G1D, start)),
                (PT_TABLES[period], totals_file(layout, tenant, stream, period, start))]
    gran = PERIODS[period]
    return [(TABLE_OF[gran.name], layout.rollup_file(tenant, stream, gran, start)),
            *((topk_table(by, gran), layout.topk_file(tenant, stream, by, gran, start)) for by in MEASURES),
            ("sketch_" + gran.name, layout.sketch_file(tenant, stream, gran, start)),
            (PT_TABLES[period], totals_file(layout, tenant, stream, period, start))]


#: the stream-totals table of each partition kind (tiers/parquet_totals.py)
PT_TABLES = {"day": "totals_1h", "week": "totals_1d", "month": "totals_1d"}


def totals_file(layout: Layout, tenant: str, stream: str, period: str, start: int) -> Path:
    """The stream totals of one partition (tiers/parquet_totals.py: hourly for a day, daily for a
    week or month)."""
    return layout.partition_dir(PT_TABLES[period], tenant, stream, period,
                                period_name(PERIODS[period], start)) / FILE_NAME


def write_period(layout: Layout, tenant: str, stream: str, gran: Granularity, start: int, *,
                 durable: bool = True) -> Totals | None:
    """(Re)build the weekly or monthly rollup of the period starting at `start` from its daily files.

    Removes the period's files when none of its days has data (durable: as for write_day).
    Returns the totals written.
    """
    bucket = gran.floor(start)
    held = [d for d in period_days(gran, bucket) if layout.rollup_file(tenant, stream, G1D, d).exists()]
    dailies = [pq.ParquetFile(layout.rollup_file(tenant, stream, G1D, d)).read(use_threads=False) for d in held]
    files = [path for _, path in period_files(layout, tenant, stream, PERIOD_OF[gran.name], bucket)]
    if not dailies:
        for f in files:
            remove_partition(f)
        return None
    parts = [totals_of(t) for t in dailies]
    expect = Totals(0, sum(p.count for p in parts), math.fsum(p.sum for p in parts), None, None,
                    math.fsum(p.abs_sum or 0.0 for p in parts))
    merged = merge_rollups(dailies, bucket)
    staged = [(files[0], merged, ROLLUP_ROW_GROUP, ("count", "sum")),
              *((path, topk_copy(merged, by), TOPK_ROW_GROUPS, (by,)) for path, by in zip(files[1:], MEASURES))]
    from tiers.sketch_files import staged_period  # the period's approx sketch: its days' merged
    sketch_path, sketch = staged_period(layout, tenant, stream, gran, bucket, held)
    if sketch is not None:
        staged.insert(0, (sketch_path, sketch, 1, ()))
    from tiers.parquet_totals import period_totals  # the period's stream totals, from its days' rollups
    staged.insert(0, (files[-1], period_totals(dailies), 1024, ("count", "sum")))
    publish(staged, expect, durable=durable)
    if sketch is None:
        remove_partition(sketch_path)  # a day without a sketch (an old partition): none for the period
    return totals_of(merged)


def complete_periods(day_starts: Iterable[int], limit: int) -> set[tuple[Granularity, int]]:
    """The (granularity, start) of weekly/monthly periods touched by these days that end <= limit."""
    out = set()
    for d in day_starts:
        for g in PERIOD_GRANULARITIES:
            start = g.floor(d)
            if g.next(start) <= limit:
                out.add((g, start))
    return out


__all__ = ["Layout", "RAW_SCHEMA", "ROLLUP_SCHEMA", "Totals", "VerifyFailed", "write_day", "write_period",
           "period_files", "PERIODS", "PERIOD_OF", "publish", "complete_periods", "rollup_raw", "merge_rollups",
           "topk_copy", "read_totals",
           "day_name", "period_name", "escape", "HOUR_MS", "WEEK_MS"]
