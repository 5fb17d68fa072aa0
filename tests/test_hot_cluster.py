"""The hot tier on a real Redis Cluster (3 masters, 3 replicas on loopback, started here): the tier
contract, ingest + flush against the oracle with batches spanning streams, and a failover during
ingest with WAIT: every acknowledged event is counted exactly once after the replica takes over.

Skipped only when redis-server or redis-cli is missing or the server lacks cluster support.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from rollups.errors import TierUnavailable
from rollups.timeutil import DAY_MS, G1D, G1M, MAX_MS, MIN_MS, TimeRange, now_ms
from scheduler.steps import flush
from tests.tier_contract import TierContract, as_aggs as contract_aggs, new_tenant, oracle_by_key
from tests.warm_support import Ev, expected_rows, migrated_database, raw_rows, reset, table
from tiers.eventlog import EventLogs, registered_logs, stream_log_key
from tiers.hot import RedisHotTier, fold_alltime
from tiers.hot_shards import shard_of
from tiers.warm import WarmTier

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PORTS = list(range(17510, 17516))  # 3 masters + 3 replicas


class Cluster:
    def __init__(self, workdir: Path):
        self.dir = workdir
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, port: int) -> None:
        log = open(self.dir / f"redis-{port}.log", "ab")
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
             "--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0",
             "--appendonly", "no", "--save", ""], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=port, socket_timeout=1).ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.procs[port].poll() is not None:
                    raise
                time.sleep(0.05)

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for port in list(self.procs):
            proc = self.procs.pop(port)
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def wait_ok(self, ports, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(_state(redis.Redis(port=p, socket_timeout=1).execute_command("CLUSTER INFO")) == "ok"
                       for p in ports):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.2)
        raise AssertionError("the cluster did not reach cluster_state:ok")

    def wait_replicated(self, timeout: float = 30) -> None:
        """Until every master has a replica whose link is up (WAIT counts only those)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                infos = [redis.Redis(port=p, socket_timeout=1).info("replication") for p in self.procs]
                masters = [i for i in infos if i.get("role") == "master"]
                replicas = [i for i in infos if i.get("role") == "slave"]
                if (len(masters) == 3 and all(i.get("connected_slaves", 0) >= 1 for i in masters)
                        and all(i.get("master_link_status") == "up" for i in replicas)):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.2)
        raise AssertionError("the replicas did not sync")

    def client(self) -> RedisCluster:
        return RedisCluster(host="127.0.0.1", port=PORTS[0], socket_timeout=5, socket_connect_timeout=2)


def _state(info) -> str:
    if isinstance(info, dict):
        value = info.get("cluster_state") or info.get(b"cluster_state")
        return value.decode() if isinstance(value, bytes) else str(value)
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "ok" if "cluster_state:ok" in text else "fail"


@pytest.fixture(scope="module")
def cluster():
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        pytest.skip("redis-server / redis-cli not installed")
    workdir = ROOT / ".tierstore" / "test-hot-cluster"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    c = Cluster(workdir)
    try:
        c.start(PORTS[0])
        info = redis.Redis(port=PORTS[0]).info("cluster")
        if not info.get("cluster_enabled"):
            pytest.skip("redis-server lacks cluster support")
        for port in PORTS[1:]:
            c.start(port)
        created = subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in PORTS],
                                  "--cluster-replicas", "1", "--cluster-yes"], capture_output=True, text=True,
                                 timeout=60)
        assert created.returncode == 0, created.stdout[-2000:] + created.stderr[-2000:]
        c.wait_ok(PORTS)
        c.wait_replicated()
        yield c
    finally:
        c.stop()


def cluster_tier(cluster, **extra) -> RedisHotTier:
    return RedisHotTier.from_url(f"redis://127.0.0.1:{PORTS[0]}", DAY_MS, 0, DAY_MS, cluster=True, **extra)


@pytest.fixture(scope="module")
def warm_url(pg_url):
    return migrated_database(pg_url, "postgres", "_hotcluster")


class TestClusterHotContract(TierContract):
    """Every read and delete of the tier contract, on the cluster."""

    @pytest.fixture
    def tier(self, cluster):
        tier = cluster_tier(cluster)
        yield tier
        tier.close()

    @pytest.fixture
    def down(self):
        pytest.skip("outages are tested on one Redis (tests/test_hot_tier.py)")


