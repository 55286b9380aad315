"""T.I.E. (trainer intention): rider and stable strike rates, combinations, jockey bookings,
returns from a break and gear changes."""

from __future__ import annotations

import polars as pl

from models.features._common import (
    BASE_WIN_RATE,
    days_since,
    decayed,
    known,
    rel,
    shrunk_rate,
)
from models.features.states import FRESH_AFTER_DAYS

RIDES_PRIOR = 20.0
EXPECTED_PRIOR = 5.0
PAIR_PRIOR = 10.0

FEATURES = {
    "jockey_win_rate_hl365": "Jockey wins/rides, decayed with a 365-day half-life, shrunk to 8%.",
    "jockey_win_rate_hl60": "Jockey strike rate over a 60-day half-life window (current form).",
    "jockey_win_rate_rel": "jockey_win_rate_hl365 minus the race mean.",
    "jockey_ae_log": "log of jockey actual/market-expected wins (365-day half-life), shrunk.",
    "trainer_win_rate_hl365": "Trainer wins/runners, 365-day half-life, shrunk to 8%.",
    "trainer_win_rate_hl60": "Trainer strike rate over a 60-day half-life window.",
    "trainer_win_rate_rel": "trainer_win_rate_hl365 minus the race mean.",
    "trainer_ae_log": "log of trainer actual/market-expected wins (365-day half-life), shrunk.",
    "jockey_ae_log_hl60": "Jockey actual/market-expected wins over a 60-day half-life (form).",
    "trainer_jockey_win_rate": "This trainer-jockey pair's record, shrunk to the trainer's rate.",
    "jockey_upgrade": "Strike rate of today's jockey minus that of the last run's jockey.",
    "first_run_after_break": f"1 when the last run was {FRESH_AFTER_DAYS}+ days ago.",
    "trainer_fresh_win_rate": "Trainer's strike rate with horses back from a break, shrunk.",
    "gear_first_time": "1 when a piece of gear is worn for the first time (code ending in 1).",
    "gear_changed": "1 when the declared gear differs from the last run's.",
    "trainer_changed": "1 when the horse has moved stables since its last run.",
}


COVERAGE = {
    "jockey_win_rate_hl365": known("j_as_of"),
    "jockey_win_rate_hl60": known("j_as_of"),
    "jockey_win_rate_rel": known("j_as_of"),
    "jockey_ae_log": known("j_as_of"),
    "trainer_win_rate_hl365": known("t_as_of"),
    "trainer_win_rate_hl60": known("t_as_of"),
    "trainer_win_rate_rel": known("t_as_of"),
    "trainer_ae_log": known("t_as_of"),
    "jockey_ae_log_hl60": known("j_as_of"),
    "trainer_jockey_win_rate": known("tj_as_of"),
    "jockey_upgrade": known("lj_as_of", "j_as_of"),
    "first_run_after_break": known("h_as_of"),
    "trainer_fresh_win_rate": known("tf_as_of"),
    "gear_first_time": known("gear"),
    "gear_changed": known("gear", "h_gear"),
    "trainer_changed": known("h_trainer"),
}


def _rate(prefix: str, window: str) -> pl.Expr:
    return shrunk_rate(
        decayed(prefix, "wins", window),
        decayed(prefix, "rides", window),
        BASE_WIN_RATE,
        RIDES_PRIOR,
    )


def _actual_over_expected(prefix: str, window: str = "hl365") -> pl.Expr:
    wins = decayed(prefix, "wins", window)
    expected = decayed(prefix, "expected", window)
    return ((wins + EXPECTED_PRIOR) / (expected + EXPECTED_PRIOR)).log()


def compute(frame: pl.DataFrame) -> pl.DataFrame:
    jockey_rate = _rate("j_", "hl365")
    trainer_rate = _rate("t_", "hl365")
    gear = pl.col("gear")
    last_gear = pl.col("h_gear")
    fresh = (days_since("h_as_of") >= FRESH_AFTER_DAYS).fill_null(False)
    return frame.with_columns(
        jockey_win_rate_hl365=jockey_rate,
        jockey_win_rate_hl60=_rate("j_", "hl60"),
        jockey_win_rate_rel=rel(jockey_rate),
        jockey_ae_log=_actual_over_expected("j_"),
        trainer_win_rate_hl365=trainer_rate,
        trainer_win_rate_hl60=_rate("t_", "hl60"),
        trainer_win_rate_rel=rel(trainer_rate),
        trainer_ae_log=_actual_over_expected("t_"),
        jockey_ae_log_hl60=_actual_over_expected("j_", "hl60"),
        trainer_jockey_win_rate=shrunk_rate(
            pl.col("tj_wins"), pl.col("tj_rides"), trainer_rate, PAIR_PRIOR
        ),
        jockey_upgrade=pl.when(pl.col("h_jockey").is_not_null())
        .then(jockey_rate - _rate("lj_", "hl365"))
        .otherwise(0.0),
        first_run_after_break=fresh.cast(pl.Float64),
        trainer_fresh_win_rate=shrunk_rate(
            decayed("tf_", "wins", "hl365"),
            decayed("tf_", "rides", "hl365"),
            trainer_rate,
            PAIR_PRIOR,
        ),
        gear_first_time=gear.str.contains(r"(?:^|/)[A-Z]+1(?:/|$)")
        .fill_null(False)
        .cast(pl.Float64),
        gear_changed=(gear.fill_null("") != last_gear.fill_null(""))
        .and_(pl.col("h_as_of").is_not_null())
        .cast(pl.Float64),
        trainer_changed=(pl.col("trainer") != pl.col("h_trainer"))
        .fill_null(False)
        .cast(pl.Float64),
    )
