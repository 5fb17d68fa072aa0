"""Cold partials keep each (key, bucket) sum as an exact pair (sum, sum_lo) and every cold reader
adds the low parts: 1e15 and 0.07 in one hour store (1e15 + 0.125, -0.055); over three such days
the events total 3e15 + 0.21, whose nearest float is 3e15, where the stored highs alone give
3e15 + 0.5. Each reader family is checked against math.fsum of the raw values: aggregate through
the engine (key series, key-less series from the totals files, per-key partials), key_values and
the rank merge's id_values, top-K by the threshold algorithm (value-sorted copies) and by the full
merge, and the router's ranked access. Files written before sum_lo existed still read (as 0)."""
from __future__ import annotations

import math
import shutil
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rollups.cover import Piece, cover
from rollups.exactsum import column_fsum
from rollups.partials import merge_partials
from rollups.timeutil import DAY_MS, G1D, G1H, HOUR_MS, MINUTE_MS, RAW, TimeRange, parse_time
from tests.warm_support import migrated_database
from tiers import key_ids
from tiers import parquet_layout as PL
from tiers.base import EVENT_SCHEMA
from tiers.cold import ColdTier
from tiers.cold_keys import PgKeyDictionary

STREAM = "pairs"
DAY0 = parse_time("2025-02-03T00:00:00Z")  # a Monday: the three days sit inside one week
ENGINES = [pytest.param("duckdb", id="duckdb"), pytest.param("trino", id="trino", marks=pytest.mark.trino)]


@pytest.fixture(scope="module")
def keys(pg_url):
    d = PgKeyDictionary(migrated_database(pg_url, "postgres", "_cold_pairs"))
    yield d
    d.close()


@pytest.fixture(scope="module", params=ENGINES)
def cold(request, settings, keys):
    root = settings.cold_dir / f"_pairs_{uuid.uuid4().hex[:8]}"
    tier = ColdTier(settings, keys=keys, root=root / request.param, engine=request.param,
                    trino_schema=f"test_pairs_{root.name[7:]}_{request.param}")
    yield tier
    tier.close()
    shutil.rmtree(root, ignore_errors=True)


def _events(rows: list[tuple[str, int, float]]) -> pa.Table:
    return pa.table({"stream": [STREAM] * len(rows), "key": [k for k, _, _ in rows], "ts": [t for _, t, _ in rows],
                     "value": [v for _, _, v in rows], "id": [None] * len(rows)}, schema=EVENT_SCHEMA)


def _positive() -> list[tuple[str, int, float]]:
    """y: 1e15 and 0.07 in hour 10 of three days (exact 3e15 + 0.21); b: 0.5 a day; others small."""
    rows = []
    for d in range(3):
        h = DAY0 + d * DAY_MS + 10 * HOUR_MS
        rows += [("y", h, 1e15), ("y", h + MINUTE_MS, 0.07), ("b", DAY0 + d * DAY_MS + 5 * HOUR_MS, 0.5)]
        rows += [(f"s{i}", DAY0 + d * DAY_MS + HOUR_MS * (i % 24), 0.25) for i in range(30)]
    return rows


def _signed() -> list[tuple[str, int, float]]:
    """x: 1e15 and 0.1 in one hour, -1e15 the next day (exact 0.1); b 0.5."""
    return [("x", DAY0 + 10 * HOUR_MS, 1e15), ("x", DAY0 + 10 * HOUR_MS + MINUTE_MS, 0.1),
            ("x", DAY0 + DAY_MS + 10 * HOUR_MS, -1e15), ("b", DAY0 + 5 * HOUR_MS, 0.5)]


def _exact(rows, key: str, rng: TimeRange) -> float:
    return math.fsum(v for k, t, v in rows if k == key and rng.start <= t < rng.end)


def _total(t: pa.Table) -> float:
    """The exact sum of a partial table's sums and low parts (sum_lo, when it has them)."""
    lows = t["sum_lo"].to_pylist() if "sum_lo" in t.column_names else []
    return math.fsum(t["sum"].to_pylist() + lows)


def _write(cold, rows) -> str:
    tenant = f"t{uuid.uuid4().hex[:10]}"
    cold.write(tenant, _events(rows))
    cold.sync()
    return tenant


#: whole days (1d, and the week once complete), and ragged edges (hours, raw minutes) around hour 10
RANGES = [TimeRange(DAY0, DAY0 + 3 * DAY_MS),
          TimeRange(DAY0 + 10 * HOUR_MS, DAY0 + 2 * DAY_MS + 10 * HOUR_MS + 2 * MINUTE_MS)]


def test_the_files_hold_exact_pairs(cold):
    rows = _positive()
    tenant = _write(cold, rows)
    t = pq.read_table(cold.layout.rollup_file(tenant, STREAM, G1H, DAY0))
    kid = int(cold.keys.ids(tenant, STREAM, ["y"], create=False)[0])
    y = t.filter(pc.equal(t["key_id"], kid))
    assert (y["sum"][0].as_py(), y["sum_lo"][0].as_py()) == (1e15 + 0.125, 0.07 - 0.125)
    srt = pq.read_table(cold.layout.topk_file(tenant, STREAM, "sum", G1D, DAY0))
    assert srt.column_names == ["key_id", "sum", "sum_lo"]


