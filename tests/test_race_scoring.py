"""The model inside the market dataflow: racecards + prices → predictions (DB and Kafka).

A small model is trained on synthetic races whose feature names are real feature columns, so
simulated racecards produce its inputs. The flow runs over a simulated day and its racecards;
every stored prediction is checked against the market rows it came from and against
`OnnxScorer.score_with_fundamental` on the same inputs.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections import defaultdict
from datetime import date, datetime
from pathlib import Path

import numpy as np
import orjson
import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from polars.testing import assert_frame_equal

from cli import replay as replay_cli
from cli.publish import publish_files
from cli.replay import replay
from connectors.feature_store import FeatureStore, OfflineStore, OnlineStore
from connectors.postgres_sink import dump_table
from connectors.racecards_sample import racecard_event
from connectors.simulator import simulate_day, simulate_races, write_stream
from models.dataset import race_set_from_frame
from models.features import FEATURE_COLUMNS, FeatureState, features_for_race
from models.live_scoring import INVALID_EVENT, NOT_SCORABLE, LiveRaceScorer, live_history
from models.pipeline import train_and_save
from models.scoring import OnnxScorer
from models.synthetic import synthetic_training_frame
from operators.market_processor import MarketProcessor, SinkBatch
from operators.race_scoring import RaceScoringState, definition_statuses
from operators.racing_events import dump_event
from operators.records import MarketRow, RunnerRow
from operators.stream_messages import route_lines
from tests.worker_process import PROJECT_ROOT, finish_worker, start_worker

SEED = 5
MARKETS = 4
MESSAGES_PER_MARKET = 1500
EVERY_SECONDS = 10.0
WEIGHTS = {
    "official_rating_rel": 0.5,
    "rating_imputed": -0.2,
    "draw_pct": -0.3,
    "weight_carried_rel": 0.2,
}
BAD_RACECARD_LINES = [
    b"{not json",
    b'{"schema_version": 1, "event_type": "racecard", "race_id": "x"}',
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert set(WEIGHTS) <= set(FEATURE_COLUMNS)
    frame = synthetic_training_frame(WEIGHTS, n_races=1200, seed=3)
    version = train_and_save(
        race_set_from_frame(frame, tuple(WEIGHTS)),
        date(2016, 9, 30),
        date(2017, 3, 31),
        None,
        tmp_path_factory.mktemp("registry"),
        "synthetic",
        {"form_class": tuple(WEIGHTS)},
        l2_grid=(0.01,),
        variants=("linear",),
    )
    return version.path


@pytest.fixture(scope="module")
def scorer(model_dir: Path) -> LiveRaceScorer:
    return LiveRaceScorer(model_dir, FeatureState.empty())


@pytest.fixture(scope="module")
def races():
    return simulate_races(SEED, MARKETS)


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory, races) -> tuple[Path, Path]:
    """The simulated stream, and its racecards (plus bad lines and a result-less HKJC-like
    card without a market id, which is skipped)."""
    folder = tmp_path_factory.mktemp("day")
    stream = folder / "day.jsonl.gz"
    write_stream(stream, seed=SEED, markets=MARKETS, messages_per_market=MESSAGES_PER_MARKET)
    no_selection_ids = racecard_event(races[0].racecard).model_copy(
        update={"race_id": "no-selection-ids", "market_id": "1.999"}
    )
    no_selection_ids = no_selection_ids.model_copy(
        update={
            "runners": [
                r.model_copy(update={"selection_id": None}) for r in no_selection_ids.runners
            ]
        }
    )
    no_market = racecard_event(races[1].racecard).model_copy(update={"market_id": None})
    lines = [dump_event(racecard_event(race.racecard)) for race in races]
    lines[1:1] = [*BAD_RACECARD_LINES, dump_event(no_selection_ids), dump_event(no_market)]
    cards = folder / "racecards.jsonl"
    cards.write_bytes(b"\n".join(lines) + b"\n")
    return stream, cards


# -- features without history ------------------------------------------------------------------


def test_empty_history_gives_neutral_fills(races) -> None:
    card = racecard_event(races[0].racecard)
    frame = features_for_race(FeatureState.empty(), card)
    assert frame.height == len(card.runners)
    assert frame["no_previous_run"].to_list() == [1.0] * frame.height
    assert frame["jockey_win_rate_hl365"].n_unique() == 1  # everyone at the prior
    ratings = {r.runner_id: r.official_rating for r in card.runners if r.official_rating}
    by_runner = dict(zip(frame["runner_id"], frame["official_rating"], strict=True))
    assert all(by_runner[runner] == rating for runner, rating in ratings.items())
    weights = dict(zip(frame["runner_id"], frame["weight_carried"], strict=True))
    assert weights == {r.runner_id: r.weight_carried_lbs for r in card.runners}


def test_live_history_uses_the_online_store_once_materialised(
    redis_url: str, redis_prefix: str, tmp_path: Path, races
) -> None:
    namespace = f"{redis_prefix}fs"
    history, note = live_history(redis_url, namespace)
    assert isinstance(history, FeatureState) and "not materialised" in note
    store = FeatureStore(OfflineStore(tmp_path / "fs"), OnlineStore.connect(redis_url, namespace))
    store.build_offline(FeatureState.empty())
    store.materialize(date(2025, 1, 1))
    history, note = live_history(redis_url, namespace)
    assert isinstance(history, OnlineStore) and "online feature store" in note
    card = racecard_event(races[0].racecard)
    # Same values (to float rounding: the online read joins differently typed frames).
    assert_frame_equal(
        features_for_race(history, card), features_for_race(FeatureState.empty(), card)
    )
    history.backend.close()
    store.close()


# -- the state machine -------------------------------------------------------------------------


def _market_batches(market_id: str, messages_per_batch: int) -> list[SinkBatch]:
    """The market step's output for one simulated market, cut into batches of messages."""
    lines = [
        ("sim", i, line)
        for i, line in enumerate(
            simulate_day(SEED, MARKETS, messages_per_market=MESSAGES_PER_MARKET), 1
        )
    ]
    changes = route_lines(lines).by_market[market_id]
    processor = MarketProcessor(market_id)
    return [
        processor.process(changes[i : i + messages_per_batch])
        for i in range(0, len(changes), messages_per_batch)
    ]


