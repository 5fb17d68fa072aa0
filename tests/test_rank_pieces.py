"""The rank merged on key ids with each immutable piece cached in-process (router/rank_pieces.py),
through HTTP on real Redis, PostgreSQL and S3, the whole-answer results cache off: every answer
equals the raw-event oracle across all four tiers (keys at many ranks, ties, neighbours, absent
keys, hot-only keys without a dictionary id, negative sums), a repeated rank reads its closed
pieces from the cache, and a late event into a cached warm bucket or a cached hot hour changes the
next answer (the piece's data version changed: the stale column is never served)."""
from __future__ import annotations

import random
import time

import numpy as np
import pyarrow as pa
import pytest

from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS, now_ms, parse_time
from tests.api_support import (ApiServer, Oracle, check_rank, check_topk, isolated_settings, query_range, run_jobs, served,
                               unique_stream)

KEYS = [f"k{i:03d}" for i in range(80)] + ["é", "Z", "a b"]
WEIGHTS = [1 / (i + 1) for i in range(len(KEYS))]
VALUES = [1.0, 2.0, 0.5, 3.0]
DAYS = 430


@pytest.fixture(scope="module")
def env_settings(settings):
    isolated = isolated_settings(settings, "rank_pieces", redis_db=67)
    return isolated.model_copy(update={"results_cache_entries": 0, "results_cache_ttl": 0})


@pytest.fixture(scope="module")
def env(env_settings):
    for api in served(env_settings):
        yield api


def _send(api: ApiServer, oracle: Oracle, events: list[dict]) -> None:
    for pos in range(0, len(events), 2500):
        batch = events[pos:pos + 2500]
        r = api.post("/v1/events", json=batch)
        assert r.status_code == 202, r.text
        oracle.add(batch)


def _events(rnd, stream, lo, hi, n, values=VALUES, keys=KEYS):
    chosen = rnd.choices(keys, WEIGHTS[:len(keys)], k=n)
    return [{"stream": stream, "key": k, "ts": rnd.randrange(lo, hi), "value": rnd.choice(values)} for k in chosen]


@pytest.fixture(scope="module")
def loaded(env):
    api = env
    rnd = random.Random(6767)
    stream, negative = unique_stream("rp"), unique_stream("rpneg")
    now = now_ms()
    lo, hi = now - DAYS * DAY_MS, now - now % MINUTE_MS - 20 * MINUTE_MS
    oracle, neg_oracle = Oracle(), Oracle()
    _send(api, oracle, _events(rnd, stream, lo, hi, 8000))
    _send(api, neg_oracle, _events(rnd, negative, lo, hi, 2000, values=[1.0, -2.0, 0.5]))
    run_jobs(api, ("flush", "refresh", "expire_hot", "export_cold", "archive"), now, timeout_s=900)
    # keys only the hot tier holds, never flushed: no id in the shared dictionary
    fresh = [{"stream": stream, "key": f"fresh{i}", "ts": hi - rnd.randrange(1, 50) * MINUTE_MS,
              "value": float(i + 1)} for i in range(6)]
    _send(api, oracle, fresh * 3)
    b = {k: parse_time(v) for k, v in api.get("/v1/tiers").json()["boundaries"].items()}
    assert lo < b["archive"] < b["cold"] < b["warm"] < hi, b
    return stream, negative, oracle, neg_oracle, lo, hi, b


def _rank(api, stream, start, end, key, by, around=0) -> dict:
    r = api.get("/v1/query/rank", {"stream": stream, "from": start, "to": end, "key": key, "by": by,
                                   "around": around})
    assert r.status_code == 200, r.text
    return r.json()


def test_ranks_across_four_tiers_equal_the_oracle(env, loaded):
    api = env
    stream, _, oracle, _, lo, hi, b = loaded
    rnd = random.Random(3)
    ranges = [(lo, hi + 20 * MINUTE_MS), (b["archive"] - 30 * DAY_MS, hi), (lo + 7 * MINUTE_MS, b["warm"] + HOUR_MS),
              (b["warm"] + 7 * MINUTE_MS, hi + 20 * MINUTE_MS)]  # the last: hot alone
    for start, end in ranges:
        start, end = start - start % MINUTE_MS, end - end % MINUTE_MS + MINUTE_MS
        body = _rank(api, stream, start, end, "k001", "count")
        assert body["meta"]["ranking"]["method"] == "merge"
        for by in ("count", "sum"):
            for key in rnd.sample(KEYS, 8) + ["fresh0", "fresh5", "absent-key"]:
                for around in (0, 2):
                    check_rank(api, oracle, stream, start, end, key, by, around)


