"""`velo scout` (live Betfair stream → Kafka) and `velo racecards` (market catalogue → Kafka)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import orjson

from connectors.settings import get_settings

if TYPE_CHECKING:
    from connectors.betfair_live import SubscriptionSpec

log = logging.getLogger("velo.scout")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--event-type-ids", type=_csv, default="7", help="7 = horse racing")
    parser.add_argument("--countries", type=_csv, default="GB,IE,AU", help="'' = any")
    parser.add_argument("--market-types", type=_csv, default="WIN,PLACE", help="'' = any")
    parser.add_argument("--market-ids", type=_csv, default="", help="only these markets")
    parser.add_argument("--venues", type=_csv, default="", help="only these venues")
    parser.add_argument("--bootstrap", default=None, help="Kafka servers; unset: KAFKA_BOOTSTRAP")


def _subscription_spec(args: argparse.Namespace, **stream_options: Any) -> SubscriptionSpec:
    """The market filter of `_add_filter_arguments`, plus the stream's data options if any."""
    from connectors.betfair_live import SubscriptionSpec

    return SubscriptionSpec(
        event_type_ids=args.event_type_ids,
        country_codes=args.countries,
        market_types=args.market_types,
        market_ids=args.market_ids,
        venues=args.venues,
        **stream_options,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    from connectors.betfair_live import DEFAULT_FIELDS

    scout = subparsers.add_parser(
        "scout",
        help="forward the live Betfair stream to Kafka (one raw line per market)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_filter_arguments(scout)
    scout.add_argument(
        "--fields", type=_csv, default=",".join(DEFAULT_FIELDS), help="market data fields"
    )
    scout.add_argument("--ladder-levels", type=int, default=None, help="1-10 (best-offer fields)")
    scout.add_argument("--conflate-ms", type=int, default=None, help="0-120000; unset: none")
    scout.add_argument("--heartbeat-ms", type=int, default=5000, help="500-30000")
    scout.add_argument("--topic", default=None, help="unset: VELO_TOPIC_MCM")
    scout.add_argument(
        "--record", type=Path, default=None, metavar="DIR", help="also write DIR/<market>.gz"
    )
    scout.add_argument("--linger-ms", type=int, default=1, help="Kafka producer batching delay")
    scout.add_argument("--max-latency", type=float, default=1.0, help="warn above (seconds)")
    scout.add_argument("--latency-log-interval", type=float, default=30.0, help="seconds")
    scout.add_argument("--metrics-interval", type=float, default=60.0, help="seconds")
    scout.add_argument("--backoff-initial", type=float, default=0.5, help="seconds")
    scout.add_argument("--backoff-max", type=float, default=30.0, help="seconds")
    scout.add_argument(
        "--state-file",
        type=Path,
        default=None,
        help="keep the resume tokens in this file so a restarted scout resumes without a "
        "fresh image (unset: VELO_SCOUT_STATE_FILE; neither: tokens only in memory)",
    )
    scout.add_argument(
        "--state-interval", type=float, default=1.0, help="seconds between state-file writes"
    )
    scout.set_defaults(func=run_scout)

    racecards = subparsers.add_parser(
        "racecards",
        help="poll Betfair's market catalogue and publish racecard events to Kafka",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_filter_arguments(racecards)
    racecards.add_argument("--topic", default=None, help="unset: VELO_TOPIC_RACECARDS")
    racecards.add_argument("--interval", type=float, default=300.0, help="seconds between polls")
    racecards.add_argument(
        "--hours-ahead", type=float, default=24.0, help="markets starting within"
    )
    racecards.add_argument("--max-results", type=int, default=1000, help="per request (max 1000)")
    racecards.add_argument("--once", action="store_true", help="poll once and exit")
    racecards.add_argument(
        "--hkjc",
        type=Path,
        default=None,
        help="instead of Betfair: publish the racecard and result events of the HKJC files in "
        "this folder (e.g. ../shared/data/racing/hkjc), in race order, then exit",
    )
    racecards.add_argument(
        "--from",
        dest="date_from",
        type=date.fromisoformat,
        default=None,
        help="with --hkjc: first meeting date (YYYY-MM-DD)",
    )
    racecards.add_argument(
        "--to",
        dest="date_to",
        type=date.fromisoformat,
        default=None,
        help="with --hkjc: last meeting date (YYYY-MM-DD)",
    )
    racecards.set_defaults(func=run_racecards)


def publish_hkjc(args: argparse.Namespace) -> int:
    """HKJC races as versioned racecard + result events (key = race id); bad races dead-lettered."""
    import polars as pl

    from connectors.betfair_catalogue import RacecardSink
    from connectors.hkjc import load_hkjc, race_events
    from operators.racing_events import EventValidationError, dump_event

    settings = get_settings()
    data = load_hkjc(args.hkjc)
    entries = data.entries
    if args.date_from:
        entries = entries.filter(pl.col("race_date") >= args.date_from)
    if args.date_to:
        entries = entries.filter(pl.col("race_date") <= args.date_to)
    sink = RacecardSink(
        args.bootstrap or settings.kafka_bootstrap,
        args.topic or settings.velo_topic_racecards,
        settings.velo_topic_dead_letters,
    )
    for event in race_events(entries):
        if isinstance(event, EventValidationError):
            sink.dead_letter("hkjc", "invalid_event", str(event))
            continue
        racecard, result = event
        sink.publish(racecard.race_id, dump_event(racecard))
        sink.publish(racecard.race_id, dump_event(result))
    undelivered = sink.flush(60)
    print(orjson.dumps({**sink.metrics.as_dict(), "undelivered": undelivered}).decode())
    return 1 if undelivered or sink.metrics.delivery_failures else 0


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("betfairlightweight").setLevel(logging.WARNING)


def _on_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def run_scout(args: argparse.Namespace) -> int:
    from connectors.betfair_live import (
        BetfairEndpoints,
        KafkaMcmSink,
        MarketRecorder,
        Scout,
        ScoutError,
        ScoutMetrics,
        ScoutOptions,
        ScoutStateFile,
        make_api_client,
        subscription_key,
    )

    _configure_logging()
    settings = get_settings()
    metrics = ScoutMetrics()
    try:
        spec = _subscription_spec(
            args,
            fields=args.fields,
            ladder_levels=args.ladder_levels,
            conflate_ms=args.conflate_ms,
            heartbeat_ms=args.heartbeat_ms,
        )
        endpoints = BetfairEndpoints.from_settings(settings)
        client = make_api_client(settings, endpoints)
        sink = KafkaMcmSink(
            args.bootstrap or settings.kafka_bootstrap,
            args.topic or settings.velo_topic_mcm,
            settings.velo_topic_dead_letters,
            metrics,
            linger_ms=args.linger_ms,
        )
        options = ScoutOptions(
            max_latency_s=args.max_latency,
            latency_log_interval_s=args.latency_log_interval,
            metrics_interval_s=args.metrics_interval,
            backoff_initial_s=args.backoff_initial,
            backoff_max_s=args.backoff_max,
            use_certs=settings.betfair_certs_dir is not None,
            state_interval_s=args.state_interval,
        )
        recorder = MarketRecorder(args.record) if args.record else None
        state_file = args.state_file or settings.velo_scout_state_file
        state = (
            ScoutStateFile(state_file, subscription_key(spec, endpoints, sink.topic))
            if state_file
            else None
        )
        scout = Scout(client, spec, endpoints, sink, metrics, options, recorder, state)
        _on_signals(scout.stop)
        scout.run()
    except ScoutError as exc:
        print(f"velo scout: {exc}", file=sys.stderr)
        return 2
    print(orjson.dumps(metrics.as_dict()).decode())
    return 1 if metrics.delivery_failures else 0


def run_racecards(args: argparse.Namespace) -> int:
    if args.hkjc is not None:
        return publish_hkjc(args)
    from connectors.betfair_catalogue import CataloguePoller, RacecardSink
    from connectors.betfair_live import (
        BetfairEndpoints,
        ScoutError,
        make_api_client,
    )

    _configure_logging()
    settings = get_settings()
    try:
        spec = _subscription_spec(args)
        endpoints = BetfairEndpoints.from_settings(settings)
        client = make_api_client(settings, endpoints)
        sink = RacecardSink(
            args.bootstrap or settings.kafka_bootstrap,
            args.topic or settings.velo_topic_racecards,
            settings.velo_topic_dead_letters,
        )
        poller = CataloguePoller(
            client,
            spec,
            sink,
            use_certs=settings.betfair_certs_dir is not None,
            hours_ahead=args.hours_ahead,
            max_results=args.max_results,
        )
        _on_signals(poller.stop)
        poller.run(interval_s=args.interval, once=args.once)
    except ScoutError as exc:
        print(f"velo racecards: {exc}", file=sys.stderr)
        return 2
    print(orjson.dumps(poller.metrics.as_dict()).decode())
    return 1 if poller.metrics.delivery_failures else 0
