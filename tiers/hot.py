"""The hot tier (Redis): minute/hour/day sorted sets, the all-time leaderboard, and the ingest path.

Keys (T = tenant, S = stream; every key of a stream carries the hash tag {T:S}, so ZUNIONSTORE
across its buckets works on Redis Cluster):
    tierstore:hot:{T:S}:<g>:<start>:<agg>  zset, member = event key, score = the bucket's count |
                                           sum | min | max for that key; g = 1m | 1h | 1d, start =
                                           bucket start (epoch ms). Expires at bucket end + hot age
                                           + grace.
    tierstore:hot:{T:S}:<g>:buckets        zset, member = score = bucket start: the index of the
                                           buckets (ranges by ZRANGEBYSCORE).
    tierstore:hot:{T:S}:<g>:total:<agg>    zset, member = bucket start, score = the stream-wide
                                           aggregate of the bucket (a series needs no union).
                                           Index and totals are trimmed of dead buckets at ingest
                                           and expire with their last bucket.
    tierstore:hot:{T:S}:all:count|sum      zsets, the all-time leaderboard (never expire).
    tierstore:hot:{T:S}:id:<event id>      dedup marker, PX = dedup window.
    tierstore:hot:{T:S}:tmp:<agg>          query scratch, created and deleted inside one script.
    tierstore:hot:streams:{T}              set of T's streams; tierstore:hot:tenants: set of tenants.
Ingest (hot_ingest.lua) also touches the log and the marks of tiers.eventlog, so it runs on a
single Redis node; the per-stream reads and deletes (hot_query.lua, hot_delete.lua) are single-slot.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import ClassVar, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis
from pydantic import BaseModel, ConfigDict, Field

from rollups.cover import Piece
from rollups.errors import ConfigError, RangeSealed, TierUnavailable
from rollups.partials import empty_partials, partial_schema
from rollups.timeutil import G1D, G1H, G1M, MAX_MS, MIN_MS, Granularity, TimeRange, format_time, now_ms
from rollups.topk import Ranked, RankResult, rank_of, top_k as top_k_of
from tiers import eventlog
from tiers.base import EVENT_SCHEMA, Group, Tier

_GRANULARITIES = (G1M, G1H, G1D)
_NO_MARK = -1e300  # a mark that is not set (as the Lua scripts and eventlog read it)
_TENANTS_KEY = "tierstore:hot:tenants"
_MAX_DETAILS = 100  # as the router lists them


class RedisHotTierSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    redis_url: str
    hot_age_ms: int = Field(gt=0)
    grace_ms: int = Field(ge=0)
    dedup_window_ms: int = Field(gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    # Generous: an ingest script runs to the end even when the client stops waiting, and a batch
    # whose reply timed out looks failed to a client that may then send it again.
    reply_timeout_s: float = Field(30.0, gt=0)


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int


def _translate_errors(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise TierUnavailable("hot") from exc
    return wrapper


class RedisHotTier(Tier):
    name: ClassVar[str] = "hot"

    def __init__(self, settings: RedisHotTierSettings):
        self.settings = settings
        self._ttl_extra = settings.hot_age_ms + settings.grace_ms
        try:
            self._client = redis.Redis.from_url(settings.redis_url, socket_timeout=settings.reply_timeout_s,
                                                socket_connect_timeout=settings.connect_timeout_s)
        except ValueError as exc:
            raise ConfigError(f"redis_url {settings.redis_url!r} is not a Redis URL: {exc}") from exc
        self._ingest_script = self._client.register_script(_lua("hot_ingest.lua"))
        self._query_script = self._client.register_script(_lua("hot_query.lua"))
        self._delete_script = self._client.register_script(_lua("hot_delete.lua"))
        self.health()
        self._floor = float(eventlog.read_mark(self._client, eventlog.HOT_FLOOR_KEY, _NO_MARK))

    @classmethod
    def from_settings(cls, settings) -> "RedisHotTier":
        """From tierstore's Settings (read by attribute: tiers/ does not import tierstore/)."""
        return cls.from_url(settings.redis_url, settings.hot_age, settings.grace_period, settings.dedup_window)

    @classmethod
    def from_url(cls, redis_url: str, hot_age_ms: int, grace_ms: int, dedup_window_ms: int) -> "RedisHotTier":
        return cls(RedisHotTierSettings(redis_url=redis_url, hot_age_ms=hot_age_ms, grace_ms=grace_ms,
                                        dedup_window_ms=dedup_window_ms))

    @property
    def granularities(self) -> Sequence[Granularity]:
        return _GRANULARITIES

    # ---- writes ----------------------------------------------------------------------------

    @_translate_errors
    def ingest(self, tenant: str, events: pa.Table, *, now_ms: int) -> IngestResult:
        """Append a validated batch (EVENT_SCHEMA) to the log and count it, atomically.

        Raises RangeSealed (nothing stored, no id consumed) when any ts is below the seal mark.
        Events whose id was seen within the dedup window (earlier in this batch too) are logged
        as duplicates and counted nowhere; events below the hot floor go to the log and the
        all-time sets only.
        """
        if events.num_rows == 0:
            return IngestResult(0, 0)
        reply = self._run("ingest", tenant, _Batch.of(events, dedup=True), now_ms, eventlog.encode_batch(events))
        return IngestResult(events.num_rows - reply[1], reply[1])

    @_translate_errors
    def score(self, tenant: str, stream: str, key: str, delta: float, ts_ms: int, now_ms: int) -> tuple[float, int]:
        """Ingest one event (value = delta); return the key's all-time sum and 1-based all-time rank."""
        events = pa.table({"stream": [stream], "key": [key], "ts": [ts_ms], "value": [float(delta)], "id": [None]},
                          schema=EVENT_SCHEMA)
        reply = self._run("ingest", tenant, _Batch.of(events, dedup=True), now_ms, eventlog.encode_batch(events),
                          rank_key=key)
        return float(reply[3]), int(reply[4])

    @_translate_errors
    def write(self, tenant: str, events: pa.Table) -> int:
        """Aggregates only: no log, no dedup, no seal or floor check (buckets already dead are skipped)."""
        if events.num_rows:
            self._run("write", tenant, _Batch.of(events, dedup=False), now_ms(), b"")
        return events.num_rows

    def _run(self, mode: str, tenant: str, batch: "_Batch", now_ms: int, log: bytes, rank_key: str | None = None):
        while True:
            floor = self._floor if mode == "ingest" else _NO_MARK
            args = batch.encode(mode, tenant, now_ms, floor, self._ttl_extra, self.settings.dedup_window_ms,
                                log, rank_key)
            reply = self._ingest_script(keys=[eventlog.STREAM_KEY, eventlog.SEAL_KEY, eventlog.HOT_FLOOR_KEY],
                                        args=args)
            if reply[0] == b"sealed":
                raise _sealed(batch.ts, int(float(reply[1])))
            if reply[0] == b"floor":  # expire_hot raised it since we last looked: aggregate again
                self._floor = float(reply[1])
                continue
            if mode == "ingest":
                self._floor = float(reply[2])
            return reply

    # ---- reads -----------------------------------------------------------------------------

    @_translate_errors
    def aggregate(self, tenant: str, stream: str, pieces: Sequence[Piece], group: Group,
                  key: str | None = None) -> pa.Table:
        if group == "key" and key is None:
            members, *columns = self._query(tenant, stream, pieces, "keys")
            columns = [[x for chunk in col for x in chunk] for col in columns]
            return _partials("key", _strings(members), columns)
        if group == "key":
            row = self._query(tenant, stream, pieces, "key", key)
            return _partials("key", pa.array([key] if row else [], pa.string()), [[x] for x in row] or [[]] * 4)
        if group == "bucket":
            starts, *columns = self._query(tenant, stream, pieces, "buckets" if key is None else "bucket_key",
                                           *([] if key is None else [key]))
            return _partials("bucket", pa.array([int(s) for s in starts], pa.int64()), columns)
        raise ValueError(f"group must be 'key' or 'bucket', not {group!r}")

    @_translate_errors
    def top_k(self, tenant: str, stream: str, pieces: Sequence[Piece], k: int, by: str) -> list[Ranked]:
        """Exact top-k keys over the pieces, value desc then key asc (= rollups.topk.top_k).

        count and non-negative sums use the threshold algorithm over the bucket zsets; otherwise
        one ZUNIONSTORE of the buckets (none for a single bucket)."""
        if by == "avg":
            return top_k_of(self.aggregate(tenant, stream, pieces, "key"), k, by)
        members, scores, ordered = self._query(tenant, stream, pieces, "topk", _union_agg(by), k)
        ranked = zip(members, map(float, scores))
        if not ordered:  # threshold candidates: value desc, then key asc by bytes (as Redis orders)
            ranked = sorted(ranked, key=lambda ms: (-ms[1], ms[0]))[:k]
        return [Ranked(i + 1, m.decode(), s) for i, (m, s) in enumerate(ranked)]

    @_translate_errors
    def rank(self, tenant: str, stream: str, pieces: Sequence[Piece], key: str, by: str,
             around: int = 0) -> RankResult:
        """Rank of `key` over the pieces with `around` neighbours each side (= rollups.topk.rank_of)."""
        if by == "avg":
            return rank_of(self.aggregate(tenant, stream, pieces, "key"), key, by, around)
        total, score, at, members, scores = self._query(tenant, stream, pieces, "rank", _union_agg(by), key,
                                                        max(0, around))
        if score is None:
            return RankResult(None, None, total, [])
        first = max(0, at - 1 - around) + 1
        return RankResult(at, float(score), total, [Ranked(first + i, m.decode(), float(s))
                                                    for i, (m, s) in enumerate(zip(members, scores))])

    def read_raw(self, tenant: str, stream: str, rng: TimeRange) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError("the hot tier keeps no raw events (the log is read by the flush job)")

    def _query(self, tenant: str, stream: str, pieces: Sequence[Piece], mode: str, *extra):
        prefix = _prefix(tenant, stream)
        args: list = [mode, prefix, len(pieces)]
        for p in pieces:
            _check_piece(p)
            args += [p.granularity.name, p.range.start, p.range.end]
        return self._query_script(keys=[prefix + "all:count"], args=args + list(extra))

    # ---- maintenance -----------------------------------------------------------------------

    @_translate_errors
    def delete_range(self, tenant: str | None, stream: str | None, rng: TimeRange) -> int:
        """Delete the buckets lying wholly inside rng. The all-time sets count as lying in every
        instant: only a range covering all time ([MIN_MS, MAX_MS] or wider) deletes them."""
        drop_all = int(rng.start <= MIN_MS and rng.end >= MAX_MS)
        grans = []
        for g in _GRANULARITIES:
            grans += [g.name, g.ceil(rng.start), rng.end - g.ms]
        deleted = 0
        for t in [tenant] if tenant is not None else sorted(_decoded(self._client.smembers(_TENANTS_KEY))):
            for s in [stream] if stream is not None else self.streams(t):
                prefix = _prefix(t, s)
                deleted += self._delete_script(keys=[prefix + "all:count"], args=[prefix, t, s, drop_all, *grans])
        return deleted

    @_translate_errors
    def streams(self, tenant: str) -> list[str]:
        return sorted(_decoded(self._client.smembers(_streams_key(tenant))))

    @_translate_errors
    def health(self) -> None:
        self._client.ping()

    def close(self) -> None:
        self._client.close()


