"""Feature machinery on small hand-made races (no shared data needed)."""

from __future__ import annotations

import math
from datetime import date, timedelta

import polars as pl
import pytest

from connectors.hkjc import HKJCData, LoadReport
from models.features import FEATURE_COLUMNS, FEATURE_GROUPS, FeatureState, features_for_race
from models.features.frame import entries_from_events
from models.features.states import HALF_LIVES_DAYS, as_of_join, cumulative_state, tau
from operators.racing_events import Racecard, RaceResult

HORSES = ("A001", "A002", "A003", "A004")


Race = tuple[Racecard, RaceResult]


def race(race_id: str, day: date, order: tuple[str, ...], jockeys: tuple[str, ...]) -> Race:
    """A 4-runner Sha Tin 1200 m handicap whose result is `order` (first to last)."""
    card = Racecard(
        source="test", race_id=race_id, meeting_date=day, venue="ST", race_number=1,
        distance_m=1200, going="G", surface="turf", course="A", race_class="4",
        rating_band_high=60,
        runners=[
            {"runner_id": h, "draw": i + 1, "jockey": j, "trainer": "T1",
             "weight_carried_lbs": 126.0 - i, "body_weight_lbs": 1100.0,
             "official_rating": 60 - i, "gear": "B"}
            for i, (h, j) in enumerate(zip(HORSES, jockeys, strict=True))
        ],
    )  # fmt: skip
    result = RaceResult(
        source="test", race_id=race_id, meeting_date=day, venue="ST", race_number=1,
        winning_time_s=70.0,
        runners=[
            {"runner_id": h, "status": "finished", "finish_position": pos + 1,
             "beaten_lengths": float(pos), "finish_time_s": 70.0 + 0.16 * pos,
             "running_positions": [pos + 1, pos + 1, pos + 1], "win_odds": 4.0}
            for pos, h in enumerate(order)
        ],
    )  # fmt: skip
    return card, result


def state_from(races: list[Race]) -> FeatureState:
    entries = pl.concat([entries_from_events(c, r) for c, r in races], how="vertical_relaxed")
    empty_form = pl.DataFrame(schema={"runner_id": pl.String, "race_date": pl.Date})
    data = HKJCData(entries=entries, form_runs=empty_form, report=LoadReport())
    return FeatureState.from_hkjc(data)


def test_feature_groups_cover_the_issue() -> None:
    assert set(FEATURE_GROUPS) == {
        "form_class", "trainer_intention", "sectional_speed", "bias_positioning", "trip",
    }  # fmt: skip
    assert len(FEATURE_COLUMNS) >= 21 and len(set(FEATURE_COLUMNS)) == len(FEATURE_COLUMNS)
    assert all(len(names) >= 4 for names in FEATURE_GROUPS.values())


def test_decayed_sums_match_brute_force() -> None:
    days = [date(2020, 1, 1), date(2020, 1, 1), date(2020, 3, 1), date(2021, 6, 30)]
    rows = pl.DataFrame({"who": ["x"] * 4, "race_date": days, "won": [1.0, 0.0, 1.0, 1.0]})
    state = cumulative_state(rows, pl.col("who"), sums={}, decayed={"wins": pl.col("won")})
    for row in state.iter_rows(named=True):
        for label, half_life in HALF_LIVES_DAYS.items():
            expected = sum(
                w * math.exp(-(row["as_of"] - d).days / tau(half_life))
                for d, w in zip(days, rows["won"], strict=True)
                if d <= row["as_of"]
            )
            assert row[f"wins_{label}"] == pytest.approx(expected, rel=1e-12)
    assert state.height == 3  # one row per day


def test_as_of_join_never_sees_the_same_day() -> None:
    state = pl.DataFrame({"key": ["x", "x"], "as_of": [date(2020, 1, 1), date(2020, 1, 5)],
                          "v": [1.0, 2.0]})  # fmt: skip
    frame = pl.DataFrame({"k": ["x", "x", "x", "y"],
                          "race_date": [date(2020, 1, 5), date(2020, 1, 6), date(2020, 1, 1),
                                        date(2020, 1, 9)]})  # fmt: skip
    joined = as_of_join(frame, state, "k", "s_")
    assert joined["s_v"].to_list() == [1.0, 2.0, None, None]


