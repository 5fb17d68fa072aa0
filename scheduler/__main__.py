"""`python -m scheduler run NAME [--as-of T]`: run one job in this process and wait for it.

Prints the run record as JSON; exits 0 when the run is done, 1 otherwise. The crash tests run jobs
this way (a crash point kills only this process).
"""
from __future__ import annotations

import argparse
import json
import sys

from rollups.timeutil import now_ms, parse_time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scheduler")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one job now and wait")
    run.add_argument("name")
    run.add_argument("--as-of", default=None, help="RFC 3339, epoch ms or now-24h")
    args = parser.parse_args(argv)

    import scheduler.jobs  # noqa: F401  (registers the jobs)
    from scheduler.resources import build_resources, close_resources
    from scheduler.runner import JobRunner
    from tierstore.settings import load_settings

    settings = load_settings()
    resources = build_resources(settings)
    runner = JobRunner(resources["pool"], settings, resources, max_workers=1)
    try:
        as_of = None if args.as_of is None else parse_time(args.as_of, now_ms(), field="as_of")
        run_id = runner.run(args.name, as_of, wait=True)
        record = runner.get_run(run_id)
    finally:
        runner.close()
        close_resources(resources)
    print(json.dumps(record, default=str))
    return 0 if record and record["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
