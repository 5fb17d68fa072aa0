"""A Trino cluster (coordinator + 1 worker, tierstore.services.trino_cluster) on its own ports over
this instance's cold root and S3: the cold and archive tiers' Trino engines, unchanged, answer as the
raw-event oracle does, and their queries' tasks ran on the worker, none on the coordinator.

Heavy (two more JVMs, 1G + 2G heap): one module, the cluster started once and stopped at the end.
Its ports: this instance's port base + 7 as the cluster's base, so the coordinator listens on
base + 9 and worker 1 on base + 19 (tierstore.layout offsets), inside this instance's 20 ports and
clear of its Redis Cluster nodes (base + 4 .. 8), API (+ 10) and first Trino workers (+ 12 ..).
"""
from __future__ import annotations

import random
import shutil
import uuid

import pytest

from rollups.cover import cover
from rollups.timeutil import MAX_MS, MIN_MS, TimeRange, parse_time
from tests.tier_contract import STREAM, as_aggs, oracle_by_key, random_events, random_range
from tests.warm_support import migrated_database
from tierstore.layout import InstanceLayout
from tierstore.services.commands import _run_all
from tierstore.services.trino import TrinoService
from tierstore.services.trino_cluster import worker_node_ids, workers_of

pytestmark = [pytest.mark.trino, pytest.mark.slow]

WINDOW = TimeRange(parse_time("2024-03-27T21:07:00Z"), parse_time("2024-04-03T04:13:00Z"))
CLUSTER_PORT_OFFSET = 7


@pytest.fixture(scope="module")
def cluster(settings):
    """(coordinator, [worker]) started for this module under $TIERSTORE_HOME/_test_trino_cluster."""
    layout = InstanceLayout(home=settings.home / "_test_trino_cluster",
                            port_base=settings.port_base + CLUSTER_PORT_OFFSET)
    (layout.run_dir).mkdir(parents=True, exist_ok=True)
    coordinator = TrinoService(layout, workers=1, cold_dir=settings.cold_dir, s3_endpoint=settings.s3_endpoint)
    workers = workers_of(coordinator)
    members = [coordinator, *workers]
    try:
        _run_all(members, "up")
        yield coordinator, workers
    finally:
        _run_all(members, "down")
        shutil.rmtree(layout.home, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster_settings(settings, cluster):
    coordinator, _ = cluster
    return settings.model_copy(update={"trino_url": coordinator.url, "cold_engine": "trino", "trino_workers": 1})


def test_coordinator_sees_its_worker_and_schedules_nothing_on_itself(cluster):
    coordinator, workers = cluster
    # The coordinator's view is refreshed from announcements (every few seconds): on a loaded
    # machine a worker that was active can be missing from one read to the next (CI saw
    # active_workers() == 1, then no row). Ask until two reads in a row agree, for up to 60 s.
    nodes, active = _stable_worker_view(coordinator, [workers[0].node_id()])
    assert active == 1
    assert list(nodes) == [workers[0].node_id()]
    assert nodes[workers[0].node_id()] == workers[0].url
    config = (coordinator.etc_dir / "config.properties").read_text()
    assert "node-scheduler.include-coordinator=false" in config
    # each node its own folders and PID file
    assert coordinator.recorded_pid() and workers[0].recorded_pid()
    assert coordinator.recorded_pid() != workers[0].recorded_pid()
    assert coordinator.data_dir != workers[0].data_dir
    # the same catalog on every node
    assert (coordinator.etc_dir / "catalog" / "hive.properties").read_text() == \
        (workers[0].etc_dir / "catalog" / "hive.properties").read_text()


def _stable_worker_view(coordinator, expected: list[str], timeout_s: float = 60.0) -> tuple[dict[str, str], int]:
    """(worker_node_ids, active_workers) once two consecutive reads agree with `expected`; the
    last read after timeout_s."""
    import time

    deadline = time.monotonic() + timeout_s
    agreed = 0
    while True:
        nodes, active = worker_node_ids(coordinator), coordinator.active_workers()
        ok = sorted(nodes) == sorted(expected) and active == len(expected)
        agreed = agreed + 1 if ok else 0
        if agreed >= 2 or time.monotonic() >= deadline:
            return nodes, active
        time.sleep(1.0)


def _nodes_that_ran(coordinator, schema: str) -> set[str]:
    """node_ids of every task of the finished queries that named `schema` (this test's tier)."""
    rows = coordinator.query(
        "SELECT DISTINCT t.node_id FROM system.runtime.tasks t JOIN system.runtime.queries q "
        "ON t.query_id = q.query_id WHERE strpos(q.query, ?) > 0 AND strpos(q.query, 'system.runtime') = 0",
        [schema],
    )
    return {r[0] for r in rows}


def _check_against_oracle(tier, tenant, events, seed):
    rnd = random.Random(seed)
    for _ in range(4):
        rng = random_range(rnd, WINDOW)
        got = as_aggs(tier.aggregate(tenant, STREAM, cover(rng, tier.granularities), "key"), "key")
        assert got == oracle_by_key(events, rng), rng
    whole = cover(WINDOW, tier.granularities)
    assert as_aggs(tier.aggregate(tenant, STREAM, whole, "key"), "key") == oracle_by_key(events, WINDOW)


def test_cold_tier_on_the_cluster_matches_the_oracle_and_runs_on_the_worker(cluster, cluster_settings, pg_url):
    from tiers.cold import ColdTier
    from tiers.cold_keys import PgKeyDictionary

    coordinator, workers = cluster
    keys = PgKeyDictionary(migrated_database(pg_url, "postgres", "_cold"))
    run = uuid.uuid4().hex[:8]
    root = cluster_settings.cold_dir / f"_test_cluster_{run}"
    schema = f"test_cluster_{run}"
    tier = ColdTier(cluster_settings, keys=keys, root=root, engine="trino", trino_schema=schema)
    tenant = f"t{run}"
    try:
        events = random_events(random.Random(5), WINDOW, 2000)
        assert tier.write(tenant, events) == events.num_rows
        _check_against_oracle(tier, tenant, events, 5)
        ran = _nodes_that_ran(coordinator, schema)
        assert ran == {workers[0].node_id()}, ran
    finally:
        tier.delete_range(tenant, None, TimeRange(MIN_MS, MAX_MS))
        tier.close()
        keys.close()
        shutil.rmtree(root, ignore_errors=True)


def test_archive_tier_on_the_cluster_matches_the_oracle_and_runs_on_the_worker(cluster, cluster_settings, pg_url):
    from tiers.archive import ArchiveTier
    from tiers.db import make_pool

    coordinator, workers = cluster
    pool = make_pool(migrated_database(pg_url, "postgres", "_archive"), max_size=4, name="test-cluster-archive")
    run = uuid.uuid4().hex[:8]
    schema = f"test_cluster_archive_{run}"
    tier = ArchiveTier(cluster_settings, pool=pool, engine="trino", prefix=f"_test/cluster/{run}",
                       trino_schema=schema)
    tenant = f"t{run}"
    try:
        events = random_events(random.Random(7), WINDOW, 1500)
        assert tier.write(tenant, events) == events.num_rows
        _check_against_oracle(tier, tenant, events, 7)
        ran = _nodes_that_ran(coordinator, schema)
        assert ran == {workers[0].node_id()}, ran
    finally:
        tier.delete_range(tenant, None, TimeRange(MIN_MS, MAX_MS))
        tier.close()
        pool.close()
