"""TRA (trip): record at today's distance, course and going; distance, weight and body-weight
changes since the last run."""

from __future__ import annotations

import polars as pl

from models.features._common import ALWAYS, BASE_WIN_RATE, known, rel, shrunk_rate

SPLIT_PRIOR_RUNS = 3.0

FEATURES = {
    "distance_pref": "Career finish minus finish at today's distance (shrunk; + = suits).",
    "course_pref": "Career finish minus finish at today's venue and surface (shrunk).",
    "going_pref": "Career finish minus finish on today's going group (shrunk).",
    "course_distance_win_rate": "Wins / runs at this venue, surface and distance, shrunk.",
    "distance_runs_log": "log(1 + earlier runs at today's distance).",
    "distance_change_km": "Distance now minus at the last run, in km.",
    "weight_carried": "Weight carried, lbs.",
    "weight_carried_rel": "Weight carried minus the race mean.",
    "weight_change": "Weight carried now minus at the last run, lbs.",
    "body_weight_change": "Declared body weight now minus at the last run, lbs.",
    "weight_rel_distance": "weight_carried_rel x distance in km (weight tells more over further).",
}


COVERAGE = {
    "distance_pref": known("sd_as_of"),
    "course_pref": known("sc_as_of"),
    "going_pref": known("sg_as_of"),
    "course_distance_win_rate": known("sx_as_of"),
    "distance_runs_log": ALWAYS,
    "distance_change_km": known("h_distance_m"),
    "weight_carried": known("weight_carried_lbs"),
    "weight_carried_rel": known("weight_carried_lbs"),
    "weight_change": known("weight_carried_lbs", "h_weight_carried_lbs"),
    "body_weight_change": known("body_weight_lbs", "h_body_weight_lbs"),
    "weight_rel_distance": known("weight_carried_lbs"),
}


def _preference(prefix: str) -> pl.Expr:
    """How much better (lower scaled position) the horse does in this split than overall."""
    career = pl.col("career_finish_pct")
    split = shrunk_rate(
        pl.col(f"{prefix}finish_pct"), pl.col(f"{prefix}runs"), career, SPLIT_PRIOR_RUNS
    )
    return career - split


def compute(frame: pl.DataFrame) -> pl.DataFrame:
    weight = pl.col("weight_carried_lbs")
    return frame.with_columns(
        distance_pref=_preference("sd_"),
        course_pref=_preference("sc_"),
        going_pref=_preference("sg_"),
        course_distance_win_rate=shrunk_rate(
            pl.col("sx_wins"), pl.col("sx_runs"), BASE_WIN_RATE, SPLIT_PRIOR_RUNS
        ),
        distance_runs_log=pl.col("sd_runs").fill_null(0.0).log1p(),
        distance_change_km=((pl.col("distance_m") - pl.col("h_distance_m")) / 1000.0).fill_null(
            0.0
        ),
        weight_carried=weight,
        weight_carried_rel=rel(weight),
        weight_change=(weight - pl.col("h_weight_carried_lbs")).fill_null(0.0),
        body_weight_change=(pl.col("body_weight_lbs") - pl.col("h_body_weight_lbs")).fill_null(0.0),
        weight_rel_distance=rel(weight) * pl.col("distance_m").cast(pl.Float64) / 1000.0,
    )
