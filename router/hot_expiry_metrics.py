"""The alarm of the hot tier's safety TTL (tiers/hot_expiry.py), read from the catalog at each scrape:

    tierstore_hot_oldest_owned_age_seconds  now - b_warm: the age of the oldest instant hot owns
    tierstore_hot_expiry_margin_seconds     b_warm + hot_safety_ttl - now: how long before the
                                            safety TTL may delete data the catalog gives hot
    tierstore_hot_expiry_at_risk            1 once less than half of hot_safety_ttl - hot_age is
                                            left (expire_hot has stalled); a warning is logged too
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rollups.timeutil import format_time, now_ms
from tiers.hot_expiry import expiry_risk

log = logging.getLogger("tierstore.router")

WARN_EVERY_S = 600.0  # at most one warning per process this often while the alarm lasts

_GAUGES = (("tierstore_hot_oldest_owned_age_seconds", "Age of the oldest instant the catalog gives the hot tier "
                                                      "(now - b_warm), in seconds."),
           ("tierstore_hot_expiry_margin_seconds", "Seconds before the hot tier's safety TTL may delete data the "
                                                   "catalog still gives hot (b_warm + hot_safety_ttl - now)."),
           ("tierstore_hot_expiry_at_risk", "1 while expire_hot has stalled so long that the hot tier's safety TTL "
                                            "comes within reach of data hot owns, else 0."))


class HotExpiryCollector(Collector):
    """The three gauges above; nothing when the catalog cannot be read (the scrape still succeeds)."""

    def __init__(self, catalog: Any, hot_age_ms: int, safety_ttl_ms: int, clock: Callable[[], int] = now_ms):
        self.catalog = catalog
        self.hot_age_ms = hot_age_ms
        self.safety_ttl_ms = safety_ttl_ms
        self.clock = clock
        self._warned_at: float | None = None

    def describe(self) -> Iterator[Metric]:
        for name, doc in _GAUGES:
            yield GaugeMetricFamily(name, doc)

    def collect(self) -> Iterator[Metric]:
        try:
            b_warm = self.catalog.snapshot().b_warm
        except Exception:  # the catalog's own errors are reported by /readyz
            log.debug("hot expiry metrics: the catalog is unavailable", exc_info=True)
            return
        risk = expiry_risk(b_warm, self.clock(), self.hot_age_ms, self.safety_ttl_ms)
        if risk.at_risk:
            self._warn(b_warm, risk.margin_ms)
        values = (risk.owned_age_ms / 1000, risk.margin_ms / 1000, float(risk.at_risk))
        for (name, doc), value in zip(_GAUGES, values):
            yield GaugeMetricFamily(name, doc, value=value)

    def _warn(self, b_warm: int, margin_ms: int) -> None:
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY_S:
            return
        self._warned_at = now
        log.warning("hot tier: expire_hot has not moved b_warm (%s) for too long; the safety TTL may delete "
                    "data the hot tier still owns in %.0f s (queries would then answer 503 for it). Check "
                    "the scheduler and the expire_hot runs.", format_time(b_warm), margin_ms / 1000)


def init_metrics(metrics: Any, catalog: Any, settings: Any) -> None:
    """Add the collector to `metrics` (router.metrics.Metrics) when settings name the hot tier's
    ages (hot_age, hot_safety_ttl)."""
    safety = getattr(settings, "hot_safety_ttl", None)
    hot_age = getattr(settings, "hot_age", None)
    if safety is not None and hot_age is not None:
        metrics.add_collector(HotExpiryCollector(catalog, hot_age, safety))
