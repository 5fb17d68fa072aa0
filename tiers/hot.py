"""The hot tier (Redis): minute/hour/day sorted sets, the all-time leaderboard, and the ingest path.

Keys (T = tenant, S = stream; every key of a stream carries the hash tag {T:S}, so ZUNIONSTORE
across its buckets works on Redis Cluster):
    tierstore:hot:{T:S}:<g>:<start>:<agg>  zset, member = event key, score = the bucket's count |
                                           sum | min | max for that key; g = 1m | 1h | 1d, start =
                                           bucket start (epoch ms). Trimmed by expire_hot; a TTL only
                                           as a far safety net (see Expiry). Sparse: min and max may omit a
                                           key counted once (its min = max = its sum); there is no
                                           sum zset while every key's sum equals its count (value-1
                                           events: the count zset is the sum).
    tierstore:hot:{T:S}:<g>:<start>:sumc   zset, the low parts of the sum zset's exact pairs, member =
                                           key, score = lo where not 0, plus the marker member
                                           \xff (score: the largest |lo|); exists once a value off
                                           tiers/hot_sums.GRID reached the bucket (see Exact sums).
                                           <g>:total:sumc and all:sumc likewise for the totals and
                                           the all-time board.
    tierstore:hot:{T:S}:<g>:<start>:folded 1h and 1d buckets: epoch ms F, the bucket's zsets hold
                                           exactly its events before F (see Compaction). Exists
                                           while the bucket lives (same expiry): its marker.
    tierstore:hot:{T:S}:<g>:buckets        zset, member = score = bucket start: the index of the
                                           buckets (ranges by ZRANGEBYSCORE).
    tierstore:hot:{T:S}:<g>:total:<agg>    zset, member = bucket start, score = the stream-wide
                                           aggregate of the bucket (a series needs no union).
                                           Index and totals never expire (expire_hot trims them).
    tierstore:hot:{T:S}:<g>:lost           zset, member = score = start of a bucket the safety TTL
                                           deleted before a later write (see Expiry).
    tierstore:hot:{T:S}:all:count|sum      zsets, the all-time leaderboard (never expire); no
                                           all:sum while every key's sum equals its count.
    tierstore:hot:{T:S}:all:pend           list, the all-time increments not yet in all:count|sum:
                                           one JSON entry per batch, folded in by every reader
                                           (hot_alltime_fold.lua: `fold_alltime`), by compaction,
                                           and by ingest once 64 wait.
    tierstore:hot:{T:S}:all:rebuild        while a rebuild of the all-time zsets runs: its token;
                                           ingest then also counts into all:rebuild:count|sum,
                                           and the rebuild loads all:new:count|sum
                                           (hot_alltime.lua, scheduler/alltime.py).
    tierstore:hot:{T:S}:dd:<start>         set of id digests, one per slice of the dedup window
                                           (tiers/hot_dedup.py).
    tierstore:hot:{T:S}:tmp:<agg>          query scratch, created and deleted inside one script.
    tierstore:hot:streams:{T}              set of T's streams; tierstore:hot:tenants: set of tenants.
Ingest (hot_ingest.lua) also appends to the stream's own log and checks its copies of the marks
(tiers/eventlog.py: tierstore:log:{T:S} and friends), so every script is single-slot and the
tier runs on Redis Cluster (tiers/hot_cluster.py: the per-stream split, registration, WAIT).

Compaction. Ingest writes every event into its minute bucket (with the totals of its minute, hour
and day), not into the big hour and day zsets, whose updates cost most. Hour zsets are built
from the hour's minutes once the hour has been closed for `compact_after_ms`, day zsets from the
day's hours (hot_compact.lua), in bounded steps: each step unions the next finer buckets into the
coarse bucket's zsets and raises its `folded` mark F over them, atomically. Ingest adds an event
to an hour or day zset only when its ts < F (late events for what was folded already), so the
zsets always hold exactly the events of [start, F); reads take them for [start, F) and the finer
buckets for [F, end). Answers are exact before, during and after compaction. It runs lazily:
before an ingest, for each of the batch's streams whose next hour may have closed (one bounded
step per call), or by `compact()`.

Sliding windows (hot_window.lua). Top-K and rank by count or sum read each run of buckets — any
run of folded hours, a run of minutes from an hour's start, the sliding edge's minutes up to their
first quarter hour and the rest of that hour — through one materialised union
(win:<g>:<a>:<b>:<agg>, a 15-minute TTL renewed by reads), so "last 24 h" reads about four zsets
(one for its closed hours, built from the unions of its 8-hour blocks), and the next request, a
minute later, reuses them: only the sliding edge's first quarter hour is rebuilt, the open edge's
union and the closed hours' union grow in place. The compact_hot job builds the "last 24 h" unions
of watched streams ahead of their reads (tiers/hot_warm.py). A union's version is
the sum of its buckets' total counts; it is read only when that equals the current sum and the run
is every bucket indexed in its span. Ingest adds each minute or whole-hour section into the unions
holding it and their versions in the same script; anything else (an hour indexed or folded later)
leaves the version behind and the union is rebuilt. Deletes drop every union of the stream; lost
buckets are found before any union is read. `window_unions=False` turns them off. A read builds
or extends unions from at most `window_build_budget` source members (setting
hot_window_build_budget); a run whose union is missing and would cost more is read as its bucket
zsets (the same sum: the threshold algorithm reads them as more lists) and the stream is marked
wanted, so compact_hot builds it off the request path (tiers/hot_warm.py): a first ask of "last
24 h" at 500k keys and 4M hot events no longer holds Redis 2.7-3.7 s building the closed hours'
union (its 23 hour zsets read as lists: ~0.1-0.2 s).

Exact sums (tiers/hot_sums.py has the design). Every sum is a pair hi + lo (double-double): the
sum zset holds hi, the float nearest the pair, the sumc zset lo; ingest, folds, unions and the
all-time boards add pairs, so an answer is the compensated sum of the raw values whatever the
order of batches, folds and unions (1e15, 0.1, -1e15 sent apart gives 0.1). Buckets whose values
all lie on the grid (counts, integers, halves) have no sumc and read as before; a union of sums
meeting a sumc is exact in Python from the script's rows, and no window union holds one. Reads
return the low parts as a `sum_lo` (`value_lo`) column for the router's merges.

Expiry follows the catalog, not the clock (tiers/hot_expiry.py has the whole design). Ingest
aggregates every event at or above the hot floor (expire_hot raises it before it moves b_warm),
however old; expire_hot alone trims what it handed to warm, after the grace period. Each bucket's
keys carry one TTL, max(bucket end, last write) + hot_safety_ttl (days), only against jobs that
never come back; a bucket it deleted is detected (the index, which never expires, still lists it)
and read as unavailable (TierUnavailable: 503 or meta.missing), never as empty.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from importlib import resources
from typing import ClassVar, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from rollups.cover import Piece
from rollups.errors import ConfigError
from rollups.partials import empty_partials, partial_schema
from rollups.timeutil import G1D, G1H, G1M, HOUR_MS, MAX_MS, MIN_MS, Granularity, TimeRange, now_ms
from rollups.topk import Ranked, RankResult, rank_of, top_k as top_k_of
from tiers import eventlog, hot_cluster, hot_keys
from tiers.hot_batch import _Batch, _Marks
from tiers.hot_expiry import check_safety_ttl, lost_error
from tiers.base import EVENT_SCHEMA, Group, NotSupported, RankedAccess, Tier
from tiers.hot_ranked import HotRankedAccess
from tiers import hot_sums
from tiers.ranked_access import check_by
from tiers.errors import tier_call, tier_read
from tiers.versions import HotVersions

_GRANULARITIES = (G1M, G1H, G1D)
#: a build budget no union reaches (hot_query.lua's ARGV[3]; 0 there means unions off)
UNBOUNDED = 10 ** 15
_NO_MARK = -1e300  # a mark that is not set (as the Lua scripts and eventlog read it)
_TENANTS_KEY = "tierstore:hot:tenants"


class RedisHotTierSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    redis_url: str
    hot_age_ms: int = Field(gt=0)
    grace_ms: int = Field(ge=0)
    dedup_window_ms: int = Field(gt=0)
    # the far safety net of the bucket keys' TTL (see Expiry); longer than hot age + grace
    safety_ttl_ms: int = Field(7 * 24 * HOUR_MS, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    # Generous: an ingest script runs to the end even when the client stops waiting, and a batch
    # whose reply timed out looks failed to a client that may then send it again.
    reply_timeout_s: float = Field(30.0, gt=0)
    # An hour (day) is folded from its minutes (hours) once closed this long: late events for a
    # folded bucket cost an update of its big zsets too, so give them time to arrive first.
    compact_after_ms: int = Field(HOUR_MS, ge=0)
    # Zset members one compaction step may read (a step folds at least one finer bucket): bounds
    # how long a step blocks Redis (~0.5 us a member).
    compact_budget: int = Field(250_000, gt=0)
    # Top-K and rank by count or sum read runs of minutes (within an hour) and of folded hours
    # (within 8 hours) through materialised unions that later reads reuse (hot_window.lua).
    window_unions: bool = True
    # Source members (sum of the ZCARDs) one read may union into new or extended window unions; a
    # run whose union would cost more is read as its buckets and left to the compact_hot job
    # (tiers/hot_warm.py): at 500k keys and 4M hot events, building "last 24 h"'s union of closed
    # hours on a first ask took 2.7-3.7 s (Redis busy), reading its 24 hour zsets as lists ~0.1 s.
    window_build_budget: int = Field(50_000, ge=0)
    # Redis Cluster (tiers/hot_cluster.py): a RedisCluster client; and how many replicas each
    # ingest call waits for (WAIT) before it is acknowledged, up to wait_timeout_ms.
    cluster: bool = False
    wait_replicas: int = Field(0, ge=0)
    wait_timeout_ms: int = Field(1000, gt=0)
    # hot-key mitigation (tiers/hot_shards.py): each stream's keys hashed over this many shards
    stream_shards: int = Field(1, ge=1)


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int


class RedisHotTier(Tier):
    name: ClassVar[str] = "hot"
    capabilities: ClassVar[frozenset[str]] = frozenset({"top_k", "rank", "data_versions"})

    def __init__(self, settings: RedisHotTierSettings, client=None):
        problem = check_safety_ttl(settings.safety_ttl_ms, settings.hot_age_ms, settings.grace_ms)
        if problem:
            raise ConfigError(problem)
        self.settings = settings
        try:
            self._client = client or hot_cluster.connect(settings.redis_url, cluster=settings.cluster,
                                                         socket_timeout=settings.reply_timeout_s,
                                                         connect_timeout=settings.connect_timeout_s)
        except ValueError as exc:
            raise ConfigError(f"redis_url {settings.redis_url!r} is not a Redis URL: {exc}") from exc
        pairs = _lua("hot_pairs.lua")  # exact sums (tiers/hot_sums.py)
        fold = pairs + _lua("hot_alltime_fold.lua")  # the all-time boards' pending increments
        self._ingest_script = self._client.register_script(fold + _lua("hot_ingest.lua"))
        self._query_script = self._client.register_script(pairs + _lua("hot_window.lua") + _lua("hot_query.lua"))
        self._delete_script = self._client.register_script(fold + _lua("hot_delete.lua"))
        self._compact_script = self._client.register_script(fold + _lua("hot_compact.lua"))
        self._alltime_script = self._client.register_script(fold + _lua("hot_alltime.lua"))
        self._versions = HotVersions(self._client)
        self.health()
        self._floor = float(eventlog.read_mark(self._client, eventlog.HOT_FLOOR_KEY, _NO_MARK))
        self._floors: dict[str, float] = {}  # stream prefix -> its hot floor copy as last seen
        self._call = hot_cluster.ScriptCaller(self._client, settings.wait_replicas, settings.wait_timeout_ms)
        self._marks = _Marks()
        self._compact_due: dict[str, int] = {}  # stream prefix -> when an hour may next be foldable

    @classmethod
    def from_settings(cls, settings) -> "RedisHotTier":
        """From tierstore's Settings (read by attribute: tiers/ does not import tierstore/)."""
        return cls.from_url(settings.redis_url, settings.hot_age, settings.grace_period, settings.dedup_window,
                            safety_ttl_ms=getattr(settings, "hot_safety_ttl", None),
                            cluster=getattr(settings, "redis_mode", "standalone") == "cluster",
                            wait_replicas=getattr(settings, "redis_wait_replicas", 0),
                            wait_timeout_ms=getattr(settings, "redis_wait_timeout", 1000),
                            stream_shards=getattr(settings, "hot_stream_shards", 1),
                            window_build_budget=getattr(settings, "hot_window_build_budget", 50_000))

    @classmethod
    def from_url(cls, redis_url: str, hot_age_ms: int, grace_ms: int, dedup_window_ms: int, *,
                 safety_ttl_ms: int | None = None, **more) -> "RedisHotTier":
        """Raises ConfigError for a bad URL or a safety TTL not longer than hot age + grace.
        `more`: other RedisHotTierSettings fields (cluster, wait_replicas, ...)."""
        extra = {} if safety_ttl_ms is None else {"safety_ttl_ms": safety_ttl_ms}
        extra.update(more)
        if extra.get("stream_shards", 1) > 1 and cls is RedisHotTier:
            from tiers.hot_shards import ShardedRedisHotTier
            cls = ShardedRedisHotTier
        return cls(RedisHotTierSettings(redis_url=redis_url, hot_age_ms=hot_age_ms, grace_ms=grace_ms,
                                        dedup_window_ms=dedup_window_ms, **extra))

    @property
    def granularities(self) -> Sequence[Granularity]:
        return _GRANULARITIES

    # ---- writes ----------------------------------------------------------------------------

    @tier_call
    def ingest(self, tenant: str, events: pa.Table, *, now_ms: int) -> IngestResult:
        """Append a validated batch (EVENT_SCHEMA) to the log and count it, atomically.

        Raises RangeSealed (nothing stored, no id consumed) when any ts is below the seal mark.
        Events whose id was seen within the dedup window (earlier in this batch too) are logged
        as duplicates and counted nowhere; events below the hot floor go to the log and the
        all-time sets only.
        """
        if events.num_rows == 0:
            return IngestResult(0, 0)
        parts = hot_cluster.split_streams(events)
        ts = events.column("ts").to_numpy()
        if len(parts) > 1:  # refuse a sealed batch before any stream's call (a seal raised meanwhile
            seal = eventlog.read_mark(self._client, eventlog.SEAL_KEY, MIN_MS)  # still refuses the rest)
            if ts.min() < seal:
                raise eventlog.sealed_error(ts, seal)
        dups = 0
        for _, part in parts:  # one script call per stream: each is single-slot
            reply = self._run("ingest", tenant, _Batch.of(part, dedup=True), now_ms,
                              eventlog.encode_batch(self._log_table(part)), all_ts=ts)
            dups += int(reply[1])
        return IngestResult(events.num_rows - dups, dups)

    @tier_call
    def score(self, tenant: str, stream: str, key: str, delta: float, ts_ms: int, now_ms: int) -> tuple[float, int]:
        """Ingest one event (value = delta); return the key's all-time sum and 1-based all-time rank."""
        events = pa.table({"stream": [stream], "key": [key], "ts": [ts_ms], "value": [float(delta)], "id": [None]},
                          schema=EVENT_SCHEMA)
        reply = self._run("ingest", tenant, _Batch.of(events, dedup=True), now_ms,
                          eventlog.encode_batch(self._log_table(events)), rank_key=key)
        return float(reply[3]), int(reply[4])

    @tier_call
    def write(self, tenant: str, events: pa.Table) -> int:
        """Aggregates only: no log, no dedup, no seal or floor check."""
        for stream, part in hot_cluster.split_streams(events) if events.num_rows else []:
            _prefix(tenant, stream)
            self._client.sadd(hot_cluster._TENANTS_KEY, tenant)
            self._client.sadd(_streams_key(tenant), stream)
            self._run("write", tenant, _Batch.of(part, dedup=False), now_ms(), b"")
        return events.num_rows

    def _run(self, mode: str, tenant: str, batch: "_Batch", now_ms: int, log: bytes, rank_key: str | None = None,
             all_ts: np.ndarray | None = None):
        """One stream's script call (batch.streams is one stream), retried until it is applied."""
        (stream,) = batch.streams
        prefixes = [_prefix(tenant, stream)]
        prefix = prefixes[0]
        if self._compact_due.get(prefix, MIN_MS) <= now_ms:
            self._compact_step(prefix, now_ms)
        keys = eventlog.EventLog.script_keys(tenant, stream)
        while True:
            floor = self._floors.get(prefix, self._floor) if mode == "ingest" else _NO_MARK
            args = batch.encode(mode, tenant, prefixes, now_ms, floor, self.settings.safety_ttl_ms,
                                self.settings.dedup_window_ms, log, rank_key, self._marks)
            reply = self._call(self._ingest_script, keys, args)
            if reply[0] == b"unregistered":  # the stream's first batch (or its registration was dropped)
                seal = eventlog.read_mark(self._client, eventlog.SEAL_KEY, MIN_MS)
                if batch.ts.min() < seal:  # refused before anything is written
                    raise eventlog.sealed_error(batch.ts if all_ts is None else all_ts, seal)
                hot_cluster.register(self._client, tenant, stream, self._call)
                continue
            if reply[0] == b"sealed":
                raise eventlog.sealed_error(batch.ts if all_ts is None else all_ts, int(float(reply[1])))
            if reply[0] == b"floor":  # expire_hot raised it since we last looked: aggregate again
                self._floors[prefix] = float(reply[1])
                continue
            if reply[0] == b"folded":  # a bucket was folded since we last looked: aggregate again
                moved = reply[1]
                for i in range(0, len(moved), 4):
                    self._marks.learn(prefixes[int(moved[i]) - 1], moved[i + 1].decode(), int(moved[i + 2]),
                                      int(float(moved[i + 3])))
                continue
            if reply[0] == b"dups":  # ids in the dedup sets: those events are duplicates, encode again
                batch.drop(reply[1])
                continue
            if mode == "ingest":
                self._floors[prefix] = float(reply[2])
            return reply

    # ---- compaction ------------------------------------------------------------------------

    @tier_call
    def compact(self, tenant: str | None = None, stream: str | None = None, *, now_ms: int | None = None,
                budget: int | None = None, steps: int | None = None) -> dict[str, int]:
        """Fold the closed minute buckets of each stream (None = every one) into their hours, closed
        hours into their days: `steps` bounded steps per stream, or until nothing is left.
        Returns {"steps", "folded" (buckets whose mark moved), "members" (zset members read)}."""
        now = now_ms if now_ms is not None else _now_ms()
        stats = {"steps": 0, "folded": 0, "members": 0}
        for t in [tenant] if tenant is not None else sorted(_decoded(self._client.smembers(_TENANTS_KEY))):
            for s in [stream] if stream is not None else self._registered_streams(t):
                for _ in range(steps) if steps is not None else itertools.count():
                    more, members, folded = self._compact_step(_prefix(t, s), now, budget)
                    stats["steps"] += 1
                    stats["members"] += members
                    stats["folded"] += folded
                    if not more:
                        break
        return stats

    def _compact_step(self, prefix: str, now: int, budget: int | None = None) -> tuple[bool, int, int]:
        after = self.settings.compact_after_ms
        more, members, moved = self._compact_script(
            keys=[prefix + "all:count"], args=[prefix, now, after, budget or self.settings.compact_budget])
        for i in range(0, len(moved), 3):
            self._marks.learn(prefix, moved[i].decode(), int(moved[i + 1]), int(float(moved[i + 2])))
        # nothing left to fold until the open hour closes (+ after), unless a late event makes an
        # older bucket: that one waits for the next round (reads are exact either way)
        self._compact_due[prefix] = now if more else G1H.floor(now) + G1H.ms + after
        return bool(more), int(members), len(moved) // 3

    # ---- rebuilding the all-time leaderboards ------------------------------------------------

    @tier_call
    def fold_alltime(self, tenant: str, stream: str) -> int:
        """Fold the stream's pending all-time increments (all:pend) into all:count|sum, so the
        zsets alone hold every accepted event (what a direct reader of them needs). Returns the
        number of pending entries folded."""
        prefix = _prefix(tenant, stream)
        return int(self._alltime_script(keys=[prefix + "all:count"], args=["fold", "", prefix]))

    @tier_call
    def begin_alltime_rebuild(self, streams: Iterable[tuple[str, str]], token: str,
                              ttl_ms: int) -> tuple[dict[str, tuple[int, int]], list[tuple[str, str]]]:
        """Mark `streams` and every stream hot knows for rebuild `token` (for ttl_ms): from now on
        ingest also counts their all-time increments aside. One script per stream, atomic with
        that stream's ingest (a stream's events go to its own log only). Returns {log key: its last
        entry id as (ms, seq)} — every batch of a marked stream logged after it is counted aside;
        eventlog.STREAM_KEY's too — and the marked (tenant, stream) pairs."""
        pairs = dict.fromkeys(list(streams))
        for tenant in sorted(_decoded(self._client.smembers(_TENANTS_KEY))):
            pairs.update(dict.fromkeys((tenant, s) for s in self._registered_streams(tenant)))
        lasts: dict[str, tuple[int, int]] = {}
        for tenant, stream in pairs:
            _prefix(tenant, stream)  # validates the tenant
            log = eventlog.stream_log_key(tenant, stream)
            last, _ = self._alltime_script(keys=[log], args=["begin", token, int(ttl_ms), tenant, stream])
            lasts[log] = eventlog.entry_id(last)
        legacy = eventlog.EventLog(self._client)
        lasts[legacy.key] = legacy.last_id() if self._client.exists(legacy.key) else (0, 0)
        return lasts, list(pairs)

    @tier_call
    def replace_alltime(self, tenant: str, stream: str, token: str, totals: pa.Table) -> bool:
        """all-time count and sum of the stream := `totals` (rows of key, count, sum: what the
        tiers hold up to the entry begin_alltime_rebuild returned) + what ingest counted aside
        since. False (nothing changed) when the stream is not marked for `token` any more."""
        prefix = _prefix(tenant, stream)
        keys = totals.column("key").to_pylist()
        counts, sums = totals.column("count").to_numpy(), totals.column("sum").to_numpy()
        same = bool(np.array_equal(counts, sums))
        pipe = self._client.pipeline(transaction=False)
        pipe.delete(prefix + "all:new:count", prefix + "all:new:sum")
        for i in range(0, len(keys), 10_000):
            pipe.zadd(prefix + "all:new:count", dict(zip(keys[i:i + 10_000], counts[i:i + 10_000].tolist())))
            if not same:
                pipe.zadd(prefix + "all:new:sum", dict(zip(keys[i:i + 10_000], sums[i:i + 10_000].tolist())))
        pipe.execute()
        return bool(self._alltime_script(keys=[prefix + "all:count"], args=["swap", token, prefix, int(same)]))

    # ---- reads -----------------------------------------------------------------------------

    @tier_read
    def aggregate(self, tenant: str, stream: str, pieces: Sequence[Piece], group: Group,
                  key: str | None = None) -> pa.Table:
        if group == "key" and key is None:
            return _keys_table(self._query(tenant, stream, pieces, "keys"))
        if group == "key":  # sum_lo: the sums' low parts (tiers/hot_sums.py), when any is not 0
            row = self._query(tenant, stream, pieces, "key", key)
            t = _partials("key", pa.array([key] if row else [], pa.string()), [[x] for x in row[:4]] or [[]] * 4)
            return hot_sums.with_lows(t, "sum_lo", _floats(row[4:]))
        if group == "bucket":
            starts, *columns = self._query(tenant, stream, pieces, "buckets" if key is None else "bucket_key",
                                           *([] if key is None else [key]))
            t = _partials("bucket", pa.array([int(s) for s in starts], pa.int64()), columns[:4])
            return hot_sums.with_lows(t, "sum_lo", _floats(columns[4]))
        raise ValueError(f"group must be 'key' or 'bucket', not {group!r}")

    @tier_read
    def aggregate_each(self, tenant: str, stream: str, pieces: Sequence[Piece],
                       key: str | None = None) -> list[pa.Table]:
        """Tier.aggregate_each: every piece's hot_query.lua call in one pipeline (one round trip;
        trending's 300 four-minute slices of a day: 0.35 s one call at a time, 0.14 s so, most of
        it parsing the replies). One key, or a Redis Cluster client: one call per piece."""
        if key is not None or len(pieces) < 2 or hot_cluster.is_cluster(self._client):
            return [self.aggregate(tenant, stream, [p], "key", key) for p in pieces]
        prefix = _prefix(tenant, stream)
        pipe = self._client.pipeline(transaction=False)
        for p in pieces:
            self._query_script(keys=[prefix + "all:count"], args=self._query_args(prefix, [p], "keys"), client=pipe)
        replies = pipe.execute()
        for reply in replies:
            if reply and reply[0] == b"lost":
                raise lost_error(tenant, stream, reply[1])
        return [_keys_table(reply) for reply in replies]

    @tier_read
    def top_k(self, tenant: str, stream: str, pieces: Sequence[Piece], k: int, by: str, *,
              stats: dict | None = None) -> list[Ranked]:
        """Exact top-k keys over the pieces, value desc then key asc (= rollups.topk.top_k).

        count and non-negative sums use the threshold algorithm over the bucket zsets (runs of
        buckets read through their materialised unions: Sliding windows); otherwise one
        ZUNIONSTORE of the buckets (none for a single bucket)."""
        if by == "avg":
            return top_k_of(self.aggregate(tenant, stream, pieces, "key"), k, by)
        reply = self._query(tenant, stream, pieces, "topk", _union_agg(by), k)
        if reply[0] == b"exact":  # a union of sums as pairs, in Python (tiers/hot_sums.py)
            return top_k_of(hot_sums.exact_partials(reply[1]), k, by)
        members, scores, ordered = reply
        ranked = zip(members, map(float, scores))
        if not ordered:  # threshold candidates: value desc, then key asc by bytes (as Redis orders)
            ranked = sorted(ranked, key=lambda ms: (-ms[1], ms[0]))[:k]
        return [Ranked(i + 1, m.decode(), s) for i, (m, s) in enumerate(ranked)]

    @tier_read
    def rank(self, tenant: str, stream: str, pieces: Sequence[Piece], key: str, by: str,
             around: int = 0) -> RankResult:
        """Rank of `key` over the pieces with `around` neighbours each side (= rollups.topk.rank_of)."""
        if by == "avg":
            return rank_of(self.aggregate(tenant, stream, pieces, "key"), key, by, around)
        reply = self._query(tenant, stream, pieces, "rank", _union_agg(by), key, max(0, around))
        if reply[0] == b"exact":  # a union of sums as pairs, in Python (tiers/hot_sums.py)
            return rank_of(hot_sums.exact_partials(reply[1]), key, by, around)
        total, score, at, members, scores = reply
        if score is None:
            return RankResult(None, None, total, [])
        first = max(0, at - 1 - around) + 1
        return RankResult(at, float(score), total, [Ranked(first + i, m.decode(), float(s))
                                                    for i, (m, s) in enumerate(zip(members, scores))])

    @tier_read
    def ranked_access(self, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> RankedAccess:
        """Sorted and random access (Tier.ranked_access) to the zsets of the pieces' buckets and
        window unions, read in place (tiers/hot_ranked.py): no union of the whole range."""
        check_by(by)
        names, lows, heads, comps, bounds = self._query(tenant, stream, pieces, "lists", by, HotRankedAccess.HEAD)
        return HotRankedAccess(self._client, [n.decode() for n in names], min((float(x) for x in lows), default=0.0),
                               heads=heads, comps=[c.decode() for c in comps], bounds=[float(b) for b in bounds])

    @tier_read
    def key_values(self, tenant: str, stream: str, pieces: Sequence[Piece], by: str) -> pa.Table:
        """Tier.key_values: the union of the count (sum) zsets only, as Arrow (tiers/hot_keys.py)."""
        return hot_keys.key_values(self, tenant, stream, pieces, by)

    @tier_read
    def distinct_keys(self, tenant: str, stream: str, pieces: Sequence[Piece]) -> pa.Array:
        """Tier.distinct_keys: the members of the union of the count zsets (tiers/hot_keys.py)."""
        return hot_keys.distinct_keys(self, tenant, stream, pieces)

    @tier_read
    def data_versions(self, tenant: str, stream: str, pieces: Sequence[Piece]) -> list:
        """One version per piece for the router's results cache (tiers/versions.py): it changes
        with every event aggregated into, and every bucket deleted from, the piece's hours."""
        return self._versions.versions(_prefix(tenant, stream), pieces)

    def read_raw(self, tenant: str, stream: str, rng: TimeRange) -> Iterator[pa.RecordBatch]:
        raise NotSupported(self.name, "read_raw (it keeps no raw events: the log is read by the flush job)")

    def _query(self, tenant: str, stream: str, pieces: Sequence[Piece], mode: str, *extra, build: int | None = None):
        """hot_query.lua over the pieces; `build`: the window unions' build budget (source
        members; default the setting window_build_budget; the compact_hot job passes UNBOUNDED)."""
        prefix = _prefix(tenant, stream)
        args = self._query_args(prefix, pieces, mode, build)
        reply = self._query_script(keys=[prefix + "all:count"], args=args + list(extra))
        if reply and reply[0] == b"lost":
            raise lost_error(tenant, stream, reply[1])
        return reply

    def _query_args(self, prefix: str, pieces: Sequence[Piece], mode: str, build: int | None = None) -> list:
        budget = self.settings.window_build_budget if build is None else build
        window = max(1, int(budget)) if self.settings.window_unions else 0
        args: list = [mode, prefix, window, len(pieces)]
        for p in pieces:
            _check_piece(p)
            args += [p.granularity.name, p.range.start, p.range.end]
        return args

    # ---- maintenance -----------------------------------------------------------------------

    @tier_call
    def delete_range(self, tenant: str | None, stream: str | None, rng: TimeRange) -> int:
        """Delete the buckets lying wholly inside rng. The all-time sets count as lying in every
        instant: only a range covering all time ([MIN_MS, MAX_MS] or wider) deletes them."""
        drop_all = int(rng.start <= MIN_MS and rng.end >= MAX_MS)
        grans = []
        for g in _GRANULARITIES:
            grans += [g.name, g.ceil(rng.start), rng.end - g.ms]
        deleted = 0
        for t in [tenant] if tenant is not None else sorted(_decoded(self._client.smembers(_TENANTS_KEY))):
            for s in [stream] if stream is not None else self._registered_streams(t):
                prefix = _prefix(t, s)
                log = eventlog.stream_log_key(t, s)
                gone, empty = self._delete_script(keys=[prefix + "all:count", eventlog.mark_copy(eventlog.SEAL_KEY, log),
                                                        eventlog.mark_copy(eventlog.HOT_FLOOR_KEY, log)],
                                                  args=[prefix, t, s, drop_all, *grans])
                deleted += int(gone)
                if empty:
                    hot_cluster.unregister_if_empty(self._client, t, s)
        return deleted

    @tier_read
    def streams(self, tenant: str) -> list[str]:
        return self._registered_streams(tenant)

    def _registered_streams(self, tenant: str) -> list[str]:
        """The hot streams of the registry (shards of a sharded stream each: tiers/hot_shards.py)."""
        return sorted(_decoded(self._client.smembers(_streams_key(tenant))))

    def _log_table(self, events: pa.Table) -> pa.Table:
        """The events as logged for warm (hot_shards.py names the stream, not its shard)."""
        return events

    @tier_read
    def health(self) -> None:
        self._client.ping()

    def close(self) -> None:
        self._client.close()


# ---- helpers --------------------------------------------------------------------------------

_now_ms = now_ms


def _lua(name: str) -> str:
    return resources.files("tiers").joinpath(name).read_text()


def fold_alltime(client, tenant: str, stream: str) -> int:
    """RedisHotTier.fold_alltime through a bare Redis client (readers of the zsets themselves)."""
    prefix = _prefix(tenant, stream)
    script = client.register_script(_lua("hot_pairs.lua") + _lua("hot_alltime_fold.lua") + "return fold_alltime(ARGV[1])")
    return int(script(keys=[prefix + "all:count"], args=[prefix]))


def _keys_table(reply: list) -> pa.Table:
    """The partial table (group "key") of a hot_query.lua "keys" reply: members, then count, sum,
    min, max chunks, then (sums as pairs: tiers/hot_sums.py) the exact union's sources."""
    members, *columns = reply
    exact = columns.pop(4) if len(columns) > 4 else None
    columns = [[x for chunk in col for x in chunk] for col in columns]
    t = _partials("key", _strings(members), columns)
    return hot_sums.with_exact_sums(t, exact) if exact is not None else t


def _prefix(tenant: str, stream: str) -> str:
    if "{" in tenant or "}" in tenant:
        raise ValueError(f"tenant {tenant!r} must not contain braces (they delimit the Redis hash tag)")
    return f"tierstore:hot:{{{tenant}:{stream}}}:"


def _streams_key(tenant: str) -> str:
    return f"tierstore:hot:streams:{{{tenant}}}"


def _check_piece(p: Piece) -> None:
    g = p.granularity
    if g not in _GRANULARITIES:
        raise ValueError(f"the hot tier has no {g.name} buckets (it reads {', '.join(x.name for x in _GRANULARITIES)})")
    if g.floor(p.range.start) != p.range.start or g.floor(p.range.end) != p.range.end:
        raise ValueError(f"piece {p.range} is not aligned to {g.name}")


def _union_agg(by: str) -> str:
    if by not in ("count", "sum", "min", "max"):
        raise ValueError(f"by must be count, sum, min, max or avg, not {by!r}")
    return by


def _strings(members: list[bytes]) -> pa.Array:
    return pa.array(members, pa.binary()).cast(pa.string())


def _floats(values: list) -> np.ndarray:
    return np.array(values, dtype=np.bytes_).astype(np.float64) if values else np.zeros(0)


def _partials(group: str, groups: pa.Array, columns: list[list]) -> pa.Table:
    if not len(groups):
        return empty_partials(group)
    c, sm, mn, mx = (_floats(col) for col in columns)
    return pa.Table.from_arrays([groups, pa.array(c.astype(np.int64)), pa.array(sm), pa.array(mn), pa.array(mx)],
                                schema=partial_schema(group))


def _decoded(members) -> list[str]:
    return [m.decode() for m in members]
