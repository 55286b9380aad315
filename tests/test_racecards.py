"""`velo racecards`: Betfair market catalogue → racecard and result events on real Kafka.

The betting and identity APIs are the local HTTPS servers in `tests.betfair_stream_server`,
answering with the real catalogue JSON from the shared data (greyhounds: the only catalogues
there). Horse-racing runner metadata is added to a copy of a real catalogue in Betfair's
documented RUNNER_METADATA shape (every value a string), since no recorded horse catalogue is
available. Results: the server's listMarketBook answers from the recorded stream files'
market definitions (the first one before the off, the closing one after settlement: winners,
losers, non-runners and BSP), and the horse markets' catalogues are built from the same
definitions.
"""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from betfairlightweight import APIClient
from confluent_kafka import Consumer

from connectors.betfair_catalogue import (
    BOOKS_PER_REQUEST,
    CataloguePoller,
    RacecardSink,
    distance_from_name,
    racecard_from_catalogue,
    result_from_market_book,
)
from connectors.betfair_live import BetfairEndpoints, SubscriptionSpec, make_api_client
from operators.racing_events import (
    EventValidationError,
    FinishStatus,
    Racecard,
    RaceResult,
    RunnerStatus,
    parse_event,
)
from tests.betfair_stream_server import (
    BetfairApiServer,
    RecordedMarket,
    TlsMaterial,
    make_tls_material,
    project_catalogue,
    project_market_book,
    recorded_markets,
)

REPO = Path(__file__).resolve().parents[1]
USERNAME, PASSWORD, APP_KEY = "velo-user", "s3cret-pass", "velo-app-key"
FULL = [
    "EVENT",
    "EVENT_TYPE",
    "MARKET_START_TIME",
    "MARKET_DESCRIPTION",
    "RUNNER_DESCRIPTION",
    "RUNNER_METADATA",
]
HORSE_METADATA = [  # (cloth, draw, jockey, trainer, lbs, age, rating, days, form)
    ("1", "4", "R Johnson", "P Hobbs", "161", "7", "128", "21", "1-2341"),
    ("2", "1", "H Cobden", "P Nicholls", "154", "6", "121", "35", "P3-21"),
    ("3", "6", "S Twiston-Davies", "N Twiston-Davies", "150", "8", "117", "14", "4-U12"),
    ("4", "2", "B Hughes", "D McCain", "147", "9", "114", "63", "0-5P4"),
    ("5", "3", "T Scudamore", "D Pipe", "142", "5", "109", "28", "2213-"),
    ("6", "5", "A Coleman", "O Greenall", "140", "10", "None", "120", None),
]


# Recorded markets with a closing definition: 5 WIN (4 horse, 1 greyhound), 3 PLACE.
RECORDED_FILES = (
    "1.127236622.bz2",
    "1.185781277.bz2",
    "1-206064380.bz2",
    "BASIC-1.132153978",
    "1.197931750",
    "SELF-1.181223995",
    "1.205822330.bz2",
    "1.197931751",
)
SP_TRADED = frozenset({"SP_TRADED"})


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return make_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def recorded(betfair_dir: Path) -> list[RecordedMarket]:
    """The recorded markets; the greyhound ones with their real catalogue."""
    markets = []
    for name in RECORDED_FILES:
        for market in recorded_markets(betfair_dir / name):
            real = betfair_dir / "catalogues" / f"{market.market_id}.json"
            if real.exists():
                catalogue = orjson.loads(real.read_bytes())
                market = RecordedMarket(
                    market.market_id,
                    market.market_type,
                    catalogue,
                    market.open_book,
                    market.settled_book,
                )
            markets.append(market)
    return markets


def closing_runners(market: RecordedMarket) -> dict[int, tuple[str, float | None]]:
    """selection id -> (status, BSP) of the recorded closing market definition."""
    return {
        r["selectionId"]: (r["status"], r["sp"].get("actualSP"))
        for r in market.settled_book["runners"]
    }


