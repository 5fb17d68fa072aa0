"""Results cache for immutable segments.

A piece read from a tier whose data cannot change under a given catalog version (cold and
archive: written once, replaced only by an import that bumps the version) is cached under
(tenant, stream, group, key, tier, granularity, range, catalog version). Hot and warm pieces are
never cached: late events change them without a catalog change.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Hashable

import pyarrow as pa

IMMUTABLE_TIERS = frozenset({"cold", "archive"})


class ResultsCache:
    """A bounded LRU of partial tables; `entries=0` disables it."""

    def __init__(self, entries: int, tiers: frozenset[str] = IMMUTABLE_TIERS):
        self.entries = entries
        self.tiers = tiers
        self._lock = threading.Lock()
        self._data: OrderedDict[Hashable, pa.Table] = OrderedDict()

    def cacheable(self, tier: str) -> bool:
        return self.entries > 0 and tier in self.tiers

    def get(self, key: Hashable) -> pa.Table | None:
        with self._lock:
            table = self._data.get(key)
            if table is not None:
                self._data.move_to_end(key)
            return table

    def put(self, key: Hashable, table: pa.Table) -> None:
        with self._lock:
            self._data[key] = table
            self._data.move_to_end(key)
            while len(self._data) > self.entries:
                self._data.popitem(last=False)
