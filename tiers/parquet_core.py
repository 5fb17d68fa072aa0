"""The Parquet read/write core shared by the cold tier (local disk) and the archive (S3).

Both tiers hold the same partitions (tiers.parquet_layout) and run the same parameterised
statements on the same engines (tiers.cold_engines). They differ only in where the partitions
live, which a `Partitions` object answers:
    cold     tiers.cold.LocalPartitions: files under a root folder, renamed into place, listed
             from the folders
    archive  tiers.archive_partitions.ArchivePartitions: objects in S3, written through a local
             staging folder, uploaded, verified and registered, listed from the registry
`ParquetCore` reads (aggregate, read_raw) and rewrites whole days (merge, replace, remove, delete
a range, then the weeks and months holding them) through it. The tiers add what is theirs: the
engine's sync, locking, error translation.
"""
from __future__ import annotations

import math

from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rollups.cover import Piece, granularity_runs
from rollups.pairsum import grouped_pair_sum
from rollups.partials import partial_schema
from rollups.timeutil import DAY_MS, G1D, G1H, G1MO, G1W, MINUTE_MS, RAW, Granularity, TimeRange
from tiers import parquet_layout as PL
from tiers.base import EVENT_SCHEMA, Group
from tiers.cold_engines import Engine, Scan
from tiers.cold_keys import KeyDictionary

#: what both tiers read: raw edges (a query range is minute-aligned), hours, days, weeks, months
GRANULARITIES = (RAW, G1H, G1D, G1W, G1MO)
#: pieces per query of aggregate_each (a row's group is key_id * SLOTS + its piece)
SLOTS = 1024
#: sparse pieces per query of aggregate_each, each its own UNION ALL branch (Trino refuses a query
#: of more than 150 stages: QUERY_HAS_TOO_MANY_STAGES)
TAGGED = 24
_TABLE = {RAW.name: "events", **PL.TABLE_OF}


class Partitions(Protocol):
    """Where one tier's partitions live. Times are epoch ms; day starts are UTC midnights."""

    layout: PL.Layout  # the paths the engine reads

    def days(self, tenant: str, stream: str, table: str = "events") -> list[int]:
        """Day starts with a partition in `table` (a day-partitioned table), ascending."""

    def periods(self, tenant: str, stream: str, gran: Granularity) -> list[int]:
        """Starts of the weeks or months (gran 1w | 1mo) with a partition, ascending."""

    def tenants_streams(self, tenant: str | None = None, stream: str | None = None) -> list[tuple[str, str]]:
        """(tenant, stream) of every stream with partitions (None: any), sorted."""

    def read_day(self, tenant: str, stream: str, day: int) -> pa.Table | None:
        """A day's raw events (RAW_SCHEMA), or None when the day has no partition."""

    def put_day(self, tenant: str, stream: str, day: int, raw: pa.Table, *, expect: PL.Totals | None = None,
                step: Callable[[str], None] | None = None) -> None:
        """Replace a day's partition with `raw` (RAW_SCHEMA; empty: remove it), atomically
        (see parquet_layout.write_day for `expect` and `step`)."""

    def put_period(self, tenant: str, stream: str, gran: Granularity, start: int) -> None:
        """Rebuild a week or month from its days' daily rollups (removed when no day is left)."""

    def changed(self, tenant: str, stream: str) -> None:
        """The stream's partitions are changing (its data version must move)."""

    def totals_files(self, tenant: str, stream: str, period: str, lo: int, hi: int) -> dict[int, object]:
        """{start: file} of the partitions of kind `period` (day | week | month) overlapping
        [lo, hi) that hold a stream-totals file (tiers/parquet_totals.py); `file` is what
        read_totals takes. Optional (with read_totals): without it, series read key-level."""

    def read_totals(self, file: object) -> pa.Table:
        """A stream-totals file's table (parquet_totals.SCHEMA)."""


