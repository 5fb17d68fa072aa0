"""The contract every tier satisfies (tiers/base.py), checked against the raw-event oracle.

Use: subclass `TierContract` (`from tests.tier_contract import TierContract`) in a `test_*.py`
module, in a class whose name starts with `Test`, and provide a `tier` fixture yielding the tier
under test. Optional hooks:
    window fixture   where the random events fall (default: the last ~2 days, minute-aligned)
    settle(tier)     what must run after `write` before reads see it (e.g. a rollup refresh)
Required: a `down` fixture yielding (tier, outage): a tier of the same kind whose service is
reached through a tests.outage.Outage, so `outage.cut()` takes that service down for it alone.
Each test writes under a fresh tenant, deleted afterwards, so tests share servers without sharing
data. Values are multiples of 0.5, so every sum is exact and answers compare with ==.
"""
from __future__ import annotations

import math
import random
import uuid
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from rollups.cover import Piece, cover
from rollups.errors import TierUnavailable
from rollups.partials import Agg, merge_partials
from rollups.timeutil import DAY_MS, G1M, MAX_MS, MIN_MS, RAW, TimeRange, now_ms
from rollups.threshold import threshold_top_k
from rollups.topk import rank_of, top_k
from tiers.base import CAPABILITIES, EVENT_SCHEMA, KEY_VALUES_SCHEMA, RANK_BY, NotSupported

KEYS = ["a", "b", "c", "song_1", "song_10", "song_2", "Zed", "é", "日本", "key with space", "x:y{z}", "-1"]
STREAM = "plays"


def new_tenant() -> str:
    """A tenant no other test uses: tests share servers, not data."""
    return f"t{uuid.uuid4().hex[:12]}"


def random_events(rnd: random.Random, window: TimeRange, n: int, keys=KEYS, stream=STREAM) -> pa.Table:
    """n events in window, keys drawn with skew, values multiples of 0.5 (some negative)."""
    weights = [1 / (i + 1) for i in range(len(keys))]
    return pa.table({
        "stream": [stream] * n,
        "key": rnd.choices(keys, weights, k=n),
        "ts": [rnd.randrange(window.start, window.end) for _ in range(n)],
        "value": [rnd.randint(-4, 40) / 2 for _ in range(n)],
        "id": [None] * n,
    }, schema=EVENT_SCHEMA)


def events_of(rows: list[tuple], stream: str = STREAM) -> pa.Table:
    """A batch from rows of (key, ts, value) or (key, ts, value, id)."""
    return pa.table({"stream": [stream] * len(rows), "key": [r[0] for r in rows], "ts": [r[1] for r in rows],
                     "value": [r[2] for r in rows], "id": [r[3] if len(r) > 3 else None for r in rows]},
                    schema=EVENT_SCHEMA)


def oracle_by_key(events: pa.Table, rng: TimeRange, key: str | None = None) -> dict[str, Agg]:
    out: dict[str, Agg] = defaultdict(Agg)
    for e in events.to_pylist():
        if rng.contains(e["ts"]) and key in (None, e["key"]):
            out[e["key"]].add(e["value"])
    return dict(out)


def oracle_by_bucket(events: pa.Table, pieces: list[Piece], key: str | None = None) -> dict[int, Agg]:
    out: dict[int, Agg] = defaultdict(Agg)
    for e in events.to_pylist():
        for p in pieces:
            if p.range.contains(e["ts"]) and key in (None, e["key"]):
                g = G1M if p.granularity.is_raw else p.granularity
                out[g.floor(e["ts"])].add(e["value"])
    return dict(out)


def as_aggs(partials: pa.Table, group: str) -> dict:
    merged = merge_partials([partials], group)
    return {r[group]: Agg(r["count"], r["sum"], r["min"], r["max"]) for r in merged.to_pylist()}


def random_range(rnd: random.Random, window: TimeRange) -> TimeRange:
    """A minute-aligned sub-range of the window (queries are minute-aligned)."""
    lo, hi = G1M.ceil(window.start), G1M.floor(window.end)
    a, b = sorted(rnd.sample(range(lo, hi + 1, G1M.ms), 2))
    return TimeRange(a, b)


