"""`velo replay PATH...`: recorded Betfair stream files through the dataflow into the database."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
from bytewax.run import cli_main
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.options import add_database_option, env_default
from connectors.bytewax_io import RunSummary, StreamFileSource
from connectors.database import resolve_database_url
from connectors.postgres_sink import PostgresWriter
from connectors.stream_files import expand_paths
from flows.market import build_market_flow
from sql.migrate import upgrade


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="replay Betfair stream files or folders through the market dataflow into the database",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", help="stream files (plain, .gz, .bz2) or folders")
    add_database_option(parser)
    parser.add_argument(
        "-w",
        "--workers",
        type=int,
        **env_default("VELO_WORKERS", 1),
        help="Bytewax worker threads [env VELO_WORKERS]",
    )
    parser.add_argument(
        "--snapshot-out", type=Path, help="write end-of-stream runner books (JSONL)"
    )
    parser.add_argument("--summary-json", type=Path, help="also write the run summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def replay(
    paths: list[Path],
    database_url: str,
    *,
    workers: int = 1,
    snapshot_out: Path | None = None,
    progress: bool = False,
    console: Console | None = None,
) -> RunSummary:
    """Run the market dataflow over files into `database_url`; return what it processed."""
    upgrade(database_url)
    summary = RunSummary()

    def run_flow(on_progress: Callable[[RunSummary], None] | None) -> None:
        flow = build_market_flow(
            StreamFileSource(paths),
            lambda: PostgresWriter(database_url),
            summary=summary,
            snapshot_path=snapshot_out,
            on_progress=on_progress,
        )
        cli_main(flow, workers_per_process=max(1, workers))

    if not progress:
        run_flow(None)
        return summary
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn(
            "{task.fields[lines]:,} lines · {task.fields[markets]} markets · "
            "{task.fields[rate]:,.0f} lines/s · {task.fields[bad]} bad"
        ),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("replaying", lines=0, markets=0, rate=0.0, bad=0)

        def on_progress(current: RunSummary) -> None:
            bar.update(
                task,
                lines=current.lines,
                markets=len(current.markets),
                rate=current.lines / current.seconds if current.seconds else 0.0,
                bad=sum(current.dead_letters.values()),
            )

        run_flow(on_progress)
    return summary


def print_summary(summary: RunSummary, console: Console) -> None:
    data = summary.as_dict()
    table = Table(title="replay summary", show_header=False)
    for key in ("lines", "messages", "markets", "runners", "bad_lines", "seconds"):
        table.add_row(
            key.replace("_", " "), f"{data[key]:,}" if key != "seconds" else str(data[key])
        )
    rate = data["lines"] / data["seconds"] if data["seconds"] else 0.0
    table.add_row("lines/s", f"{rate:,.0f}")
    for table_name, count in sorted(data["rows"].items()):
        table.add_row(f"rows: {table_name}", f"{count:,}")
    for reason, count in sorted(data["dead_letters"].items()):
        table.add_row(f"dead letter: {reason}", f"{count:,}")
    console.print(table)


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        paths = expand_paths(args.paths)
    except FileNotFoundError as error:
        console.print(f"[red]velo replay: {error}[/red]")
        return 2
    if not paths:
        console.print("[red]velo replay: no stream files found[/red]")
        return 2
    database_url = resolve_database_url(args.db)
    summary = replay(
        paths,
        database_url,
        workers=args.workers,
        snapshot_out=args.snapshot_out,
        progress=not args.no_progress and sys.stderr.isatty(),
        console=console,
    )
    print_summary(summary, console)
    if args.summary_json:
        args.summary_json.write_bytes(orjson.dumps(summary.as_dict(), option=orjson.OPT_INDENT_2))
    if summary.messages == 0:
        console.print("[red]velo replay: nothing could be processed[/red]")
        return 1
    return 0
