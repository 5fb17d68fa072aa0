"""Helpers for the HTTP tests: a real server on a free port, and the raw-event oracle."""
from __future__ import annotations

import math
import threading
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis
import requests
from werkzeug.serving import make_server

from rollups.partials import Agg
from rollups.timeutil import HOUR_MS, MINUTE_MS, TimeRange, ceil_to, floor_to, now_ms, parse_time
from tests.warm_support import fresh_database


_REDIS_DB_OWNERS: dict[int, str] = {}


def redis_db_url(settings, name: str, redis_db: int, *, empty: bool = True) -> str:
    """The URL of Redis database `redis_db` of the instance's server (emptied unless `empty=False`, for
    a second client of a database the module already set up), owned by `name` for the
    whole test session: a second owner of one database fails at once (tests must not depend on what
    another module left behind). Database 0 belongs to the tests that use settings.redis_url as is.

    Cluster mode (settings.redis_mode "cluster": only database 0 exists): the same ownership check,
    the URL of database 0, and unless `empty=False` every master is flushed — modules run one after
    another, so each still starts from an empty Redis (what earlier modules wrote is gone)."""
    owner = _REDIS_DB_OWNERS.setdefault(redis_db, name)
    if redis_db == 0 or owner != name:
        raise AssertionError(f"Redis database {redis_db} is already used by {owner!r}; give {name!r} its own")
    parts = urlsplit(settings.redis_url)
    if getattr(settings, "redis_mode", "standalone") == "cluster":
        redis_url = urlunsplit((parts.scheme, parts.netloc, "/0", parts.query, parts.fragment))
        if empty:
            flush_cluster(redis_url)
        return redis_url
    redis_url = urlunsplit((parts.scheme, parts.netloc, f"/{redis_db}", parts.query, parts.fragment))
    if empty:
        client = redis.Redis.from_url(redis_url)
        client.flushdb()
        client.close()
    return redis_url


def flush_cluster(redis_url: str) -> None:
    """Empty every master of the Redis Cluster that redis_url names a node of (replicas follow)."""
    from tierstore.wiring import redis_client, redis_primaries

    client = redis_client(redis_url, "cluster")
    try:
        for _name, node in redis_primaries(client):
            node.flushdb()
    finally:
        client.close()


def data_key_count(client: redis.Redis) -> int:
    """How many keys of the database hold data: caches that fill as queries read (results cache
    entries, the hot tier's cache generations and window unions) are left out, so a test can tell
    whether a refused request changed anything while it reads answers in between."""
    from router.cache import KEY_PREFIX

    return sum(1 for k in client.scan_iter(count=1000)
               if not k.startswith(KEY_PREFIX.encode()) and not k.endswith(b"cache:gen") and b"}:win:" not in k)


def isolated_settings(settings, name: str, redis_db: int):
    """Settings on a fresh PostgreSQL database and an emptied Redis database of the instance's
    servers (redis_db_url), so these tests own their catalog, log and aggregates."""
    redis_url = redis_db_url(settings, name, redis_db)
    postgres_url = fresh_database(settings.postgres_url, f"tierstore_test_{name}")
    return settings.model_copy(update={"postgres_url": postgres_url, "redis_url": redis_url})


def served(settings, **build):
    """For a module fixture (`yield from served(settings)`): an ApiServer over build_app(settings,
    **build), closed with the app's clients when the fixture ends."""
    from tierstore.app import build_app, close_app

    app = build_app(settings, **build)
    server = ApiServer(app)
    try:
        yield server
    finally:
        server.close()
        close_app(app)


def served_replicas(settings, n: int = 2):
    """For a module fixture (`yield from served_replicas(settings)`): a list of `n` ApiServers, each
    over its own build_app(settings) on the same Redis and PostgreSQL (the first one migrates),
    closed with their apps' clients when the fixture ends."""
    from tierstore.app import build_app, close_app

    apps = [build_app(settings, migrate=i == 0) for i in range(n)]
    servers = [ApiServer(app) for app in apps]
    try:
        yield servers
    finally:
        for server, app in zip(servers, apps):
            server.close()
            close_app(app)


