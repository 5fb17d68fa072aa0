"""The router's planner and executor on in-memory stand-in tiers (no services needed).

The stand-ins compute partials straight from raw events, so these tests check the planning —
segments per owner, covers, concurrency, partial answers, the cache — not a storage engine. The
real tiers are exercised through HTTP in test_api.py and test_oracle.py.
"""
from __future__ import annotations

import random
import threading
import time
from types import SimpleNamespace

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import ValidationError

from rollups.errors import BadRequest, TierUnavailable, ValidationFailed
from rollups.partials import Agg
from rollups.timeutil import DAY_MS, G1D, G1H, G1M, HOUR_MS, MINUTE_MS, RAW, TimeRange, floor_to, parse_time
from router import create_app
from router.cache import ResultsCache
from router.ingest import validate_events
from router.models import Event
from router.planner import Planner, QuerySpec
from tiers.base import Tier
from tiers.catalog import CatalogSnapshot

T0 = 1_795_305_600_000  # 2026-11-22T00:00:00Z


def settings(**overrides):
    base = dict(clock_skew=5 * MINUTE_MS, max_batch_events=1000, max_batch_bytes=1 << 20, query_timeout=2000,
                auth_enabled=False, api_keys={}, results_cache_entries=64)
    return SimpleNamespace(**{**base, **overrides})


class MemoryTier:
    """Partials from a list of raw events: (tenant, stream, key, ts, value)."""

    capabilities: frozenset[str] = frozenset()
    supports = Tier.supports

    def __init__(self, name, granularities=(G1M, G1H, G1D), events=(), delay=0.0):
        self.name = name
        self.granularities = list(granularities)
        self.events = list(events)
        self.calls = 0
        self.delay = delay
        self.down = False

    def aggregate(self, tenant, stream, pieces, group, key=None):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.down:
            raise TierUnavailable(self.name)
        acc: dict = {}
        for p in pieces:
            for tn, s, k, ts, v in self.events:
                if tn == tenant and s == stream and p.range.contains(ts) and key in (None, k):
                    g = k if group == "key" else floor_to(ts, p.granularity.ms or MINUTE_MS)
                    acc.setdefault(g, Agg()).add(v)
        rows = list(acc.items())
        return pa.table({group: pa.array([g for g, _ in rows], pa.string() if group == "key" else pa.int64()),
                         "count": pa.array([a.count for _, a in rows], pa.int64()),
                         "sum": pa.array([a.sum for _, a in rows], pa.float64()),
                         "min": pa.array([a.min for _, a in rows], pa.float64()),
                         "max": pa.array([a.max for _, a in rows], pa.float64())})

    def health(self):
        if self.down:
            raise TierUnavailable(self.name)


class FixedCatalog:
    def __init__(self, snap):
        self.snap = snap

    def snapshot(self):
        return self.snap


def planner(tiers, snap, cache_entries=0, timeout_ms=2000):
    import concurrent.futures as cf
    return Planner(tiers, FixedCatalog(snap), pool=cf.ThreadPoolExecutor(4), cache=ResultsCache(cache_entries),
                   timeout_ms=timeout_ms)


SNAP = CatalogSnapshot(7, T0, T0 + DAY_MS, T0 + 2 * DAY_MS)  # cold [T0, +1d), warm [+1d, +2d), hot after


def test_segments_follow_the_catalog_and_tile_the_range():
    tiers = {n: MemoryTier(n) for n in ("cold", "warm", "hot")}
    rng = TimeRange(T0 + 5 * HOUR_MS + 7 * MINUTE_MS, T0 + 2 * DAY_MS + 3 * HOUR_MS + 2 * MINUTE_MS)
    plan = planner(tiers, SNAP).plan(QuerySpec("t", "s", rng, "key"), allow_partial=False)
    edges = [(p.piece.range.start, p.piece.range.end) for p in plan.pieces]
    assert edges[0][0] == rng.start and edges[-1][1] == rng.end
    assert all(a[1] == b[0] for a, b in zip(edges, edges[1:]))
    for p in plan.pieces:
        assert SNAP.owner(p.piece.range.start) == p.tier == SNAP.owner(p.piece.range.end - 1)
    assert [p.piece.granularity for p in plan.pieces if p.tier == "warm"] == [G1D]
    assert {p.tier for p in plan.pieces} == {"cold", "warm", "hot"}


