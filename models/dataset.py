"""Turn the training frame (one row per starter) into race-blocked numpy arrays, with checks.

The frame comes from `models.features.build_training_frame`. Races that cannot be scored
honestly are dropped and counted by reason (never silently): a runner without usable win odds
(the market probability would be undefined), non-finite feature values, no recorded winner
(e.g. a voided race), or fewer than two runners (nothing to rank).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import numpy.typing as npt
import polars as pl

from models.segments import FloatArray, IntArray, RaceBlocks

REQUIRED_COLUMNS = ("race_id", "race_date", "runner_id", "won", "win_odds")
RESULT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class RaceSet:
    """Runners of many races, grouped race after race in time order."""

    feature_names: tuple[str, ...]
    races: RaceBlocks
    race_ids: npt.NDArray[np.str_]
    race_dates: npt.NDArray[np.datetime64]
    runner_ids: npt.NDArray[np.str_]
    x: FloatArray
    won: FloatArray
    win_odds: FloatArray
    places: FloatArray  # finishing position; NaN when unknown or not finished
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def n_races(self) -> int:
        return self.races.n_races

    def market_probabilities(self) -> FloatArray:
        """π: 1/odds normalised within each race, which removes the pool's takeout."""
        inverse = 1.0 / self.win_odds
        return inverse / self.races.sum(inverse)[self.races.index]

    def select_races(self, race_mask: npt.NDArray[np.bool_]) -> RaceSet:
        races, runner_mask = self.races.take(race_mask)
        return RaceSet(
            feature_names=self.feature_names,
            races=races,
            race_ids=self.race_ids[race_mask],
            race_dates=self.race_dates[race_mask],
            runner_ids=self.runner_ids[runner_mask],
            x=self.x[runner_mask],
            won=self.won[runner_mask],
            win_odds=self.win_odds[runner_mask],
            places=self.places[runner_mask],
            dropped=dict(self.dropped),
        )

    def between(self, after: date | None, until: date | None) -> RaceSet:
        """Races with after < race_date <= until (either bound may be open)."""
        mask = np.ones(self.n_races, dtype=bool)
        if after is not None:
            mask &= self.race_dates > np.datetime64(after, "D")
        if until is not None:
            mask &= self.race_dates <= np.datetime64(until, "D")
        return self.select_races(mask)

    def without_features(self, names: tuple[str, ...]) -> RaceSet:
        """The same races with some feature columns removed (for ablation)."""
        keep = [i for i, name in enumerate(self.feature_names) if name not in names]
        return RaceSet(
            feature_names=tuple(self.feature_names[i] for i in keep),
            races=self.races,
            race_ids=self.race_ids,
            race_dates=self.race_dates,
            runner_ids=self.runner_ids,
            x=self.x[:, keep],
            won=self.won,
            win_odds=self.win_odds,
            places=self.places,
            dropped=dict(self.dropped),
        )

    def window(self) -> tuple[str, str] | None:
        if self.n_races == 0:
            return None
        return str(self.race_dates.min()), str(self.race_dates.max())


@dataclass(frozen=True)
class PlacingRaces:
    """Stage-1 fitting rows: every race's win, then each later place among the runners not
    placed before it (the rank-ordered, or "exploded", logit). `index` is each row's runner;
    `y` its share of the place (dead heats split it) times the place's weight."""

    index: IntArray
    y: FloatArray
    races: RaceBlocks


def placing_races(data: RaceSet, place_weights: Sequence[float]) -> PlacingRaces:
    """Race k (k ≥ 2, weight place_weights[k-1]) is the k-th place among the runners placed
    k-th or later or not placed at all; a race without a k-th place (a dead heat above it)
    or with fewer than two such runners adds nothing. With one weight, only the win is fitted.
    """
    if not place_weights or any(not weight > 0 for weight in place_weights):
        raise ValueError(f"place weights must be positive, got {list(place_weights)}")
    races = data.races
    indexes = [np.arange(races.n_runners)]
    targets = [data.won * place_weights[0]]
    race_keys = [races.index]
    unplaced = np.isnan(data.places)
    for place, weight in enumerate(place_weights[1:], start=2):
        eligible = unplaced | (data.places >= place)
        placed = (data.places == place).astype(np.float64)
        per_race = races.sum(placed)[races.index]
        eligible_per_race = races.sum(eligible.astype(np.float64))[races.index]
        keep = eligible & (per_race > 0) & (eligible_per_race >= 2)
        indexes.append(np.flatnonzero(keep))
        targets.append((placed / np.maximum(per_race, 1.0) * weight)[keep])
        race_keys.append(races.index[keep] + (place - 1) * races.n_races)
    return PlacingRaces(
        index=np.concatenate(indexes),
        y=np.concatenate(targets),
        races=RaceBlocks.from_keys(np.concatenate(race_keys)),
    )


