"""A thread-safe LRU bounded in bytes: each value tells its size by `.nbytes` (bytes).

Used by the rank path's piece cache (router/rank_pieces.py) and warm's edge lists
(tiers/warm_edges.py)."""
from __future__ import annotations

import collections
import threading
from typing import Any, Hashable


class ByteLRU:
    """get(key) -> value | None (marks it recently used); put(key, value) replaces an entry and
    evicts the least recently used until the total of `.nbytes` is at most max_bytes; a value
    larger than max_bytes is not stored."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        size = value.nbytes
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._data[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes and self._data:
                _, gone = self._data.popitem(last=False)
                self._bytes -= gone.nbytes

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


__all__ = ["ByteLRU"]
