"""The cold tier: Parquet files (tiers.parquet_layout) queried by Trino or by embedded DuckDB.

`ColdTier` implements the Tier contract over one root folder (settings.cold_dir). Both engines
run the same parameterised statements (tiers.cold_engines); `settings.cold_engine` picks one.
Granularities: RAW, 1h, 1d, 1w, 1mo. A query range is minute-aligned, so its sub-hour edges are
read raw: a 1m rollup would hold almost as many rows as the raw events of a cold day (few events
per key per minute), while a raw edge of less than an hour reads a couple of row groups.

`top_k` answers exact top-K over long ranges from the heads of value-sorted lists
(tiers.cold_topk, the threshold algorithm) and falls back to the full merge through the engine.
Writes (`write`, `delete_range`, and `export_cold` / `tierstore import` through `write_day`)
replace whole day partitions atomically and rebuild the weeks and months that contain them.
Reads and writes run through tiers.parquet_core, shared with the archive; `LocalPartitions` is
where the cold tier's partitions live.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rollups.cover import Piece
from rollups.partials import merge_partials
from rollups.timeutil import G1D, G1H, G1MO, G1W, Granularity, TimeRange
from rollups.topk import Ranked
from rollups.topk import top_k as exact_top_k
from tiers import parquet_keys, parquet_layout as PL
from tiers.base import Group, RankedAccess, Tier
from tiers.cold_ranked import ParquetRankedAccess, keys_of_dictionary
from tiers.cold_engines import TRINO_TABLES, DuckDBEngine, Engine, TrinoEngine
from tiers.cold_keys import KeyDictionary, PgKeyDictionary
from tiers.cold_topk import FooterCache, SortedList, low_parts, tput_top_k, value_columns, with_lows
from tiers.errors import tier_call, tier_read, translate
from tiers.parquet_core import GRANULARITIES, ParquetCore
from tiers.settings_view import SettingsView

class ColdTierSettings(SettingsView):
    """What the cold tier reads of tierstore's Settings (tiers/ does not import tierstore/).

    cold_dir: the Parquet root (Trino's local file system root); cold_engine: duckdb | trino;
    trino_url: the coordinator (trino engine only); query_timeout: ms per engine statement;
    postgres_url: the key dictionary's database when no dictionary is given.
    """

    cold_dir: Path | None = None
    cold_engine: str = "duckdb"
    trino_url: str = ""
    query_timeout: int = 60_000
    postgres_url: str = ""


class LocalPartitions:
    """The cold tier's partitions (tiers.parquet_core.Partitions): files under `root`, each day or
    period replaced by atomic renames (parquet_layout.write_day / write_period), listed from the
    folders; a file per stream under `_versions` holds its data version."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = PL.Layout(root)
        from tiers.parquet_totals import TotalsCache
        self.totals_cache = TotalsCache()  # key-less series read the small totals files through it

    def days(self, tenant: str, stream: str, table: str = "events") -> list[int]:
        return self.layout.days(tenant, stream, table)

    def periods(self, tenant: str, stream: str, gran: Granularity) -> list[int]:
        return self.layout.periods(tenant, stream, gran)

    def days_in(self, tenant: str, stream: str, table: str, lo: int, hi: int) -> list[int]:
        return self.layout.days_in(tenant, stream, table, lo, hi)

    def periods_in(self, tenant: str, stream: str, gran: Granularity, lo: int, hi: int) -> list[int]:
        return self.layout.periods_in(tenant, stream, gran, lo, hi)

    def tenants_streams(self, tenant: str | None = None, stream: str | None = None) -> list[tuple[str, str]]:
        out = []
        for t, s, _ in self.layout.tenants_streams():
            t, s = unquote(t), unquote(s)
            if (tenant is None or t == tenant) and (stream is None or s == stream):
                out.append((t, s))
        return out

    def read_day(self, tenant: str, stream: str, day: int) -> pa.Table | None:
        path = self.layout.raw_file(tenant, stream, day)
        return pq.read_table(path) if path.exists() else None

    def put_day(self, tenant: str, stream: str, day: int, raw: pa.Table, *, expect: PL.Totals | None = None,
                step=None) -> None:
        PL.write_day(self.layout, tenant, stream, day, raw, expect=expect, step=step)

    def put_period(self, tenant: str, stream: str, gran: Granularity, start: int) -> None:
        PL.write_period(self.layout, tenant, stream, gran, start)

    def totals_files(self, tenant: str, stream: str, period: str, lo: int, hi: int) -> dict[int, str]:
        """Partitions overlapping [lo, hi) with a stream-totals file: {start: path} (a stat each)."""
        gran, out, s = PL.PERIODS[period], {}, PL.PERIODS[period].floor(lo)
        while s < hi:
            path = str(PL.totals_file(self.layout, tenant, stream, period, s))
            if os.path.exists(path):
                out[s] = path
            s = gran.next(s)
        return out

    def read_totals(self, path: str) -> pa.Table:
        return self.totals_cache.read_local(path)

    def changed(self, tenant: str, stream: str) -> None:
        path = self._version_file(tenant, stream)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
        tmp.write_text(uuid.uuid4().hex)
        os.replace(tmp, path)

    def version(self, tenant: str, stream: str) -> str:
        try:
            return self._version_file(tenant, stream).read_text()
        except FileNotFoundError:
            return "0"

    def _version_file(self, tenant: str, stream: str) -> Path:
        return self.root / "_versions" / f"tenant={PL.escape(tenant)}" / f"stream={PL.escape(stream)}"


class ColdTier(Tier):
    """Parquet under `root` (default settings.cold_dir), engine `engine` (default settings.cold_engine).

    `keys` is the key dictionary (default: PostgreSQL at settings.postgres_url). For Trino the
    root must lie under settings.cold_dir (Trino's local file system root); its tables live in
    schema `trino_schema` of the `hive` catalog.
    """

    name = "cold"
    capabilities = frozenset({"top_k", "data_versions"})

    def __init__(self, settings, *, keys: KeyDictionary | None = None, root: Path | None = None,
                 engine: str | None = None, trino_schema: str = "tierstore") -> None:
        """`settings`: a ColdTierSettings, or any object with its fields (tierstore's Settings)."""
        settings = ColdTierSettings.of(settings)
        self.root = Path(root or settings.cold_dir).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.partitions = LocalPartitions(self.root)
        self.layout = self.partitions.layout
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
        self.core = ParquetCore(self.partitions, self.engine, self.keys)
        self._footers = FooterCache()

    # ---- contract -----------------------------------------------------------------------------

    @property
    def granularities(self) -> Sequence[Granularity]:
        return GRANULARITIES

    @tier_call
    def write(self, tenant: str, events: pa.Table) -> int:
        stored = self.core.write(tenant, events)
        self.sync()
        return stored

    @tier_call
    def replace_days(self, tenant: str, stream: str, batch: pa.Table, *, merge: bool,
                     progress=None) -> int:
        """Write `batch` (EVENT_SCHEMA, one stream) as whole day partitions, then their weeks/months.

        merge=True keeps each day's existing rows and adds the batch's (events whose non-null id
        is already stored in that day are skipped); merge=False replaces the days outright.
        `progress(n)` is called after each day. Returns the events stored.
        """
        stored = self.core.replace_days(tenant, stream, batch, merge=merge, progress=progress)
        self.sync()
        return stored

    @tier_call
    def write_day(self, tenant: str, stream: str, day: int, events: pa.Table, *,
                  expect: PL.Totals | None = None, step=None, periods: bool = True) -> None:
        """Replace one day of one stream with `events` (EVENT_SCHEMA) and rebuild its week and month.

        The files are verified against `expect` (the source's count and sum) before any rename;
        `step` sees "write", "verify", "rename" (crash points). Call `sync` afterwards.
        periods=False leaves the week and month to one `rebuild_periods` call for many days.
        """
        self.core.write_day(tenant, stream, day, events, expect=expect, step=step, periods=periods)

    @tier_call
    def rebuild_periods(self, tenant: str, stream: str, days: Sequence[int]) -> None:
        """Rebuild the weeks and months holding these days (each once) from their daily files."""
        self.core.rebuild_periods(tenant, stream, days)

    @tier_call
    def remove_day(self, tenant: str, stream: str, day: int) -> None:
        """Remove one day of one stream (all its files) and rebuild its week and month."""
        self.core.remove_day(tenant, stream, day)

    def data_version(self, tenant: str, stream: str) -> str:
        """Changes whenever this tier's files of the stream change (the router's cache key)."""
        return self.partitions.version(tenant, stream)

    @tier_read
    def data_versions(self, tenant: str, stream: str, pieces: Sequence[Piece]) -> list[str]:
        """The stream's data version for every piece (Tier.data_versions)."""
        return [self.data_version(tenant, stream)] * len(pieces)

    @tier_call
    def sync(self) -> None:
        """Let the engine see the partitions as they are on disk (Trino: its metastore)."""
        self.engine.sync_partitions(TRINO_TABLES)

    @tier_read
    def aggregate(self, tenant: str, stream: str, pieces: Sequence[Piece], group: Group,
                  key: str | None = None) -> pa.Table:
        return self.core.aggregate(tenant, stream, pieces, group, key)

    @tier_read
    def aggregate_each(self, tenant: str, stream: str, pieces: Sequence[Piece],
                       key: str | None = None) -> list[pa.Table]:
        """Tier.aggregate_each: a granularity's pieces in one query (ParquetCore.aggregate_each)."""
        return self.core.aggregate_each(tenant, stream, pieces, key)

    @tier_read
    def key_values(self, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> pa.Table:
        """Tier.key_values: key_id and the one value column of the files (tiers/parquet_keys.py)."""
        return parquet_keys.key_values(self.core, tenant, stream, pieces, by)

    @tier_read
    def distinct_keys(self, tenant: str, stream: str, pieces: Sequence[Piece]) -> pa.Array:
        """Tier.distinct_keys: DISTINCT key_id of the files (tiers/parquet_keys.py)."""
        return parquet_keys.distinct_keys(self.core, tenant, stream, pieces)

    def read_raw(self, tenant: str, stream: str, rng: TimeRange) -> Iterator[pa.RecordBatch]:
        with translate(self.name):
            yield from self.core.read_raw(tenant, stream, rng)

    @tier_call
    def delete_range(self, tenant: str | None, stream: str | None, rng: TimeRange) -> int:
        deleted = self.core.delete_range(tenant, stream, rng)
        self.sync()
        return deleted

    @tier_read
    def streams(self, tenant: str) -> list[str]:
        return sorted(s for t, s in self.partitions.tenants_streams(tenant) if self.partitions.days(t, s))

    @tier_read
    def health(self) -> None:
        self.engine.health()

    def close(self) -> None:
        self.engine.close()
        if self._own_keys and hasattr(self.keys, "close"):
            self.keys.close()

    # ---- fast exact top-K ---------------------------------------------------------------------

    @tier_read
    def top_k(self, tenant: str, stream: str, pieces: Sequence[Piece], k: int, by: str, *,
              stats: dict | None = None) -> list[Ranked]:
        """Exact top-k keys by `by` (count | sum) over the pieces; ties by key ascending.

        Threshold algorithm over the value-sorted day/week/month lists, hours and raw edges
        aggregated whole; the full merge through the engine when it cannot prove the answer
        cheaply (negative sums, flat data). Equal to rollups.topk.top_k over `aggregate`.
        `stats`, if given, receives {"method": "tput" | "merge", "lists": n}.
        """
        if by not in PL.MEASURES:
            raise ValueError(f"by must be count or sum, not {by!r}")
        with translate(self.name, "The cold tier cannot read its files"):
            lists, complete = self._sorted_lists(tenant, stream, pieces, by)
            keys_of = lambda ids: self.keys.keys(tenant, stream, ids).to_pylist()  # noqa: E731
            result = tput_top_k(lists, complete, k, keys_of)
        if stats is not None:
            stats.update(method="tput" if result is not None else "merge", lists=len(lists))
        if result is not None:
            return result
        merged = merge_partials([self.aggregate(tenant, stream, pieces, "key")], "key")
        return exact_top_k(merged, k, by)

    @tier_read
    def ranked_access(self, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> RankedAccess:
        """Sorted access to the value-sorted day/week/month lists a row group at a time (edges
        aggregated whole), random access through the key-sorted rollups (tiers/cold_ranked.py)."""
        if by not in PL.MEASURES:
            raise ValueError(f"by must be count or sum, not {by!r}")
        with translate(self.name, "The cold tier cannot read its files"):
            lists, complete = self._sorted_lists(tenant, stream, pieces, by)
        return ParquetRankedAccess(
            lists, complete, keys_of_dictionary(self.keys, tenant, stream),
            lambda keys: self.keys.ids(tenant, stream, keys, create=False),
            lambda: translate(self.name, "The cold tier cannot read its files"))

    def _sorted_lists(self, tenant, stream, pieces, by):
        lists: list[SortedList] = []
        c_ids, c_vals = [], []
        for piece in pieces:
            g, rng = piece.granularity, piece.range
            if g in (G1D, G1W, G1MO):
                starts = (self.layout.days_in(tenant, stream, "rollup_1d", rng.start, rng.end) if g == G1D
                          else self.layout.periods_in(tenant, stream, g, rng.start, rng.end))
                for s in starts:
                    if not (s >= rng.start and g.next(s) <= rng.end):
                        continue
                    look = self._footers.get(str(self.layout.rollup_file(tenant, stream, g, s)))
                    srt = self._footers.get(str(self.layout.topk_file(tenant, stream, by, g, s)))
                    if look is None:
                        continue
                    if srt is None:
                        t = look.read(columns=value_columns(look.schema_arrow, by))
                        ids, vals = with_lows(t["key_id"].to_numpy(), t[by].to_numpy().astype(np.float64),
                                              low_parts(t))
                        c_ids.append(ids)
                        c_vals.append(vals)
                    else:
                        lists.append(SortedList(srt, look, by))
            else:
                table = "events" if g.is_raw else "rollup_1h"
                col = "ts" if g.is_raw else "bucket"
                for d in self.layout.days_in(tenant, stream, table, rng.start, rng.end):
                    path = (self.layout.raw_file(tenant, stream, d) if g.is_raw
                            else self.layout.rollup_file(tenant, stream, G1H, d))
                    if g.is_raw:
                        t = pq.read_table(path, columns=["key_id", col, "value"],
                                          filters=[(col, ">=", rng.start), (col, "<", rng.end)])
                        c_ids.append(t["key_id"].to_numpy())
                        c_vals.append(np.ones(t.num_rows) if by == "count" else t["value"].to_numpy())
                        continue
                    pf = self._footers.get(str(path))
                    if pf is None:
                        continue
                    t = pq.read_table(path, columns=[col, *value_columns(pf.schema_arrow, by)],
                                      filters=[(col, ">=", rng.start), (col, "<", rng.end)])
                    ids, vals = with_lows(t["key_id"].to_numpy(), t[by].to_numpy().astype(np.float64), low_parts(t))
                    c_ids.append(ids)
                    c_vals.append(vals)
        cat = (np.concatenate(c_ids) if c_ids else np.empty(0, np.int64),
               np.concatenate(c_vals).astype(np.float64) if c_vals else np.empty(0, np.float64))
        return lists, cat


__all__ = ["ColdTier", "LocalPartitions"]
