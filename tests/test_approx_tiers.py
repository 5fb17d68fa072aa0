"""mode=approx over cold and archive: the sketch files written by export_cold with each partition
(tiers/sketch_files.py), carried to S3 by the archive job, read by the router; approx_sketches
pruned when buckets leave warm, at retention (legal holds respected) and on stream delete.

Twenty days of Zipf events (plus two dense days of 4000 one-off keys each: more than a lg_k 12
sketch holds, so those files purge and their bounds are exercised) are moved down by the jobs with
as_of (hot 1 d, warm 3 d, cold 8 d, retention 12 d), then every answer is checked against the
raw-event oracle: every item's true value within [lower_bound, upper_bound]; no_false_negatives
leaves out no key whose true value beats max(k-th lower bound, max_error); no_false_positives
lists only keys above max_error; the error type and sketch size are stated.
"""
from __future__ import annotations

import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rollups import sketches
from rollups.timeutil import DAY_MS, G1D, G1MO, G1W, HOUR_MS, MINUTE_MS, TimeRange, format_time, now_ms, parse_time
from tests.api_support import ApiServer, Oracle, isolated_settings, run_job, served, unique_stream
from tests.test_approx import _check_answer
from tiers import sketch_files

N_KEYS = 400
DENSE = 4000


@pytest.fixture(scope="module")
def api(settings):
    isolated = isolated_settings(settings, "approx_tiers", redis_db=28).model_copy(update={
        "hot_age": DAY_MS, "warm_age": 3 * DAY_MS, "cold_age": 8 * DAY_MS, "archive_retention": 12 * DAY_MS,
        "grace_period": 0, "archive_pack_below": 0})  # per-day partitions: packs carry no sketch files
    yield from served(isolated)


def _resources(api: ApiServer):
    from tierstore.app import RESOURCES

    return api.app.extensions[RESOURCES]


def _zipf(rnd: random.Random) -> str:
    return f"k{min(int(rnd.paretovariate(0.9)), N_KEYS) - 1:03d}"


def _send(api: ApiServer, oracle: Oracle, events: list[dict], size: int = 5000) -> None:
    for pos in range(0, len(events), size):
        batch = events[pos:pos + size]
        r = api.post("/v1/events", json=batch)
        assert r.status_code == 202, r.text
        oracle.add(batch)


def _job(api: ApiServer, name: str, as_of: int) -> dict:
    run = run_job(api, name, as_of=format_time(as_of), timeout_s=900)
    assert run["status"] == "done", run
    return run


def _boundaries(api: ApiServer) -> dict[str, int]:
    return {k: parse_time(v) for k, v in api.get("/v1/tiers").json()["boundaries"].items()}


def _check(api: ApiServer, oracle: Oracle, stream: str, start: int, end: int, k: int, by: str,
           error_type: str, truth_ranges: list[TimeRange] | None = None) -> dict:
    r = api.get("/v1/query/topk", {"stream": stream, "from": format_time(start), "to": format_time(end), "k": k,
                                   "by": by, "mode": "approx", "error_type": error_type})
    assert r.status_code == 200, r.text
    body = r.json()
    info = body["meta"]["approx"]
    assert "fallback" not in info, info
    assert info["error_type"] == error_type and info["sketch_size"] == 2 ** 12 and info["lg_max_k"] == 12
    truth: dict[str, float] = {}
    for rng in truth_ranges or [TimeRange(start, end)]:
        for key, v in oracle.ordered(rng, by):
            truth[key] = truth.get(key, 0.0) + v
    items = [sketches.ApproxItem(i["rank"], i["key"], i["value"], i["lower_bound"], i["upper_bound"])
             for i in body["items"]]
    _check_answer(sketches.ApproxAnswer(items, info["max_error"], info["threshold"], error_type), truth, k)
    return body


def _rows(api: ApiServer, sql: str, *params) -> list[tuple]:
    with _resources(api).pool.connection() as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture(scope="module")
def world(api):
    rnd = random.Random(2026)
    stream, oracle = unique_stream("approx-tiers"), Oracle()
    now = now_ms()
    day0 = now - now % DAY_MS
    lo, hi = day0 - 20 * DAY_MS, now - now % MINUTE_MS - MINUTE_MS
    events = [{"stream": stream, "key": _zipf(rnd), "ts": rnd.randrange(lo, hi), "value": rnd.choice([1.0, 0.5, 2.0])}
              for _ in range(16_000)]
    dense = [day0 - 10 * DAY_MS, day0 - 5 * DAY_MS]  # an archive day and a cold day
    for d in dense:
        events += [{"stream": stream, "key": f"r{d // DAY_MS}-{i:04d}", "ts": d + rnd.randrange(DAY_MS), "value": 1.0}
                   for i in range(DENSE)]
    _send(api, oracle, events)
    for name in ("flush", "refresh", "expire_hot", "export_cold", "archive"):
        _job(api, name, now)
    b = _boundaries(api)
    assert lo < dense[0] < b["archive"] < dense[1] < b["cold"] < b["warm"], b
    tenant = next(t for t, s in _resources(api)["archive"].registry.tenants_streams() if s == stream)
    return {"stream": stream, "oracle": oracle, "now": now, "lo": lo, "hi": hi, "dense": dense, "b": b,
            "tenant": tenant, "rnd": rnd}


