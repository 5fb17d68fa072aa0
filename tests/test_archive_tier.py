"""The archive tier (S3 via s3proxy, DuckDB and Trino over s3://): the Tier contract, uploads with
manifests and verification, and 503 naming the archive when S3 does not answer."""
from __future__ import annotations

import json
import random
import uuid

import pytest

from rollups.cover import cover
from rollups.errors import TierUnavailable
from rollups.timeutil import G1M, TimeRange, parse_time
from tests.outage import Outage
from tests.tier_contract import STREAM, TierContract, as_aggs, oracle_by_key, random_events, random_range
from tests.warm_support import migrated_database
from tiers.archive import ArchiveTier
from tiers.db import make_pool

ENGINES = [pytest.param("duckdb", id="duckdb"), pytest.param("trino", id="trino", marks=pytest.mark.trino)]
# a past window crossing a month end, with whole weeks and days inside and ragged minute edges
WINDOW = TimeRange(parse_time("2019-01-26T22:07:00Z"), parse_time("2019-02-05T05:13:00Z"))


@pytest.fixture(scope="module")
def archive_db(pg_url):
    return migrated_database(pg_url, "postgres", "_archive")


@pytest.fixture(scope="module")
def archive_pool(archive_db):
    pool = make_pool(archive_db, max_size=8, name="test-archive")
    yield pool
    pool.close()


@pytest.fixture(scope="module", params=ENGINES)
def archive(request, settings, archive_pool):
    run = uuid.uuid4().hex[:8]
    tier = ArchiveTier(settings, pool=archive_pool, engine=request.param, prefix=f"_test/{run}/{request.param}",
                       trino_schema=f"test_archive_{run}_{request.param}")
    yield tier
    tier.close()


class TestArchiveContract(TierContract):
    @pytest.fixture
    def tier(self, archive):
        return archive

    @pytest.fixture
    def down(self, settings, archive_pool):
        outage = Outage(settings.s3_endpoint)
        tier = ArchiveTier(settings.model_copy(update={"s3_endpoint": outage.url}), pool=archive_pool,
                           engine="duckdb", prefix=f"_test/down/{uuid.uuid4().hex[:8]}")
        yield tier, outage
        outage.cut()
        tier.close()

    @pytest.fixture
    def window(self):
        return WINDOW


def test_partitions_have_verified_manifests(archive, settings):
    tenant = f"t{uuid.uuid4().hex[:10]}"
    events = random_events(random.Random(11), WINDOW, 300)
    before = archive.data_version(tenant, STREAM)
    archive.write(tenant, events)
    assert archive.data_version(tenant, STREAM) != before  # the router's cache key moves
    manifests = archive.registry.manifests(tenant, STREAM, "day", WINDOW)
    assert manifests and sum(m.totals()[0] for m in manifests) == events.num_rows
    for m in manifests:
        tables = {o["table"] for o in m.objects}
        assert {"events", "rollup_1h", "rollup_1d"} <= tables
        for obj in m.objects:
            archive.store.verify(obj)
        stored = json.loads(archive.store.get_bytes(archive.store.manifest_key(m)))
        assert stored == m.to_dict()


def test_large_objects_go_multipart(settings, archive_pool):
    tenant = f"t{uuid.uuid4().hex[:10]}"
    tier = ArchiveTier(settings, pool=archive_pool, engine="duckdb", prefix=f"_test/{uuid.uuid4().hex[:8]}/mp",
                       multipart_threshold=1)
    tier.store.part_size = 5 * 1024 * 1024
    try:
        events = random_events(random.Random(3), WINDOW, 200)
        assert tier.write(tenant, events) == 200
        m = tier.registry.manifests(tenant, STREAM, "day", WINDOW)[0]
        assert all(o["etag"].endswith("-1") for o in m.objects)
        rng = TimeRange(G1M.ceil(WINDOW.start), G1M.floor(WINDOW.end))
        got = as_aggs(tier.aggregate(tenant, STREAM, cover(rng, tier.granularities), "key"), "key")
        assert got == oracle_by_key(events, rng)
    finally:
        tier.close()


