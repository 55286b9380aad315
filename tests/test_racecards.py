"""`velo racecards`: Betfair market catalogue → racecard events and dead letters on real Kafka.

The betting and identity APIs are the local HTTPS servers in `tests.betfair_stream_server`,
answering with the real catalogue JSON from the shared data (greyhounds: the only catalogues
there). Horse-racing runner metadata is added to a copy of a real catalogue in Betfair's
documented RUNNER_METADATA shape (every value a string), since no recorded horse catalogue is
available.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer

from connectors.betfair_catalogue import (
    CataloguePoller,
    RacecardSink,
    distance_from_name,
    racecard_from_catalogue,
)
from connectors.betfair_live import BetfairEndpoints, SubscriptionSpec, make_api_client
from connectors.settings import Settings
from operators.racing_events import EventValidationError, Racecard, RunnerStatus, parse_event
from tests.betfair_stream_server import (
    BetfairApiServer,
    TlsMaterial,
    make_tls_material,
    project_catalogue,
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


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return make_tls_material(tmp_path_factory.mktemp("tls"))


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
    env = {
        **os.environ,
        "BETFAIR_USERNAME": USERNAME,
        "BETFAIR_PASSWORD": PASSWORD,
        "BETFAIR_APP_KEY": APP_KEY,
        "BETFAIR_CERTS_DIR": str(tls.certs_dir),
        "BETFAIR_IDENTITY_URL": api.identity_url,
        "BETFAIR_API_URL": api.api_url,
        "BETFAIR_CA_FILE": str(tls.ca_file),
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "VELO_TOPIC_RACECARDS": topic,
        "VELO_TOPIC_DEAD_LETTERS": dead_letters,
    }
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
    settings = Settings(
        betfair_username=USERNAME,
        betfair_password=PASSWORD,
        betfair_app_key=APP_KEY,
        betfair_certs_dir=tls.certs_dir,
        betfair_identity_url=api.identity_url,
        betfair_api_url=api.api_url,
        betfair_ca_file=tls.ca_file,
    )
    client = make_api_client(settings, BetfairEndpoints.from_settings(settings))
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
