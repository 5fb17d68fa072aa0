"""`tierstore import` and event ids, against real PostgreSQL, Redis and s3proxy (found by a new
user's trial): an id repeated in the files is stored once in every tier (archive, cold, warm and
hot alike, as the ingest API counts an id once); an import into a running instance skips the ids
warm, cold or the archive already stores on that day, and counts them as duplicates; events too far in the future and values that are
not numbers are refused, naming the cause, before anything is written."""
from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from rollups.timeutil import DAY_MS, now_ms
from tests.test_history_import import aged, check_exact, history, write  # noqa: F401 (aged: a fixture)
from tests.test_history_import import open_world
from tierstore.importer import ImportRefused, first_occurrences, run_import

REDIS_DB = 91


@pytest.fixture
def world(pg_url, settings):
    yield from open_world(pg_url, settings, "import_ids", REDIS_DB)


def test_an_id_repeated_in_the_files_is_stored_once_in_every_tier(world, aged, tmp_path):
    tenant = f"t{uuid.uuid4().hex[:8]}"
    events, window = history(21, 3000, ids="r")
    with_ids = events.filter(pc.is_valid(events["id"]))
    again = with_ids.take(pa.array(range(0, with_ids.num_rows, 2)))  # every other id, a second time
    again = again.set_column(3, "value", pc.add(again["value"], 1.0))  # the repeat differs: first row wins
    a = write(tmp_path, "a.parquet", events)
    b = write(tmp_path, "b.parquet", again)
    stats = run_import(aged, [a, b], progress=False, tenant=tenant, resources=world)
    assert stats["duplicates"] == again.num_rows, stats
    assert stats["archive"] and stats["cold"] and stats["warm"] and stats["ingested"], stats
    check_exact(world, tenant, events, window)


def test_an_import_into_a_running_instance_skips_ids_warm_holds(world, aged, tmp_path):
    tenant = f"t{uuid.uuid4().hex[:8]}"
    events, window = history(22, 3000, ids="w")
    run_import(aged, [write(tmp_path, "first.parquet", events)], progress=False, tenant=tenant, resources=world)
    snap = world["catalog"].snapshot()
    in_warm = events.filter(pc.and_(pc.and_(pc.greater_equal(events["ts"], snap.b_cold),
                                            pc.less(events["ts"], snap.b_warm)), pc.is_valid(events["id"])))
    assert in_warm.num_rows > 3
    again = in_warm.slice(0, 4).set_column(3, "value", pa.array([7.0] * 4))
    stats = run_import(aged, [write(tmp_path, "again.parquet", again)], progress=False, tenant=tenant,
                       resources=world)
    assert stats["warm"] == 0 and stats["duplicates"] == 4, stats
    check_exact(world, tenant, events, window)


def test_ids_cold_and_the_archive_hold_are_skipped_and_counted_as_duplicates(world, aged, tmp_path):
    tenant = f"t{uuid.uuid4().hex[:8]}"
    events, window = history(24, 3000, ids="c")
    run_import(aged, [write(tmp_path, "first.parquet", events)], progress=False, tenant=tenant, resources=world)
    snap = world["catalog"].snapshot()
    ids = pc.is_valid(events["id"])
    in_cold = events.filter(pc.and_(pc.and_(pc.greater_equal(events["ts"], snap.b_archive),
                                            pc.less(events["ts"], snap.b_cold)), ids))
    in_archive = events.filter(pc.and_(pc.less(events["ts"], snap.b_archive), ids))
    assert in_cold.num_rows >= 3 and in_archive.num_rows >= 2
    again = pa.concat_tables([in_cold.slice(0, 3), in_archive.slice(0, 2)])
    again = again.set_column(3, "value", pa.array([9.0] * 5))  # the first import's values stand
    stats = run_import(aged, [write(tmp_path, "again.parquet", again)], progress=False, tenant=tenant,
                       resources=world)
    assert stats["cold"] == 0 and stats["archive"] == 0 and stats["duplicates"] == 5, stats
    check_exact(world, tenant, events, window)


def test_an_id_warm_holds_on_the_same_day_is_skipped_at_another_time_of_that_day(world, aged, tmp_path):
    # the rule of every tier (archive, cold, warm): an id the stream already holds on the event's UTC
    # day is the same event; warm once looked only within the new file's own time span
    tenant = f"t{uuid.uuid4().hex[:8]}"
    events, window = history(23, 3000, ids="d")
    run_import(aged, [write(tmp_path, "first.parquet", events)], progress=False, tenant=tenant, resources=world)
    snap = world["catalog"].snapshot()
    in_warm = events.filter(pc.and_(pc.and_(pc.greater_equal(events["ts"], snap.b_cold),
                                            pc.less(events["ts"], snap.b_warm - 2 * 60_000)), pc.is_valid(events["id"])))
    moved = []
    for row in in_warm.to_pylist():
        for ts in (row["ts"] + 60_000, row["ts"] - 60_000):  # the same day, outside the first event's span
            if ts // DAY_MS == row["ts"] // DAY_MS and snap.b_cold <= ts:
                moved.append({**row, "ts": ts, "value": 5.0})
                break
        if len(moved) == 3:
            break
    assert len(moved) == 3
    for i, row in enumerate(moved):  # one file per event: each import's span is that one instant
        stats = run_import(aged, [write(tmp_path, f"moved{i}.parquet", pa.Table.from_pylist([row], schema=events.schema))],
                           progress=False, tenant=tenant, resources=world)
        assert stats["warm"] == 0 and stats["duplicates"] == 1, stats
    check_exact(world, tenant, events, window)


def test_future_events_and_values_that_are_not_numbers_are_refused(world, aged, tmp_path):
    tenant = f"t{uuid.uuid4().hex[:8]}"
    future = tmp_path / "future.csv"
    future.write_text(f"stream,key,ts,value\ns,a,{now_ms() - DAY_MS},1\ns,a,{now_ms() + DAY_MS},1\n")
    with pytest.raises(ImportRefused, match="1 event.* in the future"):
        run_import(aged, [future], progress=False, tenant=tenant, resources=world)
    bad = tmp_path / "bad.csv"
    bad.write_text(f"stream,key,ts,value\ns,a,{now_ms() - DAY_MS},1\ns,b,{now_ms() - DAY_MS},abc\n")
    with pytest.raises(ImportRefused, match="row 2: column value: not a number: 'abc'"):
        run_import(aged, [bad], progress=False, tenant=tenant, resources=world)
    assert world["warm"].keys.stream_id(tenant, "s") is None  # nothing was written


def test_first_occurrences_keeps_the_first_row_of_each_stream_and_id():
    t = pa.table({"stream": ["s", "s", "u", "s", "s"], "key": list("abcde"), "ts": [1, 2, 3, 4, 5],
                  "value": [1.0] * 5, "id": ["x", "x", "x", None, None]})
    kept, dropped = first_occurrences(t)
    assert dropped == 1 and kept["key"].to_pylist() == ["a", "c", "d", "e"]
