"""Cards (what is known before a race) and runs (what each start produced), from loader output.

Cards are the rows features are computed for; runs are the history that entity states
(models/features/states.py) are folded from. Every quantity here is either card information
published before the off, or an outcome of a race that is only ever read by *later* races.
"""

from __future__ import annotations

import polars as pl

# HKJC win-pool takeout: 1/odds overstates the market's probability by 1/(1 - takeout).
WIN_POOL_TAKEOUT = 0.175
MAX_LENGTHS = 30.0
# Going codes (connectors/hkjc.py) grouped by how they ride.
GOING_GROUPS = {
    "F": "firm", "GF": "firm", "G": "good", "GY": "soft", "Y": "soft", "YS": "soft",
    "S": "soft", "H": "soft", "WF": "awt_wet", "WS": "awt_wet", "SE": "awt_wet", "SL": "awt_wet",
}  # fmt: skip
# Beaten lengths of the average runner, for races whose field is only partly known.
TYPICAL_LENGTHS_BEATEN = 6.0
# Mean official rating of an HK handicap runner; the last-resort fill for an unrated runner.
DEFAULT_RATING = 60.0
# Top weight in an HK handicap: rating and weight move one-for-one below it.
TOP_WEIGHT_LBS = 133.0

CARD_COLUMNS = (
    "race_id", "race_date", "race_no", "venue", "surface", "course", "distance_m", "going_group",
    "class_level", "rating_band_high", "field_size", "season", "runner_id", "draw", "jockey",
    "trainer", "weight_carried_lbs", "body_weight_lbs", "official_rating", "rating_imputed",
    "gear",
)  # fmt: skip


def season_of(date_column: str) -> pl.Expr:
    """HK racing season (starts in September, ends in July), named by its first year."""
    date = pl.col(date_column)
    return (date.dt.year() - (date.dt.month() < 8).cast(pl.Int32)).cast(pl.Int32)


def going_group(going_column: str) -> pl.Expr:
    return pl.col(going_column).replace_strict(GOING_GROUPS, default="good", return_dtype=pl.String)


def impute_rating() -> list[pl.Expr]:
    """Fill a missing official rating from the runner's weight and its rivals' ratings.

    Weight in an HK handicap is `top weight - (top rating - rating)`, so rating - weight is
    nearly constant within a race (median error about 1 point on rated runners); rivals' ratings
    and weights are on the card, so this uses nothing from after the off. Without any rated rival
    the band top stands in for the top-weight rating, then a population mean.
    """
    rating = pl.col("official_rating").cast(pl.Float64)
    weight = pl.col("weight_carried_lbs")
    offset = (rating - weight).median().over("race_id")
    from_band = pl.col("rating_band_high").cast(pl.Float64) - (TOP_WEIGHT_LBS - weight)
    return [
        pl.coalesce(rating, weight + offset, from_band, pl.lit(DEFAULT_RATING)).alias(
            "official_rating"
        ),
        rating.is_null().cast(pl.Float64).alias("rating_imputed"),
    ]


def cards_from_entries(entries: pl.DataFrame) -> pl.DataFrame:
    """Starters of each race with their pre-race information (withdrawn runners removed)."""
    starters = entries.filter(pl.col("status") != "withdrawn")
    return (
        starters.with_columns(
            going_group=going_group("going"),
            season=season_of("race_date"),
            field_size=pl.len().over("race_id").cast(pl.Int32),
        )
        .with_columns(impute_rating())
        .select(CARD_COLUMNS)
    )


def build_runs(entries: pl.DataFrame, form_runs: pl.DataFrame) -> pl.DataFrame:
    """One row per start: results starters (complete fields) plus form-record-only starts.

    `complete_field` marks starts whose whole race is known; only those feed rider, trainer,
    draw and pace statistics (a partial field would bias them). Speed figures need the par
    of earlier days, so they are added later by `states.add_speed_figures`.
    """
    cards = cards_from_entries(entries)
    outcomes = entries.filter(pl.col("status") != "withdrawn").select(
        "race_id", "runner_id", "won", "finish_position", "beaten_lengths", "running_positions",
        "finish_time_s", "winning_time_s", "win_odds",
    )  # fmt: skip
    results_runs = cards.join(outcomes, on=["race_id", "runner_id"], how="left").with_columns(
        complete_field=pl.lit(True)
    )
    frames = [results_runs]
    if form_runs.height:
        frames.append(_form_runs_as_runs(form_runs))
    runs = pl.concat(frames, how="diagonal_relaxed")
    runs = _with_outcome_measures(with_days_since_prev(runs))
    return _with_performance_rating(runs).sort("race_date", "race_id", "runner_id")


