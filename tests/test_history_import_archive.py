"""`tierstore import` of history below the archive boundary of an instance that already holds data
(tierstore/history_archive.py), against real PostgreSQL, Redis and s3proxy, read through the HTTP
API: a second file's events merge into archived days (ids already held skipped, id-less events
added) and into archived days not yet present, on a freshly imported instance and after the jobs
moved data (packed days among them); every answer (topk, rank, series, report totals) over ranges
crossing every boundary equals the oracle over the union; crashes after the upload before the
commit (readers see the old exact answer, the registry unchanged) and after the commit before the
old objects are deleted (readers see the new exact answer; the rerun deletes them) are rerun
exactly, nothing counted twice."""
from __future__ import annotations

import json
import random
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rollups.timeutil import DAY_MS, MINUTE_MS, format_time, now_ms
from tests.api_support import Oracle, close, isolated_settings, run_jobs, served, unique_stream
from tests.test_oracle_all_tiers import KEYS, VALUES, _boundaries, _check_all
from tiers.base import EVENT_SCHEMA
from tierstore import history_archive as HA
from tierstore import history_import as H
from tierstore.importer import run_import

SPAN_DAYS = 90  # with warm 10 days and cold 30 days: about 60 archived days, 20 cold, 9 warm, one hot


def _instance(settings, name: str, db: int):
    aged = isolated_settings(settings, name, redis_db=db).model_copy(
        update={"warm_age": 10 * DAY_MS, "cold_age": 30 * DAY_MS})
    for api in served(aged):
        yield api, aged


@pytest.fixture
def fresh(settings):
    yield from _instance(settings, "import_archive_fresh", 92)


@pytest.fixture
def jobs_ran(settings):
    yield from _instance(settings, "import_archive_jobs", 93)


@pytest.fixture
def crashy(settings):
    yield from _instance(settings, "import_archive_crash", 94)


