"""`tierstore import` rerun after a crash while the events newer than warm take the ingest path
(tierstore.importer), against real PostgreSQL, Redis and s3proxy: the chunks already ingested are
not sent again (ledger rows), and the events of the chunk in flight, most without an id, are not
counted twice (the import gives them ids from the files' digest and their row, which the hot
tier's dedup refuses the second time)."""
from __future__ import annotations

import uuid

import pyarrow.compute as pc
import pytest

from rollups.timeutil import DAY_MS
from tests.test_history_import import check_exact, history, write
from tests.test_history_import import open_world
from tierstore import history_import as H
from tierstore.importer import run_import

REDIS_DB = 84


@pytest.fixture
def world(pg_url, settings):
    yield from open_world(pg_url, settings, "history_rerun", REDIS_DB)


def test_a_crash_during_the_ingest_of_newer_events_is_rerun_without_counting_any_twice(world, settings, tmp_path,
                                                                                       monkeypatch):
    chunk = 8  # hot events ingested 8 at a time (max_batch_events); warm 10 days, cold 30
    aged = settings.model_copy(update={"warm_age": 10 * DAY_MS, "cold_age": 30 * DAY_MS, "max_batch_events": chunk})
    tenant = f"t{uuid.uuid4().hex[:8]}"
    events, window = history(8, 3000, ids="a")  # ids on every third event, none on the others
    path = write(tmp_path, "history.parquet", events)
    real_record, calls = H.record, {"n": 0}

    def crashing_record(conn, digest, part, stats=None):
        if part.startswith("hot/"):
            calls["n"] += 1
            if calls["n"] == 2:  # the second chunk was ingested, its ledger row never written
                raise RuntimeError("crash")
        return real_record(conn, digest, part, stats)

    monkeypatch.setattr(H, "record", crashing_record)
    with pytest.raises(RuntimeError, match="crash"):
        run_import(aged, [path], progress=False, tenant=tenant, resources=world)
    monkeypatch.undo()
    assert calls["n"] == 2
    to_warm = H.ledger_parts(world["warm"].pool, H.files_digest([path], tenant))["placed"]["to_warm"]
    newer = events.filter(pc.greater_equal(events["ts"], to_warm))
    assert newer.num_rows > 3 * chunk  # more than two chunks
    assert pc.sum(pc.is_null(newer["id"].slice(chunk, chunk))).as_py() > 0  # id-less events in flight
    stats = run_import(aged, [path], progress=False, tenant=tenant, resources=world)
    assert stats["duplicates"] == chunk  # the chunk in flight: refused by the hot tier's dedup
    assert stats["ingested"] == newer.num_rows - 2 * chunk  # the first chunk was not sent again
    check_exact(world, tenant, events, window)