def group_ablations(
    data: RaceSet, groups: Mapping[str, Sequence[str]]
) -> Iterator[tuple[str, int, list[tuple[str, tuple[str, ...]]]]]:
    """Per feature group with columns in `data`: (group, its column count, [(label, removed)]),
    removing the group ("without") or every other column ("alone"), unless nothing would be left.
    """
    for group, columns in groups.items():
        present = tuple(c for c in columns if c in data.feature_names)
        if not present:
            continue
        others = tuple(c for c in data.feature_names if c not in present)
        yield (
            group,
            len(present),
            [
                (label, removed)
                for label, removed in (("without", present), ("alone", others))
                if len(removed) < len(data.feature_names)
            ],
        )


def race_set_from_frame(frame: pl.DataFrame, feature_names: tuple[str, ...]) -> RaceSet:
    """Validate, order by time and block by race; drop unusable races with a counted reason."""
    missing = [c for c in (*REQUIRED_COLUMNS, *feature_names) if c not in frame.columns]
    if missing:
        raise ValueError(f"training frame lacks columns: {', '.join(missing)}")
    order = ["race_date", *(["race_no"] if "race_no" in frame.columns else []), "race_id"]
    features = [pl.col(name).cast(pl.Float64) for name in feature_names]
    frame = frame.select(
        pl.col("race_id").cast(pl.String),
        pl.col("race_date").cast(pl.Date),
        *([pl.col("race_no")] if "race_no" in frame.columns else []),
        pl.col("runner_id").cast(pl.String),
        pl.col("won").cast(pl.Float64),
        pl.col("win_odds").cast(pl.Float64, strict=False),
        (
            pl.col("finish_position").cast(pl.Float64, strict=False)
            if "finish_position" in frame.columns
            else pl.when(pl.col("won") > 0).then(1.0).otherwise(None)
        ).alias("place"),
        *features,
    ).sort([*order, "runner_id"], maintain_order=True)

    finite = [pl.col(n).is_finite().fill_null(False) for n in feature_names]
    runner_checks = frame.with_columns(
        bad_odds=~(pl.col("win_odds").is_finite() & (pl.col("win_odds") > 0)).fill_null(False),
        bad_features=~pl.all_horizontal(finite) if finite else pl.lit(False),
        bad_won=~(pl.col("won").is_between(0.0, 1.0)).fill_null(False),
    )
    per_race = runner_checks.group_by("race_id", maintain_order=True).agg(
        pl.len().alias("runners"),
        pl.col("bad_odds").any(),
        pl.col("bad_features").any(),
        pl.col("bad_won").any(),
        pl.col("won").sum().alias("won_total"),
    )
    reasons = per_race.select(
        "race_id",
        reason=pl.when(pl.col("bad_won"))
        .then(pl.lit("invalid_won_value"))
        .when(pl.col("bad_odds"))
        .then(pl.lit("missing_or_invalid_odds"))
        .when(pl.col("bad_features"))
        .then(pl.lit("non_finite_features"))
        .when(pl.col("runners") < 2)
        .then(pl.lit("fewer_than_two_runners"))
        .when((pl.col("won_total") - 1.0).abs() > RESULT_TOLERANCE)
        .then(pl.lit("no_single_result"))
        .otherwise(pl.lit(None, dtype=pl.String)),
    )
    dropped = Counter(reasons["reason"].drop_nulls().to_list())
    usable = reasons.filter(pl.col("reason").is_null()).select("race_id")
    frame = frame.join(usable, on="race_id", how="semi", maintain_order="left")

    races = RaceBlocks.from_keys(frame["race_id"].to_numpy())
    race_rows = races.starts
    return RaceSet(
        feature_names=tuple(feature_names),
        races=races,
        race_ids=frame["race_id"].to_numpy()[race_rows].astype(str),
        race_dates=frame["race_date"].to_numpy()[race_rows].astype("datetime64[D]"),
        runner_ids=frame["runner_id"].to_numpy().astype(str),
        x=frame.select(feature_names).to_numpy().astype(np.float64)
        if feature_names
        else np.zeros((frame.height, 0)),
        won=frame["won"].to_numpy().astype(np.float64),
        win_odds=frame["win_odds"].to_numpy().astype(np.float64),
        places=frame["place"].fill_null(np.nan).to_numpy().astype(np.float64),
        dropped=dict(sorted(dropped.items())),
    )