@pytest.fixture(scope="module")
def greyhound_catalogues(betfair_dir: Path) -> list[dict[str, Any]]:
    return [
        orjson.loads(path.read_bytes())
        for path in sorted((betfair_dir / "catalogues").glob("*.json"))
    ]


def horse_catalogue(base: dict[str, Any], market_id: str) -> dict[str, Any]:
    """A real catalogue turned into a GB horse race with Betfair-shaped runner metadata."""
    catalogue = copy.deepcopy(base)
    catalogue["marketId"] = market_id
    catalogue["marketName"] = "2m4f Hcap Chs"
    catalogue["eventType"] = {"id": "7", "name": "Horse Racing"}
    catalogue["event"] = {**catalogue["event"], "venue": "Cheltenham", "name": "Chelt 19th Apr"}
    names = ["Kauto Star", "Denman", "Imperial Commander", "Long Run", "Synchronised", "Bobs Worth"]
    for runner, name, fields in zip(catalogue["runners"], names, HORSE_METADATA, strict=True):
        cloth, draw, jockey, trainer, lbs, age, rating, days, form = fields
        runner["runnerName"] = name
        runner["metadata"] = {
            "runnerId": runner["metadata"]["runnerId"],
            "CLOTH_NUMBER": cloth,
            "STALL_DRAW": draw,
            "JOCKEY_NAME": jockey,
            "TRAINER_NAME": trainer,
            "WEIGHT_VALUE": lbs,
            "WEIGHT_UNITS": "pounds",
            "AGE": age,
            "OFFICIAL_RATING": rating,
            "DAYS_SINCE_LAST_RUN": days,
            "FORM": form,
            "SEX_TYPE": "g",
            "WEARING": None,
            "JOCKEY_CLAIM": None,
        }
    return catalogue


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    messages: list[Any] = []
    try:
        deadline = datetime.now(UTC).timestamp() + timeout_s
        while len(messages) < expected and datetime.now(UTC).timestamp() < deadline:
            messages.extend(m for m in consumer.consume(100, timeout=0.5) if m.error() is None)
        messages.extend(m for m in consumer.consume(100, timeout=1.0) if m.error() is None)
    finally:
        consumer.close()
    return messages


def api_client(api: BetfairApiServer) -> APIClient:
    """A betting API client logged in (certlogin) against `api`."""
    settings = api.settings()
    return make_api_client(settings, BetfairEndpoints.from_settings(settings))


def racecards_env(
    api: BetfairApiServer, bootstrap: str, topic: str, dead_letters: str
) -> dict[str, str]:
    """Environment of a `velo racecards` subprocess against `api` and the services Kafka."""
    return {
        **api.client_env(),
        "KAFKA_BOOTSTRAP": bootstrap,
        "VELO_TOPIC_RACECARDS": topic,
        "VELO_TOPIC_DEAD_LETTERS": dead_letters,
    }


# --------------------------------------------------------------------------------------------
# mapping (no services)
# --------------------------------------------------------------------------------------------


def test_real_greyhound_catalogue_becomes_a_racecard(
    greyhound_catalogues: list[dict[str, Any]],
) -> None:
    raw = project_catalogue(greyhound_catalogues[0], FULL)
    card = racecard_from_catalogue(raw)
    assert card.market_id == "1.197931750" and card.source == "betfair"
    assert card.venue == "Sheffield" and card.meeting_date == date(2022, 4, 19)
    assert card.start_time == datetime(2022, 4, 19, 18, 26, tzinfo=UTC)
    assert card.race_id == "betfair-31389771-20220419T1826Z"
    assert card.distance_m is None  # 280 m greyhound race: distances are for horse racing
    assert [(r.saddle_cloth, r.horse_name) for r in card.runners][:2] == [
        (1, "Paradise Mission"),
        (2, "Sandwood Jet"),
    ]
    assert {r.selection_id for r in card.runners} == {
        r["selectionId"] for r in greyhound_catalogues[0]["runners"]
    }
    assert parse_event(orjson.dumps(card.model_dump(mode="json"))) == card


