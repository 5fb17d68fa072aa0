"""Job cost on a sparse history: N events spread over Y years, then export_cold and archive.

Measures what issue 11 saw (export_cold walking every calendar day, archive writing one object per
day per table): wall time of each job, catalog versions created, S3 objects written. Needs the
services (redis, postgres, s3) of TIERSTORE_HOME / TIERSTORE_PORT_BASE. Prints one JSON line.

    .venv/bin/python -m bench.sparse_history --events 20000 --years 25
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import time
import uuid
from pathlib import Path

import pyarrow as pa

from rollups.timeutil import DAY_MS, parse_time
from tiers.base import EVENT_SCHEMA


def events_table(n: int, lo: int, hi: int, streams: int, seed: int = 7) -> pa.Table:
    rnd = random.Random(seed)
    ts = sorted(rnd.randrange(lo, hi) for _ in range(n))
    return pa.table({"stream": [f"s{rnd.randrange(streams)}" for _ in range(n)],
                     "key": [f"k{rnd.randrange(20)}" for _ in range(n)],
                     "ts": pa.array(ts, pa.int64()), "value": [float(rnd.randrange(100)) for _ in range(n)],
                     "id": pa.array([None] * n, pa.string())}, schema=EVENT_SCHEMA)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--years", type=int, default=25)
    ap.add_argument("--streams", type=int, default=3)
    ap.add_argument("--skip-archive", action="store_true")
    ap.add_argument("--pack-below", type=int, default=1 << 20,
                    help="archive packs: days whose raw file is below this many bytes are packed (0: no packing)")
    a = ap.parse_args()

    import redis as redis_lib

    from scheduler.archive import archive
    from scheduler.export_cold import export_cold
    from tests.api_support import redis_db_url
    from tests.warm_support import migrated_database
    from tierstore.settings import load_settings
    from tiers.archive import ArchiveTier
    from tiers.catalog_pg import PgCatalog
    from tiers.cold import ColdTier
    from tiers.cold_keys import PgKeyDictionary
    from tiers.warm import WarmTier

    settings = load_settings()
    run = uuid.uuid4().hex[:8]
    db = migrated_database(settings.postgres_url, "postgres", "_bench_sparse")
    root = settings.cold_dir / f"_bench_sparse_{run}"
    warm = WarmTier(db, mode="postgres")
    cold = ColdTier(settings, keys=PgKeyDictionary(pool=warm.pool), root=Path(root), engine="duckdb")
    tier = ArchiveTier(settings, pool=warm.pool, keys=cold.keys, engine="duckdb", prefix=f"_bench/sparse-{run}")
    r = redis_lib.Redis.from_url(redis_db_url(settings, "bench_sparse", 63, empty=False))
    catalog = PgCatalog(warm.pool)
    out: dict = {"events": a.events, "years": a.years, "streams": a.streams}
    try:
        r.flushdb()
        end = parse_time("2026-01-01T00:00:00Z")
        lo = end - a.years * 365 * DAY_MS
        catalog.initialise(end, 0)
        with warm.pool.connection() as conn:
            catalog.advance(conn, b_warm=end)
        table = events_table(a.events, lo, end, a.streams)
        for i in range(0, table.num_rows, 500):  # a few hundred day partitions per transaction
            warm.write("bench", table.slice(i, 500))
        v0 = catalog.snapshot().version
        t = time.perf_counter()
        st = export_cold(r, warm, cold, catalog, end, warm_age_ms=0, grace_ms=0)
        out["export_cold_s"] = round(time.perf_counter() - t, 2)
        out["export_cold_days"] = st["days"]
        out["export_cold_catalog_versions"] = catalog.snapshot().version - v0
        if not a.skip_archive:
            v0 = catalog.snapshot().version
            t = time.perf_counter()
            from tiers.archive_packs import PackRule
            st = archive(cold, tier, catalog, end, cold_age_ms=0, grace_ms=0,
                         pack=PackRule(a.pack_below) if a.pack_below > 0 else None)
            out["archive_s"] = round(time.perf_counter() - t, 2)
            out["archive_objects"] = st["objects"]
            out["archive_partitions"] = st["partitions"]
            out["archive_bytes"] = st["bytes"]
            out["archive_packs"] = st["packs"]
            out["archive_bytes_per_event"] = round(st["bytes"] / max(1, a.events), 1)
            out["archive_objects_per_1k_events"] = round(1000 * st["objects"] / max(1, a.events), 1)
            out["archive_catalog_versions"] = catalog.snapshot().version - v0
    finally:
        r.flushdb()
        r.close()
        cold.close()
        tier.close()
        warm.close()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
