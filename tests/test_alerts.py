"""Alerts end to end: rules through the admin API, the `alerts` job evaluating them against real
tiers, and a webhook receiver on loopback (http.server in a thread) that counts what it gets —
an alert fires once and resolves once, two racing evaluations notify once, a failing webhook is
retried with backoff and every attempt is recorded, /metrics shows the state."""
from __future__ import annotations

import threading
import types
import uuid

import pytest

from rollups.timeutil import MINUTE_MS, ceil_to, now_ms
from tests.api_support import ApiServer, isolated_settings, run_job, served, unique_stream


@pytest.fixture(scope="module")
def api(settings):
    s = isolated_settings(settings, "alerts", redis_db=57).model_copy(update={
        "alerts_webhook_attempts": 3, "alerts_retry_base": 10, "alerts_retry_max": 50, "alerts_webhook_timeout": 2000})
    yield from served(s)


def hook() -> str:
    return f"/hook/{uuid.uuid4().hex[:10]}"


def create(api: ApiServer, **rule) -> dict:
    r = api.post("/v1/alerts", json=rule)
    assert r.status_code == 201, r.text
    return r.json()


def events(api: ApiServer, stream: str, key: str, n: int, ts: int, value: float = 1.0) -> None:
    r = api.post("/v1/events", json=[{"stream": stream, "key": key, "ts": ts, "value": value}] * n)
    assert r.status_code == 202, r.text


def evaluate(api: ApiServer, as_of=None) -> dict:
    run = run_job(api, "alerts", as_of=as_of)
    assert run["status"] == "done", run
    return run["stats"]


def test_an_alert_fires_once_and_resolves_once(api, receiver):
    stream, path = unique_stream("alert"), hook()
    rule = create(api, name="hot song", stream=stream, key="k1", aggregate="count", window="5m",
                  comparison=">", threshold=5, webhook_url=receiver.url(path))
    assert rule["state"] == "ok" and rule["window"] == "5m" and rule["transitions"] == 0
    now = now_ms()
    events(api, stream, "k1", 4, now - MINUTE_MS)
    events(api, stream, "k2", 9, now - MINUTE_MS)  # another key does not count
    evaluate(api, now)
    assert receiver.got(path) == [] and api.get(f"/v1/alerts/{rule['id']}").json()["state"] == "ok"

    events(api, stream, "k1", 2, now - MINUTE_MS)  # 6 > 5
    evaluate(api, now + 1000)
    evaluate(api, now + 2000)  # still firing: nothing new
    posts = receiver.got(path)
    assert [p["body"]["event"] for p in posts] == ["firing"], posts
    body = posts[0]["body"]
    assert (body["rule_id"], body["value"], body["transition"], body["stream"]) == (rule["id"], 6.0, 1, stream)
    assert posts[0]["idempotency_key"] == f"tierstore-alert-{rule['id']}-1"
    got = api.get(f"/v1/alerts/{rule['id']}").json()
    assert got["state"] == "firing" and got["transitions"] == 1 and got["last_value"] == 6.0
    [note] = got["notifications"]
    assert note["event"] == "firing" and note["status"] == "sent"
    assert [(a["attempt"], a["ok"], a["status_code"]) for a in note["attempts"]] == [(1, True, 200)]
    metrics = api.get("/metrics").text
    assert f'tierstore_alerts_firing{{rule="{rule["id"]}"}} 1.0' in metrics

    # the window moves past the events: resolved, once
    later = ceil_to(now, MINUTE_MS) + 10 * MINUTE_MS
    evaluate(api, later)
    evaluate(api, later + MINUTE_MS)
    evaluate(api, now + 3000)  # an evaluation older than the last one changes nothing
    posts = receiver.got(path)
    assert [p["body"]["event"] for p in posts] == ["firing", "resolved"], posts
    assert posts[1]["body"]["value"] == 0.0 and posts[1]["body"]["transition"] == 2
    got = api.get(f"/v1/alerts/{rule['id']}").json()
    assert got["state"] == "resolved" and [n["event"] for n in got["notifications"]] == ["resolved", "firing"]
    assert f'tierstore_alerts_firing{{rule="{rule["id"]}"}} 0.0' in api.get("/metrics").text
    assert api.request("DELETE", f"/v1/alerts/{rule['id']}").status_code == 200