class TestClusterShardedHotContract(TierContract):
    """The tier contract with every stream's keys hashed over 3 shards (3 slots)."""

    @pytest.fixture
    def tier(self, cluster):
        tier = cluster_tier(cluster, stream_shards=3)
        yield tier
        tier.close()

    @pytest.fixture
    def down(self):
        pytest.skip("outages are tested on one Redis (tests/test_hot_tier.py)")


def _events(rnd: random.Random, tenant_streams, n: int, base: int, id_prefix: str) -> list[Ev]:
    out = []
    for i in range(n):
        stream = rnd.choice(tenant_streams)
        ident = f"{id_prefix}-{rnd.randrange(n)}" if rnd.random() < 0.5 else None
        out.append(Ev(stream, f"k{rnd.randrange(30):02d}", base - rnd.randrange(3 * 60 * 60_000),
                      float(rnd.randint(1, 9)), ident))
    return out


def _accepted(events: list[Ev], seen: set, shards: int = 1) -> list[Ev]:
    """The events ingest counts: the first of each (stream, id), every id-less one. With shards the
    dedup scope is (stream, shard of the key, id) (tiers/hot_shards.py)."""
    out = []
    for e in events:
        scope = (e.stream, e.id) if shards == 1 else (e.stream, shard_of(e.key, shards), e.id)
        if e.id is None or scope not in seen:
            out.append(e)
            if e.id is not None:
                seen.add(scope)
    return out


@pytest.mark.parametrize("shards", [1, 3])
def test_ingest_spanning_streams_then_flush_matches_the_oracle(cluster, warm_url, shards):
    reset(warm_url)
    client = cluster.client()
    tier = cluster_tier(cluster, stream_shards=shards)
    warm = WarmTier(warm_url, mode="postgres", pool_size=2)
    rnd = random.Random(7)
    tenants = [new_tenant() for _ in range(2)]
    streams = ["plays", "views", "clicks", "buys"]  # spread over the slots of all masters
    now = now_ms()
    accepted: dict[str, list[Ev]] = {t: [] for t in tenants}
    seen: dict[str, set] = {t: set() for t in tenants}
    try:
        for b in range(12):
            tenant = tenants[b % 2]
            batch = _events(rnd, streams, 150, now, f"b{b % 4}")
            result = tier.ingest(tenant, table(batch), now_ms=now)
            got = _accepted(batch, seen[tenant], shards)
            accepted[tenant] += got
            assert result.accepted == len(got)
        logs = registered_logs(client)
        names = streams if shards == 1 else [f"{s}#{i}" for s in streams for i in range(shards)]
        assert {stream_log_key(t, s) for t in tenants for s in names} <= set(logs)
        window = TimeRange(G1D.floor(now) - DAY_MS, G1M.ceil(now + 1))
        from rollups.cover import cover
        pieces = cover(window, tier.granularities)
        for tenant in tenants:
            assert tier.streams(tenant) == sorted(streams)
            for stream in streams:
                mine = table([e for e in accepted[tenant] if e.stream == stream])
                want = oracle_by_key(mine, window)
                assert contract_aggs(tier.aggregate(tenant, stream, pieces, "key"), "key") == want
                best = sorted(want, key=lambda k: (-want[k].sum, k))[:5]
                assert [(r.key, r.value) for r in tier.top_k(tenant, stream, pieces, 5, "sum")] == \
                    [(k, want[k].sum) for k in best]
                key = best[-1]
                got = tier.rank(tenant, stream, pieces, key, "sum", around=1)
                assert (got.rank, got.value) == (5, want[key].sum)
                totals, _ = tier.score(tenant, stream, key, 0.0, now, now)  # a zero event: counted, sum kept
                alltime = {k: a.sum for k, a in oracle_by_key(mine, TimeRange(MIN_MS, MAX_MS)).items()}
                alltime[key] = alltime.get(key, 0.0)
                order = sorted(alltime, key=lambda k: (-alltime[k], k))
                assert (totals, _) == (alltime[key], order.index(key) + 1)
                accepted[tenant].append(Ev(stream, key, now, 0.0))
        stats = flush(client, warm)
        assert stats["events"] == sum(len(v) for v in accepted.values())
        assert EventLogs(client).backlog()[0] == 0
        lo, hi = now - DAY_MS, now + DAY_MS
        for tenant in tenants:
            for stream in streams:
                assert raw_rows(warm, tenant, stream, lo, hi) == expected_rows(accepted[tenant], stream, lo, hi)
        assert flush(client, warm)["events"] == 0  # nothing twice
    finally:
        for tenant in tenants:
            tier.delete_range(tenant, None, TimeRange(MIN_MS, MAX_MS))
        warm.close()
        tier.close()
        client.close()


