"""`velo db`: schema migrations, status, OHLC refresh, and the embedded server.

Without `--db`, commands use `DATABASE_URL`, else the embedded PostgreSQL under
`VELO_DATA_DIR/pg` (started on first use and left running for the next command).
"""

from __future__ import annotations

import argparse
import sys

import psycopg

from connectors.database import redact_url, resolve_database_url, stop_embedded_server
from sql.migrate import FLAVOURS, MigrationError, migration_status, refresh_ohlc, render_sql
from sql.migrate import upgrade as run_upgrade


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "db",
        help="Database schema: upgrade, status, refresh the OHLC view.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)

    upgrade = commands.add_parser("upgrade", help="Apply pending migrations (idempotent).")
    _add_db_option(upgrade)
    upgrade.add_argument(
        "--flavour",
        choices=FLAVOURS,
        help="Force a DDL path instead of detecting TimescaleDB (only before the first migration).",
    )
    upgrade.set_defaults(func=_upgrade)

    status = commands.add_parser(
        "status", help="Show the DDL path and applied/pending migrations (exit 1 if pending)."
    )
    _add_db_option(status)
    status.set_defaults(func=_status)

    refresh = commands.add_parser(
        "refresh", help="Refresh runner_ohlc_1m (plain path; no-op on TimescaleDB)."
    )
    _add_db_option(refresh)
    refresh.set_defaults(func=_refresh)

    render = commands.add_parser("sql", help="Print the DDL of one path without running it.")
    render.add_argument("--flavour", choices=FLAVOURS, default="plain")
    render.set_defaults(func=_print_sql)

    stop = commands.add_parser("stop", help="Stop the embedded PostgreSQL server.")
    stop.set_defaults(func=_stop)


def _add_db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="URL",
        default=None,
        help="PostgreSQL URL (default: DATABASE_URL, else the embedded server).",
    )


def _upgrade(args: argparse.Namespace) -> int:
    def run(url: str) -> int:
        report = run_upgrade(url, args.flavour)
        print(f"path: {report.flavour} ({report.reason})")
        if report.applied:
            print("applied: " + ", ".join(m.label for m in report.applied))
        else:
            print("applied: nothing, already up to date")
        return 0

    return _with_database(args.db, run)


def _status(args: argparse.Namespace) -> int:
    def run(url: str) -> int:
        status = migration_status(url)
        print(f"path: {status.flavour or 'not migrated'} ({status.reason})")
        for applied in status.applied:
            print(f"  applied  {applied.name}  {applied.applied_at:%Y-%m-%d %H:%M:%S %Z}")
        for pending in status.pending:
            print(f"  pending  {pending.label}")
        for unknown in status.unknown:
            print(f"  unknown  {unknown.name} (applied by a newer release)")
        return 1 if status.pending else 0

    return _with_database(args.db, run)


def _refresh(args: argparse.Namespace) -> int:
    def run(url: str) -> int:
        print(refresh_ohlc(url))
        return 0

    return _with_database(args.db, run)


def _print_sql(args: argparse.Namespace) -> int:
    sys.stdout.write(render_sql(args.flavour))
    return 0


def _stop(args: argparse.Namespace) -> int:
    print("embedded PostgreSQL stopped" if stop_embedded_server() else "not running")
    return 0


def _with_database(url: str | None, action) -> int:
    """Resolve the URL, run `action`, and turn database errors into a message and exit 2."""
    try:
        resolved = resolve_database_url(url)
        print(f"database: {redact_url(resolved)}")
        return action(resolved)
    except (psycopg.Error, MigrationError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
