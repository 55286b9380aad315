"""`velo scout` (live Betfair stream → Kafka) and `velo racecards` (market catalogue → Kafka)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import orjson

from connectors.settings import get_settings

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
    racecards.set_defaults(func=run_racecards)


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
        SubscriptionSpec,
        make_api_client,
    )

    _configure_logging()
    settings = get_settings()
    metrics = ScoutMetrics()
    try:
        spec = SubscriptionSpec(
            event_type_ids=args.event_type_ids,
            country_codes=args.countries,
            market_types=args.market_types,
            market_ids=args.market_ids,
            venues=args.venues,
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
        )
        recorder = MarketRecorder(args.record) if args.record else None
        scout = Scout(client, spec, endpoints, sink, metrics, options, recorder)
        _on_signals(scout.stop)
        scout.run()
    except ScoutError as exc:
        print(f"velo scout: {exc}", file=sys.stderr)
        return 2
    print(orjson.dumps(metrics.as_dict()).decode())
    return 1 if metrics.delivery_failures else 0


def run_racecards(args: argparse.Namespace) -> int:
    from connectors.betfair_catalogue import CataloguePoller, RacecardSink
    from connectors.betfair_live import (
        BetfairEndpoints,
        ScoutError,
        SubscriptionSpec,
        make_api_client,
    )

    _configure_logging()
    settings = get_settings()
    try:
        spec = SubscriptionSpec(
            event_type_ids=args.event_type_ids,
            country_codes=args.countries,
            market_types=args.market_types,
            market_ids=args.market_ids,
            venues=args.venues,
        )
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
