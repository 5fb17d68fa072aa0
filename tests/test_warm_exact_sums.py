"""Exact sums in the warm tier, postgres mode (issue 10 item 5; tiers/warm_pairs.py): values sent to
one key apart — 1e15, 0.1, -1e15 in separate flushes and refreshes — sum to 0.1, not 0.125, in
the per-key aggregate, the series by bucket and the stream totals, top-K, rank, key_values and
random access, through every granularity (1m, 1h, 1d, raw edges) and after a delete recomputes
the buckets from raw. Real PostgreSQL; each test fails with float sums."""
from __future__ import annotations

import math

import pyarrow as pa
import pytest

from rollups.cover import Piece, cover
from rollups.partials import merge_partials
from rollups.timeutil import G1D, G1H, G1M, HOUR_MS, MINUTE_MS, RAW, TimeRange
from tests.warm_support import migrated_database
from tiers import warm_pairs
from tiers.base import EVENT_SCHEMA
from tiers.warm import WarmTier

DAY0 = 1_262_304_000_000  # 2010-01-01T00:00:00Z
DAY = TimeRange(DAY0, DAY0 + 24 * HOUR_MS)
T = DAY0 + 5 * HOUR_MS  # an hour of the day


@pytest.fixture(scope="module")
def warm(pg_url):
    tier = WarmTier(migrated_database(pg_url, "postgres", "_exact"), mode="postgres")
    yield tier
    tier.close()


_n = iter(range(10**6))


def tenant() -> str:
    return f"exact{next(_n)}"


def write(warm, tenant: str, rows: list[tuple[str, int, float]], stream: str = "s") -> None:
    """One insert and refresh of rows (key, ts, value)."""
    warm.write(tenant, pa.table({"stream": [stream] * len(rows), "key": [r[0] for r in rows],
                                 "ts": [r[1] for r in rows], "value": [float(r[2]) for r in rows],
                                 "id": [None] * len(rows)}, schema=EVENT_SCHEMA))


def sums(t: pa.Table, group: str) -> dict:
    merged = merge_partials([t], group)
    return {r[group]: r["sum"] + r.get("sum_lo", 0.0) for r in merged.to_pylist()}


# x's three values at: the same minute; minutes of one hour; hours of one day
LAYOUTS = {"minute": [T + 1000, T + 2000, T + 3000],
           "hour": [T + 2 * MINUTE_MS, T + 17 * MINUTE_MS, T + 41 * MINUTE_MS],
           "day": [T, T + 3 * HOUR_MS, T + 7 * HOUR_MS + 5 * MINUTE_MS]}
RANGES = {"the day (1d)": [Piece(G1D, DAY)],
          "hours (1h)": [Piece(G1H, TimeRange(T, T + 8 * HOUR_MS))],
          "a cover (raw, 1m, 1h edges)": cover(TimeRange(T - 7 * MINUTE_MS - 500, T + 8 * HOUR_MS + 3 * MINUTE_MS + 77),
                                               [RAW, G1M, G1H, G1D])}


