"""Entity states: what is known about each horse, jockey, trainer, course and draw after a day.

Every table has one row per (entity `key`, `as_of` day) holding cumulative sums, exponentially
decayed sums and last-run values *including* that day's races. A race on day D reads, for each
entity, the latest row with `as_of < D` (an as-of join that excludes exact matches), so a race
never sees its own result or any other result of its own day. The same tables are the offline
feature store (Parquet) and, latest row per key, the online store (Redis).

Decayed sums are "rolling windows" that can be carried forward without the raw history:
value(D) = value(as_of) * exp(-(D - as_of) / tau), so a stored state is valid on any later day.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date

import polars as pl

# Reference day for the decayed cumulative sums (exp of days/tau stays far from overflow).
DECAY_EPOCH = date(2010, 1, 1)
HALF_LIVES_DAYS = {"hl60": 60.0, "hl365": 365.0}
FRESH_AFTER_DAYS = 60
LAGS = 3
HORSE_LAGGED = (
    "finish_pct", "beaten_lengths", "speed_fig", "early_pct", "late_gain", "market_prob",
    "perf_rating", "placed", "beat_market",
)  # fmt: skip
HORSE_LAST = (
    "official_rating", "class_level", "distance_m", "weight_carried_lbs", "body_weight_lbs",
    "gear", "jockey", "trainer", "season",
)  # fmt: skip
SPLITS = {
    "dist": pl.format("{}|d{}", "runner_id", "distance_m"),
    "course": pl.format("{}|c{}{}", "runner_id", "venue", "surface"),
    "going": pl.format("{}|g{}", "runner_id", "going_group"),
    "course_dist": pl.format("{}|x{}{}{}", "runner_id", "venue", "surface", "distance_m"),
}
DRAW_KEY = pl.format("{}|{}|{}|{}", "venue", "course", "distance_m", "draw")
PACE_KEY = pl.format("{}|{}|{}", "venue", "course", "distance_m")
PAR_GOING_KEY = pl.format("{}|{}|{}|{}", "venue", "surface", "distance_m", "going_group")
PAR_KEY = pl.format("{}|{}|{}", "venue", "surface", "distance_m")
# Minimum winners behind a par before it is trusted (going-specific, then any going).
PAR_MIN_RACES = {"par_going": 5, "par": 3}
EARLY_LEADER_PCT = 0.25
# Seconds per km around the par; beyond this a time is a data error or a horse eased down.
SPEED_FIG_RANGE = (-6.0, 3.0)
# Weight to time, on the handicapper's scale (1 lb ~ 1/3 length ~ 0.053 s over 1200 m): a figure
# run under more weight is worth more.
WEIGHT_FIG_PER_LB = 0.044
WEIGHT_FIG_BASE_LBS = 126.0
# Weight of the latest run in the horse's exponentially weighted form (older runs fade by 1 - α).
FORM_EWM_ALPHA = 0.3
HORSE_EWM = ("speed_fig", "perf_rating", "beat_market")
# A count column (a bare literal would aggregate to one per group, not one per row).
ONE = pl.col("_one")


def tau(half_life_days: float) -> float:
    return half_life_days / math.log(2.0)


def _days(column: str) -> pl.Expr:
    return (pl.col(column) - pl.lit(DECAY_EPOCH)).dt.total_days().cast(pl.Float64)


def cumulative_state(
    rows: pl.DataFrame,
    key: pl.Expr,
    sums: Mapping[str, pl.Expr],
    decayed: Mapping[str, pl.Expr] | None = None,
) -> pl.DataFrame:
    """Per (key, day): running totals of `sums` and decayed totals of `decayed`, after that day.

    Decayed totals use sum_j x_j exp(-(t - t_j)/tau) = exp(-t/tau) * cumsum(x_j exp(t_j/tau)).
    """
    decayed = decayed or {}
    daily = (
        rows.with_columns(key=key, _one=pl.lit(1.0))
        .filter(pl.col("key").is_not_null())
        .group_by("key", "race_date")
        .agg(
            *[expr.sum().alias(name) for name, expr in sums.items()],
            *[expr.sum().alias(f"_d_{name}") for name, expr in decayed.items()],
        )
        .sort("key", "race_date")
    )
    t = _days("race_date")
    columns = [pl.col(name).cum_sum().over("key").alias(name) for name in sums]
    for name in decayed:
        for label, half_life in HALF_LIVES_DAYS.items():
            scale = tau(half_life)
            columns.append(
                (
                    (-t / scale).exp()
                    * (pl.col(f"_d_{name}") * (t / scale).exp()).cum_sum().over("key")
                ).alias(f"{name}_{label}")
            )
    return daily.select("key", pl.col("race_date").alias("as_of"), *columns)


def add_speed_figures(runs: pl.DataFrame, par: pl.DataFrame) -> pl.DataFrame:
    """Speed figure of each start: seconds per km faster than par, corrected for the day.

    The par is the mean winning time for the venue, surface, distance and going group (or, with
    fewer than 5 such races, any going), from races strictly before the start's day. The track
    variant (how fast the surface rode that day) is the median of that meeting's winners against
    their pars, so a figure depends on its whole meeting: it is only read by later days' races,
    and an incremental update recomputes the meeting's figures as its results arrive.
    """
    runs = runs.with_columns(_par_going=PAR_GOING_KEY, _par=PAR_KEY)
    for name, column in (("par_going", "_par_going"), ("par", "_par")):
        runs = as_of_join(runs, par, column, prefix=f"_{name}_")
    par_time = pl.coalesce(
        pl.when(pl.col("_par_going_races") >= PAR_MIN_RACES["par_going"]).then(
            pl.col("_par_going_time") / pl.col("_par_going_races")
        ),
        pl.when(pl.col("_par_races") >= PAR_MIN_RACES["par"]).then(
            pl.col("_par_time") / pl.col("_par_races")
        ),
    )
    km = pl.col("distance_m") / 1000.0
    runs = runs.with_columns(_race_dev=(pl.col("winning_time_s") - par_time) / km)
    meeting = ["race_date", "venue", "surface"]
    variants = runs.unique("race_id").group_by(meeting).agg(_variant=pl.col("_race_dev").median())
    runs = runs.join(variants, on=meeting, how="left", nulls_equal=True)
    speed = (par_time - pl.col("finish_time_s")) / km + pl.col("_variant").fill_null(0.0)
    speed = speed + WEIGHT_FIG_PER_LB * (pl.col("weight_carried_lbs") - WEIGHT_FIG_BASE_LBS)
    helpers = [c for c in runs.columns if c.startswith(("_par", "_race_dev", "_variant"))]
    return runs.with_columns(speed_fig=speed.clip(*SPEED_FIG_RANGE)).drop(helpers)


def par_state(runs: pl.DataFrame) -> pl.DataFrame:
    """Winning times per par key (with and without going), one observation per race."""
    winners = runs.filter(pl.col("finish_position") == 1).unique("race_id", keep="first")
    winners = winners.filter(pl.col("winning_time_s").is_not_null())
    sums = {"races": ONE, "time": pl.col("winning_time_s")}
    return pl.concat(
        [cumulative_state(winners, PAR_GOING_KEY, sums), cumulative_state(winners, PAR_KEY, sums)]
    ).sort("as_of")


def horse_state(runs: pl.DataFrame) -> pl.DataFrame:
    """Per horse and run day: career totals, this season's runs, last runs' measures."""
    ordered = runs.sort("runner_id", "race_date")
    by_horse = ordered.with_columns(
        key=pl.col("runner_id"),
        as_of=pl.col("race_date"),
        runs=pl.int_range(1, pl.len() + 1).over("runner_id").cast(pl.Float64),
        wins=pl.col("won").cum_sum().over("runner_id"),
        finish_pct_sum=pl.col("finish_pct").cum_sum().over("runner_id"),
        first_run=pl.col("race_date").cum_min().over("runner_id"),
        best_perf_rating=pl.col("perf_rating").cum_max().over("runner_id"),
        season_runs=pl.int_range(1, pl.len() + 1).over("runner_id", "season").cast(pl.Float64),
        **{
            f"{name}_ewm": pl.col(name)
            .ewm_mean(alpha=FORM_EWM_ALPHA, ignore_nulls=True)
            .forward_fill()
            .over("runner_id")
            for name in HORSE_EWM
        },
        **{
            f"{name}_{lag}": pl.col(name).shift(lag).over("runner_id")
            for name in HORSE_LAGGED
            for lag in range(LAGS)
        },
    )
    lagged = [f"{name}_{lag}" for name in HORSE_LAGGED for lag in range(LAGS)]
    return by_horse.select(
        "key",
        "as_of",
        "runs",
        "wins",
        "finish_pct_sum",
        "first_run",
        "best_perf_rating",
        "season_runs",
        *[f"{name}_ewm" for name in HORSE_EWM],
        *lagged,
        *HORSE_LAST,
    ).sort("as_of")


def person_state(runs: pl.DataFrame, person: str) -> pl.DataFrame:
    """Jockey or trainer: rides, wins and market-expected wins, decayed over two windows."""
    complete = runs.filter(pl.col("complete_field"))
    expected = pl.coalesce("market_prob", 1.0 / pl.col("field_size"))
    return cumulative_state(
        complete,
        pl.col(person),
        sums={"rides": ONE, "wins": pl.col("won")},
        decayed={"rides": ONE, "wins": pl.col("won"), "expected": expected},
    ).sort("as_of")


def pair_state(runs: pl.DataFrame) -> pl.DataFrame:
    """Trainer–jockey combination record."""
    complete = runs.filter(pl.col("complete_field"))
    return cumulative_state(
        complete,
        pl.format("{}|{}", "trainer", "jockey"),
        sums={"rides": ONE, "wins": pl.col("won")},
    ).sort("as_of")


def fresh_state(runs: pl.DataFrame) -> pl.DataFrame:
    """Trainer's record with horses back from a break (a trainer-intention signal)."""
    fresh = runs.filter(pl.col("complete_field") & (pl.col("days_since_prev") >= FRESH_AFTER_DAYS))
    return cumulative_state(
        fresh,
        pl.col("trainer"),
        sums={"rides": ONE},
        decayed={"rides": ONE, "wins": pl.col("won")},
    ).sort("as_of")