@pytest.mark.parametrize("step_ms, allowed", [(5 * MINUTE_MS, {G1M}), (2 * HOUR_MS, {G1M, G1H}),
                                              (DAY_MS, {G1M, G1H, G1D})])
def test_series_cover_uses_only_granularities_nesting_in_the_step(step_ms, allowed):
    tiers = {n: MemoryTier(n) for n in ("cold", "warm", "hot")}
    rng = TimeRange(T0 + 13 * MINUTE_MS, T0 + 3 * DAY_MS)
    plan = planner(tiers, SNAP).plan(QuerySpec("t", "s", rng, "bucket", step_ms=step_ms), allow_partial=False)
    assert {p.piece.granularity for p in plan.pieces} <= allowed


def test_raw_pieces_when_a_tier_has_no_minute_buckets():
    tiers = {"cold": MemoryTier("cold", (G1H, RAW)), "warm": MemoryTier("warm"), "hot": MemoryTier("hot")}
    rng = TimeRange(T0 + 13 * MINUTE_MS, T0 + 5 * HOUR_MS)
    plan = planner(tiers, SNAP).plan(QuerySpec("t", "s", rng, "key"), allow_partial=False)
    assert [p.piece.granularity for p in plan.pieces] == [RAW, G1H]


def test_absent_tier_is_503_unless_partial():
    tiers = {"hot": MemoryTier("hot")}
    rng = TimeRange(T0 + 2 * DAY_MS - HOUR_MS, T0 + 2 * DAY_MS + HOUR_MS)
    with pytest.raises(TierUnavailable) as err:
        planner(tiers, SNAP).plan(QuerySpec("t", "s", rng, "key"), allow_partial=False)
    assert err.value.tier == "warm"
    p = planner(tiers, SNAP)
    plan = p.plan(QuerySpec("t", "s", rng, "key"), allow_partial=True)
    out = p.execute(plan, allow_partial=True)
    assert out.missing == [("warm", TimeRange(rng.start, SNAP.b_warm))]


def test_tier_failing_at_run_time_is_503_or_missing():
    tiers = {n: MemoryTier(n, events=[("t", "s", "a", T0 + 2 * DAY_MS + 5, 1.0)]) for n in ("warm", "hot")}
    tiers["warm"].down = True
    rng = TimeRange(T0 + DAY_MS + HOUR_MS, T0 + 2 * DAY_MS + HOUR_MS)
    p = planner(tiers, SNAP)
    plan = p.plan(QuerySpec("t", "s", rng, "key"), allow_partial=False)
    with pytest.raises(TierUnavailable) as err:
        p.execute(plan, allow_partial=False)
    assert err.value.tier == "warm"
    out = p.execute(plan, allow_partial=True)
    assert out.missing == [("warm", TimeRange(rng.start, SNAP.b_warm))]
    assert out.partials.to_pylist() == [{"key": "a", "count": 1, "sum": 1.0, "min": 1.0, "max": 1.0}]
    assert {r.tier for r in out.runs} == {"hot"}


def test_slow_tier_times_out_as_unavailable():
    tiers = {"warm": MemoryTier("warm", delay=1.0), "hot": MemoryTier("hot")}
    rng = TimeRange(T0 + 2 * DAY_MS - HOUR_MS, T0 + 2 * DAY_MS + HOUR_MS)
    p = planner(tiers, SNAP, timeout_ms=200)
    plan = p.plan(QuerySpec("t", "s", rng, "key"), allow_partial=False)
    started = time.monotonic()
    with pytest.raises(TierUnavailable) as err:
        p.execute(plan, allow_partial=False)
    assert err.value.tier == "warm" and time.monotonic() - started < 0.9


def test_pieces_run_concurrently():
    tiers = {n: MemoryTier(n, delay=0.3) for n in ("cold", "warm", "hot")}
    rng = TimeRange(T0, T0 + 3 * DAY_MS)
    p = planner(tiers, SNAP)
    plan = p.plan(QuerySpec("t", "s", rng, "key"), allow_partial=False)
    assert len(plan.pieces) == 3
    started = time.monotonic()
    p.execute(plan, allow_partial=False)
    assert time.monotonic() - started < 0.8