class _Listed:
    """`partitions` with days and periods listed once (for the pieces of one call)."""

    def __init__(self, partitions: Partitions) -> None:
        self.partitions = partitions
        self.layout = partitions.layout
        self._listed: dict[tuple, list[int]] = {}

    def days(self, tenant: str, stream: str, table: str = "events") -> list[int]:
        key = ("day", tenant, stream, table)
        if key not in self._listed:
            self._listed[key] = self.partitions.days(tenant, stream, table)
        return self._listed[key]

    def periods(self, tenant: str, stream: str, gran: Granularity) -> list[int]:
        key = ("period", tenant, stream, gran.name)
        if key not in self._listed:
            self._listed[key] = self.partitions.periods(tenant, stream, gran)
        return self._listed[key]

    def days_in(self, tenant: str, stream: str, table: str, lo: int, hi: int) -> list[int]:
        """The days of `table` meeting [lo, hi): probed by the partitions when they can (local
        files: cost follows the range), else from the listing above."""
        if hasattr(self.partitions, "days_in") and not self._listed:
            return self.partitions.days_in(tenant, stream, table, lo, hi)
        return [d for d in self.days(tenant, stream, table) if d < hi and d + DAY_MS > lo]

    def periods_in(self, tenant: str, stream: str, gran: Granularity, lo: int, hi: int) -> list[int]:
        if hasattr(self.partitions, "periods_in") and not self._listed:
            return self.partitions.periods_in(tenant, stream, gran, lo, hi)
        return [p for p in self.periods(tenant, stream, gran) if p < hi and gran.next(p) > lo]