def test_racing_evaluations_notify_once(api, receiver):
    from scheduler.alerts import run_alerts
    from tierstore.app import RESOURCES

    stream, path = unique_stream("race"), hook()
    rule = create(api, stream=stream, aggregate="sum", window="10m", comparison=">=", threshold=10.0,
                  webhook_url=receiver.url(path))
    now = now_ms()
    events(api, stream, "a", 2, now - MINUTE_MS, value=5.0)
    resources = api.app.extensions[RESOURCES]
    settings = api.app.extensions["tierstore"].settings
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def race() -> None:
        try:
            barrier.wait()
            run_alerts(types.SimpleNamespace(resources=resources, settings=settings, as_of=now))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=race) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert [p["body"]["event"] for p in receiver.got(path)] == ["firing"]
    got = api.get(f"/v1/alerts/{rule['id']}").json()
    assert got["transitions"] == 1 and len(got["notifications"]) == 1
    api.request("DELETE", f"/v1/alerts/{rule['id']}")


def test_a_failing_webhook_is_retried_and_recorded(api, receiver):
    stream = unique_stream("retry")
    flaky, down = hook(), hook()
    receiver.fail[flaky] = 2   # two 500s, then 200
    receiver.fail[down] = -1   # always 500
    now = now_ms()
    events(api, stream, "song", 3, now - MINUTE_MS)
    r1 = create(api, stream=stream, kind="rank", key="song", top_n=1, aggregate="count", window="5m",
                webhook_url=receiver.url(flaky))
    r2 = create(api, stream=stream, aggregate="max", window="5m", comparison="<=", threshold=1.0,
                webhook_url=receiver.url(down))
    before = api.get("/metrics").text
    stats = evaluate(api, now)
    assert stats["sent"] >= 1 and stats["failed"] >= 1, stats
    posts = receiver.got(flaky)
    assert len(posts) == 3 and {p["idempotency_key"] for p in posts} == {f"tierstore-alert-{r1['id']}-1"}
    assert posts[0]["body"]["rank"] == 1 and posts[0]["body"]["kind"] == "rank"
    [note] = api.get(f"/v1/alerts/{r1['id']}").json()["notifications"]
    assert note["status"] == "sent"
    assert [(a["attempt"], a["ok"], a["status_code"]) for a in note["attempts"]] == [(1, False, 500), (2, False, 500),
                                                                                     (3, True, 200)]
    assert len(receiver.got(down)) == 3
    got = api.get(f"/v1/alerts/{r2['id']}").json()
    assert got["state"] == "firing"  # the state changed; the notification failed, recorded
    [note] = got["notifications"]
    assert note["status"] == "failed" and [a["ok"] for a in note["attempts"]] == [False] * 3
    assert note["attempts"][0]["error"] == "no"
    evaluate(api, now + 1000)  # a failed notification is not sent again; still firing: none new
    assert len(receiver.got(down)) == 3

    def counter(text: str, status: str) -> float:
        line = [x for x in text.splitlines() if x.startswith(f'tierstore_alert_notifications_total{{status="{status}"}}')]
        return float(line[0].split()[-1]) if line else 0.0
    after = api.get("/metrics").text
    assert counter(after, "failed") == counter(before, "failed") + 1
    assert counter(after, "sent") >= counter(before, "sent") + 1
    for r in (r1, r2):
        api.request("DELETE", f"/v1/alerts/{r['id']}")


def test_rules_api(api, receiver):
    stream = unique_stream("api")
    url = receiver.url(hook())
    bad = [{"stream": stream, "webhook_url": url},                                        # no comparison/threshold
           {"stream": stream, "webhook_url": url, "kind": "rank", "top_n": 3},            # rank without key
           {"stream": stream, "webhook_url": url, "kind": "rank", "key": "a", "top_n": 3, "aggregate": "avg"},
           {"stream": stream, "webhook_url": url, "comparison": ">", "threshold": 1, "window": "90s"},
           {"stream": stream, "webhook_url": "ftp://x", "comparison": ">", "threshold": 1},
           {"stream": stream, "webhook_url": url, "comparison": "==", "threshold": 1}]
    for body in bad:
        r = api.post("/v1/alerts", json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "validation_failed", (body, r.text)
    rule = create(api, stream=stream, comparison=">", threshold=1, webhook_url=url)
    assert any(r["id"] == rule["id"] for r in api.get("/v1/alerts").json())
    r = api.request("PUT", f"/v1/alerts/{rule['id']}", json={"stream": stream, "comparison": "<", "threshold": 2,
                                                             "webhook_url": url, "window": "1h", "enabled": False})
    assert r.status_code == 200 and (r.json()["comparison"], r.json()["window_ms"], r.json()["enabled"]) == \
        ("<", 3_600_000, False)
    assert api.request("DELETE", f"/v1/alerts/{rule['id']}").status_code == 200
    for method in ("GET", "DELETE"):
        assert api.request(method, f"/v1/alerts/{rule['id']}").status_code == 404
    assert api.get("/v1/alerts/nope").status_code == 404
