"""Training: time-ordered split, expanding-window validation, final refit, online decision.

Train: races on or before `train_until`. Validation: after it, up to `valid_until`. Everything
after `valid_until` is left for testing and is never read here.

Validation is walked forward in yearly folds: for each fold, stage 1 is fitted on every race
before it and predicts the fold's races, so each validation race is scored by a model fitted on
all earlier data, as a test race will be. For each design variant (models.design) and L2
strength of a grid, both stage-1 models (fundamental f and market-residual g, see
models.two_stage) are scored that way and stage 2 is fitted on the pooled validation
predictions. The candidate with the best combined validation log loss becomes the combination
(variant, source, L2); the fundamental model reported on its own uses the same design with the
L2 giving the best fundamental validation log loss. Finally both stage-1 models are refitted
with the chosen settings on all races up to `valid_until` (walk-forward runs on the training
and validation seasons showed a model fitted on the latest seasons adds about twice as much
over the market as one frozen two years earlier), keeping the validation α and β.

Every stage-1 fit uses each race's win and its weighted later places (`PLACE_WEIGHTS`,
models.dataset.placing_races); scoring is always the win softmax.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np

from models.conditional_logit import fit_conditional_logit
from models.dataset import RaceSet, placing_races
from models.design import Design
from models.evaluation import (
    PeriodPredictions,
    metrics_from_predictions,
    online_input_names,
    online_inputs,
    period_metrics,
)
from models.metrics import log_loss
from models.online import (
    ONLINE_LEARNING_RATES,
    OnlineResidualModel,
    keep_online,
    progressive_evaluation,
)
from models.search_space import COMBINATION_SOURCES, L2_GRID, PLACE_WEIGHTS, VARIANTS
from models.segments import FloatArray, RaceBlocks
from models.two_stage import TwoStageModel, fit_market_residual, fit_stage2


@dataclass(frozen=True)
class TrainingResult:
    model: TwoStageModel
    online: OnlineResidualModel | None
    details: dict[str, Any]


@dataclass(frozen=True)
class _Candidate:
    variant: str
    source: str
    l2: float
    valid_log_s: FloatArray
    valid_log_loss_stage1: float
    valid_log_loss_combined: float
    alpha: float
    beta: float
    market_beta: float


def split(data: RaceSet, train_until: date, valid_until: date) -> tuple[RaceSet, RaceSet]:
    if valid_until <= train_until:
        raise ValueError("valid_until must be after train_until")
    train = data.between(None, train_until)
    valid = data.between(train_until, valid_until)
    if train.n_races == 0:
        raise ValueError(f"no usable races on or before {train_until}")
    if valid.n_races == 0:
        raise ValueError(f"no usable races in ({train_until}, {valid_until}]")
    return train, valid


def _a_year_later(day: date) -> date:
    return day.replace(year=day.year + 1, day=28 if (day.month, day.day) == (2, 29) else day.day)


def validation_folds(train_until: date, valid_until: date) -> list[tuple[date, date]]:
    """(fit until, predict until) per fold: calendar-year steps from train_until to
    valid_until (stage 1 is refitted on all earlier races before each fold)."""
    cuts = [train_until]
    while _a_year_later(cuts[-1]) < valid_until:
        cuts.append(_a_year_later(cuts[-1]))
    return list(zip(cuts, [*cuts[1:], valid_until], strict=True))


@dataclass(frozen=True)
class Stage1Rows:
    """What stage 1 is fitted on: design rows, market probabilities, targets, race blocks."""

    x: FloatArray
    market: FloatArray
    y: FloatArray
    races: RaceBlocks

    @classmethod
    def of(cls, x: FloatArray, data: RaceSet, place_weights: tuple[float, ...]) -> Stage1Rows:
        """The win and the weighted later places of `data`'s races (models.dataset)."""
        placings = placing_races(data, place_weights)
        return cls(
            x=x[placings.index],
            market=data.market_probabilities()[placings.index],
            y=placings.y,
            races=placings.races,
        )


def fit_stage1(
    source: str, rows: Stage1Rows, l2: float, initial: FloatArray | None = None
) -> FloatArray:
    """Weights of the fundamental (features only) or market-residual stage-1 model."""
    if source == "fundamental":
        return fit_conditional_logit(rows.x, rows.y, rows.races, l2=l2, initial=initial).weights
    weights, _, _ = fit_market_residual(
        rows.x, rows.market, rows.y, rows.races, l2, initial=initial
    )
    return weights


