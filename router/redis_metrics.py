"""/metrics gauges of every Redis master (issue 12): one series per node, the one server in
standalone mode, each of the cluster's masters in cluster mode.

    tierstore_redis_node_up{node}                     1 when the node answered INFO in this scrape
    tierstore_redis_used_memory_dataset_bytes{node}   its used_memory_dataset
    tierstore_redis_keys{node}                        keys in its database 0 (the instance's database standalone)
    tierstore_redis_connected_replicas{node}          replicas connected to it
    tierstore_redis_cluster_state_ok                  cluster mode only: 1 when CLUSTER INFO says ok

Wire with `register_redis_metrics(app, redis_client)` after create_app; redis_client: the instance's
client (tierstore.wiring.redis_client, redis.Redis or redis.cluster.RedisCluster). Each node is read
within its client's socket timeout; a node that does not answer reports 0 up and no other series.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator

from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("tierstore.router")


class RedisNodesCollector:
    def __init__(self, redis_client: Any) -> None:
        self._redis = redis_client

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from tierstore.wiring import redis_primaries

        up = GaugeMetricFamily("tierstore_redis_node_up", "1 when the Redis master answered INFO in this scrape.",
                               labels=["node"])
        memory = GaugeMetricFamily("tierstore_redis_used_memory_dataset_bytes", "used_memory_dataset of each Redis "
                                   "master (bytes).", labels=["node"])
        keys = GaugeMetricFamily("tierstore_redis_keys", "Keys in each Redis master's database.", labels=["node"])
        replicas = GaugeMetricFamily("tierstore_redis_connected_replicas", "Replicas connected to each Redis "
                                     "master.", labels=["node"])
        try:
            nodes = redis_primaries(self._redis)
        except Exception as exc:  # noqa: BLE001 - the cluster's slot map cannot be read: nothing to report
            log.warning("redis metrics: the masters cannot be listed (%s)", exc)
            nodes = []
        for name, client in nodes:
            try:
                info = client.info()
            except Exception as exc:  # noqa: BLE001 - one node down must not hide the others
                log.warning("redis metrics: %s does not answer INFO (%s)", name, exc)
                up.add_metric([name], 0.0)
                continue
            up.add_metric([name], 1.0)
            memory.add_metric([name], float(info.get("used_memory_dataset", 0)))
            db = client.connection_pool.connection_kwargs.get("db", 0) or 0
            keys.add_metric([name], float((info.get(f"db{db}") or {}).get("keys", 0)))
            replicas.add_metric([name], float(info.get("connected_slaves", 0)))
        yield from (up, memory, keys, replicas)
        if hasattr(self._redis, "get_primaries"):
            state = GaugeMetricFamily("tierstore_redis_cluster_state_ok", "1 when CLUSTER INFO reports "
                                      "cluster_state:ok.")
            try:
                info = self._redis.cluster_info()
                state.add_metric([], 1.0 if info.get("cluster_state") == "ok" else 0.0)
            except Exception:  # noqa: BLE001
                state.add_metric([], 0.0)
            yield state


def register_redis_metrics(app: Any, redis_client: Any) -> None:
    """Add the per-master Redis gauges to the app's metrics (router.metrics.Metrics)."""
    from router import context

    app.extensions[context.EXTENSION].metrics.add_collector(RedisNodesCollector(redis_client))