def split_state(runs: pl.DataFrame) -> pl.DataFrame:
    """Horse record at a distance, course, going group and course+distance."""
    sums = {"runs": ONE, "wins": pl.col("won"), "finish_pct": pl.col("finish_pct")}
    return pl.concat([cumulative_state(runs, key, sums) for key in SPLITS.values()]).sort("as_of")


def draw_state(runs: pl.DataFrame) -> pl.DataFrame:
    """Draw bias at venue/course/distance: wins above 1/field and finish above mid-field."""
    complete = runs.filter(pl.col("complete_field") & pl.col("draw").is_not_null())
    return cumulative_state(
        complete,
        DRAW_KEY,
        sums={
            "runs": ONE,
            "win_excess": pl.col("won") - 1.0 / pl.col("field_size"),
            "finish_gain": 0.5 - pl.col("finish_pct"),
        },
    ).sort("as_of")


def pace_state(runs: pl.DataFrame) -> pl.DataFrame:
    """How early leaders fare at venue/course/distance (a running-style bias)."""
    leaders = runs.filter(pl.col("complete_field") & (pl.col("early_pct") <= EARLY_LEADER_PCT))
    return cumulative_state(
        leaders,
        PACE_KEY,
        sums={"runs": ONE, "finish_gain": 0.5 - pl.col("finish_pct")},
    ).sort("as_of")