def test_horse_metadata_is_mapped(greyhound_catalogues: list[dict[str, Any]]) -> None:
    card = racecard_from_catalogue(horse_catalogue(greyhound_catalogues[0], "1.900000001"))
    assert card.distance_m == 4023  # 2m4f
    first, last = card.runners[0], card.runners[-1]
    assert (first.horse_name, first.saddle_cloth, first.draw) == ("Kauto Star", 1, 4)
    assert (first.jockey, first.trainer) == ("R Johnson", "P Hobbs")
    assert (first.weight_carried_lbs, first.age, first.official_rating) == (161, 7, 128)
    assert (first.days_since_last_run, first.form, first.sex) == (21, "1-2341", "g")
    assert (last.official_rating, last.form, last.gear) == (None, None, None)  # "None" / null


@pytest.mark.parametrize(
    ("name", "metres"),
    [
        ("R7 1600m Grp1", 1600),
        ("2m4f Hcap Chs", 4023),
        ("1m2f110y Hcap", 2112),
        ("5f Mdn Stks", 1006),
        ("3m Nov Hrd", 4828),
        ("To Be Placed", None),
        ("R3 Hcap", None),
    ],
)
def test_distance_from_market_name(name: str, metres: int | None) -> None:
    assert distance_from_name(name) == metres


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("AGE", "three", "AGE 'three' is not a whole number"),
        ("WEIGHT_VALUE", "heavy", "WEIGHT_VALUE 'heavy' is not a number"),
        ("WEIGHT_UNITS", "stones", "unknown WEIGHT_UNITS"),
        ("STALL_DRAW", "1", "duplicate draw: 1"),
        ("AGE", "40", "age"),
    ],
)
def test_bad_metadata_gives_a_reason(
    greyhound_catalogues: list[dict[str, Any]], field: str, value: str, reason: str
) -> None:
    catalogue = horse_catalogue(greyhound_catalogues[0], "1.900000002")
    catalogue["runners"][0]["metadata"][field] = value
    with pytest.raises(EventValidationError) as error:
        racecard_from_catalogue(catalogue)
    assert reason in error.value.reason


def test_catalogue_without_runners_or_start_time_is_rejected(
    greyhound_catalogues: list[dict[str, Any]],
) -> None:
    without_runners = project_catalogue(greyhound_catalogues[0], ["EVENT", "MARKET_START_TIME"])
    with pytest.raises(EventValidationError, match="runners"):
        racecard_from_catalogue(without_runners)
    without_time = project_catalogue(greyhound_catalogues[0], ["EVENT", "RUNNER_DESCRIPTION"])
    without_time.pop("description", None)
    with pytest.raises(EventValidationError, match="marketStartTime"):
        racecard_from_catalogue(without_time)


# --------------------------------------------------------------------------------------------
# integration: API → racecards → Kafka
# --------------------------------------------------------------------------------------------


@pytest.fixture
def api(tls: TlsMaterial, greyhound_catalogues: list[dict[str, Any]]) -> Iterator[BetfairApiServer]:
    bad = horse_catalogue(greyhound_catalogues[0], "1.900000099")
    bad["runners"][2]["metadata"]["AGE"] = "three"
    catalogues = [
        horse_catalogue(greyhound_catalogues[0], "1.900000001"),
        *greyhound_catalogues,
        bad,
    ]
    with BetfairApiServer(
        tls, username=USERNAME, password=PASSWORD, app_key=APP_KEY, catalogues=catalogues
    ) as server:
        yield server


