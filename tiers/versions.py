"""Data versions of hot and warm pieces, for the router's results cache (router/cache.py).

A cached piece is served only under a key that holds a version of exactly the data it read, and
a version changes whenever that data changes. Clocks play no part in correctness: the router
chooses which pieces are worth storing (closed ones), the versions decide whether a stored piece
is still right.

Hot (Redis). The version of an hour is its stream-wide total count, `1h:total:count` at member
<hour start>, which hot_ingest.lua raises in the same script as every event it aggregates into the
hour (on time or late, ingest or `write`): it only grows while the hour's buckets live. Only a
delete takes data away, and hot_delete.lua deletes the stream's generation key `cache:gen` in the
same script; the next reader draws a new random generation (SET NX). A piece's version is the
generation plus the total counts of every hour it overlaps; compaction moves events between an
hour's zsets without changing what a read returns, and changes no version. A wiped Redis loses the
generation too, so no version seen before a wipe comes back after it.

Warm (PostgreSQL). `cache_versions` rows (stream, day, kind) take a fresh random uuid in the SAME
transaction as the change they stand for:
  kind 0 (raw)     `insert` (flush, import) — what raw pieces read; deletes (rows, dropped
                   days or chunks) bump the one row (stream 0, day -1) that every version holds;
  kind 1 (rollup)  `refresh`, when it folds changes into rollup_1m/1h/1d — what 1m/1h/1d pieces
                   read. A late event flushed into warm bumps kind 0 at once (raw pieces) and
                   kind 1 at the refresh that makes the rollups show it, so a 1h piece cached
                   between the two (from rollups without the event) is right for that moment and
                   invalidated exactly when the rollups change.
Only refresh writes kind-1 rows, under its advisory lock taken before its REPEATABLE READ
snapshot, so the bump never meets a concurrent update of the same row (no serialization failure).
In timescale mode the aggregates are re-materialised outside a transaction: the bump commits with
the deletion of the dirty rows it stands for, after the data; a crash in between leaves the rows
dirty, and the next refresh re-materialises and bumps.

Why a reader never caches stale data: it reads the versions BEFORE the data. A change committed
before the version read is in the data read after it; a change committed after it has a newer
version, so what the reader stores under the old one is at least as new as the old version says
(and a reader holding the old version ran concurrently with the change). The other order —
data older than its version — would need a version to become visible before its data, which the
same-transaction (hot: same-script) bumps exclude.
"""
from __future__ import annotations

import uuid
from typing import Hashable, Sequence

import numpy as np
import psycopg
import pyarrow as pa

from rollups.cover import Piece
from rollups.timeutil import DAY_MS, HOUR_MS

RAW_KIND, ROLLUP_KIND = 0, 1
ALL_STREAMS, ALL_DAYS = 0, -1  # the row that changes with every delete (never a real day start)

_HOT_VERSIONS_LUA = """
local gen = redis.call('GET', KEYS[1])
if not gen then
  gen = ARGV[1]
  redis.call('SET', KEYS[1], gen)
end
local out = {}
for i = 2, #ARGV, 4000 do  -- in chunks: unpack holds at most ~8000 values
  local part = redis.call('ZMSCORE', KEYS[2], unpack(ARGV, i, math.min(#ARGV, i + 3999)))
  for j = 1, #part do out[#out + 1] = part[j] end
end
return {gen, out}
"""


def _starts(piece: Piece, width: int) -> range:
    rng = piece.range
    return range(rng.start - rng.start % width, rng.end, width)


class HotVersions:
    """Versions of hot pieces from the stream's generation and hour totals (one round trip)."""

    def __init__(self, client) -> None:
        self._script = client.register_script(_HOT_VERSIONS_LUA)

    def versions(self, prefix: str, pieces: Sequence[Piece]) -> list[Hashable]:
        """One version per piece: (generation, total counts of the hours it overlaps).

        prefix: the stream's hot key prefix (tiers.hot._prefix). Raises redis errors as they come."""
        hours = sorted({h for p in pieces for h in _starts(p, HOUR_MS)})
        gen, counts = self._script(keys=[prefix + "cache:gen", prefix + "1h:total:count"],
                                   args=[uuid.uuid4().hex, *hours])
        by_hour = dict(zip(hours, counts))
        return [(gen, tuple(by_hour[h] for h in _starts(p, HOUR_MS))) for p in pieces]


def bump_warm(conn: psycopg.Connection, kind: int, pairs_sql: str, params: Sequence = ()) -> None:
    """New versions for the (stream id, day start ms) pairs `pairs_sql` selects (two columns), in
    conn's open transaction."""
    conn.execute(
        "INSERT INTO cache_versions (stream_id, day, kind, version) "
        f"SELECT p.s, p.d, %s::smallint, gen_random_uuid() FROM (SELECT DISTINCT * FROM ({pairs_sql}) q) AS p(s, d) "
        "ON CONFLICT (stream_id, day, kind) DO UPDATE SET version = excluded.version",
        (kind, *params))


def bump_warm_rows(conn: psycopg.Connection, kind: int, stream_ids: pa.ChunkedArray | pa.Array,
                   ts: pa.ChunkedArray | pa.Array) -> None:
    """bump_warm for the days of these rows (stream ids, timestamps)."""
    ms = ts.cast(pa.int64()).to_numpy()
    pairs = pa.table({"s": stream_ids, "d": pa.array(ms - np.mod(ms, DAY_MS))}).group_by(["s", "d"]).aggregate([])
    bump_warm(conn, kind, "SELECT * FROM unnest(%s::int[], %s::bigint[])",
              (pairs["s"].to_pylist(), pairs["d"].to_pylist()))


def bump_warm_everything(conn: psycopg.Connection) -> None:
    """A new version for every warm piece (deletes: cheaper than finding the days they touched)."""
    bump_warm(conn, RAW_KIND, "SELECT %s::int, %s::bigint", (ALL_STREAMS, ALL_DAYS))


def warm_versions(conn: psycopg.Connection, stream_id: int, pieces: Sequence[Piece]) -> list[Hashable]:
    """One version per piece: the (stream, kind, uuid) rows of every day it overlaps and the row of
    every day, in a stable order (no rows: not changed since the table began)."""
    days = sorted({d for p in pieces for d in _starts(p, DAY_MS)})
    rows = conn.execute("SELECT day, stream_id, kind, version::text FROM cache_versions "
                        "WHERE (stream_id = %s AND day = ANY(%s)) OR (stream_id = %s AND day = %s) "
                        "ORDER BY day, stream_id, kind", (stream_id, days, ALL_STREAMS, ALL_DAYS)).fetchall()
    by_day: dict[int, list] = {}
    for day, sid, kind, version in rows:
        by_day.setdefault(day, []).append((sid, kind, version))
    everything = tuple(by_day.get(ALL_DAYS, ()))
    return [(everything, tuple((d, *by_day.get(d, ())) for d in _starts(p, DAY_MS))) for p in pieces]
