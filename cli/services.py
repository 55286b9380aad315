"""`velo services up|down|status [SERVICE...]`: the local PostgreSQL, Kafka and Redis.

`up` returns only once every named service is healthy (exit 1 with the reason otherwise) and is
safe to repeat; `status` exits 0 only if all are healthy; `down` stops what velo started.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from connectors.services import SERVICE_NAMES, Service, ServiceError, ServiceStatus, build_services

STATE_STYLES = {
    "running": "green",
    "external": "green",
    "unmanaged": "yellow",
    "stopped": "dim",
    "unhealthy": "red",
    "port in use": "red",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "services", help="Start, stop or check the local PostgreSQL, Kafka and Redis."
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    names_help = f"services to act on, of {', '.join(SERVICE_NAMES)} (default: all)"

    up = actions.add_parser("up", help="Start the services and wait until they are healthy.")
    up.add_argument("names", nargs="*", metavar="SERVICE", help=names_help)
    up.add_argument(
        "--timeout", type=float, default=180.0, help="Seconds to wait for each to be healthy."
    )
    up.set_defaults(func=run_up)

    down = actions.add_parser("down", help="Stop the services velo started.")
    down.add_argument("names", nargs="*", metavar="SERVICE", help=names_help)
    down.add_argument(
        "--timeout", type=float, default=60.0, help="Seconds to wait before killing one."
    )
    down.set_defaults(func=run_down)

    status = actions.add_parser("status", help="Show each service; exit 0 only if all healthy.")
    status.add_argument("names", nargs="*", metavar="SERVICE", help=names_help)
    status.set_defaults(func=run_status)


def run_up(args: argparse.Namespace) -> int:
    return _act(args, lambda service: service.up(args.timeout), "up")


def run_down(args: argparse.Namespace) -> int:
    return _act(args, lambda service: service.down(args.timeout), "down")


def run_status(args: argparse.Namespace) -> int:
    return _act(args, lambda service: service.status(), "status")


def _act(args: argparse.Namespace, action: Callable[[Service], ServiceStatus], verb: str) -> int:
    """Run `action` on every named service at once (start-up is mostly waiting) and report."""
    errors = Console(stderr=True, soft_wrap=True)  # long paths and URLs stay whole
    try:
        services = build_services(args.names or SERVICE_NAMES)
    except ServiceError as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return 2
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(services)) as pool:
        futures = [pool.submit(action, service) for service in services]
    statuses: list[ServiceStatus] = []
    failures: list[str] = []
    for service, future in zip(services, futures, strict=True):
        try:
            statuses.append(future.result())
        except (ServiceError, OSError) as exc:
            failures.append(f"{service.name}: {exc}" if isinstance(exc, OSError) else str(exc))
            statuses.append(service.status())
    _print_table(statuses, f"velo services {verb} ({time.monotonic() - started:.1f} s)")
    for failure in failures:
        errors.print(f"[red]error:[/red] {escape(failure)}", highlight=False)
    if verb == "down":
        return 1 if failures else 0
    return 1 if failures or not all(status.healthy for status in statuses) else 0


def _print_table(statuses: list[ServiceStatus], title: str) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("service", "address", "state", "pid", "detail"):
        table.add_column(column, overflow="fold")
    for status in statuses:
        style = STATE_STYLES.get(status.state, "")
        state = f"[{style}]{status.state}[/{style}]" if style else status.state
        pid = str(status.pid) if status.pid is not None else ""
        table.add_row(status.name, status.address, state, pid, escape(status.detail))
    # Rich assumes 80 columns when not on a terminal; logs (CI, make test) have room for more.
    Console(width=None if sys.stdout.isatty() else 160).print(table)