def test_velo_racecards_publishes_cards_and_dead_letters(
    tls: TlsMaterial,
    api: BetfairApiServer,
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
) -> None:
    topic, dead_letters = kafka_topic(partitions=2), kafka_topic(partitions=1)
    env = racecards_env(api, kafka_bootstrap, topic, dead_letters)
    command = [sys.executable, "-m", "cli.main", "racecards", "--once", "--hours-ahead", "0"]
    command += ["--event-type-ids", "7,4339"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    metrics = orjson.loads(done.stdout.splitlines()[-1])
    assert metrics["published"] == 3 and metrics["dead_letters"] == 1
    assert metrics["delivered"] == 4 and metrics["delivery_failures"] == 0

    cards = {
        m.key().decode(): parse_event(m.value()) for m in consume_all(kafka_bootstrap, topic, 3)
    }
    assert sorted(cards) == ["1.197931750", "1.197931751", "1.900000001"]
    horse = cards["1.900000001"]
    assert isinstance(horse, Racecard) and horse.venue == "Cheltenham"
    assert [r.jockey for r in horse.runners][:2] == ["R Johnson", "H Cobden"]

    [dead] = consume_all(kafka_bootstrap, dead_letters, 1)
    record = orjson.loads(dead.value())
    assert dead.key() == b"1.900000099" and record["source"] == "racecards"
    assert "AGE 'three' is not a whole number" in record["reason"]
    assert record["raw"]["marketId"] == "1.900000099"

    # The betting API was asked the way Betfair's weight limits require: ids, then details.
    methods = [method for method, _ in api.requests if method.startswith("SportsAPING")]
    assert len(methods) == 2
    assert api.requests[-1][1]["marketProjection"] == FULL


def test_poller_republishes_only_changes_and_keeps_withdrawn_runners(
    tls: TlsMaterial,
    api: BetfairApiServer,
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
) -> None:
    topic, dead_letters = kafka_topic(partitions=1), kafka_topic(partitions=1)
    client = api_client(api)
    sink = RacecardSink(kafka_bootstrap, topic, dead_letters)
    spec = SubscriptionSpec(market_ids=("1.900000001",))
    poller = CataloguePoller(client, spec, sink, use_certs=True, hours_ahead=0)

    poller.run(interval_s=0.1, once=True)
    poller.run(interval_s=0.1, once=True)  # nothing changed: nothing published
    assert (sink.metrics.published, sink.metrics.unchanged) == (1, 1)

    removed = api.catalogues[0]["runners"].pop(3)  # a non-runner leaves the catalogue
    api.valid_sessions.clear()  # and the session expired meanwhile: log in again
    poller.run(interval_s=0.1, once=True)
    assert sink.metrics.published == 2 and sink.metrics.poll_errors == 1

    cards = [parse_event(m.value()) for m in consume_all(kafka_bootstrap, topic, 2)]
    assert len(cards) == 2
    before, after = cards
    assert isinstance(before, Racecard) and isinstance(after, Racecard)
    assert all(r.status is RunnerStatus.DECLARED for r in before.runners)
    withdrawn = [r for r in after.runners if r.status is RunnerStatus.WITHDRAWN]
    assert [r.selection_id for r in withdrawn] == [removed["selectionId"]]
    assert len(after.runners) == len(before.runners)
    logins = [path for path, _ in api.requests if path == "/api/certlogin"]
    assert len(logins) == 2


# --------------------------------------------------------------------------------------------
# results: settled market book → RaceResult (no services)
# --------------------------------------------------------------------------------------------


def test_settled_win_books_become_results(recorded: list[RecordedMarket]) -> None:
    win = [m for m in recorded if m.market_type == "WIN"]
    assert len(win) == 5
    for market in win:
        card = racecard_from_catalogue(market.catalogue)
        result = result_from_market_book(project_market_book(market.settled_book, SP_TRADED), card)
        assert (result.race_id, result.meeting_date, result.venue) == (
            card.race_id,
            card.meeting_date,
            card.venue,
        )
        assert parse_event(orjson.dumps(result.model_dump(mode="json"))) == result
        expected = closing_runners(market)
        by_id = {r.runner_id: r for r in result.runners}
        selection_of = {r.runner_id: r.selection_id for r in card.runners}
        assert len(by_id) == len(expected)
        for runner_id, runner in by_id.items():
            status, bsp = expected[selection_of.get(runner_id) or int(runner_id)]
            if status == "WINNER":
                assert (runner.status, runner.finish_position) == (FinishStatus.FINISHED, 1)
                assert not runner.dead_heat and runner.win_odds == bsp
            elif status == "LOSER":
                assert runner.status is FinishStatus.UNPLACED
                assert (runner.non_finish_code, runner.finish_position) == (None, None)
                assert runner.win_odds == bsp
            else:
                assert status == "REMOVED" and runner.status is FinishStatus.WITHDRAWN
                assert runner.win_odds is None
    lismore = next(m for m in win if m.market_id == "1.185781277")
    card = racecard_from_catalogue(lismore.catalogue)
    result = result_from_market_book(lismore.settled_book, card)
    winner = next(r for r in result.runners if r.finish_position == 1)
    assert (winner.runner_id, winner.win_odds) == ("40364042", 4.1)
    assert sum(r.status is FinishStatus.WITHDRAWN for r in result.runners) == 3


def test_dead_heat_and_missing_bsp(recorded: list[RecordedMarket]) -> None:
    market = next(m for m in recorded if m.market_id == "1.197931750")
    card = racecard_from_catalogue(market.catalogue)
    book = copy.deepcopy(market.settled_book)
    book["runners"][0]["status"] = "WINNER"  # joins 37947503 on the line
    book["runners"][2]["sp"]["actualSP"] = "NaN"
    del book["runners"][3]["sp"]
    result = result_from_market_book(book, card)
    winners = [r for r in result.runners if r.finish_position == 1]
    assert [r.runner_id for r in winners] == ["44331354", "37947503"]
    assert all(r.dead_heat for r in winners)
    assert result.runners[2].win_odds is None and result.runners[3].win_odds is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda b: b.update(status="OPEN"), "not CLOSED"),
        (lambda b: b.update(runners="none"), "without runners"),
        (lambda b: [r.update(status="LOSER") for r in b["runners"]], "without a winner"),
        (lambda b: b["runners"][2].update(status="ACTIVE"), "status 'ACTIVE'"),
        (lambda b: b["runners"][2].pop("selectionId"), "without a selectionId"),
    ],
)
def test_bad_settled_books_give_a_reason(
    recorded: list[RecordedMarket], change: Callable[[dict], Any], reason: str
) -> None:
    market = next(m for m in recorded if m.market_id == "1.197931750")
    book = copy.deepcopy(market.settled_book)
    change(book)
    with pytest.raises(EventValidationError) as error:
        result_from_market_book(book, racecard_from_catalogue(market.catalogue))
    assert reason in error.value.reason


