"""A pipeline no event can stop (issue 8, part 5): PostgreSQL is made to refuse one key on purpose
(a trigger on warm's raw `events` table); flush dead-letters exactly that event and lands the rest;
the dead letter is listed, counted in /metrics and /readyz, and a replay after the trigger is gone
brings it in, so every answer equals the oracle of all raw events. A connection lost mid-flush
dead-letters nothing. Crashing the flush at every point with a refusing tier leaves each event in
warm exactly once or in the dead-letter store exactly once.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import redis as redis_lib

from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, TimeRange, floor_to, format_time, now_ms, parse_time
from scheduler.faults import CRASH_ENV, CRASH_EXIT_CODE, CRASH_POINTS
from tests.api_support import (ApiServer, Oracle, check_series, check_topk, isolated_settings, redis_db_url, run_job,
                               served, unique_stream)
from tests.warm_support import T0, Ev, migrated_database, random_events, raw_rows, reset, table
from scheduler import steps
from tierstore import services
from tiers.catalog_pg import PgCatalog
from tiers.db import make_pool
from tiers.deadletters import REPLAY_LOG, DeadLetterStore, Refusal
from tiers.eventlog import FLUSH_GROUP, SEAL_KEY, mark_copy, registered_logs, total_length
from tiers.hot import RedisHotTier
from tiers.warm import WarmTier

ROOT = Path(__file__).resolve().parent.parent
TENANT = "default"  # auth off: every request is tenant default

REFUSE_SQL = """
CREATE OR REPLACE FUNCTION test_refuse_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM keys WHERE id = NEW.key_id AND key = 'poison') THEN
    RAISE EXCEPTION 'test trigger: key poison is refused';
  END IF;
  IF EXISTS (SELECT 1 FROM keys WHERE id = NEW.key_id AND key = 'outage') THEN
    PERFORM pg_terminate_backend(pg_backend_pid());  -- the server drops the flush's connection
    PERFORM pg_sleep(5);
  END IF;
  RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS test_refuse_key ON events;
CREATE TRIGGER test_refuse_key BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION test_refuse_key();
"""


@contextmanager
def refusing(url: str):
    """PostgreSQL refuses key 'poison' (RAISE) and drops the connection on key 'outage' while inside."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(REFUSE_SQL)
    try:
        yield
    finally:
        drop_trigger(url)


