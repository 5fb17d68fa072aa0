"""sql/ migrations through yoyo: both warm modes, applied twice, mode recorded and enforced."""
from __future__ import annotations

import pytest

from rollups.errors import ConfigError
from tiers.db import MIGRATIONS_DIR, apply_migrations, connect, installed_warm_mode, yoyo_url
from tests.warm_support import fresh_database, mode_params, require_mode

TABLES = {"catalog", "catalog_history", "job_runs", "streams", "keys", "flush_checkpoint", "warm_dirty",
          "warm_meta", "events"}


@pytest.mark.parametrize("mode", mode_params())
def test_migrations_apply_twice_idempotently(pg_url, mode):
    require_mode(pg_url, mode)
    url = fresh_database(pg_url, f"tierstore_test_migrations_{mode}")
    assert apply_migrations(url, mode) == mode
    assert apply_migrations(url, mode) == mode
    assert apply_migrations(url) == mode  # auto keeps what the database has
    with connect(url) as conn:
        names = {r[0] for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace")}
        assert TABLES <= names
        assert {"rollup_1m", "rollup_1h", "rollup_1d"} <= names
        assert installed_warm_mode(conn) == mode
        applied = conn.execute("SELECT count(*) FROM _yoyo_migration").fetchone()[0]
    files = list((MIGRATIONS_DIR / "common").glob("*.sql")) + list((MIGRATIONS_DIR / f"warm_{mode}").glob("*.sql"))
    assert applied == len(files)


def test_database_refuses_to_switch_warm_mode(pg_url):
    url = fresh_database(pg_url, "tierstore_test_migrations_switch")
    apply_migrations(url, "postgres")
    with pytest.raises(ConfigError, match="TIERSTORE_WARM_MODE"):
        apply_migrations(url, "timescale")


def test_yoyo_url_names_the_psycopg3_driver():
    assert yoyo_url("postgresql://u@h:1/d").startswith("postgresql+psycopg://u@h:1/d")
    with pytest.raises(ConfigError):
        yoyo_url("mysql://u@h/d")
