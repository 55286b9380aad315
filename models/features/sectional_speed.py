"""SSM (sectional speed): speed figures against course/distance/going par, and pace from
running positions (how early a horse races, how much it gains late)."""

from __future__ import annotations

import polars as pl

from models.features._common import ALWAYS, any_known, fill_from_race, known, mean_of, rel
from models.features.states import EARLY_LEADER_PCT, LAGS

# Typical figure of a runner (seconds per km slower than the winners' par), for fills.
TYPICAL_SPEED_FIG = -0.8
NEUTRAL_EARLY_PCT = 0.5

FEATURES = {
    "speed_fig_last": "Last run's speed figure: s/km faster than par (mean winning time at "
    "venue/surface/distance/going), plus the meeting's track variant and a weight correction.",
    "speed_fig_best_3": "Best speed figure of the last 3 runs.",
    "speed_fig_avg_3": "Mean speed figure of the last 3 runs.",
    "speed_fig_best_3_rel": "speed_fig_best_3 minus the race mean.",
    "early_position_avg_3": "Mean first-call position (0 = leading .. 1 = last), last 3 runs.",
    "early_position_rel": "early_position_avg_3 minus the race mean (pace map position).",
    "late_gain_avg_3": "Mean places gained from the second-last call to the finish / field.",
    "pace_pressure": "Share of rivals that usually lead early (early position <= 0.25).",
    "speed_fig_ewm": "Exponentially weighted speed figure over all runs (α 0.3 per run).",
}


_SPEED = [f"h_speed_fig_{lag}" for lag in range(LAGS)]
_EARLY = [f"h_early_pct_{lag}" for lag in range(LAGS)]
COVERAGE = {
    "speed_fig_last": known(_SPEED[0]),
    "speed_fig_best_3": any_known(*_SPEED),
    "speed_fig_avg_3": any_known(*_SPEED),
    "speed_fig_best_3_rel": any_known(*_SPEED),
    "early_position_avg_3": any_known(*_EARLY),
    "early_position_rel": any_known(*_EARLY),
    "late_gain_avg_3": any_known(*[f"h_late_gain_{lag}" for lag in range(LAGS)]),
    "pace_pressure": ALWAYS,
    "speed_fig_ewm": known("h_speed_fig_ewm"),
}


def compute(frame: pl.DataFrame) -> pl.DataFrame:
    speed = [f"h_speed_fig_{lag}" for lag in range(LAGS)]
    early = [f"h_early_pct_{lag}" for lag in range(LAGS)]
    gains = [f"h_late_gain_{lag}" for lag in range(LAGS)]
    best = pl.max_horizontal([pl.col(c) for c in speed])
    early_avg = fill_from_race(mean_of(early), NEUTRAL_EARLY_PCT)
    frame = frame.with_columns(
        speed_fig_last=fill_from_race(pl.col(speed[0]), TYPICAL_SPEED_FIG),
        speed_fig_best_3=fill_from_race(best, TYPICAL_SPEED_FIG),
        speed_fig_avg_3=fill_from_race(mean_of(speed), TYPICAL_SPEED_FIG),
        early_position_avg_3=early_avg,
        late_gain_avg_3=mean_of(gains).fill_null(0.0),
        speed_fig_ewm=fill_from_race(pl.col("h_speed_fig_ewm"), TYPICAL_SPEED_FIG),
    )
    leaders = (pl.col("early_position_avg_3") <= EARLY_LEADER_PCT).cast(pl.Float64)
    others = (pl.col("field_size").cast(pl.Float64) - 1.0).clip(lower_bound=1.0)
    return frame.with_columns(
        speed_fig_best_3_rel=rel(pl.col("speed_fig_best_3")),
        early_position_rel=rel(pl.col("early_position_avg_3")),
        pace_pressure=(leaders.sum().over("race_id") - leaders) / others,
    )