@pytest.mark.parametrize("rng", RANGES, ids=["days", "edges"])
def test_aggregate_key_series_and_partials_add_the_low_parts(cold, rng):
    rows = _positive()
    tenant = _write(cold, rows)
    pieces = cover(rng, cold.granularities)
    exact = _exact(rows, "y", rng)
    series = merge_partials([cold.aggregate(tenant, STREAM, pieces, "bucket", key="y")], "bucket")
    assert _total(series) == exact
    by_key = merge_partials([cold.aggregate(tenant, STREAM, pieces, "key")], "key").to_pydict()
    assert by_key["sum"][by_key["key"].index("y")] == exact
    kv = cold.key_values(tenant, STREAM, pieces, "sum").to_pydict()
    at = kv["key"].index("y")
    assert math.fsum([kv["value"][at], kv.get("value_lo", [0.0] * len(kv["key"]))[at]]) == exact
    ids, values = key_ids.id_values(cold, tenant, STREAM, pieces, "sum")
    kid = int(cold.keys.ids(tenant, STREAM, ["y"], create=False)[0])
    assert math.fsum(values[ids == kid].tolist()) == exact


def test_a_keyless_series_from_the_totals_files_adds_the_low_parts(cold):
    rows = [r for r in _positive() if r[0] == "y"]
    tenant = _write(cold, rows)
    rng = RANGES[0]
    got = merge_partials([cold.aggregate(tenant, STREAM, [Piece(G1D, rng)], "bucket")], "bucket")
    assert got.num_rows == 3
    assert _total(got) == _exact(rows, "y", rng) == 3e15


@pytest.mark.parametrize("rng", RANGES, ids=["days", "edges"])
def test_top_k_by_the_threshold_algorithm_and_ranked_access_are_exact(cold, rng):
    rows = _positive()
    tenant = _write(cold, rows)
    pieces = cover(rng, cold.granularities)
    stats = {}
    got = cold.top_k(tenant, STREAM, pieces, 2, "sum", stats=stats)
    assert stats["method"] == "tput"
    assert [(r.key, r.value) for r in got] == [("y", _exact(rows, "y", rng)), ("b", _exact(rows, "b", rng))]
    access = cold.ranked_access(tenant, STREAM, pieces, "sum")
    assert column_fsum(access.exact_parts(["y", "b", "nobody"])).tolist() == [
        _exact(rows, "y", rng), _exact(rows, "b", rng), 0.0]


def test_top_k_by_the_full_merge_is_exact_across_days(cold):
    rows = _signed()
    tenant = _write(cold, rows)
    pieces = cover(TimeRange(DAY0, DAY0 + 2 * DAY_MS), cold.granularities)
    stats = {}
    got = cold.top_k(tenant, STREAM, pieces, 2, "sum", stats=stats)
    assert stats["method"] == "merge"
    assert [(r.key, r.value) for r in got] == [("b", 0.5), ("x", 0.1)]


def _strip_sum_lo(path) -> None:
    """Rewrite a file as written before sum_lo existed (the column dropped, footer totals kept)."""
    t = pq.read_table(path)
    pq.write_table(t.drop_columns(["sum_lo"]).replace_schema_metadata(t.schema.metadata), path)


def test_files_written_before_sum_lo_are_read_as_low_parts_of_zero(cold):
    """Day 0's rollups, value-sorted copy and totals lose sum_lo (an older partition); days 1 and 2
    keep theirs: every reader still answers, day 0 contributing its stored highs."""
    rows = _positive()
    tenant = _write(cold, rows)
    lay = cold.layout
    day0_totals = pq.read_table(PL.totals_file(lay, tenant, STREAM, "day", DAY0))["sum"].to_pylist()
    for path in (lay.rollup_file(tenant, STREAM, G1H, DAY0), lay.rollup_file(tenant, STREAM, G1D, DAY0),
                 lay.topk_file(tenant, STREAM, "sum", G1D, DAY0), PL.totals_file(lay, tenant, STREAM, "day", DAY0)):
        _strip_sum_lo(path)
    cold.sync()
    rng = RANGES[0]
    day0_hi = 1e15 + 0.125  # what day 0's files hold without their low part
    expect = math.fsum([day0_hi, *(v for k, t, v in rows if k == "y" and t >= DAY0 + DAY_MS)])
    pieces = [Piece(G1D, rng), Piece(G1H, TimeRange(DAY0, DAY0 + DAY_MS)), Piece(RAW, TimeRange(DAY0, DAY0 + 1))]
    by_key = merge_partials([cold.aggregate(tenant, STREAM, pieces[:1], "key")], "key").to_pydict()
    assert by_key["sum"][by_key["key"].index("y")] == expect
    assert cold.aggregate(tenant, STREAM, pieces[1:], "key").num_rows > 0  # an old hourly file alone
    kv = cold.key_values(tenant, STREAM, pieces[:1], "sum").to_pydict()
    at = kv["key"].index("y")
    assert math.fsum([kv["value"][at], kv.get("value_lo", [0.0] * len(kv["key"]))[at]]) == expect
    got = cold.top_k(tenant, STREAM, pieces[:1], 1, "sum")
    assert [(r.key, r.value) for r in got] == [("y", expect)]
    series = merge_partials([cold.aggregate(tenant, STREAM, pieces[:1], "bucket")], "bucket")
    assert _total(series) == math.fsum(
        [*day0_totals, *(v for k, t, v in rows if t >= DAY0 + DAY_MS)])
