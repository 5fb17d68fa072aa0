"""The cold tier: Parquet files (tiers.parquet_layout) queried by Trino or by embedded DuckDB.

`ColdTier` implements the Tier contract over one root folder (settings.cold_dir). Both engines
run the same parameterised statements (tiers.cold_engines); `settings.cold_engine` picks one.
Granularities: RAW, 1h, 1d, 1w, 1mo. A query range is minute-aligned, so its sub-hour edges are
read raw: a 1m rollup would hold almost as many rows as the raw events of a cold day (few events
per key per minute), while a raw edge of less than an hour reads a couple of row groups.

`top_k` answers exact top-K over long ranges from the heads of value-sorted segments
(tiers.cold_topk, the threshold algorithm) and falls back to the full merge through the engine.
Writes (`write`, `delete_range`, and `export_cold` / `tierstore import` through `write_day`)
replace whole day partitions atomically and rebuild the weeks and months that contain them.
"""
from __future__ import annotations

import os
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rollups.cover import Piece
from rollups.errors import TierUnavailable
from rollups.partials import empty_partials, merge_partials, partial_schema
from rollups.timeutil import DAY_MS, G1D, G1H, G1MO, G1W, MINUTE_MS, RAW, Granularity, TimeRange
from rollups.topk import Ranked
from rollups.topk import top_k as exact_top_k
from tiers import parquet_layout as PL
from tiers.base import EVENT_SCHEMA, Group, Tier
from tiers.cold_engines import TRINO_TABLES, DuckDBEngine, Engine, Scan, TrinoEngine
from tiers.cold_keys import KeyDictionary, PgKeyDictionary
from tiers.cold_topk import FooterCache, SortedSegment, tput_top_k

GRANULARITIES = (RAW, G1H, G1D, G1W, G1MO)
_TABLE = {RAW.name: "events", **PL.TABLE_OF}


def _floor_day(t: int) -> int:
    return t - t % DAY_MS