class ParquetCore:
    """Reads and whole-day rewrites of one tier's partitions through `engine`; keys interned by `keys`."""

    def __init__(self, partitions: Partitions, engine: Engine, keys: KeyDictionary) -> None:
        self.partitions = partitions
        self.engine = engine
        self.keys = keys
        #: the archive's row-group LRU over its disk-cache copies (tiers.archive_ranked.S3Footers),
        #: read by tiers.parquet_keys; None for cold (its files change in place)
        self.row_groups = None

    # ---- reads ---------------------------------------------------------------------------------

    def aggregate(self, tenant: str, stream: str, pieces: Sequence[Piece], group: Group,
                  key: str | None = None) -> pa.Table:
        """Partials over the pieces (the Tier contract's aggregate); sums exact as pairs: a `sum_lo`
        column (exact_partial_schema) when any low part is not 0. A series without a key reads the
        partitions' stream totals where they exist (tiers/parquet_totals.py), with either engine."""
        out = self._partials(tenant, stream, pieces, group, key)
        lo = out["sum_lo"].to_numpy()
        return out if len(lo) and lo.any() else out.drop_columns(["sum_lo"])  # as hot and warm: only when needed

    def _partials(self, tenant: str, stream: str, pieces: Sequence[Piece], group: Group,
                  key: str | None) -> pa.Table:
        holding = getattr(self.partitions, "totals_files", None)
        if group == "bucket" and key is None and holding is not None:
            from tiers import parquet_totals as PT

            fast, rest = PT.series_totals(pieces, lambda period, lo, hi: holding(tenant, stream, period, lo, hi),
                                          self.partitions.read_totals)
            if fast is not None:
                out = [fast.select(exact_partial_schema(group).names).cast(exact_partial_schema(group))]
                for g in {g for _, g in rest}:  # key-level, floored to the piece's granularity
                    out.append(PT.floored(self._aggregate(tenant, stream, [p for p, h in rest if h == g], group,
                                                          None), g))
                return pa.concat_tables(out)
        return self._aggregate(tenant, stream, pieces, group, key)

    def aggregate_each(self, tenant: str, stream: str, pieces: Sequence[Piece],
                       key: str | None = None) -> list[pa.Table]:
        """Tier.aggregate_each: the pieces of one granularity (runs that do not overlap,
        rollups.cover.disjoint_runs) are
        read SLOTS at a time in one query, grouped by (key, piece) with the exact pair sums of
        `aggregate`: pieces that cover half their hull or more as one scan of the hull, each row
        joined to the piece holding its time (a VALUES list; DuckDB and Trino both range-join
        it); sparser ones (the raw edges of slices) each scan their own files, tagged. A trending window's 300 cold slices: one query, not 300
        (DuckDB answers a small query in ~10 ms)."""
        out: list[pa.Table | None] = [None] * len(pieces)
        runs = granularity_runs(pieces)
        for idx in runs:  # pieces of one granularity, in time order, not overlapping
            for a in range(0, len(idx), SLOTS):
                chunk = idx[a:a + SLOTS]
                slots = [(pieces[i].range.start, pieces[i].range.end) for i in chunk]
                hull = Piece(pieces[chunk[0]].granularity, TimeRange(slots[0][0], slots[-1][1]))
                if 2 * sum(hi - lo for lo, hi in slots) >= hull.range.end - hull.range.start:  # dense: one scan
                    t = self._aggregate(tenant, stream, [hull], "key", key, slots=slots)
                else:  # sparse (the raw and minute edges of slices): each piece's own files, TAGGED a query
                    tagged = []
                    for b in range(0, len(chunk), TAGGED):
                        part = self._aggregate(tenant, stream, [pieces[i] for i in chunk[b:b + TAGGED]], "key", key,
                                               slots="tagged")
                        if "slot" in part.column_names:
                            tagged.append(part.set_column(part.schema.get_field_index("slot"), "slot",
                                                          pc.add(part["slot"], b)))
                    if not tagged:
                        continue
                    t = pa.concat_tables(tagged)
                if "slot" not in t.column_names:  # nothing in the hull
                    continue
                j = t["slot"].to_numpy()
                order = np.argsort(j, kind="stable")
                t, j = t.drop_columns(["slot"]).take(pa.array(order)), j[order]
                cuts = np.searchsorted(j, np.arange(len(chunk) + 1))
                for n, i in enumerate(chunk):
                    part = t.slice(cuts[n], cuts[n + 1] - cuts[n])
                    lo = part["sum_lo"].to_numpy()
                    out[i] = part if len(lo) and lo.any() else part.drop_columns(["sum_lo"])
        return [t if t is not None else exact_partial_schema("key").empty_table().drop_columns(["sum_lo"])
                for t in out]

    def _aggregate(self, tenant: str, stream: str, pieces: Sequence[Piece], group: Group,
                   key: str | None, slots: Sequence[tuple[int, int]] | str | None = None) -> pa.Table:
        """Partials over the pieces; with `slots` (group "key"), per key and slot (a `slot`
        column): a list of [lo, hi) with one piece, their hull: a row's slot is the one holding its
        time; "tagged": a row's slot is the index of its piece."""
        key_id = None
        if key is not None:
            key_id = int(self.keys.ids(tenant, stream, [key], create=False)[0])
            if key_id < 0:
                return exact_partial_schema(group).empty_table()
        subs, params = [], []
        listed = _Listed(self.partitions)  # a calendar series passes dozens of pieces: list once
        direct: list[pa.Table] = []
        fs = getattr(self.engine, "pa_fs", None) if self.engine.name == "duckdb" else None
        for n, piece in enumerate(pieces):
            scan = self._scan(tenant, stream, piece.granularity, piece.range, listed)
            if scan is None:
                continue
            if group == "bucket" and piece.granularity.is_raw and slots is None and scan.files and (
                    _local(scan.files) or fs is not None):
                direct.append(raw_minutes(scan.files, piece.range, key_id, fs))  # a series' raw edge
                continue
            src, src_params = self.engine.source(scan, tenant, stream)
            col = "ts" if piece.granularity.is_raw else "bucket"
            where = f"{col} >= ? AND {col} < ?" + (" AND key_id = ?" if key_id is not None else "")
            p = [*src_params, piece.range.start, piece.range.end] + ([key_id] if key_id is not None else [])
            if slots is None:
                g = ("key_id" if group == "key" else col if not piece.granularity.is_raw else
                     f"ts - (((ts % {MINUTE_MS}) + {MINUTE_MS}) % {MINUTE_MS})")  # raw: its minute
                subs.append(_rows_sql(f"{g} AS g", piece.granularity.is_raw, src + where))
            elif slots == "tagged":  # each piece its own slot: g = key_id * SLOTS + its index
                subs.append(_rows_sql(f"CAST(key_id AS BIGINT) * {SLOTS} + {n} AS g", piece.granularity.is_raw,
                                      src + where))
            else:  # one hull: g = key_id * SLOTS + the slot holding the row's time (ids far below 2**53)
                rows = _rows_sql(f"key_id, {col} AS t_", piece.granularity.is_raw, src + where)
                values = ", ".join(f"({n}, {int(lo)}, {int(hi)})" for n, (lo, hi) in enumerate(slots))
                join = ("ASOF JOIN", "ON r.t_ >= s_.lo WHERE r.t_ < s_.hi") if self.engine.name == "duckdb" else (
                    "JOIN", "ON r.t_ >= s_.lo AND r.t_ < s_.hi")  # DuckDB: a sort-merge on the start
                subs.append(f'SELECT CAST(r.key_id AS BIGINT) * {SLOTS} + s_.n AS g, r."count", r."sum", r."min", '
                            f'r."max", r.sum_lo FROM ({rows}) r {join[0]} (VALUES {values}) AS s_(n, lo, hi) {join[1]}')
            params.extend(p)
        direct = [t for t in direct if t.num_rows]
        if not subs:
            return pa.concat_tables(direct) if direct else exact_partial_schema(group).empty_table()
        t = self.engine.query(exact_sums_sql(" UNION ALL ".join(subs), self.engine.name), params)
        if t.num_rows == 0:
            return pa.concat_tables(direct) if direct else exact_partial_schema(group).empty_table()
        gcol = pa.array(t["g"].to_pylist() if isinstance(t["g"], list) else t["g"], pa.int64())
        slot = None
        if slots is not None:
            g = gcol.to_numpy()
            gcol, slot = pa.array(g // SLOTS), pa.array(g % SLOTS)
        if group == "key":
            gcol = self.keys.keys(tenant, stream, gcol)
        hi, lo = fold_exact_sums(t)
        out = pa.table({group: gcol, "count": t["count"], "sum": pa.array(hi), "min": t["min"], "max": t["max"],
                        "sum_lo": pa.array(lo)}).cast(exact_partial_schema(group))
        if direct:
            return pa.concat_tables([out, *direct])
        return out if slot is None else out.append_column("slot", slot)

    def _scan(self, tenant: str, stream: str, gran: Granularity, rng: TimeRange,
              parts: Partitions | None = None) -> Scan | None:
        if rng.empty:
            return None
        table = _TABLE[gran.name]
        parts = parts or _Listed(self.partitions)
        if gran in (RAW, G1H, G1D):
            column, starts = "day", parts.days_in(tenant, stream, table, rng.start, rng.end)
        else:
            column, starts = PL.partition_column(gran), parts.periods_in(tenant, stream, gran, rng.start, rng.end)
        if not starts:
            return None
        pgran = G1D if column == "day" else gran
        packed = getattr(getattr(parts, "partitions", parts), "scan_files", None)  # archive packs
        if column == "day" and packed is not None:
            listed, lowest = packed(table, tenant, stream, starts)
            return Scan(table, column, PL.period_name(pgran, lowest), PL.period_name(pgran, starts[-1]),
                        tuple(listed))
        by_manifest = getattr(getattr(parts, "partitions", parts), "period_files", None)  # archive: manifest keys
        if column != "day" and by_manifest is not None:
            files = tuple(by_manifest(table, tenant, stream, column, starts))
        else:
            files = tuple(str(parts.layout.partition_dir(table, tenant, stream, column, PL.period_name(pgran, s))
                              / PL.FILE_NAME) for s in starts)
        return Scan(table, column, PL.period_name(pgran, starts[0]), PL.period_name(pgran, starts[-1]), files)

    def read_raw(self, tenant: str, stream: str, rng: TimeRange) -> Iterator[pa.RecordBatch]:
        """The raw events in rng as EVENT_SCHEMA batches, by ts (the Tier contract's read_raw)."""
        for day in self.partitions.days(tenant, stream):
            if not (day < rng.end and day + DAY_MS > rng.start):
                continue
            scan = self._scan(tenant, stream, RAW, TimeRange(max(day, rng.start), min(day + DAY_MS, rng.end)))
            if scan is None:
                continue
            src, p = self.engine.source(scan, tenant, stream)
            t = self.engine.query(f"SELECT ts, key, value, id FROM {src}ts >= ? AND ts < ? ORDER BY ts, key_id",
                                  [*p, max(day, rng.start), min(day + DAY_MS, rng.end)])
            if t.num_rows == 0:
                continue
            out = pa.table({"stream": pa.array([stream] * t.num_rows, pa.string()), "key": t["key"],
                            "ts": t["ts"], "value": t["value"], "id": t["id"]}).cast(EVENT_SCHEMA)
            yield from out.to_batches()

    # ---- whole-day rewrites --------------------------------------------------------------------

    def write(self, tenant: str, events: pa.Table) -> int:
        """Merge a batch (EVENT_SCHEMA, any streams) into its days; returns the events stored."""
        events = events.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)
        stored = 0
        for stream in pc.unique(events["stream"]).to_pylist():
            batch = events.filter(pc.equal(events["stream"], stream))
            stored += self.replace_days(tenant, stream, batch, merge=True)
        return stored

    def replace_days(self, tenant: str, stream: str, batch: pa.Table, *, merge: bool,
                     progress: Callable[[int], None] | None = None) -> int:
        """Write `batch` (EVENT_SCHEMA, one stream) as whole day partitions, then their weeks/months.

        merge=True keeps each day's existing rows and adds the batch's (events whose non-null id
        is already stored in that day are skipped); merge=False replaces the days outright.
        `progress(n)` is called after each day with its batch rows. Returns the events stored.
        """
        if batch.num_rows == 0:
            return 0
        ids = self.keys.ids(tenant, stream, batch["key"].to_pylist())
        days = PL.floor_col(batch["ts"], DAY_MS)
        stored, touched = 0, []
        for day in sorted(pc.unique(days).to_pylist()):
            mask = pc.equal(days, day)
            rows = batch.filter(mask)
            raw = PL.raw_table(rows["ts"], ids[pc.indices_nonzero(mask).to_numpy()], rows["key"], rows["value"],
                               rows["id"])
            old = self.partitions.read_day(tenant, stream, day) if merge else None
            if old is not None:
                raw = _unseen(raw, old)
            stored += raw.num_rows
            self.partitions.put_day(tenant, stream, day,
                                    raw if old is None else pa.concat_tables([old, raw.cast(PL.RAW_SCHEMA)]))
            touched.append(day)
            if progress is not None:
                progress(rows.num_rows)
        self.rebuild_periods(tenant, stream, touched)
        return stored

    def write_day(self, tenant: str, stream: str, day: int, events: pa.Table, *,
                  expect: PL.Totals | None = None, step: Callable[[str], None] | None = None,
                  periods: bool = True) -> None:
        """Replace one day of one stream with `events` (EVENT_SCHEMA) and rebuild its week and month
        (periods=False: the caller calls rebuild_periods once for many days)."""
        ids = self.keys.ids(tenant, stream, events["key"].to_pylist())
        raw = PL.raw_table(events["ts"], ids, events["key"], events["value"], events["id"])
        self.partitions.put_day(tenant, stream, day, raw, expect=expect, step=step)
        if periods:
            self.rebuild_periods(tenant, stream, [day])

    def remove_day(self, tenant: str, stream: str, day: int) -> None:
        """Remove one day of one stream and rebuild its week and month."""
        self.partitions.put_day(tenant, stream, day, PL.RAW_SCHEMA.empty_table())
        self.rebuild_periods(tenant, stream, [day])

    def delete_range(self, tenant: str | None, stream: str | None, rng: TimeRange) -> int:
        """Delete the events in rng (None: every tenant / stream) by rewriting their days; returns
        the events deleted."""
        deleted = 0
        for t, s in self.partitions.tenants_streams(tenant, stream):
            touched = []
            for day in self.partitions.days(t, s):
                if not (day < rng.end and day + DAY_MS > rng.start):
                    continue
                old = self.partitions.read_day(t, s, day)
                if old is None:
                    continue
                inside = pc.and_(pc.greater_equal(old["ts"], rng.start), pc.less(old["ts"], rng.end))
                n = int(pc.sum(inside).as_py() or 0)
                if n:
                    self.partitions.put_day(t, s, day, old.filter(pc.invert(inside)))
                    deleted += n
                    touched.append(day)
            if touched:
                self.rebuild_periods(t, s, touched)
        return deleted

    def rebuild_periods(self, tenant: str, stream: str, days: Sequence[int]) -> None:
        """Rebuild the weekly and monthly rollups containing these days."""
        self.partitions.changed(tenant, stream)
        for gran, start in sorted({(g, g.floor(d)) for d in days for g in PL.PERIOD_GRANULARITIES},
                                  key=lambda p: (p[0].name, p[1])):
            self.partitions.put_period(tenant, stream, gran, start)
        self.partitions.changed(tenant, stream)


