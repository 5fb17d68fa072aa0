"""The dead-letter store: events a tier refused after ingest accepted them, kept in Redis.

Why Redis: the durable event log lives there, so a dead letter is exactly as durable as the
entry it came from, and it can be written while PostgreSQL is the tier refusing. A replay moves a
dead letter back into the log in ONE Lua script (XADD + delete), so it is never both lost and
never in both places.

One dead letter = the refused events of one stream of one log entry. Keys (one hash tag, so every
script is single-slot on Redis Cluster too):
    {tierstore:dl}:rec:<tenant>:<id>  HASH  entry, tenant, stream, events (Arrow IPC stream of
                                            tiers.base.EVENT_SCHEMA, the refused rows byte-exact),
                                            indices (JSON: their row positions in the entry's
                                            accepted events), reasons (JSON, one per event),
                                            reason, count, min_ts, first_seen (epoch ms)
    {tierstore:dl}:ids:<tenant>       ZSET  the tenant's dead-letter ids (score 0: ordered by id)
    {tierstore:dl}:count              HASH  tenant -> dead-lettered events
The id is "<entry ms>-<entry seq>-<stream>": deterministic, so a flush re-run after a crash
rewrites the same dead letter instead of adding a second one.

Crash safety with the flush (scheduler.steps): the flush writes an entry's dead letters with
`put_entry` BEFORE it commits the entry's other events with its checkpoint; `put_entry` replaces
everything the entry had (a re-run that refuses fewer events removes the rest). A dead letter is
settled once its entry is at or below the flush checkpoint (that entry is never re-read);
`replay` and `delete` touch only settled ones (`settled`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from rollups.timeutil import now_ms
from tiers.eventlog import (LOG_PREFIX, SEAL_KEY, EntryId, decode_batch, encode_batch, entry_id, format_id, mark_copy,
                            register_log)

_TAG = "{tierstore:dl}"
# Replays are appended to a log of their own in the dead letters' slot, registered like a stream's
# log (flushed, sealed through its seal copy): the replay script is single-slot on Redis Cluster.
REPLAY_LOG = f"{LOG_PREFIX}{_TAG}"
COUNT_KEY = f"{_TAG}:count"
REASON_CHARS = 2000  # a reason is the driver's message; PL/pgSQL context lines can be long


# KEYS[1] ids zset, KEYS[2] count hash. ARGV: tenant, entry, now, n, then n x (id, stream, events,
# indices, reasons, reason, count, min_ts). Replaces every dead letter of the entry; keeps first_seen.
_PUT_LUA = """
local tenant, entry, now, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local rec = '{tierstore:dl}:rec:' .. tenant .. ':'
local keep = {}
for i = 0, n - 1 do keep[ARGV[5 + i * 8]] = true end
local lo, hi = '[' .. entry .. '-', '(' .. entry .. '.'
local scope = ARGV[5 + n * 8]  -- a per-stream log's entry: only that stream's dead letters
if scope then lo, hi = '[' .. entry .. '-' .. scope, '[' .. entry .. '-' .. scope end
for _, id in ipairs(redis.call('ZRANGEBYLEX', KEYS[1], lo, hi)) do
  if not keep[id] then
    local old = tonumber(redis.call('HGET', rec .. id, 'count') or '0')
    redis.call('HINCRBY', KEYS[2], tenant, -old)
    redis.call('DEL', rec .. id)
    redis.call('ZREM', KEYS[1], id)
  end
end
for i = 0, n - 1 do
  local b = 5 + i * 8
  local key = rec .. ARGV[b]
  local first = redis.call('HGET', key, 'first_seen') or now
  local old = tonumber(redis.call('HGET', key, 'count') or '0')
  redis.call('HSET', key, 'entry', entry, 'tenant', tenant, 'stream', ARGV[b + 1], 'events', ARGV[b + 2],
             'indices', ARGV[b + 3], 'reasons', ARGV[b + 4], 'reason', ARGV[b + 5], 'count', ARGV[b + 6],
             'min_ts', ARGV[b + 7], 'first_seen', first)
  redis.call('HINCRBY', KEYS[2], tenant, tonumber(ARGV[b + 6]) - old)
  redis.call('ZADD', KEYS[1], 0, ARGV[b])
