"""Results cache for immutable segments.

A piece read from cold or archive is cached under (tenant, stream, group, key, tier,
granularity, range, catalog version, the tier's data version). The catalog version alone is not
enough: `tierstore import` rewrites cold partitions and retention deletes archive ones without
moving a boundary. So a tier takes part only when it tells its data version cheaply —
`data_version(tenant, stream) -> hashable`, changing whenever what it holds for the stream
changes; until a tier has one, its pieces are read every time. Hot and warm pieces are never
cached: late events change them without any catalog change.
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

    def cacheable(self, name: str, tier: object) -> bool:
        return self.entries > 0 and name in self.tiers and callable(getattr(tier, "data_version", None))

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
