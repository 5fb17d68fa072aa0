"""The durable event log: one Redis Stream entry per accepted ingest batch of one stream.
`EventLog` owns one log (append, read, trim, its flush checkpoint); `EventLogs` is every log.

Logs (Redis Cluster ready: T = tenant, S = stream, {T:S} the hash tag of every key of the stream,
tiers/hot.py): ingest appends a batch of stream S to `tierstore:log:{T:S}` inside the stream's
own Lua script (single slot); a batch spanning streams is split, one script call per stream.
    LOGS_KEY      set of the per-stream log keys. A log is added BEFORE its first append (hot.py
                  `_register`), so a crash can never leave entries in a log the flush does not list.
    STREAM_KEY    the former single log, still read by the flush (entries of older versions; the
                  dead-letter replay appends there: tiers/deadletters.py).
The flush job (scheduler/steps.py) reads each log with a consumer group, copies the events into
warm's raw table and acknowledges only after commit; its checkpoint is per log (flush_checkpoint
row `log` = the log key). Entry fields:
    tenant  the batch's tenant
    data    the batch as an Arrow IPC stream of tiers.base.EVENT_SCHEMA
    dups    JSON list of row indexes in `data` that were duplicates (ids seen within the dedup
            window): they are not counted anywhere and flush skips them
Marks ingest must check atomically with the append (epoch ms; they only rise):
    SEAL_KEY       events with ts below it are refused (range_sealed). export_cold raises it
                   BEFORE draining the logs, so nothing older than the new cold boundary can enter
                   a log after the drain.
    HOT_FLOOR_KEY  events below it skip the hot aggregates (still logged for warm). expire_hot
                   raises it before it advances b_warm.
The global keys are what routers and jobs read; the ingest script of stream S checks S's copies
`tierstore:seal:{T:S}` / `tierstore:hot_floor:{T:S}` (its own slot). Ordering: `raise_mark`
raises the global key FIRST, then the copy of every log in LOGS_KEY; registration adds the log to
LOGS_KEY FIRST, then reads the global marks and raises the copies to them. If the registration's
SADD precedes the raiser's SMEMBERS, the raiser raises the copy; otherwise the SADD follows the
raiser's global raise, so the registration reads the new value. Either way, once the raiser
returns (before export_cold drains, before expire_hot advances b_warm) every registered copy is at
least the new mark, and no script of an unregistered stream appends (it finds no seal copy and
answers 'unregistered'). The copies never exceed the global marks.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
from redis.exceptions import ResponseError
from redis.cluster import RedisCluster

from rollups.errors import RangeSealed
from rollups.timeutil import format_time, now_ms
from tiers.base import EVENT_SCHEMA

STREAM_KEY = "tierstore:log"
FLUSH_GROUP = "flush"
SEAL_KEY = "tierstore:seal"
HOT_FLOOR_KEY = "tierstore:hot_floor"
FLUSH_CONSUMER = "flusher"
LOGS_KEY = "tierstore:logs"
LOG_PREFIX = _LOG_PREFIX = "tierstore:log:"
MAX_DETAILS = 100  # refused events listed in an error's details (as the router lists them)

EntryId = tuple[int, int]  # a stream entry id: (epoch ms, sequence)

# Raise a millisecond mark monotonically: SET only if larger. Returns the value now stored.
_RAISE_LUA = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1e300')
local new = tonumber(ARGV[1])
if new > cur then redis.call('SET', KEYS[1], ARGV[1]) return ARGV[1] end
return redis.call('GET', KEYS[1])
"""


def encode_batch(events: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, EVENT_SCHEMA) as w:
        w.write_table(events.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA))
    return sink.getvalue().to_pybytes()


