"""Sorted and random access to Parquet partials (tiers.base.RankedAccess): the cold tier's
value-sorted lists (tiers.parquet_layout top-K copies, read a row group at a time, best
first) and its edges (hours, raw minutes) aggregated whole in memory, on int64 key ids; key
strings are looked up only for the entries read and the keys asked for.

Random access reads, per list, only the row groups of the key-sorted rollup file whose
key_id statistics can hold a wanted id, each at most once per access, with their sums' low parts
(sum_lo): exact_parts gives each key's exact sum as a pair.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from rollups.exactsum import column_fsum
from rollups.pairsum import grouped_pair_sum
from tiers.base import RankedAccess
from tiers.cold_topk import SortedList, group_pairs, low_parts
from tiers.ranked_access import read_round

KeysOf = Callable[[np.ndarray], list[str]]
#: row-group reads of lists in S3 (ParquetRankedAccess(parallel=True)): I/O bound, the GIL released
_READERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ranked-read")


class _SortedFileList:
    """One value-sorted file (tiers.cold_topk.SortedList) as a sorted-access list, returning exactly
    the rows asked for."""

    def __init__(self, seg: SortedList, keys_of: KeysOf):
        self.seg, self._keys_of = seg, keys_of
        self._ids, self._vals = np.empty(0, np.int64), np.empty(0)
        self._groups: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.exhausted = seg.rows == 0

    def read(self, n: int) -> tuple[list[str], np.ndarray]:
        while len(self._ids) < n and not self.seg.exhausted:
            g = self.seg.groups_read
            t = self.seg.sorted_file.read_row_group(g, columns=["key_id", self.seg.by])
            self.seg.groups_read += 1
            self._ids = np.concatenate([self._ids, t["key_id"].to_numpy()])
            self._vals = np.concatenate([self._vals, t[self.seg.by].to_numpy().astype(np.float64)])
        ids, vals = self._ids[:n], self._vals[:n]
        self._ids, self._vals = self._ids[n:], self._vals[n:]
        self.exhausted = self.seg.exhausted and len(self._ids) == 0
        return self._keys_of(ids), vals

    def bound(self) -> float:
        if self.exhausted:
            return 0.0
        return float(self._vals[0]) if len(self._vals) else self.seg.unseen_bound()

    def lookup(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values of `wanted` (sorted unique ids) in this list as pairs (hi, lo: the rollup's sum and
        sum_lo, 0 for counts and older files), (0.0, 0.0) where absent."""
        f = self.seg.lookup_file
        md, col = f.metadata, f.schema_arrow.get_field_index("key_id")
        out, low = np.zeros(len(wanted)), np.zeros(len(wanted))
        for g in range(md.num_row_groups):
            st = md.row_group(g).column(col).statistics
            lo, hi = np.searchsorted(wanted, st.min, "left"), np.searchsorted(wanted, st.max, "right")
            if hi <= lo:
                continue
            if g not in self._groups:
                t = f.read_row_group(g, columns=self.seg.lookup_columns)
                self._groups[g] = (t["key_id"].to_numpy(), t[self.seg.by].to_numpy().astype(np.float64),
                                   low_parts(t))
            ids, vals, lows = self._groups[g]
            part = wanted[lo:hi]
            pos = np.minimum(np.searchsorted(ids, part), len(ids) - 1)
            hit = ids[pos] == part
            out[lo:hi][hit] = vals[pos[hit]]
            low[lo:hi][hit] = lows[pos[hit]]
        return out, low


