"""Building blocks of tiers.base.RankedAccess: sorted lists and an access made of lists.

`ArrayList` is one list held in memory (a tier's small edges, or everything for tiers without a
value-sorted layout); `ListsAccess` joins a tier's lists and its random access; `TableAccess` is
the default of Tier.ranked_access: one list from a merged partial table.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rollups.partials import merge_partials, value_column
from tiers.base import RANK_BY, RankedAccess


def check_by(by: str) -> None:
    """Raises ValueError unless `by` is one of RANK_BY (count, sum)."""
    if by not in RANK_BY:
        raise ValueError(f"ranked access is by count or sum, not {by!r}")


class SortedList(Protocol):
    """One sorted list of a RankedAccess."""

    exhausted: bool

    def read(self, n: int) -> tuple[list[str], np.ndarray]:
        """The next n entries (fewer at the end): keys and values, best first."""

    def bound(self) -> float:
        """Every entry not read yet has a value <= this; 0.0 once exhausted."""


class ArrayList:
    """A list held in memory: `keys` (Arrow strings) and `values`, sorted here, best first."""

    def __init__(self, keys: pa.Array | pa.ChunkedArray, values: np.ndarray):
        order = np.argsort(-np.asarray(values, np.float64), kind="stable")
        self._keys = pc.take(keys, pa.array(order)) if len(order) else keys
        self._values = np.asarray(values, np.float64)[order]
        self._pos = 0
        self.exhausted = len(order) == 0

    def read(self, n: int) -> tuple[list[str], np.ndarray]:
        lo, hi = self._pos, min(self._pos + n, len(self._values))
        self._pos = hi
        self.exhausted = hi >= len(self._values)
        return self._keys[lo:hi].to_pylist(), self._values[lo:hi]

    def bound(self) -> float:
        return 0.0 if self.exhausted else float(self._values[self._pos])

    @property
    def min_value(self) -> float:
        return float(self._values.min()) if len(self._values) else 0.0


class ListsAccess(RankedAccess):
    """A RankedAccess made of `lists` and an `exact(keys)` function (random access)."""

    def __init__(self, lists: Sequence[SortedList], exact: Callable[[Sequence[str]], np.ndarray],
                 min_value: float, close: Callable[[], None] | None = None):
        self.lists = list(lists)
        self._exact = exact
        self.min_value = min_value
        self._close = close

    def sorted_access(self, n: int) -> tuple[list[str], np.ndarray]:
        return read_round(self.lists, n)

    def frontier(self) -> float:
        return math.fsum(max(lst.bound(), 0.0) for lst in self.lists)

    @property
    def exhausted(self) -> bool:
        return all(lst.exhausted for lst in self.lists)

    def exact(self, keys: Sequence[str]) -> np.ndarray:
        return np.asarray(self._exact(keys), np.float64) if len(keys) else np.zeros(0)

    def close(self) -> None:
        if self._close is not None:
            self._close()


def lookup(keys: pa.Array | pa.ChunkedArray, values: np.ndarray) -> Callable[[Sequence[str]], np.ndarray]:
    """Random access into (keys, values) with unique keys: 0.0 for a key not among them."""
    keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys

    def exact(wanted: Sequence[str]) -> np.ndarray:
        pos = pc.index_in(pa.array(list(wanted), pa.string()), value_set=keys).to_numpy(zero_copy_only=False)
        found = ~np.isnan(pos.astype(np.float64))
        out = np.zeros(len(wanted))
        out[found] = values[pos[found].astype(np.int64)]
        return out
    return exact


class TableAccess(ListsAccess):
    """One in-memory list of a per-key partial table (the default Tier.ranked_access). A table
    whose sums carry their low parts (`sum_lo`, rollups.pairsum) keeps them for exact_parts, so a
    total over tiers stays exact (as warm's own access does)."""

    lows: Callable[[Sequence[str]], np.ndarray] | None = None

    @classmethod
    def of(cls, partials: pa.Table, by: str) -> "TableAccess":
        check_by(by)
        t = merge_partials([partials], "key")
        t = t.filter(pc.greater(t["count"], 0))
        values = value_column(t, by).to_numpy().astype(np.float64)
        lst = ArrayList(t["key"], values)
        access = cls([lst], lookup(t["key"], values), lst.min_value)
        if by == "sum" and "sum_lo" in t.column_names:
            access.lows = lookup(t["key"], t["sum_lo"].to_numpy().astype(np.float64))
        return access

    def exact_parts(self, keys: Sequence[str]) -> np.ndarray:
        """(hi, lo) rows when the table carried low parts, else exact() as one row (shape (m, len(keys)))."""
        if self.lows is None or not len(keys):
            return super().exact_parts(keys)
        return np.vstack([self.exact(keys), np.asarray(self.lows(keys), np.float64)])


def read_round(lists: Sequence[Any], n: int) -> tuple[list[str], np.ndarray]:
    """One round of sorted access: the next `n` entries of every list not yet exhausted, as (keys,
    values) in list order (each list: `exhausted`, `read(n) -> (keys, values)`)."""
    keys: list[str] = []
    values = []
    for lst in lists:
        if not lst.exhausted:
            k, v = lst.read(n)
            keys += k
            values.append(v)
    return keys, (np.concatenate(values) if values else np.zeros(0))
