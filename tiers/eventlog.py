"""The durable event log: one Redis Stream entry per accepted ingest batch.

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

import pyarrow as pa

from tiers.base import EVENT_SCHEMA

STREAM_KEY = "tierstore:log"
FLUSH_GROUP = "flush"
SEAL_KEY = "tierstore:seal"
HOT_FLOOR_KEY = "tierstore:hot_floor"

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