def test_failover_during_ingest_counts_every_acknowledged_event_once(cluster, warm_url):
    """WAIT for one replica before acknowledging; SIGKILL the master of the stream's slot mid-ingest;
    retry every unacknowledged batch (same ids) until the replica has taken over (and, for WAIT to
    succeed again, the killed node is back as its replica)."""
    reset(warm_url)
    client = cluster.client()
    tier = cluster_tier(cluster, wait_replicas=1, wait_timeout_ms=2000)
    warm = WarmTier(warm_url, mode="postgres", pool_size=2)
    tenant, stream = new_tenant(), "plays"
    now = now_ms()
    rnd = random.Random(11)
    node = client.get_node_from_key(stream_log_key(tenant, stream))
    victim = int(node.port)
    acknowledged: list[Ev] = []
    retries = 0
    try:
        for b in range(40):
            batch = [Ev(stream, f"k{rnd.randrange(20):02d}", now - rnd.randrange(3_600_000), 1.0,
                        f"e{b}-{i}") for i in range(50)]
            if b == 15:  # SIGKILL while this batch's call is in flight (or just before it)
                killer = threading.Timer(0.002, cluster.kill, args=(victim,))
                killer.start()
                killed_at = time.monotonic()
            deadline = time.monotonic() + 60
            while True:
                try:
                    result = tier.ingest(tenant, table(batch), now_ms=now)
                    break
                except TierUnavailable:
                    retries += 1
                    assert time.monotonic() < deadline, "the replica never took over"
                    if b >= 15 and victim not in cluster.procs and time.monotonic() > killed_at + 5:
                        cluster.start(victim)  # it rejoins as the new master's replica: WAIT 1 can succeed again
                    time.sleep(0.2)
            acknowledged += batch
            if b == 15:
                killer.join()
            assert result.accepted + result.duplicates == len(batch)
        assert retries > 0  # the kill was felt
        promoted = client_after_failover(cluster)
        try:
            assert int(promoted.get_node_from_key(stream_log_key(tenant, stream)).port) != victim
            fold_alltime(promoted, tenant, stream)  # the pending increments (hot_alltime_fold.lua)
            counts = promoted.zrange(f"tierstore:hot:{{{tenant}:{stream}}}:all:count", 0, -1, withscores=True)
            want: dict[str, int] = {}
            for e in acknowledged:
                want[e.key] = want.get(e.key, 0) + 1
            assert {m.decode(): int(s) for m, s in counts} == want
            flush(promoted, warm)
            lo, hi = now - DAY_MS, now + DAY_MS
            assert raw_rows(warm, tenant, stream, lo, hi) == expected_rows(acknowledged, stream, lo, hi)
        finally:
            promoted.close()
    finally:
        tier.close()
        warm.close()
        client.close()
        if victim not in cluster.procs:  # back as a replica of the new master
            cluster.start(victim)
            cluster.wait_ok(PORTS)
            cluster.wait_replicated()


def client_after_failover(cluster) -> RedisCluster:
    alive = [p for p in PORTS if p in cluster.procs]
    cluster.wait_ok(alive)
    return RedisCluster(host="127.0.0.1", port=alive[0], socket_timeout=5, socket_connect_timeout=2)


