"""tiers/hot_ranked.HotRankedAccess random access over many small lists (a day of unfolded minute
buckets whose sums are pairs: no window union stands for them): every list is read whole once and
every later random access answered from that read, not one ZMSCORE per list per call (2.5-3 s of a
365-day top-K by sum after an import, before compact_hot). Real Redis; zsets under a test prefix,
deleted afterwards."""
from __future__ import annotations

import math
import random
from contextlib import contextmanager

import numpy as np

from rollups.exactsum import column_fsum
from tiers import hot_ranked
from tiers.hot_ranked import HotRankedAccess

PREFIX = "test:hot_ranked_whole:{t:s}:"


def _calls(client, command: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def _drop(client) -> None:
    doomed = list(client.scan_iter(match=PREFIX.replace("{", "\\{").replace("}", "\\}") + "*", count=1000))
    for i in range(0, len(doomed), 500):
        client.delete(*doomed[i:i + 500])


def _lists(client, n_lists: int, keys: list[str], rng: random.Random):
    names, comps, truth = [], [], {k: [] for k in keys}
    pipe = client.pipeline(transaction=False)
    for i in range(n_lists):
        name, comp = f"{PREFIX}sum:{i}", f"{PREFIX}sumc:{i}" if i % 2 else ""
        for k in rng.sample(keys, 4):
            hi, lo = rng.uniform(-1e3, 1e3), (rng.uniform(-1e-13, 1e-13) if comp else 0.0)
            pipe.zadd(name, {k: hi})
            truth[k].append(hi)
            if comp:
                pipe.zadd(comp, {k: lo})
                truth[k].append(lo)
        names.append(name)
        comps.append(comp)
    pipe.execute()
    return names, comps, truth


@contextmanager
def _built(client, n_lists: int, n_keys: int, seed: int):
    """(an access over n_lists fresh lists, the lists, their compensation zsets, each key's parts); dropped after."""
    keys = [f"k{i}" for i in range(n_keys)]
    try:
        names, comps, truth = _lists(client, n_lists, keys, random.Random(seed))
        yield HotRankedAccess(client, names, -1e3, comps=comps, bounds=[1e-13] * len(names)), names, comps, truth
    finally:
        _drop(client)


def test_many_small_lists_are_read_whole_once_and_give_the_same_parts(redis_client):
    with _built(redis_client, 1500, 300, 5) as (access, names, comps, truth):
        keys = list(truth)
        zmscore, zrange = _calls(redis_client, "zmscore"), _calls(redis_client, "zrange")
        got = {}
        for i in range(0, len(keys), 20):  # as the threshold algorithm looks keys up: 20 at a time
            chunk = keys[i:i + 20] + ["absent"]
            parts = access.exact_parts(chunk)
            for k, col in zip(chunk, parts.T):
                got[k] = sorted(x for x in col.tolist() if x != 0.0)
        assert _calls(redis_client, "zmscore") == zmscore  # no lookup per list per call
        assert _calls(redis_client, "zrange") - zrange == len(names) + sum(1 for c in comps if c)  # each read once
        assert got["absent"] == []
        for k in keys:
            assert got[k] == sorted(x for x in truth[k] if x != 0.0), k
        # the totals equal the per-list lookups' (the ZMSCORE path, forced)
        lookups = HotRankedAccess(redis_client, names, -1e3, comps=comps, bounds=[1e-13] * len(names))
        old = hot_ranked.FULL_READ_LOOKUPS
        hot_ranked.FULL_READ_LOOKUPS = math.inf
        try:
            want = column_fsum(lookups.exact_parts(keys[:40]))
        finally:
            hot_ranked.FULL_READ_LOOKUPS = old
        assert np.array_equal(column_fsum(access.exact_parts(keys[:40])), want)
        assert np.array_equal(want, np.array([math.fsum(truth[k]) for k in keys[:40]]))


def test_few_lists_keep_the_lookups(redis_client):
    with _built(redis_client, 12, 50, 6) as (access, _, _, truth):
        zrange = _calls(redis_client, "zrange")
        total = column_fsum(access.exact_parts(list(truth)))
        assert _calls(redis_client, "zrange") == zrange and access._whole is None
        assert np.array_equal(total, np.array([math.fsum(v) for v in truth.values()]))