class TierContract:
    """Mixin of contract tests; subclasses provide the `tier` fixture."""

    @pytest.fixture
    def tier(self):
        raise NotImplementedError("a TierContract subclass provides the `tier` fixture")

    @pytest.fixture
    def down(self):
        raise NotImplementedError("a TierContract subclass provides the `down` fixture: (tier, outage)")

    #: whether reads fail once the service is cut (cold's reads need only its local files)
    reads_need_the_service = True

    @pytest.fixture
    def window(self) -> TimeRange:
        end = G1M.floor(now_ms())
        return TimeRange(end - 2 * DAY_MS - 7 * G1M.ms, end)

    @pytest.fixture
    def tenant(self, tier):
        name = new_tenant()
        yield name
        tier.delete_range(name, None, TimeRange(MIN_MS, MAX_MS))

    def settle(self, tier) -> None:
        """Make written events visible to reads (override for tiers refreshed by a job)."""

    def write(self, tier, tenant: str, events: pa.Table) -> None:
        assert tier.write(tenant, events) == events.num_rows
        self.settle(tier)

    @pytest.fixture(params=[1, 2, 3])
    def written(self, request, tier, tenant, window):
        rnd = random.Random(request.param)
        events = random_events(rnd, window, 600)
        self.write(tier, tenant, events)
        return rnd, events

    def test_aggregate_by_key_matches_oracle(self, tier, tenant, window, written):
        rnd, events = written
        for _ in range(8):
            rng = random_range(rnd, window)
            got = as_aggs(tier.aggregate(tenant, STREAM, cover(rng, tier.granularities), "key"), "key")
            assert got == oracle_by_key(events, rng), rng

    def test_aggregate_by_bucket_matches_oracle(self, tier, tenant, window, written):
        rnd, events = written
        for _ in range(8):
            pieces = cover(random_range(rnd, window), tier.granularities)
            got = as_aggs(tier.aggregate(tenant, STREAM, pieces, "bucket"), "bucket")
            assert got == oracle_by_bucket(events, pieces), pieces

    def test_aggregate_one_key_matches_oracle(self, tier, tenant, window, written):
        rnd, events = written
        for key in ["a", "日本", "x:y{z}", "never-written"]:
            rng = random_range(rnd, window)
            pieces = cover(rng, tier.granularities)
            by_key = as_aggs(tier.aggregate(tenant, STREAM, pieces, "key", key), "key")
            assert by_key == oracle_by_key(events, rng, key), (key, rng)
            by_bucket = as_aggs(tier.aggregate(tenant, STREAM, pieces, "bucket", key), "bucket")
            assert by_bucket == oracle_by_bucket(events, pieces, key), (key, pieces)

    def test_every_granularity_reads_its_buckets(self, tier, tenant, window, written):
        _, events = written
        for g in tier.granularities:
            if g.is_raw:
                continue
            rng = TimeRange(g.ceil(window.start), g.floor(window.end))
            if rng.empty:
                continue
            pieces = [Piece(g, rng)]
            assert as_aggs(tier.aggregate(tenant, STREAM, pieces, "key"), "key") == oracle_by_key(events, rng), g
            assert as_aggs(tier.aggregate(tenant, STREAM, pieces, "bucket"), "bucket") == \
                oracle_by_bucket(events, pieces), g

    def test_aggregate_each_is_each_piece_alone(self, tier, tenant, window, written):
        """Tier.aggregate_each (trending's slices): each piece's partials equal its own oracle —
        runs of one granularity, sparse raw and minute edges, a piece listed twice — with and
        without a key."""
        rnd, events = written
        for width in (25 * G1M.ms, 3 * 3_600_000, 7 * 3_600_000 + 13 * G1M.ms):
            rng = random_range(rnd, window)
            pieces = [q for a in range(rng.start, rng.end, width)
                      for q in cover(TimeRange(a, min(a + width, rng.end)), tier.granularities)]
            pieces.append(pieces[0])
            for key in (None, "a"):
                got = tier.aggregate_each(tenant, STREAM, pieces, key)
                assert len(got) == len(pieces)
                for p, t in zip(pieces, got):
                    assert as_aggs(t, "key") == oracle_by_key(events, p.range, key), (width, key, p)

    def test_writes_add_up(self, tier, tenant, window):
        rnd = random.Random(7)
        first, second = random_events(rnd, window, 200), random_events(rnd, window, 200)
        self.write(tier, tenant, first)
        self.write(tier, tenant, second)
        rng = TimeRange(G1M.ceil(window.start), G1M.floor(window.end))
        got = as_aggs(tier.aggregate(tenant, STREAM, cover(rng, tier.granularities), "key"), "key")
        assert got == oracle_by_key(pa.concat_tables([first, second]), rng)

    def test_unknown_stream_and_tenant_are_empty(self, tier, tenant, window, written):
        pieces = cover(TimeRange(G1M.ceil(window.start), G1M.floor(window.end)), tier.granularities)
        for t, s in [(tenant, "nothing-here"), (f"{tenant}x", STREAM)]:
            assert tier.aggregate(t, s, pieces, "key").num_rows == 0
            assert tier.aggregate(t, s, pieces, "bucket").num_rows == 0
            assert tier.aggregate(t, s, pieces, "key", "a").num_rows == 0

    def test_streams_lists_what_was_written(self, tier, tenant, window):
        rnd = random.Random(5)
        assert tier.streams(tenant) == []
        self.write(tier, tenant, random_events(rnd, window, 10, stream="b.stream"))
        self.write(tier, tenant, random_events(rnd, window, 10, stream="a-stream"))
        assert tier.streams(tenant) == ["a-stream", "b.stream"]
        assert tier.streams(f"{tenant}x") == []

    def test_delete_range_removes_exactly_that_range(self, tier, tenant, window, written):
        _, events = written
        day = DAY_MS
        cut = TimeRange(((window.start // day) + 1) * day, ((window.start // day) + 2) * day)
        tier.delete_range(tenant, STREAM, cut)
        self.settle(tier)
        whole = TimeRange(G1M.ceil(window.start), G1M.floor(window.end))
        kept = events.filter(pc.or_(pc.less(events["ts"], cut.start), pc.greater_equal(events["ts"], cut.end)))
        assert kept.num_rows < events.num_rows
        got = as_aggs(tier.aggregate(tenant, STREAM, cover(whole, tier.granularities), "key"), "key")
        assert got == oracle_by_key(kept, whole)

    def test_delete_everything_leaves_nothing(self, tier, tenant, window, written):
        tier.delete_range(tenant, None, TimeRange(MIN_MS, MAX_MS))
        self.settle(tier)
        pieces = cover(TimeRange(G1M.ceil(window.start), G1M.floor(window.end)), tier.granularities)
        assert tier.aggregate(tenant, STREAM, pieces, "key").num_rows == 0
        assert tier.aggregate(tenant, STREAM, pieces, "bucket").num_rows == 0
        assert tier.streams(tenant) == []

    def test_health_answers(self, tier):
        assert tier.health() is None

    def test_read_raw_is_exact_to_the_ms_and_ordered(self, tier, tenant, window):
        rnd = random.Random(9)
        lo = rnd.randrange(window.start + 1, window.start + DAY_MS)
        hi = rnd.randrange(lo + 1, window.end - 1)
        edges = events_of([("a", lo - 1, 1.0), ("b", lo, 2.0), ("c", hi - 1, 3.0), ("d", hi, 4.0)])
        events = pa.concat_tables([random_events(rnd, window, 300), edges])
        if RAW not in tier.granularities:
            with pytest.raises(NotSupported):
                list(tier.read_raw(tenant, STREAM, TimeRange(lo, hi)))
            return
        self.write(tier, tenant, events)
        got = pa.Table.from_batches(list(tier.read_raw(tenant, STREAM, TimeRange(lo, hi))), EVENT_SCHEMA).to_pylist()
        assert [e["ts"] for e in got] == sorted(e["ts"] for e in got)
        want = [e for e in events.to_pylist() if lo <= e["ts"] < hi]
        assert sorted(got, key=_event_order) == sorted(want, key=_event_order)
        assert list(tier.read_raw(tenant, "nothing-here", TimeRange(lo, hi))) == []

    def test_ranking_equals_the_merge_of_partials(self, tier, tenant, window, written):
        rnd, _ = written
        for _ in range(3):
            pieces = cover(random_range(rnd, window), tier.granularities)
            merged = merge_partials([tier.aggregate(tenant, STREAM, pieces, "key")], "key")
            for by in RANK_BY:
                if tier.supports("top_k"):
                    for k in (1, 3, 50):
                        assert tier.top_k(tenant, STREAM, pieces, k, by) == top_k(merged, k, by), (pieces, by, k)
                if tier.supports("rank"):
                    for key in ("a", "日本", "never-written"):
                        assert tier.rank(tenant, STREAM, pieces, key, by, 2) == rank_of(merged, key, by, 2), \
                            (pieces, by, key)

    def test_ranked_access_is_sorted_complete_and_exact(self, tier, tenant, window, written):
        """Sorted access never rises and returns every key's partial exactly once per list (the
        sum over lists is the partial); random access equals the aggregate (tiers.base.RankedAccess)."""
        rnd, _ = written
        for _ in range(3):
            pieces = cover(random_range(rnd, window), tier.granularities)
            merged = merge_partials([tier.aggregate(tenant, STREAM, pieces, "key")], "key")
            for by in RANK_BY:
                want = {r["key"]: float(r[by]) for r in merged.to_pylist() if r["count"]}
                access = tier.ranked_access(tenant, STREAM, pieces, by)
                try:
                    got: dict[str, float] = defaultdict(float)
                    values_read = []
                    bound = access.frontier()
                    for _ in range(10_000):
                        if access.exhausted:
                            break
                        keys, values = access.sorted_access(7)
                        assert len(keys) == len(values)
                        # whatever the signs: nothing read exceeds the frontier before it, which never rises
                        assert all(v <= bound for v in values), (by, pieces)
                        assert access.frontier() <= bound
                        bound = access.frontier()
                        for key, v in zip(keys, values):
                            got[key] += v
                        values_read += list(values)
                    assert access.sorted_access(7)[0] == [] and access.frontier() == 0
                    assert dict(got) == want, (by, pieces)
                    assert all(v >= access.min_value for v in values_read)
                    asked = list(want)[:40] + ["never-written"]
                    assert access.exact(asked).tolist() == [want.get(k, 0.0) for k in asked], (by, pieces)
                    parts = access.exact_parts(asked)  # rows whose exact sum is the partial
                    assert parts.ndim == 2 and parts.shape[1] == len(asked), (by, pieces)
                    assert [math.fsum(c) for c in parts.T] == [want.get(k, 0.0) for k in asked], (by, pieces)
                finally:
                    access.close()

    def test_key_values_and_distinct_keys_equal_the_partials(self, tier, tenant, window, written):
        """Tier.key_values / distinct_keys: one row per key with events, its exact count or sum
        (negative sums included), keys absent from the range left out; unknown streams empty."""
        rnd, events = written
        for _ in range(6):
            rng = random_range(rnd, window)
            pieces = cover(rng, tier.granularities)
            oracle = oracle_by_key(events, rng)
            for by in RANK_BY:
                t = tier.key_values(tenant, STREAM, pieces, by)
                assert t.schema == KEY_VALUES_SCHEMA
                got = dict(zip(t["key"].to_pylist(), t["value"].to_pylist()))
                assert len(got) == t.num_rows, "each key once"
                assert got == {k: float(a.count if by == "count" else a.sum) for k, a in oracle.items()}, (rng, by)
            keys = tier.distinct_keys(tenant, STREAM, pieces).to_pylist()
            assert sorted(keys) == sorted(oracle), rng
        assert tier.key_values(tenant, "no-such-stream", pieces, "count").num_rows == 0
        assert len(tier.distinct_keys(new_tenant(), STREAM, pieces)) == 0
        assert tier.key_values(tenant, STREAM, [], "sum").num_rows == 0
        with pytest.raises(ValueError):
            tier.key_values(tenant, STREAM, pieces, "max")

    def test_threshold_top_k_equals_the_full_merge(self, tier, tenant, window, written):
        rnd, _ = written
        for _ in range(3):
            pieces = cover(random_range(rnd, window), tier.granularities)
            merged = merge_partials([tier.aggregate(tenant, STREAM, pieces, "key")], "key")
            for by in RANK_BY:
                for k in (1, 3, 50):
                    access = tier.ranked_access(tenant, STREAM, pieces, by)
                    got = threshold_top_k([access], k)
                    access.close()
                    if by == "count":
                        assert got is not None
                    if got is not None:
                        assert got == top_k(merged, k, by), (pieces, by, k)

    def test_unsupported_capabilities_say_so(self, tier, tenant, window):
        pieces = cover(TimeRange(G1M.ceil(window.start), G1M.floor(window.end)), tier.granularities)
        calls = {"top_k": lambda: tier.top_k(tenant, STREAM, pieces, 3, "count"),
                 "rank": lambda: tier.rank(tenant, STREAM, pieces, "a", "count"),
                 "data_versions": lambda: tier.data_versions(tenant, STREAM, pieces),
                 "stats": lambda: tier.stats()}
        assert set(calls) == set(CAPABILITIES)
        for name, call in calls.items():
            if tier.supports(name):
                call()
            else:
                with pytest.raises(NotSupported):
                    call()

    def test_service_down_is_tier_unavailable_naming_the_tier(self, down, window):
        tier, outage = down
        tenant = new_tenant()
        outage.cut()
        rnd = random.Random(4)
        pieces = cover(TimeRange(G1M.ceil(window.start), G1M.floor(window.end)), tier.granularities)
        calls = [lambda: tier.write(tenant, random_events(rnd, window, 20))]
        if self.reads_need_the_service:
            calls += [tier.health, lambda: tier.aggregate(tenant, STREAM, pieces, "key")]
        for call in calls:
            with pytest.raises(TierUnavailable) as err:
                call()
            assert err.value.tier == tier.name and err.value.status == 503


def _event_order(e: dict):
    return e["ts"], e["key"], e["value"], e["id"] or ""
