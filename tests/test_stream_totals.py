"""Stream totals (tiers/parquet_totals.py): key-less series read the partitions' totals files in cold
and the archive, exactly as the key-level rollups answer, through every migration, a late event and
an import; partitions written before totals existed (no totals file, an old manifest) still answer."""
from __future__ import annotations

import json
import random
import shutil
import uuid

import psycopg
import pytest

from rollups.cover import Piece, cover
from rollups.partials import merge_partials
from rollups.timeutil import DAY_MS, G1D, G1H, G1MO, G1W, HOUR_MS, MINUTE_MS, RAW, TimeRange, format_time, now_ms, \
    parse_time
from tests.api_support import Oracle, check_series, isolated_settings, run_job, served, unique_stream
from tests.tier_contract import random_events
from tests.warm_support import migrated_database
from tiers import parquet_layout as PL
from tiers import parquet_totals as PT
from tiers.cold import ColdTier
from tiers.cold_keys import PgKeyDictionary

KEYS = [f"k{i}" for i in range(25)] + ["é", "a b"]
VALUES = [1.0, 2.0, 0.5, 0.1, 0.7, 3.0, -1.0, -0.25]
DAYS = 420  # below now - cold_age (365 d): the archive holds data


# ---- the tier: totals against the key-level read ------------------------------------------------

@pytest.fixture(scope="module")
def cold(settings, pg_url):
    keys = PgKeyDictionary(migrated_database(pg_url, "postgres", "_totals"))
    root = settings.cold_dir / f"_test_totals_{uuid.uuid4().hex[:8]}"
    tier = ColdTier(settings, keys=keys, root=root, engine="duckdb")
    yield tier
    tier.close()
    keys.close()
    shutil.rmtree(root, ignore_errors=True)


def _key_level(tier, stream, pieces):
    return merge_partials([tier.core._aggregate("t", stream, pieces, "bucket", None)], "bucket").to_pylist()


def _via_totals(tier, stream, pieces):
    return merge_partials([tier.aggregate("t", stream, pieces, "bucket")], "bucket").to_pylist()


def _same(a, b):
    a, b = sorted(a, key=lambda r: r["bucket"]), sorted(b, key=lambda r: r["bucket"])
    assert [r["bucket"] for r in a] == [r["bucket"] for r in b]
    for x, y in zip(a, b):
        assert (x["count"], x["min"], x["max"]) == (y["count"], y["min"], y["max"]), (x, y)
        assert x["sum"] == pytest.approx(y["sum"], rel=1e-12, abs=1e-9), (x, y)


