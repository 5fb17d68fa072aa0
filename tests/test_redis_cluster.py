"""Redis Cluster (issue 12): `tierstore services up --redis cluster` on its own port base and home,
the one client factory, and the router's non-hot Redis users against the cluster — the results cache,
the rate limits, the trending state, the per-master /metrics gauges — then `status` and `down`.

This module starts and stops its own six-node cluster (ports free at start-up, under a temporary
home), whatever mode the instance's Redis runs in.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pytest
import redis
from redis.cluster import RedisCluster

from rollups.errors import ConfigError
from router.cache import ResultsCache
from router.ratelimit import RateLimitExceeded, RateLimits, parse_limits
from router.redis_metrics import RedisNodesCollector
from tests.api_support import redis_db_url
from tierstore import services
from tierstore.layout import InstanceLayout
from tierstore.services.redis_cluster import BUS_OFFSET, NODE_OFFSETS, RedisClusterService, cluster_ports
from tierstore.services.support import port_in_use
from tierstore.settings import load_settings
from tierstore.wiring import redis_client, redis_of, redis_primaries

REDIS_DB = 17  # the database the lead gave this module (standalone meaning; cluster: database 0)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_base() -> int:
    rnd = random.Random()
    for _ in range(200):
        base = rnd.randrange(20_000, 29_000, 20)
        if all(_free(base + o) and _free(base + o + BUS_OFFSET) for o in (*NODE_OFFSETS, 1, 2, 3)):
            return base
    raise RuntimeError("no free port base for a test cluster")


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    layout = InstanceLayout(home=tmp_path_factory.mktemp("redis-cluster-home"), port_base=_free_port_base())
    services.up(layout, ["redis"], "cluster")
    yield layout
    services.down(layout, ["redis"])


@pytest.fixture(scope="module")
def cluster_settings(layout):
    return load_settings(home=layout.home, port_base=layout.port_base, redis_mode="cluster")


@pytest.fixture(scope="module")
def client(cluster_settings):
    c = redis_of(cluster_settings)
    yield c
    c.close()


def _node(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)


def test_up_starts_three_masters_with_one_replica_each_covering_every_slot(layout):
    ports = cluster_ports(layout)
    assert ports[0] == layout.redis_port and len(set(ports)) == 6
    roles = {}
    for port in ports:
        node = _node(port)
        info = node.execute_command("CLUSTER INFO")
        assert info["cluster_state"] == "ok" and int(info["cluster_slots_ok"]) == 16384
        assert int(info["cluster_known_nodes"]) == 6
        roles[port] = node.info("replication")
        node.close()
    masters = [p for p, r in roles.items() if r["role"] == "master"]
    replicas = [p for p, r in roles.items() if r["role"] == "slave"]
    assert sorted(masters) == ports[:3] and sorted(replicas) == ports[3:]
    assert all(r["connected_slaves"] == 1 for p, r in roles.items() if p in masters)
    assert all(r["master_link_status"] == "up" for p, r in roles.items() if p in replicas)
    slots = _node(ports[0]).execute_command("CLUSTER SLOTS")
    assert sum(int(end) - int(start) + 1 for start, end, *_ in slots) == 16384
    assert all(len(entry) >= 4 for entry in slots)  # every range: a master and its replica
    assert (layout.home / "run" / "redis.mode").read_text().strip() == "cluster"


def test_up_again_is_idempotent(layout, capsys):
    pids = [n.recorded_pid() for n in RedisClusterService(layout).nodes]
    started = time.monotonic()
    services.up(layout, ["redis"], "cluster")
    assert time.monotonic() - started < 10
    assert [n.recorded_pid() for n in RedisClusterService(layout).nodes] == pids
    assert "already running and ready" in capsys.readouterr().out


def test_factory_builds_a_cluster_client_in_cluster_mode_and_a_plain_one_otherwise(cluster_settings, client):
    assert isinstance(client, RedisCluster) and client.ping()
    assert {name for name, _ in redis_primaries(client)} == {f"127.0.0.1:{p}" for p in
                                                           cluster_ports(cluster_settings.layout)[:3]}
    plain = redis_client(cluster_settings.redis_url, "standalone")
    assert type(plain) is redis.Redis
    plain.close()
    with pytest.raises(ConfigError, match="only database 0"):
        redis_client(cluster_settings.redis_url.rsplit("/", 1)[0] + "/3", "cluster")
    with pytest.raises(ConfigError, match="TIERSTORE_REDIS_MODE"):
        redis_client(cluster_settings.redis_url, "sentinel")
    with pytest.raises(ConfigError, match="database 0"):
        load_settings(home=cluster_settings.home, port_base=cluster_settings.port_base, redis_mode="cluster",
                      redis_url=cluster_settings.redis_url.rsplit("/", 1)[0] + "/5")


def test_results_cache_spreads_over_the_masters_and_is_shared_by_two_routers(cluster_settings, client):
    writer = ResultsCache.from_settings(cluster_settings.model_copy(update={"results_cache_entries": 0}))
    reader = ResultsCache.from_settings(cluster_settings.model_copy(update={"results_cache_entries": 0}))
    keys = [("tenant", "stream", "piece", i) for i in range(60)]
    writer.put_many([(k, pa.table({"n": [i], "s": [i / 2]})) for i, k in enumerate(keys)])
    got = reader.get_many([*keys, ("absent",)])
    assert [t.column("n")[0].as_py() for t in got[:-1]] == list(range(60)) and got[-1] is None
    per_master = [node.dbsize() for _name, node in redis_primaries(client)]
    assert len(per_master) == 3 and all(n > 0 for n in per_master), per_master  # more than one slot owner
    ttl = client.pttl(next(client.scan_iter(match="tierstore:cache:*")))
    assert 0 < ttl <= cluster_settings.results_cache_ttl
    writer.close()
    reader.close()


def test_results_cache_with_an_unreachable_cluster_reads_uncached(cluster_settings):
    down = ResultsCache(0, redis_url=f"redis://127.0.0.1:{_closed_port()}/0", redis_mode="cluster")
    errors = []
    down.on_error = errors.append
    down.put_many([(("k",), pa.table({"n": [1]}))])
    assert down.get_many([("k",)]) == [None] and errors == ["read"]
    assert down.enabled


def test_rate_limits_are_counted_in_the_cluster_for_every_router(cluster_settings):
    items = parse_limits({"query": "3/minute", "events": "100/minute"})
    router_a = RateLimits(cluster_settings.redis_url, items, redis_mode="cluster")
    router_b = RateLimits(cluster_settings.redis_url, items, redis_mode="cluster")
    tenant = f"t{random.randrange(10**9)}"
    router_a.check_request(tenant, "query")
    router_b.check_request(tenant, "query")
    router_a.check_request(tenant, "query")
    with pytest.raises(RateLimitExceeded) as refused:
        router_b.check_request(tenant, "query")
    assert 1 <= int(refused.value.headers["Retry-After"]) <= 60
    router_a.charge_events(tenant, 60)
    with pytest.raises(RateLimitExceeded):
        router_b.charge_events(tenant, 60)
    router_b.charge_events(f"{tenant}-other", 60)  # another tenant has its own budget


def test_rate_limits_let_requests_through_while_the_cluster_is_unreachable():
    limits = RateLimits(f"redis://127.0.0.1:{_closed_port()}/0", parse_limits({"query": "1/minute"}),
                        redis_mode="cluster")
    for _ in range(3):
        limits.check_request("t", "query")


def test_metrics_report_every_master(client):
    families = {f.name: f for f in RedisNodesCollector(client).collect()}
    up = {s.labels["node"]: s.value for s in families["tierstore_redis_node_up"].samples}
    assert len(up) == 3 and set(up.values()) == {1.0}
    replicas = [s.value for s in families["tierstore_redis_connected_replicas"].samples]
    assert replicas == [1.0, 1.0, 1.0]
    assert [s.value for s in families["tierstore_redis_cluster_state_ok"].samples] == [1.0]


def test_test_isolation_in_cluster_mode_flushes_every_master(cluster_settings, client):
    for i in range(30):
        client.set(f"leftover:{i}", i)
    url = redis_db_url(cluster_settings, "test_redis_cluster", REDIS_DB)
    assert url.endswith("/0")
    assert sum(node.dbsize() for _name, node in redis_primaries(client)) == 0


def test_a_killed_master_fails_over_the_cache_keeps_serving_and_up_brings_the_node_back(cluster_settings, client,
                                                                                       layout):
    cache = ResultsCache.from_settings(cluster_settings.model_copy(update={"results_cache_entries": 0}))
    keys = [("failover", i) for i in range(40)]
    cache.put_many([(k, pa.table({"n": [i]})) for i, k in enumerate(keys)])
    for _name, node in redis_primaries(client):
        assert node.execute_command("WAIT", 1, 5000) == 1  # every entry is on a replica too
    victim = next(n for n in RedisClusterService(layout).nodes if _node(n.port).info("replication")["role"] == "master")
    pid = victim.recorded_pid()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    got: list = [None]
    while time.monotonic() < deadline:
        got = cache.get_many(keys)
        if all(t is not None for t in got):
            break
        time.sleep(0.5)
    assert [t.column("n")[0].as_py() for t in got] == list(range(40))  # served by the promoted replica
    assert services.status(layout, ["redis"])["redis"][0] == "running"  # a node is down: not ready
    services.up(layout, ["redis"], "cluster")  # restarts the killed node; it rejoins as a replica
    assert victim.recorded_pid() not in (None, pid)
    assert _node(victim.port).info("replication")["role"] == "slave"
    assert services.status(layout, ["redis"])["redis"][0] == "ready"
    cache.close()


def test_status_lists_the_nodes_and_down_stops_every_pid(layout, capsys):
    result = services.status(layout, ["redis"])
    assert result["redis"][0] == "ready"
    out = capsys.readouterr().out
    assert out.count(" master ") == 3 and out.count(" replica ") == 3
    cli = subprocess.run([sys.executable, "-m", "tierstore.cli", "services", "status", "--only", "redis"],
                         env={"TIERSTORE_HOME": str(layout.home), "TIERSTORE_PORT_BASE": str(layout.port_base),
                              "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and cli.stdout.count("ready") == 7, cli.stdout + cli.stderr
    pids = [n.recorded_pid() for n in RedisClusterService(layout).nodes]
    assert all(pids)
    services.down(layout, ["redis"])
    assert all(not _alive(pid) for pid in pids)
    assert not any(port_in_use(p) for p in cluster_ports(layout))  # nothing listens any more
    assert services.status(layout, ["redis"])["redis"] == ("stopped", None)


def _alive(pid: int) -> bool:
    from tierstore.services.support import pid_alive

    return pid_alive(pid)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_standalone_up_replaces_the_cluster_and_cluster_up_replaces_it_again(layout):
    services.up(layout, ["redis"], "cluster")  # the nodes restart from their nodes.conf
    cluster_pids = [n.recorded_pid() for n in RedisClusterService(layout).nodes]
    services.up(layout, ["redis"], "standalone")
    assert not any(_alive(pid) for pid in cluster_pids)
    assert services.select(layout, ["redis"])[0].status()[0] == "ready"  # the recorded mode: standalone
    plain = _node(layout.redis_port)
    assert plain.info("server")["redis_mode"] == "standalone"
    plain.close()
    assert not any(port_in_use(p) for p in cluster_ports(layout)[1:])
    services.up(layout, ["redis"], "cluster")
    assert isinstance(services.select(layout, ["redis"])[0], RedisClusterService)
    assert services.status(layout, ["redis"])["redis"][0] == "ready"
