"""The `alerts` job: evaluate every enabled alert rule (tiers/alerts.py) as of the run's clock and
deliver the notifications of the transitions it makes.

A rule's window is [ceil(as_of to the minute) - window, ceil(as_of to the minute)), read through
the router's planner (router/planner.py: one catalog snapshot, each tier's segment covered by its
rollups), so a window straddling b_warm is exact like any query. A tier that is down leaves the
rule as it was (stats `errors`): an alert never resolves because data could not be read.

Delivery: each pending notification is POSTed as JSON to the rule's webhook (no redirects
followed; 2xx is success) with headers Idempotency-Key `tierstore-alert-<rule>-<transition>`,
retried with exponential backoff (tenacity) up to settings.alerts_webhook_attempts attempts; every
attempt is a row of alert_attempts, and the notification ends `sent` or `failed`. The rule's
delivery lock (tiers/locks.py alert_delivery_lock_name) makes one process deliver a notification.
"""
from __future__ import annotations

import concurrent.futures as cf
import itertools
import logging
import operator
from typing import Any, Mapping

import requests
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from rollups.errors import TierUnavailable
from rollups.partials import Agg
from rollups.timeutil import MINUTE_MS, TimeRange, ceil_to, format_duration, format_time
from rollups.topk import rank_of
from router.cache import ResultsCache
from router.planner import Planner, QuerySpec
from tiers.alerts import AlertStore
from tiers.locks import alert_delivery_lock_name, session_lock

log = logging.getLogger("tierstore.alerts")

COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
TIERS = ("archive", "cold", "warm", "hot")


class DeliveryFailed(Exception):
    pass


def run_alerts(ctx) -> dict[str, Any]:
    """The job: evaluate every enabled rule at ctx.as_of, then deliver what is pending."""
    r = ctx.resources
    store = AlertStore(r["pool"])
    with cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="tierstore-alerts") as pool:
        planner = Planner({t: r[t] for t in TIERS if r.get(t) is not None}, r["catalog"], pool=pool,
                          cache=ResultsCache(0), timeout_ms=ctx.settings.query_timeout)
        stats = evaluate_all(store, planner, ctx.as_of)
    stats.update(deliver(store, ctx.settings))
    return stats


def evaluate_all(store: AlertStore, planner: Planner, as_of: int) -> dict[str, int]:
    """Evaluate every enabled rule; returns {"rules", "transitions", "firing", "errors"}."""
    stats = {"rules": 0, "transitions": 0, "firing": 0, "errors": 0}
    for rule in store.list(enabled_only=True):
        stats["rules"] += 1
        try:
            condition, value, rank = measure(planner, rule, as_of)
        except TierUnavailable as exc:
            log.warning("alert %s not evaluated: %s", rule["id"], exc.message)
            stats["errors"] += 1
            continue
        t = store.judge(rule["id"], condition, value, rank, as_of, lambda row, event, n: payload(row, event, n, as_of))
        stats["transitions"] += t is not None
        stats["firing"] += condition
    return stats


def window_of(rule: Mapping[str, Any], as_of: int) -> TimeRange:
    end = ceil_to(as_of, MINUTE_MS)
    return TimeRange(end - int(rule["window_ms"]), end)


def measure(planner: Planner, rule: Mapping[str, Any], as_of: int) -> tuple[bool, float | None, int | None]:
    """(condition, value, rank) of the rule over its window ending at as_of. Threshold rules: the
    aggregate of the key (or of every key); count and sum of no events are 0, avg/min/max of none
    are None and never satisfy a comparison. Rank rules: the key's 1-based rank (None: no events)
    by count or sum, the condition rank <= top_n. Raises TierUnavailable."""
    rank_rule = rule["kind"] == "rank"
    key = None if rank_rule else rule["key"]
    spec = QuerySpec(rule["tenant"], rule["stream"], window_of(rule, as_of), "key", key=key)
    outcome = planner.execute(planner.plan(spec, allow_partial=False), allow_partial=False)
    if rank_rule:
        r = rank_of(outcome.partials, rule["key"], rule["aggregate"], 0)
        return r.rank is not None and r.rank <= rule["top_n"], r.value, r.rank
    total = Agg()
    cols = [outcome.partials[c].to_pylist() for c in ("count", "sum", "min", "max")]
    for n, s, lo, hi in zip(*cols):
        if n:
            total = total.merge(Agg(n, s, lo, hi))
    value = total.value(rule["aggregate"])
    if value is None and rule["aggregate"] in ("count", "sum"):
        value = 0.0
    return value is not None and COMPARE[rule["comparison"]](value, rule["threshold"]), value, None


def payload(rule: Mapping[str, Any], event: str, transition: int, as_of: int) -> dict[str, Any]:
    """The JSON a webhook receives for one transition."""
    return {"rule_id": rule["id"], "name": rule["name"], "tenant": rule["tenant"], "event": event,
            "transition": transition, "stream": rule["stream"], "key": rule["key"], "kind": rule["kind"],
            "aggregate": rule["aggregate"], "window": format_duration(int(rule["window_ms"])),
            "comparison": rule["comparison"], "threshold": rule["threshold"], "top_n": rule["top_n"],
            "value": rule["last_value"], "rank": rule["last_rank"], "as_of": format_time(as_of)}


def deliver(store: AlertStore, settings: Any, rule_id: int | None = None) -> dict[str, int]:
    """Deliver every pending notification (of one rule, or all); returns {"sent", "failed"}."""
    out = {"sent": 0, "failed": 0}
    for n in store.pending(rule_id):
        with session_lock(store.pool, alert_delivery_lock_name(n["rule_id"])):
            if not store.is_pending(n["id"]):
                continue  # another evaluation delivered it while this one waited
            ok = post_with_retries(store, n, settings)
            store.finish(n["id"], ok)
        out["sent" if ok else "failed"] += 1
    return out


def post_with_retries(store: AlertStore, n: Mapping[str, Any], settings: Any) -> bool:
    """POST notification `n` to its webhook, retried with exponential backoff; every attempt recorded."""
    attempts = int(getattr(settings, "alerts_webhook_attempts", 4))
    base_s = int(getattr(settings, "alerts_retry_base", 500)) / 1000
    max_s = int(getattr(settings, "alerts_retry_max", 30_000)) / 1000
    timeout_s = int(getattr(settings, "alerts_webhook_timeout", 5_000)) / 1000
    numbers = itertools.count(int(n["attempts"]) + 1)
    headers = {"Idempotency-Key": f"tierstore-alert-{n['rule_id']}-{n['transition']}",
               "User-Agent": "tierstore-alerts"}

    @retry(stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=base_s, max=max_s),
           retry=retry_if_exception_type(DeliveryFailed), reraise=True)
    def once() -> None:
        number = next(numbers)
        try:
            resp = requests.post(n["webhook_url"], json=n["payload"], headers=headers, timeout=timeout_s,
                                 allow_redirects=False)
        except requests.RequestException as exc:
            store.attempt(n["id"], number, False, None, f"{type(exc).__name__}: {exc}"[:500])
            raise DeliveryFailed from exc
        ok = 200 <= resp.status_code < 300
        store.attempt(n["id"], number, ok, resp.status_code, None if ok else resp.text[:500] or resp.reason)
        if not ok:
            raise DeliveryFailed

    try:
        once()
        return True
    except DeliveryFailed:
        log.warning("alert %s transition %s: webhook failed after %d attempts", n["rule_id"], n["transition"],
                    attempts)
        return False
