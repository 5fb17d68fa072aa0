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
