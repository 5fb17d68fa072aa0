"""tiers/warm_copy.py: the binary COPY of raw events with a text id column, checked through PostgreSQL."""
from __future__ import annotations

import pyarrow as pa
import pytest

from rollups.timeutil import DAY_MS, TimeRange
from tiers.base import EVENT_SCHEMA
from tiers.warm import WarmTier
from tests.tier_contract import STREAM, new_tenant
from tests.warm_support import migrated_database


@pytest.fixture(scope="module")
def warm(pg_url):
    tier = WarmTier(migrated_database(pg_url, "postgres", "_copy"), mode="postgres")
    yield tier
    tier.close()


def test_ids_of_every_shape_land_exactly(warm):
    """NULL, empty, multi-byte and long ids, from a sliced, chunked column, land byte for byte."""
    tenant, t0 = new_tenant(), 1_700_000_000_000
    ids = ["skipped", "a", None, "", "héllo wörld ✓", "x" * 300, None, "0000cafe-0001-0000-0000-000000000007"]
    events = pa.table({"stream": [STREAM] * len(ids), "key": [f"k{i % 3}" for i in range(len(ids))],
                       "ts": [t0 + i for i in range(len(ids))], "value": [float(i) for i in range(len(ids))],
                       "id": ids}, schema=EVENT_SCHEMA).slice(1)
    events = pa.Table.from_batches(events.to_batches(max_chunksize=3), EVENT_SCHEMA)
    assert warm.write(tenant, events) == len(ids) - 1
    got = pa.Table.from_batches(list(warm.read_raw(tenant, STREAM, TimeRange(t0, t0 + DAY_MS))), EVENT_SCHEMA)
    assert sorted(got.to_pylist(), key=lambda r: r["ts"]) == events.to_pylist()


def test_only_null_ids_still_copy(warm):
    tenant, t0 = new_tenant(), 1_700_000_100_000
    events = pa.table({"stream": [STREAM] * 2, "key": ["a", "b"], "ts": [t0, t0 + 1], "value": [1.0, 2.0],
                       "id": pa.nulls(2, pa.string())}, schema=EVENT_SCHEMA)
    assert warm.write(tenant, events) == 2
    got = pa.Table.from_batches(list(warm.read_raw(tenant, STREAM, TimeRange(t0, t0 + 2))), EVENT_SCHEMA)
    assert got["id"].null_count == 2 and sorted(got["value"].to_pylist()) == [1.0, 2.0]


def test_ids_of_one_length_take_the_fast_path_exactly(warm):
    tenant, t0 = new_tenant(), 1_700_000_200_000
    ids = ["zzzzzzzz"] + [f"0000cafe-0001-0000-0000-{i:012x}" for i in range(40)]
    events = pa.table({"stream": [STREAM] * 41, "key": [f"k{i % 5}" for i in range(41)],
                       "ts": [t0 + i for i in range(41)], "value": [float(i) for i in range(41)], "id": ids},
                      schema=EVENT_SCHEMA).slice(1)
    assert warm.write(tenant, events) == 40
    got = pa.Table.from_batches(list(warm.read_raw(tenant, STREAM, TimeRange(t0, t0 + DAY_MS))), EVENT_SCHEMA)
    assert sorted(got.to_pylist(), key=lambda r: r["ts"]) == events.to_pylist()