STATE_BUILDERS = {
    "horse": horse_state,
    "jockey": lambda runs: person_state(runs, "jockey"),
    "trainer": lambda runs: person_state(runs, "trainer"),
    "pair": pair_state,
    "fresh": fresh_state,
    "split": split_state,
    "draw": draw_state,
    "pace": pace_state,
}


# The run columns each table is keyed by: its rows for a key depend only on the runs with
# that key, which is what lets a new result rebuild just the keys it touches.
STATE_KEYS: dict[str, list[pl.Expr]] = {
    "horse": [pl.col("runner_id")],
    "jockey": [pl.col("jockey")],
    "trainer": [pl.col("trainer")],
    "pair": [pl.format("{}|{}", "trainer", "jockey")],
    "fresh": [pl.col("trainer")],
    "split": list(SPLITS.values()),
    "draw": [DRAW_KEY],
    "pace": [PACE_KEY],
    "par": [PAR_GOING_KEY, PAR_KEY],
}


def build_states(runs: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """All entity state tables from runs that already carry speed figures."""
    return {name: builder(runs) for name, builder in STATE_BUILDERS.items()}


def as_of_join(
    frame: pl.DataFrame, state: pl.DataFrame, key_column: str, prefix: str
) -> pl.DataFrame:
    """Attach, per row, the entity's latest state strictly before the row's race day."""
    renamed = state.rename({c: f"{prefix}{c}" for c in state.columns if c != "key"})
    order = pl.int_range(pl.len()).alias("_row")
    joined = (
        frame.with_columns(order)
        .sort("race_date")
        .join_asof(
            renamed,
            left_on="race_date",
            right_on=f"{prefix}as_of",
            by_left=key_column,
            by_right="key",
            strategy="backward",
            allow_exact_matches=False,
            coalesce=False,
            check_sortedness=False,
        )
    )
    return joined.sort("_row").drop("_row", "key", strict=False)