# --------------------------------------------------------------------------------------------
# results: integration through the API server and real Kafka
# --------------------------------------------------------------------------------------------


def _book_requests(api: BetfairApiServer) -> list[list[str]]:
    return [
        params["marketIds"]
        for method, params in api.requests
        if method == "SportsAPING/v1.0/listMarketBook"
    ]


def _catalogue_requests(api: BetfairApiServer) -> int:
    return sum(1 for method, _ in api.requests if method.endswith("listMarketCatalogue"))


def test_velo_racecards_publishes_each_settled_result_once(
    tls: TlsMaterial,
    recorded: list[RecordedMarket],
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
) -> None:
    """Cards while the markets are open; once they settle, one result per WIN market, however
    many polls follow. A void race is a dead letter; PLACE markets give no result."""
    greyhound = next(m for m in recorded if m.market_id == "1.197931750")
    void_catalogue = {**copy.deepcopy(greyhound.catalogue), "marketId": "1.900000003"}
    void_book = copy.deepcopy(greyhound.settled_book) | {"marketId": "1.900000003"}
    for runner in void_book["runners"]:
        runner["status"] = "LOSER"
    catalogues = [m.catalogue for m in recorded] + [void_catalogue]
    open_books = {m.market_id: m.open_book for m in recorded}
    open_books["1.900000003"] = greyhound.open_book | {"marketId": "1.900000003"}
    settled = {m.market_id: m.settled_book for m in recorded} | {"1.900000003": void_book}
    topic, dead_letters = kafka_topic(partitions=3), kafka_topic(partitions=1)
    with BetfairApiServer(
        tls,
        username=USERNAME,
        password=PASSWORD,
        app_key=APP_KEY,
        catalogues=catalogues,
        market_books=open_books,
    ) as api:
        env = racecards_env(api, kafka_bootstrap, topic, dead_letters)
        command = [sys.executable, "-m", "cli.main", "racecards", "--interval", "0.2"]
        command += ["--hours-ahead", "0", "--event-type-ids", "7,4339", "--countries", ""]
        command += ["--market-types", ""]
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            cards = consume_all(kafka_bootstrap, topic, len(catalogues))
            assert len(cards) == len(catalogues)
            assert _book_requests(api) == []  # every market still listed: nothing to ask
            api.market_books = settled  # the races are run and settled
            deadline = time.monotonic() + 60
            while not _book_requests(api) and time.monotonic() < deadline:
                time.sleep(0.1)
            polls_after = _catalogue_requests(api)
            while _catalogue_requests(api) < polls_after + 6 and time.monotonic() < deadline:
                time.sleep(0.1)  # a few more polls: nothing more may be published
        finally:
            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    metrics = orjson.loads(stdout.splitlines()[-1])
    win = [m for m in recorded if m.market_type == "WIN"]
    assert metrics["results"] == len(win) == 5
    assert metrics["result_dead_letters"] == 1 and metrics["dead_letters"] == 1
    assert metrics["published"] == len(catalogues) + len(win)
    assert metrics["results_waiting"] == 0 and metrics["delivery_failures"] == 0

    # Only the WIN markets that left the catalogue were asked for, each settled one once.
    asked = [m for request in _book_requests(api) for m in request]
    assert sorted(asked) == sorted([m.market_id for m in win] + ["1.900000003"])

    events: dict[str, list[Any]] = {}
    for message in consume_all(kafka_bootstrap, topic, metrics["published"]):
        events.setdefault(message.key().decode(), []).append(parse_event(message.value()))
    assert sum(len(v) for v in events.values()) == metrics["published"]
    for market in recorded:
        kinds = [type(e) for e in events[market.market_id]]
        if market.market_type == "WIN":
            assert kinds == [Racecard, RaceResult], market.market_id
            card, result = events[market.market_id]
            assert result.race_id == card.race_id
            selection_of = {r.runner_id: r.selection_id for r in card.runners}
            expected = closing_runners(market)
            got = {
                selection_of.get(r.runner_id) or int(r.runner_id): (r.finish_position, r.win_odds)
                for r in result.runners
            }
            assert got == {
                selection: (1 if status == "WINNER" else None, bsp)
                for selection, (status, bsp) in expected.items()
            }
        else:
            assert kinds == [Racecard], market.market_id
    assert [type(e) for e in events["1.900000003"]] == [Racecard]

    [dead] = consume_all(kafka_bootstrap, dead_letters, 1)
    record = orjson.loads(dead.value())
    assert dead.key() == b"1.900000003" and record["source"] == "racecards"
    assert record["reason"] == "result: closed without a winner (void or abandoned race?)"
    assert record["raw"]["marketId"] == "1.900000003"


