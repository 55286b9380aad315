"""Form and class: rating, class move, recent finishing positions, margins, freshness."""

from __future__ import annotations

import polars as pl

from models.features._common import (
    ALWAYS,
    BASE_WIN_RATE,
    any_known,
    days_since,
    known,
    mean_of,
    rel,
    shrunk_rate,
)
from models.features.states import LAGS

# Neutral values for a horse with no run in the data (its own indicator says so).
NEUTRAL_FINISH_PCT = 0.5
NEUTRAL_LENGTHS = 6.0
NO_RUN_DAYS = 365.0

FEATURES = {
    "official_rating": "Official rating carried into the race (imputed from weight if missing).",
    "official_rating_rel": "Official rating minus the race mean.",
    "rating_imputed": "1 when the rating was imputed from weight and rivals' ratings.",
    "rating_change": "Rating now minus rating at the last run (0 without a last run).",
    "class_drop": "Class level now minus at the last run (positive = easier race).",
    "no_previous_run": "1 for a horse without any earlier run in the data.",
    "last_finish_pct": "Last finishing position scaled 0 (won) .. 1 (last); DNF counts last.",
    "avg_finish_pct_3": "Mean scaled finishing position over the last 3 runs.",
    "avg_finish_pct_3_rel": "avg_finish_pct_3 minus the race mean.",
    "career_finish_pct": "Mean scaled finishing position over all earlier runs (shrunk to 0.5).",
    "last_beaten_lengths_log": "log(1 + lengths beaten at the last run), capped at 30.",
    "avg_beaten_lengths_log_3": "log(1 + mean lengths beaten over the last 3 runs).",
    "days_since_last_run_log": "log(1 + days since the last run); 365 without one.",
    "runs_this_season": "Runs earlier in the current HK season (September to July).",
    "career_runs_log": "log(1 + earlier runs).",
    "career_win_rate": "Earlier wins / runs, shrunk toward 8%.",
    "prev_market_prob_log_3": "log of field-size-scaled market probability at the last 3 runs.",
    "perf_vs_rating_last": "Rating the last run was worth (rating + lbs beaten fewer than the "
    "field average) minus today's rating.",
    "perf_vs_rating_best_3": "Best performance rating of the last 3 runs minus today's rating.",
    "perf_vs_rating_avg_3_rel": "Mean performance rating of the last 3 runs minus today's "
    "rating, minus the race mean.",
    "rating_vs_band_top": "Official rating minus the top of the race's rating band (0 if none).",
    "years_since_debut": "Years since the horse's first run in the data (an age proxy).",
    "placed_share_3": "Share of the last 3 runs finished in the first three.",
    "market_prob_last_log": "log of field-size-scaled market probability at the last run.",
    "best_perf_vs_rating": "Best performance rating of the career minus today's rating.",
    "quick_backup": "1 when the last run was 10 days ago or less.",
    "beat_market_avg_3": "Mean of (market rank − finishing rank, both scaled 0..1) over the last "
    "3 runs: how much better than its odds the horse ran.",
    "beat_market_ewm": "Exponentially weighted (α 0.3 per run) beat-the-market measure, all runs.",
    "perf_vs_rating_ewm": "Exponentially weighted performance rating (α 0.3 per run) minus "
    "today's rating.",
    "weight_vs_rating_rel": "(Rating − weight carried) minus the race median: lbs of allowance "
    "(apprentice claim) or of being out of the handicap.",
}


_RATED = pl.col("rating_imputed") == 0.0
_HISTORY = known("h_as_of")
_LAGS = range(LAGS)
# Where each feature comes from data rather than a neutral fill (for coverage reports).
COVERAGE = {
    "official_rating": _RATED,
    "official_rating_rel": _RATED,
    "rating_imputed": ALWAYS,
    "rating_change": _RATED & known("h_official_rating"),
    "class_drop": known("class_level", "h_class_level"),
    "no_previous_run": ALWAYS,
    "last_finish_pct": known("h_finish_pct_0"),
    "avg_finish_pct_3": _HISTORY,
    "avg_finish_pct_3_rel": _HISTORY,
    "career_finish_pct": _HISTORY,
    "last_beaten_lengths_log": known("h_beaten_lengths_0"),
    "avg_beaten_lengths_log_3": _HISTORY,
    "days_since_last_run_log": _HISTORY,
    "runs_this_season": ALWAYS,
    "career_runs_log": ALWAYS,
    "career_win_rate": _HISTORY,
    "prev_market_prob_log_3": any_known(*[f"h_market_prob_{lag}" for lag in _LAGS]),
    "perf_vs_rating_last": known("h_perf_rating_0"),
    "perf_vs_rating_best_3": any_known(*[f"h_perf_rating_{lag}" for lag in _LAGS]),
    "perf_vs_rating_avg_3_rel": any_known(*[f"h_perf_rating_{lag}" for lag in _LAGS]),
    "rating_vs_band_top": _RATED & known("rating_band_high"),
    "years_since_debut": _HISTORY,
    "placed_share_3": _HISTORY,
    "market_prob_last_log": known("h_market_prob_0"),
    "best_perf_vs_rating": known("h_best_perf_rating"),
    "quick_backup": _HISTORY,
    "beat_market_avg_3": any_known(*[f"h_beat_market_{lag}" for lag in _LAGS]),
    "beat_market_ewm": known("h_beat_market_ewm"),
    "perf_vs_rating_ewm": known("h_perf_rating_ewm"),
    "weight_vs_rating_rel": _RATED,
}


