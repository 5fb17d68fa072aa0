"""`tierstore hold add|remove|list` (legal holds) and `tierstore retention [--dry-run]`.

A legal hold keeps every archive partition of its tenant (and stream, if given) that overlaps
[from, to) from retention until it is removed; removed holds stay on record (`list --all`).
`tierstore retention` enforces retention now under the retention job's lock; with --dry-run it
only plans and audits (retention_audit rows with dry_run = true) and deletes nothing.
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys


def register_cli(commands) -> None:
    hold = commands.add_parser("hold", help="legal holds: retention never deletes archive data under a hold")
    actions = hold.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="put [from, to) of a tenant's stream (or all its streams) on hold")
    add.add_argument("--tenant", default="default")
    add.add_argument("--stream", help="the stream held (default: every stream of the tenant)")
    add.add_argument("--from", dest="from_", required=True, metavar="TIME", help="RFC 3339, epoch ms or now-30d")
    add.add_argument("--to", required=True, metavar="TIME")
    add.add_argument("--reason", required=True, help="why (case number, request): kept on record")
    add.add_argument("--by", default=_user(), help="who places the hold (default: the OS user)")
    remove = actions.add_parser("remove", help="release a hold (it stays on record)")
    remove.add_argument("id", type=int)
    remove.add_argument("--by", default=_user())
    ls = actions.add_parser("list", help="active holds (--all: released ones too)")
    ls.add_argument("--tenant")
    ls.add_argument("--all", action="store_true")
    for p in (add, remove, ls):
        p.add_argument("--json", action="store_true", help="print JSON")
    hold.set_defaults(func=hold_command)

    ret = commands.add_parser("retention", help="enforce archive retention now (--dry-run: plan and audit only)")
    ret.add_argument("--as-of", metavar="TIME", help="act as if the clock read this time (default now)")
    ret.add_argument("--dry-run", action="store_true", help="delete nothing; audit what would be deleted")
    ret.add_argument("--json", action="store_true")
    ret.set_defaults(func=retention_command)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"


def hold_command(args: argparse.Namespace) -> int:
    from rollups.timeutil import format_time, now_ms, parse_time
    from scheduler.retention import LegalHolds
    from tierstore.settings import load_settings
    from tierstore.wiring import open_resources

    settings = load_settings()
    with open_resources(settings, hot=False) as resources:
        holds = LegalHolds(resources.pool)
        if args.action == "add":
            now = now_ms()
            lo, hi = parse_time(args.from_, now, field="from"), parse_time(args.to, now, field="to")
            if lo >= hi:
                print("tierstore hold add: --from must be before --to", file=sys.stderr)
                return 2
            found = [holds.add(args.tenant, args.stream, lo, hi, args.reason, args.by)]
        elif args.action == "remove":
            released = holds.remove(args.id, args.by)
            if released is None:
                print(f"tierstore hold remove: no active hold {args.id}", file=sys.stderr)
                return 1
            found = [released]
        else:
            found = holds.list(args.tenant, include_released=args.all)
    if args.json:
        print(json.dumps([h.to_dict() for h in found], default=str))
        return 0
    for h in found:
        state = f"released {h.released_at:%Y-%m-%d} by {h.released_by}" if h.released_at else "active"
        print(f"{h.id:>5}  {h.tenant}/{h.stream or '*'}  [{format_time(h.from_ms)}, {format_time(h.to_ms)})  "
              f"{state}  by {h.created_by}: {h.reason}")
    if not found and args.action == "list":
        print("no holds")
    return 0


def retention_command(args: argparse.Namespace) -> int:
    from rollups.timeutil import now_ms, parse_time
    from scheduler.retention import retention
    from scheduler.runner import check_clock
    from tierstore.settings import load_settings
    from tierstore.wiring import open_resources
    from tiers.locks import RETENTION_LOCK, session_lock

    settings = load_settings()
    as_of = now_ms() if args.as_of is None else parse_time(args.as_of, now_ms(), field="as_of")
    if not args.dry_run:  # a dry run deletes nothing: planning ahead of the clock is allowed
        check_clock(as_of, settings)
    with open_resources(settings, hot=False) as resources:
        with session_lock(resources.pool, RETENTION_LOCK):
            stats = retention(resources.archive, settings, as_of, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(stats, default=str))
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    print(f"retention{' (dry run)' if args.dry_run else ''}: {verb} {stats['deleted']} day partitions "
          f"({stats['events_deleted']} events); kept {stats['kept_hold']} under legal hold, "
          f"{stats['kept_no_rollups']} without rollups; periods rebuilt {stats['periods_rebuilt']}, "
          f"deleted {stats['periods_deleted']}")
    for p in stats.get("plan", []):
        print(f"  {p['action']:<16} {p['tenant']}/{p['stream']} {p['day']}  {p['events']} events"
              + (f"  holds {p['holds']}" if p["holds"] else ""))
    return 0