def _rows_sql(head: str, raw: bool, source: str) -> str:
    """One sub-select of `_aggregate`'s union: `head` (the group columns) then count, sum, min, max
    and sum_lo — per event for raw files (each value a term of the exact pair sums), the rollup's
    own partials otherwise. `source` is the engine's FROM text with its WHERE condition."""
    cols = ('1 AS "count", value AS "sum", value AS "min", value AS "max", 0.0E0 AS sum_lo' if raw else
            '"count", "sum", "min", "max", coalesce(sum_lo, 0.0E0) AS sum_lo')
    return f"SELECT {head}, {cols} FROM {source}"


def _local(files: Sequence[str]) -> bool:
    """Whether every file is a local path (the archive names objects not on disk s3://...)."""
    return bool(files) and not any("://" in f for f in files)


def raw_minutes(files: Sequence[str], rng: TimeRange, key_id: int | None = None, fs=None) -> pa.Table:
    """Per-minute partials (exact_partial_schema("bucket")) of the raw events in `rng` (of one key
    id) read from raw files with pyarrow (s3:// ones through `fs`, the archive's file system), no
    engine: a series' raw edge (tens of events) cost DuckDB 15-30 ms to plan and run the
    exact-sums statement, this 2-4 ms from disk. Sums are normalised pairs
    (parquet_totals.bucket_totals, as the totals files)."""
    import pyarrow.dataset as ds

    from tiers import parquet_totals as PT
    from tiers.parquet_keys import _dataset

    where = (ds.field("ts") >= rng.start) & (ds.field("ts") < rng.end)
    if key_id is not None:
        where = where & (ds.field("key_id") == key_id)
    t = _dataset(list(files), fs, None).to_table(columns=["ts", "value"], filter=where)
    return PT.bucket_totals(t, MINUTE_MS).cast(exact_partial_schema("bucket"))


