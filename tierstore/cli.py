"""The `tierstore` command line. Each subcommand registers itself in `build_parser`."""
from __future__ import annotations

import argparse
import sys


def _services(args: argparse.Namespace) -> int:
    from tierstore import services
    from tierstore.layout import Layout

    layout = Layout.from_env()
    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
    try:
        if args.action == "up":
            services.up(layout, only)
        elif args.action == "down":
            services.down(layout, only)
        else:
            services.status(layout, only)
    except services.ServiceError as exc:
        print(f"tierstore services {args.action} failed: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tierstore", description="Time-series tiered storage.")
    commands = parser.add_subparsers(dest="command", required=True)

    services = commands.add_parser(
        "services",
        help="local Redis, PostgreSQL, Trino and s3proxy under $TIERSTORE_HOME",
        description="Local services on 127.0.0.1; data under $TIERSTORE_HOME, ports from $TIERSTORE_PORT_BASE.",
    )
    services.add_argument("action", choices=["up", "down", "status"])
    services.add_argument("--only", metavar="LIST", help="comma-separated subset of redis,postgres,trino,s3")
    services.set_defaults(func=_services)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