def test_every_cold_and_archived_partition_carries_its_sketch(api, world):
    res, stream, tenant = _resources(api), world["stream"], world["tenant"]
    cold, archive = res["cold"], res["archive"]
    cold_days = cold.layout.days(tenant, stream)
    assert cold_days and all(cold.layout.sketch_file(tenant, stream, G1D, d).exists() for d in cold_days)
    for g in (G1W, G1MO):
        for start in cold.layout.periods(tenant, stream, g):
            assert cold.layout.sketch_file(tenant, stream, g, start).exists(), (g, start)
    days = archive.registry.starts(tenant, stream, "day")
    assert days
    for day in days:
        m = archive.registry.manifest(tenant, stream, "day", day)
        obj = m.object("sketch_1d")
        assert obj is not None and archive.store.exists(obj["key"]), m.objects
        table = pq.read_table(pa.BufferReader(archive.store.get_bytes(obj["key"], obj["sha256"])))
        decoded = sketch_files.decode(table)
        # built from the day's exact per-key partials: its total weight is the day's event count
        assert decoded["count"].sketch.total_weight == m.totals()[1]
    for period in ("week", "month"):
        for start in archive.registry.starts(tenant, stream, period):
            m = archive.registry.manifest(tenant, stream, period, start)
            assert m.object("sketch_" + sketch_files.PERIOD_TABLE[period]) is not None, m.objects
    # the dense days hold more keys than a lg_k 12 sketch: their files purged (a real error bound)
    for d in world["dense"]:
        m = archive.registry.manifest(tenant, stream, "day", d)
        blob = (archive.store.get_bytes(m.object("sketch_1d")["key"]) if m is not None
                else cold.layout.sketch_file(tenant, stream, G1D, d).read_bytes())
        s = sketch_files.decode(pq.read_table(pa.BufferReader(blob)))["count"]
        assert s.sketch.num_active_items < DENSE and sketches._max_error(s.sketch) > 0


def test_approx_sketches_keep_only_what_warm_owns(api, world):
    b = world["b"]
    assert _rows(api, "SELECT count(*) FROM approx_sketches WHERE tier NOT IN ('warm', 'hot')")[0][0] == 0
    left = _rows(api, "SELECT granularity, bucket FROM approx_sketches WHERE stream = %s AND bucket < %s",
                 world["stream"], b["cold"])
    assert left == []
    kept = _rows(api, "SELECT count(*) FROM approx_sketches WHERE stream = %s AND tier = 'warm' AND bucket >= %s",
                 world["stream"], b["cold"])[0][0]
    assert kept > 0  # the refresh's warm sketches of days warm still owns stay


def test_bounds_over_cold_and_archive_against_the_oracle(api, world):
    rnd, stream, oracle, b = world["rnd"], world["stream"], world["oracle"], world["b"]
    lo, hi = world["lo"], world["hi"]
    whole = (b["archive"] - b["archive"] % DAY_MS - 3 * DAY_MS, b["cold"] - b["cold"] % DAY_MS)  # archive + cold days
    assert whole[0] < world["dense"][0]
    ranges = [whole, (lo, hi), (lo + 7 * HOUR_MS + 13 * MINUTE_MS, b["cold"] + 5 * HOUR_MS),
              (world["dense"][0], world["dense"][0] + DAY_MS), (world["dense"][1] - DAY_MS, world["dense"][1] + DAY_MS)]
    wide = 0
    for start, end in ranges:
        for error_type in sketches.ERROR_TYPES:
            for by in ("count", "sum"):
                body = _check(api, oracle, stream, start, end, rnd.choice([1, 3, 10]), by, error_type)
                info = body["meta"]["approx"]
                assert info["files"] > 0, info
                wide += info["max_error"] > 0
                tiers = {e["tier"] for e in info["exact"]}
                assert tiers <= {"hot", "warm", "cold", "archive"}
                # cold and archive days come from their sketch files: only hour edges are read exactly
                for e in info["exact"]:
                    if e["tier"] in ("cold", "archive"):
                        assert e["to"] - e["from"] < DAY_MS and e["from"] // DAY_MS == (e["to"] - 1) // DAY_MS, e
        body = _check(api, oracle, stream, *whole, 5, "count", "no_false_negatives")
        assert body["meta"]["approx"]["exact"] == [] and body["meta"]["approx"]["built"] == 0
    assert wide > 0  # the dense days' sketches purged: bounds with a real error were checked


