"""Per-bucket data versions for stored sketches (tiers/sketch_buckets.py).

Cold and archive give one data version per stream (Tier.data_versions): every export or archive
run changes it, which would make every stored sketch of the stream stale at once. A whole bucket
of cold or archive reads exactly one partition file of one rollup table (tiers/parquet_core.py
`_scan`: the day file for 1h and 1d buckets, the week or month file for 1w and 1mo), and files are
only ever replaced whole (write + rename, or a re-registered manifest), so the identity of that
partition is a version of the bucket:
  cold     the file's (path, inode, size, mtime_ns)
  archive  the registry row of the partition (period, start, manifest sha256, archived_at)
A bucket whose partition is absent reads nothing and keeps the stream's version (which changes
when a partition appears). Hot and warm versions are already per piece and are used as they are.
"""
from __future__ import annotations

import os
from typing import Any, Hashable, Sequence

from rollups.cover import Piece
from rollups.timeutil import DAY_MS, G1D, G1H
from tiers.errors import translate


def bucket_versions(tier_name: str, tier: Any, tenant: str, stream: str, pieces: Sequence[Piece]) -> list[Hashable]:
    """One version per whole-bucket piece. Raises TierUnavailable(tier_name) when the tier is down."""
    base = tier.data_versions(tenant, stream, pieces)
    if tier_name == "cold" and hasattr(tier, "layout"):
        return [_cold(tier, tenant, stream, p) or v for p, v in zip(pieces, base)]
    if tier_name == "archive" and hasattr(tier, "registry"):
        rows = _archive_rows(tier, tenant, stream)
        return [rows.get(_partition(p)) or v for p, v in zip(pieces, base)]
    return base


def _partition(p: Piece) -> tuple[str, int]:
    """(period, start) of the partition a whole bucket is read from."""
    g = p.granularity
    if g in (G1H, G1D):
        return "day", p.range.start - p.range.start % DAY_MS
    return {"1w": "week", "1mo": "month"}[g.name], p.range.start


def _cold(tier: Any, tenant: str, stream: str, p: Piece) -> tuple | None:
    _, start = _partition(p)
    path = tier.layout.rollup_file(tenant, stream, p.granularity, start)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return ("cold-file", str(path), st.st_ino, st.st_size, st.st_mtime_ns)


def _archive_rows(tier: Any, tenant: str, stream: str) -> dict[tuple[str, int], tuple]:
    with translate("archive"), tier.registry.pool.connection() as conn:
        rows = conn.execute("SELECT period, start_ms, manifest_sha256, archived_at FROM archive_partitions "
                            "WHERE tenant = %s AND stream = %s AND status = 'archived'", (tenant, stream)).fetchall()
    return {(period, start): ("archive-partition", period, start, sha, str(at)) for period, start, sha, at in rows}
