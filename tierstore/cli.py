"""The `tierstore` command line. Each subcommand registers itself in `build_parser`."""
from __future__ import annotations

import argparse
import os
import sys


def _services(args: argparse.Namespace) -> int:
    from tierstore import services
    from tierstore.layout import InstanceLayout

    layout = InstanceLayout.from_env()
    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else None
    try:
        if args.action == "up":
            services.up(layout, only, args.redis or _redis_mode())
        elif args.action == "down":
            services.down(layout, only)
        else:
            services.status(layout, only)
    except services.ServiceError as exc:
        print(f"tierstore services {args.action} failed: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def _redis_mode() -> str:
    """settings.redis_mode (TIERSTORE_REDIS_MODE or the config file); standalone if the settings do not load."""
    from rollups.errors import ConfigError
    from tierstore.settings import load_settings

    try:
        return load_settings().redis_mode
    except ConfigError:
        return os.environ.get("TIERSTORE_REDIS_MODE") or "standalone"


def _settings():
    from tierstore.logs import configure_from_settings
    from tierstore.settings import load_settings

    settings = load_settings()
    configure_from_settings(settings)
    return settings


def _serve(args: argparse.Namespace) -> int:
    """gunicorn over `tierstore.app:wsgi()`; migrations applied once here, before the workers fork.

    This process becomes the gunicorn master (exec): SIGTERM and SIGHUP stop it gracefully,
    SIGINT at once, and it stops its workers first (tierstore/gunicorn_conf.py)."""
    from router.auth import bind_refusal
    from tiers.db import apply_migrations

    settings = _settings()
    if refusal := bind_refusal(args.host, settings):
        print(f"tierstore serve: {refusal}", file=sys.stderr, flush=True)
        return 2
    mode = apply_migrations(settings.postgres_url, settings.warm_mode)
    port = args.port or settings.layout.api_port
    _metrics_dir(settings, port)
    print(f"tierstore: warm mode {mode}; serving on http://{args.host}:{port}", flush=True)
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:tierstore.gunicorn_conf",
            "--bind", f"{args.host}:{port}", "--workers", str(args.workers),
            "--threads", str(args.threads), "--timeout", "120", "--graceful-timeout", "10",
            "--access-logfile", "-" if args.access_log else "/dev/null", "tierstore.app:wsgi()"]
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover


def _metrics_dir(settings, port: int) -> None:
    """One Prometheus multiprocess directory per server, emptied at start: /metrics sums all workers."""
    import shutil

    path = settings.home / "run" / f"prometheus-{port}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def _db(args: argparse.Namespace) -> int:
    from tiers.db import apply_migrations

    settings = _settings()
    mode = apply_migrations(settings.postgres_url, settings.warm_mode)
    print(f"database at {settings.postgres_url} is up to date (warm mode: {mode})")
    return 0


def _open_runner(settings, max_workers: int = 2):
    """The job runner over this process's clients (tierstore.wiring); close with _close_runner.
    Reports left queued or orphaned are built by the `reports` job here (no background workers)."""
    from scheduler.jobs import JOBS
    from scheduler.runner import JobRunner
    from tierstore.wiring import open_resources

    resources = open_resources(settings, with_reports=True, report_workers=0)
    try:
        return JobRunner(resources.pool, settings, resources, jobs=JOBS, max_workers=max_workers), resources
    except BaseException:
        resources.close()
        raise


def _close_runner(runner, resources) -> None:
    runner.close(wait=True)
    resources.close()


def _jobs(args: argparse.Namespace) -> int:
    import json

    from rollups.timeutil import now_ms, parse_time

    settings = _settings()
    runner, resources = _open_runner(settings)
    try:
        if args.action == "list":
            for job in runner.list():
                print(json.dumps(job, default=str))
            return 0
        if args.action == "leader":  # which `tierstore scheduler` process runs the scheduled jobs
            from scheduler.leader import current_leader

            with resources.pool.connection() as conn:
                print(json.dumps({"leader": current_leader(conn)}, default=str))
            return 0
        if not args.name:
            print("tierstore jobs run: name a job", file=sys.stderr)
            return 2
        as_of = None if args.as_of is None else parse_time(args.as_of, now_ms(), field="as_of")
        run_id = runner.run(args.name, as_of, requested_by=f"cli:{_os_user()}")
        record = _follow(runner, run_id, args.name, quiet=args.quiet)
        print(json.dumps(record, default=str))
        return 0 if record["status"] == "done" else 1
    finally:
        _close_runner(runner, resources)


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return str(os.getuid())