def test_hour_runs_sharing_a_start_are_never_confused(api, world):
    """A partial day of cold or archive is one run of hours sketched whole (tiers/sketch_buckets.py);
    runs with one start and different ends are different sketches (memo and merged groups alike)."""
    stream, oracle, b = world["stream"], world["oracle"], world["b"]
    for day in (b["cold"] - b["cold"] % DAY_MS - 2 * DAY_MS, b["archive"] - b["archive"] % DAY_MS - 2 * DAY_MS):
        start = day + 9 * HOUR_MS
        for end in (day + 20 * HOUR_MS, day + 13 * HOUR_MS, day + 20 * HOUR_MS, day + 13 * HOUR_MS + 7 * MINUTE_MS):
            for by in ("count", "sum"):
                body = _check(api, oracle, stream, start, end, 5, by, "no_false_negatives")
                assert body["meta"]["approx"]["buckets"] == 1, body["meta"]  # the run of hours, one sketch


def test_partition_without_a_sketch_file_is_read_exactly_and_said_so(api, world):
    res, stream, tenant, b = _resources(api), world["stream"], world["tenant"], world["b"]
    cold = res["cold"]
    day = next(d for d in cold.layout.days(tenant, stream) if d not in world["dense"] and d + DAY_MS <= b["cold"])
    cold.layout.sketch_file(tenant, stream, G1D, day).unlink()  # as written before sketch files existed
    rollup = cold.layout.rollup_file(tenant, stream, G1D, day)
    st = os.stat(rollup)
    os.utime(rollup, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))  # a new partition version: no memo
    for by in ("count", "sum"):
        body = _check(api, world["oracle"], stream, day, day + DAY_MS, 3, by, "no_false_negatives")
        assert body["meta"]["approx"]["exact"] == [{"tier": "cold", "from": day, "to": day + DAY_MS}], body["meta"]


def test_retention_removes_sketches_and_a_legal_hold_keeps_them(api, world):
    from scheduler.retention import LegalHolds

    res, stream, tenant, now = _resources(api), world["stream"], world["tenant"], world["now"]
    archive = res["archive"]
    cutoff = (now - 12 * DAY_MS) - (now - 12 * DAY_MS) % DAY_MS
    days = [d for d in archive.registry.starts(tenant, stream, "day") if d + DAY_MS <= cutoff]
    assert len(days) >= 3, days
    held_day, doomed = days[1], [d for d in days if d != days[1]]
    hold = LegalHolds(res.pool).add(tenant, stream, held_day, held_day + DAY_MS, "case 14", "test")
    with res.pool.connection() as conn:  # rows such as an older build left (one per day, any tier)
        for d in days:
            conn.execute("INSERT INTO approx_sketches (tenant, stream, tier, granularity, bucket, rank_by, lg_k, "
                         "version, sketch) VALUES (%s, %s, 'archive', '1d', %s, 'count', 12, 'v', NULL)",
                         (tenant, stream, d))
    sketch_keys = {d: archive.registry.manifest(tenant, stream, "day", d).object("sketch_1d")["key"] for d in days}
    _job(api, "retention", now)
    for d in doomed:
        assert archive.registry.status(tenant, stream, "day", d) == "deleted"
        assert not archive.store.exists(sketch_keys[d])
    assert archive.store.exists(sketch_keys[held_day])
    # weeks and months holding deleted days were rebuilt from the archived days left, sketches too
    rebuilt = 0
    for period in ("week", "month"):
        for start in archive.registry.starts(tenant, stream, period):
            m = archive.registry.manifest(tenant, stream, period, start)
            obj = m.object("sketch_" + sketch_files.PERIOD_TABLE[period])
            assert obj is not None and archive.store.exists(obj["key"]), m.objects
            rebuilt += any(start <= d < m.end for d in doomed)
            s = sketch_files.decode(pq.read_table(pa.BufferReader(archive.store.get_bytes(obj["key"]))))["count"]
            assert s.sketch.total_weight == m.totals()[1]  # exactly the days left
    assert rebuilt
    left = {r[0] for r in _rows(api, "SELECT bucket FROM approx_sketches WHERE stream = %s AND bucket < %s",
                                stream, cutoff)}
    assert left == {held_day}
    # answers after retention: the raw events minus the deleted days, within their bounds
    hi = world["hi"]
    for by in ("count", "sum"):
        body = _check(api, world["oracle"], stream, world["lo"], hi, 5, by, "no_false_negatives",
                      [TimeRange(held_day, held_day + DAY_MS), TimeRange(cutoff, hi)]
                      + [TimeRange(d, d + DAY_MS) for d in range(world["lo"], cutoff, DAY_MS)
                         if d not in days])
        assert body["meta"]["approx"]["files"] > 0
    LegalHolds(res.pool).remove(hold.id, "test")


def test_stream_delete_removes_its_sketches(api, world):
    res, stream, tenant = _resources(api), world["stream"], world["tenant"]
    assert _rows(api, "SELECT count(*) FROM approx_sketches WHERE stream = %s", stream)[0][0] > 0
    r = api.request("DELETE", f"/v1/streams/{stream}")
    assert r.status_code == 200, r.text
    assert _rows(api, "SELECT count(*) FROM approx_sketches WHERE stream = %s", stream)[0][0] == 0
    cold = res["cold"]
    assert not any(cold.layout.sketch_file(tenant, stream, G1D, d).exists()
                   for d in range(world["lo"], world["b"]["cold"], DAY_MS))
