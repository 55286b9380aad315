"""Features on the real HKJC data: frame contract, point-in-time property, live == training."""

from __future__ import annotations

import random
import time
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from connectors.hkjc import HKJCData, load_hkjc, race_events
from models.features import (
    FEATURE_COLUMNS,
    FeatureState,
    build_training_frame,
    features_for_race,
    training_frame_from,
)
from operators.racing_events import Racecard, RaceResult, dump_event, parse_event

pytestmark = pytest.mark.data


@pytest.fixture(scope="session")
def hkjc_data(hkjc_dir: Path) -> HKJCData:
    return load_hkjc(hkjc_dir)


@pytest.fixture(scope="session")
def training_frame(hkjc_data: HKJCData) -> pl.DataFrame:
    return training_frame_from(hkjc_data)


def history_before(data: HKJCData, day: date, since: date | None = None) -> HKJCData:
    window = pl.col("race_date") < day
    if since is not None:
        window &= pl.col("race_date") >= since
    return HKJCData(
        entries=data.entries.filter(window),
        form_runs=data.form_runs.filter(window),
        report=data.report,
    )


def test_training_frame_contract(training_frame: pl.DataFrame, hkjc_data: HKJCData) -> None:
    frame = training_frame
    assert frame.height == hkjc_data.report.starters == 95_198
    assert frame["race_id"].n_unique() == 7_821
    assert frame.schema["race_date"] == pl.Date
    assert isinstance(frame.schema["race_start"], pl.Datetime)
    assert all(frame.schema[c] == pl.Float64 for c in FEATURE_COLUMNS)
    features = frame.select(FEATURE_COLUMNS)
    assert features.null_count().sum_horizontal().item() == 0
    assert features.select(pl.all_horizontal(pl.all().is_finite().all())).item()
    assert frame.filter(pl.col("status") == "withdrawn").height == 0
    assert frame.select(pl.struct("race_id", "runner_id").is_unique().all()).item()
    per_race = frame.group_by("race_id").agg(pl.col("won").sum())
    assert per_race["won"].min() == pytest.approx(1.0)
    assert per_race["won"].max() == pytest.approx(1.0)
    ordered = frame.select("race_date", "race_no", "race_id")
    assert ordered.equals(ordered.sort("race_date", "race_no", "race_id"))
    dead_heat_wins = frame.filter((pl.col("won") > 0) & (pl.col("won") < 1))
    assert dead_heat_wins.height == 2 * 16  # 16 dead heats for first, each with two halves


def test_training_frame_cache(hkjc_dir: Path, tmp_path: Path, training_frame: pl.DataFrame) -> None:
    first = build_training_frame(hkjc_dir, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("training_*.parquet"))) == 1
    started = time.perf_counter()
    second = build_training_frame(hkjc_dir, cache_dir=tmp_path)
    assert time.perf_counter() - started < 5.0
    assert_frame_equal(first, second)
    assert_frame_equal(first, training_frame)


def perturbed(entries: pl.DataFrame, race_id: str) -> pl.DataFrame:
    """The same race with its result turned upside down: order, margins, times, odds."""
    target = pl.col("race_id") == race_id
    finished = target & pl.col("finish_position").is_not_null()
    last = pl.col("finish_position").max().over("race_id")
    flipped = pl.when(finished).then(last + 1 - pl.col("finish_position"))
    return entries.with_columns(
        finish_position=pl.coalesce(flipped, pl.col("finish_position")),
        won=pl.when(target).then((flipped == 1).cast(pl.Float64).fill_null(0.0)).otherwise("won"),
        beaten_lengths=pl.when(finished)
        .then(10.0 - pl.col("beaten_lengths").clip(0, 10))
        .otherwise("beaten_lengths"),
        finish_time_s=pl.when(target)
        .then(pl.col("finish_time_s") + 5.0)
        .otherwise("finish_time_s"),
        winning_time_s=pl.when(target)
        .then(pl.col("winning_time_s") - 3.0)
        .otherwise("winning_time_s"),
        running_positions=pl.when(target)
        .then(pl.col("running_positions").list.reverse())
        .otherwise("running_positions"),
        win_odds=pl.when(target).then(pl.col("win_odds") * 3.0).otherwise("win_odds"),
    )


def test_a_result_never_reaches_its_own_or_earlier_races(hkjc_data: HKJCData) -> None:
    day, horizon = date(2023, 3, 5), date(2023, 5, 5)
    window = history_before(hkjc_data, horizon, since=date(2022, 6, 1))
    race_id = window.entries.filter(pl.col("race_date") == day)["race_id"].unique().sort()[2]
    original = training_frame_from(window)
    changed_entries = perturbed(window.entries, race_id)
    changed = training_frame_from(
        HKJCData(entries=changed_entries, form_runs=window.form_runs, report=window.report)
    )
    assert (
        changed.filter(pl.col("race_id") == race_id)["won"].to_list()
        != original.filter(pl.col("race_id") == race_id)["won"].to_list()
    )

    up_to_day = pl.col("race_date") <= day
    assert_frame_equal(
        original.filter(up_to_day).select("race_id", "runner_id", *FEATURE_COLUMNS),
        changed.filter(up_to_day).select("race_id", "runner_id", *FEATURE_COLUMNS),
    )
    later = ~up_to_day
    before = original.filter(later).select(FEATURE_COLUMNS)
    after = changed.filter(later).select(FEATURE_COLUMNS)
    differs = [c for c in FEATURE_COLUMNS if not before[c].equals(after[c])]
    # The result does feed later races: horses' form, jockeys, trainers, draw and pace records.
    assert {"last_finish_pct", "jockey_win_rate_hl365", "draw_bias_win", "speed_fig_last"} <= set(
        differs
    )


def test_live_features_equal_training_features(
    hkjc_data: HKJCData, training_frame: pl.DataFrame
) -> None:
    days = hkjc_data.entries.filter(pl.col("race_date") >= date(2024, 1, 1))["race_date"]
    day = random.Random(4).choice(sorted(days.unique().to_list()))
    state = FeatureState.from_hkjc(history_before(hkjc_data, day))
    events = list(race_events(hkjc_data.entries.filter(pl.col("race_date") == day)))
    assert len(events) >= 8
    for card, result in events:
        live_card = parse_event(dump_event(card))  # as it would arrive from Kafka
        assert isinstance(live_card, Racecard)
        live = features_for_race(state, live_card).sort("runner_id")
        trained = training_frame.filter(pl.col("race_id") == card.race_id).sort("runner_id")
        assert_frame_equal(
            live.select("runner_id", *FEATURE_COLUMNS),
            trained.select("runner_id", *FEATURE_COLUMNS),
            check_exact=False,
            abs_tol=1e-9,
        )
        assert isinstance(result, RaceResult)
        state = state.apply_result(card, result)

    # Folding the day's results in one by one gives the states a full rebuild gives.
    full = FeatureState.from_hkjc(history_before(hkjc_data, day + timedelta(days=1)))
    for name, table in state.states.items():
        assert_frame_equal(
            table.sort("key", "as_of"),
            full.states[name].sort("key", "as_of"),
            check_exact=False,
            rel_tol=1e-12,
            abs_tol=1e-12,
        )