def test_negative_sums_equal_the_oracle(env, loaded):
    api = env
    _, negative, _, neg_oracle, lo, hi, _ = loaded
    for key in ("k000", "k003", "k040", "é"):
        for around in (0, 1):
            check_rank(api, neg_oracle, negative, lo - lo % MINUTE_MS, hi + MINUTE_MS, key, "sum", around)


def test_a_repeated_rank_reads_its_closed_pieces_from_the_cache(env, loaded):
    api = env
    stream, _, oracle, _, lo, hi, b = loaded
    start, end = lo - lo % MINUTE_MS, hi - hi % MINUTE_MS
    _rank(api, stream, start, end, "k002", "count")
    body = _rank(api, stream, start, end, "k010", "count")
    ranking, segments = body["meta"]["ranking"], body["meta"]["segments"]
    assert ranking["method"] == "merge" and ranking["cached"] is False
    # every piece but the open edge from the piece cache (took_ms 0); no segment says cached
    assert ranking["pieces_cached"] >= len(segments) - 2, body["meta"]
    assert {s["tier"] for s in segments if s["took_ms"] == 0} >= {"archive", "cold", "warm"}, segments
    assert not any(s["cached"] for s in segments)
    check_rank(api, oracle, stream, start, end, "k010", "count", 0)