def decode_batch(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def decode_entry(fields: dict) -> tuple[str, pa.Table]:
    """(tenant, accepted events) of a stream entry: the duplicates are already removed."""
    get = lambda k: fields.get(k) if k in fields else fields.get(k.encode())  # noqa: E731
    tenant = get("tenant")
    tenant = tenant.decode() if isinstance(tenant, bytes) else tenant
    table = decode_batch(get("data"))
    dups = json.loads(get("dups") or b"[]")
    if dups:
        drop = set(dups)
        keep = [i for i in range(table.num_rows) if i not in drop]
        table = table.take(pa.array(keep, pa.int64()))
    return tenant, table


def raise_mark(redis_client, key: str, ms: int) -> int:
    """Raise SEAL_KEY or HOT_FLOOR_KEY to at least `ms` (never lowers it), then the per-stream copy
    of every registered log (module docstring: the ordering); returns the global value stored."""
    stored = int(float(redis_client.eval(_RAISE_LUA, 1, key, str(int(ms)))))
    if key in (SEAL_KEY, HOT_FLOOR_KEY):
        logs = registered_logs(redis_client)
        if isinstance(redis_client, RedisCluster):  # a cluster pipeline has no EVAL: one call per copy
            for log in logs:
                redis_client.eval(_RAISE_LUA, 1, mark_copy(key, log), str(int(ms)))
            return stored
        for i in range(0, len(logs), 500):
            pipe = redis_client.pipeline(transaction=False)
            for log in logs[i:i + 500]:
                pipe.eval(_RAISE_LUA, 1, mark_copy(key, log), str(int(ms)))
            pipe.execute()
    return stored


def stream_log_key(tenant: str, stream: str) -> str:
    """The log of one stream; its hash tag {T:S} is the one of the stream's hot keys."""
    return f"{_LOG_PREFIX}{{{tenant}:{stream}}}"


def mark_copy(mark: str, log: str) -> str:
    """The per-stream copy of SEAL_KEY or HOT_FLOOR_KEY the ingest script of `log` checks."""
    return f"{mark}:{log[len(_LOG_PREFIX):]}"


def registered_logs(redis_client) -> list[str]:
    """The per-stream log keys (LOGS_KEY), sorted."""
    return sorted(m.decode() if isinstance(m, bytes) else m for m in redis_client.smembers(LOGS_KEY))


def register_log(redis_client, log: str, sadd=None) -> tuple[str, str]:
    """Add `log` to LOGS_KEY (with `sadd(key, member)` when given: tiers/hot_cluster.py waits for
    replicas), then raise its mark copies to the global marks (the ordering of the module
    docstring); the seal copy then exists (-1e300 when no seal): the log is registered.
    Returns the global (seal, floor) read after the SADD, as stored ('-1e300': none)."""
    (sadd or redis_client.sadd)(LOGS_KEY, log)
    seal, floor = (_text(redis_client.get(key) or "-1e300") for key in (SEAL_KEY, HOT_FLOOR_KEY))
    redis_client.eval(_INIT_LUA, 2, mark_copy(SEAL_KEY, log), mark_copy(HOT_FLOOR_KEY, log), seal, floor)
    return seal, floor


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# Raise both copies of one log to at least the given marks (creating them).
_INIT_LUA = """
for i = 1, 2 do
  local cur = tonumber(redis.call('GET', KEYS[i]) or '-1e300')
  if tonumber(ARGV[i]) > cur or not redis.call('GET', KEYS[i]) then redis.call('SET', KEYS[i], ARGV[i]) end
end
return 1
"""


def total_length(redis_client) -> int:
    """Entries in every log (tests and tools)."""
    return EventLogs(redis_client).backlog()[0]


def latest_entries(redis_client, count: int = 1) -> list:
    """The `count` newest entries over every log, newest first, as (raw id, fields)."""
    out = []
    for key in [STREAM_KEY, *registered_logs(redis_client)]:
        out += redis_client.xrevrange(key, count=count)
    return sorted(out, key=lambda e: entry_id(e[0]), reverse=True)[:count]


def clear(redis_client) -> None:
    """Delete every log, the registry and the marks with their copies (tests reset with it)."""
    logs = registered_logs(redis_client)
    for key in [STREAM_KEY, SEAL_KEY, HOT_FLOOR_KEY, LOGS_KEY, *logs,
                *(mark_copy(m, log) for log in logs for m in (SEAL_KEY, HOT_FLOOR_KEY))]:
        redis_client.delete(key)


def read_mark(redis_client, key: str, default: int) -> int:
    v = redis_client.get(key)
    return default if v is None else int(float(v))


def sealed_error(ts: np.ndarray, seal: int) -> RangeSealed:
    """The one refusal of events below the seal (the cold boundary as ingest sees it), with a detail
    per event below it (at most MAX_DETAILS). `ts`: epoch ms of the batch, in order."""
    ts = np.asarray(ts, dtype=np.int64)
    rows = np.flatnonzero(ts < seal)
    problem = f"before the sealed boundary {format_time(seal)}"
    listed = f" (the first {MAX_DETAILS} are listed)" if len(rows) > MAX_DETAILS else ""
    return RangeSealed(f"{len(rows)} event(s) are before the sealed boundary {format_time(seal)}{listed}; history "
                       "is changed only by `tierstore import` (back to the archive boundary, GET /v1/tiers); nothing "
                       "was stored.",
                       [{"index": i, "field": "ts", "problem": problem} for i in rows[:MAX_DETAILS].tolist()])


def entry_id(raw: bytes | str) -> EntryId:
    """'1700000000000-3' (bytes or str) -> (1700000000000, 3)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(entry: EntryId) -> str:
    return f"{entry[0]}-{entry[1]}"


class EventLog:
    """One event log (a Redis Stream: `key`, STREAM_KEY by default, or a stream's log
    `stream_log_key(T, S)`), the global marks and the log's flush checkpoint.

    append      ingest appends inside the hot tier's Lua script of the stream, atomically with the
                seal check, dedup and the hot aggregates (`script_keys(T, S)` are the keys it gets,
                in order); a dead-letter replay appends to STREAM_KEY with its own seal check.
    seal        `raise_seal(ms)` / `seal_ms()`: events below are refused; `raise_hot_floor` /
                `hot_floor_ms()`: events below skip the hot aggregates. Marks only rise; raising
                one raises every registered stream's copy too (raise_mark).
    read        the flush's consumer group: `ensure_group`, `claim_pending`, `read_group`;
                `entries(after, upto)` for readers outside the group (rebuild_alltime).
    trim        `ack_and_trim(ids)`: acknowledge entries and drop everything up to the last of them.
    checkpoint  `read_checkpoint(conn)` / `write_checkpoint(conn, entry)`: the last entry whose
                events are committed in warm (PostgreSQL table flush_checkpoint, written in the
                transaction that commits those events).
    `redis`: a redis-py client of the hot tier's Redis.
    """

    @staticmethod
    def script_keys(tenant: str, stream: str) -> list[str]:
        """KEYS of stream's ingest script (hot_ingest.lua): its log, seal copy, hot floor copy."""
        log = stream_log_key(tenant, stream)
        return [log, mark_copy(SEAL_KEY, log), mark_copy(HOT_FLOOR_KEY, log)]

    def __init__(self, redis: Any, *, key: str = STREAM_KEY, group: str = FLUSH_GROUP,
                 consumer: str = FLUSH_CONSUMER) -> None:
        self.redis, self.key, self.group, self.consumer = redis, key, group, consumer

    # ---- marks -----------------------------------------------------------------------------

    def raise_seal(self, ms: int) -> int:
        return raise_mark(self.redis, SEAL_KEY, ms)

    def seal_ms(self, default: int) -> int:
        return read_mark(self.redis, SEAL_KEY, default)

    def raise_hot_floor(self, ms: int) -> int:
        return raise_mark(self.redis, HOT_FLOOR_KEY, ms)

    def hot_floor_ms(self, default: int) -> int:
        return read_mark(self.redis, HOT_FLOOR_KEY, default)

    # ---- the flush's consumer group --------------------------------------------------------

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def last_id(self) -> EntryId:
        """The id of the last entry ever appended ((0, 0) for a new log)."""
        return entry_id(self.redis.xinfo_stream(self.key)["last-generated-id"])

    def length(self) -> int:
        return int(self.redis.xlen(self.key))

    def claim_pending(self) -> int:
        """Move every pending entry of other consumers to ours (only one flush runs at a time: the
        job holds an advisory lock, so any other consumer's pending entries belong to a dead run).
        Returns how many entries were claimed."""
        claimed, start = 0, "0-0"
        while True:
            # (redis-py drops the cursor from JUSTID replies, so take the entries)
            reply = self.redis.xautoclaim(self.key, self.group, self.consumer, min_idle_time=0, start_id=start,
                                          count=1000)
            start = reply[0]
            claimed += len(reply[1])
            if entry_id(start) == (0, 0):
                return claimed

    def read_group(self, source: str, count: int) -> list:
        """Up to `count` entries [(raw id, fields)] for our consumer: source "0" re-reads our
        pending entries, ">" reads new ones."""
        reply = self.redis.xreadgroup(self.group, self.consumer, {self.key: source}, count=count)
        return reply[0][1] if reply else []

    def ack_and_trim(self, ids: list[EntryId], *, after_ack=lambda: None) -> None:
        """Acknowledge the entries, then drop the log up to and including the last of them."""
        self.redis.xack(self.key, self.group, *[format_id(i) for i in ids])
        after_ack()
        last = max(ids)
        self.redis.xtrim(self.key, minid=format_id((last[0], last[1] + 1)), approximate=False)

    def entries(self, after: EntryId | None, upto: EntryId, count: int = 500):
        """Every entry in (after, upto], oldest first, as (raw id, fields), read in chunks of `count`."""
        if upto == (0, 0) or (after is not None and after >= upto):
            return
        cursor = "-" if after is None else f"({format_id(after)}"
        while True:
            chunk = self.redis.xrange(self.key, min=cursor, max=format_id(upto), count=count)
            if not chunk:
                return
            yield from chunk
            cursor = "(" + format_id(entry_id(chunk[-1][0]))

    # ---- lag -------------------------------------------------------------------------------

    def oldest_after(self, checkpoint: EntryId | None) -> EntryId | None:
        """The first entry after `checkpoint` (entries kept after a crash between the flush's commit
        and its trim are behind it), or None when the flush has everything."""
        start = "-" if checkpoint is None else f"({format_id(checkpoint)}"
        first = self.redis.xrange(self.key, min=start, count=1)
        return entry_id(first[0][0]) if first else None

    def backlog(self, now: int | None = None) -> tuple[int, float]:
        """(entries not yet flushed, age in seconds of the oldest of them; 0 when empty). The log is
        trimmed behind the flush, so what it holds is the backlog."""
        return EventLogs(self.redis, [self.key]).backlog(now)

    # ---- the flush checkpoint (PostgreSQL) -------------------------------------------------

    def read_checkpoint(self, conn) -> EntryId | None:
        """The last entry the flush committed to warm, or None (`conn`: a psycopg connection)."""
        return read_flush_checkpoint(conn, self.key)

    def write_checkpoint(self, conn, entry: EntryId) -> None:
        """Record `entry` as committed, inside `conn`'s open transaction (the one inserting its events)."""
        conn.execute("INSERT INTO flush_checkpoint (log, entry_ms, entry_seq) VALUES (%s, %s, %s) "
                     "ON CONFLICT (log) DO UPDATE SET entry_ms = excluded.entry_ms, entry_seq = excluded.entry_seq, "
                     "updated_at = now()", (self.key, *entry))


class EventLogs:
    """Every log: STREAM_KEY and the registered per-stream logs (or the `keys` given)."""

    def __init__(self, redis: Any, keys: list[str] | None = None) -> None:
        self.redis = redis
        self.keys = keys if keys is not None else [STREAM_KEY, *registered_logs(redis)]

    def lengths(self) -> dict[str, int]:
        """log key -> entries it holds."""
        out: dict[str, int] = {}
        for i in range(0, len(self.keys), 500):
            pipe = self.redis.pipeline(transaction=False)
            for key in self.keys[i:i + 500]:
                pipe.xlen(key)
            out.update(zip(self.keys[i:i + 500], map(int, pipe.execute())))
        return out

    def backlog(self, now: int | None = None) -> tuple[int, float]:
        """(entries not yet flushed in all logs, age in seconds of the oldest; 0 when empty)."""
        lengths = {k: n for k, n in self.lengths().items() if n}
        firsts = []
        for key in lengths:
            first = self.redis.xrange(key, count=1)
            if first:
                firsts.append(entry_id(first[0][0])[0])
        if not firsts:
            return sum(lengths.values()), 0.0
        return sum(lengths.values()), max(0.0, ((now_ms() if now is None else now) - min(firsts)) / 1000)

    def read_checkpoint(self, conn) -> dict[str, EntryId]:
        """log key -> the last entry the flush committed to warm (logs without one are left out)."""
        return read_flush_checkpoints(conn)

    def oldest_after(self, checkpoints: dict[str, EntryId]) -> EntryId | None:
        """The oldest entry of any log after that log's checkpoint, or None when flushed."""
        found = [e for key in self.keys if (e := EventLog(self.redis, key=key).oldest_after(checkpoints.get(key)))]
        return min(found, key=lambda e: e[0]) if found else None


def read_flush_checkpoints(conn) -> dict[str, EntryId]:
    """log key -> the last entry the flush committed to warm (table flush_checkpoint)."""
    return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT log, entry_ms, entry_seq FROM flush_checkpoint")}


def read_flush_checkpoint(conn, log: str = STREAM_KEY) -> EntryId | None:
    """The last log entry the flush committed to warm (table flush_checkpoint), or None."""
    row = conn.execute("SELECT entry_ms, entry_seq FROM flush_checkpoint WHERE log = %s", (log,)).fetchone()
    return (row[0], row[1]) if row else None
