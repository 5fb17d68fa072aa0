"""The archive's garbage collection (scheduler/archive_gc.py), against real PostgreSQL, Redis and
s3proxy: the versioned uploads of an import that crashed before its commit, and the replaced
objects of one that crashed after its commit and was never rerun, are deleted — and nothing a
registered manifest names, nothing younger than the grace, nothing on a dry run; every answer
stays equal to the oracle; the retention job runs it."""
from __future__ import annotations

import pytest

from scheduler import archive_gc as GC
from tests.api_support import run_jobs
from tests.test_history_import_archive import (_archive, _check, _file, _first_import, _instance, _rows,
                                               _second_file, _boundaries, _events)
from tierstore import history_archive as HA
from tierstore import history_import as H
from tierstore.importer import run_import


@pytest.fixture
def instance(settings):
    yield from _instance(settings, "archive_gc", 104)


def _versioned(archive, stream: str) -> set[str]:
    """The versioned keys in the stream's folders (the bucket is shared with other tests' streams)."""
    store = archive.store
    return {o["Key"] for f in store.folders() for o in store.list_objects(f"{f}tenant=default/stream={stream}/")
            if GC.is_versioned(o["Key"])}


def test_version_marks_are_recognised():
    from tiers.archive_rewrite import new_version
    from tiers.s3_store import versioned_key

    v = new_version()
    assert GC.is_versioned(versioned_key("a/tenant=t/stream=s/day=2025-01-01/part-0.parquet", v))
    assert GC.is_versioned(versioned_key("_manifests/tenant=t/stream=s/day=2025-01-01.json", v))
    assert not GC.is_versioned("a/tenant=t/stream=s/day=2025-01-01/part-0.parquet")
    assert not GC.is_versioned("_manifests/tenant=t/stream=v0123456789abcdef/day=2025-01-01.json")


def test_crashed_imports_leave_nothing_behind_once_collected(instance, tmp_path, monkeypatch):
    api, settings = instance
    rnd, stream, tag, lo, hi, oracle, first, _ = _first_import(settings, tmp_path, 21, "gc", 1500)
    b = _boundaries(api)
    archive = _archive(settings)
    try:
        tenant = "default"
        rows_before = _rows(archive, tenant, stream)
        named_before = _versioned(archive, stream)

        # 1. a crash after the upload, before the commit: versioned objects nobody names
        second = _second_file(rnd, stream, first, lo, b["archive"], tag + "b")

        def crash_in_commit(self, conn):
            raise RuntimeError("crash")

        monkeypatch.setattr(HA.ArchiveMerge, "register", crash_in_commit)
        with pytest.raises(RuntimeError, match="crash"):
            run_import(settings, [_file(tmp_path, "b.parquet", second)], progress=False)
        monkeypatch.undo()
        leftovers = _versioned(archive, stream) - named_before
        assert leftovers, "the crashed import uploaded nothing: the test would prove nothing"
        assert _rows(archive, tenant, stream) == rows_before

        # young objects are not collected (a rewrite may be uploading them now); a dry run deletes nothing
        assert GC.collect(archive)["unregistered"] == 0
        dry = GC.collect(archive, grace_ms=0, dry_run=True)
        assert dry["unregistered"] == len(leftovers) and dry["deleted"] == 0
        assert _versioned(archive, stream) - named_before == leftovers

        got = GC.collect(archive, grace_ms=0)
        assert got["unregistered"] == len(leftovers) and got["deleted"] == len(leftovers), got
        assert _versioned(archive, stream) == named_before  # exactly the leftovers went
        assert _rows(archive, tenant, stream) == rows_before
        _check(api, oracle, stream, lo, hi, seed=3, n=6)  # every registered object still read

        # 2. a crash after the commit, before its sweep, never rerun: the ledger's garbage
        third = _events(rnd, stream, 600, tag + "c", lo, b["archive"])
        path_c = _file(tmp_path, "c.parquet", third)

        def crash_in_sweep(*a, **kw):
            raise RuntimeError("crash")

        monkeypatch.setattr(HA, "sweep", crash_in_sweep)
        with pytest.raises(RuntimeError, match="crash"):
            run_import(settings, [path_c], progress=False)
        monkeypatch.undo()
        oracle.add(third)
        digest = H.files_digest([path_c], None)
        garbage = H.ledger_parts(archive.pool, digest)[HA.GARBAGE]["keys"]
        assert garbage and all(archive.store.exists(k) for k in garbage[:20])
        assert digest in GC.unfinished_sweeps(archive.pool)
        got = GC.collect(archive)
        assert got["sweeps"] == 1 and got["deleted"] >= len(garbage), got
        assert not any(archive.store.exists(k) for k in garbage[:20])
        assert HA.SWEPT in H.ledger_parts(archive.pool, digest) and not GC.unfinished_sweeps(archive.pool)
        _check(api, oracle, stream, lo, hi, seed=4)

        # 3. the retention job collects (nothing is left to delete; it listed the bucket)
        run = run_jobs(api, "retention")[0]
        gc = run["stats"]["gc"]
        assert gc["listed"] > 0 and gc["deleted"] == 0 and gc["sweeps"] == 0, gc
    finally:
        archive.close()
