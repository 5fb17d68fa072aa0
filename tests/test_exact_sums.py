"""Compensated sums where the cold tier's engine sums raw events (DuckDB fsum): 1e16 + 1 - 1e16
gives 1 in whatever order the rows are stored (issue 10, part 5)."""
from __future__ import annotations

import pyarrow as pa
import pytest

from rollups.cover import Piece
from rollups.timeutil import G1D, G1H, G1MO, G1W, RAW, TimeRange, parse_time
from tiers.base import EVENT_SCHEMA
from tiers.cold import ColdTier
from tiers.cold_keys import MemoryKeyDictionary

T0 = parse_time("2025-02-03T10:00:00Z")


@pytest.fixture
def cold(settings, tmp_path):
    tier = ColdTier(settings, keys=MemoryKeyDictionary(), root=tmp_path / "cold", engine="duckdb")
    yield tier
    tier.close()


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 0, 2]])
def test_raw_sums_are_compensated_in_any_row_order(cold, order):
    groups = [[1e15] * 10, [1.0], [-1e15] * 10]
    values = [v for i in order for v in groups[i]]
    n = len(values)
    cold.write("t", pa.table({"stream": ["s"] * n, "key": ["x"] * n, "ts": [T0 + i for i in range(n)],
                              "value": values, "id": [None] * n}, schema=EVENT_SCHEMA))
    for piece in (Piece(RAW, TimeRange(T0, T0 + 60_000)), Piece(G1H, TimeRange(T0, T0 + G1H.ms)),
                  Piece(G1D, TimeRange(G1D.floor(T0), G1D.floor(T0) + G1D.ms)),
                  Piece(G1W, TimeRange(G1W.floor(T0), G1W.next(G1W.floor(T0)))),
                  Piece(G1MO, TimeRange(G1MO.floor(T0), G1MO.next(G1MO.floor(T0))))):
        got = cold.aggregate("t", "s", [piece], "key").to_pylist()
        assert [(r["key"], r["count"], r["sum"]) for r in got] == [("x", 21, 1.0)], piece