def exact_partial_schema(group: Group) -> pa.Schema:
    """A partial table's schema with `sum_lo`, its sums' low parts (sum + sum_lo is the exact sum of
    the values: rollups.pairsum), as aggregate returns it (the router merges the pairs on)."""
    return partial_schema(group).append(pa.field("sum_lo", pa.float64()))


#: the fixed-point classes of exact_sums_sql: (scale 2**s, bound): a term that is a multiple of 2**-s
#: and below the bound in magnitude is summed as the integer term * 2**s (< 2**100: room for 2**27
#: terms in 127 bits); coarse first, so 1e15 + 0.125 is in the first, 23.45 in the second and a
#: pair's low part (~1e-15 of its high part) in the third
GRID_CLASSES = ((8, 2.0 ** 92), (60, 2.0 ** 40), (112, 2.0 ** -12))


def exact_sums_sql(union: str, engine: str) -> str:
    """The statement grouping `union` (rows g, count, sum, min, max, sum_lo) by g with exact sums.

    Engines sum floats in some order (DuckDB's fsum is Kahan's, Trino's sum plain), which loses
    a low part (1e15 + 0.125 - 0.025 - 1e15 is 0.125). Instead every term (a row's sum and its
    sum_lo) of a GRID_CLASSES class is summed exactly as a 128-bit integer (HUGEINT, Trino
    DECIMAL(38, 0)), each class's total returned as three doubles whose sum it is exactly
    (`c<i>_h`, `c<i>_m`, `c<i>_l`); the rare terms of no class (magnitudes below ~2**-60 or above
    2**92, NaN, infinities) come back as lists (`xs`, `ls`). fold_exact_sums adds it all as pairs.
    Per g also count, min, max."""
    big = "HUGEINT" if engine == "duckdb" else "DECIMAL(38, 0)"
    lists = "list" if engine == "duckdb" else "array_agg"

    def klass(col: str) -> str:
        whens = " ".join(f"WHEN {col} * {2.0 ** s!r} = round({col} * {2.0 ** s!r}) AND abs({col}) < {b!r} THEN {i}"
                         for i, (s, b) in enumerate(GRID_CLASSES))
        return f"CASE WHEN {col} = 0 THEN 0 {whens} ELSE {len(GRID_CLASSES)} END"  # most low parts are 0

    def fixed(col: str, i: int) -> str:
        scaled = f"round({col} * {2.0 ** GRID_CLASSES[i][0]!r})"  # an integer below 2**100, exact in a double
        if engine == "duckdb":
            return f"CASE WHEN {col}_c = {i} THEN CAST({scaled} AS {big}) ELSE 0 END"
        # Trino casts a DOUBLE to DECIMAL through its shortest decimal text, exact only below 2**53
        # (seen: 256000000000000032 became ...030): the integer as two doubles below 2**53, each cast
        top = f"round({scaled} / {2.0 ** 48!r})"
        return (f"CASE WHEN {col}_c = {i} THEN CAST({top} AS {big}) * {2 ** 48} "
                f"+ CAST({scaled} - {top} * {2.0 ** 48!r} AS {big}) ELSE 0 END")

    classed = (f'SELECT g, "count", "min", "max", "sum" AS x, sum_lo AS y, {klass(chr(34) + "sum" + chr(34))} AS x_c, '
               f"{klass('sum_lo')} AS y_c FROM ({union}) AS parts")
    sums = ", ".join(f"sum({fixed('x', i)} + {fixed('y', i)}) AS c{i}" for i in range(len(GRID_CLASSES)))
    none = len(GRID_CLASSES)
    grouped = (f'SELECT g, CAST(sum("count") AS BIGINT) AS "count", min("min") AS "min", max("max") AS "max", '
               f"{sums}, {lists}(x) FILTER (WHERE x_c = {none}) AS xs, "
               f"{lists}(y) FILTER (WHERE y_c = {none} AND y <> 0) AS ls FROM ({classed}) AS classed GROUP BY g")
    if engine != "duckdb":  # Trino's CAST(DOUBLE AS DECIMAL) is not exact for large values (seen: off by
        # 10 units at 7.68e17): the 128-bit class totals are split into doubles in fold_exact_sums
        return f'SELECT g, "count", "min", "max", {", ".join(f"c{i}" for i in range(none))}, xs, ls FROM ({grouped}) AS grouped'
    highs = ", ".join(f"c{i}, CAST(CAST(c{i} AS DOUBLE) AS {big}) AS c{i}_hi" for i in range(none))
    split = f'SELECT g, "count", "min", "max", xs, ls, {highs} FROM ({grouped}) AS grouped'
    mids = ", ".join(f"c{i}_hi, c{i} - c{i}_hi AS c{i}_r, CAST(CAST(c{i} - c{i}_hi AS DOUBLE) AS {big}) AS c{i}_mi"
                     for i in range(none))
    split2 = f'SELECT g, "count", "min", "max", xs, ls, {mids} FROM ({split}) AS split'
    outs = ", ".join(f"CAST(c{i}_hi AS DOUBLE) * {2.0 ** -s!r} AS c{i}_h, CAST(c{i}_mi AS DOUBLE) * {2.0 ** -s!r} AS c{i}_m, "
                     f"CAST(c{i}_r - c{i}_mi AS DOUBLE) * {2.0 ** -s!r} AS c{i}_l"
                     for i, (s, _) in enumerate(GRID_CLASSES))
    return f'SELECT g, "count", "min", "max", {outs}, xs, ls FROM ({split2}) AS split2'