def test_features_read_only_earlier_days() -> None:
    day1, day2 = date(2024, 1, 1), date(2024, 1, 8)
    jockeys = ("J1", "J2", "J3", "J4")
    first = race("r1", day1, ("A004", "A003", "A002", "A001"), jockeys)
    same_day = race("r2", day2, ("A001", "A002", "A003", "A004"), jockeys)
    later = race("r3", day2, HORSES, jockeys)
    later = (later[0].model_copy(update={"race_number": 2}), later[1])
    state = state_from([first])
    before = features_for_race(state, same_day[0]).sort("runner_id")
    assert before["last_finish_pct"].to_list() == [1.0, 2 / 3, 1 / 3, 0.0]
    assert before["no_previous_run"].to_list() == [0.0] * 4
    assert before["days_since_last_run_log"].to_list() == [math.log1p(7)] * 4
    # J4 rode the day-1 winner: the best jockey record in the race.
    assert before["jockey_win_rate_hl365"].arg_max() == 3

    # After race r2's result, a later race on the same day still sees only day-1 results.
    state = state.apply_result(*same_day)
    after = features_for_race(state, later[0]).sort("runner_id")
    assert after.select(FEATURE_COLUMNS).equals(before.select(FEATURE_COLUMNS))
    # ...and a race the next week sees both.
    next_week = race("r4", day2 + timedelta(days=7), HORSES, jockeys)
    week = features_for_race(state, next_week[0]).sort("runner_id")
    assert week["last_finish_pct"].to_list() == [0.0, 1 / 3, 2 / 3, 1.0]
    assert week["career_runs_log"].to_list() == [math.log1p(2)] * 4


def test_debutants_get_neutral_values_and_an_indicator() -> None:
    state = state_from([race("r1", date(2024, 1, 1), HORSES, ("J1", "J2", "J3", "J4"))])
    newcomer = race("r2", date(2024, 2, 1), ("B1", "B2", "B3", "B4"), ("J1", "J2", "J3", "J4"))
    card = newcomer[0].model_copy(
        update={"runners": [r.model_copy(update={"runner_id": f"B{i + 1}"})
                            for i, r in enumerate(newcomer[0].runners)]}
    )  # fmt: skip
    features = features_for_race(state, card)
    assert features["no_previous_run"].to_list() == [1.0] * 4
    assert features["last_finish_pct"].to_list() == [0.5] * 4
    assert features.select(pl.all_horizontal(pl.col(FEATURE_COLUMNS).is_finite())).to_series().all()


def test_every_feature_declares_its_coverage() -> None:
    from models.features.frame import GROUP_MODULES

    for group, module in GROUP_MODULES.items():
        assert list(module.COVERAGE) == FEATURE_GROUPS[group], group


def test_draw_and_weight_interactions() -> None:
    """A wide draw counts by field size; a weight edge by the distance (1200 m here)."""
    state = state_from([race("r1", date(2024, 1, 1), HORSES, ("J1", "J2", "J3", "J4"))])
    card = race("r2", date(2024, 2, 1), HORSES, ("J1", "J2", "J3", "J4"))[0]
    features = features_for_race(state, card).sort("runner_id")
    draw_pct = [0.0, 1 / 3, 2 / 3, 1.0]
    assert features["draw_pct"].to_list() == pytest.approx(draw_pct)
    assert features["draw_field"].to_list() == pytest.approx([d * 4 / 14 for d in draw_pct])
    # Weights 126, 125, 124, 123 lbs: 1.5, 0.5, -0.5, -1.5 lbs against the mean, times 1.2 km.
    weight_rel = [1.5, 0.5, -0.5, -1.5]
    assert features["weight_rel_distance"].to_list() == pytest.approx([w * 1.2 for w in weight_rel])
