"""PgCatalog: initialise once, forward-only minute-aligned moves, ordering, version, history."""
from __future__ import annotations

import pytest

from rollups.timeutil import HOUR_MS, MIN_MS, MINUTE_MS
from tiers.catalog_pg import BoundaryMoveRefused, CatalogNotInitialised, PgCatalog
from tiers.db import make_pool
from tests.warm_support import migrated_database, reset

NOW = 1_763_805_723_456  # 2025-11-22T10:02:03.456Z


@pytest.fixture(scope="module")
def catalog_url(pg_url):
    return migrated_database(pg_url, "postgres", "_catalog")


@pytest.fixture
def catalog(catalog_url):
    reset(catalog_url)
    pool = make_pool(catalog_url, max_size=4)
    yield PgCatalog(pool)
    pool.close()


def test_snapshot_before_initialise_is_refused(catalog):
    with pytest.raises(CatalogNotInitialised):
        catalog.snapshot()


def test_initialise_is_idempotent_and_on_the_handover_grid(catalog):
    snap = catalog.initialise(NOW, 24 * HOUR_MS)
    assert snap.version == 1
    assert snap.b_warm == (NOW - 24 * HOUR_MS) // HOUR_MS * HOUR_MS  # hot_age >= 12 h: whole hours
    assert snap.b_cold == snap.b_archive == MIN_MS
    assert catalog.initialise(NOW + 10 * HOUR_MS, HOUR_MS) == snap


def test_advance_moves_forward_and_bumps_version(catalog):
    snap = catalog.initialise(NOW, HOUR_MS)
    with catalog._pool.connection() as conn:
        moved = catalog.advance(conn, b_warm=snap.b_warm + 5 * MINUTE_MS)
    assert moved.version == 2 and moved.b_warm == snap.b_warm + 5 * MINUTE_MS
    assert catalog.snapshot() == moved
    with catalog._pool.connection() as conn:
        same = catalog.advance(conn, b_warm=moved.b_warm)
    assert same == moved  # no change, no new version


@pytest.mark.parametrize("move", [
    {"b_warm": -MINUTE_MS},            # backwards (relative, see below)
    {"b_warm": 30_000},                # not on a minute (relative)
    {"b_cold": 2 * HOUR_MS},           # b_cold past b_warm
    {"b_archive": MINUTE_MS, "b_cold": 0},  # b_archive past b_cold
])
def test_advance_refuses_bad_moves_and_changes_nothing(catalog, move):
    snap = catalog.initialise(NOW, HOUR_MS)
    base = {"b_warm": snap.b_warm, "b_cold": snap.b_warm - HOUR_MS, "b_archive": snap.b_warm - HOUR_MS}
    with catalog._pool.connection() as conn:
        catalog.advance(conn, b_cold=base["b_cold"], b_archive=base["b_archive"])
    before = catalog.snapshot()
    absolute = {k: base[k] + v for k, v in move.items()}
    with pytest.raises(BoundaryMoveRefused):
        with catalog._pool.connection() as conn:
            catalog.advance(conn, **absolute)
    assert catalog.snapshot() == before


def test_advance_rolls_back_with_the_callers_transaction(catalog):
    snap = catalog.initialise(NOW, HOUR_MS)
    with pytest.raises(RuntimeError):
        with catalog._pool.connection() as conn:
            catalog.advance(conn, b_warm=snap.b_warm + HOUR_MS)
            raise RuntimeError("the copy failed verification")
    assert catalog.snapshot() == snap


def test_settled_is_the_version_current_a_grace_period_ago(catalog):
    snap = catalog.initialise(NOW, HOUR_MS)
    with catalog._pool.connection() as conn:
        catalog.advance(conn, b_warm=snap.b_warm + HOUR_MS)
    assert catalog.settled(grace_ms=3_600_000).b_warm == snap.b_warm
    assert catalog.settled(grace_ms=0).b_warm == snap.b_warm + HOUR_MS


def test_the_handover_grid_is_hours_from_a_12_hour_hot_age_and_minutes_below():
    from tiers.catalog import b_warm_target, handover_step

    now = 1_700_000_000_000 + 37 * MINUTE_MS + 12_345
    assert handover_step(24 * HOUR_MS) == handover_step(12 * HOUR_MS) == HOUR_MS
    assert handover_step(12 * HOUR_MS - MINUTE_MS) == handover_step(HOUR_MS) == MINUTE_MS
    day = b_warm_target(now, 24 * HOUR_MS)
    assert day % HOUR_MS == 0 and now - 25 * HOUR_MS < day <= now - 24 * HOUR_MS
    short = b_warm_target(now, HOUR_MS)
    assert short % MINUTE_MS == 0 and now - HOUR_MS - MINUTE_MS < short <= now - HOUR_MS
