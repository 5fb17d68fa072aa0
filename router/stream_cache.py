"""The stream registry as ingest and queries read it: every entry in memory, refreshed in the
background at most every `ttl_s`, so no request waits for PostgreSQL.

A read past the TTL answers at once from the entries it has and starts one refresh in a thread
(others keep reading the old entries meanwhile). While PostgreSQL is down the refresh fails and
the last good entries stay in force (logged); ingest goes on with the bounds it knew. Writes made
through this process (router/streams.py) update the cache at once; those of other routers are
seen within about `ttl_s`.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from tiers.stream_registry import StreamEntry

log = logging.getLogger("tierstore.streams")

DEFAULT_TTL_S = 2.0

Entries = dict[tuple[str, str], StreamEntry]


class RegistryCache:
    def __init__(self, load: Callable[[], Entries], *, ttl_s: float = DEFAULT_TTL_S) -> None:
        """`load` returns every entry by (tenant, stream) (StreamRegistry.all) or raises."""
        self._load = load
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._entries: Entries = {}
        self._bounded: dict[str, dict[str, StreamEntry]] = {}  # tenant -> its entries that bound values
        self._fresh_until = 0.0
        self._refreshing = False
        self.loaded = False

    def refresh(self) -> bool:
        """Load every entry now; False (entries kept) when the registry cannot be read."""
        started = time.monotonic()
        try:
            entries = self._load()
        except Exception as exc:  # noqa: BLE001 - PostgreSQL down: keep the last good entries
            log.warning("stream registry unavailable (%s); keeping the last good entries", exc)
            with self._lock:
                self._fresh_until = time.monotonic() + self._ttl_s
                self._refreshing = False
            return False
        with self._lock:
            self._set(entries)
            self._fresh_until = started + self._ttl_s
            self._refreshing = False
            self.loaded = True
        return True

    def _maybe_refresh(self) -> None:
        with self._lock:
            if self._refreshing or time.monotonic() < self._fresh_until:
                return
            self._refreshing = True
        threading.Thread(target=self.refresh, name="tierstore-streams-refresh", daemon=True).start()

    def get(self, tenant: str, stream: str) -> StreamEntry | None:
        """The entry as last loaded (None: not registered)."""
        self._maybe_refresh()
        return self._entries.get((tenant, stream))

    def bounded(self, tenant: str) -> dict[str, StreamEntry]:
        """The tenant's entries that bound values, by stream (empty for most tenants: ingest then
        skips the check at the cost of this lookup)."""
        self._maybe_refresh()
        return self._bounded.get(tenant, {})

    def stored(self, entry: StreamEntry) -> None:
        """This process wrote `entry`: serve it at once."""
        with self._lock:
            self._set({**self._entries, (entry.tenant, entry.stream): entry})

    def removed(self, tenant: str, stream: str) -> None:
        """This process deleted the entry: forget it at once."""
        with self._lock:
            self._set({k: v for k, v in self._entries.items() if k != (tenant, stream)})

    def _set(self, entries: Entries) -> None:
        bounded: dict[str, dict[str, StreamEntry]] = {}
        for (tenant, stream), e in entries.items():
            if e.bounded:
                bounded.setdefault(tenant, {})[stream] = e
        self._entries, self._bounded = entries, bounded
