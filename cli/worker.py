"""`velo worker`: the market dataflow fed from Kafka, with crash recovery.

With a model (`--model`, else the promoted version; `--no-model` to disable), racecard events
from VELO_TOPIC_RACECARDS join the markets and each race is scored before the off; predictions
go to the database and to VELO_TOPIC_PREDICTIONS.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from rich.console import Console

from cli.options import add_database_option, add_workers_option, env_default
from cli.replay import print_summary
from cli.runtime import tune_gc_for_streaming
from cli.scoring import ScorerUnavailableError, add_model_options, load_scorer
from connectors.bytewax_io import RunSummary
from connectors.database import resolve_database_url
from connectors.kafka_io import (
    DeadLetterTopicSink,
    KafkaLinesSource,
    PredictionTopicSink,
    list_topic_partitions,
)
from connectors.postgres_sink import ConcurrentPostgresWriter
from connectors.settings import get_settings
from flows.market import build_market_flow
from operators import native_core
from sql.migrate import upgrade

if TYPE_CHECKING:
    from models.live_scoring import LiveRaceScorer


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="consume raw stream lines from Kafka into the database (recoverable)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_database_option(parser)
    add_workers_option(parser, "--workers")
    parser.add_argument(
        "-i",
        "--process-id",
        type=int,
        **env_default("BYTEWAX_PROCESS_ID", None),
        help="this process's index in a multi-process cluster [env BYTEWAX_PROCESS_ID]",
    )
    parser.add_argument(
        "-a",
        "--addresses",
        **env_default("BYTEWAX_ADDRESSES", None),
        help="host:port of every process, ';'-separated [env BYTEWAX_ADDRESSES]",
    )
    parser.add_argument(
        "--recovery-dir",
        type=Path,
        **env_default("VELO_RECOVERY_DIR", None),
        help="SQLite recovery partitions; a restarted worker resumes from its last snapshot "
        "[env VELO_RECOVERY_DIR]",
    )
    parser.add_argument(
        "--snapshot-interval",
        type=float,
        **env_default("VELO_SNAPSHOT_INTERVAL", 5.0),
        help="seconds between recovery snapshots (Bytewax epoch) [env VELO_SNAPSHOT_INTERVAL]",
    )
    parser.add_argument(
        "--exit-when-idle",
        type=float,
        **env_default("VELO_EXIT_WHEN_IDLE", None),
        help="drain, then exit after this many seconds without messages [env VELO_EXIT_WHEN_IDLE]",
    )
    parser.add_argument("--snapshot-out", type=Path, help="write end-of-run runner books (JSONL)")
    add_model_options(parser, disable_flag=True)
    parser.set_defaults(func=run)


def _scorer(args: argparse.Namespace, console: Console) -> LiveRaceScorer | None:
    """The model to score with, or None. A model named with --model must work; the promoted
    default is skipped, with a note, when there is none or no racecards topic to read."""
    if args.no_model:
        return None
    settings = get_settings()
    try:
        list_topic_partitions(settings.kafka_bootstrap, settings.velo_topic_racecards)
    except RuntimeError as error:
        if args.model is not None:
            raise ScorerUnavailableError(f"no racecards to score: {error}") from error
        console.print(f"not scoring races: {error}")
        return None
    scorer = load_scorer(args.model, console)
    if scorer is None:
        console.print("not scoring races: no model is promoted (velo models list)")
    return scorer


RECOVERY_OPERATORS_FILE = "operators.txt"
"""In a recovery directory: which operators implementation wrote its market state."""


def check_recovery_operators(recovery_dir: Path) -> None:
    """Refuse to resume native processor state with the Python operators, or the reverse:
    their snapshots are not interchangeable. A directory without the file is claimed."""
    marker = recovery_dir / RECOVERY_OPERATORS_FILE
    running = native_core.SELECTED.name
    if not marker.exists():
        marker.write_text(running + "\n")
        return
    written = marker.read_text().strip()
    if written != running:
        raise ValueError(
            f"{recovery_dir} holds market state of the {written} operators, but this worker runs "
            f"the {running} ones (VELO_NATIVE=0 selects python; native needs velo_native "
            "installed): resume with the same ones, or start from an empty --recovery-dir"
        )


def run(args: argparse.Namespace) -> int:
    tune_gc_for_streaming()
    console = Console(stderr=True)
    settings = get_settings()
    if args.recovery_dir is not None:
        args.recovery_dir.mkdir(parents=True, exist_ok=True)
        try:
            check_recovery_operators(args.recovery_dir)
        except ValueError as error:
            console.print(f"[red]velo worker: {error}[/red]")
            return 2
    try:
        scorer = _scorer(args, console)
    except ScorerUnavailableError as error:
        console.print(f"[red]velo worker: {error}[/red]")
        return 2
    database_url = resolve_database_url(args.db)
    upgrade(database_url)
    addresses = args.addresses.split(";") if args.addresses else None
    processes = len(addresses) if addresses else 1
    recovery = None
    if args.recovery_dir is not None:
        if not any(args.recovery_dir.glob("part-*.sqlite3")):
            init_db_dir(args.recovery_dir, max(1, args.workers) * processes)
        recovery = RecoveryConfig(str(args.recovery_dir))
    summary = RunSummary()
    flow = build_market_flow(
        KafkaLinesSource(
            settings.kafka_bootstrap,
            settings.velo_topic_mcm,
            exit_when_idle_seconds=args.exit_when_idle,
        ),
        lambda: ConcurrentPostgresWriter(database_url, ensure_schema=False),  # migrated once above
        summary=summary,
        snapshot_path=args.snapshot_out,
        dead_letter_sink=DeadLetterTopicSink(
            settings.kafka_bootstrap, settings.velo_topic_dead_letters
        ),
        racecards=None
        if scorer is None
        else KafkaLinesSource(
            settings.kafka_bootstrap,
            settings.velo_topic_racecards,
            exit_when_idle_seconds=args.exit_when_idle,
        ),
        scorer_factory=None if scorer is None else lambda: scorer,
        prediction_sink=None
        if scorer is None
        else PredictionTopicSink(settings.kafka_bootstrap, settings.velo_topic_predictions),
        score_every_seconds=args.score_every,
        overlap_writes=recovery is None,
    )
    cli_main(
        flow,
        workers_per_process=max(1, args.workers),
        process_id=args.process_id,
        addresses=addresses,
        epoch_interval=timedelta(seconds=args.snapshot_interval),
        recovery_config=recovery,
    )
    print_summary(summary, console)
    return 0
