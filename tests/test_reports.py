"""Compliance reports against real services: raw events read across archive (S3), cold (Parquet),
warm (PostgreSQL) and the event log not yet flushed (Redis), exact to the millisecond, in every
format, with a manifest naming each source and its checksum; the HTTP API; crash and restart."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import redis as redis_lib

from rollups.timeutil import DAY_MS, TimeRange, format_time, parse_time
from scheduler.faults import CRASH_ENV, CRASH_EXIT_CODE, CRASH_POINTS
from tests.tier_contract import STREAM, oracle_by_key, random_events
from tests.api_support import redis_db_url
from tests.warm_support import migrated_database
from tiers.base import EVENT_SCHEMA
from tiers.eventlog import total_length

WINDOW = TimeRange(parse_time("2024-12-20T03:11:00.000Z"), parse_time("2025-02-06T20:00:00.000Z"))
B_COLD = parse_time("2025-01-25T00:00:00Z")
B_WARM = parse_time("2025-02-04T00:00:00Z")
AS_OF = parse_time("2025-01-20T12:00:00Z")  # archive target with cold_age 10d: 2025-01-10
B_ARCHIVE = parse_time("2025-01-10T00:00:00Z")
REDIS_DB = 15
# ragged, millisecond-exact: starts inside the archive, ends in the hot range
FROM = parse_time("2024-12-27T13:14:15.123Z")
TO = parse_time("2025-02-05T08:09:10.987Z")


def build(db_url: str, cold_root: str, prefix: str, workers: int = 2):
    from scheduler.reports import ReportBuilder, ReportObjects, ReportService
    from tierstore.settings import load_settings
    from tiers.archive import ArchiveTier
    from tiers.catalog_pg import PgCatalog
    from tiers.cold import ColdTier
    from tiers.cold_keys import PgKeyDictionary
    from tiers.hot import RedisHotTier
    from tiers.warm import WarmTier

    settings = load_settings()
    warm = WarmTier(db_url, mode="postgres")
    cold = ColdTier(settings, keys=PgKeyDictionary(pool=warm.pool), root=Path(cold_root), engine="duckdb")
    archive = ArchiveTier(settings, pool=warm.pool, keys=cold.keys, engine="duckdb", prefix=prefix)
    url = redis_db_url(settings, "reports", REDIS_DB, empty=False)
    r = redis_lib.Redis.from_url(url)
    hot = RedisHotTier.from_url(url, settings.hot_age, settings.grace_period, settings.dedup_window)
    catalog = PgCatalog(warm.pool)
    builder = ReportBuilder(catalog=catalog, pool=warm.pool, out_dir=Path(cold_root) / "_reports", warm=warm,
                            cold=cold, archive=archive, redis=r)
    objects = ReportObjects.from_client(archive.store.s3, archive.store.bucket, f"{prefix}-files")
    service = ReportService(builder, warm.pool, workers=workers, objects=objects)
    return {"settings": settings, "warm": warm, "cold": cold, "archive": archive, "redis": r, "hot": hot,
            "catalog": catalog, "service": service}


def close(w) -> None:
    w["service"].close()
    for name in ("archive", "cold", "hot", "warm"):
        w[name].close()
    w["redis"].close()


@pytest.fixture(scope="module")
def world(pg_url, settings):
    """Events in all four tiers: archive < 2025-01-10 <= cold < 2025-01-25 <= warm < 2025-02-04 <= hot
    (the hot ones still in the event log, not flushed)."""
    from scheduler.archive import archive

    db = migrated_database(pg_url, "postgres", "_reports")
    run = uuid.uuid4().hex[:8]
    root = settings.cold_dir / f"_test_reports_{run}"
    w = build(db, str(root), f"_test/reports-{run}")
    w["redis"].flushdb()
    catalog, warm, cold = w["catalog"], w["warm"], w["cold"]
    catalog.initialise(B_WARM, 0)
    with warm.pool.connection() as conn:
        catalog.advance(conn, b_cold=B_COLD, b_warm=B_WARM)
    tenant = f"t{uuid.uuid4().hex[:8]}"
    events = random_events(random.Random(21), WINDOW, 3000)
    edges = pa.table({"stream": [STREAM] * 4, "key": ["edge"] * 4, "ts": [FROM - 1, FROM, TO - 1, TO],
                      "value": [100.0, 1.5, 2.5, 100.0], "id": [None] * 4}, schema=EVENT_SCHEMA)
    events = pa.concat_tables([events, edges])
    ts = events["ts"]
    cold.write(tenant, events.filter(pc.less(ts, B_COLD)))
    warm.write(tenant, events.filter(pc.and_(pc.greater_equal(ts, B_COLD), pc.less(ts, B_WARM))))
    w["hot"].ingest(tenant, events.filter(pc.greater_equal(ts, B_WARM)), now_ms=B_WARM + DAY_MS)
    archive(cold, w["archive"], catalog, AS_OF, cold_age_ms=10 * DAY_MS, grace_ms=3_600_000)
    assert catalog.snapshot().b_archive == B_ARCHIVE
    w.update(db=db, root=root, tenant=tenant, events=events, prefix=f"_test/reports-{run}")
    yield w
    close(w)
    shutil.rmtree(root, ignore_errors=True)


def wait_done(service, tenant: str, rid: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = service.status(tenant, rid)
        if st["status"] in ("done", "failed"):
            return st
        time.sleep(0.1)
    raise AssertionError(f"report {rid} not done: {st}")


def oracle_totals(events: pa.Table, rng: TimeRange) -> dict:
    return {k: (a.count, a.sum, a.min, a.max) for k, a in oracle_by_key(events, rng).items()}


def in_range(events: pa.Table, rng: TimeRange) -> list[tuple]:
    rows = [(e["ts"], e["key"], e["value"]) for e in events.to_pylist() if rng.contains(e["ts"])]
    return sorted(rows)


def test_totals_equal_the_oracle_across_all_four_tiers(world):
    svc, tenant = world["service"], world["tenant"]
    assert total_length(world["redis"]) > 0  # hot events not flushed yet (every event log)
    rid = svc.submit(tenant, STREAM, FROM, TO, "totals", "csv")
    st = wait_done(svc, tenant, rid)
    assert st["status"] == "done", st["error"]
    path, media, name = svc.file(tenant, rid)
    assert media == "text/csv" and name.endswith(".csv")
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == st["sha256"]
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    got = {r["key"]: (int(r["count"]), float(r["sum"]), float(r["min"]), float(r["max"])) for r in rows}
    want = oracle_totals(world["events"], TimeRange(FROM, TO))
    assert got == want
    assert got["edge"] == (2, 4.0, 1.5, 2.5)  # from included, to excluded, to the millisecond
    assert [r["key"] for r in rows] == sorted(want, key=lambda k: k.encode())
    assert st["rows"] == len(want) and st["progress"] == 1.0


def test_manifest_names_every_source_with_its_checksum(world):
    svc, tenant = world["service"], world["tenant"]
    st = wait_done(svc, tenant, svc.submit(tenant, STREAM, FROM, TO, "events", "parquet"))
    assert st["status"] == "done", st["error"]
    tiers = [e["tier"] for e in st["manifest"]]
    assert tiers == sorted(tiers, key=["archive", "cold", "warm"].index) and set(tiers) == {"archive", "cold", "warm"}
    archive = world["archive"]
    for e in st["manifest"]:
        if e["tier"] == "archive":
            key = e["source"].split("/", 3)[3]
            assert hashlib.sha256(archive.store.get_bytes(key)).hexdigest() == e["sha256"]
        elif e["tier"] == "cold":
            path = Path(unquote(urlparse(e["source"]).path))
            assert hashlib.sha256(path.read_bytes()).hexdigest() == e["sha256"]
    days_archived = [d for d in archive.registry.starts(world["tenant"], STREAM, "day") if d + DAY_MS > FROM]
    assert len([e for e in st["manifest"] if e["tier"] == "archive"]) == len(days_archived)
    assert sum(e["rows"] for e in st["manifest"]) == st["rows"]


def test_events_report_lists_exactly_the_events_in_range(world):
    svc, tenant = world["service"], world["tenant"]
    for fmt in ("parquet", "json", "csv"):
        st = wait_done(svc, tenant, svc.submit(tenant, STREAM, FROM, TO, "events", fmt))
        assert st["status"] == "done", st["error"]
        path = svc.file(tenant, st["id"])[0]
        if fmt == "parquet":
            rows = pq.read_table(path).to_pylist()
        elif fmt == "json":
            doc = json.loads(path.read_text())
            assert doc["report"]["stream"] == STREAM and doc["manifest"]
            rows = doc["rows"]
        else:
            rows = [{**r, "ts_ms": int(r["ts_ms"]), "value": float(r["value"])}
                    for r in csv.DictReader(io.StringIO(path.read_text()))]
        got = [(r["ts_ms"], r["key"], r["value"]) for r in rows]
        assert got == sorted(got) and sorted(got) == in_range(world["events"], TimeRange(FROM, TO)), fmt
        assert all(r["time"] == format_time(r["ts_ms"]) for r in rows[:50])


def test_json_totals_and_a_range_inside_one_tier(world):
    svc, tenant = world["service"], world["tenant"]
    rng = TimeRange(parse_time("2025-01-12T00:00:00.001Z"), parse_time("2025-01-13T23:59:59.999Z"))
    st = wait_done(svc, tenant, svc.submit(tenant, STREAM, rng.start, rng.end, "totals", "json"))
    assert {e["tier"] for e in st["manifest"]} == {"cold"}
    doc = json.loads(svc.file(tenant, st["id"])[0].read_text())
    got = {r["key"]: (r["count"], r["sum"], r["min"], r["max"]) for r in doc["rows"]}
    assert got == oracle_totals(world["events"], rng)


def test_totals_stay_exact_when_values_cancel_across_days_and_tiers(world):
    """1e15 and 0.1 in one cold day, -1e15 the next, 0.2 in warm: the report merges its parts' per-key
    partials as exact pairs (sum_lo), so x totals the events' exact sum, not 0.125 + 0.2."""
    svc, cold, warm = world["service"], world["cold"], world["warm"]
    tenant = f"t{uuid.uuid4().hex[:8]}"
    day = parse_time("2025-01-15T00:00:00Z")  # cold owns [2025-01-10, 2025-01-25)
    rows = [("x", day + 36_000_000, 1e15), ("x", day + 36_060_000, 0.1), ("x", day + DAY_MS + 36_000_000, -1e15),
            ("x", parse_time("2025-01-27T10:00:00Z"), 0.2), ("b", day + 1, 0.5)]
    events = pa.table({"stream": [STREAM] * len(rows), "key": [k for k, _, _ in rows], "ts": [t for _, t, _ in rows],
                       "value": [v for _, _, v in rows], "id": [None] * len(rows)}, schema=EVENT_SCHEMA)
    cold.write(tenant, events.filter(pc.less(events["ts"], B_COLD)))
    warm.write(tenant, events.filter(pc.greater_equal(events["ts"], B_COLD)))
    st = wait_done(svc, tenant, svc.submit(tenant, STREAM, day, parse_time("2025-01-28T00:00:00Z"), "totals", "json"))
    assert st["status"] == "done", st["error"]
    assert {e["tier"] for e in st["manifest"]} == {"cold", "warm"}
    doc = json.loads(svc.file(tenant, st["id"])[0].read_text())
    got = {r["key"]: (r["count"], r["sum"]) for r in doc["rows"]}
    assert got == {"x": (4, math.fsum([1e15, 0.1, -1e15, 0.2])), "b": (1, 0.5)}