def fold_exact_sums(t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Per row of an exact_sums_sql result, its exact sum as a normalised pair (hi, lo) (float64
    arrays; rollups.pairsum over the classes' doubles and the listed terms; vectorised)."""
    n = t.num_rows
    groups, terms = [], []
    for i, (shift, _) in enumerate(GRID_CLASSES):
        if f"c{i}" in t.column_names and f"c{i}_h" not in t.column_names:  # Trino: exact integers (Decimal)
            col = t[f"c{i}"]
            for at, part in _split_exact(col if isinstance(col, list) else col.to_pylist(), shift):
                groups.append(at)
                terms.append(part)
    for name in (f"c{i}_{part}" for i in range(len(GRID_CLASSES)) for part in "hml" if f"c{i}_h" in t.column_names):
        col = pa.array(t[name]) if isinstance(t[name], list) else t[name]
        x = np.asarray(pc.fill_null(pc.cast(col, pa.float64()), 0.0).to_numpy(), np.float64)
        at = np.flatnonzero(x)
        groups.append(at)
        terms.append(x[at])
    for c in ("xs", "ls"):
        col = t[c].combine_chunks() if isinstance(t[c], pa.ChunkedArray) else t[c]
        if pa.types.is_null(col.type) or col.null_count == len(col):
            continue
        groups.append(np.asarray(pc.list_parent_indices(col).to_numpy(), np.int64))
        terms.append(np.asarray(pc.list_flatten(col).cast(pa.float64()).to_numpy(zero_copy_only=False), np.float64))
    return grouped_pair_sum(np.concatenate(groups), np.concatenate(terms), n)


def _split_exact(values: list, shift: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Integers v (None: 0; below 2**127) as three doubles each whose sum is v * 2**-shift exactly:
    (rows, terms) per part. Python ints: float(v) rounds correctly, and each remainder is exact."""
    rows, parts = [], ([], [], [])
    for j, v in enumerate(values):
        if v is None or v == 0:
            continue
        v = int(v)
        a = float(v)
        r = v - int(a)
        b = float(r)
        rows.append(j)
        for out, x in zip(parts, (a, b, float(r - int(b)))):
            out.append(math.ldexp(x, -shift))
    at = np.asarray(rows, np.int64)
    return [(at, np.asarray(p, np.float64)) for p in parts]


def _unseen(raw: pa.Table, old: pa.Table) -> pa.Table:
    """The rows of `raw` whose id is null or not among `old`'s ids."""
    known = old["id"].drop_null()
    if not len(known):
        return raw
    return raw.filter(pc.or_(pc.is_null(raw["id"]), pc.invert(pc.is_in(raw["id"], value_set=known))))


__all__ = ["ParquetCore", "Partitions", "GRANULARITIES"]