# ---- the batch, pre-aggregated --------------------------------------------------------------

@dataclass
class _Groups:
    """Partial aggregates of events grouped by (stream, bucket, key), sorted in that order."""

    s: np.ndarray   # stream index
    b: np.ndarray   # bucket start (epoch ms; 0 for all-time)
    k: np.ndarray   # key index
    c: np.ndarray   # count
    sm: np.ndarray  # sum
    mn: np.ndarray
    mx: np.ndarray

    @classmethod
    def of_events(cls, s, k, ts, v) -> "_Groups":
        return cls(s, ts, k, np.ones(len(s), np.int64), v, v, v)

    def regroup(self, width: int | None) -> "_Groups":
        """Coarser groups: buckets of `width` ms (None = one all-time bucket)."""
        b = self.b - self.b % width if width else np.zeros_like(self.b)
        order = np.lexsort((self.k, b, self.s))
        s, b, k = self.s[order], b[order], self.k[order]
        starts = _run_starts(s, b, k)
        if not len(starts):
            return self
        return _Groups(s[starts], b[starts], k[starts], np.add.reduceat(self.c[order], starts),
                       np.add.reduceat(self.sm[order], starts), np.minimum.reduceat(self.mn[order], starts),
                       np.maximum.reduceat(self.mx[order], starts))

    def select(self, mask: np.ndarray) -> "_Groups":
        return _Groups(*(getattr(self, f)[mask] for f in ("s", "b", "k", "c", "sm", "mn", "mx")))