def test_wait_short_of_replicas_is_a_503_and_a_retry_with_ids_counts_once(settings):
    """On one Redis without replicas WAIT 1 reaches none: 503 tier_unavailable (problem
    'replication'); the batch was applied on the master, so the client's retry with the same ids
    counts nothing twice."""
    from tests.api_support import redis_db_url

    url = redis_db_url(settings, "hot_cluster_wait", 18)
    waiting = RedisHotTier.from_url(url, DAY_MS, 0, DAY_MS, wait_replicas=1, wait_timeout_ms=50)
    plain = RedisHotTier.from_url(url, DAY_MS, 0, DAY_MS)
    tenant, now = new_tenant(), now_ms()
    batch = table([Ev("plays", f"k{i % 3}", now - i, 1.0, f"w{i}") for i in range(20)]
                  + [Ev("views", "k0", now, 2.0, "v0")])  # two streams: two calls, each waited for
    try:
        with pytest.raises(TierUnavailable) as err:  # registering the stream waits too: nothing stored
            waiting.ingest(tenant, batch, now_ms=now)
        assert err.value.details[0]["problem"] == "replication"
        assert plain.ingest(tenant, table([Ev("plays", "z", now, 1.0, "pre-1"), Ev("views", "z", now, 1.0, "pre-2")]),
                            now_ms=now).accepted == 2  # both streams registered now
        with pytest.raises(TierUnavailable) as err:  # applied on the master, WAIT short: 503
            waiting.ingest(tenant, batch, now_ms=now)
        assert err.value.status == 503 and err.value.code == "tier_unavailable"
        assert err.value.details[0]["problem"] == "replication" and err.value.details[0]["replicas"] == 0
        first = plain.ingest(tenant, batch, now_ms=now)  # the client's retry
        again = plain.ingest(tenant, batch, now_ms=now)
        assert again.accepted == 0 and again.duplicates == 21
        client = redis.Redis.from_url(url)
        fold_alltime(client, tenant, "plays")  # the pending increments (hot_alltime_fold.lua)
        counts = client.zrange(f"tierstore:hot:{{{tenant}:plays}}:all:count", 0, -1, withscores=True)
        assert {m.decode(): int(s) for m, s in counts} == {"k0": 7, "k1": 7, "k2": 6, "z": 1}
        assert (first.accepted, first.duplicates) == (1, 20)  # plays was applied before its WAIT failed
    finally:
        waiting.close()
        plain.close()


def test_marks_reach_every_stream_copy_and_new_streams_copy_them(settings):
    """raise_mark raises the global seal, then every registered stream's copy, which the ingest
    script checks; a stream registered later copies the global value (tiers/eventlog.py)."""
    from rollups.errors import RangeSealed
    from tests.api_support import redis_db_url
    from tiers.eventlog import HOT_FLOOR_KEY, SEAL_KEY, mark_copy, raise_mark, read_mark

    url = redis_db_url(settings, "hot_cluster_marks", 19)
    hot = RedisHotTier.from_url(url, DAY_MS, 0, DAY_MS)
    client = redis.Redis.from_url(url)
    tenant, now = new_tenant(), now_ms()
    try:
        hot.ingest(tenant, table([Ev("a", "k", now, 1.0)]), now_ms=now)  # registers stream a
        raise_mark(client, SEAL_KEY, now - 10)
        log_a, log_b = stream_log_key(tenant, "a"), stream_log_key(tenant, "b")
        assert read_mark(client, mark_copy(SEAL_KEY, log_a), 0) == now - 10
        client.delete(SEAL_KEY)  # the script checks the copy, never the global key
        with pytest.raises(RangeSealed):
            hot.ingest(tenant, table([Ev("a", "k", now - 20, 1.0)]), now_ms=now)
        raise_mark(client, SEAL_KEY, now - 10)
        with pytest.raises(RangeSealed):  # not registered yet: refused before anything is written
            hot.ingest(tenant, table([Ev("b", "k", now - 20, 1.0)]), now_ms=now)
        assert not client.exists(log_b) and not client.exists(mark_copy(SEAL_KEY, log_b))
        assert hot.ingest(tenant, table([Ev("b", "k", now, 1.0)]), now_ms=now).accepted == 1
        assert read_mark(client, mark_copy(SEAL_KEY, log_b), 0) == now - 10
        raise_mark(client, HOT_FLOOR_KEY, now - 5)
        assert read_mark(client, mark_copy(HOT_FLOOR_KEY, log_a), 0) == now - 5
        assert hot.ingest(tenant, table([Ev("a", "low", now - 7, 1.0)]), now_ms=now).accepted == 1
        assert not client.zscore(f"tierstore:hot:{{{tenant}:a}}:1m:{(now - 7) - (now - 7) % 60_000}:count", "low")
        fold_alltime(client, tenant, "a")  # the pending increments (hot_alltime_fold.lua)
        assert client.zscore(f"tierstore:hot:{{{tenant}:a}}:all:count", "low") == 1.0  # all-time still counts
        assert EventLogs(client).backlog()[0] == 3  # logged for warm
    finally:
        hot.close()
        client.close()