def test_reports_are_private_to_their_tenant(world):
    from rollups.errors import NotFound

    svc, tenant = world["service"], world["tenant"]
    rid = svc.submit(tenant, STREAM, FROM, TO, "totals", "csv")
    assert svc.status("someone-else", rid) is None
    with pytest.raises(NotFound):
        svc.file("someone-else", rid)
    wait_done(svc, tenant, rid)


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS["reports"])
def test_a_crash_while_building_then_the_reports_job_finishes_it(world, point):
    svc, tenant = world["service"], world["tenant"]
    queue = build(world["db"], str(world["root"]), world["prefix"], workers=0)["service"]
    rid = queue.submit(tenant, STREAM, FROM, TO, "totals", "parquet")
    env = {**os.environ, CRASH_ENV: point}
    proc = subprocess.run([sys.executable, "-m", "tests.test_reports", world["db"], str(world["root"]),
                           world["prefix"]], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, timeout=600)
    assert proc.returncode == CRASH_EXIT_CODE, proc.stderr[-3000:]
    assert point in proc.stderr
    assert svc.status(tenant, rid)["status"] == "running"  # its worker died
    # The dead child's advisory lock on the report goes when PostgreSQL notices its connection
    # closed, which on a loaded machine may be after this line: the job skips a report another
    # session still holds, and its next run builds it. So run the job as the scheduler would.
    deadline = time.monotonic() + 30
    while svc.run_pending()["built"] < 1:
        assert time.monotonic() < deadline, "the reports job never resumed the crashed report"
        time.sleep(0.2)
    st = svc.status(tenant, rid)
    assert st["status"] == "done", st["error"]
    t = pq.read_table(svc.file(tenant, rid)[0])
    got = {r["key"]: (r["count"], r["sum"], r["min"], r["max"]) for r in t.to_pylist()}
    assert got == oracle_totals(world["events"], TimeRange(FROM, TO))
    assert not [p for p in Path(world["root"], "_reports").iterdir() if p.name.startswith(".tmp-")]