class ColdTier(Tier):
    """Parquet under `root` (default settings.cold_dir), engine `engine` (default settings.cold_engine).

    `keys` is the key dictionary (default: PostgreSQL at settings.postgres_url). For Trino the
    root must lie under settings.cold_dir (Trino's local file system root); its tables live in
    schema `trino_schema` of the `hive` catalog.
    """

    name = "cold"

    def __init__(self, settings, *, keys: KeyDictionary | None = None, root: Path | None = None,
                 engine: str | None = None, trino_schema: str = "tierstore") -> None:
        self.root = Path(root or settings.cold_dir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.layout = PL.Layout(self.root)
        self._own_keys = keys is None
        self.keys = keys if keys is not None else PgKeyDictionary(settings.postgres_url)
        self.engine_name = engine or settings.cold_engine
        self.engine: Engine
        if self.engine_name == "duckdb":
            self.engine = DuckDBEngine(self.root)
        elif self.engine_name == "trino":
            rel = self.root.relative_to(Path(settings.cold_dir).resolve()).as_posix()
            location = "local:///" + ("" if rel == "." else rel)
            self.engine = TrinoEngine(settings.trino_url, trino_schema, location,
                                      timeout=settings.query_timeout / 1000)
        else:
            raise ValueError(f"cold_engine must be duckdb or trino, not {self.engine_name!r}")
        self._footers = FooterCache()

    # ---- contract -----------------------------------------------------------------------------

    @property
    def granularities(self) -> Sequence[Granularity]:
        return GRANULARITIES

    def write(self, tenant: str, events: pa.Table) -> int:
        events = events.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)
        stored = 0
        for stream in pc.unique(events["stream"]).to_pylist():
            batch = events.filter(pc.equal(events["stream"], stream))
            stored += self.replace_days(tenant, stream, batch, merge=True)
        return stored

    def replace_days(self, tenant: str, stream: str, batch: pa.Table, *, merge: bool,
                     progress=None) -> int:
        """Write `batch` (EVENT_SCHEMA, one stream) as whole day partitions, then their weeks/months.

        merge=True keeps each day's existing rows and adds the batch's (events whose non-null id
        is already stored in that day are skipped); merge=False replaces the days outright.
        `progress(n)` is called after each day. Returns the events stored.
        """
        if batch.num_rows == 0:
            return 0
        ids = self.keys.ids(tenant, stream, batch["key"].to_pylist())
        days = pa.array(_floor_days(batch["ts"]))
        stored, touched = 0, []
        for day in sorted(pc.unique(days).to_pylist()):
            rows = batch.filter(pc.equal(days, day))
            raw = PL.raw_table(rows["ts"], ids[pc.indices_nonzero(pc.equal(days, day)).to_numpy()],
                               rows["key"], rows["value"], rows["id"])
            if merge:
                raw, added = self._merge_day(tenant, stream, day, raw)
            else:
                added = raw.num_rows
            PL.write_day(self.layout, tenant, stream, day, raw)
            stored += added
            touched.append(day)
            if progress is not None:
                progress(rows.num_rows)
        self.rebuild_periods(tenant, stream, touched)
        self.sync()
        return stored

    def write_day(self, tenant: str, stream: str, day: int, events: pa.Table, *,
                  expect: PL.Totals | None = None, step=None) -> None:
        """Replace one day of one stream with `events` (EVENT_SCHEMA) and rebuild its week and month.

        The files are verified against `expect` (the source's count and sum) before any rename;
        `step` sees "write", "verify", "rename" (crash points). Call `sync` afterwards.
        """
        ids = self.keys.ids(tenant, stream, events["key"].to_pylist())
        raw = PL.raw_table(events["ts"], ids, events["key"], events["value"], events["id"])
        PL.write_day(self.layout, tenant, stream, day, raw, expect=expect, step=step)
        self.rebuild_periods(tenant, stream, [day])

    def remove_day(self, tenant: str, stream: str, day: int) -> None:
        """Remove one day of one stream (all its files) and rebuild its week and month."""
        PL.write_day(self.layout, tenant, stream, day, PL.RAW_SCHEMA.empty_table())
        self.rebuild_periods(tenant, stream, [day])

    def _merge_day(self, tenant: str, stream: str, day: int, raw: pa.Table) -> tuple[pa.Table, int]:
        path = self.layout.raw_file(tenant, stream, day)
        if not path.exists():
            return raw, raw.num_rows
        old = pq.read_table(path)
        known = old["id"].drop_null()
        if len(known):
            fresh = pc.or_(pc.is_null(raw["id"]), pc.invert(pc.is_in(raw["id"], value_set=known)))
            raw = raw.filter(fresh)
        return pa.concat_tables([old, raw.cast(PL.RAW_SCHEMA)]), raw.num_rows

    def rebuild_periods(self, tenant: str, stream: str, days: Sequence[int]) -> None:
        """Rebuild the weekly and monthly rollups containing these days (call `sync` afterwards)."""
        self._bump_version(tenant, stream)
        for gran, start in sorted({(g, g.floor(d)) for d in days for g in PL.PERIOD_GRANULARITIES},
                                  key=lambda p: (p[0].name, p[1])):
            PL.write_period(self.layout, tenant, stream, gran, start)
        self._bump_version(tenant, stream)

    def data_version(self, tenant: str, stream: str) -> str:
        """Changes whenever this tier's files of the stream change (the router's cache key)."""
        try:
            return self._version_file(tenant, stream).read_text()
        except FileNotFoundError:
            return "0"

    def _bump_version(self, tenant: str, stream: str) -> None:
        path = self._version_file(tenant, stream)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
        tmp.write_text(uuid.uuid4().hex)
        os.replace(tmp, path)

    def _version_file(self, tenant: str, stream: str) -> Path:
        return self.root / "_versions" / f"tenant={PL.escape(tenant)}" / f"stream={PL.escape(stream)}"

    def sync(self) -> None:
        """Let the engine see the partitions as they are on disk (Trino: its metastore)."""
        self.engine.sync_partitions(TRINO_TABLES)

    def aggregate(self, tenant: str, stream: str, pieces: Sequence[Piece], group: Group,
                  key: str | None = None) -> pa.Table:
        key_id = None
        if key is not None:
            key_id = int(self.keys.ids(tenant, stream, [key], create=False)[0])
            if key_id < 0:
                return empty_partials(group)
        subs, params = [], []
        for piece in pieces:
            scan = self._scan(tenant, stream, piece.granularity, piece.range)
            if scan is None:
                continue
            src, src_params = self.engine.source(scan, tenant, stream)
            col = "ts" if piece.granularity.is_raw else "bucket"
            where = f"{col} >= ? AND {col} < ?" + (" AND key_id = ?" if key_id is not None else "")
            p = [*src_params, piece.range.start, piece.range.end] + ([key_id] if key_id is not None else [])
            if piece.granularity.is_raw:
                g = "key_id" if group == "key" else f"ts - (((ts % {MINUTE_MS}) + {MINUTE_MS}) % {MINUTE_MS})"
                subs.append(f'SELECT {g} AS g, count(*) AS "count", sum(value) AS "sum", min(value) AS "min", '
                            f'max(value) AS "max" FROM {src}{where} GROUP BY 1')
            else:
                g = "key_id" if group == "key" else "bucket"
                subs.append(f'SELECT {g} AS g, "count", "sum", "min", "max" FROM {src}{where}')
            params.extend(p)
        if not subs:
            return empty_partials(group)
        sql = ('SELECT g, CAST(sum("count") AS BIGINT) AS "count", CAST(sum("sum") AS DOUBLE) AS "sum", '
               'min("min") AS "min", max("max") AS "max" FROM (' + " UNION ALL ".join(subs) + ") AS parts GROUP BY g")
        t = self.engine.query(sql, params)
        if t.num_rows == 0:
            return empty_partials(group)
        gcol = pa.array(t["g"].to_pylist() if isinstance(t["g"], list) else t["g"], pa.int64())
        if group == "key":
            gcol = self.keys.keys(tenant, stream, gcol)
        return pa.table({group: gcol, "count": t["count"], "sum": t["sum"], "min": t["min"], "max": t["max"]}
                        ).cast(partial_schema(group))

    def _scan(self, tenant: str, stream: str, gran: Granularity, rng: TimeRange) -> Scan | None:
        if rng.empty:
            return None
        table = _TABLE[gran.name]
        if gran in (RAW, G1H, G1D):
            column, starts = "day", [d for d in self.layout.days(tenant, stream, table)
                                     if d < rng.end and d + DAY_MS > rng.start]
        else:
            column, starts = PL.partition_column(gran), [p for p in self.layout.periods(tenant, stream, gran)
                                                         if p < rng.end and gran.next(p) > rng.start]
        if not starts:
            return None
        pgran = G1D if column == "day" else gran
        files = tuple(str(self.layout.partition_dir(table, tenant, stream, column, PL.period_name(pgran, s)) / PL.FILE_NAME)
                      for s in starts)
        return Scan(table, column, PL.period_name(pgran, starts[0]), PL.period_name(pgran, starts[-1]), files)

    def read_raw(self, tenant: str, stream: str, rng: TimeRange) -> Iterator[pa.RecordBatch]:
        for day in self.layout.days(tenant, stream):
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

    def delete_range(self, tenant: str | None, stream: str | None, rng: TimeRange) -> int:
        deleted = 0
        for t, s in self._tenant_streams(tenant, stream):
            touched = []
            for day in self.layout.days(t, s):
                if not (day < rng.end and day + DAY_MS > rng.start):
                    continue
                path = self.layout.raw_file(t, s, day)
                old = pq.read_table(path)
                inside = pc.and_(pc.greater_equal(old["ts"], rng.start), pc.less(old["ts"], rng.end))
                n = int(pc.sum(inside).as_py() or 0)
                if n:
                    PL.write_day(self.layout, t, s, day, old.filter(pc.invert(inside)))
                    deleted += n
                    touched.append(day)
            if touched:
                self.rebuild_periods(t, s, touched)
        self.sync()
        return deleted

    def _tenant_streams(self, tenant: str | None, stream: str | None) -> list[tuple[str, str]]:
        out = []
        for t, s, _ in self.layout.tenants_streams():
            t, s = unquote(t), unquote(s)
            if (tenant is None or t == tenant) and (stream is None or s == stream):
                out.append((t, s))
        return out

    def streams(self, tenant: str) -> list[str]:
        return sorted(s for t, s in self._tenant_streams(tenant, None) if self.layout.days(t, s))

    def health(self) -> None:
        self.engine.health()

    def close(self) -> None:
        self.engine.close()
        if self._own_keys and hasattr(self.keys, "close"):
            self.keys.close()

    # ---- fast exact top-K ---------------------------------------------------------------------

    def top_k(self, tenant: str, stream: str, pieces: Sequence[Piece], k: int, by: str,
              stats: dict | None = None) -> list[Ranked]:
        """Exact top-k keys by `by` (count | sum) over the pieces; ties by key ascending.

        Threshold algorithm over the value-sorted day/week/month segments, hours and raw edges
        aggregated whole; the full merge through the engine when it cannot prove the answer
        cheaply (negative sums, flat data). Equal to rollups.topk.top_k over `aggregate`.
        `stats`, if given, receives {"method": "tput" | "merge", "segments": n}.
        """
        if by not in PL.MEASURES:
            raise ValueError(f"by must be count or sum, not {by!r}")
        try:
            segments, complete = self._segments(tenant, stream, pieces, by)
            keys_of = lambda ids: self.keys.keys(tenant, stream, ids).to_pylist()  # noqa: E731
            result = tput_top_k(segments, complete, k, keys_of)
        except OSError as exc:
            raise TierUnavailable("cold", f"The cold tier cannot read its files: {exc}") from exc
        if stats is not None:
            stats.update(method="tput" if result is not None else "merge", segments=len(segments))
        if result is not None:
            return result
        merged = merge_partials([self.aggregate(tenant, stream, pieces, "key")], "key")
        return exact_top_k(merged, k, by)

    def _segments(self, tenant, stream, pieces, by):
        segments: list[SortedSegment] = []
        c_ids, c_vals = [], []
        for piece in pieces:
            g, rng = piece.granularity, piece.range
            if g in (G1D, G1W, G1MO):
                starts = (self.layout.days(tenant, stream, "rollup_1d") if g == G1D
                          else self.layout.periods(tenant, stream, g))
                for s in starts:
                    if not (s >= rng.start and g.next(s) <= rng.end):
                        continue
                    look = self._footers.get(str(self.layout.rollup_file(tenant, stream, g, s)))
                    srt = self._footers.get(str(self.layout.topk_file(tenant, stream, by, g, s)))
                    if look is None:
                        continue
                    if srt is None:
                        t = look.read(columns=["key_id", by])
                        c_ids.append(t["key_id"].to_numpy())
                        c_vals.append(t[by].to_numpy().astype(np.float64))
                    else:
                        segments.append(SortedSegment(srt, look, by))
            else:
                table = "events" if g.is_raw else "rollup_1h"
                col = "ts" if g.is_raw else "bucket"
                for d in self.layout.days(tenant, stream, table):
                    if not (d < rng.end and d + DAY_MS > rng.start):
                        continue
                    path = (self.layout.raw_file(tenant, stream, d) if g.is_raw
                            else self.layout.rollup_file(tenant, stream, G1H, d))
                    t = pq.read_table(path, columns=["key_id", col, "value" if g.is_raw else by],
                                      filters=[(col, ">=", rng.start), (col, "<", rng.end)])
                    c_ids.append(t["key_id"].to_numpy())
                    if g.is_raw:
                        c_vals.append(np.ones(t.num_rows) if by == "count" else t["value"].to_numpy())
                    else:
                        c_vals.append(t[by].to_numpy().astype(np.float64))
        cat = (np.concatenate(c_ids) if c_ids else np.empty(0, np.int64),
               np.concatenate(c_vals).astype(np.float64) if c_vals else np.empty(0, np.float64))
        return segments, cat


def _floor_days(ts) -> np.ndarray:
    a = np.asarray(ts.to_numpy() if hasattr(ts, "to_numpy") else ts, dtype=np.int64)
    return a - np.mod(a, DAY_MS)


__all__ = ["ColdTier", "GRANULARITIES"]