def _run_state(batches, card, scorer, card_after: int) -> tuple[list, RaceScoringState]:
    state = RaceScoringState(card.market_id)
    out = []
    for i, batch in enumerate(batches):
        if i == card_after:
            out += state.observe_racecard(card, scorer)
        out += state.observe_batch(batch, scorer, EVERY_SECONDS)
    if card_after >= len(batches):
        out += state.observe_racecard(card, scorer)
    return out + state.finish(scorer, EVERY_SECONDS), state


def test_predictions_do_not_depend_on_batching_or_when_the_racecard_arrives(
    races, scorer: LiveRaceScorer
) -> None:
    race = next(r for r in races if r.non_runner is not None)
    card = scorer.racecard_features(racecard_event(race.racecard))
    fine = _market_batches(card.market_id, 1)
    coarse = _market_batches(card.market_id, 250)
    expected, state = _run_state(coarse, card, scorer, card_after=0)
    assert state.closed and expected
    # Racecard first / after a fifth of the messages / after a third, any batch size.
    assert _run_state(fine, card, scorer, card_after=len(fine) // 5)[0] == expected
    assert _run_state(coarse, card, scorer, card_after=len(coarse) // 3)[0] == expected
    # The non-runner is priced until its removal and never after.
    times = defaultdict(set)
    for prediction in expected:
        times[prediction.publish_time].add(prediction.selection_id)
    sizes = [len(times[t]) for t in sorted(times)]
    assert sizes[0] == len(race.racecard.runners) and sizes[-1] == len(race.racecard.runners) - 1
    assert race.non_runner not in times[max(times)]


def test_runner_missing_from_the_racecard_is_counted_not_scored(
    races, scorer: LiveRaceScorer
) -> None:
    race = next(r for r in races if r.non_runner is None)
    missing = race.racecard.runners[0].selection_id
    card = scorer.racecard_features(racecard_event(race.racecard, withdrawn={missing}))
    predictions, state = _run_state(_market_batches(card.market_id, 250), card, scorer, 0)
    assert predictions == []
    assert state.skipped["runner_not_on_racecard"] > 0


def test_definition_statuses_follow_their_market_rows() -> None:
    t1, t2 = (
        datetime.fromisoformat("2025-06-07T11:00:00+00:00"),
        datetime.fromisoformat("2025-06-07T11:05:00+00:00"),
    )

    def market(at: datetime) -> MarketRow:
        return MarketRow(
            "1.1", None, None, None, None, None, None, None, None, 1, "OPEN", False, 0, 1, True, at
        )

    def runner(selection_id: int, status: str) -> RunnerRow:
        return RunnerRow("1.1", selection_id, 0.0, None, None, status, None, None, None)

    rows = [runner(1, "ACTIVE"), runner(2, "ACTIVE"), runner(1, "ACTIVE"), runner(2, "REMOVED")]
    assert definition_statuses([market(t1), market(t2)], rows) == [
        (t1, {1: "ACTIVE", 2: "ACTIVE"}),
        (t2, {1: "ACTIVE", 2: "REMOVED"}),
    ]


# -- the dataflow into PostgreSQL --------------------------------------------------------------


def _predictions(url: str) -> list[tuple]:
    return dump_table(url, "predictions")


def test_flow_scores_every_market_before_the_off(
    any_database: str, day: tuple[Path, Path], scorer: LiveRaceScorer, model_dir: Path, races
) -> None:
    stream, cards = day
    summary = replay([stream], any_database, racecards=cards, scorer=scorer)
    rows = _predictions(any_database)
    assert summary.rows["predictions"] == len(rows) > 0
    by_moment: dict[tuple[str, datetime], list[tuple]] = defaultdict(list)
    for row in rows:
        by_moment[(row[0], row[2])].append(row)
    assert {market for market, _ in by_moment} == {r.racecard.market_id for r in races}
    assert {row[3] for row in rows} == {scorer.version}

    # Sum to 1; equal to the ONNX scorer on the stored market probabilities and the card.
    reference = OnnxScorer(model_dir)
    features = {
        r.racecard.market_id: features_for_race(FeatureState.empty(), racecard_event(r.racecard))
        for r in races
    }
    for (market_id, _), group in by_moment.items():
        group.sort(key=lambda row: row[1])
        assert sum(row[6] for row in group) == pytest.approx(1.0, abs=1e-5)
        assert sum(row[4] for row in group) == pytest.approx(1.0, abs=1e-5)
        frame = features[market_id]
        index = {int(rid): i for i, rid in enumerate(frame["runner_id"])}
        x = frame.select(reference.feature_names).to_numpy()[[index[row[1]] for row in group]]
        win, fundamental = reference.score_with_fundamental(x, [row[4] for row in group])
        np.testing.assert_allclose([row[6] for row in group], win, atol=1e-6)
        np.testing.assert_allclose([row[5] for row in group], fundamental, atol=1e-6)

    with psycopg.connect(any_database) as conn:
        # Only while the market was open and not in play.
        (not_pre_off,) = conn.execute(
            """select count(*) from predictions p
                 left join lateral (
                    select t.status, t.in_play from market_ticks t
                     where t.market_id = p.market_id and t.publish_time <= p.publish_time
                     order by t.publish_time desc, t.seq desc limit 1) m on true
               where m.status is distinct from 'OPEN' or m.in_play"""
        ).fetchone()
        assert not_pre_off == 0
        # At least EVERY_SECONDS of publish time apart.
        (closest,) = conn.execute(
            """select min(gap) from (
                 select extract(epoch from publish_time - lag(publish_time)
                        over (partition by market_id order by publish_time)) as gap
                   from (select distinct market_id, publish_time from predictions) d) g"""
        ).fetchone()
        assert closest >= EVERY_SECONDS
        # The market probability is the runner's latest implied probability, normalised.
        (worst, compared) = conn.execute(
            """select max(abs(market_probability - normalised)), count(normalised) from (
                 select market_probability,
                        implied / sum(implied) over (partition by market_id, publish_time)
                          as normalised
                   from (select p.market_id, p.publish_time, p.market_probability,
                                t.implied_probability as implied
                           from predictions p
                          cross join lateral (
                              select r.implied_probability from runner_ticks r
                               where r.market_id = p.market_id
                                 and r.selection_id = p.selection_id
                                 and r.publish_time <= p.publish_time
                               order by r.publish_time desc, r.seq desc limit 1) t) latest
               ) compared"""
        ).fetchone()
        assert compared == len(rows) and worst < 1e-6
        dead = conn.execute(
            "select position, reason from dead_letters where source = %s order by position",
            (str(cards),),
        ).fetchall()
    # Lines 2-4 are bad; line 5 (a card without a market id) is skipped, not dead-lettered.
    assert [position for position, _ in dead] == [2, 3, 4]
    assert dead[0][1].startswith(INVALID_EVENT) and "not JSON" in dead[0][1]
    assert dead[1][1].startswith(INVALID_EVENT)
    assert dead[2][1].startswith(NOT_SCORABLE) and "selection id" in dead[2][1]

    # Replayed (with two workers this time): the same rows, nothing new.
    replay([stream], any_database, workers=2, racecards=cards, scorer=scorer)
    assert _predictions(any_database) == rows


def _run_replay_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    replay_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_velo_replay_with_racecards_and_model(
    scratch_database_factory, day: tuple[Path, Path], model_dir: Path, monkeypatch, tmp_path: Path
) -> None:
    stream, cards = day
    monkeypatch.delenv("REDIS_URL", raising=False)
    url = scratch_database_factory()
    common = [str(stream), "--db", url, "--no-progress"]
    assert _run_replay_cli(["replay", *common, "--model", str(model_dir)]) == 2
    assert _run_replay_cli(["replay", *common, "--racecards", str(tmp_path / "none.jsonl")]) == 2
    argv = ["replay", *common, "--racecards", str(cards), "--model", str(model_dir)]
    assert _run_replay_cli(argv) == 0
    rows = _predictions(url)
    assert len({row[0] for row in rows}) == MARKETS


# -- the Kafka worker --------------------------------------------------------------------------


def _consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                messages.append(message)
        # Anything beyond the expected count would be a duplicate: look a little longer.
        settle = time.monotonic() + 2.0
        while time.monotonic() < settle:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                messages.append(message)
    finally:
        consumer.close()
    return messages


def _worker_topics_and_env(
    kafka_bootstrap: str, kafka_topic, day: tuple[Path, Path], database_url: str
) -> tuple[dict[str, str], str, str]:
    """The day's lines and racecards published to fresh topics; (worker env, racecards topic,
    predictions topic)."""
    stream, cards = day
    mcm = kafka_topic(partitions=4, prefix="mcm")
    racecards = kafka_topic(partitions=2, prefix="racecards")
    predictions = kafka_topic(partitions=2, prefix="predictions")
    dead_topic = kafka_topic(partitions=1, prefix="dead")
    assert publish_files([stream], mcm, bootstrap=kafka_bootstrap).delivery_failures == 0
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for line in cards.read_bytes().splitlines():
        try:
            market = orjson.loads(line).get("market_id") or "none"
        except orjson.JSONDecodeError:
            market = "bad"
        producer.produce(racecards, key=market.encode(), value=line)
    assert producer.flush(30) == 0

    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("REDIS_URL", "VELO_WORKERS", "VELO_RECOVERY_DIR")
    }
    env |= {
        "PYTHONPATH": str(PROJECT_ROOT),
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "VELO_TOPIC_MCM": mcm,
        "VELO_TOPIC_RACECARDS": racecards,
        "VELO_TOPIC_PREDICTIONS": predictions,
        "VELO_TOPIC_DEAD_LETTERS": dead_topic,
        "DATABASE_URL": database_url,
    }
    return env, racecards, predictions


@pytest.fixture
def reference_database(
    day: tuple[Path, Path], scorer: LiveRaceScorer, scratch_database_factory
) -> str:
    """What `velo replay` stores for the day and its racecards: what every worker run must."""
    stream, cards = day
    url = scratch_database_factory()
    replay([stream], url, racecards=cards, scorer=scorer)
    return url


def test_worker_scores_racecards_from_kafka(
    kafka_bootstrap: str,
    kafka_topic,
    fresh_database: str,
    reference_database: str,
    day: tuple[Path, Path],
    model_dir: Path,
) -> None:
    env, racecards, predictions = _worker_topics_and_env(
        kafka_bootstrap, kafka_topic, day, fresh_database
    )
    args = ("--workers", "2", "--exit-when-idle", "3", "--model", str(model_dir))
    finish_worker(start_worker(env, *args), timeout=600)

    rows = _predictions(fresh_database)
    assert rows and rows == _predictions(reference_database)

    published = _consume(kafka_bootstrap, predictions, len(rows))
    decoded = sorted(
        (
            record["market_id"],
            record["selection_id"],
            datetime.fromisoformat(record["publish_time"]),
            record["model_version"],
            record["market_probability"],
            record["fundamental_probability"],
            record["win_probability"],
        )
        for record in (orjson.loads(m.value()) for m in published)
    )
    assert decoded == rows
    assert all(m.key().decode() == orjson.loads(m.value())["market_id"] for m in published)
    with psycopg.connect(fresh_database) as conn:
        reasons = [
            reason
            for (reason,) in conn.execute(
                "select reason from dead_letters where source like %s", (f"{racecards}[%",)
            )
        ]
    assert len(reasons) == 3 and sum(r.startswith(INVALID_EVENT) for r in reasons) == 2


def test_scoring_worker_killed_and_restarted_stores_the_same_predictions(
    kafka_bootstrap: str,
    kafka_topic,
    fresh_database: str,
    reference_database: str,
    day: tuple[Path, Path],
    model_dir: Path,
    tmp_path: Path,
) -> None:
    """Exactly-once effects with scoring: kill -9 once some predictions are stored, restart
    from the recovery snapshots, and the tables equal an uninterrupted replay's."""
    env, _, _ = _worker_topics_and_env(kafka_bootstrap, kafka_topic, day, fresh_database)
    args = [
        *("--exit-when-idle", "3", "--model", str(model_dir)),
        *("--recovery-dir", str(tmp_path / "recovery"), "--snapshot-interval", "0.2"),
    ]
    expected = _predictions(reference_database)

    first = start_worker(env, *args)
    deadline = time.monotonic() + 180
    stored = 0
    while time.monotonic() < deadline and first.poll() is None:
        try:
            stored = len(_predictions(fresh_database))
        except psycopg.errors.UndefinedTable:
            stored = 0  # the worker has not created the schema yet
        if stored > len(expected) // 4:
            break
        time.sleep(0.05)
    first.kill()
    first.wait(30)
    assert 0 < len(_predictions(fresh_database)) < len(expected), "the kill must land mid-stream"

    finish_worker(start_worker(env, *args), timeout=600)
    assert _predictions(fresh_database) == expected
    for table in ("markets", "runners", "runner_ticks", "market_ticks", "window_aggregates"):
        assert dump_table(fresh_database, table) == dump_table(reference_database, table), table
