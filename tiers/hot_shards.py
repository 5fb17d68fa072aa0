"""Hot-key mitigation: each stream's keys hashed over N shards, each shard its own Redis Cluster slot.

With `stream_shards` = N > 1 (setting hot_stream_shards), shard i of stream S is kept as the hot
stream `S#i` (stream names never hold '#': router/models.py STREAM_RE): its own hash tag {T:S#i},
so its own slot, its own log, marks, dedup sets, compaction and all-time zsets; every per-stream
mechanism of tiers/hot.py works on it unchanged. A key always lives in shard crc32(key) % N, so the
shards hold disjoint keys, and:
    ingest      events are routed by key (one script call per shard); the log entries name S, so
                warm receives the stream as sent. Dedup is per shard: a retried event (same id, same
                key) is always recognised; one id reused with another key counts as another event.
    aggregate   by key: the shards' rows together; one key: its shard; by bucket: merged partials.
    top_k       the merge of the shards' top-k (exact: keys are disjoint), ties by key ascending;
                avg through aggregate.
    rank        from the merged per-key aggregate (exact; reads every key of the pieces).
    ranked      the threshold algorithm's RankedAccess over every shard's lists (MergedRankedAccess).
    score       the key's shard; its rank counts the keys above it in every shard (each shard read
                at its own instant).
N is fixed for a deployment: changing it moves keys between shards (re-import to change it).
"""
from __future__ import annotations

import math
import zlib
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rollups.exactsum import column_fsum
from rollups.cover import Piece
from rollups.partials import merge_partials
from rollups.timeutil import TimeRange
from rollups.topk import Ranked, RankResult, rank_of
from tiers.base import RankedAccess, Tier
from tiers.errors import tier_call, tier_read
from tiers.hot import IngestResult, RedisHotTier
from tiers.hot_sums import concat_with_lows
from tiers.ranked_access import check_by

SEP = "#"


def shard_of(key: str, n: int) -> int:
    return zlib.crc32(key.encode()) % n


