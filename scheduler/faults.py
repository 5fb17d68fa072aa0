"""Fault injection: named crash points inside every job step.

With TIERSTORE_CRASH_AT=<point> in its environment, a process reaching that point dies at once
with exit status 137 (as if SIGKILLed: no cleanup, no flush of client buffers, no ROLLBACK sent),
after writing one line to stderr that names the point. Tests run a job in a subprocess once per
point, then run it again without the variable and check nothing was lost or counted twice.

Every point is listed in CRASH_POINTS (by job) so tests iterate over all of them; a job that adds
steps adds its points here (one line).
"""
from __future__ import annotations

import os
import sys

CRASH_ENV = "TIERSTORE_CRASH_AT"
CRASH_EXIT_CODE = 137

CRASH_POINTS: dict[str, tuple[str, ...]] = {
    "flush": ("flush.after_read", "flush.after_copy", "flush.before_commit", "flush.after_commit",
              "flush.after_ack", "flush.after_trim"),
    "deadletters": ("flush.after_isolate", "flush.after_deadletter"),  # flush, reached only when a tier refuses
    "refresh": ("refresh.after_rollup_1m", "refresh.after_rollup_1h", "refresh.after_rollup_1d",
                "refresh.after_commit"),
    "expire_hot": ("expire_hot.after_floor", "expire_hot.after_flush", "expire_hot.after_refresh",
                   "expire_hot.before_commit", "expire_hot.after_advance", "expire_hot.after_trim"),
    "export_cold": tuple(f"export_cold.{p}" for p in ("before_write", "after_write", "after_verify", "after_rename",
                                                      "after_catalog", "during_drop")),
    "archive": tuple(f"archive.{p}" for p in ("after_plan", "after_upload", "after_manifest", "after_verify",
                                              "after_register", "before_commit", "after_commit", "during_purge",
                                              "after_purge")),
    "retention": tuple(f"retention.{p}" for p in ("after_plan", "after_mark", "during_delete", "after_delete",
                                                  "after_rebuild", "after_commit")),
    "reports": ("reports.after_flush", "reports.after_read", "reports.after_write"),
}


def all_points() -> list[str]:
    return [p for points in CRASH_POINTS.values() for p in points]


def crash_point(name: str) -> None:
    """Die here (exit 137) if TIERSTORE_CRASH_AT names this point. Unknown names are a bug."""
    target = os.environ.get(CRASH_ENV)
    if not target:
        return
    if name not in all_points():
        raise ValueError(f"crash point {name!r} is not listed in scheduler.faults.CRASH_POINTS")
    if target == name:
        sys.stdout.flush()
        sys.stderr.write(f"{CRASH_ENV}={name} reached: exiting with {CRASH_EXIT_CODE}\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)
