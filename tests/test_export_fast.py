"""export_cold's fast paths (issue 11): the binary COPY read of warm and the exact-sum shortcuts.

Against real PostgreSQL: warm's events read by tiers.warm_export.read_range (aggregated arrays in
binary COPY, key texts fetched once) equal, row for row and in the same order, what a plain
SELECT with the keys joined returns (the CSV COPY this replaced), for keys and ids that stress
text (quotes, commas, newlines, NULL-like words, empty strings, non-ASCII), NULL ids and times
before 2000 and 1970. Pure: rollups.exactsum's shortcuts give the Neumaier sums bit for bit.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rollups import exactsum
from rollups.timeutil import DAY_MS, parse_time
from tests.warm_support import migrated_database

KEYS = ["plain", "", "NULL", "N/A", "a,b", 'quo"te', "new\nline", "tab\there", "été ✓", "\\N", "x" * 300]
IDS = [None, "", "NULL", "id,1", 'id"2', "id\n3", "é", None, "x" * 100]


def _events(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    base = np.array([parse_time("2025-01-01T00:00:00Z"), parse_time("1999-12-31T23:00:00Z"),
                     parse_time("1969-12-31T12:00:00Z")], np.int64)
    ts = base[rng.integers(0, len(base), n)] + rng.integers(0, DAY_MS, n)
    return pa.table({"stream": pa.array(rng.choice(["s1", "s2"], n).tolist(), pa.string()),
                     "key": pa.array([KEYS[i] for i in rng.integers(0, len(KEYS), n)], pa.string()),
                     "ts": pa.array(ts, pa.int64()),
                     "value": pa.array(rng.normal(0, 1e3, n) * rng.choice([1, 1e-9, 1e12], n)),
                     "id": pa.array([IDS[i] for i in rng.integers(0, len(IDS), n)], pa.string())})


def test_read_range_equals_the_joined_select(pg_url):
    from tiers.warm import WarmTier
    from tiers.warm_export import RANGE_SCHEMA, read_range

    warm = WarmTier(migrated_database(pg_url, "postgres", "_exportfast"), mode="postgres")
    with warm.pool.connection() as conn:
        warm.insert(conn, "t1", _events(3000, 1))
        warm.insert(conn, "t2", _events(500, 2))
    lo, hi = parse_time("1960-01-01T00:00:00Z"), parse_time("2030-01-01T00:00:00Z")
    with warm.pool.connection() as conn:
        want = conn.execute(
            "SELECT events.stream_id, events.key_id, keys.key, CAST(extract(epoch FROM ts) * 1000 AS bigint), "
            "value, events.id FROM events JOIN keys ON keys.id = events.key_id ORDER BY 4, 2, 5, 6").fetchall()
    got = read_range(warm, lo, hi)
    assert got.schema == RANGE_SCHEMA
    assert got.num_rows == len(want) == 3500
    rows = sorted(zip(*[got[c].to_pylist() for c in RANGE_SCHEMA.names]),
                  key=lambda r: (r[3], r[1], r[4], r[5] is not None, r[5] or ""))
    want = sorted(want, key=lambda r: (r[3], r[1], r[4], r[5] is not None, r[5] or ""))
    assert rows == [tuple(r) for r in want]
    assert set(got["key"].to_pylist()) == set(KEYS) and None in got["id"].to_pylist()
    ordered = read_range(warm, lo, hi, in_file_order=True)  # export_cold's: stable (stream, ts, key_id)
    order = np.lexsort((got["key_id"].to_numpy(), got["ts"].to_numpy(), got["stream_id"].to_numpy()))
    assert ordered.equals(got.take(pa.array(order)))
    part = read_range(warm, parse_time("1999-12-31T23:30:00Z"), parse_time("2000-01-01T00:00:00Z"))
    assert all(parse_time("1999-12-31T23:30:00Z") <= t < parse_time("2000-01-01T00:00:00Z")
               for t in part["ts"].to_pylist())
    assert 0 < part.num_rows < 3500
    assert read_range(warm, parse_time("2040-01-01T00:00:00Z"), parse_time("2041-01-01T00:00:00Z")).num_rows == 0
    warm.close()


def _slow(fn, *args):
    keep = exactsum._exactly_summable
    exactsum._exactly_summable = lambda v: False
    try:
        return fn(*args)
    finally:
        exactsum._exactly_summable = keep


@pytest.mark.parametrize("kind", ["ints", "halves", "dyadic", "big", "decimals"])
def test_exact_shortcuts_equal_neumaier_bit_for_bit(kind):
    rng = np.random.default_rng(7)
    for _ in range(50):
        n = int(rng.integers(1, 3000))
        values = {"ints": lambda: rng.integers(-50, 51, n).astype(float),
                  "halves": lambda: rng.integers(-50, 51, n) / 2.0,
                  "dyadic": lambda: rng.integers(-2**20, 2**20, n) / 1024.0,
                  "big": lambda: rng.integers(-5, 5, n) * 1e16 + rng.integers(0, 3, n),
                  "decimals": lambda: np.round(rng.normal(0, 100, n), 1)}[kind]()
        groups = rng.integers(0, 40, n)
        assert exactsum.grouped_sum(groups, values, 40).tobytes() == _slow(exactsum.grouped_sum, groups, values, 40).tobytes()
        cols = [rng.integers(0, 24, n) * 3_600_000 + 10**12, rng.integers(0, int(rng.integers(1, 10**6)), n)]
        assert exactsum.sums_by(cols, values).tobytes() == _slow(exactsum.sums_by, cols, values).tobytes()
        assert exactsum.sums_by(cols[1:], values).tobytes() == _slow(exactsum.sums_by, cols[1:], values).tobytes()
    assert exactsum.grouped_sum(np.array([0, 0, 0]), np.array([1e16, 1.0, -1e16]), 1)[0] == 1.0


@pytest.mark.parametrize("kind", ["ints", "halves", "positive", "big", "decimals", "neg_zero"])
def test_day_parts_equal_the_general_path(kind):
    """tiers.day_rollups.day_parts (write_day's numpy path) gives the rollups, sketch partials and
    hourly totals of the Arrow/fsum path bit for bit, and declines values it cannot (decimals, -0.0)."""
    from rollups.timeutil import G1D, G1H
    from tiers import parquet_layout as PL
    from tiers import parquet_totals as PT
    from tiers import sketch_files as SF
    from tiers.day_rollups import day_parts

    rng = np.random.default_rng(11)
    for trial in range(40):
        n = int(rng.integers(1, 4000))
        day = int(rng.integers(-400, 20000)) * DAY_MS
        ts = day + rng.integers(0, DAY_MS if trial % 3 else 7_200_000, n)
        kid = rng.integers(1, int(rng.integers(2, 3000)), n)
        values = {"ints": lambda: rng.integers(-50, 51, n).astype(float),
                  "halves": lambda: rng.integers(-50, 51, n) / 2.0,
                  "positive": lambda: rng.integers(0, 51, n).astype(float),
                  "big": lambda: rng.integers(-5, 5, n) * 1e11 + rng.integers(0, 3, n),
                  "decimals": lambda: np.round(rng.normal(0, 100, n), 1) + 0.01,
                  "neg_zero": lambda: np.where(rng.random(n) < 0.5, -0.0, rng.integers(1, 9, n).astype(float))}[kind]()
        raw = PL.raw_table(ts, kid, np.char.add("k", kid.astype(str)).astype(object), values)
        parts = day_parts(raw)
        if kind in ("decimals", "neg_zero"):
            assert parts is None
            continue
        assert parts is not None
        for got, want in ((parts.hourly, PL.rollup_raw(raw, G1H)), (parts.daily, PL.rollup_raw(raw, G1D)),
                          (parts.partials, SF.key_partials(raw)), (parts.totals, PT.day_totals(raw))):
            assert got.equals(want)
            assert all(got[c].to_numpy().tobytes() == want[c].to_numpy().tobytes()
                       for c in got.column_names if got.schema.field(c).type == pa.float64())
        assert SF.partials_table(parts.partials).equals(SF.day_table(raw))


def test_day_totals_per_stream_day_before_and_after_1970(pg_url):
    """warm_export.day_totals (date_bin days) equals the count and sum per (stream, UTC day) of
    the rows read_range returns, days before 1970 and 2000 included."""
    from tiers.warm import WarmTier
    from tiers.warm_export import day_totals, read_range

    warm = WarmTier(migrated_database(pg_url, "postgres", "_exportfast_totals"), mode="postgres")
    with warm.pool.connection() as conn:
        warm.insert(conn, "t1", _events(2000, 3))
    lo, hi = parse_time("1960-01-01T00:00:00Z"), parse_time("2030-01-01T00:00:00Z")
    rows = read_range(warm, lo, hi)
    want: dict = {}
    for sid, ts, v in zip(rows["stream_id"].to_pylist(), rows["ts"].to_pylist(), rows["value"].to_pylist()):
        c, s = want.get((sid, ts - ts % DAY_MS), (0, 0.0))
        want[(sid, ts - ts % DAY_MS)] = (c + 1, s + v)
    got = day_totals(warm, lo, hi)
    assert set(got) == set(want) and any(day < 0 for _, day in got)
    assert all(got[k][0] == want[k][0] and np.isclose(got[k][1], want[k][1], rtol=1e-9, atol=1e-3) for k in want)
    warm.close()


def test_period_merge_and_topk_copies_equal_the_general_path(monkeypatch):
    """tiers.day_rollups.merge_exact / topk_order (write_period's and write_day's numpy paths) give
    parquet_layout's Arrow tables bit for bit (ties by key_id); decimals and NaN take the Arrow path."""
    import tiers.day_rollups as DR
    from tiers import parquet_layout as PL

    rng = np.random.default_rng(5)
    for trial in range(60):
        tables = []
        for d in range(int(rng.integers(1, 8))):
            kid = np.unique(rng.integers(0, 5000, int(rng.integers(1, 3000))))
            v = rng.integers(-50, 51, len(kid)) / (2.0 if trial % 2 else 1.0)
            v = np.abs(v) if trial % 3 == 0 else v
            tables.append(pa.table({"bucket": np.full(len(kid), d * DAY_MS), "key_id": kid,
                                    "count": rng.integers(1, 10, len(kid)), "sum": v, "min": v - 1, "max": v + 1,
                                    "sum_lo": np.zeros(len(kid))}, schema=PL.ROLLUP_SCHEMA))
        fast = PL.merge_rollups(tables, 7 * DAY_MS)
        copies = {by: PL.topk_copy(fast, by) for by in PL.MEASURES}
        with monkeypatch.context() as m:
            m.setattr(DR, "merge_exact", lambda *a: None)
            m.setattr(DR, "topk_order", lambda *a: None)
            slow = PL.merge_rollups(tables, 7 * DAY_MS)
            assert fast.equals(slow) and fast["sum"].to_numpy().tobytes() == slow["sum"].to_numpy().tobytes()
            for by in PL.MEASURES:
                want = PL.topk_copy(slow, by)
                assert copies[by].equals(want) and copies[by].schema == want.schema
    odd = pa.table({"bucket": [0, 0], "key_id": [1, 2], "count": [1, 1], "sum": [0.1, float("nan")],
                    "min": [0.1, 0.2], "max": [0.1, 0.2], "sum_lo": [0.0, 0.0]}, schema=PL.ROLLUP_SCHEMA)
    assert DR.merge_exact([odd], 0) is None and DR.topk_order(odd, "sum") is None


def test_export_syncs_the_cold_filesystem_not_the_machine(tmp_path, monkeypatch):
    """export_cold makes its files durable with syncfs(2) of the cold folder's filesystem; os.sync()
    (every dirty page of the machine, other tenants' too) only where syncfs is missing."""
    import os

    from scheduler import export_cold as E

    calls = []
    monkeypatch.setattr(os, "sync", lambda: calls.append("sync"))
    E._sync_files(tmp_path)
    assert calls == []
    E._sync_files(tmp_path / "missing")  # no folder to open: the machine-wide sync still runs
    assert calls == ["sync"]
