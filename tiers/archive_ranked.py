"""The archive's value-sorted lists in S3, for exact top-K and the router's threshold algorithm.

The archive job carries every partition's value-sorted copies over from cold unchanged
(tiers.parquet_layout.period_files: topk_by_count_<g>, topk_by_sum_<g> next to the rollups),
so the archive ranks exactly as cold does (tiers.cold_ranked.ParquetRankedAccess,
tiers.cold_topk.tput_top_k) over the same lists, read from S3 with ranged GETs:
  * objects are found through the registry's manifests (one statement for all pieces), never
    by listing the bucket; a partition archived without its copies (older archives) is read
    whole into the in-memory edges, which is exact, only not cheap;
  * a Parquet footer is read once per object and kept (`S3Footers`, keyed by object key and
    SHA-256: archived objects never change in place), and every file is opened with its size
    from the manifest, so a row group costs one ranged GET and nothing else;
  * the edges (raw minutes and hours) are read with their time filter, as cold reads them;
  * with the disk cache on (tiers/archive_cache.py, archive_cache_bytes), an object any process
    on the machine has read is opened from the local copy instead (memory-mapped).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rollups.cover import Piece
from rollups.timeutil import G1D, G1MO, G1W
from tiers import parquet_layout as PL
from tiers.cold_topk import SortedList, low_parts, value_columns, with_lows

_LIST_GRANULARITIES = (G1D, G1W, G1MO)


class S3Footers:
    """Parquet footers of archived objects by (key, sha256), and files opened without a HEAD.

    `fs` is a pyarrow S3FileSystem, `bucket` the bucket name. Thread-safe; at most `size` footers."""

    def __init__(self, fs, bucket: str, size: int = 4096, group_bytes: int = 64 << 20, cache=None) -> None:
        self.fs, self.bucket = fs, bucket
        self.cache = cache  # tiers.archive_cache.ObjectCache: objects on local disk, or None
        self._lru: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()
        self._groups: OrderedDict[tuple, Any] = OrderedDict()
        self._group_bytes, self._held = group_bytes, 0

    def group(self, sig: tuple, read) -> Any:
        """Row group `sig` (object key, sha256, group, columns) from the in-process LRU (at most
        `group_bytes`), else `read()` and keep it: archived objects never change in place."""
        with self._lock:
            hit = self._groups.get(sig)
            if hit is not None:
                self._groups.move_to_end(sig)
                return hit
        table = read()
        with self._lock:
            if sig not in self._groups:
                self._groups[sig] = table
                self._held += table.nbytes
            while self._held > self._group_bytes and self._groups:
                self._held -= self._groups.popitem(last=False)[1].nbytes
        return table

    def read_table(self, obj: dict[str, Any], columns: list[str], filters: list) -> Any:
        """pq.read_table of the manifest object `obj` (columns, row filters): from the local copy when
        the disk cache holds it, else from S3 (the copy scheduled). Raises OSError (S3)."""
        local = self.cache.path(obj) if self.cache is not None else None
        if local is not None:
            try:
                return pq.read_table(str(local), columns=columns, filters=filters, memory_map=True)
            except FileNotFoundError:  # evicted by another process since: read S3
                pass
        return pq.read_table(f"{self.bucket}/{obj['key']}", filesystem=self.fs, columns=columns, filters=filters)

    def read_range(self, obj: dict[str, Any], columns: list[str], col: str, lo: int, hi: int) -> Any:
        """The rows of the manifest object `obj` with lo <= col < hi (epoch ms), `columns` only: the
        row groups whose statistics overlap [lo, hi), each through the row-group LRU (`group`;
        from the memory-mapped local copy or S3), then filtered — no dataset set-up per call, and a pack's row
        group read by one query's edge is there for the next query's (a year's pack holds every
        day's edges). Raises OSError (S3)."""
        f = self.open(obj)
        md = f.metadata
        at = md.schema.to_arrow_schema().get_field_index(col)
        need = list(dict.fromkeys([*columns, col]))
        groups = []
        for i in range(md.num_row_groups):
            st = md.row_group(i).column(at).statistics
            if st is None or not st.has_min_max or (st.max >= lo and st.min < hi):
                groups.append(i)
        if not groups:
            return md.schema.to_arrow_schema().empty_table().select(columns)
        sig = (obj["key"], obj.get("sha256", ""))
        t = pa.concat_tables([self.group((*sig, i, tuple(need)), lambda i=i: f.read_row_group(i, columns=need))
                              for i in groups])
        c = t[col]
        t = t.filter(pc.and_(pc.greater_equal(c, lo), pc.less(c, hi)))
        return t.select(columns)

    def cached_path(self, path: str) -> bool:
        """Whether `path` is a copy in the disk cache (named by its SHA-256: never changes)."""
        root = self.cache.root if self.cache is not None else None
        return root is not None and not str(path).startswith("s3://") and Path(path).is_relative_to(root)

    def read_local_range(self, path: str, columns: list[str], col: str, lo: int, hi: int,
                         schema: pa.Schema | None = None) -> Any:
        """read_range for a disk-cache copy (`cached_path`): its footer and row groups kept by
        path. Columns the file lacks come back null, typed by `schema` (files written before
        sum_lo). Raises OSError (FileNotFoundError: evicted meanwhile)."""
        sig = ("local", str(path), "")
        with self._lock:
            md = self._lru.get(sig)
        f = pq.ParquetFile(str(path), memory_map=True, metadata=md)
        if md is None:
            self._keep(sig, f.metadata)
        names = f.schema_arrow.names
        have = [c for c in dict.fromkeys([*columns, col]) if c in names]
        at = names.index(col)
        groups = []
        for i in range(f.metadata.num_row_groups):
            st = f.metadata.row_group(i).column(at).statistics
            if st is None or not st.has_min_max or (st.max >= lo and st.min < hi):
                groups.append(self.group((*sig, i, tuple(have)), lambda i=i: f.read_row_group(i, columns=have)))
        t = pa.concat_tables(groups) if groups else f.schema_arrow.empty_table().select(have)
        c = t[col]
        t = t.filter(pc.and_(pc.greater_equal(c, lo), pc.less(c, hi)))
        for name in columns:
            if name not in t.column_names:
                typ = schema.field(name).type if schema is not None else pa.float64()
                t = t.append_column(name, pa.nulls(t.num_rows, typ))
        return t.select(columns)

    def open(self, obj: dict[str, Any]) -> "LazyParquet | pq.ParquetFile":
        """The Parquet file of the manifest object `obj` ({key, size, sha256, ...}): the local copy
        when the disk cache holds it, else its footer (cached), the object opened only when a row
        group is read. Raises OSError when S3 cannot be read."""
        sig = (obj["key"], obj.get("sha256", ""))
        path = f"{self.bucket}/{obj['key']}"
        local = self.cache.path(obj) if self.cache is not None else None
        with self._lock:
            md = self._lru.get(sig)
            if md is not None:
                self._lru.move_to_end(sig)
        if local is not None:  # on this machine's disk (tiers/archive_cache.py); the footer kept too
            try:
                f = pq.ParquetFile(str(local), memory_map=True, metadata=md)
            except FileNotFoundError:  # removed by another process's eviction since: read S3
                pass
            else:
                if md is None:
                    self._keep(sig, f.metadata)
                return f
        if md is None:
            md = pq.ParquetFile(self.fs.open_input_file(path)).metadata
            self._keep(sig, md)
        return LazyParquet(self, path, md, sig)

    def _keep(self, sig: tuple, md) -> None:
        with self._lock:
            self._lru[sig] = md
            while len(self._lru) > self._size:
                self._lru.popitem(last=False)

    def read_all(self, obj: dict[str, Any], columns: list[str]) -> Any:
        """Every row of the manifest object `obj`, `columns` only, row group by row group through
        the row-group LRU (a small week or month archived without value-sorted copies is read
        whole by every query covering it). Raises OSError (S3)."""
        f = self.open(obj)
        sig = (obj["key"], obj.get("sha256", ""))
        groups = [self.group((*sig, i, tuple(columns)), lambda i=i: f.read_row_group(i, columns=columns))
                  for i in range(f.metadata.num_row_groups)]
        return pa.concat_tables(groups) if groups else f.metadata.schema.to_arrow_schema().empty_table().select(columns)


class LazyParquet:
    """What tiers.cold_topk.SortedList reads of a pq.ParquetFile (`metadata`, `schema_arrow`,
    `read_row_group(s)`, `read`), with the footer known and the S3 object opened on first read."""

    def __init__(self, footers: S3Footers, path: str, metadata, sig: tuple) -> None:
        self.metadata, self.schema_arrow = metadata, metadata.schema.to_arrow_schema()
        self._footers, self._path, self._sig, self._file = footers, path, sig, None

    def _pf(self) -> pq.ParquetFile:
        if self._file is None:
            self._file = pq.ParquetFile(self._footers.fs.open_input_file(self._path), metadata=self.metadata)
        return self._file

    def read_row_group(self, i: int, columns=None):
        """One row group, through the footers' row-group cache."""
        return self._footers.group((*self._sig, i, tuple(columns or ())),
                                   lambda: self._pf().read_row_group(i, columns=columns))

    def read_row_groups(self, groups, columns=None):
        import pyarrow as pa

        return pa.concat_tables([self.read_row_group(g, columns) for g in groups])

    def read(self, columns=None):
        return self._pf().read(columns=columns)


def archive_lists(registry, footers: S3Footers, tenant: str, stream: str, pieces: Sequence[Piece],
                  by: str) -> tuple[list[SortedList], tuple[np.ndarray, np.ndarray]]:
    """(value-sorted lists, (key ids, terms) of the edges: a key may repeat, low parts (sum_lo) are
    terms of their own) over `pieces` — what
    tiers.cold_ranked.ParquetRankedAccess and tiers.cold_topk.tput_top_k take.

    `registry` is the tiers.archive_registry.ArchiveRegistry; `by` count | sum. Raises OSError
    (S3) and psycopg errors (registry) for the caller to translate."""
    lists: list[SortedList] = []
    c_ids: list[np.ndarray] = []
    c_vals: list[np.ndarray] = []
    asks = [(PL.PERIOD_OF[p.granularity.name] if p.granularity in _LIST_GRANULARITIES else "day", p.range)
            for p in pieces]
    for piece, found in zip(pieces, registry.manifests_many(tenant, stream, asks)):
        g, rng = piece.granularity, piece.range
        if g in _LIST_GRANULARITIES:
            for m in found:
                if m.period == "pack":  # small by construction: its daily partials in rng, whole
                    obj = m.object("rollup_1d")
                    t = footers.read_range(obj, value_columns(_schema(footers, obj, by), by), "bucket",
                                           rng.start, rng.end)
                    _add(c_ids, c_vals, t, by)
                    continue
                if not (m.start >= rng.start and m.end <= rng.end):
                    continue
                look, srt = m.object(PL.TABLE_OF[g.name]), m.object(PL.topk_table(by, g))
                if look is None:
                    continue
                if srt is None:  # archived before the copies travelled with it: read it whole
                    _add(c_ids, c_vals, footers.read_all(look, value_columns(footers.open(look).schema_arrow, by)), by)
                else:
                    lists.append(SortedList(footers.open(srt), footers.open(look), by))
        else:
            table, col = ("events", "ts") if g.is_raw else ("rollup_1h", "bucket")
            for m in found:
                obj = m.object(table)
                if obj is None:
                    continue
                if g.is_raw:
                    t = footers.read_range(obj, ["key_id", "value"], col, rng.start, rng.end)
                    c_ids.append(t["key_id"].to_numpy())
                    c_vals.append(np.ones(t.num_rows) if by == "count" else t["value"].to_numpy())
                else:
                    t = footers.read_range(obj, value_columns(_schema(footers, obj, by), by), col, rng.start, rng.end)
                    _add(c_ids, c_vals, t, by)
    complete = (np.concatenate(c_ids).astype(np.int64) if c_ids else np.empty(0, np.int64),
                np.concatenate(c_vals).astype(np.float64) if c_vals else np.empty(0, np.float64))
    return lists, complete


def _schema(footers: S3Footers, obj: dict[str, Any], by: str):
    """The object's Arrow schema when `by` is sum (does it hold sum_lo?), else None (no footer read)."""
    return footers.open(obj).schema_arrow if by == "sum" else None


def _add(c_ids: list, c_vals: list, t, by: str) -> None:
    """A table's (key_id, by[, sum_lo]) rows as edge terms (a low part is a term of its own)."""
    ids, vals = with_lows(t["key_id"].to_numpy(), t[by].to_numpy().astype(np.float64), low_parts(t))
    c_ids.append(ids)
    c_vals.append(vals)


__all__ = ["S3Footers", "archive_lists"]