def drop_trigger(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TRIGGER IF EXISTS test_refuse_key ON events")


# ---- through the API -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dl_settings(settings):
    return isolated_settings(settings, "deadletters", redis_db=34)


@pytest.fixture(scope="module")
def api(dl_settings):
    yield from served(dl_settings)


@pytest.fixture(scope="module")
def rds(dl_settings):
    client = redis_lib.Redis.from_url(dl_settings.redis_url)
    yield client
    client.close()


def warm_window(api: ApiServer) -> TimeRange:
    """Six hours warm owns (below b_warm): late events go there through the log and the flush."""
    b_warm = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
    return TimeRange(floor_to(b_warm - 7 * HOUR_MS, MINUTE_MS), floor_to(b_warm - HOUR_MS, MINUTE_MS))


def ingest(api: ApiServer, oracle: Oracle, events: list[dict]) -> None:
    for i in range(0, len(events), 500):
        r = api.post("/v1/events", json=events[i:i + 500])
        assert r.status_code == 202, r.text
        oracle.add(events[i:i + 500])


def some_events(stream: str, window: TimeRange, n: int, seed: int) -> list[dict]:
    rnd = random.Random(seed)
    return [{"stream": stream, "key": f"k{rnd.randrange(40):02d}", "ts": rnd.randrange(window.start, window.end),
             "value": rnd.randint(-4, 40) / 4, **({"id": f"{stream}-{i}"} if i % 3 == 0 else {})} for i in range(n)]


def without(oracle: Oracle, key: str) -> Oracle:
    return Oracle(events=[e for e in oracle.events if e[0] != key])


def check_answers(api: ApiServer, oracle: Oracle, stream: str, window: TimeRange) -> None:
    for by in ("count", "sum"):
        check_topk(api, oracle, stream, window.start, window.end, 50, by)
    for step, agg in (("1m", "sum"), ("1h", "count"), ("15m", "max")):
        check_series(api, oracle, stream, window.start, window.end, step, agg)
    check_series(api, oracle, stream, window.start, window.end, "1h", "sum", "poison")


def metric(api: ApiServer, name: str, labels: str = "") -> float | None:
    text = api.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return None


def flush_and_refresh(api: ApiServer) -> dict:
    flush = run_job(api, "flush")
    assert flush["status"] == "done", flush
    assert run_job(api, "refresh")["status"] == "done"
    return flush["stats"]


def audit_rows(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT action, target, principal, tenant, remote_addr, details FROM audit_log "
                            "ORDER BY id").fetchall()


def test_refused_event_is_dead_lettered_and_replay_brings_it_in(api, rds, dl_settings):
    url = dl_settings.postgres_url
    stream, window, oracle = unique_stream("dl"), warm_window(api), Oracle()
    poison = {"stream": stream, "key": "poison", "ts": window.start + 7 * MINUTE_MS + 123, "value": 2.5,
              "id": "poison-1"}
    events = some_events(stream, window, 2000, 1)
    ingest(api, oracle, events[:700] + [poison] + events[700:])
    with refusing(url):
        stats = flush_and_refresh(api)
        assert stats["deadlettered_events"] == 1 and stats["events"] == 2000, stats

        listing = api.get("/v1/deadletters").json()
        assert len(listing) == 1, listing
        dead = listing[0]
        assert dead["stream"] == stream and dead["count"] == 1 and not dead["events_truncated"]
        assert dead["events"] == [{**poison, "ts": format_time(poison["ts"])}]
        assert "test trigger: key poison is refused" in dead["reason"] and "RaiseException" in dead["reason"]
        stored = DeadLetterStore(rds).get(TENANT, dead["id"]).events  # byte-exact, as ingest accepted it
        assert stored.equals(table([Ev(stream, "poison", poison["ts"], 2.5, "poison-1")]))
        assert api.get(f"/v1/deadletters/{dead['id']}").json() == dead

        check_answers(api, without(oracle, "poison"), stream, window)  # the others landed in warm
        assert metric(api, "tierstore_deadletter_events") == 1
        assert metric(api, "tierstore_eventlog_backlog_entries") == 0
        assert metric(api, "tierstore_eventlog_oldest_entry_age_seconds") == 0
        assert metric(api, "tierstore_job_last_success_timestamp_seconds", '{job="flush"}') > now_ms() / 1000 - 600
        b_warm = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
        assert metric(api, "tierstore_catalog_boundary_timestamp_seconds", '{boundary="warm"}') == b_warm / 1000
        ready = api.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded", ready.text
        assert ready.json()["deadletter_events"] == 1

        # replayed while the tier still refuses: it comes back as a new dead letter
        r = api.post(f"/v1/deadletters/{dead['id']}/replay")
        assert r.status_code == 202 and r.json()["events"] == 1, r.text
        assert metric(api, "tierstore_eventlog_backlog_entries") == 1
        assert flush_and_refresh(api)["deadlettered_events"] == 1
        again = api.get("/v1/deadletters").json()
        assert len(again) == 1 and again[0]["id"] != dead["id"] and again[0]["events"] == dead["events"]

    r = api.post(f"/v1/deadletters/{again[0]['id']}/replay")
    assert r.status_code == 202, r.text
    assert api.get("/v1/deadletters").json() == []
    assert flush_and_refresh(api).get("deadlettered_events", 0) == 0
    check_answers(api, oracle, stream, window)  # every accepted event, exactly
    assert metric(api, "tierstore_deadletter_events") == 0
    assert api.get("/readyz").json()["status"] == "ready"
    replays = [row for row in audit_rows(url) if row[0] == "deadletter.replay"]
    assert [row[1] for row in replays] == [dead["id"], again[0]["id"]]
    assert all(row[2:5] == (f"{TENANT}:anonymous", TENANT, "127.0.0.1") and row[5]["events"] == 1 for row in replays)


def test_delete_and_the_guards_of_replay(api, rds, dl_settings):
    stream, window, oracle = unique_stream("del"), warm_window(api), Oracle()
    poison = {"stream": stream, "key": "poison", "ts": window.start + 5 * MINUTE_MS, "value": -1.0}
    ingest(api, oracle, some_events(stream, window, 50, 2) + [poison])
    with refusing(dl_settings.postgres_url):
        flush_and_refresh(api)
    [dead] = api.get("/v1/deadletters").json()
    store = DeadLetterStore(rds)
    assert store.list("another-tenant") == [] and store.count("another-tenant") == 0

    marks = (SEAL_KEY, mark_copy(SEAL_KEY, REPLAY_LOG))  # the global seal and the replay log's copy
    saved = [rds.get(k) for k in marks]
    for k in marks:
        rds.set(k, poison["ts"] + 1)  # as if export_cold had sealed its range meanwhile
    try:
        r = api.post(f"/v1/deadletters/{dead['id']}/replay")
        assert r.status_code == 422 and r.json()["error"]["code"] == "range_sealed", r.text
    finally:
        for k, v in zip(marks, saved):
            rds.delete(k) if v is None else rds.set(k, v)
    assert api.get("/v1/deadletters").json() == [dead]

    # written by a flush that has not committed its checkpoint yet: a re-run may still rewrite it
    pending = (now_ms() + DAY_MS, 0)
    store.put_entry(TENANT, pending, table([Ev(stream, "late", window.start, 1.0)]), [Refusal(0, "test")])
    [unsettled] = [d for d in api.get("/v1/deadletters").json() if d["id"] != dead["id"]]
    for method, path in (("POST", f"/v1/deadletters/{unsettled['id']}/replay"),
                         ("DELETE", f"/v1/deadletters/{unsettled['id']}")):
        r = api.request(method, path)
        assert r.status_code == 409 and r.json()["error"]["code"] == "deadletter_unsettled", r.text
    store.clear_entries(TENANT, [pending])

    audited = len(audit_rows(dl_settings.postgres_url))
    r = api.request("DELETE", f"/v1/deadletters/{dead['id']}")
    assert r.status_code == 200 and r.json() == {"id": dead["id"], "status": "deleted", "events": 1}, r.text
    assert api.get("/v1/deadletters").json() == [] and store.count() == 0
    for method, path in (("DELETE", f"/v1/deadletters/{dead['id']}"), ("GET", f"/v1/deadletters/{dead['id']}"),
                         ("POST", f"/v1/deadletters/{dead['id']}/replay")):
        r = api.request(method, path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_deadletter", r.text
    rows = audit_rows(dl_settings.postgres_url)
    assert len(rows) == audited + 1 and rows[-1][:2] == ("deadletter.delete", dead["id"])
    check_answers(api, without(oracle, "poison"), stream, window)


def test_a_connection_lost_mid_flush_dead_letters_nothing(api, rds, dl_settings):
    stream, window, oracle = unique_stream("down"), warm_window(api), Oracle()
    ingest(api, oracle, some_events(stream, window, 300, 3) + [{"stream": stream, "key": "outage",
                                                                "ts": window.start + MINUTE_MS}])
    with refusing(dl_settings.postgres_url):
        run = run_job(api, "flush")
        assert run["status"] == "failed", run  # retried later, not dead-lettered
        assert api.get("/v1/deadletters").json() == [] and metric(api, "tierstore_deadletter_events") == 0
        assert metric(api, "tierstore_eventlog_backlog_entries") >= 1
    assert flush_and_refresh(api).get("deadlettered_events", 0) == 0
    assert total_length(rds) == 0
    check_answers(api, oracle, stream, window)


# ---- crashing the flush with a refusing tier ---------------------------------------------------

NOW = T0 + 2 * HOUR_MS
POINTS = [(p, drop) for p in CRASH_POINTS["flush"] + CRASH_POINTS["deadletters"] for drop in (False, True)]


@pytest.fixture(scope="module")
def crash_url(pg_url):
    return migrated_database(pg_url, "postgres", "_deadletters_crash")


def run_flush(settings, url: str, redis_url: str, crash_at: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env.update(TIERSTORE_POSTGRES_URL=url, TIERSTORE_REDIS_URL=redis_url, TIERSTORE_WARM_MODE="postgres",
               TIERSTORE_HOT_AGE="1h", TIERSTORE_GRACE_PERIOD="0", PYTHONPATH=str(ROOT))
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.run([sys.executable, "-m", "tierstore.cli", "jobs", "run", "flush", "--as-of", str(NOW),
                           "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def crash_batches(seed: int) -> list[list[Ev]]:
    rnd = random.Random(seed)
    out = []
    for b in range(5):
        events = random_events(rnd, 30, T0 - 2 * DAY_MS, 3 * DAY_MS)
        if b in (1, 3):  # two entries with refused events, one with two of them in two streams
            events[4:4] = [Ev("plays", "poison", T0 + b, 1.5, id=f"p{b}")]
        if b == 3:
            events.append(Ev("views", "poison", T0 - DAY_MS, -2.0))
        out.append(events)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("point,drop", POINTS, ids=[f"{p}-{'fixed' if d else 'refusing'}" for p, d in POINTS])
def test_flush_crashing_with_a_refusing_tier_keeps_each_event_exactly_once(settings, crash_url, point, drop):
    """After a crash at `point` and a re-run (with the trigger still there, or dropped before the
    re-run), every accepted event is in warm exactly once or in the dead-letter store exactly once."""
    reset(crash_url)
    redis_url = redis_db_url(settings, "deadletters_crash", 35)
    client = redis_lib.Redis.from_url(redis_url)
    pool = make_pool(crash_url, max_size=2)
    PgCatalog(pool).initialise(NOW, HOUR_MS)
    hot = RedisHotTier.from_url(redis_url, HOUR_MS, 0, DAY_MS)
    accepted: list[Ev] = []
    try:
        for events in crash_batches(7):
            hot.ingest("crash", table(events), now_ms=NOW)
            accepted += events
        with refusing(crash_url):
            crashed = run_flush(settings, crash_url, redis_url, point)
            assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-2000:]
            assert f"{CRASH_ENV}={point} reached" in crashed.stderr
            if drop:
                drop_trigger(crash_url)
            rerun = run_flush(settings, crash_url, redis_url, None)
            assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
        assert all(client.xpending(log, FLUSH_GROUP)["pending"] == 0  # (acked, maybe not yet trimmed)
                   for log in registered_logs(client))

        dead = DeadLetterStore(client).list("crash")
        dead_rows = [tuple(r.values()) for d in dead for r in d.events.select(["key", "ts", "value", "id"]).to_pylist()]
        assert all(r[0] == "poison" for r in dead_rows), dead_rows
        assert DeadLetterStore(client).count() == len(dead_rows)
        warm = WarmTier(crash_url, mode="postgres", pool_size=2)
        try:
            landed = [r for s in ("plays", "views") for r in raw_rows(warm, "crash", s, T0 - 3 * DAY_MS, T0 + 2 * DAY_MS)]
        finally:
            warm.close()
        want = sorted((e.key, e.ts, e.value, e.id) for e in accepted)
        assert sorted(landed + dead_rows) == want  # each event once, in warm or in the dead-letter store
        if not drop:
            assert sorted(dead_rows) == sorted(r for r in want if r[0] == "poison")
    finally:
        hot.close()
        pool.close()
        client.close()


def test_every_dead_letter_crash_point_is_tested():
    assert {p for p, _ in POINTS} == set(CRASH_POINTS["flush"]) | set(CRASH_POINTS["deadletters"])


# ---- PostgreSQL down (last: it restarts this instance's PostgreSQL) -------------------------------

def test_postgres_down_dead_letters_nothing_and_the_flush_catches_up(api, settings, crash_url):
    """With this instance's PostgreSQL stopped, a flush fails (nothing dead-lettered, nothing
    acknowledged) and /metrics still answers; once it is back, the next flush lands every event."""
    reset(crash_url)
    redis_url = redis_db_url(settings, "deadletters_crash", 35)
    client = redis_lib.Redis.from_url(redis_url)
    hot = RedisHotTier.from_url(redis_url, HOUR_MS, 0, DAY_MS)
    warm = WarmTier(crash_url, mode="postgres", pool_size=2)
    events = [e for batch in crash_batches(11) for e in batch if e.key != "poison"]
    try:
        hot.ingest("outage", table(events), now_ms=NOW)
        services.down(settings.layout, ["postgres"])
        try:
            with pytest.raises(psycopg.OperationalError):  # (PoolTimeout is one too)
                steps.flush(client, warm)
            assert DeadLetterStore(client).count() == 0 and total_length(client) == 2  # a log per stream
            scraped = api.get("/metrics")
            assert scraped.status_code == 200 and 'tierstore_metrics_source_up{source="postgres"} 0.0' in scraped.text
        finally:
            services.up(settings.layout, ["postgres"])
        warm.close()
        warm = WarmTier(crash_url, mode="postgres", pool_size=2)
        stats = steps.flush(client, warm)
        assert stats["events"] == len(events) and DeadLetterStore(client).count() == 0, stats
        landed = [r for s in ("plays", "views") for r in raw_rows(warm, "outage", s, T0 - 3 * DAY_MS, T0 + 2 * DAY_MS)]
        assert sorted(landed) == sorted((e.key, e.ts, e.value, e.id) for e in events)
    finally:
        warm.close()
        hot.close()
        client.close()
