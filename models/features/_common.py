"""Small expression helpers shared by the feature groups (shrinkage, decay, within-race terms)."""

from __future__ import annotations

import polars as pl

from models.features.states import HALF_LIVES_DAYS, tau

RACE = "race_id"
# Prior win rate of a runner in an HK race (about 12.5 runners a race).
BASE_WIN_RATE = 0.08


def rel(expr: pl.Expr) -> pl.Expr:
    """Value minus the race mean: what a conditional logit can use (it ignores race constants)."""
    return expr - expr.mean().over(RACE)


def days_since(as_of_column: str) -> pl.Expr:
    return (pl.col("race_date") - pl.col(as_of_column)).dt.total_days().cast(pl.Float64)


def decayed(prefix: str, name: str, window: str) -> pl.Expr:
    """A stored decayed total carried forward from its as-of day to the race day."""
    factor = (-days_since(f"{prefix}as_of") / tau(HALF_LIVES_DAYS[window])).exp()
    return (pl.col(f"{prefix}{name}_{window}") * factor).fill_null(0.0)


def shrunk_rate(hits: pl.Expr, trials: pl.Expr, prior: pl.Expr | float, weight: float) -> pl.Expr:
    """Bayesian (beta) shrinkage: few observations stay near the prior."""
    prior_expr = prior if isinstance(prior, pl.Expr) else pl.lit(prior)
    return (hits.fill_null(0.0) + weight * prior_expr) / (trials.fill_null(0.0) + weight)


def fill_from_race(expr: pl.Expr, default: float) -> pl.Expr:
    """Missing value -> mean of the known rivals in the same race, else `default`."""
    return pl.coalesce(expr, expr.mean().over(RACE), pl.lit(default))


def mean_of(columns: list[str]) -> pl.Expr:
    """Mean of the non-null columns (null when all are null)."""
    return pl.mean_horizontal([pl.col(c) for c in columns], ignore_nulls=True)


def known(*columns: str) -> pl.Expr:
    """True where every column has a value: the feature comes from data, not a neutral fill."""
    return pl.all_horizontal([pl.col(c).is_not_null() for c in columns])


def any_known(*columns: str) -> pl.Expr:
    return pl.any_horizontal([pl.col(c).is_not_null() for c in columns])


ALWAYS = pl.lit(True)
