"""SCOUT: Betfair Exchange Stream → Kafka, one raw stream line per market, in stream order.

The scout logs in with betfairlightweight, subscribes to markets by a filter and forwards every
`mcm` line it receives to the `VELO_TOPIC_MCM` topic keyed by market id. A line carrying several
markets is split into one line per market (same header fields, one element in `mc`), so
Kafka's per-partition order is per-market stream order and the worker never needs a cross-market
view. Single-market lines go out byte for byte as received.

What goes where:
- `mcm` data lines (SUB_IMAGE, RESUB_DELTA, updates) → topic, and `--record DIR` files.
- `ct: HEARTBEAT`, `connection`, `status` → metrics and logs only (they carry no market data).
- Lines that cannot be forwarded (bad JSON, an `mc` element without a market id) → the
  dead-letter topic with a reason, counted.

Connection loss → reconnect with exponential backoff and resubscribe with the `initialClk`/`clk`
of the last line handed to the producer, so Betfair resumes right after it: no gap, no
duplicate. A Kafka delivery that finally fails cannot be resent (the line is gone), so the scout
resubscribes *without* tokens: Betfair then sends a fresh image of every market, which
overwrites whatever the lost lines would have changed.

Restarts (`--state-file`): the tokens are also written to a small file, but only once Kafka has
acknowledged every line up to them, so the file is never ahead of the topic. A restarted scout
resubscribes with them; Betfair then resends what followed, and the lines Kafka already got
from the previous process (read back from the topic, by market and `clk`) are not produced
twice.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import betfairlightweight
import orjson
import requests
from betfairlightweight.exceptions import (
    APIError,
    CertsError,
    InvalidResponse,
    ListenerError,
    LoginError,
    StatusCodeError,
)
from betfairlightweight.exceptions import SocketError as StreamSocketError
from betfairlightweight.streaming import BaseListener, BetfairStream
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from connectors.settings import Settings

log = logging.getLogger("velo.scout")

MARKET_ID = re.compile(r"^\d+\.\d+$")
DEFAULT_FIELDS = (
    "EX_ALL_OFFERS",
    "EX_TRADED",
    "EX_TRADED_VOL",
    "EX_LTP",
    "EX_MARKET_DEF",
    "SP_TRADED",
    "SP_PROJECTED",
)
STREAM_FIELDS = frozenset(
    {*DEFAULT_FIELDS, "EX_BEST_OFFERS", "EX_BEST_OFFERS_DISP"},
)
# Status errorCodes after which retrying with the same credentials cannot succeed.
FATAL_STREAM_ERRORS = frozenset({"NO_APP_KEY", "INVALID_APP_KEY", "NOT_AUTHORIZED"})
SESSION_STREAM_ERRORS = frozenset({"NO_SESSION", "INVALID_SESSION_INFORMATION"})


class ScoutError(RuntimeError):
    """A problem retrying cannot fix (bad credentials, missing settings); message says which."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscriptionSpec:
    """What to subscribe to: Betfair's marketFilter and marketDataFilter, plus rates."""

    event_type_ids: tuple[str, ...] = ("7",)
    country_codes: tuple[str, ...] = ("GB", "IE", "AU")
    market_types: tuple[str, ...] = ("WIN", "PLACE")
    market_ids: tuple[str, ...] = ()
    venues: tuple[str, ...] = ()
    fields: tuple[str, ...] = DEFAULT_FIELDS
    ladder_levels: int | None = None
    conflate_ms: int | None = None
    heartbeat_ms: int = 5000

    def __post_init__(self) -> None:
        unknown = sorted(set(self.fields) - STREAM_FIELDS)
        if unknown:
            raise ScoutError(
                f"unknown market data fields {unknown}; known: {sorted(STREAM_FIELDS)}"
            )
        if self.ladder_levels is not None and not 1 <= self.ladder_levels <= 10:
            raise ScoutError(f"ladder levels must be 1..10, got {self.ladder_levels}")
        if not 500 <= self.heartbeat_ms <= 30_000:
            raise ScoutError(f"heartbeat must be 500..30000 ms, got {self.heartbeat_ms}")
        if self.conflate_ms is not None and not 0 <= self.conflate_ms <= 120_000:
            raise ScoutError(f"conflation must be 0..120000 ms, got {self.conflate_ms}")

    def market_filter(self) -> dict[str, Any]:
        wanted = {
            "eventTypeIds": self.event_type_ids,
            "countryCodes": self.country_codes,
            "marketTypes": self.market_types,
            "marketIds": self.market_ids,
            "venues": self.venues,
        }
        return {key: list(values) for key, values in wanted.items() if values}

    def market_data_filter(self) -> dict[str, Any]:
        data_filter: dict[str, Any] = {"fields": list(self.fields)}
        if self.ladder_levels is not None:
            data_filter["ladderLevels"] = self.ladder_levels
        return data_filter


