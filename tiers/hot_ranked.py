"""Sorted and random access to the hot tier's partials (tiers.base.RankedAccess) for the
router's threshold algorithm.

The lists are the zsets whose sum per key is the pieces' count or sum: bucket zsets, and the
materialised unions of runs of buckets that serve sliding windows (hot_window.lua), as
hot_query.lua mode `lists` names them. Sorted access is ZREVRANGE on each (one MULTI per
round, so a round reads one instant); random access is ZMSCORE on each, summed exactly (fsum),
or, over many small lists, every list read whole once (one instant) and every random access of
the access answered from that read (exact_parts). Ingest may add to the zsets between rounds:
every read is of a consistent instant, like a read of several pieces.

Exact sums (tiers/hot_sums.py): a bucket whose sums are pairs has a compensation zset; random
access reads it too (the low parts join the fsum), and the frontier adds each open list's
largest |low part| (its marker's score), so a key's value in a list is at most its last score
read plus that bound: the threshold algorithm's proof holds for the exact values.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import redis

from rollups.exactsum import column_fsum
from tiers.base import RankedAccess
from tiers.errors import translate
from tiers.hot_cluster import node_client

_CHUNK = 3000  # members per ZMSCORE
#: random access of more key x list lookups than this first counts the lists' members: when reading
#: them whole is less than half the lookups, they are read whole once and every later random access
#: of the same access is answered from that read (HotRankedAccess._read_whole)
FULL_READ_LOOKUPS = 20_000


class _Zset:
    __slots__ = ("name", "pos", "last", "exhausted", "head")

    def __init__(self, name: str, head: list | None = None):
        self.name = name
        self.pos = 0
        self.last = math.inf
        self.exhausted = False
        self.head = head  # its first rows (member, score), read with the names: no round trip

    def bound(self) -> float:
        return 0.0 if self.exhausted else self.last


class HotRankedAccess(RankedAccess):
    """RankedAccess over the zsets `names` (one list each); `min_value` their lowest score;
    `heads`: each list's first rows as hot_query.lua mode `lists` returned them (flat member,
    score, best first; read in the same instant as the names), served before any round trip."""

    HEAD = 128  # rows of each list read with the names (rollups.threshold's first round: max(32, k))

    def __init__(self, client: redis.Redis, names: Sequence[str], min_value: float, *, heads: Sequence | None = None,
                 comps: Sequence[str] | None = None, bounds: Sequence[float] | None = None):
        # every list is a key of one stream (one hash tag): MULTI on the master of its slot
        self._client = node_client(client, names[0]) if names else client
        heads = list(heads) if heads else [None] * len(names)
        self._lists = [_Zset(n, None if h is None else [(h[i], h[i + 1]) for i in range(0, len(h), 2)])
                       for n, h in zip(names, heads)]
        self.min_value = min_value
        # per list: its compensation zset ('' none) and the largest |low part| it holds
        self._comps = list(comps) if comps else [""] * len(names)
        self._bounds = list(bounds) if bounds else [0.0] * len(names)
        # random access from every list read whole once (None: not decided; False: ZMSCORE per call)
        self._whole: dict[bytes, list[float]] | bool | None = None

    def sorted_access(self, n: int) -> tuple[list[str], np.ndarray]:
        todo = [z for z in self._lists if not z.exhausted]
        if not todo:
            return [], np.zeros(0)
        if all(z.head is not None and (z.pos + n <= len(z.head) or len(z.head) < self.HEAD) for z in todo):
            # the first rows came with the names; a head shorter than HEAD is the whole list
            replies = [z.head[z.pos:z.pos + n] for z in todo]
        else:
            with translate("hot"):
                pipe = self._client.pipeline(transaction=True)
                for z in todo:
                    pipe.zrevrange(z.name, z.pos, z.pos + n - 1, withscores=True)
                replies = pipe.execute()
        keys: list[str] = []
        values: list[float] = []
        for z, rows in zip(todo, replies):
            z.pos += len(rows)
            z.exhausted = len(rows) < n
            if rows:
                z.last = float(rows[-1][1])
            keys += [m.decode() for m, _ in rows]
            values += [float(s) for _, s in rows]
        return keys, np.array(values, np.float64)

    def frontier(self) -> float:
        # per open list: its bound plus its largest |low part|, or 0 (a list without the key)
        return math.fsum([max(z.bound() + b, 0.0) for z, b in zip(self._lists, self._bounds) if not z.exhausted])

    @property
    def exhausted(self) -> bool:
        return all(z.exhausted for z in self._lists)

    def exact(self, keys: Sequence[str]) -> np.ndarray:
        return column_fsum(self.exact_parts(keys))

    def exact_parts(self, keys: Sequence[str]) -> np.ndarray:
        """(lists + compensation zsets, n): each key's score in every list, so the router's fsum
        over tiers adds them unrounded (5e14 in one hot bucket and 1/32 in another summed here
        first would round to 5e14 before another tier's 1/32 joins). Many small lists (more than
        FULL_READ_LOOKUPS lookups, twice their members): every list is read whole once, at the
        first such call, and this and every later call answer from that read, (r, n) as _parts_of
        (a day of unfolded minute buckets summed as pairs, which no window union stands for:
        1,440 lists and their compensation zsets, looked up 20 keys at a time by the threshold
        algorithm, took 2.5-3 s a top-K)."""
        if not keys or not self._lists:
            return np.zeros((1, len(keys)))
        keys = list(keys)
        names = [z.name for z in self._lists] + [c for c in self._comps if c]
        if self._whole is None and len(keys) * len(names) > FULL_READ_LOOKUPS:
            with translate("hot"):
                pipe = self._client.pipeline(transaction=False)
                for name in names:
                    pipe.zcard(name)
                members = sum(pipe.execute())
            self._whole = self._read_whole(names) if 2 * members < len(keys) * len(names) else False
        if isinstance(self._whole, dict):
            return self._parts_of(keys)
        with translate("hot"):
            pipe = self._client.pipeline(transaction=True)
            for name in names:
                for i in range(0, len(keys), _CHUNK):
                    pipe.zmscore(name, keys[i:i + _CHUNK])
            replies = pipe.execute()
        chunks = -(-len(keys) // _CHUNK)
        rows = np.array([[0.0 if s is None else float(s) for part in replies[j * chunks:(j + 1) * chunks]
                          for s in part] for j in range(len(names))], np.float64)
        return rows

    def _read_whole(self, names: list[str]) -> dict[bytes, list[float]]:
        """{member: its nonzero scores over every list and compensation zset}, all read whole in
        one MULTI (one instant)."""
        with translate("hot"):
            pipe = self._client.pipeline(transaction=True)
            for name in names:
                pipe.zrange(name, 0, -1, withscores=True)
            replies = pipe.execute()
        whole: dict[bytes, list[float]] = {}
        for rows in replies:
            for member, score in rows:
                if score != 0.0:
                    whole.setdefault(member, []).append(float(score))
        return whole

    def _parts_of(self, keys: list[str]) -> np.ndarray:
        """exact_parts from the lists read whole (_read_whole): (r, n), each key's nonzero scores
        in the first rows of its column (r = the most lists any key is in), zeros below: the same
        multiset of parts per key as one row per list, so every fsum over them is the same."""
        found = [self._whole.get(k.encode(), ()) for k in keys]
        out = np.zeros((max(1, max(map(len, found))), len(keys)))
        for i, scores in enumerate(found):
            out[:len(scores), i] = scores
        return out
