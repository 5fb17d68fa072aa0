"""Alert rules, their state and their notifications in PostgreSQL (sql/migrations/common/0080_alerts.sql).

A rule is either
  - threshold: `aggregate` (count|sum|avg|min|max) of `stream` (of one `key`, or of every key) over
    the last `window_ms`, compared (`comparison` > >= < <=) with `threshold`; or
  - rank: `key` is among the top `top_n` keys of `stream` by `aggregate` (count|sum) over the window.
Its state goes ok -> firing (condition true) -> resolved (false) -> firing ... Every transition to
firing or resolved adds one notification row (UNIQUE (rule_id, transition)), in the transaction
that changes the state and under the rule's advisory lock (tiers/locks.py alert_lock_name), so two
evaluations that race make one transition and one notification. Deliveries record each attempt.
Times: timestamptz in the database, RFC 3339 strings out (format_time), epoch ms in arguments.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from rollups.timeutil import format_time
from tiers.locks import alert_lock_name, xact_lock

DEFINITION = ("name", "stream", "key", "kind", "aggregate", "window_ms", "comparison", "threshold", "top_n",
              "webhook_url", "enabled")
_COLUMNS = ("id, tenant, name, stream, key, kind, aggregate, window_ms, comparison, threshold, top_n, webhook_url, "
            "enabled, state, state_since, transitions, last_value, last_rank, last_evaluated, last_as_of, created, "
            "updated")


@dataclass(frozen=True)
class Transition:
    """What one evaluation changed: the rule's new state and the notification it must deliver."""

    rule_id: int
    event: str          # firing | resolved
    transition: int     # the rule's transition number
    notification_id: int


def _ms(dt) -> int | None:
    return None if dt is None else int(dt.timestamp() * 1000)


def rule_json(row: dict[str, Any]) -> dict[str, Any]:
    """A rule row as API JSON (times RFC 3339)."""
    out = {k: row[k] for k in ("id", "tenant", "name", "stream", "key", "kind", "aggregate", "comparison",
                               "threshold", "top_n", "webhook_url", "enabled", "state", "transitions",
                               "last_value", "last_rank")}
    out["window_ms"] = row["window_ms"]
    for k in ("state_since", "last_evaluated", "created", "updated"):
        out[k] = None if row[k] is None else format_time(_ms(row[k]))
    return out