if __name__ == "__main__":  # the crash test's child: the reports job once, dies at $TIERSTORE_CRASH_AT
    child = build(*sys.argv[1:4], workers=0)
    child["service"].run_pending()
    sys.exit(0)


# ---- the HTTP API (router/reports.py) ------------------------------------------------------------

@pytest.fixture(scope="module")
def client(world):
    from router import create_app
    from router.reports import register_reports

    # the API key maps to the world's tenant: reports are scoped to the caller's tenant
    settings = world["settings"].model_copy(update={"auth_enabled": True, "api_keys": {"report-key": world["tenant"]}})
    tiers = {"archive": world["archive"], "cold": world["cold"], "warm": world["warm"], "hot": world["hot"]}
    app = create_app(settings, tiers=tiers, catalog=world["catalog"])
    register_reports(app, world["service"])
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = "Bearer report-key"
    return c


def poll(client, rid: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/v1/reports/{rid}").get_json()
        if body["status"] in ("done", "failed") or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_api_post_poll_download(client, world):
    body = {"stream": STREAM, "from": format_time(FROM), "to": TO, "kind": "totals", "format": "json"}
    r = client.post("/v1/reports", json=body)
    assert r.status_code == 202, r.get_json()
    rid = r.get_json()["id"]
    assert r.headers["Location"] == f"/v1/reports/{rid}"
    st = poll(client, rid)
    assert st["status"] == "done" and st["progress"] == 1.0 and st["error"] is None
    assert {"id", "status", "progress", "rows", "sha256", "manifest", "error"} <= set(st)
    assert all(set(e) >= {"tier", "source", "rows", "sha256"} for e in st["manifest"])
    d = client.get(f"/v1/reports/{rid}/download")
    assert d.status_code == 200 and d.mimetype == "application/json"
    assert hashlib.sha256(d.data).hexdigest() == st["sha256"] == d.headers["X-Content-SHA256"]
    doc = json.loads(d.data)
    got = {r["key"]: (r["count"], r["sum"], r["min"], r["max"]) for r in doc["rows"]}
    assert got == oracle_totals(world["events"], TimeRange(FROM, TO))


def test_api_download_streams_from_s3_when_the_local_copy_is_gone(client, world):
    """The file is stored in S3 before the report is done: a replica without the local file (here:
    the cache removed) streams it from S3, byte-identical, with the same headers; file() refills the cache."""
    svc, tenant = world["service"], world["tenant"]
    rid = svc.submit(tenant, STREAM, FROM, TO, "events", "csv")
    st = wait_done(svc, tenant, rid)
    assert st["status"] == "done", st["error"]
    local = svc.file(tenant, rid)[0]
    first = client.get(f"/v1/reports/{rid}/download")
    key = f"{world['prefix']}-files/{tenant}/{rid}.csv"
    assert world["archive"].store.get_bytes(key) == first.data == local.read_bytes()
    local.unlink()
    r = client.get(f"/v1/reports/{rid}/download")
    assert r.status_code == 200 and r.data == first.data
    for h in ("Content-Type", "Content-Disposition", "X-Content-SHA256", "ETag"):
        assert r.headers[h] == first.headers[h], h
    assert int(r.headers["Content-Length"]) == len(first.data) == st["bytes"]
    assert client.get(f"/v1/reports/{rid}/download", headers={"If-None-Match": f'"{st["sha256"]}"'}).status_code == 304
    assert not local.exists() and svc.file(tenant, rid)[0].read_bytes() == first.data  # refilled from S3
    world["archive"].store.delete([key])
    local.unlink()
    gone = client.get(f"/v1/reports/{rid}/download")
    assert gone.status_code == 404 and gone.get_json()["error"]["code"] == "report_file_missing"


@pytest.mark.parametrize("body, code", [
    ({"stream": STREAM, "from": TO, "to": FROM, "kind": "totals"}, "invalid_range"),
    ({"stream": "Bad Name", "from": FROM, "to": TO, "kind": "totals"}, "validation_failed"),
    ({"stream": STREAM, "from": FROM, "to": TO, "kind": "sums"}, "validation_failed"),
    ({"stream": STREAM, "from": FROM, "to": TO, "kind": "totals", "format": "xml"}, "validation_failed"),
    ({"stream": STREAM, "from": "yesterday", "to": TO, "kind": "totals"}, "bad_request"),
    ({"stream": STREAM, "from": FROM, "to": TO, "kind": "totals", "extra": 1}, "validation_failed"),
    ([1, 2], "bad_request"),
])
def test_api_refuses_bad_requests_with_the_error_shape(client, body, code):
    r = client.post("/v1/reports", json=body)
    assert r.status_code == 400, r.get_json()
    err = r.get_json()["error"]
    assert err["code"] == code and err["message"] and isinstance(err["details"], list)


def test_api_unknown_report_and_not_ready(client, world):
    assert client.get("/v1/reports/nope", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.get("/v1/reports/nope")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "report_not_found"
    assert client.get("/v1/reports/nope/download").status_code == 404
    from tiers.locks import FLUSH_LOCK, session_lock

    queue = world["service"]
    # a report over warm first flushes the log under the flush job's lock: holding it keeps the report unbuilt
    with session_lock(world["warm"].pool, FLUSH_LOCK, wait=True):
        rid = queue.submit(world["tenant"], STREAM, FROM, TO, "events", "csv")
        early = client.get(f"/v1/reports/{rid}/download")
        assert early.status_code == 409, early.get_json()
        assert early.get_json()["error"]["code"] == "report_not_ready"
        assert client.get(f"/v1/reports/{rid}").get_json()["status"] in ("queued", "running")
    assert poll(client, rid)["status"] == "done"
    assert client.get(f"/v1/reports/{rid}/download").status_code == 200


def test_cli_report_with_output_file(world, tmp_path):
    """`tierstore report` builds the same report in-process (here a range warm and the log hold)."""
    rng = TimeRange(B_COLD + 1234, B_WARM + DAY_MS + 5)
    out = tmp_path / "r.csv"
    env = {**os.environ, "TIERSTORE_POSTGRES_URL": world["db"],
           "TIERSTORE_REDIS_URL": world["settings"].redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"}
    proc = subprocess.run([sys.executable, "-m", "tierstore.cli", "report", "--tenant", world["tenant"], "--stream",
                           STREAM, "--from", format_time(rng.start), "--to", str(rng.end), "--kind", "totals",
                           "--format", "csv", "-o", str(out), "--json", "--quiet"], env=env, capture_output=True,
                          text=True, cwd=Path(__file__).parent.parent, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status["status"] == "done" and hashlib.sha256(out.read_bytes()).hexdigest() == status["sha256"]
    assert [e["tier"] for e in status["manifest"]] == ["warm"]
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    got = {r["key"]: (int(r["count"]), float(r["sum"]), float(r["min"]), float(r["max"])) for r in rows}
    assert got == oracle_totals(world["events"], rng)


def test_report_totals_are_summed_with_compensation():
    """A compliance total is the exact sum to a couple of ulps, whatever the order or cancellation
    (found by a new user's trial: 17109.449999999946 for an exact 17109.45)."""
    import math
    import random

    import pyarrow as pa

    from rollups.partials import merge_partials
    from scheduler.reports import _partials_by_key

    rnd = random.Random(3)
    values = [round(rnd.uniform(0, 100), 2) for _ in range(5000)] + [1e15, -1e15]
    rnd.shuffle(values)
    halves = [_partials_by_key(pa.table({"key": ["sku"] * 2500, "value": values[i:i + 2500]}))
              for i in (0, 2500)] + [_partials_by_key(pa.table({"key": ["sku"] * 2, "value": values[5000:]}))]
    got = merge_partials(halves, "key", compensated=True)["sum"][0].as_py()
    exact = math.fsum(values)
    assert abs(got - exact) <= 2 * math.ulp(exact), (got, exact)