def test_poller_settles_markets_left_out_of_a_mixed_answer(
    tls: TlsMaterial,
    recorded: list[RecordedMarket],
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
) -> None:
    """Betfair answers only the OPEN markets of a request mixing OPEN and CLOSED ones, and
    limits a request's weight: the poller asks in chunks and asks again for the rest."""
    greyhound = next(m for m in recorded if m.market_id == "1.197931750")
    ids = [f"1.90000{n:04d}" for n in range(BOOKS_PER_REQUEST + 2)]
    catalogues = [{**copy.deepcopy(greyhound.catalogue), "marketId": m} for m in ids]
    with BetfairApiServer(
        tls,
        username=USERNAME,
        password=PASSWORD,
        app_key=APP_KEY,
        catalogues=catalogues,
        market_books={m: greyhound.open_book | {"marketId": m} for m in ids},
    ) as api:
        client = api_client(api)
        topic, dead_letters = kafka_topic(partitions=2), kafka_topic(partitions=1)
        sink = RacecardSink(kafka_bootstrap, topic, dead_letters)
        spec = SubscriptionSpec(event_type_ids=("4339",), country_codes=(), market_types=())
        poller = CataloguePoller(client, spec, sink, use_certs=True, hours_ahead=0)
        poller.run(interval_s=0.1, once=True)
        assert sink.metrics.published == len(ids)

        # All settle but the last one, which leaves the catalogue still OPEN (a late race).
        late = ids[-1]
        api.market_books = {m: greyhound.settled_book | {"marketId": m} for m in ids[:-1]}
        api.market_books[late] = greyhound.open_book | {"marketId": late}
        api.catalogues = [c for c in catalogues if c["marketId"] != late]
        poller.run(interval_s=0.1, once=True)
        assert sink.metrics.results == len(ids) - 1
        assert sink.metrics.results_waiting == 1
        first_pass, second_pass = _book_requests(api)[:2], _book_requests(api)[2:]
        assert [len(r) for r in first_pass] == [BOOKS_PER_REQUEST, 2]
        assert second_pass == [[ids[-2]]]  # left out of the answer that held the OPEN one

        poller.run(interval_s=0.1, once=True)  # still running: asked again, alone
        assert _book_requests(api)[-1] == [late] and sink.metrics.results == len(ids) - 1
        api.market_books[late] = greyhound.settled_book | {"marketId": late}
        poller.run(interval_s=0.1, once=True)
        poller.run(interval_s=0.1, once=True)  # nothing left to ask for
        assert sink.metrics.results == len(ids) and sink.metrics.results_waiting == 0
        assert _book_requests(api)[-1] == [late] and len(_book_requests(api)) == 5
    results = [parse_event(m.value()) for m in consume_all(kafka_bootstrap, topic, 2 * len(ids))]
    assert sum(isinstance(e, RaceResult) for e in results) == len(ids)