@pytest.mark.parametrize("apart", [True, False], ids=["apart", "one_batch"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cancelling_values_sum_exactly_everywhere(warm, layout, apart):
    t = tenant()
    ts = LAYOUTS[layout]
    xs = [("x", ts[0], 1e15), ("x", ts[1], 0.1), ("x", ts[2], -1e15)]
    others = [("y", ts[0], 0.11), ("z", ts[1], 0.2)]
    if apart:
        for row in xs:
            write(warm, t, [row])
        write(warm, t, others)
    else:
        write(warm, t, xs + others)
    for name, pieces in RANGES.items():
        got = sums(warm.aggregate(t, "s", pieces, "key"), "key")
        assert got == {"x": 0.1, "y": 0.11, "z": 0.2}, name
        assert sums(warm.aggregate(t, "s", pieces, "key", key="x"), "key") == {"x": 0.1}, name
        hi = merge_partials([warm.aggregate(t, "s", pieces, "key")], "key").to_pylist()
        assert {r["key"]: r["sum"] for r in hi}["x"] == 0.1, name  # hi alone is the nearest float
        # series by bucket: the day's one point, for x and for the stream (totals)
        per_bucket = warm.aggregate(t, "s", [Piece(G1D, DAY)], "bucket", key="x")
        assert sums(per_bucket, "bucket") == {DAY0: 0.1}
        assert sums(warm.aggregate(t, "s", [Piece(G1D, DAY)], "bucket"), "bucket") == {DAY0: math.fsum([0.1, 0.11, 0.2])}
        top = warm.top_k(t, "s", pieces, 3, "sum")
        assert [(r.key, r.value) for r in top] == [("z", 0.2), ("y", 0.11), ("x", 0.1)], name
        r = warm.rank(t, "s", pieces, "x", "sum", around=1)
        assert (r.rank, r.value, r.total_keys) == (3, 0.1, 3), name
        kv = warm.key_values(t, "s", pieces, "sum").to_pydict()
        lows = kv.get("value_lo", [0.0] * len(kv["key"]))
        assert {k: v + lo for k, v, lo in zip(kv["key"], kv["value"], lows)}["x"] == 0.1, name
        access = warm.ranked_access(t, "s", pieces, "sum")
        try:
            assert access.exact(["x", "y", "w"]).tolist() == [0.1, 0.11, 0.0], name
        finally:
            access.close()


def test_minute_series_hold_each_value(warm):
    t = tenant()
    ts = LAYOUTS["hour"]
    for key, when, v in [("x", ts[0], 1e15), ("x", ts[1], 0.1), ("x", ts[2], -1e15)]:
        write(warm, t, [(key, when, v)])
    got = sums(warm.aggregate(t, "s", [Piece(G1M, TimeRange(T, T + HOUR_MS))], "bucket", key="x"), "bucket")
    assert got == {G1M.floor(ts[0]): 1e15, G1M.floor(ts[1]): 0.1, G1M.floor(ts[2]): -1e15}
    assert sums(warm.aggregate(t, "s", [Piece(G1H, TimeRange(T, T + HOUR_MS))], "bucket", key="x"), "bucket") == {T: 0.1}


@pytest.mark.parametrize("apart", [True, False], ids=["apart", "one_batch"])
def test_1e16_plus_1_minus_1e16_is_1(warm, apart):
    t = tenant()
    rows = [("k", T + 1, 1e16), ("k", T + MINUTE_MS, 1.0), ("k", T + HOUR_MS + 5, -1e16)]
    for batch in ([[r] for r in rows] if apart else [rows]):
        write(warm, t, batch)
    for pieces in RANGES.values():
        assert sums(warm.aggregate(t, "s", pieces, "key"), "key") == {"k": 1.0}
        assert [(r.key, r.value) for r in warm.top_k(t, "s", pieces, 1, "sum")] == [("k", 1.0)]


def test_a_float_rounding_tie_is_unchanged(warm):
    """a gets 0.7 then 0.1 apart, b 0.8: a's exact sum rounds to 0.7999999999999999 (= 0.7 + 0.1 in
    float, as before the pairs), so warm's in-place order (value desc, then key) stays b, a."""
    t = tenant()
    write(warm, t, [("b", T + MINUTE_MS, 0.8), ("a", T + MINUTE_MS, 0.7)])
    write(warm, t, [("a", T + 3 * HOUR_MS, 0.1)])
    pieces = [Piece(G1D, DAY)]
    assert sums(warm.aggregate(t, "s", pieces, "key"), "key") == {"a": 0.7 + 0.1, "b": 0.8}
    assert [(r.key, r.value) for r in warm.top_k(t, "s", pieces, 2, "sum")] == [("b", 0.8), ("a", 0.7 + 0.1)]
    assert warm.rank(t, "s", pieces, "a", "sum").rank == 2


def test_a_delete_recomputes_buckets_exactly(warm):
    """Deleting an event marks its minute dirty: refresh recomputes the minute from raw and the hour
    and day from the finer rollups, keeping the pairs (float sums give 0.125 again)."""
    t = tenant()
    for when, v in [(T + 1000, 1e15), (T + 2000, 0.1), (T + 3000, -1e15), (T + 4000, 0.3)]:
        write(warm, t, [("x", when, v)])
    write(warm, t, [("x", T + 20 * MINUTE_MS, 1e15), ("x", T + 2 * HOUR_MS, -1e15)])
    assert warm.delete_range(t, "s", TimeRange(T + 4000, T + 4001)) == 1
    for pieces in [*RANGES.values(), [Piece(G1M, TimeRange(T, T + MINUTE_MS))], [Piece(RAW, TimeRange(T, T + 5000))]]:
        assert sums(warm.aggregate(t, "s", pieces, "key"), "key") == {"x": 0.1}, pieces
    assert sums(warm.aggregate(t, "s", [Piece(G1D, DAY)], "bucket"), "bucket") == {DAY0: 0.1}
    assert [(r.key, r.value) for r in warm.top_k(t, "s", [Piece(G1D, DAY)], 1, "sum")] == [("x", 0.1)]


def test_integer_streams_keep_no_low_parts(warm):
    """Values on the grid (integers, halves) sum plainly: no sum_lo column, no value_lo, and the
    stream is not marked off the grid (its reads run the plain statements); a decimal marks it."""
    t = tenant()
    for i in range(5):
        write(warm, t, [(f"k{j}", T + i * HOUR_MS + j, float(j * 3 + i) / 2) for j in range(4)])
    part = warm.aggregate(t, "s", [Piece(G1D, DAY)], "key")
    assert "sum_lo" not in part.column_names
    assert "value_lo" not in warm.key_values(t, "s", [Piece(G1D, DAY)], "sum").column_names
    with warm.pool.connection() as conn:
        sid = warm.keys.stream_id(t, "s")
        assert conn.execute("SELECT count(*) FROM rollup_1h WHERE stream_id = %s AND sum_lo <> 0", (sid,)).fetchone()[0] == 0
        assert not warm_pairs.needs_pairs(warm, conn, sid)
    write(warm, t, [("k0", T, 0.1)])
    with warm.pool.connection() as conn:
        assert warm_pairs.needs_pairs(warm, conn, sid)


# ---- through the API: late events (warm owns their time), each flushed and refreshed apart ------

@pytest.fixture(scope="module")
def api(settings):
    from tests.api_support import isolated_settings, served

    yield from served(isolated_settings(settings, "warm_exact_sums", redis_db=100))


def _late(api, stream: str, events: list[tuple[str, int, float]], each_flushed: bool) -> None:
    from tests.api_support import run_job

    batches = [[e] for e in events] if each_flushed else [events]
    for batch in batches:
        r = api.post("/v1/events", json=[{"stream": stream, "key": k, "ts": ts, "value": v} for k, ts, v in batch])
        assert r.status_code == 202, r.text
        assert run_job(api, "flush")["status"] == "done"  # late events: flushed and refreshed at once


def _get(api, path: str, **params) -> dict:
    r = api.get(path, params)
    assert r.status_code == 200, r.text
    return r.json()


def _late_hours(api) -> TimeRange:
    """Two whole hours warm owns, at least an hour below b_warm, starting on an even hour (one
    bucket of a 2h series: buckets are aligned to the epoch)."""
    from rollups.timeutil import parse_time

    b_warm = parse_time(api.get("/v1/tiers").json()["boundaries"]["warm"])
    end = (b_warm - HOUR_MS) // (2 * HOUR_MS) * (2 * HOUR_MS)
    return TimeRange(end - 2 * HOUR_MS, end)


@pytest.mark.parametrize("each_flushed", [True, False], ids=["apart", "one_batch"])
def test_late_cancelling_values_through_the_api(api, each_flushed):
    """x gets 1e15, 0.1, -1e15 as late events (y 0.11, z 0.2): series, stream totals, top-K and
    rank by sum all say 0.1 for x (warm answered 0.125 with float sums)."""
    from rollups.timeutil import format_time
    from tests.api_support import unique_stream

    stream, rng = unique_stream("wexact"), _late_hours(api)
    s = rng.start
    _late(api, stream, [("x", s + 5 * MINUTE_MS, 1e15), ("y", s + 5 * MINUTE_MS, 0.11), ("z", s + 6 * MINUTE_MS, 0.2),
                        ("x", s + 40 * MINUTE_MS, 0.1), ("x", s + 70 * MINUTE_MS, -1e15)], each_flushed)
    frm, to = format_time(rng.start), format_time(rng.end)
    body = _get(api, "/v1/query/series", stream=stream, key="x", step="2h", agg="sum", **{"from": frm, "to": to})
    assert [p["value"] for p in body["points"]] == [0.1]
    body = _get(api, "/v1/query/series", stream=stream, step="2h", agg="sum", **{"from": frm, "to": to})
    assert [p["value"] for p in body["points"]] == [math.fsum([0.1, 0.11, 0.2])]
    top = _get(api, "/v1/query/topk", stream=stream, k=3, by="sum", **{"from": frm, "to": to})
    assert [(i["key"], i["value"]) for i in top["items"]] == [("z", 0.2), ("y", 0.11), ("x", 0.1)]
    rank = _get(api, "/v1/query/rank", stream=stream, key="x", by="sum", around=1, **{"from": frm, "to": to})
    assert (rank["rank"], rank["value"], rank["total_keys"]) == (3, 0.1, 3)
    assert [(n["key"], n["value"]) for n in rank["around"]] == [("y", 0.11), ("x", 0.1)]


def test_late_float_rounding_tie_through_the_api(api):
    """a gets 0.7 then 0.1 apart, b 0.8, c 0.5, late: as before the pairs, top-K ties a (its sum
    0.7999999999999999, the float nearest the exact sum too) with b by key (API.md: relative 1e-12).
    (Rank, answered in place by warm's SQL ordered by value alone, puts b first, as before.)"""
    from rollups.timeutil import format_time
    from tests.api_support import unique_stream

    stream, rng = unique_stream("wtie"), _late_hours(api)
    s = rng.start
    _late(api, stream, [("b", s + MINUTE_MS, 0.8), ("a", s + MINUTE_MS, 0.7), ("a", s + 65 * MINUTE_MS, 0.1),
                        ("c", s + 3 * MINUTE_MS, 0.5)], True)
    frm, to = format_time(rng.start), format_time(rng.end)
    for k in (1, 3):
        top = _get(api, "/v1/query/topk", stream=stream, k=k, by="sum", **{"from": frm, "to": to})
        assert [(i["key"], i["value"]) for i in top["items"]] == [("a", 0.7 + 0.1), ("b", 0.8), ("c", 0.5)][:k]


def test_late_cancelling_values_over_a_range_with_minute_edges(api):
    """The outside check's shape: [s - 30 min, s + 90 min) covers warm as 1m, 1h, 1m pieces; x's
    1e15 and 0.1 fall in the hour piece, its -1e15 in the minute edge: x is 0.1, below y's 0.11 —
    also when the pieces come from the router's piece cache (k=3 after k=1: the integer-id piece
    reads carried only the high parts, 0.125)."""
    from rollups.timeutil import format_time
    from tests.api_support import unique_stream

    stream, rng = unique_stream("wedge"), _late_hours(api)
    s = rng.start
    _late(api, stream, [("x", s + 5 * MINUTE_MS, 1e15), ("y", s + 5 * MINUTE_MS, 0.11), ("z", s + 6 * MINUTE_MS, 0.2),
                        ("x", s + 40 * MINUTE_MS, 0.1), ("x", s + 70 * MINUTE_MS, -1e15)], True)
    frm, to = format_time(s - 30 * MINUTE_MS), format_time(s + 90 * MINUTE_MS)
    for k in (1, 3, 10):
        top = _get(api, "/v1/query/topk", stream=stream, k=k, by="sum", **{"from": frm, "to": to})
        assert [(i["key"], i["value"]) for i in top["items"]] == [("z", 0.2), ("y", 0.11), ("x", 0.1)][:k], top["meta"]
    rank = _get(api, "/v1/query/rank", stream=stream, key="x", by="sum", **{"from": frm, "to": to})
    assert (rank["rank"], rank["value"]) == (3, 0.1), rank


def test_random_access_gives_the_low_parts(warm):
    """The threshold algorithm's random access into warm returns each sum as (hi, lo): 1e16 and 1
    (apart) is the pair (1e16, 1), whose float alone (1e16) would lose the 1 in a total over tiers."""
    t = tenant()
    write(warm, t, [("k", T + 1, 1e16)])
    write(warm, t, [("k", T + MINUTE_MS, 1.0), ("j", T + 2, 3.0)])
    for name, pieces in RANGES.items():
        access = warm.ranked_access(t, "s", pieces, "sum")
        try:
            parts = access.exact_parts(["k", "j", "w"])
            assert parts.shape == (2, 3), name
            assert [math.fsum(c) for c in parts.T] == [1e16 + 1, 3.0, 0.0], name
            assert parts[0].tolist() == access.exact(["k", "j", "w"]).tolist() == [1e16, 3.0, 0.0], name
            assert math.fsum([*parts[:, 0], 1.0]) == 1e16 + 2  # with another tier's 1
        finally:
            access.close()


def _x_ties_y(api, stream: str, start: int, now: int) -> None:
    """Over [start, now + 1 min): x's total 5e14 + 1/16 ties y's (x first by key), z 5.0 — top-K
    by the threshold algorithm for k 1, 3 and 3 again (cached and not), and rank."""
    from rollups.timeutil import format_time

    frm, to = format_time(start), format_time(now + 60_000)
    for k in (1, 3, 3):
        top = _get(api, "/v1/query/topk", stream=stream, k=k, by="sum", **{"from": frm, "to": to})
        assert [(i["key"], i["value"]) for i in top["items"]] == [("x", 5e14 + 0.0625), ("y", 5e14 + 0.0625), ("z", 5.0)][:k], top["meta"]
        assert top["meta"]["ranking"]["method"] == "threshold"
    rank = _get(api, "/v1/query/rank", stream=stream, key="x", by="sum", **{"from": frm, "to": to})
    assert (rank["rank"], rank["value"]) == (1, 5e14 + 0.0625), rank["meta"].get("ranking")


def test_a_total_over_warm_and_hot_keeps_warm_low_part(api):
    """x gets 5e14 and 1/32 late (warm, apart) and 1/32 now (hot): its total over both tiers is
    5e14 + 1/16 (one ulp; the router's fsum of warm's 5e14 and hot's 1/32 said 5e14, a tie rounded
    to even); y's 5e14 + 1/16 now ties it (x first by key). Top-K by the threshold algorithm
    (values >= 0; API values stay within 1e15), cached and not, and rank."""
    import time

    from tests.api_support import unique_stream

    stream, rng = unique_stream("wtwo"), _late_hours(api)
    s = rng.start
    _late(api, stream, [("x", s + 5 * MINUTE_MS, 5e14), ("x", s + 70 * MINUTE_MS, 0.03125),
                        ("z", s + 6 * MINUTE_MS, 5.0)], True)
    now = int(time.time() * 1000)
    r = api.post("/v1/events", json=[{"stream": stream, "key": "x", "ts": now - 1000, "value": 0.03125},
                                     {"stream": stream, "key": "y", "ts": now - 1000, "value": 5e14 + 0.0625}])
    assert r.status_code == 202, r.text
    _x_ties_y(api, stream, s, now)


def test_a_total_over_warm_and_two_hot_pieces_stays_exact(api):
    """The trial's case: x gets 1/32 late (warm), 1/32 in a closed hot hour and 5e14 now (the hot
    minute piece): 5e14 + 1/16. Hot's random access summed its two pieces first (5e14 + 1/32 is a
    tie rounded to 5e14) before warm's 1/32 joined: top-K by the threshold algorithm said 5e14
    while rank said 5e14 + 1/16. Every tier's exact_parts now hands its unrounded rows over."""
    import time

    from tests.api_support import unique_stream

    stream, rng = unique_stream("wthree"), _late_hours(api)
    s = rng.start
    _late(api, stream, [("x", s + 5 * MINUTE_MS, 0.03125), ("z", s + 6 * MINUTE_MS, 5.0)], True)
    now = int(time.time() * 1000)
    hour = now - now % HOUR_MS
    r = api.post("/v1/events", json=[{"stream": stream, "key": "x", "ts": hour - HOUR_MS + 5 * MINUTE_MS, "value": 0.03125},
                                     {"stream": stream, "key": "x", "ts": now - 1000, "value": 5e14},
                                     {"stream": stream, "key": "y", "ts": now - 1000, "value": 5e14 + 0.0625}])
    assert r.status_code == 202, r.text
    _x_ties_y(api, stream, s, now)