@dataclass(frozen=True)
class BetfairEndpoints:
    """Where Betfair is: production defaults, overridable for a local test server."""

    stream_host: str = "stream-api.betfair.com"
    stream_port: int = 443
    identity_url: str | None = None
    api_url: str | None = None
    ca_file: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> BetfairEndpoints:
        return cls(
            settings.betfair_stream_host,
            settings.betfair_stream_port,
            settings.betfair_identity_url,
            settings.betfair_api_url,
            settings.betfair_ca_file,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """Verifying TLS context (betfairlightweight itself connects with CERT_NONE)."""
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)


# --------------------------------------------------------------------------------------------
# Login
# --------------------------------------------------------------------------------------------


class _TrustingAdapter(requests.adapters.HTTPAdapter):
    """Verify HTTPS against one CA file, whatever REQUESTS_CA_BUNDLE says (requests lets that
    environment variable override `Session.verify`)."""

    def __init__(self, ca_file: Path) -> None:
        super().__init__()
        self.ca_file = str(ca_file)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        kwargs["verify"] = self.ca_file
        return super().send(request, **kwargs)


def make_api_client(
    settings: Settings, endpoints: BetfairEndpoints
) -> betfairlightweight.APIClient:
    """A betfairlightweight client from settings; missing credentials are a clear error."""
    missing = [
        name
        for name, value in (
            ("BETFAIR_USERNAME", settings.betfair_username),
            ("BETFAIR_PASSWORD", settings.betfair_password),
            ("BETFAIR_APP_KEY", settings.betfair_app_key),
        )
        if not value
    ]
    if missing:
        raise ScoutError(f"Betfair credentials not set: {', '.join(missing)}")
    assert settings.betfair_password is not None and settings.betfair_app_key is not None
    session = requests.Session()
    if endpoints.ca_file:
        session.mount("https://", _TrustingAdapter(endpoints.ca_file))
    client = betfairlightweight.APIClient(
        settings.betfair_username or "",
        settings.betfair_password.get_secret_value(),
        app_key=settings.betfair_app_key.get_secret_value(),
        certs=str(settings.betfair_certs_dir) if settings.betfair_certs_dir else None,
        lightweight=True,
        session=session,
    )
    if endpoints.identity_url:
        client.identity_uri = client.identity_cert_uri = endpoints.identity_url
    if endpoints.api_url:
        client.api_uri = endpoints.api_url
    return client


def login(client: betfairlightweight.APIClient, *, use_certs: bool) -> None:
    """Certificate login when a certs dir is configured, else interactive login.

    Refused credentials raise `ScoutError` (retrying cannot help); network trouble raises
    `APIError` for the caller to retry.
    """
    try:
        if use_certs:
            client.login()
        else:
            client.login_interactive()
    except LoginError as exc:
        raise ScoutError(f"Betfair login refused: {exc}") from exc
    except CertsError as exc:
        raise ScoutError(f"Betfair client certificates: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Metrics and helpers
# --------------------------------------------------------------------------------------------


@dataclass
class ScoutMetrics:
    """Counters of one scout run (logged periodically and printed on exit)."""

    lines_received: int = 0
    mcm_lines: int = 0
    messages_produced: int = 0
    messages_delivered: int = 0
    delivery_failures: int = 0
    dead_letters: int = 0
    heartbeats: int = 0
    sub_images: int = 0
    resub_deltas: int = 0
    latency_warnings: int = 0
    max_latency_s: float = 0.0
    status_failures: int = 0
    foreign_messages: int = 0
    connections: int = 0
    reconnects: int = 0
    resyncs: int = 0
    recorded_lines: int = 0
    resumed_from_state: int = 0
    state_saves: int = 0
    duplicates_skipped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RateLimitedLog:
    """Log a recurring condition at most once per interval, with how often it happened."""

    def __init__(self, logger: logging.Logger, interval_s: float) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last = float("-inf")
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (%d more since the last report)"
            args = (*args, self._suppressed)
        self.logger.warning(message, *args)
        self._last, self._suppressed = now, 0


class Backoff:
    """Exponential backoff with full jitter; `reset()` after a healthy connection."""

    def __init__(self, initial_s: float = 0.5, maximum_s: float = 30.0) -> None:
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum_s, self.initial_s * 2**self.attempt)
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def split_by_market(message: dict[str, Any], raw: bytes) -> tuple[list[tuple[str, bytes]], str]:
    """One `(market_id, line)` per element of `mc`, and a reason when some element is unusable.

    A single-market line is returned as received. Several markets: each becomes its own line
    with the message's header fields (`op, id, clk, pt, ct`, ...) and a one-element `mc`.
    """
    changes = message.get("mc")
    if not isinstance(changes, list):
        return [], "malformed_market_changes" if changes is not None else ""
    good, problem = [], ""
    for change in changes:
        market_id = change.get("id") if isinstance(change, dict) else None
        if isinstance(market_id, str) and MARKET_ID.match(market_id):
            good.append((market_id, change))
        else:
            problem = "malformed_market_id"
    if len(changes) == 1 and good:
        return [(good[0][0], raw)], problem
    header = {key: value for key, value in message.items() if key != "mc"}
    return [(mid, orjson.dumps({**header, "mc": [change]})) for mid, change in good], problem