def test_poller_gives_up_on_markets_betfair_never_settles(
    tls: TlsMaterial,
    recorded: list[RecordedMarket],
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
) -> None:
    greyhound = next(m for m in recorded if m.market_id == "1.197931750")
    with BetfairApiServer(
        tls,
        username=USERNAME,
        password=PASSWORD,
        app_key=APP_KEY,
        catalogues=[greyhound.catalogue],
        market_books={},  # listMarketBook does not know it (e.g. purged after 90 days)
    ) as api:
        client = api_client(api)
        sink = RacecardSink(kafka_bootstrap, kafka_topic(partitions=1), kafka_topic(partitions=1))
        spec = SubscriptionSpec(event_type_ids=("4339",), market_ids=(greyhound.market_id,))
        poller = CataloguePoller(
            client, spec, sink, use_certs=True, hours_ahead=0, result_wait=timedelta(seconds=0.5)
        )
        poller.run(interval_s=0.1, once=True)
        api.catalogues = []
        poller.run(interval_s=0.1, once=True)
        assert (sink.metrics.results_waiting, sink.metrics.results_given_up) == (1, 0)
        time.sleep(0.6)
        poller.run(interval_s=0.1, once=True)
        assert (sink.metrics.results_waiting, sink.metrics.results_given_up) == (0, 1)
        poller.run(interval_s=0.1, once=True)
        assert len(_book_requests(api)) == 2 and sink.metrics.results == 0