class AlertStore:
    def __init__(self, pool):
        """`pool`: a psycopg_pool ConnectionPool on the instance's PostgreSQL."""
        self.pool = pool

    # ---- rules (the admin API) ----

    def create(self, tenant: str, rule: dict[str, Any]) -> dict[str, Any]:
        cols = ", ".join(DEFINITION)
        with self.pool.connection() as conn:
            row = conn.cursor(row_factory=dict_row).execute(
                f"INSERT INTO alert_rules (tenant, {cols}) VALUES (%s, {', '.join(['%s'] * len(DEFINITION))}) "
                f"RETURNING {_COLUMNS}", (tenant, *[rule[c] for c in DEFINITION])).fetchone()
        return row

    def replace(self, tenant: str, rule_id: int, rule: dict[str, Any]) -> dict[str, Any] | None:
        """The new definition; the state is kept (the next evaluation judges it by the new one)."""
        sets = ", ".join(f"{c} = %s" for c in DEFINITION)
        with self.pool.connection() as conn:
            return conn.cursor(row_factory=dict_row).execute(
                f"UPDATE alert_rules SET {sets}, updated = now() WHERE id = %s AND tenant = %s AND deleted IS NULL "
                f"RETURNING {_COLUMNS}", (*[rule[c] for c in DEFINITION], rule_id, tenant)).fetchone()

    def delete(self, tenant: str, rule_id: int) -> bool:
        with self.pool.connection() as conn:
            cur = conn.execute("UPDATE alert_rules SET deleted = now(), enabled = false WHERE id = %s AND tenant = %s "
                               "AND deleted IS NULL", (rule_id, tenant))
            return cur.rowcount == 1

    def get(self, tenant: str | None, rule_id: int) -> dict[str, Any] | None:
        """The rule (tenant None: any tenant's), None when absent or deleted."""
        with self.pool.connection() as conn:
            return conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_COLUMNS} FROM alert_rules WHERE id = %s AND deleted IS NULL "
                "AND (%s::text IS NULL OR tenant = %s)", (rule_id, tenant, tenant)).fetchone()

    def list(self, tenant: str | None = None, *, enabled_only: bool = False) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            return conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_COLUMNS} FROM alert_rules WHERE deleted IS NULL AND (%s::text IS NULL OR tenant = %s) "
                "AND (NOT %s OR enabled) ORDER BY id", (tenant, tenant, enabled_only)).fetchall()

    def notifications(self, rule_id: int, limit: int = 10) -> list[dict[str, Any]]:
        """The rule's last `limit` notifications, newest first, each with its attempts."""
        with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            rows = cur.execute("SELECT id, transition, event, payload, status, attempts, created, finished "
                               "FROM alert_notifications WHERE rule_id = %s ORDER BY transition DESC LIMIT %s",
                               (rule_id, limit)).fetchall()
            ids = [r["id"] for r in rows]
            attempts = cur.execute("SELECT notification_id, attempt, at, ok, status_code, error FROM alert_attempts "
                                   "WHERE notification_id = ANY(%s) ORDER BY notification_id, attempt",
                                   (ids,)).fetchall() if ids else []
        by_id: dict[int, list] = {}
        for a in attempts:
            by_id.setdefault(a["notification_id"], []).append(
                {"attempt": a["attempt"], "at": format_time(_ms(a["at"])), "ok": a["ok"],
                 "status_code": a["status_code"], "error": a["error"]})
        return [{"id": r["id"], "transition": r["transition"], "event": r["event"], "status": r["status"],
                 "attempts": by_id.get(r["id"], []), "created": format_time(_ms(r["created"])),
                 "finished": None if r["finished"] is None else format_time(_ms(r["finished"])),
                 "payload": r["payload"]} for r in rows]

    # ---- evaluation (scheduler/alerts.py) ----

    def judge(self, rule_id: int, condition: bool, value: float | None, rank: int | None, as_of: int,
              payload_of) -> Transition | None:
        """Record an evaluation of rule `rule_id` at `as_of` (epoch ms) whose condition is `condition`;
        when it changes the state (ok/resolved -> firing, firing -> resolved) add the notification
        `payload_of(rule row, event, transition number)` (a JSON-able dict) in the same transaction,
        under the rule's advisory lock, and return the Transition. An evaluation older than the
        last one recorded (a racing run with an earlier as_of) changes nothing."""
        with self.pool.connection() as conn, conn.transaction():
            xact_lock(conn, alert_lock_name(rule_id))
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(f"SELECT {_COLUMNS} FROM alert_rules WHERE id = %s AND deleted IS NULL FOR UPDATE",
                              (rule_id,)).fetchone()
            if row is None or (row["last_as_of"] is not None and as_of < row["last_as_of"]):
                return None
            event = None
            if condition and row["state"] != "firing":
                event = "firing"
            elif not condition and row["state"] == "firing":
                event = "resolved"
            cur.execute("UPDATE alert_rules SET last_value = %s, last_rank = %s, last_evaluated = now(), "
                        "last_as_of = %s WHERE id = %s", (value, rank, as_of, rule_id))
            if event is None:
                return None
            number = row["transitions"] + 1
            cur.execute("UPDATE alert_rules SET state = %s, state_since = now(), transitions = %s WHERE id = %s",
                        (event, number, rule_id))
            payload = payload_of({**row, "last_value": value, "last_rank": rank}, event, number)
            nid = cur.execute("INSERT INTO alert_notifications (rule_id, transition, event, payload) "
                              "VALUES (%s, %s, %s, %s) RETURNING id",
                              (rule_id, number, event, Jsonb(payload))).fetchone()["id"]
            return Transition(rule_id, event, number, nid)

    def pending(self, rule_id: int | None = None) -> list[dict[str, Any]]:
        """Notifications not yet delivered nor given up (oldest first), with their rule's webhook."""
        with self.pool.connection() as conn:
            return conn.cursor(row_factory=dict_row).execute(
                "SELECT n.id, n.rule_id, n.transition, n.event, n.payload, n.attempts, r.webhook_url "
                "FROM alert_notifications n JOIN alert_rules r ON r.id = n.rule_id "
                "WHERE n.status = 'pending' AND (%s::bigint IS NULL OR n.rule_id = %s) ORDER BY n.id",
                (rule_id, rule_id)).fetchall()

    def is_pending(self, notification_id: int) -> bool:
        """Whether `notification_id` is still to be delivered (read by the holder of its rule's
        delivery lock, tiers/locks.py alert_delivery_lock_name, so one process delivers it)."""
        with self.pool.connection() as conn:
            row = conn.execute("SELECT status FROM alert_notifications WHERE id = %s", (notification_id,)).fetchone()
        return row is not None and row[0] == "pending"

    def attempt(self, notification_id: int, number: int, ok: bool, status_code: int | None,
                error: str | None) -> None:
        with self.pool.connection() as conn:
            conn.execute("INSERT INTO alert_attempts (notification_id, attempt, ok, status_code, error) "
                         "VALUES (%s, %s, %s, %s, %s)", (notification_id, number, ok, status_code, error))
            conn.execute("UPDATE alert_notifications SET attempts = %s WHERE id = %s", (number, notification_id))

    def finish(self, notification_id: int, sent: bool) -> None:
        with self.pool.connection() as conn:
            conn.execute("UPDATE alert_notifications SET status = %s, finished = now() WHERE id = %s",
                         ("sent" if sent else "failed", notification_id))

    def counts(self, timeout_s: float | None = None) -> tuple[list[tuple[int, str, bool]], dict[str, int]]:
        """([(rule id, name, firing)] of live rules, {notification status: count}) for /metrics;
        `timeout_s` bounds the wait for a connection (default the pool's)."""
        with self.pool.connection(timeout=timeout_s) as conn:
            rules = conn.execute("SELECT id, name, state = 'firing' FROM alert_rules WHERE deleted IS NULL "
                                 "ORDER BY id").fetchall()
            statuses = dict(conn.execute("SELECT status, count(*) FROM alert_notifications GROUP BY status").fetchall())
        return [tuple(r) for r in rules], statuses