def compute(frame: pl.DataFrame) -> pl.DataFrame:
    has_run = pl.col("h_as_of").is_not_null()
    rating = pl.col("official_rating")
    last_rating = pl.col("h_official_rating")
    finish = [f"h_finish_pct_{lag}" for lag in range(LAGS)]
    lengths = [f"h_beaten_lengths_{lag}" for lag in range(LAGS)]
    market = [f"h_market_prob_{lag}" for lag in range(LAGS)]
    runs = pl.col("h_runs").fill_null(0.0)
    same_season = pl.col("h_season") == pl.col("season")
    performance = [f"h_perf_rating_{lag}" for lag in range(LAGS)]
    best_performance = pl.max_horizontal([pl.col(c) for c in performance])
    avg_vs_rating = (mean_of(performance) - rating).fill_null(0.0)
    allowance = rating - pl.col("weight_carried_lbs")
    return frame.with_columns(
        official_rating=rating,
        official_rating_rel=rel(rating),
        rating_imputed=pl.col("rating_imputed"),
        rating_change=(rating - last_rating).fill_null(0.0),
        class_drop=(pl.col("class_level") - pl.col("h_class_level")).fill_null(0.0),
        no_previous_run=(~has_run).cast(pl.Float64),
        last_finish_pct=pl.col(finish[0]).fill_null(NEUTRAL_FINISH_PCT),
        avg_finish_pct_3=mean_of(finish).fill_null(NEUTRAL_FINISH_PCT),
        avg_finish_pct_3_rel=rel(mean_of(finish).fill_null(NEUTRAL_FINISH_PCT)),
        career_finish_pct=shrunk_rate(pl.col("h_finish_pct_sum"), runs, NEUTRAL_FINISH_PCT, 2.0),
        last_beaten_lengths_log=pl.col(lengths[0]).fill_null(NEUTRAL_LENGTHS).log1p(),
        avg_beaten_lengths_log_3=mean_of(lengths).fill_null(NEUTRAL_LENGTHS).log1p(),
        days_since_last_run_log=days_since("h_as_of").fill_null(NO_RUN_DAYS).log1p(),
        runs_this_season=pl.when(same_season).then(pl.col("h_season_runs")).otherwise(0.0),
        career_runs_log=runs.log1p(),
        career_win_rate=shrunk_rate(pl.col("h_wins"), runs, BASE_WIN_RATE, 2.0),
        prev_market_prob_log_3=(mean_of(market) * pl.col("field_size")).log().fill_null(0.0),
        perf_vs_rating_last=(pl.col(performance[0]) - rating).fill_null(0.0),
        perf_vs_rating_best_3=(best_performance - rating).fill_null(0.0),
        perf_vs_rating_avg_3_rel=rel(avg_vs_rating),
        rating_vs_band_top=(rating - pl.col("rating_band_high")).fill_null(0.0),
        years_since_debut=(days_since("h_first_run") / 365.25).fill_null(0.0),
        placed_share_3=mean_of([f"h_placed_{lag}" for lag in range(LAGS)]).fill_null(0.0),
        market_prob_last_log=(pl.col(market[0]) * pl.col("field_size")).log().fill_null(0.0),
        best_perf_vs_rating=(pl.col("h_best_perf_rating") - rating).fill_null(0.0),
        quick_backup=(days_since("h_as_of") <= 10).fill_null(False).cast(pl.Float64),
        beat_market_avg_3=mean_of([f"h_beat_market_{lag}" for lag in range(LAGS)]).fill_null(0.0),
        beat_market_ewm=pl.col("h_beat_market_ewm").fill_null(0.0),
        perf_vs_rating_ewm=(pl.col("h_perf_rating_ewm") - rating).fill_null(0.0),
        weight_vs_rating_rel=allowance - allowance.median().over("race_id"),
    )