def _late_case(api, oracle, stream, start, end, ts) -> None:
    """Rank of a low key over [start, end) twice (its pieces cached), then events for it at `ts`:
    the next rank is the oracle's, and higher."""
    ordered = oracle.ordered(query_range(start, end), "count")
    key, _ = ordered[len(ordered) // 2]
    before = _rank(api, stream, start, end, key, "count")
    again = _rank(api, stream, start, end, key, "count")
    assert again["rank"] == before["rank"]
    assert again["meta"]["ranking"]["pieces_cached"] > 0, again["meta"]
    _send(api, oracle, [{"stream": stream, "key": key, "ts": ts, "value": 1.0}] * 40)
    run_jobs(api, ("flush", "refresh"), timeout_s=300)
    after = _rank(api, stream, start, end, key, "count")
    assert after["rank"] is not None and after["rank"] < before["rank"] and after["value"] == before["value"] + 40, (before, after)
    check_rank(api, oracle, stream, start, end, key, "count", 2)


def test_a_late_event_into_a_cached_warm_bucket_changes_the_rank(env, loaded):
    api = env
    stream, _, oracle, _, lo, hi, b = loaded
    start = b["cold"] - b["cold"] % DAY_MS - 5 * DAY_MS  # cold and warm: the router merges
    end = b["warm"] - b["warm"] % MINUTE_MS
    assert end - b["cold"] > 3 * DAY_MS
    _late_case(api, oracle, stream, start, end, b["cold"] - b["cold"] % DAY_MS + 2 * DAY_MS + 5 * HOUR_MS + 17)


def test_a_late_event_into_a_cached_hot_hour_changes_the_rank(env, loaded):
    api = env
    stream, _, oracle, _, lo, hi, b = loaded
    start = b["warm"] - b["warm"] % DAY_MS - 2 * DAY_MS  # warm and hot: the router merges
    first = b["warm"] - b["warm"] % HOUR_MS + HOUR_MS  # a whole hot hour
    end = hi - hi % HOUR_MS - HOUR_MS
    assert end - first >= 2 * HOUR_MS, (first, end)
    _late_case(api, oracle, stream, start, end, first + 30 * MINUTE_MS)


def test_a_late_event_into_a_cached_hour_of_a_hot_only_range_changes_the_rank(env, loaded):
    api = env
    stream, _, oracle, _, lo, hi, b = loaded
    start = b["warm"] - b["warm"] % HOUR_MS + HOUR_MS  # hot alone: merged on ids, not ranked in Redis
    end = hi - hi % HOUR_MS - HOUR_MS
    assert end - start >= 2 * HOUR_MS, (start, end)
    assert {s["tier"] for s in _rank(api, stream, start, end, "k000", "count")["meta"]["segments"]} == {"hot"}
    _late_case(api, oracle, stream, start, end, start + HOUR_MS + 10 * MINUTE_MS)


def test_closed_hot_hours_are_read_and_cached_one_hour_at_a_time(env, loaded):
    """A hot-only range of several closed hours: each hour is its own cached read (no union of the
    hours in one Redis script), so a repeat and a range shifted by an hour reuse the hours."""
    api = env
    stream, _, oracle, _, lo, hi, b = loaded
    start = b["warm"] - b["warm"] % HOUR_MS + HOUR_MS
    end = hi - hi % HOUR_MS - HOUR_MS
    hours = (end - start) // HOUR_MS
    assert hours >= 3, (start, end)
    first = _rank(api, stream, start, end, "k001", "count")
    assert [s["granularity"] for s in first["meta"]["segments"]] == ["1h"]  # one piece in meta
    again = _rank(api, stream, start, end, "k002", "count")
    assert again["meta"]["ranking"]["pieces_cached"] == hours, again["meta"]  # one entry per hour
    shifted = _rank(api, stream, start + HOUR_MS, end, "k003", "count")
    assert shifted["meta"]["ranking"]["pieces_cached"] == hours - 1, shifted["meta"]
    for key, s in (("k001", start), ("k002", start), ("k003", start + HOUR_MS)):
        check_rank(api, oracle, stream, s, end, key, "count", 0)


def test_per_bucket_cuts_the_closed_hours_of_multi_hour_hot_pieces():
    from rollups.cover import Piece
    from rollups.timeutil import G1H, G1M, TimeRange
    from router.planner import Plan, PlannedPiece
    from router.piece_buckets import per_bucket
    from router.rank_pieces import CLOSED_MS

    now = 100 * HOUR_MS
    pieces = [PlannedPiece("warm", Piece(G1H, TimeRange(0, 3 * HOUR_MS))),
              PlannedPiece("hot", Piece(G1M, TimeRange(3 * HOUR_MS - 5 * MINUTE_MS, 3 * HOUR_MS))),
              PlannedPiece("hot", Piece(G1H, TimeRange(3 * HOUR_MS, 6 * HOUR_MS))),
              PlannedPiece("hot", Piece(G1H, TimeRange(now - HOUR_MS - CLOSED_MS // 2, now)))]
    plan = Plan(spec=None, snapshot=None, pieces=pieces)
    cut, origin = per_bucket(plan, now, CLOSED_MS)
    assert origin == [0, 1, 2, 2, 2, 3]
    assert [(p.tier, p.piece.range.start // HOUR_MS) for p in cut.pieces[2:5]] == [("hot", 3), ("hot", 4), ("hot", 5)]
    assert cut.pieces[5] is pieces[3]  # not aligned on hours: one read
    # a window ending within CLOSED_MS of now: its closed hours cut, the last (not closed) one read apart
    window = [PlannedPiece("hot", Piece(G1H, TimeRange(95 * HOUR_MS, 100 * HOUR_MS)))]
    cut, origin = per_bucket(Plan(spec=None, snapshot=None, pieces=window), now + CLOSED_MS // 2, CLOSED_MS)
    assert origin == [0] * 5
    assert [(p.piece.range.start // HOUR_MS, p.piece.range.end // HOUR_MS) for p in cut.pieces] == [
        (95, 96), (96, 97), (97, 98), (98, 99), (99, 100)]
    cut, _ = per_bucket(Plan(spec=None, snapshot=None, pieces=window), 99 * HOUR_MS + 30 * MINUTE_MS, CLOSED_MS)
    assert [(p.piece.range.start // HOUR_MS, p.piece.range.end // HOUR_MS) for p in cut.pieces] == [
        (95, 96), (96, 97), (97, 98), (98, 99), (99, 100)]
    cut, _ = per_bucket(Plan(spec=None, snapshot=None, pieces=window), 97 * HOUR_MS + CLOSED_MS // 2, CLOSED_MS)
    assert [(p.piece.range.start // HOUR_MS, p.piece.range.end // HOUR_MS) for p in cut.pieces] == [
        (95, 96), (96, 100)]  # 96-97 ended less than CLOSED_MS ago: with the rest, one read
    same, _ = per_bucket(Plan(spec=None, snapshot=None, pieces=pieces[:2]), now, CLOSED_MS)
    assert same.pieces == pieces[:2]


def test_per_bucket_reads_a_closed_hot_day_as_its_hours():
    """A closed hot day (not folded by compaction, a day read is the union of its hours in one
    script: seconds at 1M keys) is read as 24 hour pieces; warm's days are not, and a hot day not
    closed yet is cut into its closed hours and the rest."""
    from rollups.cover import Piece
    from rollups.timeutil import DAY_MS, G1D, G1H, TimeRange
    from router.planner import Plan, PlannedPiece
    from router.piece_buckets import per_bucket
    from router.rank_pieces import CLOSED_MS

    now = 10 * DAY_MS + 5 * HOUR_MS
    pieces = [PlannedPiece("warm", Piece(G1D, TimeRange(0, 9 * DAY_MS))),
              PlannedPiece("hot", Piece(G1D, TimeRange(9 * DAY_MS, 10 * DAY_MS))),
              PlannedPiece("hot", Piece(G1H, TimeRange(10 * DAY_MS, 10 * DAY_MS + 4 * HOUR_MS)))]
    cut, origin = per_bucket(Plan(spec=None, snapshot=None, pieces=pieces), now, CLOSED_MS)
    assert cut.pieces[0] is pieces[0]
    assert origin == [0] + [1] * 24 + [2] * 4
    day = cut.pieces[1:25]
    assert all(p.tier == "hot" and p.piece.granularity == G1H for p in day)
    assert [p.piece.range.start for p in day] == [9 * DAY_MS + h * HOUR_MS for h in range(24)]
    assert day[-1].piece.range.end == 10 * DAY_MS
    open_day = [PlannedPiece("hot", Piece(G1D, TimeRange(10 * DAY_MS, 11 * DAY_MS)))]
    cut, _ = per_bucket(Plan(spec=None, snapshot=None, pieces=open_day), 11 * DAY_MS - HOUR_MS, CLOSED_MS)
    assert [(p.piece.granularity, p.piece.range.start, p.piece.range.end) for p in cut.pieces] == [
        (G1H, 10 * DAY_MS + h * HOUR_MS, 10 * DAY_MS + (h + 1) * HOUR_MS) for h in range(22)] + [
        (G1H, 10 * DAY_MS + 22 * HOUR_MS, 11 * DAY_MS)]  # its closed hours, then the rest in one read
    same, _ = per_bucket(Plan(spec=None, snapshot=None, pieces=open_day), 10 * DAY_MS + HOUR_MS, CLOSED_MS)
    assert same.pieces == open_day  # no hour closed yet


def _topk(api, stream, start, end, k, by) -> dict:
    r = api.get("/v1/query/topk", {"stream": stream, "from": start, "to": end, "k": k, "by": by})
    assert r.status_code == 200, r.text
    return r.json()


def test_topk_by_sum_with_negative_values_equals_the_oracle(env, loaded):
    """Negative values: the threshold algorithm runs with each list's bound clamped at 0
    (rollups/threshold.py) and proves every top k whose k-th total is positive (the id merge,
    rank_pieces.fast_top_k, takes a negative one unless TA read its lists whole); across all four tiers, cold + warm and hot alone, for k below, at and above the
    number of keys (whole tied groups at the k-th place), both equal the oracle."""
    api = env
    _, negative, _, neg_oracle, lo, hi, b = loaded
    ranges = [(lo - lo % MINUTE_MS, hi + MINUTE_MS), (b["cold"] - 9 * DAY_MS, b["warm"]),
              (b["warm"] + 7 * MINUTE_MS, hi + MINUTE_MS)]
    methods = []
    for start, end in ranges:
        start, end = start - start % MINUTE_MS, end - end % MINUTE_MS
        for k in (1, 7, 30, 200):
            check_topk(api, neg_oracle, negative, start, end, k, "sum")
            body = _topk(api, negative, start, end, k, "sum")
            kth = body["items"][min(k, len(body["items"])) - 1]["value"] if body["items"] else None
            methods.append((k, kth, body["meta"]["ranking"]["method"]))
    # a negative k-th total may still be proven by TA when its lists are short enough to read whole
    assert {m for _, _, m in methods} <= {"threshold", "merge"}, methods
    assert all(m == "threshold" for _, kth, m in methods if kth is not None and kth > 0), methods


def test_topk_fallback_orders_near_equal_sums_as_one_group(env):
    """0.7 + 0.1 (0.7999999999999999) and 0.8 are equal for ordering (API.md): with a negative value
    in the stream the top 2 is [top, a], a before b by key, although b's sum is larger by one ulp —
    the k-th value's group extends below it; by the threshold algorithm (k-th total positive) and
    by the id merge (k-th total negative) alike."""
    api = env
    stream = unique_stream("rpnear")
    ts = now_ms() - 30 * MINUTE_MS
    events = [("top", 2.0), ("a", 0.7), ("a", 0.1), ("b", 0.8), ("neg", -5.0), ("z", 0.25)]
    r = api.post("/v1/events", json=[{"stream": stream, "key": k, "ts": ts + i, "value": v} for i, (k, v) in enumerate(events)])
    assert r.status_code == 202, r.text
    start, end = ts - ts % MINUTE_MS - HOUR_MS, ts - ts % MINUTE_MS + 2 * MINUTE_MS
    body = _topk(api, stream, start, end, 2, "sum")
    assert [i["key"] for i in body["items"]] == ["top", "a"], body["items"]
    assert body["meta"]["ranking"]["method"] == "threshold", body["meta"]
    full = _topk(api, stream, start, end, 10, "sum")
    assert [i["key"] for i in full["items"]] == ["top", "a", "b", "z", "neg"], full["items"]
    # the same group below zero, with more keys than TA's first chunk: the k-th total is negative,
    # so the id merge answers
    signed = unique_stream("rpnearneg")
    events = [("top", 2.0), ("a", -0.7), ("a", -0.1), ("b", -0.8)] + [(f"z{i:02d}", -5.0) for i in range(40)]
    r = api.post("/v1/events", json=[{"stream": signed, "key": k, "ts": ts + i, "value": v} for i, (k, v) in enumerate(events)])
    assert r.status_code == 202, r.text
    body = _topk(api, signed, start, end, 2, "sum")
    assert [i["key"] for i in body["items"]] == ["top", "a"], body["items"]  # -0.7999999999999999 ties -0.8
    assert body["meta"]["ranking"]["method"] == "merge", body["meta"]


def test_cancelling_sums_across_the_cached_closed_merge_and_an_open_edge(env):
    """x gets 1e15 and 0.1 in two closed hot hours (their merge cached as Neumaier's sum and
    compensation, router/rank_pieces._closed_merged) and -1e15 in the open minute: x is 0.1 below
    y's 0.11 on the first ask and on the next, which takes the cached merge (a merge cached as one
    float per key would say 0.125, above y)."""
    api = env
    stream = unique_stream("rpcancel")
    now = now_ms()
    hour = now - now % HOUR_MS
    events = [{"stream": stream, "key": "x", "ts": hour - 3 * HOUR_MS + 5 * MINUTE_MS, "value": 1e15},
              {"stream": stream, "key": "x", "ts": hour - 2 * HOUR_MS + 5 * MINUTE_MS, "value": 0.1},
              {"stream": stream, "key": "y", "ts": hour - 2 * HOUR_MS + 6 * MINUTE_MS, "value": 0.11},
              {"stream": stream, "key": "z", "ts": hour - 3 * HOUR_MS + 6 * MINUTE_MS, "value": 0.2},
              {"stream": stream, "key": "x", "ts": now - 1000, "value": -1e15}]
    r = api.post("/v1/events", json=events)
    assert r.status_code == 202, r.text
    run_jobs(api, ("flush",), timeout_s=300)  # the keys get dictionary ids: their hours merge on ids
    start, end = hour - 4 * HOUR_MS, now - now % MINUTE_MS + MINUTE_MS
    for ask in range(3):
        body = _rank(api, stream, start, end, "x", "sum", around=1)
        assert (body["rank"], body["value"], body["total_keys"]) == (3, 0.1, 3), (ask, body)
        assert [(n["key"], n["value"]) for n in body["around"]] == [("y", 0.11), ("x", 0.1)]
        if ask:
            assert body["meta"]["ranking"]["pieces_cached"] >= 2, body["meta"]


def test_a_first_rank_loads_the_key_dictionary_while_it_reads_its_pieces(env, loaded, monkeypatch):
    """The stream's dictionary (router/key_dictionary.py: a COPY, ~0.45 s at 500k keys) is loaded
    on a background thread started before the pieces are read, not in the request after them; the
    answers equal the oracle."""
    import threading

    from router import key_dictionary

    api = env
    _, _, _, _, _, hi, b = loaded
    start = b["warm"] - b["warm"] % HOUR_MS + HOUR_MS
    end = hi - hi % HOUR_MS - HOUR_MS
    assert (end - start) // HOUR_MS >= 2, (start, end)
    stream = unique_stream("rpdict")  # its dictionary not loaded in this process yet
    oracle = Oracle()
    rnd = random.Random(6969)
    many = [f"d{i:04d}" for i in range(2500)]  # more strings than key_dictionary's few-lookups path
    _send(api, oracle, [{"stream": stream, "key": rnd.choice(many), "ts": rnd.randrange(start, end),
                         "value": rnd.choice(VALUES)} for _ in range(6000)])
    run_jobs(api, ("flush",))  # the keys get their shared ids; the hours stay hot
    loads = []
    real = key_dictionary._copy

    def spy(*args, **kwargs):
        loads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(key_dictionary, "_copy", spy)
    first = _rank(api, stream, start, end, "d0001", "count")
    assert first["meta"]["segments"][0]["tier"] == "hot", first["meta"]
    assert loads == ["key-dictionary"], loads
    for key in ("d0001", "d0000", "d2499", "absent"):
        check_rank(api, oracle, stream, start, end, key, "count", 1)
        check_rank(api, oracle, stream, start, end, key, "sum", 0)


def test_the_dictionary_maps_a_few_strings_by_scan_as_many_by_hash():
    from router.key_dictionary import FEW_SCANS, StreamDictionary

    keys = [f"k{i}" for i in range(0, 400, 2)]
    d = StreamDictionary(np.arange(1000, 1000 + len(keys), dtype=np.int64), pa.array(keys))
    asked = ["k8", "absent", None, "k398", "k9"]
    few = d.ids_of(pa.array(asked[:FEW_SCANS], pa.string()))
    many = d.ids_of(pa.array(asked * 20, pa.string()))  # the hash path (more than FEW_SCANS strings)
    want = [1004, -1, -1, 1199, -1][:FEW_SCANS]
    assert few.tolist() == want and many[:FEW_SCANS].tolist() == want
    assert d.ids_of(pa.array(["k0"])).tolist() == [1000] and d.ids_of(pa.array([], pa.string())).tolist() == []


def test_small_streams_rank_top_k_by_the_id_merge(env_settings, loaded):
    """The default topk_merge_keys (8192; the suite runs with 0): a stream with at most that many
    keys in its dictionary (loaded by the first top-K or a rank) ranks its top-K by the id merge (meta.ranking method
    "merge" with the dictionary's size as "keys"; a count inside one tier stays in place) — across
    all four tiers and inside one, by count
    and by sum, positive and negative sums, equal to the oracle; a repeat takes its closed pieces
    from the piece cache. With the setting off, the same asks go to the threshold algorithm."""
    stream, negative, oracle, neg_oracle, lo, hi, b = loaded
    start, end = lo - lo % MINUTE_MS, hi + MINUTE_MS
    ranges = [(start, end), (b["cold"] - 9 * DAY_MS, b["warm"]), (b["warm"] + 7 * MINUTE_MS, end)]
    for api in served(env_settings.model_copy(update={"topk_merge_keys": 8192}), migrate=False):
        for name in (stream, negative):
            _rank(api, name, start, end, KEYS[0], "count")  # loads the dictionary (in the background)
            deadline = time.monotonic() + 30
            while _topk(api, name, start, end, 3, "count")["meta"]["ranking"]["method"] != "merge":
                assert time.monotonic() < deadline, "the key dictionary did not load"
                time.sleep(0.2)
        for name, orc in ((stream, oracle), (negative, neg_oracle)):
            for a, z in ranges:
                a, z = a - a % MINUTE_MS, z - z % MINUTE_MS
                for by in ("count", "sum"):
                    for k in (1, 10):
                        check_topk(api, orc, name, a, z, k, by)
                        ranking = _topk(api, name, a, z, k, by)["meta"]["ranking"]
                        if ranking["method"] != "in_place":  # one tier by count answers in place
                            assert ranking["method"] == "merge" and ranking["keys"] >= 1, ranking
        again = _topk(api, stream, start, end, 10, "sum")["meta"]["ranking"]
        assert again["pieces_cached"] > 0, again
    for api in served(env_settings, migrate=False):  # topk_merge_keys 0: the threshold algorithm
        _rank(api, stream, start, end, KEYS[0], "count")
        time.sleep(1)
        assert _topk(api, stream, start, end, 10, "sum")["meta"]["ranking"]["method"] == "threshold"
