"""tiers/parquet_layout.Layout.days_in / periods_in (the read path's partition lookup: probed a file
at a time over the range, or listed) against the folder listing, on real files, for random
partitions and ranges; folders without their final file are never listed."""
from __future__ import annotations

from hypothesis import given, settings as hsettings, strategies as st

from rollups.timeutil import DAY_MS, G1MO, G1W, floor_to
from tiers import parquet_layout as PL

T0 = floor_to(1_700_000_000_000, DAY_MS)
DAYS = 200


def _touch(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


@hsettings(max_examples=60, deadline=None)
@given(days=st.sets(st.integers(0, DAYS - 1), max_size=40), bare=st.sets(st.integers(0, DAYS - 1), max_size=5),
       lo=st.integers(-5 * DAY_MS, (DAYS + 5) * DAY_MS), width=st.integers(1, (DAYS + 10) * DAY_MS))
def test_days_in_and_periods_in_equal_the_filtered_listing(tmp_path_factory, days, bare, lo, width):
    layout = PL.Layout(tmp_path_factory.mktemp("layout"))
    for d in days:
        _touch(layout.partition_dir("rollup_1d", "t", "s", "day", PL.day_name(T0 + d * DAY_MS)) / PL.FILE_NAME)
    for d in bare - days:  # a folder created by a writer that has not renamed its file in yet
        layout.partition_dir("rollup_1d", "t", "s", "day", PL.day_name(T0 + d * DAY_MS)).mkdir(parents=True)
    for g in (G1W, G1MO):
        for s in {g.floor(T0 + d * DAY_MS) for d in days}:
            _touch(layout.rollup_file("t", "s", g, s))
    a, b = T0 + lo, T0 + lo + width
    want = [d for d in layout.days("t", "s", "rollup_1d") if d < b and d + DAY_MS > a]
    assert layout.days_in("t", "s", "rollup_1d", a, b) == want
    assert want == sorted(T0 + d * DAY_MS for d in days if a - DAY_MS < T0 + d * DAY_MS < b)
    for g in (G1W, G1MO):
        assert layout.periods_in("t", "s", g, a, b) == [p for p in layout.periods("t", "s", g)
                                                        if p < b and g.next(p) > a]
    assert layout.days_in("t", "s", "rollup_1d", b, a) == [] and layout.days_in("t", "x", "rollup_1d", a, b) == []


def test_a_days_files_use_the_encodings_that_pay_and_read_back_equal_in_duckdb(tmp_path):
    """writer_options: a raw file's ts is DELTA_BINARY_PACKED and its id not dictionary-encoded,
    the value-sorted copies carry no dictionary, the rollups keep theirs; DuckDB (the cold and
    archive engine) reads every file back equal to what was written."""
    import duckdb
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    n = 5000
    ts = np.sort(T0 + rng.integers(0, DAY_MS, n))
    kid = rng.integers(1, 300, n)
    raw = pa.table({"ts": ts, "key_id": kid, "key": [f"k{k}" for k in kid],
                    "value": rng.choice([1.0, 2.5, -0.75], n), "id": [f"e{i}" if i % 3 else None for i in range(n)]},
                   schema=PL.RAW_SCHEMA).sort_by([("ts", "ascending"), ("key_id", "ascending")])
    layout = PL.Layout(tmp_path)
    PL.write_day(layout, "t", "s", T0, raw)

    def encodings(path, column):
        md = pq.ParquetFile(path).metadata
        i = md.schema.names.index(column)
        return {e for g in range(md.num_row_groups) for e in md.row_group(g).column(i).encodings}

    dictionary = {"RLE_DICTIONARY", "PLAIN_DICTIONARY"}
    raw_path = layout.raw_file("t", "s", T0)
    assert "DELTA_BINARY_PACKED" in encodings(raw_path, "ts") and not encodings(raw_path, "ts") & dictionary
    assert not encodings(raw_path, "id") & dictionary and encodings(raw_path, "key") & dictionary
    for by in PL.MEASURES:
        path = layout.topk_file("t", "s", by, PL.G1D, T0)
        for column in pq.ParquetFile(path).schema_arrow.names:
            assert not encodings(path, column) & dictionary, (by, column)
    assert encodings(layout.rollup_file("t", "s", PL.G1H, T0), "key_id") & dictionary
    for path in (raw_path, layout.rollup_file("t", "s", PL.G1H, T0), layout.topk_file("t", "s", "sum", PL.G1D, T0)):
        got = duckdb.sql(f"SELECT * FROM read_parquet('{path}', hive_partitioning = false)").fetchall()
        assert got == [tuple(r.values()) for r in pq.read_table(path).to_pylist()], path
    assert pq.read_table(raw_path).replace_schema_metadata(None).equals(raw)
