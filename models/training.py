"""Training: time-ordered split, stage 1 chosen on validation, stage 2, online decision.

Train: races on or before `train_until`. Validation: after it, up to `valid_until`. Everything
after `valid_until` is left for testing and is never read here.

For each design variant (models.design) and each L2 strength of a grid, both stage-1 models
(fundamental f and market-residual g, see models.two_stage) are fitted on the training races,
and stage 2 is fitted on the validation races on top of each. The candidate with the best
combined validation log loss becomes the combination (variant, source, L2); the fundamental
model reported on its own uses the same design with the L2 giving the best fundamental
validation log loss. A few dozen candidates and two stage-2 parameters on thousands of races
keep that selection nearly unbiased, and the test seasons play no part in it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np

from models.conditional_logit import fit_conditional_logit
from models.dataset import RaceSet
from models.design import Design
from models.evaluation import online_input_names, online_inputs, period_metrics, predict_period
from models.metrics import log_loss
from models.online import (
    ONLINE_LEARNING_RATES,
    OnlineResidualModel,
    keep_online,
    progressive_evaluation,
)
from models.search_space import L2_GRID, VARIANTS
from models.segments import FloatArray
from models.two_stage import COMBINATION_SOURCES, TwoStageModel, fit_market_residual, fit_stage2


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
    weights: FloatArray
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


def _candidates_for_design(
    variant: str,
    design: Design,
    train: RaceSet,
    valid: RaceSet,
    l2_grid: tuple[float, ...],
    sources: tuple[str, ...],
) -> list[_Candidate]:
    """Fit both stage-1 models for every L2 (warm-started from the previous, larger L2)."""
    x_train = design.transform(train.x, train.races)
    x_valid = design.transform(valid.x, valid.races)
    market_train, market_valid = train.market_probabilities(), valid.market_probabilities()
    candidates = []
    for source in COMBINATION_SOURCES:
        if source not in sources and source != "fundamental":
            continue
        weights = None
        for l2 in sorted(l2_grid, reverse=True):
            if source == "fundamental":
                fit = fit_conditional_logit(x_train, train.won, train.races, l2=l2, initial=weights)
                weights = fit.weights
            else:
                weights, _, fit = fit_market_residual(
                    x_train, market_train, train.won, train.races, l2, initial=weights
                )
            log_s = valid.races.log_softmax(x_valid @ weights)
            stage2 = fit_stage2(log_s, market_valid, valid.won, valid.races)
            combined = valid.races.log_softmax(
                stage2.alpha * log_s + stage2.beta * np.log(market_valid)
            )
            candidates.append(
                _Candidate(
                    variant=variant,
                    source=source,
                    l2=l2,
                    weights=weights,
                    valid_log_loss_stage1=log_loss(log_s, valid.won, valid.races),
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
) -> TrainingResult:
    """Fit the model on `data` split by time; see the module docstring."""
    if not l2_grid or not variants or not sources:
        raise ValueError("empty L2 grid, design variant list or combination source list")
    unknown = set(sources) - set(COMBINATION_SOURCES)
    if unknown:
        raise ValueError(f"unknown combination sources: {sorted(unknown)}")
    train, valid = split(data, train_until, valid_until)
    designs: dict[str, Design] = {}
    candidates: list[_Candidate] = []
    for variant in variants:
        race_relative, hinges = VARIANTS[variant]
        designs[variant] = Design.fit(
            data.feature_names, train.x, train.races, race_relative=race_relative, hinges=hinges
        )
        candidates += _candidates_for_design(
            variant, designs[variant], train, valid, l2_grid, sources
        )

    combination = min(
        (c for c in candidates if c.source in sources), key=lambda c: c.valid_log_loss_combined
    )
    fundamental = min(
        (c for c in candidates if c.source == "fundamental" and c.variant == combination.variant),
        key=lambda c: c.valid_log_loss_stage1,
    )
    model = TwoStageModel(
        design=designs[combination.variant],
        fundamental_weights=fundamental.weights,
        fundamental_l2=fundamental.l2,
        combination_source=combination.source,
        combination_weights=combination.weights,
        combination_l2=combination.l2,
        alpha=combination.alpha,
        beta=combination.beta,
        market_beta=combination.market_beta,
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
        "stage1": {
            "variant": combination.variant,
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
            "validation": period_metrics(model, valid),
        },
        "windows": {"train": train.window(), "validation": valid.window()},
        "races": {"train": train.n_races, "validation": valid.n_races},
    }
    online = None
    if with_online:
        online, details["online"] = _online_decision(model, valid)
    return TrainingResult(model=model, online=online, details=details)


def _online_decision(
    model: TwoStageModel, valid: RaceSet
) -> tuple[OnlineResidualModel | None, dict[str, Any]]:
    """Run the online component progressively over validation; keep it only if it helped.

    Each learning rate of a small grid starts from θ = 0; the best one is kept if it lowered the
    log loss. The frozen model's stage 2 was fitted on these same races, so this comparison
    favours the frozen model: an online component kept here has to beat an in-sample stage 2.
    """
    predictions = predict_period(model, valid)
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
    ):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(",".join(data.feature_names).encode())
    return digest.hexdigest()
