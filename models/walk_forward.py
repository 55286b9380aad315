"""Walk-forward evidence: what the fundamentals add over the market, season by season.

Every modelling choice is made on seasons before the test window. This module is the
measurement those choices rest on, so that its numbers (docs/model.md) come from one command
(`velo walk-forward`) instead of a notebook.

For each season, stage 1 (one design variant, the fundamental model f and the combination's
stage-1 model s with their L2s and place weights) is fitted on every race before the season
and predicts it. Stage 2 for a season is fitted on the *other* seasons' predictions, so α, β
and the recalibrated market's β are out of sample as well. The gain of a season is combined
R² − recalibrated-market R²: what the features add beyond correcting the market's
favourite–longshot bias.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from models.dataset import RaceSet, group_ablations
from models.design import Design
from models.metrics import pseudo_r2
from models.search_space import COMBINATION_SOURCES, PLACE_WEIGHTS, VARIANTS
from models.segments import FloatArray, RaceBlocks
from models.training import Stage1Rows, fit_stage1, validation_folds
from models.two_stage import fit_stage2

if TYPE_CHECKING:
    from models.registry import ModelVersion


@dataclass(frozen=True)
class WalkForwardSettings:
    """The stage-1 choices walked forward (those of a trained version, or given by hand)."""

    variant: str
    fundamental_l2: float
    combination_source: str
    combination_l2: float
    place_weights: tuple[float, ...] = PLACE_WEIGHTS

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown design variant {self.variant!r}")
        if self.combination_source not in COMBINATION_SOURCES:
            raise ValueError(f"unknown combination source {self.combination_source!r}")
        if self.fundamental_l2 < 0 or self.combination_l2 < 0:
            raise ValueError("L2 strengths must be ≥ 0")
        if not self.place_weights or min(self.place_weights) <= 0:
            raise ValueError("place weights must be positive")

    @classmethod
    def of_version(cls, version: ModelVersion) -> WalkForwardSettings:
        model = version.model
        return cls(
            variant=model.design.variant,
            fundamental_l2=model.fundamental_l2,
            combination_source=model.combination_source,
            combination_l2=model.combination_l2,
            place_weights=version.place_weights,
        )


def seasons(first_after: date, until: date) -> list[tuple[date, date]]:
    """(after, until] windows of a year each from `first_after`; the last one ends at `until`."""
    windows = validation_folds(first_after, until)
    if len(windows) < 2:
        raise ValueError("walk-forward needs two seasons or more: stage 2 is fitted on the others")
    return windows


@dataclass(frozen=True)
class _SeasonPredictions:
    window: RaceSet
    fundamental: FloatArray
    combination: FloatArray


def _predict_seasons(
    data: RaceSet, windows: list[tuple[date, date]], settings: WalkForwardSettings
) -> list[_SeasonPredictions]:
    race_relative, hinges = VARIANTS[settings.variant]
    predictions = []
    for after, until in windows:
        fitted = data.between(None, after)
        season = data.between(after, until)
        if fitted.n_races == 0 or season.n_races == 0:
            raise ValueError(f"no races before {after} or none in ({after}, {until}]")
        design = Design.fit(
            data.feature_names, fitted.x, fitted.races, race_relative=race_relative, hinges=hinges
        )
        rows = Stage1Rows.of(
            design.transform(fitted.x, fitted.races), fitted, settings.place_weights
        )
        x_season = design.transform(season.x, season.races)
        log_probs = [
            season.races.log_softmax(x_season @ fit_stage1(source, rows, l2))
            for source, l2 in (
                ("fundamental", settings.fundamental_l2),
                (settings.combination_source, settings.combination_l2),
            )
        ]
        predictions.append(_SeasonPredictions(season, *log_probs))
    return predictions


def _pooled(
    parts: list[_SeasonPredictions],
) -> tuple[FloatArray, FloatArray, FloatArray, RaceBlocks]:
    """Stage-1 log-probabilities, market probabilities, results and race blocks of `parts`."""
    sizes = np.concatenate([p.window.races.sizes for p in parts])
    races = RaceBlocks.from_starts(np.concatenate(([0], np.cumsum(sizes)[:-1])), int(sizes.sum()))
    return (
        np.concatenate([p.combination for p in parts]),
        np.concatenate([p.window.market_probabilities() for p in parts]),
        np.concatenate([p.window.won for p in parts]),
        races,
    )


def walk_forward(
    data: RaceSet, windows: list[tuple[date, date]], settings: WalkForwardSettings
) -> dict[str, Any]:
    """Per-season R² of the market, recalibrated market, f, combined; the gain's mean ± SE."""
    predictions = _predict_seasons(data, windows, settings)
    rows = []
    for i, season in enumerate(predictions):
        stage2 = fit_stage2(*_pooled(predictions[:i] + predictions[i + 1 :]))
        window = season.window
        log_market = np.log(window.market_probabilities())

        def r2(log_probs: FloatArray, window: RaceSet = window) -> float:
            return pseudo_r2(log_probs, window.won, window.races)

        combined = window.races.log_softmax(
            stage2.alpha * season.combination + stage2.beta * log_market
        )
        recalibrated = window.races.log_softmax(stage2.market_beta * log_market)
        row = {
            "from": (windows[i][0] + timedelta(days=1)).isoformat(),
            "to": windows[i][1].isoformat(),
            "races": window.n_races,
            "market_r2": r2(log_market),
            "market_recalibrated_r2": r2(recalibrated),
            "fundamental_r2": r2(season.fundamental),
            "combined_r2": r2(combined),
            "alpha": stage2.alpha,
            "beta": stage2.beta,
        }
        row["gain"] = row["combined_r2"] - row["market_recalibrated_r2"]
        rows.append(row)
    gains = np.array([row["gain"] for row in rows])
    return {
        "settings": asdict(settings),
        "seasons": rows,
        "mean_gain": float(gains.mean()),
        "se_gain": float(gains.std(ddof=1) / np.sqrt(gains.size)),
        "seasons_with_gain": int((gains > 0).sum()),
        "mean_fundamental_r2": float(np.mean([row["fundamental_r2"] for row in rows])),
    }


def walk_forward_ablation(
    data: RaceSet,
    windows: list[tuple[date, date]],
    settings: WalkForwardSettings,
    groups: Mapping[str, tuple[str, ...]],
) -> list[dict[str, Any]]:
    """The walk-forward run without each feature group, and with it alone."""
    rows = []
    for group, features, subsets in group_ablations(data, groups):
        row: dict[str, Any] = {"group": group, "features": features}
        for label, removed in subsets:
            result = walk_forward(data.without_features(removed), windows, settings)
            row[f"{label}_mean_gain"] = result["mean_gain"]
            row[f"{label}_mean_fundamental_r2"] = result["mean_fundamental_r2"]
        rows.append(row)
    return rows
