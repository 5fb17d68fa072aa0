"""router/ranked_chunks.py for cold and the archive: a repeated range whose whole answer misses (its
hot part moved) reads cold's and the archive's sorted and random accesses from the shared results
cache without opening them; an import that rewrites their days changes their data versions and
the answers follow. Every answer equals the raw events' (tests/api_support.check_topk)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from rollups.timeutil import DAY_MS, HOUR_MS, MINUTE_MS
from router import ranked_chunks
from router.context import EXTENSION
from tests.api_support import check_topk, check_topk_after_hot_moves, counted_opens
from tests.test_history_import_archive import _boundaries, _events, _file, _first_import, _instance
from tierstore.importer import run_import


@pytest.fixture
def instance(settings):
    yield from _instance(settings, "ranked_chunk_cache", 127)


def test_cold_and_archive_pieces_come_from_the_cache_until_an_import_changes_them(instance, tmp_path):
    api, settings = instance
    rnd, stream, tag, lo, hi, oracle, _, _ = _first_import(settings, tmp_path, 31, "rcc", 1500)
    ctx = api.app.extensions[EXTENSION]
    with counted_opens(ctx.tiers, ("cold", "archive")) as opened:
        start, end = lo + 7 * MINUTE_MS, hi
        for by in ("sum", "count"):
            check_topk(api, oracle, stream, start, end, 10, by)
        first = Counter(opened)
        assert first["cold"] >= 1 and first["archive"] >= 1, first

        # a new event in hot: the whole answer misses, cold's and the archive's parts do not
        check_topk_after_hot_moves(api, oracle, stream, start, end,
                                   {"stream": stream, "key": "song_3", "ts": hi - MINUTE_MS, "value": 7.0})
        assert opened == first, "cold or the archive was opened for a repeated range"

        # an import into archived and cold days: both versions change, both are read again
        b = _boundaries(api)
        second = _events(rnd, stream, 300, tag + "b", lo, b["cold"])
        second.append({"stream": stream, "key": "song_39", "ts": b["archive"] + DAY_MS + HOUR_MS, "value": 1e6})
        run_import(settings, [_file(tmp_path, "b.parquet", second)], progress=False)
        oracle.add(second)
        for by in ("sum", "count"):
            check_topk(api, oracle, stream, start, end, 10, by)
        assert opened["cold"] > first["cold"] and opened["archive"] > first["archive"], opened
        top = api.get("/v1/query/topk", {"stream": stream, "from": start, "to": end, "k": 1, "by": "sum"}).json()
        assert top["items"][0]["key"] == "song_39"


class _Cache:
    enabled = True

    def __init__(self):
        self.store = {}

    def get_many(self, keys):
        return [self.store.get(k) for k in keys]

    def put_many(self, items):
        self.store.update(items)


class _Tier:
    def __init__(self, version):
        self.version = version

    def supports(self, capability):
        return capability == "data_versions"

    def data_versions(self, tenant, stream, pieces):
        return [self.version] * len(pieces)


class _Access:
    min_value = 0.0

    def __init__(self, parts):
        self.parts = parts

    def exact_parts(self, keys):
        return self.parts

    def close(self):
        pass


def test_tiers_with_equal_pieces_and_versions_do_not_share_entries():
    from types import SimpleNamespace

    from rollups.cover import Piece
    from rollups.timeutil import G1D, TimeRange

    planner = SimpleNamespace(cache=_Cache())
    piece = Piece(G1D, TimeRange(0, DAY_MS))
    warm = ranked_chunks.wrap(planner, _Tier("7"), "warm", "t", "s", [piece], "sum",
                              lambda: _Access(np.array([[1.0], [0.0]])))
    cold = ranked_chunks.wrap(planner, _Tier("7"), "cold", "t", "s", [piece], "sum",
                              lambda: _Access(np.array([[2.0], [0.0]])))
    assert warm.exact_parts(["k"])[0, 0] == 1.0
    assert cold.exact_parts(["k"])[0, 0] == 2.0  # not warm's entry


def test_more_than_two_exact_rows_fold_into_an_exact_pair():
    from types import SimpleNamespace

    from rollups.cover import Piece
    from rollups.timeutil import G1D, TimeRange

    planner = SimpleNamespace(cache=_Cache())
    piece = Piece(G1D, TimeRange(0, DAY_MS))
    rows = np.array([[1.0], [1e16], [1.0], [-1e16]])  # rows past the first summed in order: 1e16 + 1 rounds to 1e16, total 1
    access = ranked_chunks.wrap(planner, _Tier("1"), "cold", "t", "s", [piece], "sum", lambda: _Access(rows))
    hi, lo = access.exact_parts(["k"])[:, 0]
    assert hi + lo == 2.0
    again = ranked_chunks.wrap(planner, _Tier("1"), "cold", "t", "s", [piece], "sum", lambda: None)
    hi, lo = again.exact_parts(["k"])[:, 0]  # from the cache: the access is not opened
    assert hi + lo == 2.0