end
if tonumber(redis.call('HGET', KEYS[2], tenant) or '0') <= 0 then redis.call('HDEL', KEYS[2], tenant) end
return n
"""

# KEYS[1] ids zset, KEYS[2] count hash, KEYS[3] the log, KEYS[4] the seal mark. ARGV: tenant, id,
# replay (1) or delete (0). Returns {'missing'} | {'sealed', seal} | {'replayed', entry, count}
# | {'deleted', count}.
_TAKE_LUA = """
local tenant, id, replay = ARGV[1], ARGV[2], ARGV[3] == '1'
local key = '{tierstore:dl}:rec:' .. tenant .. ':' .. id
if redis.call('EXISTS', key) == 0 then return {'missing'} end
local count = redis.call('HGET', key, 'count')
local out
if replay then
  local seal = redis.call('GET', KEYS[4])
  if seal and tonumber(redis.call('HGET', key, 'min_ts')) < tonumber(seal) then return {'sealed', seal} end
  local entry = redis.call('XADD', KEYS[3], '*', 'tenant', tenant, 'data', redis.call('HGET', key, 'events'),
                           'dups', '[]')
  out = {'replayed', entry, count}
else
  out = {'deleted', count}
end
redis.call('DEL', key)
redis.call('ZREM', KEYS[1], id)
redis.call('HINCRBY', KEYS[2], tenant, -tonumber(count))
if tonumber(redis.call('HGET', KEYS[2], tenant) or '0') <= 0 then redis.call('HDEL', KEYS[2], tenant) end
return out
"""


@dataclass(frozen=True)
class Refusal:
    """One refused event: its row in the entry's accepted events (tiers.eventlog.decode_entry)."""

    index: int
    reason: str


@dataclass(frozen=True)
class DeadLetter:
    id: str
    tenant: str
    entry: EntryId
    stream: str
    events: pa.Table            # tiers.base.EVENT_SCHEMA, byte-exact as ingest accepted them
    indices: list[int]
    reasons: list[str]
    reason: str
    first_seen: int             # epoch ms

    @property
    def count(self) -> int:
        return self.events.num_rows


class Sealed(Exception):
    """A replay refused: the dead letter holds events below the seal mark (their range went cold)."""

    def __init__(self, seal_ms: int):
        super().__init__(f"events below the seal mark {seal_ms}")
        self.seal_ms = seal_ms


def _ids_key(tenant: str) -> str:
    return f"{_TAG}:ids:{tenant}"


def _rec_key(tenant: str, dl_id: str) -> str:
    return f"{_TAG}:rec:{tenant}:{dl_id}"


def dead_letter_id(entry: EntryId, stream: str) -> str:
    return f"{format_id(entry)}-{stream}"