class ApiServer:
    """A WSGI app served by werkzeug's threaded server in a background thread."""

    def __init__(self, app):
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.http = requests.Session()
        self.thread = threading.Thread(target=self.server.serve_forever, name="api-server", daemon=True)
        self.thread.start()

    def get(self, path: str, params: dict | None = None, **kw) -> requests.Response:
        return self.http.get(self.url + path, params=params, timeout=60, **kw)

    def post(self, path: str, json=None, **kw) -> requests.Response:
        if json is not None:
            kw["data"] = orjson.dumps(json)
            kw.setdefault("headers", {})["Content-Type"] = "application/json"
        return self.http.post(self.url + path, timeout=60, **kw)

    def request(self, method: str, path: str, **kw) -> requests.Response:
        return self.http.request(method, self.url + path, timeout=60, **kw)

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(10)
        self.http.close()


def unique_stream(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def hot_window(api: ApiServer, hours: int = 20) -> TimeRange:
    """A minute-aligned range the hot tier owns now, ending a few minutes before now."""
    b_warm = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
    now = now_ms()
    start = ceil_to(max(b_warm, now - hours * HOUR_MS), MINUTE_MS)
    end = floor_to(now, MINUTE_MS) - 2 * MINUTE_MS
    if end - start < HOUR_MS:
        raise AssertionError(f"the hot tier owns too little time to test in (b_warm {b_warm}, now {now})")
    return TimeRange(start, end)


def ndjson(events: list[dict]) -> bytes:
    return b"\n".join(orjson.dumps(e) for e in events) + b"\n"


@dataclass
class Oracle:
    """Every accepted raw event of one stream; answers computed in plain Python."""

    events: list[tuple[str, int, float]] = field(default_factory=list)  # (key, ts, value)
    ids: set[str] = field(default_factory=set)

    def add(self, batch: list[dict]) -> tuple[int, int]:
        """Record a batch the API accepted; return the (accepted, duplicates) it should report."""
        accepted = duplicates = 0
        for e in batch:
            if e.get("id") is not None:
                if e["id"] in self.ids:
                    duplicates += 1
                    continue
                self.ids.add(e["id"])
            self.events.append((e["key"], parse_time(e["ts"]), float(e.get("value", 1.0))))
            accepted += 1
        return accepted, duplicates

    def per_key(self, rng: TimeRange) -> dict[str, Agg]:
        acc: dict[str, Agg] = {}
        for k, ts, v in self.events:
            if rng.contains(ts):
                acc.setdefault(k, Agg()).add(v)
        return acc

    def ordered(self, rng: TimeRange, by: str) -> list[tuple[str, float]]:
        acc = self.per_key(rng)
        return sorted(((k, float(getattr(a, by))) for k, a in acc.items()), key=lambda kv: (-kv[1], kv[0]))

    def series(self, rng: TimeRange, step: int, agg: str, key: str | None = None) -> list[tuple[int, float | None]]:
        first = floor_to(rng.start, step)
        buckets: dict[int, Agg] = {}
        for k, ts, v in self.events:
            if rng.contains(ts) and key in (None, k):
                buckets.setdefault(floor_to(ts, step), Agg()).add(v)
        return [(t, buckets[t].value(agg) if t in buckets else None) for t in range(first, rng.end, step)]


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def query_range(start, end) -> TimeRange:
    """The effective range of API.md: from rounded down, to rounded up to the minute."""
    return TimeRange(floor_to(parse_time(start), MINUTE_MS), ceil_to(parse_time(end), MINUTE_MS))


# ---- comparing API answers with the oracle (shared by the single- and cross-tier oracle tests) ----

STEPS = ("1m", "5m", "7m", "15m", "1h", "90m", "2h", "1d")
AGGS = ("count", "sum", "min", "max", "avg")


def check_topk(api: ApiServer, oracle: Oracle, stream: str, start, end, k: int, by: str) -> None:
    rng = query_range(start, end)
    body = api.get("/v1/query/topk", {"stream": stream, "from": start, "to": end, "k": k, "by": by}).json()
    want = oracle.ordered(rng, by)[:k]
    got = [(i["key"], i["value"]) for i in body["items"]]
    assert [g[0] for g in got] == [w[0] for w in want] and all(close(g[1], w[1]) for g, w in zip(got, want)), \
        f"topk {stream} [{start}, {end}) k={k} by={by}: got {got[:10]} want {want[:10]}"
    assert [i["rank"] for i in body["items"]] == list(range(1, len(want) + 1))
    assert not body["meta"]["partial"]


@contextmanager
def counted_opens(tiers: dict, names):
    """While inside: each named tier's ranked_access counted (the real access still answers);
    yields a Counter {tier name: opens}. The tiers' own methods are restored on exit."""
    opened: Counter = Counter()
    real = {name: tiers[name].ranked_access for name in names}

    def spy(name):
        def ranked_access(*args, **kw):
            opened[name] += 1
            return real[name](*args, **kw)
        return ranked_access

    for name in real:
        tiers[name].ranked_access = spy(name)
    try:
        yield opened
    finally:
        for name, fn in real.items():
            tiers[name].ranked_access = fn


def check_topk_after_hot_moves(api: ApiServer, oracle: Oracle, stream: str, start, end, event: dict) -> None:
    """POST one event into the hot tier (the whole answer of [start, end) misses from then on),
    then check the top-10 by sum and by count against the oracle, answered by the threshold path."""
    assert api.post("/v1/events", json=[event]).status_code == 202
    oracle.add([event])
    for by in ("sum", "count"):
        check_topk(api, oracle, stream, start, end, 10, by)
        body = api.get("/v1/query/topk", {"stream": stream, "from": start, "to": end, "k": 10, "by": by}).json()
        assert body["meta"]["ranking"]["method"] == "threshold"


def check_rank(api: ApiServer, oracle: Oracle, stream: str, start, end, key: str, by: str, around: int) -> None:
    rng = query_range(start, end)
    body = api.get("/v1/query/rank", {"stream": stream, "from": start, "to": end, "key": key, "by": by,
                                      "around": around}).json()
    ordered = oracle.ordered(rng, by)
    keys = [k for k, _ in ordered]
    assert body["total_keys"] == len(ordered), body
    if key not in keys:
        assert (body["rank"], body["value"], body["around"]) == (None, None, []), body
        return
    i = keys.index(key)
    assert body["rank"] == i + 1 and close(body["value"], ordered[i][1]), (body, ordered[i])
    lo = max(0, i - around)
    want = [(lo + j + 1, k, v) for j, (k, v) in enumerate(ordered[lo:i + around + 1])]
    got = [(n["rank"], n["key"], n["value"]) for n in body["around"]]
    assert [g[:2] for g in got] == [w[:2] for w in want] and all(close(g[2], w[2]) for g, w in zip(got, want))


def check_series(api: ApiServer, oracle: Oracle, stream: str, start, end, step: str, agg: str,
                 key: str | None = None) -> None:
    from rollups.timeutil import parse_duration

    rng = query_range(start, end)
    params = {"stream": stream, "from": start, "to": end, "step": step, "agg": agg}
    if key is not None:
        params["key"] = key
    body = api.get("/v1/query/series", params).json()
    want = oracle.series(rng, parse_duration(step), agg, key)
    got = [(parse_time(p["t"]), p["value"]) for p in body["points"]]
    assert [g[0] for g in got] == [w[0] for w in want], f"series buckets differ: {got[:3]} vs {want[:3]}"
    bad = [(g, w) for g, w in zip(got, want) if not close(g[1], w[1])]
    assert not bad, f"series {stream} [{start}, {end}) step={step} agg={agg} key={key}: {bad[:5]}"


def run_job(api: ApiServer, name: str, as_of=None, timeout_s: float = 120) -> dict:
    """POST /v1/jobs/{name}/run and wait for the run to end; returns the run record."""
    import time

    r = api.post(f"/v1/jobs/{name}/run", json={} if as_of is None else {"as_of": as_of})
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    deadline = time.monotonic() + timeout_s
    while True:
        run = api.get(f"/v1/jobs/runs/{run_id}").json()
        if run["status"] not in ("queued", "running"):
            return run
        assert time.monotonic() < deadline, f"job {name} still {run['status']} after {timeout_s} s"
        time.sleep(0.1)


def run_jobs(api: ApiServer, names, as_of=None, timeout_s: float = 600) -> list[dict]:
    """Run the jobs `names` one after the other (each as `run_job`, with the same as_of: epoch ms
    or API time text) and assert each ended `done`; returns their run records."""
    from rollups.timeutil import format_time

    when = format_time(as_of) if isinstance(as_of, int) else as_of
    runs = []
    for name in ([names] if isinstance(names, str) else names):
        run = run_job(api, name, as_of=when, timeout_s=timeout_s)
        assert run["status"] == "done", (name, run)
        runs.append(run)
    return runs
