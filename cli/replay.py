"""`velo replay PATH...`: recorded Betfair stream files through the dataflow into the database.

With `--racecards FILE.jsonl` (racecard events, one per line) the model scores each race
before the off and the predictions are stored too.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from bytewax.run import cli_main
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.options import add_database_option, add_workers_option
from cli.runtime import tune_gc_for_streaming
from cli.scoring import TRAIN_HINT, ScorerUnavailableError, add_model_options, load_scorer
from connectors.bytewax_io import RunSummary, StreamFileSource
from connectors.database import resolve_database_url
from connectors.postgres_sink import ConcurrentPostgresWriter
from connectors.stream_files import expand_paths
from flows.market import build_market_flow
from sql.migrate import upgrade

if TYPE_CHECKING:
    from models.live_scoring import LiveRaceScorer


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="replay Betfair stream files or folders through the market dataflow into the database",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", help="stream files (plain, .gz, .bz2) or folders")
    add_database_option(parser)
    add_workers_option(parser, "-w", "--workers")
    parser.add_argument(
        "--snapshot-out", type=Path, help="write end-of-stream runner books (JSONL)"
    )
    parser.add_argument("--summary-json", type=Path, help="also write the run summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--racecards",
        type=Path,
        metavar="FILE.jsonl",
        help="racecard events (one JSON per line): score each race before the off",
    )
    add_model_options(parser, disable_flag=False)
    parser.set_defaults(func=run)


def replay(
    paths: list[Path],
    database_url: str,
    *,
    workers: int = 1,
    snapshot_out: Path | None = None,
    progress: bool = False,
    console: Console | None = None,
    racecards: Path | None = None,
    scorer: LiveRaceScorer | None = None,
    score_every_seconds: float = 10.0,
) -> RunSummary:
    """Run the market dataflow over files into `database_url`; return what it processed.

    With `racecards` and `scorer` (both or neither), races are scored too."""
    upgrade(database_url)
    summary = RunSummary()

    def run_flow(on_progress: Callable[[RunSummary], None] | None) -> None:
        flow = build_market_flow(
            StreamFileSource(paths),
            # migrated once above; each writer only checks the schema is there
            lambda: ConcurrentPostgresWriter(database_url, ensure_schema=False),
            summary=summary,
            snapshot_path=snapshot_out,
            on_progress=on_progress,
            racecards=StreamFileSource([racecards]) if racecards is not None else None,
            scorer_factory=(lambda: scorer) if scorer is not None else None,
            score_every_seconds=score_every_seconds,
            overlap_writes=True,  # a replay keeps no recovery snapshots
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
    """The run's summary, or, in a process of a multi-process run that did not collect it,
    where it is (instead of a table of zeros)."""
    if not summary.collected_here:
        console.print("summary: printed by the process of this run that collected it")
        return
    data = summary.as_dict()
    table = Table(title="run summary", show_header=False)
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
    tune_gc_for_streaming()
    console = Console(stderr=True)
    try:
        paths = expand_paths(args.paths)
    except FileNotFoundError as error:
        console.print(f"[red]velo replay: {error}[/red]")
        return 2
    if not paths:
        console.print("[red]velo replay: no stream files found[/red]")
        return 2
    scorer = None
    if args.model is not None and args.racecards is None:
        console.print("[red]velo replay: --model scores races from --racecards FILE.jsonl[/red]")
        return 2
    if args.racecards is not None:
        if not args.racecards.is_file():
            console.print(f"[red]velo replay: no racecards file {args.racecards}[/red]")
            return 2
        try:
            scorer = load_scorer(args.model, console)
        except ScorerUnavailableError as error:
            console.print(f"[red]velo replay: {error}[/red]")
            return 2
        if scorer is None:
            console.print(
                "[red]velo replay: --racecards needs a model and none is promoted: "
                f"pass --model, or train one: {TRAIN_HINT}[/red]"
            )
            return 2
    database_url = resolve_database_url(args.db)
    summary = replay(
        paths,
        database_url,
        workers=args.workers,
        snapshot_out=args.snapshot_out,
        progress=not args.no_progress and sys.stderr.isatty(),
        console=console,
        racecards=args.racecards,
        scorer=scorer,
        score_every_seconds=args.score_every,
    )
    print_summary(summary, console)
    if args.summary_json:
        args.summary_json.write_bytes(orjson.dumps(summary.as_dict(), option=orjson.OPT_INDENT_2))
    if summary.messages == 0:
        console.print("[red]velo replay: nothing could be processed[/red]")
        return 1
    return 0
