"""The durable event log: one Redis Stream entry per accepted ingest batch. `EventLog` owns it:
append, seal, read, trim and the flush checkpoint.

Ingest (tiers/hot.py) appends; the flush job (scheduler) reads it with a consumer group, copies
the events into warm's raw table and acknowledges only after commit. Entry fields:
    tenant  the batch's tenant
    data    the batch as an Arrow IPC stream of tiers.base.EVENT_SCHEMA
    dups    JSON list of row indexes in `data` that were duplicates (ids seen within the dedup
            window): they are not counted anywhere and flush skips them
Two Redis keys mirror what ingest must check atomically with the append:
    SEAL_KEY       epoch ms; events with ts below it are refused (range_sealed). export_cold
                   raises it (never lowers it) BEFORE draining the log, so nothing older than the
                   new cold boundary can enter the log after the drain.
    HOT_FLOOR_KEY  epoch ms; events below it skip the hot aggregates (still logged for warm).
                   expire_hot raises it before it advances b_warm.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
from redis.exceptions import ResponseError

from rollups.errors import RangeSealed
from rollups.timeutil import format_time, now_ms
from tiers.base import EVENT_SCHEMA

STREAM_KEY = "tierstore:log"
FLUSH_GROUP = "flush"
SEAL_KEY = "tierstore:seal"
HOT_FLOOR_KEY = "tierstore:hot_floor"
FLUSH_CONSUMER = "flusher"
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
    """Raise SEAL_KEY or HOT_FLOOR_KEY to at least `ms` (never lowers it); returns the stored value."""
    return int(float(redis_client.eval(_RAISE_LUA, 1, key, str(int(ms)))))


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
    """The event log (Redis Stream STREAM_KEY), its marks and the flush's checkpoint.

    append      ingest appends inside the hot tier's Lua script, atomically with the seal check,
                dedup and the hot aggregates (`SCRIPT_KEYS` are the keys it gets, in order); a
                dead-letter replay appends with its own seal check (tiers.deadletters).
    seal        `raise_seal(ms)` / `seal_ms()`: events below are refused; `raise_hot_floor` /
                `hot_floor_ms()`: events below skip the hot aggregates. Marks only rise.
    read        the flush's consumer group: `ensure_group`, `claim_pending`, `read_group`;
                `entries(after, upto)` for readers outside the group (rebuild_alltime).
    trim        `ack_and_trim(ids)`: acknowledge entries and drop everything up to the last of them.
    checkpoint  `read_checkpoint(conn)` / `write_checkpoint(conn, entry)`: the last entry whose
                events are committed in warm (PostgreSQL table flush_checkpoint, written in the
                transaction that commits those events).
    `redis`: a redis-py client of the hot tier's Redis.
    """

    SCRIPT_KEYS = (STREAM_KEY, SEAL_KEY, HOT_FLOOR_KEY)

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
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(self.key)
        pipe.xrange(self.key, count=1)
        length, first = pipe.execute()
        if not first:
            return int(length), 0.0
        return int(length), max(0.0, ((now_ms() if now is None else now) - entry_id(first[0][0])[0]) / 1000)

    # ---- the flush checkpoint (PostgreSQL) -------------------------------------------------

    def read_checkpoint(self, conn) -> EntryId | None:
        """The last entry the flush committed to warm, or None (`conn`: a psycopg connection)."""
        return read_flush_checkpoint(conn, self.key)

    def write_checkpoint(self, conn, entry: EntryId) -> None:
        """Record `entry` as committed, inside `conn`'s open transaction (the one inserting its events)."""
        conn.execute("INSERT INTO flush_checkpoint (log, entry_ms, entry_seq) VALUES (%s, %s, %s) "
                     "ON CONFLICT (log) DO UPDATE SET entry_ms = excluded.entry_ms, entry_seq = excluded.entry_seq, "
                     "updated_at = now()", (self.key, *entry))


def read_flush_checkpoint(conn, log: str = STREAM_KEY) -> EntryId | None:
    """The last log entry the flush committed to warm (table flush_checkpoint), or None."""
    row = conn.execute("SELECT entry_ms, entry_seq FROM flush_checkpoint WHERE log = %s", (log,)).fetchone()
    return (row[0], row[1]) if row else None
