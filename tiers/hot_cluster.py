"""The hot tier on one Redis or on Redis Cluster: the client, and ingest's script calls.

Every key a hot script touches carries its stream's hash tag {T:S} (tiers/hot.py, tiers/eventlog.py),
so each call is single-slot and runs on the slot's master; a batch spanning streams is split into
one call per stream (`split_streams`). The registries that span streams (the log registry, the
tenant and stream sets) are written by Python outside the scripts, BEFORE the first append of a
stream (`register`), so neither a crash nor a failover can leave a log the flush does not list.

Durability (`ScriptCaller`): with `wait_replicas` = n > 0, each ingest call is pipelined with
`WAIT n timeout` on the same connection of the same node (WAIT counts the replicas that have this
connection's writes). Fewer replicas within the timeout -> TierUnavailable (503 tier_unavailable,
detail problem 'replication'): the batch is on the master but may be lost by a failover; the
client retries it, and events with ids are then counted exactly once (the dedup set travels with
the aggregates in the same script and the same replication stream). A MOVED/ASK/TRYAGAIN/
CLUSTERDOWN reply means the script did not run: the topology is refreshed and the call retried.
A connection lost mid-call is never retried here (the script may have run): 503, retry with ids.
"""
from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import redis
from redis.cluster import RedisCluster
from redis.exceptions import (AskError, ClusterDownError, MasterDownError, MovedError, NoScriptError,
                              TryAgainError)

from rollups.errors import TierUnavailable
from tiers import eventlog

_TENANTS_KEY = "tierstore:hot:tenants"
_REROUTE = (MovedError, AskError, TryAgainError, ClusterDownError, MasterDownError)
_REROUTE_ATTEMPTS = 20  # a failover takes about cluster-node-timeout; 20 x up to 0.5 s covers a few s


def connect(url: str, *, cluster: bool, socket_timeout: float, connect_timeout: float):
    """redis.Redis, or redis.cluster.RedisCluster when `cluster` (the URL names any node)."""
    if cluster:
        return RedisCluster.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout)
    return redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout)


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def node_client(client: Any, key: str):
    """A plain client of the master holding `key`'s slot (the client itself on one Redis): for
    MULTI over keys of one slot with the standard reply parsing."""
    if not is_cluster(client):
        return client
    return client.get_redis_connection(client.get_node_from_key(key, replica=False))


def split_streams(events: pa.Table) -> list[tuple[str, pa.Table]]:
    """The batch's events per stream, each in batch order: [(stream, events)], first seen first."""
    col = events.column("stream")
    names = pc.unique(col).to_pylist()
    if len(names) == 1:
        return [(names[0], events)]
    return [(name, events.filter(pc.equal(col, name))) for name in names]


def register(client: Any, tenant: str, stream: str, caller: "ScriptCaller | None" = None) -> None:
    """Register the stream's log (eventlog.register_log: registry first, then its mark copies),
    then the tenant and stream sets the tier lists streams from. With a caller waiting for
    replicas, each set's SADD waits too: a failover must not lose the registry entry of a log
    whose entries survive it (a lost mark copy only makes the next call register again)."""
    sadd = caller.sadd if caller is not None and caller.wait_replicas else client.sadd
    eventlog.register_log(client, eventlog.stream_log_key(tenant, stream), sadd)
    sadd(_TENANTS_KEY, tenant)
    sadd(f"tierstore:hot:streams:{{{tenant}}}", stream)


def unregister_if_empty(client: Any, tenant: str, stream: str) -> None:
    """After hot_delete.lua emptied a stream (it dropped its mark copies in the same script): drop
    it from the stream and tenant sets, then add it back if an ingest registered it meanwhile
    (registration sets the seal copy before it adds to the sets, so one of the two sees the other)."""
    streams_key = f"tierstore:hot:streams:{{{tenant}}}"
    client.srem(streams_key, stream)
    if client.scard(streams_key) == 0:
        client.srem(_TENANTS_KEY, tenant)
    log = eventlog.stream_log_key(tenant, stream)
    if client.exists(eventlog.mark_copy(eventlog.SEAL_KEY, log)):
        client.sadd(_TENANTS_KEY, tenant)
        client.sadd(streams_key, stream)


class ScriptCaller:
    """Runs a registered script (redis.commands.core.Script) on the master of its keys' slot,
    followed by WAIT when `wait_replicas` > 0 (module docstring)."""

    def __init__(self, client: Any, wait_replicas: int = 0, wait_timeout_ms: int = 1000):
        self.client, self.wait_replicas, self.wait_timeout_ms = client, int(wait_replicas), int(wait_timeout_ms)
        self._stale = False

    def __call__(self, script: Any, keys: list[str], args: list) -> Any:
        for attempt in range(_REROUTE_ATTEMPTS):
            node = self._node(keys[0])
            try:
                replies = self._run(node, script, keys, args)
                break
            except _REROUTE:
                if attempt == _REROUTE_ATTEMPTS - 1:
                    raise
                self._stale = True
                time.sleep(min(0.5, 0.05 * (attempt + 1)))
            except (redis.ConnectionError, redis.TimeoutError):
                self._stale = True  # the script may have run: never retried here
                raise
        reply = replies[0]
        if self.wait_replicas and isinstance(reply, list) and reply and reply[0] == b"ok":
            reached = int(replies[1])
            if reached < self.wait_replicas:
                raise TierUnavailable("hot", f"The batch reached {reached} of the {self.wait_replicas} Redis "
                                             f"replica(s) required (redis_wait_replicas) within "
                                             f"{self.wait_timeout_ms} ms; it may be lost by a failover. Send it "
                                             f"again with the same ids: events with ids are counted once.",
                                      [{"tier": "hot", "problem": "replication", "replicas": reached,
                                        "required": self.wait_replicas}])
        return reply

    def sadd(self, key: str, member: str) -> None:
        """SADD, then WAIT for the replicas on the same connection (TierUnavailable when short)."""
        for attempt in range(_REROUTE_ATTEMPTS):
            node = self._node(key)
            pipe = node.pipeline(transaction=False)
            pipe.sadd(key, member)
            pipe.wait(self.wait_replicas, self.wait_timeout_ms)
            try:
                _, reached = pipe.execute()
                break
            except _REROUTE:  # SADD is idempotent: retried anyway
                if attempt == _REROUTE_ATTEMPTS - 1:
                    raise
                self._stale = True
                time.sleep(min(0.5, 0.05 * (attempt + 1)))
            except (redis.ConnectionError, redis.TimeoutError):
                self._stale = True
                raise
        if int(reached) < self.wait_replicas:
            raise TierUnavailable("hot", f"Registering a stream reached {reached} of the {self.wait_replicas} "
                                         f"Redis replica(s) required (redis_wait_replicas); nothing was stored. "
                                         f"Send the batch again.",
                                  [{"tier": "hot", "problem": "replication", "replicas": int(reached),
                                    "required": self.wait_replicas}])

    def _node(self, key: str):
        if not is_cluster(self.client):
            return self.client
        if self._stale:
            self.client.nodes_manager.initialize()
            self._stale = False
        node = self.client.get_node_from_key(key, replica=False)
        return self.client.get_redis_connection(node)

    def _run(self, node, script, keys: list[str], args: list) -> list:
        for _ in range(2):
            pipe = node.pipeline(transaction=False)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            if self.wait_replicas:
                pipe.wait(self.wait_replicas, self.wait_timeout_ms)
            try:
                return pipe.execute()
            except NoScriptError:  # not loaded on this node (a new master after a failover): it did not run
                node.script_load(script.script)
        raise NoScriptError(f"script {script.sha} could not be loaded")