def _events(rnd: random.Random, stream: str, n: int, tag: str, lo: int, hi: int, *, skip_day=None) -> list[dict]:
    """n events in [lo, hi): ids on about a third (unique per tag), none on the rest; `skip_day(day
    number)` True leaves that day out (days the second file adds)."""
    out = []
    while len(out) < n:
        ts = rnd.randrange(lo, hi)
        if skip_day is not None and skip_day(ts // DAY_MS):
            continue
        e = {"stream": stream, "key": rnd.choice(KEYS), "ts": ts, "value": rnd.choice(VALUES)}
        if rnd.random() < 0.35:
            e["id"] = f"{tag}-{len(out)}"
        out.append(e)
    return out


def _file(tmp_path, name: str, events: list[dict]):
    table = pa.table({"stream": [e["stream"] for e in events], "key": [e["key"] for e in events],
                      "ts": [e["ts"] for e in events], "value": [e["value"] for e in events],
                      "id": [e.get("id") for e in events]}).cast(EVENT_SCHEMA)
    path = tmp_path / name
    pq.write_table(table, path)
    return path


def _window() -> tuple[int, int]:
    now = now_ms()
    return now - SPAN_DAYS * DAY_MS, now - now % MINUTE_MS - 2 * MINUTE_MS


def _second_file(rnd: random.Random, stream: str, first: list[dict], lo: int, hi: int, tag: str) -> list[dict]:
    """New events everywhere (days the first file left out among them), and a third of the first
    file's events with an id repeated exactly (the import skips them)."""
    repeated = [e for e in first if e.get("id") and rnd.random() < 0.33]
    return _events(rnd, stream, 1500, tag, lo, hi) + repeated


def _report_totals(api, oracle: Oracle, stream: str, lo: int, hi: int) -> None:
    """POST /v1/reports kind totals over [lo, hi): per key (count, sum, min, max) equal the oracle."""
    r = api.post("/v1/reports", json={"stream": stream, "from": format_time(lo), "to": format_time(hi),
                                      "kind": "totals", "format": "json"})
    assert r.status_code == 202, r.text
    rid = r.json()["id"]
    deadline = time.monotonic() + 120
    while True:
        st = api.get(f"/v1/reports/{rid}").json()
        if st["status"] in ("done", "failed"):
            break
        assert time.monotonic() < deadline, st
        time.sleep(0.1)
    assert st["status"] == "done", st
    doc = json.loads(api.get(f"/v1/reports/{rid}/download").content)
    got = {row["key"]: (row["count"], row["sum"], row["min"], row["max"]) for row in doc["rows"]}
    from tests.api_support import query_range
    want = oracle.per_key(query_range(lo, hi))
    assert set(got) == set(want)
    for k, a in want.items():
        c, s, mn, mx = got[k]
        assert c == a.count and close(s, a.sum) and close(mn, a.min) and close(mx, a.max), (k, got[k], a)


def _check(api, oracle: Oracle, stream: str, lo: int, hi: int, seed: int, n: int = 10) -> None:
    assert _check_all(api, oracle, stream, random.Random(seed), lo, hi, n)
    b = _boundaries(api)
    _report_totals(api, oracle, stream, lo, hi)
    _report_totals(api, oracle, stream, lo, b["archive"])  # the archive alone


def _rows(archive, tenant: str, stream: str) -> dict:
    """{(period, start): (status, manifest sha256)} of every registry row of the stream."""
    with archive.pool.connection() as conn:
        rows = conn.execute("SELECT period, start_ms, status, manifest_sha256 FROM archive_partitions "
                            "WHERE tenant = %s AND stream = %s", (tenant, stream)).fetchall()
    return {(p, s): (st, sha) for p, s, st, sha in rows}


def _archive(settings):
    from tiers.archive import ArchiveTier
    return ArchiveTier(settings)


def _first_import(settings, tmp_path, seed: int, prefix: str, n: int):
    """A first file of n events (every third day left out) imported into a new stream: (rnd,
    stream, tag, lo, hi, oracle holding them, the events, the import's stats)."""
    rnd = random.Random(seed)
    stream, tag = unique_stream(prefix), uuid.uuid4().hex[:8]
    lo, hi = _window()
    oracle = Oracle()
    first = _events(rnd, stream, n, tag + "a", lo, hi, skip_day=lambda d: d % 3 == 0)
    stats = run_import(settings, [_file(tmp_path, "a.parquet", first)], progress=False)
    oracle.add(first)
    return rnd, stream, tag, lo, hi, oracle, first, stats


def test_a_second_file_merges_into_archived_days_of_a_freshly_imported_instance(fresh, tmp_path):
    api, settings = fresh
    rnd, stream, tag, lo, hi, oracle, first, stats = _first_import(settings, tmp_path, 11, "ia", 2500)
    assert stats["fresh"] and stats["archive"] and stats["cold"] and stats["warm"]
    b = _boundaries(api)
    _check(api, oracle, stream, lo, hi, seed=1, n=6)
    second = _second_file(rnd, stream, first, lo, hi, tag + "b")
    accepted, duplicates = oracle.add(second)
    below = [e for e in second if e["ts"] < b["archive"] and not (e.get("id") and e in first)]
    stats = run_import(settings, [_file(tmp_path, "b.parquet", second)], progress=False)
    assert not stats["fresh"] and stats["archive"] == len(below) > 0
    assert stats["archive_swept"]["deleted"] > 0  # the replaced days' objects
    assert _boundaries(api) == b  # nothing moved
    _check(api, oracle, stream, lo, hi, seed=1, n=6)  # the same questions as before: no stale cached answer
    _check(api, oracle, stream, lo, hi, seed=9)
    again = run_import(settings, [_file(tmp_path, "b.parquet", second)], progress=False)
    assert again.get("already_imported")
    _check(api, oracle, stream, lo, hi, seed=2, n=4)


def test_after_the_jobs_ran_history_merges_into_archived_days_and_packs(jobs_ran, tmp_path):
    api, settings = jobs_ran
    assert settings.archive_pack_below > 0  # packing on: the archive job packs its small days
    rnd, stream, tag, lo, hi, oracle, first, _ = _first_import(settings, tmp_path, 12, "ij", 2500)
    run_jobs(api, ["flush", "refresh", "expire_hot", "export_cold", "archive"], as_of=now_ms() + 4 * DAY_MS)
    b = _boundaries(api)
    archive = _archive(settings)
    try:
        tenant = "default"
        packs = archive.registry.packs(tenant, stream)
        assert packs, "the archive job packed the days it archived"
        _check(api, oracle, stream, lo, hi, seed=3, n=6)
        second = _second_file(rnd, stream, first, lo, hi, tag + "b")
        # make sure the packed days receive events, with and without ids
        for p in packs:
            for d in p.day_starts() + [p.end - DAY_MS]:
                second += [{"stream": stream, "key": rnd.choice(KEYS), "ts": d + rnd.randrange(DAY_MS), "value": 2.0},
                           {"stream": stream, "key": rnd.choice(KEYS), "ts": d + rnd.randrange(DAY_MS), "value": 1.0,
                            "id": f"{tag}-pack-{d}"}]
        oracle.add(second)
        stats = run_import(settings, [_file(tmp_path, "b.parquet", second)], progress=False)
        assert stats["archive"] > 0 and stats["archive_upload"]["packs"] == len(packs)
        rewritten = archive.registry.packs(tenant, stream)
        assert [p.start for p in rewritten] == [p.start for p in packs]
        assert all(p.key_version for p in rewritten)  # versioned keys
        assert all(not archive.store.exists(p.objects[0]["key"]) for p in packs)  # the old objects swept
        assert _boundaries(api) == b
        _check(api, oracle, stream, lo, hi, seed=3, n=6)  # the same questions as before: no stale cached answer
        _check(api, oracle, stream, lo, hi, seed=4)
    finally:
        archive.close()


def test_crashes_before_and_after_the_commit_are_rerun_exactly(crashy, tmp_path, monkeypatch):
    api, settings = crashy
    rnd, stream, tag, lo, hi, oracle, first, _ = _first_import(settings, tmp_path, 13, "ic", 2000)
    b = _boundaries(api)
    archive = _archive(settings)
    try:
        tenant = "default"
        rows_before = archive.registry.version(tenant, stream)
        before_rows = _rows(archive, tenant, stream)
        assert any(p in ("day", "pack") for p, _ in before_rows)

        # 1. a crash after every object was uploaded and verified, before the commit
        second = _second_file(rnd, stream, first, lo, b["archive"], tag + "b")
        path_b = _file(tmp_path, "b.parquet", second)
        real_register = HA.ArchiveMerge.register

        def crash_in_commit(self, conn):
            assert self.uploaded  # uploaded and verified
            raise RuntimeError("crash")

        monkeypatch.setattr(HA.ArchiveMerge, "register", crash_in_commit)
        with pytest.raises(RuntimeError, match="crash"):
            run_import(settings, [path_b], progress=False)
        monkeypatch.setattr(HA.ArchiveMerge, "register", real_register)
        assert archive.registry.version(tenant, stream) == rows_before  # nothing registered
        assert _rows(archive, tenant, stream) == before_rows
        _check(api, oracle, stream, lo, hi, seed=5, n=6)  # a reader sees the old exact answer
        stats = run_import(settings, [path_b], progress=False)
        oracle.add(second)
        assert stats["archive"] > 0
        _check(api, oracle, stream, lo, hi, seed=5, n=6)  # the same questions as before: no stale cached answer
        _check(api, oracle, stream, lo, hi, seed=6)

        # 2. a crash after the commit, before the replaced objects are deleted
        third = _events(rnd, stream, 800, tag + "c", lo, b["archive"]) + \
            [e for e in second if e.get("id")][:50]
        path_c = _file(tmp_path, "c.parquet", third)
        real_sweep = HA.sweep

        def crash_in_sweep(*a, **kw):
            raise RuntimeError("crash")

        monkeypatch.setattr(HA, "sweep", crash_in_sweep)
        with pytest.raises(RuntimeError, match="crash"):
            run_import(settings, [path_c], progress=False)
        monkeypatch.setattr(HA, "sweep", real_sweep)
        digest = H.files_digest([path_c], None)
        done = H.ledger_parts(archive.pool, digest)
        assert "placed" in done and HA.SWEPT not in done
        garbage = done[HA.GARBAGE]["keys"]
        assert garbage and all(archive.store.exists(k) for k in garbage[:20])  # old objects still there
        oracle.add(third)
        _check(api, oracle, stream, lo, hi, seed=7, n=6)  # the new exact answer
        stats = run_import(settings, [path_c], progress=False)  # the rerun deletes them, writes nothing
        assert stats["archive_swept"]["deleted"] == len(garbage) and stats["archive"] == 0
        assert not any(archive.store.exists(k) for k in garbage[:20])
        _check(api, oracle, stream, lo, hi, seed=8)
    finally:
        archive.close()


def test_under_object_lock_the_replaced_objects_are_kept_not_deleted(settings):
    """Object Lock (a bucket whose objects are under retention): the swap's old objects cannot be
    deleted, so tiers.archive_rewrite.discard leaves them and counts them kept (s3proxy has no
    Object Lock: the store is told the bucket has it, as ArchiveStore caches the answer)."""
    from tiers import archive_rewrite as R
    from tiers.archive import ArchiveTier

    tier = ArchiveTier(settings, prefix=f"_test/lock-{uuid.uuid4().hex[:8]}")
    try:
        keys = [tier.store.put_bytes(b"old", tier.store.key(f"k{i}"))["key"] for i in range(3)]
        tier.store._lock_wanted, tier.store._lock_enabled = True, True
        assert R.discard(tier.store, keys, {keys[0]}) == {"deleted": 0, "kept": 2}
        assert all(tier.store.exists(k) for k in keys)
        tier.store._lock_wanted = False
        assert R.discard(tier.store, keys, {keys[0]}) == {"deleted": 2, "kept": 0}
        assert [tier.store.exists(k) for k in keys] == [True, False, False]
        tier.store.delete(keys[:1])
    finally:
        tier.close()