class VersionedTier(MemoryTier):
    """A stand-in that tells its data version, as a cold tier must to take part in the cache."""

    version = 1
    capabilities = frozenset({"data_versions"})

    def data_versions(self, tenant, stream, pieces):
        return [self.version] * len(pieces)


def test_cache_serves_immutable_pieces_of_the_same_catalog_and_data_version_only():
    tiers = {"cold": VersionedTier("cold"), "warm": MemoryTier("warm"), "hot": MemoryTier("hot")}
    rng = TimeRange(T0, T0 + 3 * DAY_MS)
    p = planner(tiers, SNAP, cache_entries=16)
    spec = QuerySpec("t", "s", rng, "key")
    first = p.execute(p.plan(spec, allow_partial=False), allow_partial=False)
    second = p.execute(p.plan(spec, allow_partial=False), allow_partial=False)
    assert [r.cached for r in first.runs] == [False, False, False]
    assert [(r.tier, r.cached) for r in second.runs] == [("cold", True), ("warm", False), ("hot", False)]
    assert tiers["cold"].calls == 1 and tiers["hot"].calls == 2
    p.catalog = FixedCatalog(CatalogSnapshot(8, SNAP.b_archive, SNAP.b_cold, SNAP.b_warm + HOUR_MS))
    assert p.execute(p.plan(spec, allow_partial=False), allow_partial=False).runs[0].cached  # cold's range kept
    p.catalog = FixedCatalog(CatalogSnapshot(9, SNAP.b_archive - DAY_MS, SNAP.b_cold, SNAP.b_warm + HOUR_MS))
    third = p.execute(p.plan(spec, allow_partial=False), allow_partial=False)
    assert not third.runs[0].cached  # cold's owned range moved
    assert p.execute(p.plan(spec, allow_partial=False), allow_partial=False).runs[0].cached
    tiers["cold"].version = 2  # e.g. an import rewrote a partition: no boundary moved
    assert not p.execute(p.plan(spec, allow_partial=False), allow_partial=False).runs[0].cached


def test_a_failing_data_version_means_uncached_not_failed():
    class Broken(VersionedTier):
        def data_versions(self, tenant, stream, pieces):
            raise AttributeError("no version file here")

    tiers = {"cold": Broken("cold", events=[("t", "s", "a", T0 + 5, 1.0)]), "warm": MemoryTier("warm"),
             "hot": MemoryTier("hot")}
    p = planner(tiers, SNAP, cache_entries=16)
    spec = QuerySpec("t", "s", TimeRange(T0, T0 + 3 * DAY_MS), "key")
    for _ in range(2):
        out = p.execute(p.plan(spec, allow_partial=False), allow_partial=False)
        assert not any(r.cached for r in out.runs) and out.partials.num_rows == 1


def test_tiers_without_a_data_version_are_never_cached():
    tiers = {n: MemoryTier(n) for n in ("cold", "warm", "hot")}
    p = planner(tiers, SNAP, cache_entries=16)
    spec = QuerySpec("t", "s", TimeRange(T0, T0 + 3 * DAY_MS), "key")
    for _ in range(2):
        assert not any(r.cached for r in p.execute(p.plan(spec, allow_partial=False), allow_partial=False).runs)


# ---- through Flask, against a brute-force answer -------------------------------------------------

def brute(events, rng, key=None):
    acc: dict = {}
    for _, _, k, ts, v in events:
        if rng.contains(ts) and key in (None, k):
            acc.setdefault(k, Agg()).add(v)
    return acc


@pytest.fixture(scope="module")
def two_tier_app():
    rnd = random.Random(7)
    events = [("default", "s", f"k{rnd.randint(0, 30)}", T0 + DAY_MS + rnd.randrange(2 * DAY_MS),
               float(rnd.randint(-3, 9))) for _ in range(3000)]
    tiers = {n: MemoryTier(n) for n in ("warm", "hot")}
    for e in events:
        tiers[SNAP.owner(e[3])].events.append(e)
    app = create_app(settings(), tiers=tiers, catalog=FixedCatalog(SNAP))
    return app.test_client(), events


