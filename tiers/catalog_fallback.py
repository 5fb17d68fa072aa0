"""The router's catalog: PostgreSQL's snapshot while it answers, the last good one while it does not.

Ingest needs Redis only (the durable log), so an outage of PostgreSQL must not stop it; queries of
what the hot tier owns must go on answering exactly. The last good snapshot is safe for both once
it is narrowed by the two marks that live in Redis (tiers.eventlog), which the jobs raise BEFORE
they move a boundary and which never go down:

  - b_cold := max(last b_cold, SEAL_KEY). export_cold raises the seal to its target before it
    moves b_cold there, so seal >= the real b_cold at every instant. A late event below the real
    b_cold is therefore refused although the last snapshot is older: by the router's check with
    this b_cold and, atomically with the append, by the ingest script's own check of the seal.
  - b_warm := max(last b_warm, HOT_FLOOR_KEY, b_cold). expire_hot raises the floor to its target
    before it moves b_warm, so floor >= the real b_warm. Hot holds every accepted event at or
    above the floor (ingest aggregates exactly those) and trims only below the real b_warm, so
    [b_warm, +inf) of the narrowed snapshot is complete in hot: a hot-only answer stays exact.

Below the narrowed b_warm the last snapshot may be wrong (a boundary may have moved and the source
deleted what it handed over), so a stale snapshot says `stale=True` and the planner answers only
its hot part (the rest is unavailable: 503 or partial). Flush catches up once PostgreSQL is back.

While PostgreSQL fails, it is asked again at most every `retry_s` seconds (one caller probes;
the others get the narrowed snapshot at once), so an outage costs no request a connect timeout.
Every fresh snapshot also raises the seal to its b_cold (once per change): a seal lost with a
Redis restore cannot fall below a boundary this process has seen.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Protocol

from rollups.errors import TierUnavailable
from rollups.timeutil import MIN_MS
from tiers.catalog import CatalogSnapshot
from tiers.eventlog import HOT_FLOOR_KEY, SEAL_KEY, raise_mark

log = logging.getLogger("tierstore.catalog")


class _Snapshots(Protocol):
    def snapshot(self) -> CatalogSnapshot: ...


class LastGoodCatalog:
    def __init__(self, primary: _Snapshots, redis_client, *, retry_s: float = 1.0):
        """`primary` answers snapshot() or raises TierUnavailable (tiers.catalog_pg.PgCatalog);
        `redis_client` reaches the marks of tiers.eventlog (the hot tier's Redis)."""
        self._primary = primary
        self._redis = redis_client
        self._retry_s = retry_s
        self._lock = threading.Lock()
        self._last: CatalogSnapshot | None = None
        self._sealed_to: int | None = None  # the b_cold this process last raised the seal to
        self._retry_at = 0.0

    def snapshot(self) -> CatalogSnapshot:
        """The primary's snapshot; while it is unavailable, the last good one narrowed by the
        Redis marks, with stale=True. Raises TierUnavailable("catalog") when there is no last
        good snapshot yet or Redis cannot be read either."""
        with self._lock:
            probe = time.monotonic() >= self._retry_at
            if probe and self._retry_at:
                self._retry_at = time.monotonic() + self._retry_s  # one caller probes, the others wait
        if not probe:
            return self._narrowed(None)
        try:
            snap = self._primary.snapshot()
        except TierUnavailable as exc:
            with self._lock:
                self._retry_at = time.monotonic() + self._retry_s
            log.warning("catalog unavailable (%s); answering from the last good snapshot", exc.message)
            return self._narrowed(exc)
        with self._lock:
            self._retry_at = 0.0
            self._last = snap
        self._seal(snap.b_cold)
        return snap

    def _narrowed(self, cause: TierUnavailable | None) -> CatalogSnapshot:
        last = self._last
        if last is None:
            raise cause or TierUnavailable("catalog", "The catalog (PostgreSQL) is unavailable.")
        try:
            seal, floor = self._redis.get(SEAL_KEY), self._redis.get(HOT_FLOOR_KEY)  # two slots on a cluster
        except Exception as exc:  # Redis down as well: nothing can be answered safely
            raise TierUnavailable("catalog", "The catalog (PostgreSQL) and the marks in Redis are "
                                             "unavailable.") from exc
        b_cold = max(last.b_cold, _mark(seal, last.b_cold))
        b_warm = max(last.b_warm, _mark(floor, last.b_warm), b_cold)
        return replace(last, b_cold=b_cold, b_warm=b_warm, stale=True)

    def _seal(self, b_cold: int) -> None:
        if b_cold == self._sealed_to or b_cold <= MIN_MS:
            return
        try:
            raise_mark(self._redis, SEAL_KEY, b_cold)
        except Exception:  # the ingest script checks the seal itself; this is a second line
            log.warning("could not raise the ingest seal to b_cold=%s", b_cold, exc_info=True)
            return
        self._sealed_to = b_cold


def _mark(value, default: int) -> int:
    return default if value is None else int(float(value))
