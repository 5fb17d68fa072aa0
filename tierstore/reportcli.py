"""`tierstore report --stream S --from F --to T [--kind totals|events] [--format csv|parquet|json] [-o FILE]`.

Builds the report in this process exactly as POST /v1/reports does (scheduler.reports: raw events
from every tier, the event log flushed first, a manifest of every source with its SHA-256), shows
a progress bar, records it in the reports table, and copies the file to -o (default: prints the
path under $TIERSTORE_HOME/reports).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys


def register_cli(commands) -> None:
    rep = commands.add_parser("report", help="an exact compliance report (totals or raw events) with a source manifest")
    rep.add_argument("--stream", required=True)
    rep.add_argument("--from", dest="from_", required=True, metavar="TIME",
                     help="range start, inclusive (RFC 3339 / epoch ms / now-7d): exact to the millisecond")
    rep.add_argument("--to", required=True, metavar="TIME", help="range end, exclusive")
    rep.add_argument("--kind", choices=("totals", "events"), default="totals")
    rep.add_argument("--format", choices=("csv", "parquet", "json"), default="csv")
    rep.add_argument("-o", "--output", metavar="FILE", help="write the report here")
    rep.add_argument("--tenant", default="default")
    rep.add_argument("--json", action="store_true", help="print the report's status document (with the manifest)")
    rep.add_argument("--quiet", action="store_true", help="no progress bar")
    rep.set_defaults(func=report_command)


def report_command(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from rollups.timeutil import now_ms, parse_time
    from tierstore.settings import load_settings
    from tierstore.wiring import open_resources

    settings = load_settings()
    now = now_ms()
    lo, hi = parse_time(args.from_, now, field="from"), parse_time(args.to, now, field="to")
    with open_resources(settings, hot=False, with_reports=True, report_workers=0) as resources:
        service = resources.reports
        rid = service.submit(args.tenant, args.stream, lo, hi, args.kind, args.format)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeElapsedColumn(), disable=args.quiet, transient=False) as bar:
            task = bar.add_task(f"report {args.stream} {args.kind}", total=1.0)
            service.run(rid, progress=lambda f: bar.update(task, completed=f))
        status = service.status(args.tenant, rid)
        if status["status"] != "done":
            print(f"tierstore report: {status['status']}: {status['error']}", file=sys.stderr)
            return 1
        path = service.file(args.tenant, rid)[0]
        if args.output:
            shutil.copyfile(path, args.output)
            path = args.output
    if args.json:
        print(json.dumps(status, default=str))
    else:
        print(f"{path}: {status['rows']} rows, sha256 {status['sha256']}, from {len(status['manifest'])} sources "
              f"(catalog version {status['catalog_version']})")
        for e in status["manifest"]:
            print(f"  {e['tier']:<8} {e['rows']:>9} rows  {e['sha256'][:16]}…  {e['source']}")
    return 0