def test_totals_equal_the_key_level_read_and_old_partitions_fall_back(cold):
    stream = unique_stream("tot")
    lo, hi = parse_time("2025-01-03T05:00:00Z"), parse_time("2025-04-20T00:00:00Z")
    ev = random_events(random.Random(7), TimeRange(lo, hi), 3000, stream=stream)
    cold.write("t", ev)
    assert sorted(cold.partitions.totals_files("t", stream, "day", lo, hi)) == cold.partitions.days("t", stream)
    assert cold.partitions.totals_files("t", stream, "month", lo, hi)
    rnd = random.Random(3)
    ranges = [TimeRange(lo - lo % DAY_MS, hi), TimeRange(parse_time("2025-01-19T22:07:00Z"),
                                                           parse_time("2025-03-04T05:13:00Z"))]
    ranges += [TimeRange(*sorted(rnd.randrange(lo, hi) // MINUTE_MS * MINUTE_MS for _ in range(2))) for _ in range(6)]
    calls = []
    real = PT.series_totals

    def spy(*a, **kw):
        out = real(*a, **kw)
        calls.append(out[0] is not None)
        return out

    PT.series_totals = spy
    try:
        for step in (G1H, G1D, G1W, G1MO):
            for rng in ranges:
                pieces = cover(rng, [g for g in (RAW, G1H, G1D, G1W, G1MO) if g.ms <= step.ms])
                _same(_via_totals(cold, stream, pieces), _key_level(cold, stream, pieces))
        assert any(calls), "no series read the totals files"
        # old partitions: a month, some days (and thus weeks built before) without totals files
        for period, start in [("month", G1MO.floor(lo + 40 * DAY_MS)), *(("day", d) for d in
                                                                         cold.partitions.days("t", stream)[::5])]:
            PL.remove_partition(PL.totals_file(cold.layout, "t", stream, period, start))
        for step in (G1H, G1D, G1W, G1MO):
            for rng in ranges:
                pieces = cover(rng, [g for g in (RAW, G1H, G1D, G1W, G1MO) if g.ms <= step.ms])
                _same(_via_totals(cold, stream, pieces), _key_level(cold, stream, pieces))
    finally:
        PT.series_totals = real


def test_totals_are_exact_sums(cold):
    """Compensated: 1e16 + 1 - 1e16 = 1 in one hour, in one day and in the month built from it."""
    import pyarrow as pa

    stream = unique_stream("exact")
    t0 = parse_time("2025-02-10T10:00:00Z")
    ev = pa.table({"stream": [stream] * 3, "key": ["a", "b", "c"], "ts": [t0, t0 + 1000, t0 + 2000],
                   "value": [1e16, 1.0, -1e16], "id": [None, None, None]})
    cold.write("t", ev)
    day = G1D.floor(t0)
    for pieces in ([Piece(G1H, TimeRange(day, day + DAY_MS))], [Piece(G1D, TimeRange(day, day + DAY_MS))],
                   [Piece(G1MO, TimeRange(G1MO.floor(t0), G1MO.next(G1MO.floor(t0))))]):
        rows = _via_totals(cold, stream, pieces)
        assert [(r["count"], r["sum"]) for r in rows] == [(3, 1.0)]


def test_a_failed_write_leaves_no_totals_file(cold, monkeypatch):
    stream = unique_stream("crash")
    ev = random_events(random.Random(1), TimeRange(parse_time("2025-02-10T00:00:00Z"),
                                                    parse_time("2025-02-11T00:00:00Z")), 200, stream=stream)

    def boom(name):
        if name == "verify":
            raise RuntimeError("crash before the renames")

    with pytest.raises(RuntimeError):
        cold.write_day("t", stream, parse_time("2025-02-10T00:00:00Z"), ev, step=boom)
    day = parse_time("2025-02-10T00:00:00Z")
    assert cold.partitions.totals_files("t", stream, "day", day, day + DAY_MS) == {}
    assert not any(p.name.startswith(".tmp") for p in cold.root.rglob("*") if "totals" in str(p))


# ---- through the API: all four tiers, a late event, an import -----------------------------------

@pytest.fixture(scope="module")
def api(settings):
    isolated = isolated_settings(settings, "stream_totals", redis_db=73)
    # per-day archive partitions: the test checks their totals objects (packs carry none; a series
    # over packed days reads their rollups, exact too: tests/test_archive_packs.py)
    isolated = isolated.model_copy(update={"archive_pack_below": 0})
    for server in served(isolated):
        server.settings = isolated
        yield server


def _send(api, oracle, events):
    for pos in range(0, len(events), 2500):
        batch = events[pos:pos + 2500]
        r = api.post("/v1/events", json=batch)
        assert r.status_code == 202, r.text
        oracle.add(batch)


def _events(rnd, stream, start, end, n):
    return [{"stream": stream, "key": rnd.choice(KEYS), "ts": rnd.randrange(start, end),
             "value": rnd.choice(VALUES)} for _ in range(n)]


def _bounds(api):
    return {k: parse_time(v) for k, v in api.get("/v1/tiers").json()["boundaries"].items()}


def _job(api, name, as_of):
    run = run_job(api, name, as_of=as_of, timeout_s=900)
    assert run["status"] == "done", run


def _check(api, oracle, stream, lo, hi, rnd):
    b = _bounds(api)
    day_hi = hi - hi % DAY_MS
    ranges = [(lo - lo % DAY_MS + DAY_MS, day_hi, "1d"), (lo, hi, "7d"), (lo, hi, "30d"),
              (day_hi - 365 * DAY_MS, day_hi, "1d")]
    for mark in (b["archive"], b["cold"], b["warm"]):
        ranges += [(mark - 3 * DAY_MS - 17 * MINUTE_MS, mark + 5 * HOUR_MS + MINUTE_MS, "1h"),
                   (mark - 40 * DAY_MS, min(hi, mark + 2 * DAY_MS), "1d")]
    for start, end, step in ranges:
        start = max(lo - lo % MINUTE_MS, start)
        check_series(api, oracle, stream, start, end, step, rnd.choice(["count", "sum", "min", "max", "avg"]))
        check_series(api, oracle, stream, start, end, step, "sum")


def test_series_read_totals_across_all_tiers_with_a_late_event_and_an_import(api, tmp_path, monkeypatch):
    from tiers.archive_partitions import ArchivePartitions
    from tiers.cold import LocalPartitions

    reads = {"cold": 0, "archive": 0}
    for name, cls in (("cold", LocalPartitions), ("archive", ArchivePartitions)):
        def counted(self, file, _real=cls.read_totals, _name=name):
            reads[_name] += 1
            return _real(self, file)
        monkeypatch.setattr(cls, "read_totals", counted)
    rnd = random.Random(99)
    stream = unique_stream("series")
    oracle = Oracle()
    now = now_ms()
    lo, hi = now - DAYS * DAY_MS, now - now % MINUTE_MS - MINUTE_MS
    _send(api, oracle, _events(rnd, stream, lo, hi, 6000))
    as_of = format_time(now)
    for name in ("flush", "refresh", "expire_hot", "export_cold", "archive"):
        _job(api, name, as_of)
    b = _bounds(api)
    assert lo < b["archive"] < b["cold"] < b["warm"], b
    _check(api, oracle, stream, lo, hi, rnd)
    assert reads["cold"] and reads["archive"], reads  # the series read both tiers' totals

    # the archive's partitions carry their totals objects; an old manifest without them still answers
    pg = api.settings.postgres_url
    with psycopg.connect(pg, autocommit=True) as conn:
        held = conn.execute("SELECT period, count(*) FROM archive_partitions WHERE stream = %s AND manifest -> "
                            "'objects' @> %s::jsonb GROUP BY 1",
                            (stream, json.dumps([{"table": "totals_1d"}]))).fetchall()
        assert {p for p, _ in held} >= {"week", "month"}, held
        conn.execute("UPDATE archive_partitions SET manifest = jsonb_set(manifest, '{objects}', (SELECT "
                     "jsonb_agg(o) FROM jsonb_array_elements(manifest -> 'objects') AS o WHERE o ->> 'table' "
                     "NOT LIKE 'totals%%')) WHERE stream = %s AND period = 'month'", (stream,))
    _check(api, oracle, stream, lo, hi, rnd)

    # a late event into warm, and an import into cold (rewrites its days with their totals)
    late = _events(rnd, stream, b["cold"], b["warm"], 300)
    _send(api, oracle, late)
    _job(api, "flush", as_of)
    _job(api, "refresh", as_of)
    from tierstore.importer import run_import
    imported = _events(rnd, stream, b["archive"], b["cold"], 400)
    path = tmp_path / "history.ndjson"
    path.write_text("".join(json.dumps(e) + "\n" for e in imported))
    stats = run_import(api.settings, [path], progress=False, tenant="default")
    assert stats["cold"] == len(imported), stats
    oracle.add(imported)
    _check(api, oracle, stream, lo, hi, rnd)

    # the clock moves on: the late and imported days move down a tier with their totals
    later = format_time(now + 2 * DAY_MS)
    for name in ("expire_hot", "export_cold", "archive"):
        _job(api, name, later)
    _check(api, oracle, stream, lo, hi, rnd)


def test_raw_edges_read_without_the_engine_equal_the_engine(cold, monkeypatch):
    """A series' raw edge (minutes at the start of a range) is read from the local raw files with
    pyarrow (tiers.parquet_core.raw_minutes), not through DuckDB: the same buckets, counts, mins,
    maxes and exact sums (1e16 + 1 - 1e16 = 1 in one minute), with and without a key."""
    import pyarrow as pa

    from tiers import parquet_core as PC

    stream = unique_stream("edge")
    lo = parse_time("2025-02-03T00:00:00Z")
    ev = random_events(random.Random(11), TimeRange(lo, lo + 3 * DAY_MS), 4000, stream=stream)
    t0 = lo + 5 * HOUR_MS + 7 * MINUTE_MS
    exact = pa.table({"stream": [stream] * 3, "key": ["k1"] * 3, "ts": [t0 + 1, t0 + 2, t0 + 3],
                      "value": [1e16, 1.0, -1e16], "id": pa.array([None] * 3, pa.string())})
    cold.write("t", pa.concat_tables([ev, exact.cast(ev.schema)]))
    rnd = random.Random(5)
    edges = [Piece(RAW, TimeRange(t0, t0 + 53 * MINUTE_MS))]
    for _ in range(12):
        a = lo + rnd.randrange(0, 3 * DAY_MS // MINUTE_MS - 120) * MINUTE_MS
        edges.append(Piece(RAW, TimeRange(a, a + rnd.randrange(1, 120) * MINUTE_MS)))
    calls = []
    real = PC.raw_minutes
    monkeypatch.setattr(PC, "raw_minutes", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    for piece in edges:
        for key in (None, "k1", "é"):
            direct = cold.aggregate("t", stream, [piece], "bucket", key)
            with monkeypatch.context() as m:
                m.setattr(PC, "_local", lambda files: False)
                engine = cold.aggregate("t", stream, [piece], "bucket", key)
            assert sorted(direct.to_pylist(), key=lambda r: r["bucket"]) == \
                sorted(engine.to_pylist(), key=lambda r: r["bucket"]), (piece, key)
    assert len(calls) == len(edges) * 3
    first = {r["bucket"]: r for r in cold.aggregate("t", stream, [edges[0]], "bucket", "k1").to_pylist()}
    assert first[t0 - t0 % MINUTE_MS]["sum"] == pytest.approx(
        1.0 + sum(v for k, ts, v in zip(ev["key"].to_pylist(), ev["ts"].to_pylist(), ev["value"].to_pylist())
                  if k == "k1" and t0 - t0 % MINUTE_MS <= ts < t0 - t0 % MINUTE_MS + MINUTE_MS), abs=1e-9)