# --------------------------------------------------------------------------------------------
# Resume position: what Kafka holds, the state file, what a previous process delivered
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamPosition:
    """Betfair's `initialClk`/`clk` after some stream message, and the wall-clock time (ms) the
    scout reached it: every line after that position was produced later."""

    initial_clk: str
    clk: str
    reached_ms: int


class DeliveryLedger:
    """Which stream position Kafka holds completely.

    Lines are numbered as they are produced; the position after each stream message is a
    checkpoint. Kafka acknowledges lines out of order across partitions, so a checkpoint becomes
    `safe` only once every line numbered up to it was acknowledged. After a failed delivery
    nothing becomes safe any more until `reset` (the scout then subscribes for a fresh image).
    """

    def __init__(self) -> None:
        self.produced = 0
        self.acked_through = 0
        self.failed = False
        self.safe: StreamPosition | None = None
        self._acked_ahead: set[int] = set()
        self._checkpoints: deque[tuple[int, StreamPosition]] = deque()

    def produce(self) -> int:
        self.produced += 1
        return self.produced

    def acked(self, number: int) -> None:
        if number <= self.acked_through:  # from before the last reset
            return
        self._acked_ahead.add(number)
        while self.acked_through + 1 in self._acked_ahead:
            self.acked_through += 1
            self._acked_ahead.discard(self.acked_through)
        self._release()

    def lost(self, number: int) -> None:
        if number > self.acked_through:
            self.failed = True

    def checkpoint(self, position: StreamPosition) -> None:
        self._checkpoints.append((self.produced, position))
        self._release()

    def reset(self) -> None:
        """Start over after a fresh subscription; lines produced before it no longer count."""
        self.acked_through = self.produced
        self.failed = False
        self.safe = None
        self._acked_ahead.clear()
        self._checkpoints.clear()

    def _release(self) -> None:
        if self.failed:
            return
        while self._checkpoints and self._checkpoints[0][0] <= self.acked_through:
            self.safe = self._checkpoints.popleft()[1]