def _candidates_for_variant(
    variant: str,
    data: RaceSet,
    valid: RaceSet,
    folds: list[tuple[date, date]],
    l2_grid: tuple[float, ...],
    sources: tuple[str, ...],
    place_weights: tuple[float, ...],
) -> list[_Candidate]:
    """Walk the validation folds for every source and L2 (each fold's L2 path warm-started)."""
    race_relative, hinges = VARIANTS[variant]
    wanted = [s for s in COMBINATION_SOURCES if s in sources or s == "fundamental"]
    l2s = sorted(l2_grid, reverse=True)
    log_s: dict[tuple[str, float], list[FloatArray]] = {(s, l2): [] for s in wanted for l2 in l2s}
    for fit_until, predict_until in folds:
        fit_part = data.between(None, fit_until)
        fold = data.between(fit_until, predict_until)
        if fold.n_races == 0:
            continue
        design = Design.fit(
            data.feature_names,
            fit_part.x,
            fit_part.races,
            race_relative=race_relative,
            hinges=hinges,
        )
        rows = Stage1Rows.of(design.transform(fit_part.x, fit_part.races), fit_part, place_weights)
        x_fold = design.transform(fold.x, fold.races)
        for source in wanted:
            weights = None
            for l2 in l2s:
                weights = fit_stage1(source, rows, l2, initial=weights)
                log_s[(source, l2)].append(fold.races.log_softmax(x_fold @ weights))
    market_valid = valid.market_probabilities()
    candidates = []
    for (source, l2), pieces in log_s.items():
        valid_log_s = np.concatenate(pieces)
        stage2 = fit_stage2(valid_log_s, market_valid, valid.won, valid.races)
        combined = valid.races.log_softmax(
            stage2.alpha * valid_log_s + stage2.beta * np.log(market_valid)
        )
        candidates.append(
            _Candidate(
                variant=variant,
                source=source,
                l2=l2,
                valid_log_s=valid_log_s,
                valid_log_loss_stage1=log_loss(valid_log_s, valid.won, valid.races),
                valid_log_loss_combined=log_loss(combined, valid.won, valid.races),
                alpha=stage2.alpha,
                beta=stage2.beta,
                market_beta=stage2.market_beta,
            )
        )
    return candidates


