"""Top-K and rank through HTTP over data in all four tiers, as the jobs leave it: top-K reads the
archive's value-sorted lists in S3 (tiers/archive_ranked.py), rank reads sorted access down to
the key's value (router/rank_ta.py); every answer against the raw-event oracle, keys at many
ranks with ties and neighbours, absent keys, negative values (the merge answers)."""
from __future__ import annotations

import random

import pytest

from rollups.cover import cover
from rollups.partials import merge_partials
from rollups.timeutil import DAY_MS, MINUTE_MS, TimeRange, now_ms, parse_time
from rollups.topk import top_k
from tests.api_support import (ApiServer, Oracle, check_rank, check_topk, isolated_settings, run_jobs, served,
                               unique_stream)

KEYS = [f"k{i:03d}" for i in range(120)] + ["é", "Z", "a b"]
WEIGHTS = [1 / (i + 1) for i in range(len(KEYS))]
VALUES = [1.0, 2.0, 0.5, 3.0, 10.0]
DAYS = 430


@pytest.fixture(scope="module")
def env(settings):
    # per-day archive partitions: the archive's value-sorted lists are checked (packs carry none)
    isolated = isolated_settings(settings, "archive_rank", redis_db=26).model_copy(update={"archive_pack_below": 0})
    for api in served(isolated):
        yield api, isolated


def _send(api: ApiServer, oracle: Oracle, events: list[dict], size: int = 2500) -> None:
    for pos in range(0, len(events), size):
        batch = events[pos:pos + size]
        r = api.post("/v1/events", json=batch)
        assert r.status_code == 202, r.text
        oracle.add(batch)


def _events(rnd, stream, lo, hi, n, values=VALUES):
    keys = rnd.choices(KEYS, WEIGHTS, k=n)
    return [{"stream": stream, "key": k, "ts": rnd.randrange(lo, hi), "value": rnd.choice(values)} for k in keys]


@pytest.fixture(scope="module")
def loaded(env):
    api, isolated = env
    rnd = random.Random(1010)
    stream, negative = unique_stream("rk"), unique_stream("rkneg")
    now = now_ms()
    lo, hi = now - DAYS * DAY_MS, now - now % MINUTE_MS - MINUTE_MS
    oracle, neg_oracle = Oracle(), Oracle()
    _send(api, oracle, _events(rnd, stream, lo, hi, 9000))
    _send(api, neg_oracle, _events(rnd, negative, lo, hi, 2000, values=[1.0, -2.0, 0.5]))
    run_jobs(api, ("flush", "refresh", "expire_hot", "export_cold", "archive"), now, timeout_s=900)
    b = {k: parse_time(v) for k, v in api.get("/v1/tiers").json()["boundaries"].items()}
    assert lo < b["archive"] < b["cold"] < b["warm"] < hi, b
    body = api.get("/v1/query/topk", {"stream": stream, "from": lo, "to": hi, "explain": 1}).json()
    assert {s["tier"] for s in body["meta"]["segments"]} == {"archive", "cold", "warm", "hot"}
    return stream, negative, oracle, neg_oracle, lo, hi, b


def _ranges(rnd, lo, hi, b, n):
    out = [(lo, hi), (lo, b["archive"] - 5 * DAY_MS), (lo + 3 * DAY_MS + 7 * MINUTE_MS, b["cold"] + DAY_MS),
           (b["archive"] - 40 * DAY_MS, hi)]
    while len(out) < n:
        a, c = sorted(rnd.randrange(lo, hi) for _ in range(2))
        out.append((a, max(c, a + MINUTE_MS)))
    return [(a - a % MINUTE_MS, c - c % MINUTE_MS + MINUTE_MS) for a, c in out]


def test_topk_through_the_archive_lists_is_exact(env, loaded):
    api, _ = env
    stream, _, oracle, _, lo, hi, b = loaded
    rnd = random.Random(7)
    for start, end in _ranges(rnd, lo, hi, b, 10):
        for by in ("count", "sum"):
            check_topk(api, oracle, stream, start, end, rnd.choice([1, 5, 30, 200]), by)
    body = api.get("/v1/query/topk", {"stream": stream, "from": lo, "to": hi, "k": 10, "by": "sum"}).json()
    assert body["meta"]["ranking"]["method"] == "threshold", body["meta"]


def test_archive_top_k_reads_its_sorted_lists(env, loaded):
    from tiers.archive import ArchiveTier

    api, isolated = env
    stream, _, oracle, _, lo, hi, b = loaded
    tier = ArchiveTier(isolated)
    try:
        pieces = cover(TimeRange(lo - lo % DAY_MS + DAY_MS, b["archive"]), tier.granularities)
        merged = merge_partials([tier.aggregate("default", stream, pieces, "key")], "key")
        assert merged.num_rows > 50
        for by in ("count", "sum"):
            stats: dict = {}
            got = tier.top_k("default", stream, pieces, 10, by, stats=stats)
            assert got == top_k(merged, 10, by)
            assert stats["method"] == "tput" and stats["lists"] > 0, stats
    finally:
        tier.close()


@pytest.mark.parametrize("threshold", [True, False])
def test_rank_at_every_depth_is_exact(env, loaded, threshold, monkeypatch):
    """By default every rank is the merge of every tier's key and value columns
    (router/rank_merge.py); with rank_ta.THRESHOLD on, sorted access answers most of them."""
    from router import rank_ta

    monkeypatch.setattr(rank_ta, "THRESHOLD", threshold)
    api, _ = env
    stream, _, oracle, _, lo, hi, b = loaded
    rnd = random.Random(11 if threshold else 12)
    methods, fresh = [], []
    for start, end in _ranges(rnd, lo, hi, b, 8):
        for by in ("count", "sum"):
            rng = TimeRange(start, end)
            ordered = [k for k, _ in oracle.ordered(rng, by)]
            picks = {ordered[i] for i in (0, 1, 4, 20, len(ordered) // 2, len(ordered) - 1) if i < len(ordered)}
            for key in sorted(picks) + ["absent"]:
                around = rnd.choice([0, 1, 3])
                check_rank(api, oracle, stream, start, end, key, by, around)
                body = api.get("/v1/query/rank", {"stream": stream, "from": start, "to": end, "key": key,
                                                  "by": by}).json()
                methods.append(body["meta"].get("ranking", {}).get("method"))
                if not body["meta"].get("ranking", {}).get("cached"):  # the other run may have cached it
                    fresh.append(methods[-1])
    if threshold:
        assert methods.count("threshold") > len(methods) // 2, methods
    else:
        assert fresh and set(fresh) == {"merge"}, fresh


def test_negative_values_fall_back_to_the_merge(env, loaded):
    api, _ = env
    _, negative, _, neg_oracle, lo, hi, b = loaded
    for key in ("k000", "k005", "absent"):
        check_rank(api, neg_oracle, negative, lo, hi, key, "sum", 2)
        body = api.get("/v1/query/rank", {"stream": negative, "from": lo, "to": hi, "key": key, "by": "sum"}).json()
        assert body["meta"]["ranking"]["method"] == "merge", body["meta"]
        check_rank(api, neg_oracle, negative, lo, hi, key, "count", 2)
    check_topk(api, neg_oracle, negative, lo, hi, 10, "sum")