class ShardedRedisHotTier(RedisHotTier):
    """RedisHotTier with every stream's keys hashed over settings.stream_shards shards."""

    @property
    def shards(self) -> int:
        return self.settings.stream_shards

    def _names(self, stream: str) -> list[str]:
        return [f"{stream}{SEP}{i}" for i in range(self.shards)]

    def _name(self, stream: str, key: str) -> str:
        return f"{stream}{SEP}{shard_of(key, self.shards)}"

    def _to_shards(self, events: pa.Table) -> pa.Table:
        keys, streams = events.column("key").to_pylist(), events.column("stream").to_pylist()
        named = pa.array([self._name(s, k) for s, k in zip(streams, keys)], pa.string())
        return events.set_column(events.schema.get_field_index("stream"), "stream", named)

    def _log_table(self, events: pa.Table) -> pa.Table:
        real = pc.replace_substring_regex(events.column("stream"), f"{SEP}[0-9]+$", "")
        return events.set_column(events.schema.get_field_index("stream"), "stream", real)

    # ---- writes ----------------------------------------------------------------------------

    def ingest(self, tenant: str, events: pa.Table, *, now_ms: int) -> IngestResult:
        return super().ingest(tenant, self._to_shards(events), now_ms=now_ms)

    def write(self, tenant: str, events: pa.Table) -> int:
        return super().write(tenant, self._to_shards(events))

    @tier_call
    def fold_alltime(self, tenant: str, stream: str) -> int:
        """RedisHotTier.fold_alltime of every shard."""
        return sum(RedisHotTier.fold_alltime(self, tenant, name) for name in self._names(stream))

    @tier_call
    def score(self, tenant: str, stream: str, key: str, delta: float, ts_ms: int, now_ms: int) -> tuple[float, int]:
        """The key's all-time sum and its 1-based rank over every shard (value desc, key asc)."""
        total, _ = super().score(tenant, self._name(stream, key), key, delta, ts_ms, now_ms)
        above = 0
        for name in self._names(stream):
            p = f"tierstore:hot:{{{tenant}:{name}}}:all:"
            RedisHotTier.fold_alltime(self, tenant, name)  # its pending increments first
            board = p + "sum" if self._client.exists(p + "sum") else p + "count"
            above += int(self._client.zcount(board, f"({total!r}", "+inf"))
            ties = self._client.zrangebyscore(board, total, total)
            above += sum(1 for m in ties if m.decode() < key)
        return total, above + 1

    # ---- reads -----------------------------------------------------------------------------

    def aggregate(self, tenant: str, stream: str, pieces: Sequence[Piece], group, key: str | None = None) -> pa.Table:
        if key is not None:
            return super().aggregate(tenant, self._name(stream, key), pieces, group, key)
        parts = [super(ShardedRedisHotTier, self).aggregate(tenant, name, pieces, group) for name in self._names(stream)]
        if group == "key":
            return concat_with_lows(parts, "sum_lo")
        return merge_partials(parts, group)

    #: one aggregate (all shards) per piece: RedisHotTier's pipeline reads one stream name
    aggregate_each = Tier.aggregate_each

    @tier_read
    def top_k(self, tenant: str, stream: str, pieces: Sequence[Piece], k: int, by: str, *,
              stats: dict | None = None) -> list[Ranked]:
        if by == "avg":
            return super().top_k(tenant, stream, pieces, k, by, stats=stats)
        rows = [r for name in self._names(stream)
                for r in super(ShardedRedisHotTier, self).top_k(tenant, name, pieces, k, by)]
        rows.sort(key=lambda r: (-r.value, r.key.encode()))
        return [Ranked(i + 1, r.key, r.value) for i, r in enumerate(rows[:k])]

    def rank(self, tenant: str, stream: str, pieces: Sequence[Piece], key: str, by: str, around: int = 0) -> RankResult:
        return rank_of(self.aggregate(tenant, stream, pieces, "key"), key, by, around)

    def key_values(self, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> pa.Table:
        # the shards hold disjoint keys: their rows together
        return concat_with_lows([super(ShardedRedisHotTier, self).key_values(tenant, name, pieces, by)
                                 for name in self._names(stream)], "value_lo")

    def distinct_keys(self, tenant: str, stream: str, pieces: Sequence[Piece]) -> pa.Array:
        return pa.concat_arrays([super(ShardedRedisHotTier, self).distinct_keys(tenant, name, pieces)
                                 for name in self._names(stream)])

    def ranked_access(self, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> RankedAccess:
        check_by(by)
        return MergedRankedAccess([super(ShardedRedisHotTier, self).ranked_access(tenant, name, pieces, by)
                                   for name in self._names(stream)])

    def data_versions(self, tenant: str, stream: str, pieces: Sequence[Piece]) -> list:
        per = [super(ShardedRedisHotTier, self).data_versions(tenant, name, pieces) for name in self._names(stream)]
        return [tuple(v) for v in zip(*per)]

    def streams(self, tenant: str) -> list[str]:
        return sorted({s.rsplit(SEP, 1)[0] for s in self._registered_streams(tenant)})

    # ---- maintenance -----------------------------------------------------------------------

    def delete_range(self, tenant: str | None, stream: str | None, rng: TimeRange) -> int:
        if stream is None:
            return super().delete_range(tenant, None, rng)
        return sum(super(ShardedRedisHotTier, self).delete_range(tenant, name, rng) for name in self._names(stream))

    def compact(self, tenant: str | None = None, stream: str | None = None, **kw) -> dict[str, int]:
        if stream is None:
            return super().compact(tenant, None, **kw)
        out = {"steps": 0, "folded": 0, "members": 0}
        for name in self._names(stream):
            for k, v in super().compact(tenant, name, **kw).items():
                out[k] += v
        return out

    def begin_alltime_rebuild(self, streams: Iterable[tuple[str, str]], token: str, ttl_ms: int):
        """As RedisHotTier's, every shard of each stream marked; returns the streams' pairs."""
        shards = [(t, name) for t, s in streams for name in self._names(s.rsplit(SEP, 1)[0])]
        lasts, marked = super().begin_alltime_rebuild(shards, token, ttl_ms)
        return lasts, list(dict.fromkeys((t, s.rsplit(SEP, 1)[0]) for t, s in marked))

    def replace_alltime(self, tenant: str, stream: str, token: str, totals: pa.Table) -> bool:
        at = np.array([shard_of(k, self.shards) for k in totals.column("key").to_pylist()], np.int64)
        done = [super(ShardedRedisHotTier, self).replace_alltime(tenant, f"{stream}{SEP}{i}", token,
                                                                 totals.filter(pa.array(at == i)))
                for i in range(self.shards)]
        return all(done)


class MergedRankedAccess(RankedAccess):
    """The lists of several shards' RankedAccess (disjoint keys): a key's exact value is the sum
    over the shards (0 where it is absent), the frontier the sum of the shards' frontiers."""

    def __init__(self, parts: list[RankedAccess]):
        self._parts = parts
        self.min_value = min((p.min_value for p in parts), default=0.0)

    def sorted_access(self, n: int) -> tuple[list[str], np.ndarray]:
        keys: list[str] = []
        values = []
        for p in self._parts:
            if not p.exhausted:
                k, v = p.sorted_access(n)
                keys += k
                values.append(v)
        return keys, np.concatenate(values) if values else np.zeros(0)

    def frontier(self) -> float:
        return math.fsum(p.frontier() for p in self._parts)

    @property
    def exhausted(self) -> bool:
        return all(p.exhausted for p in self._parts)

    def exact(self, keys: Sequence[str]) -> np.ndarray:
        return column_fsum(self.exact_parts(keys))

    def exact_parts(self, keys: Sequence[str]) -> np.ndarray:
        """Every shard's exact_parts rows stacked (the router fsums them with the other tiers')."""
        if not keys:
            return np.zeros((1, 0))
        return np.vstack([p.exact_parts(keys) for p in self._parts])

    def close(self) -> None:
        for p in self._parts:
            p.close()
