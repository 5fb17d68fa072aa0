"""The history import's warm rollups (tierstore/history_warm.py) against real PostgreSQL, Redis and
s3proxy: after an import, rollup_1m/1h/1d and total_1m/1h/1d of the stream hold exactly what a
GROUP BY over its raw events gives (what refresh computes), nothing is left pending for refresh,
and a refresh afterwards changes nothing; on a fresh stream (COPY) and on one whose warm rollups
already hold rows in the imported buckets (refresh's fold)."""
from __future__ import annotations

import random
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rollups.timeutil import DAY_MS, G1M, TimeRange, now_ms
from tests.tier_contract import STREAM, random_events
from tests.test_history_import import aged, open_world  # noqa: F401 (aged: a fixture)
from tierstore.importer import run_import

REDIS_DB = 83
SPAN_DAYS = 40


@pytest.fixture
def world(pg_url, settings):
    yield from open_world(pg_url, settings, "history_warm", REDIS_DB)


def rollups_of(warm, sid: int) -> dict:
    """Every rollup/total row of stream `sid`, and the same computed from its raw events."""
    got, want = {}, {}
    with warm.pool.connection() as conn:
        for g, step in (("1m", "1 minute"), ("1h", "1 hour"), ("1d", "1 day")):
            got[f"rollup_{g}"] = conn.execute(
                f"SELECT key_id, bucket, count, sum, min, max FROM rollup_{g} WHERE stream_id = %s "
                "ORDER BY bucket, key_id", (sid,)).fetchall()
            want[f"rollup_{g}"] = conn.execute(
                f"SELECT key_id, date_bin('{step}', ts, timestamptz 'epoch') AS b, count(*), sum(value), min(value), "
                "max(value) FROM events WHERE stream_id = %s GROUP BY 1, 2 ORDER BY b, key_id", (sid,)).fetchall()
            got[f"total_{g}"] = conn.execute(
                f"SELECT bucket, count, sum, min, max FROM total_{g} WHERE stream_id = %s ORDER BY bucket",
                (sid,)).fetchall()
            want[f"total_{g}"] = conn.execute(
                f"SELECT date_bin('{step}', ts, timestamptz 'epoch') AS b, count(*), sum(value), min(value), "
                "max(value) FROM events WHERE stream_id = %s GROUP BY 1 ORDER BY b", (sid,)).fetchall()
        pending = conn.execute("SELECT (SELECT count(*) FROM warm_delta WHERE stream_id = %s) + "
                               "(SELECT count(*) FROM warm_dirty WHERE stream_id = %s)", (sid, sid)).fetchone()[0]
    return {"got": got, "want": want, "pending": pending}


def history(seed: int, n: int) -> pa.Table:
    now = now_ms()
    window = TimeRange(G1M.floor(now - SPAN_DAYS * DAY_MS), G1M.floor(now - 60_000))
    return random_events(random.Random(seed), window, n)


@pytest.mark.parametrize("warm_before", [False, True], ids=["copy", "fold"])
def test_the_imported_warm_rollups_equal_a_group_by_of_the_raw_events(world, aged, tmp_path, warm_before):
    tenant = f"t{uuid.uuid4().hex[:8]}"
    warm = world["warm"]
    events = history(5, 3000)
    if warm_before:  # warm already holds events (rolled up by refresh) in days the import writes into
        now = now_ms()
        old = random_events(random.Random(6), TimeRange(G1M.floor(now - 5 * DAY_MS), G1M.floor(now - 2 * DAY_MS)), 400)
        warm.write(tenant, old)
        # the same minutes and keys as imported events too: their rollup rows are folded, not replaced
        events = pa.concat_tables([events, old])
    path = tmp_path / "h.parquet"
    pq.write_table(events, path)
    stats = run_import(aged, [path], progress=False, tenant=tenant, resources=world)
    assert stats["fresh"] and stats["warm"] > 0
    sid = warm.keys.stream_id(tenant, STREAM)
    seen = rollups_of(warm, sid)
    assert seen["pending"] == 0
    for name, rows in seen["want"].items():
        assert rows and seen["got"][name] == rows, name
    warm.refresh()
    assert rollups_of(warm, sid)["got"] == seen["got"]