def train_two_stage(
    data: RaceSet,
    train_until: date,
    valid_until: date,
    l2_grid: tuple[float, ...] = L2_GRID,
    variants: tuple[str, ...] = tuple(VARIANTS),
    sources: tuple[str, ...] = COMBINATION_SOURCES,
    with_online: bool = True,
    place_weights: tuple[float, ...] = PLACE_WEIGHTS,
) -> TrainingResult:
    """Fit the model on `data` split by time; see the module docstring."""
    if not l2_grid or not variants or not sources:
        raise ValueError("empty L2 grid, design variant list or combination source list")
    unknown = set(sources) - set(COMBINATION_SOURCES)
    if unknown:
        raise ValueError(f"unknown combination sources: {sorted(unknown)}")
    train, valid = split(data, train_until, valid_until)
    folds = validation_folds(train_until, valid_until)
    candidates: list[_Candidate] = []
    for variant in variants:
        candidates += _candidates_for_variant(
            variant, data, valid, folds, l2_grid, sources, place_weights
        )

    combination = min(
        (c for c in candidates if c.source in sources), key=lambda c: c.valid_log_loss_combined
    )
    fundamental = min(
        (c for c in candidates if c.source == "fundamental" and c.variant == combination.variant),
        key=lambda c: c.valid_log_loss_stage1,
    )
    fitted = data.between(None, valid_until)
    race_relative, hinges = VARIANTS[combination.variant]
    design = Design.fit(
        data.feature_names, fitted.x, fitted.races, race_relative=race_relative, hinges=hinges
    )
    rows = Stage1Rows.of(design.transform(fitted.x, fitted.races), fitted, place_weights)
    model = TwoStageModel(
        design=design,
        fundamental_weights=fit_stage1("fundamental", rows, fundamental.l2),
        fundamental_l2=fundamental.l2,
        combination_source=combination.source,
        combination_weights=fit_stage1(combination.source, rows, combination.l2),
        combination_l2=combination.l2,
        alpha=combination.alpha,
        beta=combination.beta,
        market_beta=combination.market_beta,
    )
    market_valid = valid.market_probabilities()
    valid_predictions = PeriodPredictions(
        market=np.log(market_valid),
        market_recalibrated=valid.races.log_softmax(model.market_beta * np.log(market_valid)),
        fundamental=fundamental.valid_log_s,
        combined=valid.races.log_softmax(
            model.alpha * combination.valid_log_s + model.beta * np.log(market_valid)
        ),
    )
    columns = model.design.column_names
    details: dict[str, Any] = {
        "search": [
            {
                "variant": c.variant,
                "source": c.source,
                "l2": c.l2,
                "valid_log_loss_stage1": c.valid_log_loss_stage1,
                "valid_log_loss_combined": c.valid_log_loss_combined,
                "alpha": c.alpha,
                "beta": c.beta,
            }
            for c in candidates
        ],
        "validation_folds": [[start.isoformat(), end.isoformat()] for start, end in folds],
        "stage1": {
            "variant": combination.variant,
            "fitted_until": valid_until.isoformat(),
            "fitted_races": fitted.n_races,
            "place_weights": list(place_weights),
            "fundamental_l2": fundamental.l2,
            "fundamental_weights": dict(
                zip(columns, model.fundamental_weights.tolist(), strict=True)
            ),
            "combination_source": combination.source,
            "combination_l2": combination.l2,
            "combination_weights": dict(
                zip(columns, model.combination_weights.tolist(), strict=True)
            ),
        },
        "stage2": {"alpha": model.alpha, "beta": model.beta, "market_beta": model.market_beta},
        "metrics": {
            "train": period_metrics(model, train),
            "validation": metrics_from_predictions(valid_predictions, valid),
        },
        "windows": {"train": train.window(), "validation": valid.window()},
        "races": {"train": train.n_races, "validation": valid.n_races},
    }
    online = None
    if with_online:
        online, details["online"] = _online_decision(model, valid, valid_predictions)
    return TrainingResult(model=model, online=online, details=details)


def _online_decision(
    model: TwoStageModel, valid: RaceSet, predictions: PeriodPredictions
) -> tuple[OnlineResidualModel | None, dict[str, Any]]:
    """Run the online component progressively over validation; keep it only if it helped.

    Each learning rate of a small grid starts from θ = 0; the best one is kept if it lowered the
    log loss. The predictions are the walk-forward ones, but stage 2 was fitted on these same
    races, so this comparison favours the frozen model: an online component kept here has to
    beat an in-sample stage 2.
    """
    inputs = online_inputs(model, valid, predictions)
    trials = []
    for learning_rate in ONLINE_LEARNING_RATES:
        candidate = OnlineResidualModel(online_input_names(model), learning_rate=learning_rate)
        result = progressive_evaluation(
            candidate, predictions.combined, inputs, valid.won, valid.races
        )
        trials.append((result, candidate))
    result, candidate = max(trials, key=lambda trial: trial[0].improvement)
    kept = keep_online(result)
    decision = {
        "kept": kept,
        "races": result.races,
        "learning_rate": candidate.learning_rate,
        "valid_log_loss_frozen": result.log_loss_frozen,
        "valid_log_loss_online": result.log_loss_online,
        "improvement": result.improvement,
        "improvement_by_learning_rate": {str(c.learning_rate): r.improvement for r, c in trials},
        "largest_weights": dict(
            sorted(candidate.weights.items(), key=lambda item: -abs(item[1]))[:5]
        ),
    }
    return (candidate if kept else None), decision


def training_data_hash(data: RaceSet) -> str:
    """SHA-256 of exactly the arrays fitted on: ids, dates, features, results and odds."""
    digest = hashlib.sha256()
    for array in (
        data.race_ids.astype("U"),
        data.race_dates.astype("datetime64[D]").astype(np.int64),
        data.runner_ids.astype("U"),
        np.ascontiguousarray(data.x),
        data.won,
        data.win_odds,
        data.places,
    ):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(",".join(data.feature_names).encode())
    return digest.hexdigest()