def _follow(runner, run_id, name: str, quiet: bool = False) -> dict:
    """Poll a run until it ends, showing a progress bar (rich) unless quiet."""
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), disable=quiet, transient=False) as bar:
        task = bar.add_task(f"{name} (run {run_id})", total=1.0)
        while True:
            record = runner.get_run(run_id) or {}
            bar.update(task, completed=float(record.get("progress") or 0.0),
                       description=f"{name} (run {run_id}) {record.get('status', '?')}")
            if record.get("status") in ("done", "failed", "skipped"):
                return record
            time.sleep(0.2)


def _scheduler(args: argparse.Namespace) -> int:
    """The scheduler process: while it holds the leader lock (scheduler.leader), APScheduler with a
    PostgreSQL job store runs every job on its interval; otherwise it stands by and takes over."""
    import signal
    import threading

    from scheduler.leader import SchedulerLeader

    settings = _settings()
    runner, resources = _open_runner(settings, max_workers=4)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    leader = SchedulerLeader(runner, settings, on_change=lambda leading: print(
        f"tierstore scheduler {leader.name}: {'leader' if leading else 'standby'}", flush=True))
    print("tierstore scheduler running; jobs: " + ", ".join(j.name for j in runner.jobs()), flush=True)
    try:
        leader.run(stop)
    finally:
        _close_runner(runner, resources)
    return 0


def _import(args: argparse.Namespace) -> int:
    import json

    from tierstore.importer import run_import

    if args.quiet:  # only the stats line on stdout (and warnings): not the migrations' progress
        import logging

        logging.getLogger("yoyo").setLevel(logging.WARNING)
    stats = run_import(_settings(), args.files, progress=not args.quiet, tenant=args.tenant,
                       assume_utc=args.assume_utc)
    print(json.dumps(stats, default=str))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from tierstore.demo import run_demo

    return run_demo(_settings(), serve=not args.no_serve, days=args.days, port=args.port)


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
    services.add_argument("--redis", choices=["standalone", "cluster"],
                          help="up: one Redis server or a 3-master, 3-replica cluster (default: the redis_mode "
                               "setting, $TIERSTORE_REDIS_MODE); down and status follow what up last started")
    services.set_defaults(func=_services)

    serve = commands.add_parser("serve", help="run the HTTP API under gunicorn (applies migrations first)")
    serve.add_argument("--port", type=int, default=None, help="default: TIERSTORE_PORT_BASE + 10")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--workers", type=int, default=2)
    serve.add_argument("--threads", type=int, default=4)
    serve.add_argument("--access-log", action="store_true")
    serve.set_defaults(func=_serve)

    db = commands.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"])
    db.set_defaults(func=_db)

    jobs = commands.add_parser("jobs", help="list jobs or run one now (with a progress bar)")
    jobs.add_argument("action", choices=["run", "list", "leader"])
    jobs.add_argument("name", nargs="?")
    jobs.add_argument("--as-of", default=None, help="behave as if the clock read this time (RFC 3339, epoch ms, now-1d)")
    jobs.add_argument("--quiet", action="store_true")
    jobs.set_defaults(func=_jobs)

    sched = commands.add_parser("scheduler", help="run the migration jobs on their schedules")
    sched.set_defaults(func=_scheduler)

    from tierstore.import_help import IMPORT_HELP

    imp = commands.add_parser("import", help="historical backfill from NDJSON, CSV or Parquet files",
                              description=IMPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("files", nargs="+", help=".ndjson/.jsonl/.json, .csv or .parquet files")
    imp.add_argument("--tenant", default=None, help="tenant of rows without a tenant column (default: default)")
    imp.add_argument("--assume-utc", action="store_true",
                     help="read times without a zone (and date-only values, as midnight) as UTC")
    imp.add_argument("--quiet", action="store_true")
    imp.add_argument("--history", action="store_true",
                     help="optional: every import is a history import (the same as without it)")
    imp.set_defaults(func=_import)

    demo = commands.add_parser("demo", help="load demo events into every tier, serve, print example queries")
    demo.add_argument("--no-serve", action="store_true", help="load and print, then stop the server")
    demo.add_argument("--days", type=int, default=730)
    demo.add_argument("--port", type=int, default=None, help="default: TIERSTORE_PORT_BASE + 10")
    demo.set_defaults(func=_demo)

    _optional_commands(commands)
    return parser


def _optional_commands(commands) -> None:
    """Subcommands whose modules register themselves: `register_cli(commands)`."""
    import importlib

    for module in ("tierstore.holds", "tierstore.reportcli"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(mod, "register_cli"):
            mod.register_cli(commands)


def main(argv: list[str] | None = None) -> int:
    from rollups.errors import TierstoreError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TierstoreError as exc:
        print(f"tierstore {args.command}: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
