"""Event-id dedup of the hot tier: 128-bit id digests in one Redis set per slice of the window.

Keys (T = tenant, S = stream; the dedup scope is the stream, as before):
    tierstore:hot:{T:S}:dd:<start>   set of the 16-byte BLAKE2b digests of the ids first accepted
                                     in the slice [start, start + SLICE) of Redis's clock (ms),
                                     SLICE = ceil(dedup_window / SLICES). Expires (PEXPIREAT) at
                                     start + SLICE + dedup_window: no id it holds is checked after.

hot_ingest.lua checks a batch's digests with one SMISMEMBER per live slice (the SLICES + 1 slices
overlapping [now - dedup_window, now]) and adds the fresh ones to the current slice with one SADD,
in the same atomic script as the aggregates and the log entry; so an id is never counted twice
while it is remembered, across batches, router processes and crashes (a script runs whole or not
at all). Python pre-aggregates every event of the batch, ids or not (numpy, tiers/hot_batch.py);
when a digest is found the script writes nothing and returns which, and the batch is encoded again
without those events (`_Batch.drop`): the common case, no duplicate, costs one call.

Window. An id accepted at t (Redis's TIME) is remembered until a time in (t + dedup_window,
t + dedup_window + SLICE]: a duplicate within the window is always refused; one later than
window + SLICE is always counted again; in between it may be refused (the slice is still live).
(The previous layout, one key per id with PX = window, was exact at the window: its keys are no
longer read, so ids accepted by a version before this one are not remembered after the upgrade.)

Digests. BLAKE2b-128 of the id's UTF-8 bytes (hashlib: no dependency). Two distinct ids of a
stream share a digest with probability about n^2 / 2^129 for n ids live in the window: for
n = 10^10 (115k events/s for a whole day) that is 1.5e-19, far below the rate of undetected
hardware memory errors; and BLAKE2b is a cryptographic hash, so producers cannot craft colliding
ids on purpose either. A collision would refuse a distinct event as a duplicate (the log keeps it,
listed in `dups`); it cannot count an event twice.

Memory: 66-80 bytes per id in Redis 7.0 (MEMORY USAGE and used_memory growth of the sets: a 16-byte
sds and a hashtable entry; tests/test_hot_dedup.py), against ~180 for the former key per id with
its TTL. Up to rate x (window + SLICE) ids are remembered: at 100k events/s with the default 24 h
window, 1.1e10 ids (~800 GB). A high rate needs a short dedup_window.
"""
from __future__ import annotations

from hashlib import blake2b

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DIGEST = np.dtype("V16")  # one digest as numpy holds it (raw bytes: no NUL stripping)
SLICES = 4  # the window is remembered in SLICES + 1 sets: at most window / SLICES longer than asked


def digest(event_id: str) -> bytes:
    """The 16-byte digest stored for an id."""
    return blake2b(event_id.encode(), digest_size=16).digest()


def first_occurrences(streams: np.ndarray, ids: pa.ChunkedArray | pa.Array, live: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the first event of each (stream, id) of a batch among those with an id, and their
    digests (numpy array of dtype DIGEST: 16 raw bytes each, `.tobytes()` concatenates them as
    hot_ingest.lua reads them); the later ones are marked False in `live` (in place): within a
    batch the first occurrence counts."""
    has = pc.is_valid(ids).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(has)
    # the UTF-8 bytes straight from Arrow (as digest() encodes them): no str objects, no encode
    values = (ids if has.all() else pc.filter(ids, pa.array(has))).cast(pa.binary()).to_pylist()
    digests = [blake2b(v, digest_size=16).digest() for v in values]
    of = streams[rows]
    scoped = digests if not len(of) or (of == of[0]).all() else list(zip(of.tolist(), digests))
    keep = np.ones(len(rows), bool)
    if len(set(scoped)) < len(scoped):  # some id repeats within the batch (rare): keep its first
        first: dict = {}
        for i, x in enumerate(scoped):
            if first.setdefault(x, i) != i:
                keep[i] = False
    out = np.frombuffer(b"".join(digests), DIGEST)
    if not keep.all():
        live[rows[~keep]] = False
        rows, out = rows[keep], out[keep]
    return rows, out