def _run_starts(*columns: np.ndarray) -> np.ndarray:
    """Indexes where the (sorted) tuple of columns changes, 0 included."""
    n = len(columns[0])
    if n == 0:
        return np.zeros(0, np.int64)
    new = np.zeros(n, bool)
    new[0] = True
    for col in columns:
        new[1:] |= col[1:] != col[:-1]
    return np.flatnonzero(new)


@dataclass
class _Batch:
    """A batch's columns as numpy arrays, streams and keys dictionary-encoded."""

    streams: list[str]
    keys: np.ndarray   # distinct keys (object array of str)
    s: np.ndarray
    k: np.ndarray
    ts: np.ndarray
    v: np.ndarray
    id_rows: np.ndarray | None  # the events carrying an id (deduplicated in Lua), and their ids
    ids: list[str]

    @classmethod
    def of(cls, events: pa.Table, *, dedup: bool) -> "_Batch":
        s = pc.dictionary_encode(events.column("stream").combine_chunks())
        k = pc.dictionary_encode(events.column("key").combine_chunks())
        id_col = events.column("id")
        id_rows, ids = None, []
        if dedup and id_col.null_count < events.num_rows:
            id_rows = np.flatnonzero(pc.is_valid(id_col).to_numpy(zero_copy_only=False))
            ids = id_col.take(pa.array(id_rows)).to_pylist()
        return cls(s.dictionary.to_pylist(), k.dictionary.to_numpy(zero_copy_only=False),
                   s.indices.to_numpy().astype(np.int64), k.indices.to_numpy().astype(np.int64),
                   events.column("ts").to_numpy(), events.column("value").to_numpy(), id_rows, ids)

    def encode(self, mode: str, tenant: str, now_ms: int, floor: float, ttl_extra: int, dedup_px: int,
               log: bytes, rank_key: str | None) -> list:
        """ARGV of hot_ingest.lua:
            mode, tenant, now, expected floor, min ts of the id-less events (+inf: none), min ts of
            the batch, dedup px, hot age + grace, log entry data, rank stream index (0: none), rank
            key, stream count, (name, key prefix) per stream,
            id event count, (stream index, key, ts, value, id, row) per event with an id,
            bucket count, per bucket: stream index, granularity, width ms, start, n singles,
                n others, total count, sum, min, max, keys (singles first), single values,
                other counts, sums, mins, maxs,
            all-time section count, per stream: stream index, n, keys, counts, sums.
        Stream indexes are 1-based."""
        plain = np.ones(len(self.s), bool)
        if self.id_rows is not None:
            plain[self.id_rows] = False
        ts = self.ts[plain]
        prefixes = [_prefix(tenant, name) for name in self.streams]
        args: list = [mode, tenant, now_ms, floor, int(ts.min()) if len(ts) else 1e300, int(self.ts.min()),
                      dedup_px, ttl_extra, log, 1 if rank_key is not None else 0, rank_key or "",
                      len(self.streams)]
        for name, prefix in zip(self.streams, prefixes):
            args += [name, prefix]
        self._encode_ids(args)
        events = _Groups.of_events(self.s[plain], self.k[plain], ts, self.v[plain])
        minutes = events.select(ts >= floor).regroup(G1M.ms)
        sections: list = []
        n_buckets = 0
        coarser = minutes
        for g in _GRANULARITIES:
            coarser = coarser if g is G1M else coarser.regroup(g.ms)
            n_buckets += self._encode_buckets(sections, coarser, g, now_ms, ttl_extra)
        args.append(n_buckets)
        args += sections
        alltime = (coarser if len(ts) and ts.min() >= floor else events).regroup(None)
        self._encode_alltime(args, alltime)
        return args

    def _encode_ids(self, args: list) -> None:
        if self.id_rows is None:
            args.append(0)
            return
        rows = self.id_rows
        args.append(len(rows))
        keys = self.keys[self.k[rows]].tolist()
        for row, s, key, ts, v, id_ in zip(rows.tolist(), (self.s[rows] + 1).tolist(), keys, self.ts[rows].tolist(),
                                           self.v[rows].tolist(), self.ids):
            args += [s, key, ts, v, id_, row]

    def _encode_buckets(self, out: list, groups: _Groups, g: Granularity, now_ms: int, ttl_extra: int) -> int:
        groups = groups.select(groups.b + g.ms + ttl_extra > now_ms)  # dead buckets are not written
        multi = groups.c != 1
        order = np.lexsort((groups.k, multi, groups.b, groups.s))
        groups, multi = groups.select(order), multi[order]
        starts = _run_starts(groups.s, groups.b)
        if not len(starts):
            return 0
        ends = np.append(starts[1:], len(groups.s))
        mids = starts + np.add.reduceat((~multi).astype(np.int64), starts)
        totals = zip((groups.s[starts] + 1).tolist(), groups.b[starts].tolist(), starts.tolist(), mids.tolist(),
                     ends.tolist(), np.add.reduceat(groups.c, starts).tolist(),
                     np.add.reduceat(groups.sm, starts).tolist(), np.minimum.reduceat(groups.mn, starts).tolist(),
                     np.maximum.reduceat(groups.mx, starts).tolist())
        keys = self.keys[groups.k].tolist()
        c, sm, mn, mx = groups.c.tolist(), groups.sm.tolist(), groups.mn.tolist(), groups.mx.tolist()
        for s, b, lo, mid, hi, tc, tsum, tmin, tmax in totals:
            out += [s, g.name, g.ms, b, mid - lo, hi - mid, tc, tsum, tmin, tmax]
            out += keys[lo:hi]
            out += sm[lo:mid]
            out += c[mid:hi]
            out += sm[mid:hi]
            out += mn[mid:hi]
            out += mx[mid:hi]
        return len(starts)

    def _encode_alltime(self, args: list, groups: _Groups) -> None:
        starts = _run_starts(groups.s)
        args.append(len(starts))
        ends = np.append(starts[1:], len(groups.s)).tolist()
        keys = self.keys[groups.k].tolist()
        c, sm = groups.c.tolist(), groups.sm.tolist()
        for lo, hi in zip(starts.tolist(), ends):
            args += [int(groups.s[lo]) + 1, hi - lo]
            args += keys[lo:hi]
            args += c[lo:hi]
            args += sm[lo:hi]


# ---- helpers --------------------------------------------------------------------------------

def _lua(name: str) -> str:
    return resources.files("tiers").joinpath(name).read_text()


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


def _sealed(ts: np.ndarray, seal: int) -> RangeSealed:
    rows = np.flatnonzero(ts < seal)
    problem = f"before the sealed boundary {format_time(seal)}"
    listed = f" (the first {_MAX_DETAILS} are listed)" if len(rows) > _MAX_DETAILS else ""
    return RangeSealed(f"{len(rows)} event(s) are before the sealed boundary {format_time(seal)}{listed}; history "
                       "is changed only by `tierstore import`; nothing was stored.",
                       [{"index": i, "field": "ts", "problem": problem} for i in rows[:_MAX_DETAILS].tolist()])