def test_topk_rank_and_series_match_brute_force_across_two_tiers(two_tier_app):
    client, events = two_tier_app
    rnd = random.Random(11)
    for _ in range(25):
        a = T0 + DAY_MS + rnd.randrange(2 * DAY_MS // MINUTE_MS) * MINUTE_MS
        b = a + rnd.randint(1, DAY_MS // MINUTE_MS) * MINUTE_MS
        rng = TimeRange(a, b)
        acc = brute(events, rng)
        by = rnd.choice(["count", "sum"])
        want = sorted(((float(getattr(x, by)), k) for k, x in acc.items()), key=lambda t: (-t[0], t[1]))
        got = client.get("/v1/query/topk", query_string={"stream": "s", "from": a, "to": b, "k": 5, "by": by}).json
        assert [(i["value"], i["key"]) for i in got["items"]] == want[:5]
        assert {s["tier"] for s in got["meta"]["segments"]} <= {"warm", "hot"}
        key = rnd.choice([k for _, k in want] + ["nobody"])
        got = client.get("/v1/query/rank", query_string={"stream": "s", "from": a, "to": b, "key": key,
                                                          "by": by, "around": 2}).json
        idx = [k for _, k in want].index(key) if key in acc else None
        assert got["rank"] == (None if idx is None else idx + 1) and got["total_keys"] == len(want)
        step = rnd.choice([1, 5, 60, 90, 1440]) * MINUTE_MS
        agg = rnd.choice(["count", "sum", "min", "max", "avg"])
        got = client.get("/v1/query/series", query_string={"stream": "s", "from": a, "to": b,
                                                            "step": f"{step // MINUTE_MS}m", "agg": agg}).json
        for point in got["points"]:
            t = parse_time(point["t"])
            bucket = TimeRange(max(t, a), min(t + step, b))
            total = Agg()
            for x in brute(events, bucket).values():
                total = total.merge(x)
            expect = total.value(agg)
            assert point["value"] == pytest.approx(expect, rel=1e-9) if expect is not None else point["value"] is None


# ---- the ingest validator enforces exactly the Event model ----------------------------------------

EVENT_CASES = [
    {"stream": "plays", "key": "k", "ts": T0},
    {"stream": "plays", "key": "k", "ts": "2026-11-22T10:00:00Z", "value": 2.5, "id": "x"},
    {"stream": "plays", "key": "k", "ts": "2026-11-22T10:00:00.123+01:00", "value": 3},
    {"stream": "Plays", "key": "k", "ts": T0},
    {"stream": "plays", "key": "", "ts": T0},
    {"stream": "plays", "key": "é" * 128, "ts": T0},
    {"stream": "plays", "key": "é" * 129, "ts": T0},
    {"stream": "plays", "key": 5, "ts": T0},
    {"stream": "plays", "key": "k"},
    {"stream": "plays", "key": "k", "ts": "yesterday"},
    {"stream": "plays", "key": "k", "ts": "2026-11-22T10:00:00"},
    {"stream": "plays", "key": "k", "ts": T0, "value": "1"},
    {"stream": "plays", "key": "k", "ts": T0, "value": None},
    {"stream": "plays", "key": "k", "ts": T0, "id": 5},
    {"stream": "plays", "key": "k", "ts": T0, "id": ""},
    {"stream": "plays", "key": "k", "ts": T0, "id": "i" * 257},
    {"stream": "plays", "key": "k", "ts": T0, "extra": 1},
    {"stream": "a" * 65, "key": "k", "ts": T0},
    {"stream": "a-b.c_d", "key": "k", "ts": T0},
    {"stream": "plays\n", "key": "k", "ts": T0},
    {"stream": "plays", "key": "k", "ts": True},
    {"stream": "plays", "key": "k", "ts": T0, "value": True},
    {"stream": "plays", "key": "k", "ts": -62135596800001},
    {"stream": "plays", "key": "k", "ts": "now-1h", "id": None},
    {"stream": "plays", "key": "a\x00b", "ts": T0},
    {"stream": "plays", "key": "\x00", "ts": T0},
    {"stream": "plays", "key": "k", "ts": T0, "id": "i\x00"},
    {"stream": "plays", "key": "\ud800", "ts": T0},
    {"stream": "plays", "key": "k", "ts": T0, "id": "x\udfff"},
    {"stream": "plays", "key": "🎵" * 64, "ts": T0, "id": "🎵" * 64},
    {"stream": "plays", "key": "k", "ts": T0, "id": "🎵" * 65},
    {"stream": "plays", "key": "k", "ts": T0, "value": 1e15},
    {"stream": "plays", "key": "k", "ts": T0, "value": -1e15},
    {"stream": "plays", "key": "k", "ts": T0, "value": 10**15},
    {"stream": "plays", "key": "k", "ts": T0, "value": 1.0000000000000002e15},
    {"stream": "plays", "key": "k", "ts": T0, "value": 1e308},
    {"stream": "plays", "key": "k", "ts": T0, "value": -10**15 - 1},
    {"stream": "plays", "key": "k", "ts": T0, "value": 10**400},
    {"stream": "plays", "key": "k", "ts": T0, "value": float("inf")},
    {"stream": "plays", "key": "k", "ts": T0, "value": float("nan")},
]


@pytest.mark.parametrize("event", EVENT_CASES)
def test_ingest_validator_agrees_with_the_event_model(event):
    """The model cannot parse times (any string passes it): the time parser judges ts."""
    try:
        Event.model_validate(event, strict=True)
        parse_time(event["ts"], T0)
        model_ok = True
    except (ValidationError, BadRequest):
        model_ok = False
    try:
        validate_events([event], T0)
        fast_ok = True
    except ValidationFailed:
        fast_ok = False
    assert fast_ok == model_ok


def test_validator_names_every_bad_event_and_builds_arrow_columns():
    events = [{"stream": "s", "key": "a", "ts": T0}, {"stream": "s", "key": "", "ts": T0}, [],
              {"stream": "s", "key": "b", "ts": "now-1m", "value": 2}]
    with pytest.raises(ValidationFailed) as err:
        validate_events(events, T0)
    assert [(d["index"], d["field"]) for d in err.value.details] == [(1, "key"), (2, "event")]
    table = validate_events([events[0], events[3]], T0)
    assert table.to_pylist() == [{"stream": "s", "key": "a", "ts": T0, "value": 1.0, "id": None},
                                        {"stream": "s", "key": "b", "ts": T0 - MINUTE_MS, "value": 2.0, "id": None}]


def test_every_error_has_the_one_shape():
    tiers = {"hot": MemoryTier("hot")}
    client = create_app(settings(auth_enabled=True, api_keys={"k1": "t1"}), tiers=tiers,
                        catalog=FixedCatalog(SNAP)).test_client()
    for resp in (client.get("/v1/query/topk"), client.get("/v1/query/topk", headers={"Authorization": "Bearer k1"}),
                 client.get("/nowhere"), client.put("/healthz")):
        body = resp.get_json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert client.get("/healthz").status_code == 200


def test_unexpected_exception_is_a_generic_500_without_trace():
    class Broken(MemoryTier):
        def aggregate(self, *a, **k):
            raise RuntimeError("secret internals")

    client = create_app(settings(), tiers={"hot": Broken("hot"), "warm": MemoryTier("warm")},
                        catalog=FixedCatalog(SNAP)).test_client()
    resp = client.get("/v1/query/topk", query_string={"stream": "s", "from": SNAP.b_warm, "to": SNAP.b_warm + HOUR_MS})
    assert resp.status_code == 500
    assert resp.get_json()["error"]["code"] == "internal_error"
    assert b"secret" not in resp.data and b"Traceback" not in resp.data


def test_thread_pool_is_not_exhausted_by_many_queries(two_tier_app):
    client, _ = two_tier_app
    errors = []

    def run():
        try:
            r = client.get("/v1/query/topk", query_string={"stream": "s", "from": T0 + DAY_MS, "to": T0 + 3 * DAY_MS})
            assert r.status_code == 200
        except AssertionError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors



class RankingTier(MemoryTier):
    """A hot stand-in that also ranks in place, as RedisHotTier does."""

    capabilities = frozenset({"top_k", "rank"})

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.in_place = 0

    def top_k(self, tenant, stream, pieces, k, by):
        from rollups.topk import top_k
        self.in_place += 1
        return top_k(self.aggregate(tenant, stream, pieces, "key"), k, by)

    def rank(self, tenant, stream, pieces, key, by, around=0):
        from rollups.topk import rank_of
        self.in_place += 1
        return rank_of(self.aggregate(tenant, stream, pieces, "key"), key, by, around)


def test_hot_only_rankings_run_in_place_and_cross_tier_ones_merge():
    events = [("default", "s", k, SNAP.b_warm + i * MINUTE_MS, 1.0) for i, k in enumerate("abcab")]
    hot = RankingTier("hot", events=events)
    client = create_app(settings(), tiers={"hot": hot, "warm": MemoryTier("warm")},
                        catalog=FixedCatalog(SNAP)).test_client()
    hot_only = {"stream": "s", "from": SNAP.b_warm, "to": SNAP.b_warm + 2 * HOUR_MS + 7 * MINUTE_MS}
    body = client.get("/v1/query/topk", query_string=hot_only).get_json()
    assert [(i["key"], i["value"]) for i in body["items"]] == [("a", 2.0), ("b", 2.0), ("c", 1.0)]
    assert hot.in_place == 1 and len(body["meta"]["segments"]) == 2
    body = client.get("/v1/query/rank", query_string={**hot_only, "key": "b", "around": 1}).get_json()
    assert (body["rank"], body["total_keys"], hot.in_place) == (2, 3, 2)
    crossing = {**hot_only, "from": SNAP.b_warm - HOUR_MS}
    body = client.get("/v1/query/topk", query_string=crossing).get_json()
    assert [i["key"] for i in body["items"]] == ["a", "b", "c"] and hot.in_place == 2
    hot.down = True
    assert client.get("/v1/query/topk", query_string=hot_only).status_code == 503
    body = client.get("/v1/query/rank", query_string={**hot_only, "key": "b", "allow_partial": 1}).get_json()
    assert body["rank"] is None and body["meta"]["partial"] is True
    assert body["meta"]["missing"][0]["tier"] == "hot"


@pytest.mark.parametrize("start, end, status", [
    ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z", 200),
    ("9999-12-31T23:59:30Z", "9999-12-31T23:59:59.999Z", 400),
    (-62135596800000, 0, 200),
])
def test_ranges_at_the_ends_of_time(start, end, status):
    client = create_app(settings(), tiers={n: MemoryTier(n) for n in ("archive", "cold", "warm", "hot")},
                        catalog=FixedCatalog(SNAP)).test_client()
    for kind in ("topk", "rank"):
        resp = client.get(f"/v1/query/{kind}", query_string={"stream": "s", "from": start, "to": end, "key": "k"}
                          if kind == "rank" else {"stream": "s", "from": start, "to": end})
        assert resp.status_code == status, resp.data


_fuzz_text = st.text(max_size=6) | st.sampled_from(["plays", "k", "é" * 129, "", "now", "now-1h",
                                                    "2026-11-22T10:00:00Z", "a\n"])
_fuzz_value = (st.none() | st.booleans() | st.integers(-2**66, 2**66) | st.floats() | _fuzz_text
               | st.lists(st.integers(), max_size=2))
_fuzz_event = st.fixed_dictionaries({}, optional={
    "stream": _fuzz_value | st.just("plays"), "key": _fuzz_value | st.just("k"),
    "ts": _fuzz_value | st.integers(-62135596800001, 253402300800000), "value": _fuzz_value,
    "id": _fuzz_value, "other": _fuzz_value}) | _fuzz_value


@given(st.lists(_fuzz_event, min_size=1, max_size=6))
@hsettings(max_examples=500, deadline=None)
def test_the_vectorised_pass_and_the_per_event_loop_agree(events):
    from router.ingest import _checked_table, _valid_table

    fast = _valid_table(events, T0)
    try:
        slow = _checked_table(events, T0)
    except ValidationFailed:
        slow = None
    if fast is not None:  # sound: what the vectorised pass accepts, the loop accepts identically
        assert slow is not None and fast.equals(slow)


_rfc3339 = st.builds("{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}{}{}".format, st.integers(0, 9999), st.integers(0, 13),
                     st.integers(0, 32), st.integers(0, 25), st.integers(0, 61), st.integers(0, 61),
                     st.sampled_from(["", ".5", ".123", ".1234"]),
                     st.sampled_from(["Z", "z", "+01:00", "-05:30", "+00:60", "+24:00", "-00:00", ""]))


@given(st.lists(_rfc3339 | st.integers(-62135596800001, 253402300800000), min_size=1, max_size=8))
@hsettings(max_examples=500, deadline=None)
def test_times_parse_the_same_vectorised_and_one_by_one(stamps):
    from router.ingest import _checked_table, _valid_table

    events = [{"stream": "s", "key": "k", "ts": t} for t in stamps]
    fast = _valid_table(events, T0)
    try:
        slow = _checked_table(events, T0)
    except ValidationFailed:
        slow = None
    if fast is not None:
        assert slow is not None and fast.equals(slow)


def test_plain_batches_take_the_vectorised_pass():
    from router.ingest import _valid_table

    ints = [{"stream": "s", "key": f"k{i}", "ts": T0 + i, "value": i, "id": None if i % 2 else f"i{i}"}
            for i in range(50)]
    strings = [{**e, "ts": "2026-11-22T10:00:00.123+01:00"} for e in ints]
    assert _valid_table(ints, T0) is not None and _valid_table(strings, T0) is not None


class EachTier(MemoryTier):
    """A MemoryTier that reads many pieces apart in one call (as warm, cold and archive do)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.each_calls = 0

    def aggregate_each(self, tenant, stream, pieces, key=None):
        self.each_calls += 1
        calls = self.calls
        out = [self.aggregate(tenant, stream, [p], "key", key) for p in pieces]
        self.calls = calls
        return out


def test_execute_pieces_each_reads_a_tiers_pieces_in_few_calls():
    """Trending's slices: a tier with aggregate_each answers EACH_PIECES pieces a call, a tier
    without it one piece a call; every piece's table is its own partials either way."""
    from router import planner as P

    rnd = random.Random(5)
    events = [("t", "s", f"k{rnd.randrange(9)}", T0 + rnd.randrange(2 * DAY_MS + 6 * HOUR_MS), float(rnd.randrange(9)))
              for _ in range(3000)]
    tiers = {"cold": EachTier("cold", events=events), "warm": EachTier("warm", events=events),
             "hot": MemoryTier("hot", events=events)}
    pl = planner(tiers, SNAP)
    plan = pl.plan(QuerySpec("t", "s", TimeRange(T0, T0 + 2 * DAY_MS + 6 * HOUR_MS), "key"), allow_partial=False)
    sliced = [p for pp in plan.pieces for p in (
        [type(pp)(pp.tier, type(pp.piece)(G1M, TimeRange(a, a + 10 * MINUTE_MS)))
         for a in range(pp.piece.range.start, pp.piece.range.end, 10 * MINUTE_MS)])]
    plan = type(plan)(plan.spec, plan.snapshot, sliced, plan.absent)
    per_tier = {n: sum(p.tier == n for p in sliced) for n in tiers}
    tables, outcome = pl.execute_pieces(plan, allow_partial=False, each=True)
    assert sorted(tables) == list(range(len(sliced)))
    for n in ("cold", "warm"):
        assert tiers[n].each_calls == -(-per_tier[n] // P.EACH_PIECES) and tiers[n].calls == 0
    assert tiers["hot"].calls == per_tier["hot"] == 36
    for i, pp in enumerate(sliced):
        want = tiers[pp.tier].aggregate("t", "s", [pp.piece], "key")
        assert sorted(tables[i].to_pylist(), key=str) == sorted(want.to_pylist(), key=str)


def test_disjoint_runs_split_only_overlapping_pieces():
    """rollups.cover.disjoint_runs: slices of one granularity stay one run in time order; a piece
    overlapping another (listed twice) starts a second run; empty pieces are left out."""
    from rollups.cover import Piece, disjoint_runs

    pieces = [Piece(G1M, TimeRange(T0 + a * MINUTE_MS, T0 + (a + 5) * MINUTE_MS)) for a in (10, 0, 5, 15)]
    assert disjoint_runs(pieces) == [[1, 2, 0, 3]]
    pieces += [pieces[2], Piece(G1M, TimeRange(T0, T0)), Piece(G1M, TimeRange(T0 + 7 * MINUTE_MS, T0 + 30 * MINUTE_MS))]
    assert disjoint_runs(pieces) == [[1, 2, 0, 3], [4], [6]]
