"""tiers.day_batch.write_days writes, byte for byte, the files parquet_layout.write_day writes."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from rollups.timeutil import DAY_MS
from tiers import day_batch as DB
from tiers import parquet_layout as PL


def _raw(n: int, days: int, seed: int, values: str) -> pa.Table:
    rng = np.random.default_rng(seed)
    base = 20_000 * DAY_MS
    ts = base + rng.integers(0, days * DAY_MS, n)
    ts[: n // 10] = ts[n // 10: 2 * (n // 10)]  # equal times: file order must be kept among them
    kid = rng.zipf(1.3, n) % 500 + 1
    if values == "halves":
        v = rng.integers(-5, 50, n) + np.where(rng.random(n) < 0.2, 0.5, 0.0)
    elif values == "positive":
        v = rng.random(n) * 100  # not exact: compensated sums and fsum
    else:
        v = rng.normal(0, 1e6, n)  # signed, not exact
    ids = [f"i{i}" if i % 7 == 0 else None for i in range(n)]
    return pa.table({"ts": pa.array(ts), "key_id": pa.array(kid, pa.int64()),
                     "key": pa.array([f"k{k}" for k in kid]), "value": pa.array(v, pa.float64()),
                     "id": pa.array(ids, pa.string())}, schema=PL.RAW_SCHEMA)


def _files(root) -> dict[str, bytes]:
    out = {}
    for d, _, names in os.walk(root):
        for name in names:
            p = os.path.join(d, name)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


@pytest.mark.parametrize("values", ["halves", "positive", "signed"])
@pytest.mark.parametrize("workers", [1, 2])
def test_write_days_equals_write_day(tmp_path, values, workers):
    raw = _raw(20_000, 9, seed=len(values) + workers, values=values)
    a, b = PL.Layout(tmp_path / "a"), PL.Layout(tmp_path / "b")
    day = np.floor_divide(raw["ts"].to_numpy(), DAY_MS) * DAY_MS
    for d in np.unique(day).tolist():
        PL.write_day(a, "t", "s", d, raw.filter(pa.array(day == d)), durable=False)
    seen = []
    got = DB.write_days(b, "t", "s", raw, durable=False, advance=seen.append, workers=workers)
    assert got == [(d, int((day == d).sum())) for d in np.unique(day).tolist()]
    assert sum(seen) == raw.num_rows
    fa, fb = _files(a.root), _files(b.root)
    assert sorted(fa) == sorted(fb) and len(fa) == 9 * 7
    different = [k for k in fa if fa[k] != fb[k]]
    if values == "positive":  # write_day sums a day without negatives by Arrow's plain sum: ulps may differ
        different = [k for k in different if not k.startswith(("rollup_", "topk_by_sum"))]
    assert different == []


def test_exact_sums():
    assert DB.exact_sums(np.array([1.0, -2.5, 3.25]))
    assert not DB.exact_sums(np.array([0.1, 0.2]))
    assert not DB.exact_sums(np.array([2.0 ** 60, 1.0]))
    assert DB.fsum(np.array([1e16, 1.0, -1e16])) == 1.0
    assert DB.fsum(np.array([0.1] * 10)) == 1.0


def test_verify_failure_renames_nothing(tmp_path, monkeypatch):
    raw = _raw(2_000, 2, seed=1, values="halves")
    layout = PL.Layout(tmp_path)
    real = DB.totals_of
    calls = {"n": 0}

    def wrong(table):  # the 3rd file's read-back disagrees
        calls["n"] += 1
        t = real(table)
        return PL.Totals(t.rows, t.count + 1, t.sum, t.min, t.max) if calls["n"] == 7 else t

    monkeypatch.setattr(DB, "totals_of", wrong)
    with pytest.raises(PL.VerifyFailed):
        DB.write_days(layout, "t", "s", raw, durable=True, workers=1)
    assert not [k for k in _files(tmp_path) if k.endswith("part-0.parquet")]
    assert not [k for k in _files(tmp_path) if ".tmp-" in k]


def test_write_periods_in_workers_equal_write_period(tmp_path):
    raw = _raw(6_000, 40, seed=3, values="halves")
    a, b = PL.Layout(tmp_path / "a"), PL.Layout(tmp_path / "b")
    days = [d for d, _ in DB.write_days(a, "t", "s", raw, durable=False, workers=1)]
    DB.write_days(b, "t", "s", raw, durable=False, workers=1)
    for g, start in sorted({(g, g.floor(d)) for d in days for g in PL.PERIOD_GRANULARITIES}, key=lambda p: (p[0].name, p[1])):
        PL.write_period(a, "t", "s", g, start, durable=False)
    DB.write_periods(b, "t", "s", days, durable=False, workers=2)
    fa, fb = _files(a.root), _files(b.root)
    assert sorted(fa) == sorted(fb)
    assert any(k.startswith("rollup_1mo/") for k in fa) and any(k.startswith("rollup_1w/") for k in fa)
    assert [k for k in fa if fa[k] != fb[k]] == []