def with_days_since_prev(runs: pl.DataFrame) -> pl.DataFrame:
    """Days since the horse's previous start (known before the start, so usable by states)."""
    previous_run = pl.col("race_date").shift(1).over("runner_id", order_by="race_date")
    return runs.with_columns(days_since_prev=(pl.col("race_date") - previous_run).dt.total_days())


def _form_runs_as_runs(form_runs: pl.DataFrame) -> pl.DataFrame:
    race_key = ["race_date", "venue", "race_index"]
    winner_time = (
        pl.col("finish_time_s").filter(pl.col("finish_position") == 1).first().over(race_key)
    )
    return form_runs.with_columns(
        race_id=pl.format(
            "form-{}-{}-{}",
            pl.col("race_date").dt.strftime("%Y-%m-%d"),
            pl.col("venue"),
            pl.col("race_index").cast(pl.String).fill_null("?"),
        ),
        going_group=going_group("going"),
        season=season_of("race_date"),
        rating_imputed=pl.col("official_rating").is_null().cast(pl.Float64),
        official_rating=pl.col("official_rating").cast(pl.Float64),
        winning_time_s=winner_time,
        complete_field=pl.lit(False),
    ).drop("race_index", "going", "class_code", "place", "status", "non_finish_code", "dead_heat")


def _with_outcome_measures(runs: pl.DataFrame) -> pl.DataFrame:
    """Per-start outcome measures on a 0..1 scale where position matters (0 = best)."""
    field = pl.col("field_size").cast(pl.Float64)
    span = pl.max_horizontal(field - 1.0, pl.lit(1.0))
    positions = pl.col("running_positions")
    calls = positions.list.len()
    # Non-finishers count as last: they were in the race and beat nobody.
    finish_pct = pl.when(pl.col("finish_position").is_not_null()).then(
        ((pl.col("finish_position").cast(pl.Float64) - 1.0) / span).clip(0.0, 1.0)
    )
    return runs.with_columns(
        finish_pct=finish_pct.fill_null(1.0),
        beaten_lengths=pl.when(pl.col("finish_position").is_not_null())
        .then(pl.col("beaten_lengths").fill_null(0.0).clip(0.0, MAX_LENGTHS))
        .otherwise(MAX_LENGTHS),
        early_pct=pl.when(calls >= 2).then(
            ((positions.list.first().cast(pl.Float64) - 1.0) / span).clip(0.0, 1.0)
        ),
        late_gain=pl.when((calls >= 2) & pl.col("finish_position").is_not_null()).then(
            (positions.list.get(-2, null_on_oob=True).cast(pl.Float64) - pl.col("finish_position"))
            / span
        ),
        market_prob=pl.when(pl.col("win_odds") >= 1.0).then(
            (1.0 - WIN_POOL_TAKEOUT) / pl.col("win_odds")
        ),
        beat_market=pl.when(pl.col("complete_field") & (pl.col("win_odds") >= 1.0)).then(
            ((pl.col("win_odds").rank("average").over("race_id") - 1.0) / span).clip(0.0, 1.0)
            - finish_pct.fill_null(1.0)
        ),
        won=pl.col("won").fill_null(0.0),
        placed=(pl.col("finish_position") <= 3).cast(pl.Float64).fill_null(0.0),
        par_key=pl.format("{}|{}|{}", "venue", "surface", "distance_m"),
    )


def lbs_per_length(distance_m: pl.Expr) -> pl.Expr:
    """Handicappers' scale: a length is worth about 3 lb at 1200 m, less over further."""
    return 3600.0 / distance_m.cast(pl.Float64)


def _with_performance_rating(runs: pl.DataFrame) -> pl.DataFrame:
    """The rating a start was run to: official rating plus lbs beaten fewer than the field's
    average runner (whose handicap is taken as exact), the usual form-figure construction."""
    behind = pl.col("beaten_lengths") * lbs_per_length(pl.col("distance_m"))
    field_average = pl.when(pl.col("complete_field")).then(behind.mean().over("race_id"))
    typical = pl.lit(TYPICAL_LENGTHS_BEATEN) * lbs_per_length(pl.col("distance_m"))
    surplus = pl.coalesce(field_average, typical) - behind
    return runs.with_columns(perf_rating=pl.col("official_rating") + surplus)