class _EdgeList:
    """The edges (ids, terms grouped per key into exact pairs) held in memory, best first."""

    def __init__(self, ids: np.ndarray, vals: np.ndarray, keys_of: KeysOf):
        self.ids, self.vals, self.lows = group_pairs(ids, vals)
        order = np.argsort(-self.vals, kind="stable")
        self._ids_sorted, self._vals_sorted = self.ids[order], self.vals[order]
        self._keys_of, self._pos = keys_of, 0
        self.exhausted = len(order) == 0

    def read(self, n: int) -> tuple[list[str], np.ndarray]:
        lo, hi = self._pos, min(self._pos + n, len(self._ids_sorted))
        self._pos = hi
        self.exhausted = hi >= len(self._ids_sorted)
        return self._keys_of(self._ids_sorted[lo:hi]), self._vals_sorted[lo:hi]

    def bound(self) -> float:
        return 0.0 if self.exhausted else float(self._vals_sorted[self._pos])

    def lookup(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out, low = np.zeros(len(wanted)), np.zeros(len(wanted))
        if len(self.ids):
            pos = np.minimum(np.searchsorted(self.ids, wanted), len(self.ids) - 1)
            hit = self.ids[pos] == wanted
            out[hit], low[hit] = self.vals[pos[hit]], self.lows[pos[hit]]
        return out, low


class ParquetRankedAccess(RankedAccess):
    """RankedAccess over value-sorted `lists` plus the `complete` (ids, values) edges.

    `keys_of(ids)` gives key strings, `ids_of(keys)` key ids (-1 for unknown keys); `tier` names
    the tier in errors (`translate` wraps every call). `parallel`: read the lists' row groups on
    a few threads (objects in S3: each read is a request; local files are read in turn)."""

    def __init__(self, lists: Sequence[SortedList], complete: tuple[np.ndarray, np.ndarray],
                 keys_of: KeysOf, ids_of: Callable[[Sequence[str]], np.ndarray], translate: Callable,
                 parallel: bool = False):
        self._map = _READERS.map if parallel else map
        self._lists = [_SortedFileList(s, keys_of) for s in lists if s.rows]
        self._edges = _EdgeList(*complete, keys_of)
        self._ids_of, self._translate = ids_of, translate
        lows = [s.min_score() for s in lists if s.rows] + ([float(self._edges.vals.min())]
                                                              if len(self._edges.vals) else [])
        self.min_value = min([0.0, *lows])

    def _all(self):
        return [self._edges, *self._lists]

    def sorted_access(self, n: int) -> tuple[list[str], np.ndarray]:
        with self._translate():
            if self._map is map:
                return read_round(self._all(), n)
            todo = [lst for lst in self._all() if not lst.exhausted]
            parts = list(self._map(lambda lst: lst.read(n), todo))
        keys = [k for part, _ in parts for k in part]
        return keys, (np.concatenate([v for _, v in parts]) if parts else np.zeros(0))

    def frontier(self) -> float:
        return math.fsum(max(lst.bound(), 0.0) for lst in self._all())

    @property
    def exhausted(self) -> bool:
        return all(lst.exhausted for lst in self._all())

    def exact(self, keys: Sequence[str]) -> np.ndarray:
        return column_fsum(self.exact_parts(keys))

    def exact_parts(self, keys: Sequence[str]) -> np.ndarray:
        """(2, n): each key's exact value as a normalised pair (hi, lo) rows, summed as pairs
        (rollups.pairsum) over its value in every list (the rollups' sum and sum_lo, 0 where
        absent): math.fsum of a column is the exact sum correctly rounded."""
        if not keys:
            return np.zeros((1, 0))
        with self._translate():
            ids = np.asarray(self._ids_of(list(keys)), np.int64)
            wanted = np.unique(ids[ids >= 0])
            parts = np.vstack([row for pair in self._map(lambda lst: lst.lookup(wanted), self._all()) for row in pair])
        hi, lo = grouped_pair_sum(np.tile(np.arange(len(wanted)), len(parts)), parts.ravel(), len(wanted))
        out = np.zeros((2, len(ids)))
        known = ids >= 0
        at = np.searchsorted(wanted, ids[known])
        out[0, known], out[1, known] = hi[at], lo[at]
        return out


def keys_of_dictionary(keys, tenant: str, stream: str) -> KeysOf:
    """keys_of for a tiers.cold_keys.KeyDictionary."""
    return lambda ids: keys.keys(tenant, stream, ids).to_pylist() if len(ids) else []


__all__ = ["ParquetRankedAccess", "keys_of_dictionary"]
