"""`velo publish PATH...`: recorded stream files onto the Kafka topic the workers consume.

Each line goes out keyed by market id (a multi-market line becomes one line per market),
exactly as `velo scout` forwards the live stream, so a recording can be re-run through the
live path. `--rate` paces the lines to a real-time-like speed.
"""

from __future__ import annotations

import argparse
import time

import orjson
from rich.console import Console

from connectors.betfair_live import KafkaMcmSink, ScoutMetrics, split_by_market
from connectors.settings import get_settings
from connectors.stream_files import expand_paths, read_lines
from operators.stream_messages import BadLine


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "publish",
        help="publish recorded stream files to the Kafka topic, keyed by market id",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", help="stream files (plain, .gz, .bz2) or folders")
    parser.add_argument("--topic", help="topic [default: env VELO_TOPIC_MCM]")
    parser.add_argument(
        "--rate", type=float, help="lines per second (default: as fast as possible)"
    )
    parser.set_defaults(func=run)


def publish_files(
    paths: list, topic: str, rate: float | None = None, bootstrap: str | None = None
) -> ScoutMetrics:
    """Publish every line; unusable lines go to the dead-letter topic. Returns the counters."""
    settings = get_settings()
    metrics = ScoutMetrics()
    sink = KafkaMcmSink(
        bootstrap or settings.kafka_bootstrap, topic, settings.velo_topic_dead_letters, metrics
    )
    interval = 1.0 / rate if rate else 0.0
    next_send = time.perf_counter()
    for path in expand_paths(paths):
        for _, raw in read_lines(path):
            if isinstance(raw, BadLine):
                sink.dead_letter(raw.reason, raw.raw)
                continue
            try:
                message = orjson.loads(raw)
            except orjson.JSONDecodeError:
                sink.dead_letter("malformed_json", raw)
                continue
            if not isinstance(message, dict):
                sink.dead_letter("not_an_object", raw)
                continue
            lines, problem = split_by_market(message, raw)
            if problem:
                sink.dead_letter(problem, raw)
            for market_id, line in lines:
                sink.publish(market_id, line)
            if interval:
                next_send += interval
                pause = next_send - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            sink.poll()
    undelivered = sink.flush(60)
    if undelivered:
        raise RuntimeError(f"{undelivered} lines were not delivered to Kafka")
    return metrics


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    topic = args.topic or get_settings().velo_topic_mcm
    metrics = publish_files(args.paths, topic, args.rate)
    console.print(f"published to {topic}: {metrics.as_dict()}")
    return 0 if metrics.messages_delivered else 1
