"""Garbage collection of the archive: objects no registered manifest names that a crashed rewrite left.

Two kinds of garbage can outlive the run that made them (tiers/archive_rewrite.py):

1. Uploads of a rewrite that crashed BEFORE its commit (`tierstore import` merging history into
   archived days, a delete's day rewrite, a rebuilt week or month, an unpack): objects at
   VERSIONED keys (`part-0.v<version>.parquet`, `<name>.v<version>.json`) that no manifest names
   and nobody ever will — a version is never reused. A rerun uploads under a new version, so
   they would stay in the bucket for good, paid for and listed by every engine that reads the
   folder.
2. The replaced objects of an import that committed and then crashed before deleting them, when
   the same files are never imported again (the rerun is what sweeps them:
   tierstore.history_archive.sweep): the ledger holds their keys ("archive/garbage") and no
   "archive/swept".

`collect` deletes both: (1) every versioned key in a registered stream's folders whose object is older
than `grace_ms` (by its S3 LastModified, wall-clock time: rewrites that are running now, outside
the archive lock — a delete through the API — upload for seconds to minutes, never for a day) and
that no registry row (any status) names, as an object or as its manifest; (2) every unfinished
import sweep. Keys a registered manifest names are never deleted; unversioned keys are never
touched (the archive job rewrites those in place, and a rerun overwrites them). Under Object Lock
nothing is deleted (tiers.archive_rewrite.discard counts them as kept). The retention job runs
it, under the archive lock (which imports hold too), once per run.
"""
from __future__ import annotations

import re
import time
from typing import Any

from tiers import archive_rewrite as R
from tiers import parquet_layout as PL

#: how old (wall clock, ms) an unregistered versioned object must be before it is collected
GC_GRACE_MS = 24 * 3_600_000
#: a rewrite's version in a key (tiers.s3_store.versioned_key of tiers.archive_rewrite.new_version:
#: the time in ms as hex, then 8 random hex digits), before the extension or at the end
VERSIONED = re.compile(r"\.v[0-9a-f]{12,}(?:\.[^/.]+)?$")


def is_versioned(key: str) -> bool:
    """True for a key a rewrite wrote (tiers.s3_store.versioned_key with a version)."""
    return VERSIONED.search(key) is not None


def _streams(pool) -> list[tuple[str, str]]:
    """(tenant, stream) of every stream the registry has a row of (any status)."""
    with pool.connection() as conn:
        return [tuple(r) for r in conn.execute("SELECT DISTINCT tenant, stream FROM archive_partitions ORDER BY 1, 2")]


def unregistered_versioned(store, pool, *, grace_ms: int = GC_GRACE_MS, now: float | None = None
                           ) -> tuple[list[str], int]:
    """(keys, listed): the versioned keys older than grace_ms that no registry row names, under
    the folders of the streams this instance's registry knows (every table's
    `<table>/tenant=T/stream=S/` and `_manifests/tenant=T/stream=S/`: a rewrite only ever
    rewrites a registered stream's partitions, and another instance's streams in a shared bucket
    are never looked at), and how many objects were listed. `now`: wall-clock seconds (tests)."""
    now = time.time() if now is None else now
    cutoff = now - grace_ms / 1000
    listed, old = 0, []
    folders = store.folders()
    for tenant, stream in _streams(pool):
        where = f"tenant={PL.escape(tenant)}/stream={PL.escape(stream)}/"
        for folder in folders:
            for obj in store.list_objects(folder + where):
                listed += 1
                if is_versioned(obj["Key"]) and obj["LastModified"].timestamp() <= cutoff:
                    old.append(obj["Key"])
    named = R.named_keys(pool, old)
    return [k for k in old if k not in named], listed


def unfinished_sweeps(pool) -> list[str]:
    """Digests of imports whose commit recorded replaced objects ("archive/garbage") and whose
    sweep never ran ("archive/swept" missing)."""
    from tierstore.history_archive import GARBAGE, SWEPT

    with pool.connection() as conn:
        rows = conn.execute("SELECT g.digest FROM import_ledger g WHERE g.part = %s AND NOT EXISTS "
                            "(SELECT 1 FROM import_ledger s WHERE s.digest = g.digest AND s.part = %s) "
                            "ORDER BY g.recorded_at", (GARBAGE, SWEPT)).fetchall()
    return [r[0] for r in rows]


def collect(archive, *, grace_ms: int = GC_GRACE_MS, dry_run: bool = False, now: float | None = None
            ) -> dict[str, Any]:
    """Delete the archive's garbage (see the module doc). `archive`: a tiers.archive.ArchiveTier.

    Returns {"listed", "unregistered", "deleted", "kept", "sweeps"} (dry run: nothing deleted,
    "unregistered" and "sweeps" say what would be). Raises what boto3 / psycopg raise on an
    outage (the retention job then fails and reruns)."""
    from tierstore.history_archive import sweep

    store, pool = archive.store, archive.pool
    orphans, listed = unregistered_versioned(store, pool, grace_ms=grace_ms, now=now)
    digests = unfinished_sweeps(pool)
    stats: dict[str, Any] = {"listed": listed, "unregistered": len(orphans), "deleted": 0, "kept": 0,
                             "sweeps": len(digests)}
    if dry_run:
        return stats
    if orphans:
        out = R.discard(store, orphans)
        stats["deleted"] += out["deleted"]
        stats["kept"] += out["kept"]
    for digest in digests:
        out = sweep(archive, pool, digest)
        stats["deleted"] += out["deleted"]
        stats["kept"] += out["kept"]
    return stats


__all__ = ["collect", "unregistered_versioned", "unfinished_sweeps", "is_versioned", "GC_GRACE_MS"]