class DeadLetterStore:
    """The dead letters in Redis (see the module docstring for the layout)."""

    def __init__(self, redis_client):
        self._redis = redis_client
        self._put = redis_client.register_script(_PUT_LUA)
        self._take = redis_client.register_script(_TAKE_LUA)
        self._replay_registered = False

    def put_entry(self, tenant: str, entry: EntryId, events: pa.Table, refusals: Iterable[Refusal],
                  stream: str | None = None) -> int:
        """Make the dead letters of log entry `entry` exactly `refusals` (rows of `events`, the
        entry's accepted events), one per stream; dead letters the entry had and no longer has are
        removed (an empty `refusals` removes them all). first_seen survives a rewrite. Idempotent.
        Returns the number of dead letters the entry now has."""
        refusals = sorted(refusals, key=lambda r: r.index)
        streams = events["stream"].to_pylist()
        by_stream: dict[str, list[Refusal]] = {}
        for r in refusals:
            by_stream.setdefault(streams[r.index], []).append(r)
        args: list[Any] = [tenant, format_id(entry), now_ms(), len(by_stream)]
        for stream, rs in sorted(by_stream.items()):
            rows = events.take(pa.array([r.index for r in rs], pa.int64()))
            reasons = [r.reason[:REASON_CHARS] for r in rs]
            args += [dead_letter_id(entry, stream), stream, encode_batch(rows),
                     json.dumps([r.index for r in rs]), json.dumps(reasons, ensure_ascii=False),
                     _summary(reasons), rows.num_rows, int(pc.min(rows["ts"].cast(pa.int64())).as_py())]
        if stream is not None:  # the entry of a stream's own log: entry ids repeat across logs
            args.append(stream)
        return int(self._put(keys=[_ids_key(tenant), COUNT_KEY], args=args))

    def clear_entries(self, tenant: str, entries: Iterable[EntryId]) -> None:
        """Remove every dead letter of these entries (a re-run that refused none of their events)."""
        for entry in entries:
            self._put(keys=[_ids_key(tenant), COUNT_KEY], args=[tenant, format_id(entry), now_ms(), 0])

    def list(self, tenant: str) -> list[DeadLetter]:
        """The tenant's dead letters, oldest log entry first."""
        ids = [i.decode() for i in self._redis.zrange(_ids_key(tenant), 0, -1)]
        out = [d for d in (self.get(tenant, i) for i in ids) if d is not None]
        return sorted(out, key=lambda d: (d.entry, d.stream))

    def get(self, tenant: str, dl_id: str) -> DeadLetter | None:
        raw = self._redis.hgetall(_rec_key(tenant, dl_id))
        if not raw:
            return None
        f = {k.decode(): v for k, v in raw.items()}
        return DeadLetter(id=dl_id, tenant=tenant, entry=entry_id(f["entry"].decode()),
                          stream=f["stream"].decode(), events=decode_batch(f["events"]),
                          indices=json.loads(f["indices"]), reasons=json.loads(f["reasons"]),
                          reason=f["reason"].decode(), first_seen=int(f["first_seen"]))

    def count(self, tenant: str | None = None) -> int:
        """Dead-lettered events of one tenant, or of every tenant (None)."""
        if tenant is not None:
            return int(self._redis.hget(COUNT_KEY, tenant) or 0)
        return sum(int(v) for v in self._redis.hvals(COUNT_KEY))

    def replay(self, tenant: str, dl_id: str) -> tuple[str, int] | None:
        """Move a dead letter back into the event log (a new entry: tenant, its events, no dups)
        and delete it, atomically. Returns (the new entry id, events) or None when there is no such
        dead letter. Raises Sealed (nothing changed) when an event lies below the seal mark.
        Only for settled dead letters (the caller checks `settled`)."""
        if not self._replay_registered:
            register_log(self._redis, REPLAY_LOG)  # idempotent: SADD, then the seal copy (eventlog ordering)
            self._replay_registered = True
        reply = self._take(keys=[_ids_key(tenant), COUNT_KEY, REPLAY_LOG, mark_copy(SEAL_KEY, REPLAY_LOG)],
                           args=[tenant, dl_id, 1])
        kind = reply[0].decode()
        if kind == "missing":
            return None
        if kind == "sealed":
            raise Sealed(int(float(reply[1])))
        return reply[1].decode(), int(reply[2])

    def delete(self, tenant: str, dl_id: str) -> int | None:
        """Delete a dead letter for good; returns its event count, None when there is none."""
        reply = self._take(keys=[_ids_key(tenant), COUNT_KEY, REPLAY_LOG, mark_copy(SEAL_KEY, REPLAY_LOG)],
                           args=[tenant, dl_id, 0])
        return None if reply[0] == b"missing" else int(reply[1])


def settled(checkpoint: EntryId | None, dead: DeadLetter) -> bool:
    """True once the flush committed past the dead letter's entry (it is never re-read): until
    then a flush re-run may still rewrite it."""
    return checkpoint is not None and dead.entry <= checkpoint


def _summary(reasons: list[str]) -> str:
    distinct = list(dict.fromkeys(reasons))
    head = distinct[0]
    return head if len(distinct) == 1 else f"{head} (and {len(distinct) - 1} other reasons)"


# SQLSTATE classes that say "this data", not "this server": 22 data exception (bad value, NUL),
# 23 integrity constraint (check, unique, foreign key, not null), 54 program limit (e.g. an index
# row too large), P0 PL/pgSQL RAISE (a trigger refusing a row). Everything else — 08 connection,
# 53 resources, 57 shutdown, 40 serialization, 42 a bug in our SQL — is retried, never dead-lettered.
_REFUSAL_CLASSES = ("22", "23", "54", "P0")


def is_refusal(exc: BaseException) -> bool:
    """True when `exc` means a tier refuses these particular events (dead-letter them); False for
    a transient or global failure (the flush fails and retries later). Client-side data errors
    (psycopg.DataError without SQLSTATE, e.g. NUL in text; Arrow/Python conversion errors) count
    as refusals."""
    import psycopg

    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:
            return isinstance(exc, psycopg.DataError)
        return state[:2] in _REFUSAL_CLASSES
    return isinstance(exc, (pa.ArrowInvalid, OverflowError, UnicodeError))