def test_unreachable_s3_is_tier_unavailable_naming_archive(settings, archive_pool):
    dead = settings.model_copy(update={"s3_endpoint": "http://127.0.0.1:9"})
    tier = ArchiveTier(dead, pool=archive_pool, engine="duckdb", prefix="_test/dead")
    try:
        with pytest.raises(TierUnavailable) as err:
            tier.health()
        assert err.value.tier == "archive"
        rng = random_range(random.Random(1), WINDOW)
        with pytest.raises(TierUnavailable) as err:
            tier.aggregate("nobody", STREAM, cover(rng, tier.granularities), "key")
        assert err.value.tier == "archive"
    finally:
        tier.close()


def test_replace_days_rewrites_whole_days(settings, archive_pool):
    """What `tierstore import` needs below b_archive: merge adds (ids deduplicated), replace rewrites."""
    import pyarrow as pa
    import pyarrow.compute as pc

    tenant = f"t{uuid.uuid4().hex[:10]}"
    tier = ArchiveTier(settings, pool=archive_pool, engine="duckdb", prefix=f"_test/{uuid.uuid4().hex[:8]}/rd")
    try:
        old = random_events(random.Random(4), WINDOW, 300)
        tier.write(tenant, old)
        day = TimeRange(parse_time("2019-01-30T00:00:00Z"), parse_time("2019-01-31T00:00:00Z"))
        new = random_events(random.Random(5), day, 50)
        assert tier.replace_days(tenant, STREAM, new, merge=False) == 50
        kept = old.filter(pc.or_(pc.less(old["ts"], day.start), pc.greater_equal(old["ts"], day.end)))
        whole = TimeRange(G1M.ceil(WINDOW.start), G1M.floor(WINDOW.end))
        expected = pa.concat_tables([kept, new])
        assert as_aggs(tier.aggregate(tenant, STREAM, cover(whole, tier.granularities), "key"), "key") == \
            oracle_by_key(expected, whole)
        ids = new.set_column(4, "id", pa.array([f"e{i}" for i in range(50)]))
        assert tier.replace_days(tenant, STREAM, ids, merge=True) == 50
        assert tier.replace_days(tenant, STREAM, ids, merge=True) == 0  # ids seen: nothing twice
    finally:
        tier.close()


def test_stats_and_object_lock_on_a_bucket_without_it(settings, archive_pool):
    """Object Lock is used only when the bucket has it (s3proxy's has not): writes still succeed."""
    tenant = f"t{uuid.uuid4().hex[:10]}"
    locked = settings.model_copy(update={"s3_object_lock": True})
    tier = ArchiveTier(locked, pool=archive_pool, engine="duckdb", prefix=f"_test/{uuid.uuid4().hex[:8]}/lock")
    try:
        before = tier.stats()
        assert tier.store.object_lock_enabled() is False
        assert tier.write(tenant, random_events(random.Random(9), WINDOW, 120)) == 120
        after = tier.stats()
        assert after["rows"] - before["rows"] == 120 and after["bytes"] > before["bytes"]
    finally:
        tier.close()


def test_read_raw_returns_the_events_in_range(archive):
    import pyarrow as pa

    tenant = f"t{uuid.uuid4().hex[:10]}"
    events = random_events(random.Random(13), WINDOW, 400)
    archive.write(tenant, events)
    rng = TimeRange(parse_time("2019-01-28T05:06:07.089Z"), parse_time("2019-02-02T01:02:03.004Z"))
    got = pa.Table.from_batches(list(archive.read_raw(tenant, STREAM, rng)))
    want = sorted((e["ts"], e["key"], e["value"]) for e in events.to_pylist() if rng.contains(e["ts"]))
    assert sorted(zip(got["ts"].to_pylist(), got["key"].to_pylist(), got["value"].to_pylist())) == want
    assert got["ts"].to_pylist() == sorted(got["ts"].to_pylist())
