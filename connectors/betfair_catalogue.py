"""`velo racecards`: Betfair market catalogue → versioned racecard and result events on Kafka.

Each poll lists the markets the filter selects (cheap: no projection), then fetches their
catalogue with runner metadata in chunks that respect Betfair's request weight limit, turns
each market into a `Racecard` (`operators.racing_events`), and publishes it keyed by market id,
only when it differs from what this process last published for that market. A runner that
drops out of the catalogue between polls stays on the card as `withdrawn`. A catalogue entry
that cannot become a valid racecard goes to the dead-letter topic with the reason.

Results: listMarketCatalogue never returns CLOSED markets, so a WIN market this process
published a card for and that has left the catalogue is asked for with listMarketBook (BSP
projection). Once Betfair reports it CLOSED, its runner statuses and BSPs become a `RaceResult`
keyed by market id, published once; a settled book that cannot make a valid result is
dead-lettered instead. Either way the market is then done and never asked for again.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import betfairlightweight
import orjson
from betfairlightweight.exceptions import APIError, InvalidResponse, StatusCodeError
from confluent_kafka import KafkaError, Message, Producer

from connectors.betfair_live import (
    Backoff,
    RateLimitedLog,
    ScoutError,
    SubscriptionSpec,
    login,
)
from operators.racing_events import (
    EventValidationError,
    FinishStatus,
    Racecard,
    RacecardRunner,
    RaceResult,
    RunnerStatus,
    dump_event,
    parse_event,
)

log = logging.getLogger("velo.racecards")

FULL_PROJECTION = (
    "EVENT",
    "EVENT_TYPE",
    "MARKET_START_TIME",
    "MARKET_DESCRIPTION",
    "RUNNER_DESCRIPTION",
    "RUNNER_METADATA",
)
# Betfair's listMarketCatalogue weights: MARKET_DESCRIPTION 1 + RUNNER_METADATA 1 per market,
# at most 200 points per request.
MARKETS_PER_REQUEST = 100
# listMarketBook with priceData SP_TRADED (for actualSP) weighs 7 points per market.
BOOK_PRICE_PROJECTION = {"priceData": ["SP_TRADED"]}
BOOKS_PER_REQUEST = 200 // 7
# Markets whose settled book is one race's finishing result (a PLACE book has several winners
# and would overwrite the WIN result of the same race_id).
RESULT_MARKET_TYPES = frozenset({"WIN"})
WITHDRAWN_RUNNER_STATUSES = frozenset({"REMOVED", "REMOVED_VACANT"})
HORSE_RACING = "7"
KG_TO_LBS = 2.20462262
METRES_PER = {"m": 1609.344, "f": 201.168, "y": 0.9144}
_METRIC_DISTANCE = re.compile(r"(?<![\d.])(\d{3,4})m\b")
_IMPERIAL_DISTANCE = re.compile(r"(?<![\w.])(?:(\d)m)?(?:(\d)f)?(?:(\d{1,3})y)?(?![\w.])")
_RACE_NUMBER = re.compile(r"^R(\d{1,2})\b")
_NAME_NUMBER = re.compile(r"^(\d{1,2})\.\s+(.+)$")
SESSION_ERRORS = ("INVALID_SESSION_INFORMATION", "NO_SESSION")


# --------------------------------------------------------------------------------------------
# Catalogue → Racecard
# --------------------------------------------------------------------------------------------


def _text(metadata: dict[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    if value is None:
        return None
    text = str(value).strip()
    return text if text and text.upper() not in ("NONE", "NULL") else None


def _integer(metadata: dict[str, Any], key: str, runner: str) -> int | None:
    """Betfair metadata numbers are strings ('3', '72', '140.0'); anything else is an error."""
    text = _text(metadata, key)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer():
        raise EventValidationError(f"runner {runner}: {key} {text!r} is not a whole number")
    return int(value)


def _weight_lbs(metadata: dict[str, Any], runner: str) -> float | None:
    text = _text(metadata, "WEIGHT_VALUE")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise EventValidationError(
            f"runner {runner}: WEIGHT_VALUE {text!r} is not a number"
        ) from exc
    units = (_text(metadata, "WEIGHT_UNITS") or "pounds").lower()
    if units.startswith("k"):
        return round(value * KG_TO_LBS, 1)
    if units.startswith("p") or units == "lbs":
        return value
    raise EventValidationError(f"runner {runner}: unknown WEIGHT_UNITS {units!r}")


def distance_from_name(market_name: str) -> int | None:
    """Race distance in metres from a Betfair market name ('R7 1600m Grp1', '2m4f Hcap Chs')."""
    metric = _METRIC_DISTANCE.search(market_name)
    if metric:
        return int(metric.group(1))
    for match in _IMPERIAL_DISTANCE.finditer(market_name):
        if match.group(1) or match.group(2):
            metres = sum(
                int(amount) * METRES_PER[unit]
                for amount, unit in zip(match.groups(), "mfy", strict=True)
                if amount
            )
            return round(metres)
    return None


def _start_time(catalogue: dict[str, Any]) -> datetime:
    raw = catalogue.get("marketStartTime") or (catalogue.get("description") or {}).get("marketTime")
    if not raw:
        raise EventValidationError("no marketStartTime (request MARKET_START_TIME)")
    try:
        start = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError as exc:
        raise EventValidationError(f"marketStartTime {raw!r} is not a timestamp") from exc
    return start if start.tzinfo else start.replace(tzinfo=UTC)


def _meeting_date(start: datetime, timezone: str | None) -> date:
    """The local date at the course (an evening AU race is the previous day in UTC)."""
    if timezone:
        try:
            return start.astimezone(ZoneInfo(timezone)).date()
        except (ZoneInfoNotFoundError, ValueError):
            log.warning("unknown time zone %r; using the UTC date", timezone)
    return start.astimezone(UTC).date()


def racecard_from_catalogue(
    catalogue: dict[str, Any], withdrawn: Sequence[RacecardRunner] = ()
) -> Racecard:
    """One market catalogue (with EVENT, MARKET_START_TIME, RUNNER_* projections) as a racecard.

    Raises `EventValidationError` with the reason when the entry cannot make a valid card.
    """
    if not isinstance(catalogue, dict):
        raise EventValidationError("catalogue entry is not an object")
    market_id = catalogue.get("marketId")
    if not isinstance(market_id, str) or not market_id:
        raise EventValidationError("catalogue entry without marketId")
    event = catalogue.get("event") or {}
    event_type = (catalogue.get("eventType") or {}).get("id")
    start = _start_time(catalogue)
    market_name = str(catalogue.get("marketName") or "")
    race_number = _RACE_NUMBER.match(market_name)
    runners = []
    for raw_runner in catalogue.get("runners") or ():
        runners.append(_runner(raw_runner, market_id))
    current = {runner.runner_id for runner in runners}
    runners.extend(r for r in withdrawn if r.runner_id not in current)
    card = {
        "source": "betfair",
        "race_id": f"betfair-{event.get('id', 'event?')}-{start.astimezone(UTC):%Y%m%dT%H%MZ}",
        "market_id": market_id,
        "meeting_date": _meeting_date(start, event.get("timezone")).isoformat(),
        "venue": event.get("venue") or "",
        "race_number": int(race_number.group(1)) if race_number else None,
        "start_time": start.isoformat(),
        "race_name": market_name or None,
        "distance_m": distance_from_name(market_name) if event_type == HORSE_RACING else None,
        "runners": [r.model_dump(mode="json") for r in runners],
        "schema_version": 1,
        "event_type": "racecard",
    }
    event_out = parse_event(card)
    assert isinstance(event_out, Racecard)
    return event_out


def _runner(raw: Any, market_id: str) -> RacecardRunner:
    if not isinstance(raw, dict) or not isinstance(raw.get("selectionId"), int):
        raise EventValidationError(f"market {market_id}: runner without a selectionId")
    selection_id = raw["selectionId"]
    metadata = raw.get("metadata") or {}
    label = str(selection_id)
    name = str(raw.get("runnerName") or "").strip() or None
    cloth = _integer(metadata, "CLOTH_NUMBER", label)
    if name and (numbered := _NAME_NUMBER.match(name)):  # "1. Paradise Mission" (AU, dogs)
        cloth = cloth if cloth is not None else int(numbered.group(1))
        name = numbered.group(2)
    fields = {
        "runner_id": _text(metadata, "runnerId") or label,
        "horse_name": name,
        "selection_id": selection_id,
        "saddle_cloth": cloth,
        "draw": _integer(metadata, "STALL_DRAW", label),
        "jockey": _text(metadata, "JOCKEY_NAME"),
        "trainer": _text(metadata, "TRAINER_NAME"),
        "weight_carried_lbs": _weight_lbs(metadata, label),
        "official_rating": _integer(metadata, "OFFICIAL_RATING", label),
        "age": _integer(metadata, "AGE", label),
        "sex": _text(metadata, "SEX_TYPE"),
        "gear": _text(metadata, "WEARING"),
        "days_since_last_run": _integer(metadata, "DAYS_SINCE_LAST_RUN", label),
        "form": _text(metadata, "FORM"),
    }
    try:
        return RacecardRunner.model_validate(fields)
    except ValueError as exc:
        first = str(exc).splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) if len(first) > 1 else str(exc)
        raise EventValidationError(f"runner {label}: {detail}") from exc


# --------------------------------------------------------------------------------------------
# Settled market book → RaceResult
# --------------------------------------------------------------------------------------------


def _bsp(runner: dict[str, Any]) -> float | None:
    """The reconciled BSP (`sp.actualSP`), when it is a real price; Betfair sends NaN/Infinity
    or nothing for runners without one."""
    sp = runner.get("sp")
    value = sp.get("actualSP") if isinstance(sp, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 1.0 else None


def result_from_market_book(book: Any, card: Racecard) -> RaceResult:
    """A CLOSED WIN market's listMarketBook entry (SP_TRADED projection) as the race's result.

    Betfair settles a WIN market with WINNER (dead-heaters: several), LOSER and REMOVED; it
    gives no finishing order beyond the winner. So a winner is `finished` in position 1, a
    loser `unplaced` (ran, not first, position unknown) and a removed runner `withdrawn`.
    Every runner that ran carries its BSP as `win_odds`. Identity (race id, date, venue,
    runner ids) comes from the card this process published. Raises `EventValidationError` when
    the book cannot be a result.
    """
    if not isinstance(book, dict):
        raise EventValidationError("market book is not an object")
    if book.get("status") != "CLOSED":
        raise EventValidationError(f"market status {book.get('status')!r}, not CLOSED")
    runners = book.get("runners")
    if not isinstance(runners, list) or not runners:
        raise EventValidationError("settled market book without runners")
    runner_ids = {r.selection_id: r.runner_id for r in card.runners if r.selection_id is not None}
    winners = sum(1 for r in runners if isinstance(r, dict) and r.get("status") == "WINNER")
    if winners == 0:
        raise EventValidationError("closed without a winner (void or abandoned race?)")
    outcomes = []
    for runner in runners:
        selection_id = runner.get("selectionId") if isinstance(runner, dict) else None
        if not isinstance(selection_id, int):
            raise EventValidationError("market book runner without a selectionId")
        status = runner.get("status")
        fields: dict[str, Any] = {"runner_id": runner_ids.get(selection_id, str(selection_id))}
        if status == "WINNER":
            fields |= {"status": FinishStatus.FINISHED, "finish_position": 1}
            fields |= {"dead_heat": winners > 1, "win_odds": _bsp(runner)}
        elif status == "LOSER":
            fields["status"] = FinishStatus.UNPLACED
            fields["win_odds"] = _bsp(runner)
        elif status in WITHDRAWN_RUNNER_STATUSES:
            fields |= {"status": FinishStatus.WITHDRAWN, "non_finish_code": status}
        elif status == "HIDDEN":
            continue
        else:
            raise EventValidationError(
                f"runner {selection_id}: status {status!r} in a settled WIN market"
            )
        outcomes.append(fields)
    result = {
        "source": card.source,
        "race_id": card.race_id,
        "meeting_date": card.meeting_date.isoformat(),
        "venue": card.venue,
        "race_number": card.race_number,
        "runners": outcomes,
        "schema_version": 1,
        "event_type": "result",
    }
    event = parse_event(result)
    assert isinstance(event, RaceResult)
    return event


# --------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------


@dataclass
class RacecardMetrics:
    polls: int = 0
    poll_errors: int = 0
    markets_seen: int = 0
    published: int = 0
    """Events of any kind (racecards and results)."""
    unchanged: int = 0
    results: int = 0
    result_dead_letters: int = 0
    results_waiting: int = 0
    """WIN markets gone from the catalogue whose settled book has not arrived yet (a gauge)."""
    results_given_up: int = 0
    dead_letters: int = 0
    delivered: int = 0
    delivery_failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RacecardSink:
    """Idempotent producer for racecard events (key = market id) and their dead letters."""

    def __init__(self, bootstrap: str, topic: str, dead_letter_topic: str) -> None:
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.metrics = RacecardMetrics()
        self._failure_log = RateLimitedLog(log, 10.0)
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "partitioner": "murmur2_random",
                "client.id": "velo-racecards",
                "logger": logging.getLogger("velo.racecards.kafka"),
            }
        )

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.metrics.delivered += 1
        else:
            self.metrics.delivery_failures += 1
            self._failure_log.warning("Kafka delivery to %s failed: %s", message.topic(), error)

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._delivered)
                self._producer.poll(0)
                return
            except BufferError:
                self._producer.poll(0.1)

    def publish(self, market_id: str, event: bytes) -> None:
        self._produce(self.topic, market_id.encode(), event)
        self.metrics.published += 1

    def dead_letter(self, key: str, reason: str, raw: Any) -> None:
        record = {
            "source": "racecards",
            "reason": reason,
            "at": datetime.now(UTC).isoformat(),
            "raw": raw,
        }
        self._produce(self.dead_letter_topic, key.encode(), orjson.dumps(record, default=str))
        self.metrics.dead_letters += 1

    def flush(self, timeout_s: float = 30.0) -> int:
        return self._producer.flush(timeout_s)


# --------------------------------------------------------------------------------------------
# Poller
# --------------------------------------------------------------------------------------------


@dataclass
class _FollowedMarket:
    """A market this process published a card for and still follows (until its result)."""

    card: Racecard
    digest: str
    market_type: str | None
    left_catalogue: datetime | None = None


class CataloguePoller:
    """Poll listMarketCatalogue and publish changed racecards, then the results of the WIN
    markets that settle; `stop()` ends `run`."""

    def __init__(
        self,
        client: betfairlightweight.APIClient,
        spec: SubscriptionSpec,
        sink: RacecardSink,
        *,
        use_certs: bool,
        hours_ahead: float = 24.0,
        max_results: int = 1000,
        result_wait: timedelta = timedelta(hours=24),
    ) -> None:
        self.client = client
        self.spec = spec
        self.sink = sink
        self.metrics = sink.metrics
        self.use_certs = use_certs
        self.hours_ahead = hours_ahead
        self.max_results = max_results
        self.result_wait = result_wait
        """How long a WIN market gone from the catalogue may stay unsettled before it is dropped."""
        self._stop = threading.Event()
        self._markets: dict[str, _FollowedMarket] = {}

    def stop(self) -> None:
        self._stop.set()

    def market_filter(self, now: datetime) -> dict[str, Any]:
        wanted = {
            "eventTypeIds": self.spec.event_type_ids,
            "marketCountries": self.spec.country_codes,
            "marketTypeCodes": self.spec.market_types,
            "marketIds": self.spec.market_ids,
            "venues": self.spec.venues,
        }
        market_filter: dict[str, Any] = {k: list(v) for k, v in wanted.items() if v}
        if self.hours_ahead > 0:
            market_filter["marketStartTime"] = {
                "from": (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "to": (now + timedelta(hours=self.hours_ahead)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        return market_filter

    def run(self, *, interval_s: float, once: bool = False) -> None:
        """Poll until stopped (or once); API trouble is retried with backoff.

        With `once`, a poll that still fails after a few retries raises `ScoutError`.
        """
        backoff = Backoff(1.0, max(interval_s, 1.0))
        try:
            while not self._stop.is_set():
                try:
                    if self.client.session_expired:
                        login(self.client, use_certs=self.use_certs)
                    self.poll_once()
                except (APIError, StatusCodeError, InvalidResponse) as exc:
                    self.metrics.poll_errors += 1
                    if any(code in str(exc) for code in SESSION_ERRORS):
                        self.client.client_logout()
                    if once and backoff.attempt >= 3:
                        raise ScoutError(f"catalogue poll kept failing: {_brief(exc)}") from exc
                    wait = backoff.next_delay()
                    log.warning("catalogue poll failed (%s); retrying in %.1f s", _brief(exc), wait)
                    self._stop.wait(wait)
                    continue
                backoff.reset()
                if once:
                    return
                self._stop.wait(interval_s)
        finally:
            undelivered = self.sink.flush()
            if undelivered:
                self.metrics.delivery_failures += undelivered
                log.error("%d racecard events undelivered at shutdown", undelivered)

    def poll_once(self) -> None:
        """One full poll: list markets, fetch their catalogue in chunks, publish changes, then
        publish the results of followed WIN markets that have settled."""
        market_filter = self.market_filter(datetime.now(UTC))
        listed = self.client.betting.list_market_catalogue(
            filter=market_filter, max_results=self.max_results, sort="FIRST_TO_START"
        )
        market_ids = [entry["marketId"] for entry in listed if isinstance(entry, dict)]
        if len(listed) >= self.max_results:
            log.warning("catalogue listing capped at %d markets; narrow the filter", len(listed))
        self.metrics.polls += 1
        for start in range(0, len(market_ids), MARKETS_PER_REQUEST):
            chunk = market_ids[start : start + MARKETS_PER_REQUEST]
            catalogues = self.client.betting.list_market_catalogue(
                filter={"marketIds": chunk},
                market_projection=list(FULL_PROJECTION),
                max_results=len(chunk),
            )
            for catalogue in catalogues:
                self.handle(catalogue)
        self.poll_results(set(market_ids))

    def handle(self, catalogue: Any) -> None:
        """Publish one catalogue entry as a racecard if it changed; dead-letter it if invalid."""
        self.metrics.markets_seen += 1
        market_id = catalogue.get("marketId") if isinstance(catalogue, dict) else None
        key = market_id if isinstance(market_id, str) else "unknown"
        followed = self._markets.get(key)
        previous = followed.card.runners if followed else []
        try:
            card = racecard_from_catalogue(catalogue, [])
            current = {r.runner_id for r in card.runners}
            gone = [
                r.model_copy(update={"status": RunnerStatus.WITHDRAWN})
                for r in previous
                if r.runner_id not in current
            ]
            if gone:
                card = racecard_from_catalogue(catalogue, gone)
        except EventValidationError as exc:
            log.warning("racecard for %s dead-lettered: %s", key, exc.reason)
            self.sink.dead_letter(key, exc.reason, catalogue)
            return
        payload = dump_event(card)
        digest = hashlib.sha256(payload).hexdigest()
        if followed is not None and followed.digest == digest:
            self.metrics.unchanged += 1
            return
        market_type = (catalogue.get("description") or {}).get("marketType")
        self._markets[key] = _FollowedMarket(card, digest, market_type)
        self.sink.publish(key, payload)

    def poll_results(self, listed: set[str]) -> None:
        """Publish the results of followed WIN markets that left the catalogue and settled.

        Other markets that left the catalogue are forgotten. Betfair answers only the OPEN
        markets of a listMarketBook request that mixes OPEN and CLOSED ones, so the markets a
        first pass left out are asked for again on their own.
        """
        now = datetime.now(UTC)
        waiting = []
        for market_id, market in list(self._markets.items()):
            if market_id in listed:
                market.left_catalogue = None
            elif market.market_type not in RESULT_MARKET_TYPES:
                del self._markets[market_id]
            else:
                market.left_catalogue = market.left_catalogue or now
                waiting.append(market_id)
        left_out, open_seen = self._settle(waiting)
        if left_out and open_seen:
            self._settle(left_out)
        for market_id in waiting:
            market = self._markets.get(market_id)
            if market is not None and now - (market.left_catalogue or now) >= self.result_wait:
                log.warning(
                    "%s: no settled book %s after it left the catalogue; giving up",
                    market_id,
                    self.result_wait,
                )
                del self._markets[market_id]
                self.metrics.results_given_up += 1
        self.metrics.results_waiting = sum(
            1 for market in self._markets.values() if market.left_catalogue is not None
        )

    def _settle(self, market_ids: list[str]) -> tuple[list[str], bool]:
        """One listMarketBook pass over `market_ids`: publish each CLOSED market's result.

        Returns the ids Betfair did not answer for, and whether it answered any market that
        is not CLOSED yet.
        """
        answered: set[str] = set()
        open_seen = False
        for start in range(0, len(market_ids), BOOKS_PER_REQUEST):
            chunk = market_ids[start : start + BOOKS_PER_REQUEST]
            books = self.client.betting.list_market_book(
                market_ids=chunk, price_projection=BOOK_PRICE_PROJECTION
            )
            if not isinstance(books, list):
                self._dead_result("listMarketBook", "listMarketBook result is not a list", books)
                continue
            for book in books:
                market_id = book.get("marketId") if isinstance(book, dict) else None
                if market_id not in chunk:
                    self._dead_result(
                        "listMarketBook", "market book for a market not asked for", book
                    )
                    continue
                answered.add(market_id)
                if book.get("status") != "CLOSED":
                    open_seen = True
                    continue
                market = self._markets.pop(market_id, None)
                if market is None:  # answered twice in one response
                    continue
                try:
                    result = result_from_market_book(book, market.card)
                except EventValidationError as exc:
                    self._dead_result(market_id, exc.reason, book)
                    continue
                self.sink.publish(market_id, dump_event(result))
                self.metrics.results += 1
        return [m for m in market_ids if m not in answered], open_seen

    def _dead_result(self, key: str, reason: str, raw: Any) -> None:
        log.warning("result for %s dead-lettered: %s", key, reason)
        self.sink.dead_letter(key, f"result: {reason}", raw)
        self.metrics.result_dead_letters += 1


def _brief(exc: Exception) -> str:
    text = str(exc).splitlines()
    return text[0] if text else type(exc).__name__