def subscription_key(spec: SubscriptionSpec, endpoints: BetfairEndpoints, topic: str) -> str:
    """Identifies a subscription in the state file: tokens are only valid for the same stream
    endpoint, market filter, data filter and conflation, and they say what one topic holds
    (resuming into another topic would leave it without images)."""
    identity = {
        "topic": topic,
        "stream": f"{endpoints.stream_host}:{endpoints.stream_port}",
        "marketFilter": spec.market_filter(),
        "marketDataFilter": spec.market_data_filter(),
        "conflateMs": spec.conflate_ms,
    }
    return hashlib.sha256(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


class ScoutStateFile:
    """Resume tokens per subscription in a small JSON file, replaced atomically (temporary file,
    fsync, rename), so a crash at any moment leaves the previous or the new version."""

    def __init__(self, path: Path, subscription: str) -> None:
        self.path = path
        self.subscription = subscription
        self._entries: dict[str, Any] = {}

    def load(self) -> StreamPosition | None:
        """This subscription's saved position; None when there is none or the file is
        unreadable (the scout then subscribes for a fresh image, which is always safe)."""
        try:
            data = orjson.loads(self.path.read_bytes())
            entries = data["subscriptions"]
            if data.get("version") != 1 or not isinstance(entries, dict):
                raise ValueError(f"unknown layout (version {data.get('version')!r})")
            self._entries = entries
            entry = entries.get(self.subscription)
            if entry is None:
                return None
            return StreamPosition(
                str(entry["initialClk"]), str(entry["clk"]), int(entry["reachedMs"])
            )
        except FileNotFoundError:
            return None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning(
                "state file %s unusable (%s); subscribing for a fresh image", self.path, exc
            )
            self._entries = {}
            return None

    def save(self, position: StreamPosition | None) -> None:
        """Write this subscription's position (None: forget it), keeping other subscriptions'."""
        if position is None:
            self._entries.pop(self.subscription, None)
        else:
            self._entries[self.subscription] = {
                "initialClk": position.initial_clk,
                "clk": position.clk,
                "reachedMs": position.reached_ms,
                "savedAt": datetime.now(UTC).isoformat(),
            }
        payload = orjson.dumps(
            {"version": 1, "subscriptions": self._entries},
            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with temporary.open("wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def lines_on_topic_since(
    bootstrap: str, topic: str, since_ms: int, timeout_s: float = 30.0
) -> dict[tuple[str, str | None], Any]:
    """`(market id, clk) -> mc` of every line on `topic` whose timestamp is `since_ms` or later.

    With `since_ms` the moment a saved position was reached, that is what the previous process
    delivered beyond it. Raises `KafkaException` when the topic cannot be read in time.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"velo-scout-resume-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "logger": logging.getLogger("velo.scout.kafka"),
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return {}
        starts = consumer.offsets_for_times(
            [TopicPartition(topic, p, since_ms) for p in metadata.partitions], timeout=timeout_s
        )
        ends: dict[int, int] = {}
        for start in starts:
            _, high = consumer.get_watermark_offsets(
                TopicPartition(topic, start.partition), timeout=timeout_s
            )
            if 0 <= start.offset < high:
                ends[start.partition] = high
        consumer.assign([s for s in starts if s.partition in ends])
        found: dict[tuple[str, str | None], Any] = {}
        deadline = time.monotonic() + timeout_s
        while ends:
            if time.monotonic() > deadline:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"reading {topic}"))
            for message in consumer.consume(1000, timeout=0.5):
                if message.error() is not None:
                    continue
                try:
                    line = orjson.loads(message.value() or b"")
                    found[(message.key().decode(), line.get("clk"))] = line.get("mc")
                except (orjson.JSONDecodeError, AttributeError, UnicodeDecodeError):
                    pass
                if message.offset() >= ends.get(message.partition(), 0) - 1:
                    ends.pop(message.partition(), None)
        return found
    finally:
        consumer.close()


# --------------------------------------------------------------------------------------------
# Sinks
# --------------------------------------------------------------------------------------------


class KafkaMcmSink:
    """Idempotent Kafka producer for stream lines (key = market id) and dead letters.

    `on_failure` runs (in the caller's thread, from `poll`) when a line could not be delivered
    after librdkafka's retries, so the scout can resubscribe for a fresh image. `ledger`
    follows which lines Kafka acknowledged.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        dead_letter_topic: str,
        metrics: ScoutMetrics,
        *,
        linger_ms: int = 1,
        delivery_timeout_ms: int = 300_000,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.metrics = metrics
        self.on_failure = on_failure
        self.ledger = DeliveryLedger()
        self.stopping = False  # set on shutdown: a full queue then fails the line, not hangs
        self._failure_log = RateLimitedLog(log, 10.0)
        self._backpressure_log = RateLimitedLog(log, 10.0)
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": linger_ms,
                "compression.type": "lz4",
                "delivery.timeout.ms": delivery_timeout_ms,
                "partitioner": "murmur2_random",  # same market → partition mapping as Java
                "client.id": "velo-scout",
                "logger": logging.getLogger("velo.scout.kafka"),
            }
        )

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.metrics.messages_delivered += 1
            return
        self.metrics.delivery_failures += 1
        self._failure_log.warning("Kafka delivery to %s failed: %s", message.topic(), error.str())
        if message.topic() == self.topic and self.on_failure is not None:
            self.on_failure()

    def _line_delivered(self, number: int, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.ledger.acked(number)
        else:
            self.ledger.lost(number)
        self._delivered(error, message)

    def _produce(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        on_delivery: Callable[[KafkaError | None, Message], None],
    ) -> bool:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                return True
            except BufferError:
                # Local queue full (broker slow or down): wait rather than drop the line.
                if self.stopping:
                    self.metrics.delivery_failures += 1
                    log.error("Kafka producer queue full at shutdown: a line to %s is lost", topic)
                    return False
                self._backpressure_log.warning("Kafka producer queue full; waiting")
                self._producer.poll(0.1)

    def publish(self, market_id: str, line: bytes) -> None:
        number = self.ledger.produce()
        if not self._produce(
            self.topic, market_id.encode(), line, partial(self._line_delivered, number)
        ):
            self.ledger.lost(number)
        self.metrics.messages_produced += 1

    def dead_letter(self, reason: str, raw: bytes) -> None:
        record = {
            "source": "scout",
            "reason": reason,
            "at": datetime.now(UTC).isoformat(),
            "raw": raw.decode("utf-8", "replace"),
        }
        self._produce(self.dead_letter_topic, b"scout", orjson.dumps(record), self._delivered)
        self.metrics.dead_letters += 1

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding deliveries; returns how many are still undelivered."""
        return self._producer.flush(timeout_s)


class MarketRecorder:
    """Raw lines per market in `<dir>/<market_id>.gz`, readable by `velo replay`.

    Lines are buffered and appended as complete gzip members (gzip readers concatenate
    members), so a crash loses at most the unflushed buffer and never corrupts the file.
    """

    def __init__(
        self, directory: Path, *, flush_interval_s: float = 1.0, max_buffer_bytes: int = 1 << 20
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.flush_interval_s = flush_interval_s
        self.max_buffer_bytes = max_buffer_bytes
        self._buffers: dict[str, list[bytes]] = {}
        self._buffered_bytes = 0
        self._last_flush = time.monotonic()

    def write(self, market_id: str, line: bytes) -> None:
        self._buffers.setdefault(market_id, []).append(line)
        self._buffered_bytes += len(line) + 1
        if self._buffered_bytes >= self.max_buffer_bytes:
            self.flush()

    def maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        for market_id, lines in self._buffers.items():
            member = gzip.compress(b"\n".join(lines) + b"\n", compresslevel=6)
            with (self.directory / f"{market_id}.gz").open("ab") as handle:
                handle.write(member)
        self._buffers.clear()
        self._buffered_bytes = 0
        self._last_flush = time.monotonic()


# --------------------------------------------------------------------------------------------
# Stream
# --------------------------------------------------------------------------------------------


class RawLineListener(BaseListener):
    """betfairlightweight listener that forwards raw `mcm` lines instead of building caches.

    It keeps the `initialClk`/`clk` tokens of the last line it handed on, which are exactly
    what a resubscription must carry to resume without a gap or a duplicate, and reports each
    new position to `on_position`.
    """

    def __init__(
        self,
        forward: Callable[[str, bytes], None],
        dead_letter: Callable[[str, bytes], None],
        metrics: ScoutMetrics,
        *,
        max_latency_s: float,
        latency_log_interval_s: float,
        on_tick: Callable[[], None] = lambda: None,
        on_position: Callable[[StreamPosition], None] | None = None,
    ) -> None:
        super().__init__(max_latency=max_latency_s)
        self.forward = forward
        self.dead_letter = dead_letter
        self.metrics = metrics
        self.on_tick = on_tick
        self.on_position = on_position
        self.last_error: tuple[str, str] | None = None
        self._initial_clk: str | None = None
        self._clk: str | None = None
        self._latency_log = RateLimitedLog(log, latency_log_interval_s)
        self._foreign_log = RateLimitedLog(log, 60.0)

    # betfairlightweight hooks: no MarketStream cache, just ids and tokens.
    def register_stream(self, unique_id: int, operation: str) -> None:
        self.stream_unique_id = unique_id
        self.stream_type = operation

    def update_unique_id(self, unique_id: int) -> None:
        self.stream_unique_id = unique_id

    @property
    def initial_clk(self) -> str | None:
        return self._initial_clk

    @property
    def clk(self) -> str | None:
        return self._clk

    def reset_clock(self) -> None:
        """Forget the tokens: the next subscription starts with a full image."""
        self._initial_clk = self._clk = None

    def restore(self, position: StreamPosition) -> None:
        """Resume from a saved position (the next subscription carries its tokens)."""
        self._initial_clk, self._clk = position.initial_clk, position.clk

    def on_data(self, raw_data: str) -> bool | None:
        raw = raw_data.encode()
        self.metrics.lines_received += 1
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.dead_letter("malformed_json", raw)
            return None
        if not isinstance(message, dict):
            self.dead_letter("not_an_object", raw)
            return None
        op = message.get("op")
        if op == "mcm":
            self._on_mcm(message, raw)
        elif op == "status":
            return self._on_status(message)
        elif op == "connection":
            self.connection_id = message.get("connectionId")
            log.info("stream connection %s", self.connection_id)
        else:
            self.dead_letter("unknown_op", raw)
        self.on_tick()
        return None

    def _on_status(self, message: dict[str, Any]) -> bool | None:
        if message.get("statusCode") != "FAILURE":
            available = message.get("connectionsAvailable")
            if available is not None:
                self.connections_available = available
            return None
        self.metrics.status_failures += 1
        self.last_error = (str(message.get("errorCode")), str(message.get("errorMessage")))
        log.error("stream status FAILURE %s: %s", *self.last_error)
        return False  # stop the read loop; the scout decides how to recover

    def _on_mcm(self, message: dict[str, Any], raw: bytes) -> None:
        if message.get("id") != self.stream_unique_id:
            self.metrics.foreign_messages += 1
            self._foreign_log.warning(
                "ignoring mcm for subscription %s (expecting %s)",
                message.get("id"),
                self.stream_unique_id,
            )
            return
        change_type = message.get("ct")
        if message.get("status") is not None:  # e.g. 503: Betfair-side latency, keep going
            self._latency_log.warning("stream reports status %s", message.get("status"))
        if change_type == "HEARTBEAT":
            self.metrics.heartbeats += 1
        else:
            self.metrics.mcm_lines += 1
            if change_type == "SUB_IMAGE":
                self.metrics.sub_images += 1
            elif change_type == "RESUB_DELTA":
                self.metrics.resub_deltas += 1
            publish_time = message.get("pt")
            if isinstance(publish_time, int):
                latency = time.time() - publish_time / 1000
                self.metrics.max_latency_s = max(self.metrics.max_latency_s, latency)
                if self.max_latency is not None and latency > self.max_latency:
                    self.metrics.latency_warnings += 1
                    self._latency_log.warning("stream latency %.3f s", latency)
            lines, problem = split_by_market(message, raw)
            if problem:
                self.dead_letter(problem, raw)
            for market_id, line in lines:
                self.forward(market_id, line)
        # Tokens move only after the line is with the producer: resuming from them never skips.
        if message.get("initialClk"):
            self._initial_clk = message["initialClk"]
        if message.get("clk"):
            self._clk = message["clk"]
        if self.on_position is not None and self._initial_clk and self._clk:
            self.on_position(StreamPosition(self._initial_clk, self._clk, int(time.time() * 1000)))


class VerifiedBetfairStream(BetfairStream):
    """betfairlightweight's stream socket with a configurable endpoint and verified TLS."""

    def __init__(
        self,
        listener: BaseListener,
        *,
        app_key: str,
        session_token: str,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        timeout_s: float,
    ) -> None:
        super().__init__(0, listener, app_key, session_token, timeout_s, 1 << 16, None)
        self.host = host
        self.port = port
        self._ssl_context = ssl_context

    def stop(self) -> None:
        """Stop reading and close the socket; safe when `Scout.stop` (another thread) and the
        ending read loop stop the stream at the same time."""
        self._running = False
        sock = self._socket
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
        if self._socket is sock:
            self._socket = None

    def _create_socket(self) -> socket.socket:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            wrapped = self._ssl_context.wrap_socket(raw, server_hostname=self.host)
        except (OSError, ssl.SSLError):
            raw.close()
            raise
        wrapped.settimeout(self.timeout)
        return wrapped


@dataclass
class ScoutOptions:
    """Run-time knobs of the scout that are not the subscription itself."""

    max_latency_s: float = 1.0
    latency_log_interval_s: float = 30.0
    metrics_interval_s: float = 60.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    flush_timeout_s: float = 30.0
    socket_timeout_s: float | None = None
    """Default: three heartbeat intervals plus a second, so a dead link is noticed quickly."""
    use_certs: bool = field(default=False)
    state_interval_s: float = 1.0
    """Least time between two state-file writes (the final position is always written)."""


class Scout:
    """Login, subscribe, forward, reconnect: the `velo scout` loop.

    With a `state` file, the position Kafka fully holds is saved at most every
    `options.state_interval_s` and on shutdown, and a new scout resumes from it.
    """

    def __init__(
        self,
        client: betfairlightweight.APIClient,
        spec: SubscriptionSpec,
        endpoints: BetfairEndpoints,
        sink: KafkaMcmSink,
        metrics: ScoutMetrics,
        options: ScoutOptions,
        recorder: MarketRecorder | None = None,
        state: ScoutStateFile | None = None,
    ) -> None:
        self.client = client
        self.spec = spec
        self.endpoints = endpoints
        self.sink = sink
        self.metrics = metrics
        self.options = options
        self.recorder = recorder
        self.state = state
        self.listener = RawLineListener(
            self._forward,
            sink.dead_letter,
            metrics,
            max_latency_s=options.max_latency_s,
            latency_log_interval_s=options.latency_log_interval_s,
            on_tick=self._tick,
            on_position=sink.ledger.checkpoint if state is not None else None,
        )
        sink.on_failure = self._request_resync
        self._ssl_context = endpoints.ssl_context()
        self._stop = threading.Event()
        self._resync = False
        self._stream: VerifiedBetfairStream | None = None
        self._last_metrics_log = time.monotonic()
        self._saved: StreamPosition | None = None
        self._last_save = float("-inf")
        self._state_log = RateLimitedLog(log, 60.0)
        self._on_topic: dict[tuple[str, str | None], Any] = {}
        """Lines the previous process delivered after the saved position (not produced again)."""

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler); `run` then flushes and returns."""
        self._stop.set()
        self.sink.stopping = True
        if self._stream is not None:
            self._stream.stop()

    def _forward(self, market_id: str, line: bytes) -> None:
        if self._on_topic and self._already_on_topic(market_id, line):
            self.metrics.duplicates_skipped += 1
            return
        self.sink.publish(market_id, line)
        if self.recorder is not None:
            self.recorder.write(market_id, line)
            self.metrics.recorded_lines += 1

    def _already_on_topic(self, market_id: str, line: bytes) -> bool:
        """Whether Kafka got this resent line from the previous process: same market, same
        `clk` and the same change. A fresh image makes the earlier lines irrelevant."""
        message = orjson.loads(line)
        if message.get("ct") == "SUB_IMAGE":
            self._on_topic.clear()
            return False
        delivered = self._on_topic.pop((market_id, message.get("clk")), None)
        return delivered is not None and delivered == message.get("mc")

    def _tick(self) -> None:
        self.sink.poll()
        now = time.monotonic()
        if self.state is not None and now - self._last_save >= self.options.state_interval_s:
            self._save_state(self.sink.ledger.safe)
        if self.recorder is not None:
            self.recorder.maybe_flush()
        if now - self._last_metrics_log >= self.options.metrics_interval_s:
            self._last_metrics_log = now
            log.info("scout metrics %s", orjson.dumps(self.metrics.as_dict()).decode())

    def _save_state(self, position: StreamPosition | None) -> None:
        """Write the position Kafka holds to the state file if it moved since the last write."""
        if position is not None and position != self._saved:
            self._write_state(position)

    def _write_state(self, position: StreamPosition | None) -> None:
        assert self.state is not None
        try:
            self.state.save(position)
        except OSError as exc:
            self._state_log.warning("cannot write the state file %s: %s", self.state.path, exc)
            return
        self._saved = position
        self._last_save = time.monotonic()
        self.metrics.state_saves += 1

    def _forget_position(self) -> None:
        """Before a fresh image: no tokens anywhere, so nothing resumes into the old stream."""
        self.listener.reset_clock()
        self.sink.ledger.reset()
        self._on_topic.clear()
        if self.state is not None:
            self._write_state(None)

    def _resume_from_state(self) -> None:
        """Load the saved position and read back what Kafka already holds beyond it."""
        assert self.state is not None
        position = self.state.load()
        if position is None:
            return
        self.listener.restore(position)
        self._saved = position
        self.metrics.resumed_from_state = 1
        log.info("resuming from the position saved in %s", self.state.path)
        try:
            self._on_topic = lines_on_topic_since(
                self.sink.bootstrap, self.sink.topic, position.reached_ms
            )
        except KafkaException as exc:
            log.warning(
                "cannot read back %s (%s): lines Kafka got after the saved position will be "
                "produced again",
                self.sink.topic,
                exc,
            )

    def _request_resync(self) -> None:
        self._resync = True
        if self._stream is not None:
            self._stream.stop()

    def _login(self, backoff: Backoff) -> None:
        while not self._stop.is_set():
            try:
                login(self.client, use_certs=self.options.use_certs)
                log.info("logged in to Betfair as %s", self.client.username)
                return
            except (APIError, StatusCodeError, InvalidResponse) as exc:
                delay = backoff.next_delay()
                reason = exc.exception if isinstance(exc, APIError) else exc
                log.warning("Betfair login failed (%s); retrying in %.1f s", reason, delay)
                self._stop.wait(delay)

    def run(self) -> None:
        """Stream until `stop()`; raises `ScoutError` for problems retrying cannot fix."""
        backoff = Backoff(self.options.backoff_initial_s, self.options.backoff_max_s)
        timeout_s = self.options.socket_timeout_s or 3 * self.spec.heartbeat_ms / 1000 + 1
        try:
            if self.state is not None:
                self._resume_from_state()
            self._login(backoff)
            while not self._stop.is_set():
                if self.client.session_expired:
                    self._login(backoff)
                received_before = self.metrics.lines_received
                self._stream = VerifiedBetfairStream(
                    self.listener,
                    app_key=self.client.app_key,
                    session_token=self.client.session_token,
                    host=self.endpoints.stream_host,
                    port=self.endpoints.stream_port,
                    ssl_context=self._ssl_context,
                    timeout_s=timeout_s,
                )
                self._connect_and_stream()
                self._stream.stop()
                if self._stop.is_set():
                    break
                if self._resync:
                    self._resync = False
                    self.metrics.resyncs += 1
                    self._forget_position()
                    log.warning("resubscribing for a fresh image after lost deliveries")
                if self.metrics.lines_received - received_before > 2:
                    backoff.reset()  # that connection was healthy: reconnect promptly
                delay = backoff.next_delay()
                self.metrics.reconnects += 1
                log.warning("reconnecting in %.1f s", delay)
                self._stop.wait(delay)
        finally:
            self._shutdown()

    def _connect_and_stream(self) -> None:
        assert self._stream is not None
        listener = self.listener
        listener.last_error = None
        resuming = bool(listener.initial_clk and listener.clk)
        try:
            self.metrics.connections += 1
            self._stream.subscribe_to_markets(
                market_filter=self.spec.market_filter(),
                market_data_filter=self.spec.market_data_filter(),
                initial_clk=listener.initial_clk,
                clk=listener.clk,
                conflate_ms=self.spec.conflate_ms,
                heartbeat_ms=self.spec.heartbeat_ms,
            )
            log.info("subscribed%s", " (resuming from clk)" if resuming else "")
            self._stream.start()
        except StreamSocketError as exc:
            if not self._stop.is_set():
                log.warning("stream connection lost: %s", exc)
        except (OSError, ssl.SSLError) as exc:
            log.warning("stream connection failed: %s", exc)
        except ListenerError:
            self._on_stream_failure()

    def _on_stream_failure(self) -> None:
        code, message = self.listener.last_error or ("UNKNOWN", "")
        if code in FATAL_STREAM_ERRORS:
            raise ScoutError(f"Betfair stream refused the connection: {code}: {message}")
        if code in SESSION_STREAM_ERRORS:
            log.warning("stream session rejected (%s); logging in again", code)
            self.client.client_logout()
        elif code == "INVALID_CLOCK":
            log.warning("stream rejected the resume tokens; subscribing for a fresh image")
            self._forget_position()

    def _shutdown(self) -> None:
        if self._stream is not None:
            self._stream.stop()
        if self.recorder is not None:
            self.recorder.flush()
        undelivered = self.sink.flush(self.options.flush_timeout_s)
        if undelivered:
            self.metrics.delivery_failures += undelivered
            log.error("%d lines still undelivered to Kafka at shutdown", undelivered)
        if self.state is not None:
            self._save_state(self.sink.ledger.safe)
        log.info("scout stopped %s", orjson.dumps(self.metrics.as_dict()).decode())


__all__ = [
    "BetfairEndpoints",
    "KafkaMcmSink",
    "MarketRecorder",
    "RawLineListener",
    "Scout",
    "ScoutError",
    "ScoutMetrics",
    "ScoutOptions",
    "ScoutStateFile",
    "StreamPosition",
    "SubscriptionSpec",
    "lines_on_topic_since",
    "login",
    "make_api_client",
    "split_by_market",
    "subscription_key",
]
