"""What a hand-over costs now that the scheduled refresh defers hot-owned 1h/1d buckets (issue 11):
expire_hot's refresh recomputes each stale hour it hands over from rollup_1m, and, once a day, the
stale day from rollup_1h (tiers/warm_postgres.py, deferral).

A scratch database (tierstore_bench_handover, emptied first) gets one stream whose rollup_1m holds
--keys keys in each of the 60 minutes of an hour, and whose rollup_1h holds them in each of the 24
hours of the day before; both buckets are recorded stale. Timed: refresh(defer_from=the hour's end)
(what expire_hot runs to move b_warm past that hour), then refresh(defer_from=the day's end).
Last line: JSON {"keys", "rows_1m", "hour_s", "rows_1h", "day_s"}.

    TIERSTORE_HOME=... TIERSTORE_PORT_BASE=... python -m bench.handover [--keys 100000]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from rollups.timeutil import DAY_MS, HOUR_MS

DATABASE = "tierstore_bench_handover"
DAY = 1_796_083_200_000 - 1_796_083_200_000 % DAY_MS  # a day start (2026-12-01)
_FILL = """
INSERT INTO {table} (stream_id, key_id, bucket, count, sum, min, max, sum_lo)
SELECT 1, k, to_timestamp((%(start)s + b * %(step)s) / 1000.0), 1 + (k + b) %% 3, (1 + (k + b) %% 3) * 2.0, 1, 5, 0
FROM generate_series(1, %(keys)s) AS k, generate_series(0, %(n)s - 1) AS b
"""
_STALE = ("INSERT INTO warm_stale (grain, stream_id, bucket, bucket_end) "
          "VALUES (%s, 1, to_timestamp(%s / 1000.0), to_timestamp(%s / 1000.0))")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000, help="keys with events in every minute of the hour")
    args = parser.parse_args(argv)

    from tests.warm_support import fresh_database
    from tierstore.settings import load_settings
    from tiers.db import apply_migrations
    from tiers.warm import WarmTier

    url = fresh_database(load_settings().postgres_url, DATABASE)
    apply_migrations(url, "postgres")
    hour = DAY - 19 * HOUR_MS  # an hour of the day before: the first refresh leaves DAY stale
    warm = WarmTier(url, mode="postgres")
    try:
        with warm.pool.connection() as conn:
            conn.execute(_FILL.format(table="rollup_1m"), {"start": hour, "step": 60_000, "keys": args.keys, "n": 60})
            conn.execute(_FILL.format(table="rollup_1h"), {"start": DAY, "step": HOUR_MS, "keys": args.keys, "n": 24})
            conn.execute(_STALE, ("1h", hour, hour + HOUR_MS))
            conn.execute(_STALE, ("1d", DAY, DAY + DAY_MS))
            conn.execute("ANALYZE rollup_1m")
            conn.execute("ANALYZE rollup_1h")
        start = time.monotonic()
        warm.refresh(defer_from=hour + HOUR_MS)
        hour_s = time.monotonic() - start
        start = time.monotonic()
        stats = warm.refresh(defer_from=DAY + DAY_MS)
        day_s = time.monotonic() - start
    finally:
        warm.close()
    print(json.dumps({"keys": args.keys, "rows_1m": 60 * args.keys, "hour_s": round(hour_s, 2),
                      "rows_1h": 24 * args.keys, "day_s": round(day_s, 2), "day_stats": stats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
