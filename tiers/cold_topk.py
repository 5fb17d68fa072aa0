"""Exact top-K over many cold lists with the threshold algorithm (TPUT), reading only heads.

A range's cover has big lists (one file per day, week or month, each with a value-sorted
copy: tiers.parquet_layout) and small edges (hours, raw minutes), which are aggregated whole into
one "complete" list. With every per-list score >= 0 (counts; sums of non-negative values):
  1. read the head of each sorted list (its first row group); the k-th best partial total
     `tau1` is a lower bound of the k-th best total;
  2. give each list a threshold T_i = tau1 * mass_i / total mass (sum T_i = tau1) and read
     every row with score >= T_i; a key seen nowhere then totals < sum T_i = tau1 and is out;
  3. for the candidates, the upper bound adds for each list that did not show them the value
     of the first unread row (0 when the list was read to its end); candidates whose upper
     bound is below the k-th best lower bound are out; the rest get exact scores from the
     key-sorted rollup files (row groups chosen by key_id statistics) and are ranked exactly
     (value descending, key ascending).
Sums are exact pairs (sum, sum_lo: tiers.parquet_layout): the thresholds and bounds use the
highs (with PRUNE_SLACK of room for rounding), the values ranked add every term of a kept
candidate, low parts included, as pairs (rollups.pairsum), so they equal the full merge's.
It returns None — the caller does the full merge — when a score can be negative, or when the
heads are so flat that the threshold would make it read a large share of the rows.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rollups.exactsum import exactly_summable
from rollups.pairsum import grouped_pair_sum
from rollups.topk import Ranked

#: give up (full merge) when the threshold would read more than this share of the sorted rows
MAX_READ_SHARE = 0.25


class FooterCache:
    """ParquetFile handles by (path, inode, mtime, size): a renamed-in file is a new entry."""

    def __init__(self, size: int = 8192) -> None:
        self._lru: OrderedDict[str, tuple[tuple, pq.ParquetFile]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, path: str) -> pq.ParquetFile | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._lru.get(path)
            if hit is not None and hit[0] == sig:
                self._lru.move_to_end(path)
                return hit[1]
        pf = pq.ParquetFile(path, memory_map=True)
        with self._lock:
            self._lru[path] = (sig, pf)
            self._lru.move_to_end(path)
            while len(self._lru) > self._size:
                self._lru.popitem(last=False)
        return pf


@dataclass
class SortedList:
    """One value-sorted copy (key_id, by) and the key-sorted rollup file with the same partials."""

    sorted_file: pq.ParquetFile
    lookup_file: pq.ParquetFile
    by: str
    mass: float = 0.0
    rows: int = 0
    groups_read: int = 0
    ids: list = field(default_factory=list)
    vals: list = field(default_factory=list)
    lows: list = field(default_factory=list)

    def __post_init__(self) -> None:
        md = self.sorted_file.metadata
        self.rows = md.num_rows
        self._col = self.sorted_file.schema_arrow.get_field_index(self.by)
        self.mass = _footer_total(self.sorted_file, self.by)
        self.sorted_columns = value_columns(self.sorted_file.schema_arrow, self.by)
        self.lookup_columns = value_columns(self.lookup_file.schema_arrow, self.by)

    def group_bounds(self, g: int) -> tuple[float, float]:
        st = self.sorted_file.metadata.row_group(g).column(self._col).statistics
        return float(st.min), float(st.max)

    @property
    def exhausted(self) -> bool:
        return self.groups_read >= self.sorted_file.metadata.num_row_groups

    def min_score(self) -> float:
        n = self.sorted_file.metadata.num_row_groups
        return self.group_bounds(n - 1)[0] if n and self.rows else 0.0

    def read_next(self) -> None:
        t = self.sorted_file.read_row_group(self.groups_read, columns=self.sorted_columns)
        self.ids.append(t["key_id"].to_numpy())
        self.vals.append(t[self.by].to_numpy().astype(np.float64))
        self.lows.append(low_parts(t))
        self.groups_read += 1

    def read_until(self, threshold: float) -> None:
        """Read row groups until every row with score >= threshold has been read."""
        while not self.exhausted and self.group_bounds(self.groups_read)[1] >= threshold:
            self.read_next()

    def rows_until(self, threshold: float) -> int:
        md, n, g = self.sorted_file.metadata, 0, self.groups_read
        while g < md.num_row_groups and self.group_bounds(g)[1] >= threshold:
            n += md.row_group(g).num_rows
            g += 1
        return n

    def unseen_bound(self) -> float:
        """Every row not read has a score <= this (0 when read to the end)."""
        return 0.0 if self.exhausted else self.group_bounds(self.groups_read)[1]

    def seen(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.ids:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        return np.concatenate(self.ids), np.concatenate(self.vals)

    def seen_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, values) of the rows read, each row's low part (sum_lo) a term of its own."""
        if not self.ids:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        return with_lows(np.concatenate(self.ids), np.concatenate(self.vals), np.concatenate(self.lows))

    def lookup(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of `wanted` (sorted unique key ids) from the key-sorted rollup file, as
        terms (ids, values): a row's low part (sum_lo) is a term of its own."""
        md = self.lookup_file.metadata
        kcol = self.lookup_file.schema_arrow.get_field_index("key_id")
        groups = []
        for g in range(md.num_row_groups):
            st = md.row_group(g).column(kcol).statistics
            if np.searchsorted(wanted, st.max, side="right") > np.searchsorted(wanted, st.min, side="left"):
                groups.append(g)
        if not groups:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        t = self.lookup_file.read_row_groups(groups, columns=self.lookup_columns)
        mask = pc.is_in(t["key_id"], value_set=pa.array(wanted))
        t = t.filter(mask)
        return with_lows(t["key_id"].to_numpy(), t[self.by].to_numpy().astype(np.float64), low_parts(t))


def value_columns(schema: pa.Schema, by: str) -> list[str]:
    """The columns to read for `by` from a rollup or value-sorted file: key_id, by, and sum_lo when
    `by` is sum and the file has it (files written before sum_lo have not: their low parts are 0)."""
    return ["key_id", by, *(["sum_lo"] if by == "sum" and "sum_lo" in schema.names else [])]  # count: schema unused


def low_parts(t: pa.Table) -> np.ndarray:
    """A table's sum_lo as float64, zeros when it has none."""
    return np.asarray(t["sum_lo"].to_numpy(), np.float64) if "sum_lo" in t.column_names else np.zeros(t.num_rows)


def with_lows(ids: np.ndarray, vals: np.ndarray, lows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vals) with each non-zero low part appended as one more term of its id."""
    nz = lows != 0
    if not nz.any():
        return ids, vals
    return np.concatenate([ids, ids[nz]]), np.concatenate([vals, lows[nz]])


def _footer_total(pf: pq.ParquetFile, by: str) -> float:
    from tiers.parquet_layout import META_KEY, Totals

    md = pf.metadata.metadata or {}
    if META_KEY in md:
        t = Totals.from_json(md[META_KEY])
        return float(t.count if by == "count" else t.sum)
    return float(pc.sum(pf.read(columns=[by])[by]).as_py() or 0.0)


def _group_sum(ids: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique ids, each id's sum of vals): the float nearest the exact sum (group_pairs' hi), so
    1e15 + 0.1 - 1e15 over three days' rows gives 0.1, not 0.125, and neither the value nor the
    threshold algorithm's sign check is fooled."""
    u, hi, _ = group_pairs(ids, vals)
    return u, hi


def group_pairs(ids: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique ids, hi, lo): each id's exact sum of vals as a normalised pair (rollups.pairsum);
    exactly summable values (integers, counts): one bincount, lo 0."""
    if len(ids) == 0:
        return ids, vals, vals
    u, inv = np.unique(ids, return_inverse=True)
    inv = inv.reshape(-1)
    if exactly_summable(vals):
        return u, np.bincount(inv, weights=vals, minlength=len(u)), np.zeros(len(u))
    hi, lo = grouped_pair_sum(inv, vals, len(u))
    return u, hi, lo


def _kth(vals: np.ndarray, k: int) -> float:
    if len(vals) < k:
        return 0.0
    return float(np.partition(vals, len(vals) - k)[len(vals) - k])


def tput_top_k(lists: Sequence[SortedList], complete: tuple[np.ndarray, np.ndarray], k: int,
               keys_of: Callable[[np.ndarray], list[str]]) -> list[Ranked] | None:
    """Exact top-k over `lists` plus the fully known `complete` (ids, terms: a key may repeat, low
    parts are terms of their own), or None.

    None means: use the full merge (a negative score somewhere, or data too flat to gain). The
    pruning works on float sums of the lists' values (within ~1e-15 relative of the exact ones:
    thresholds and bounds get PRUNE_SLACK of room); the values ranked are exact, every term of a
    kept candidate (rows read, rows looked up, low parts) summed as pairs (rollups.pairsum).
    """
    c_ids, c_vals = _group_sum(*complete)
    if (len(c_vals) and c_vals.min() < 0) or any(s.min_score() < 0 for s in lists):
        return None
    lists = [s for s in lists if s.rows]
    # phase 1: heads
    for s in lists:
        while not s.exhausted and sum(len(i) for i in s.ids) < k:
            s.read_next()
    ids = [s.seen()[0] for s in lists] + [c_ids]
    vals = [s.seen()[1] for s in lists] + [c_vals]
    p_ids, p_vals = _group_sum(np.concatenate(ids), np.concatenate(vals))
    if len(p_ids) == 0:
        return []
    tau1 = _kth(p_vals, k)
    total_mass = sum(s.mass for s in lists) + float(c_vals.sum())
    if tau1 <= 0 or total_mass <= 0:
        if any(not s.exhausted for s in lists):
            return None
        terms = [s.seen_terms() for s in lists] + [complete]
        e_ids, e_vals = _group_sum(np.concatenate([i for i, _ in terms]), np.concatenate([v for _, v in terms]))
        return _finish(e_ids, e_vals, k, keys_of)
    # phase 2: every row above its list's share of tau1
    thresholds = [tau1 * s.mass / total_mass * (1 - PRUNE_SLACK) for s in lists]
    sorted_rows = sum(s.rows for s in lists)
    if sum(s.rows_until(t) for s, t in zip(lists, thresholds)) > MAX_READ_SHARE * max(sorted_rows, 1):
        return None
    for s, t in zip(lists, thresholds):
        s.read_until(t)
    c_threshold = tau1 * float(c_vals.sum()) / total_mass * (1 - PRUNE_SLACK)
    cand = [s.seen()[0] for s in lists] + [c_ids[c_vals >= c_threshold]]
    cand = np.unique(np.concatenate(cand))
    # phase 3: bounds, pruning, exact lookups
    m = len(lists)
    known = np.zeros(len(cand))
    missing = np.zeros((m, len(cand)), bool)
    for j, s in enumerate(lists):
        sid, sval = s.seen()
        pos = np.searchsorted(cand, sid)
        inside = (pos < len(cand)) & (cand[np.minimum(pos, len(cand) - 1)] == sid)
        np.add.at(known, pos[inside], sval[inside])
        hit = np.zeros(len(cand), bool)
        hit[pos[inside]] = True
        missing[j] = ~hit & (s.unseen_bound() > 0)
    cpos = np.searchsorted(c_ids, cand)
    cin = (cpos < len(c_ids)) & (c_ids[np.minimum(cpos, max(len(c_ids) - 1, 0))] == cand) if len(c_ids) else np.zeros(len(cand), bool)
    known[cin] += c_vals[cpos[cin]]
    bounds = np.array([s.unseen_bound() for s in lists])
    upper = known + (missing * bounds[:, None]).sum(axis=0)
    tau2 = _kth(known, k)
    keep = upper * (1 + PRUNE_SLACK) >= tau2 * (1 - PRUNE_SLACK)
    cand, missing = cand[keep], missing[:, keep]
    terms = [_terms_of(complete, cand)]
    for j, s in enumerate(lists):
        terms.append(_terms_of(s.seen_terms(), cand))
        wanted = cand[missing[j]]
        if len(wanted):
            terms.append(s.lookup(wanted))
    t_ids = np.concatenate([i for i, _ in terms])
    hi, _ = grouped_pair_sum(np.searchsorted(cand, t_ids), np.concatenate([v for _, v in terms]), len(cand))
    return _finish(cand, hi, k, keys_of)


#: relative room the pruning gives to the rounding of its float sums (a few hundred ulps)
PRUNE_SLACK = 1e-13


def _terms_of(terms: tuple[np.ndarray, np.ndarray], cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (ids, values) terms whose id is among `cand` (sorted unique)."""
    ids, vals = terms
    if not len(cand) or not len(ids):
        return np.empty(0, np.int64), np.empty(0, np.float64)
    pos = np.minimum(np.searchsorted(cand, ids), len(cand) - 1)
    at = cand[pos] == ids
    return ids[at], vals[at]


def _finish(ids: np.ndarray, vals: np.ndarray, k: int, keys_of) -> list[Ranked]:
    """Rank exactly: value descending, key (string) ascending; only ties at the k-th value need keys."""
    if len(ids) == 0:
        return []
    kth = _kth(vals, k) if len(vals) >= k else -np.inf
    sel = vals >= kth
    ids, vals = ids[sel], vals[sel]
    keys = keys_of(ids)
    order = sorted(range(len(ids)), key=lambda i: (-vals[i], keys[i]))[:k]
    return [Ranked(r + 1, keys[i], float(vals[i])) for r, i in enumerate(order)]
