"""Training: time-ordered split, stage 1 with L2 chosen on validation, stage 2, online decision.

Train: races on or before `train_until`. Validation: after it, up to `valid_until`. Everything
after `valid_until` is left for testing and is never read here. Stage 1 is fitted on the
training races for each design variant and L2 strength of a grid; for each, stage 2 is fitted on
the validation races; the pair giving the best combined validation log loss wins (a few dozen
candidates and two stage-2 parameters on thousands of races keep that selection nearly
unbiased).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np

from models.conditional_logit import fit_conditional_logit
from models.dataset import RaceSet
from models.design import VARIANTS, Design
from models.evaluation import online_input_names, online_inputs, period_metrics, predict_period
from models.metrics import log_loss
from models.online import OnlineResidualModel, keep_online, progressive_evaluation
from models.two_stage import TwoStageModel, fit_stage2

L2_GRID = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003, 0.0001)


@dataclass(frozen=True)
class TrainingResult:
    model: TwoStageModel
    online: OnlineResidualModel | None
    details: dict[str, Any]


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


def train_two_stage(
    data: RaceSet,
    train_until: date,
    valid_until: date,
    l2_grid: tuple[float, ...] = L2_GRID,
    variants: tuple[str, ...] = tuple(VARIANTS),
    with_online: bool = True,
) -> TrainingResult:
    """Fit the model on `data` split by time; see the module docstring.

    Each design variant (models.design) is tried with each L2 strength; the pair with the best
    combined validation log loss is kept.
    """
    train, valid = split(data, train_until, valid_until)
    market_valid = valid.market_probabilities()

    search: list[dict[str, Any]] = []
    best: tuple[float, TwoStageModel, Any] | None = None
    for variant in variants:
        race_relative, hinges = VARIANTS[variant]
        design = Design.fit(
            data.feature_names, train.x, train.races, race_relative=race_relative, hinges=hinges
        )
        x_train = design.transform(train.x, train.races)
        x_valid = design.transform(valid.x, valid.races)
        weights = None
        for l2 in sorted(l2_grid, reverse=True):
            fit = fit_conditional_logit(x_train, train.won, train.races, l2=l2, initial=weights)
            weights = fit.weights
            log_f = valid.races.log_softmax(x_valid @ fit.weights)
            stage2 = fit_stage2(log_f, market_valid, valid.won, valid.races)
            candidate = TwoStageModel(
                design=design,
                weights=fit.weights,
                alpha=stage2.alpha,
                beta=stage2.beta,
                market_beta=stage2.market_beta,
                l2=l2,
            )
            combined = candidate.combined_log_probs(valid.x, market_valid, valid.races)
            valid_loss = log_loss(combined, valid.won, valid.races)
            search.append(
                {
                    "variant": variant,
                    "l2": l2,
                    "train_log_loss_fundamental": log_loss(
                        train.races.log_softmax(x_train @ fit.weights), train.won, train.races
                    ),
                    "valid_log_loss_fundamental": log_loss(log_f, valid.won, valid.races),
                    "valid_log_loss_combined": valid_loss,
                    "alpha": stage2.alpha,
                    "beta": stage2.beta,
                    "converged": fit.converged,
                    "iterations": fit.iterations,
                }
            )
            if best is None or valid_loss < best[0]:
                best = (valid_loss, candidate, fit)
    if best is None:
        raise ValueError("empty L2 grid or variant list")
    _, model, fit = best

    details: dict[str, Any] = {
        "l2_search": search,
        "stage1": {
            "variant": model.design.variant,
            "weights": dict(zip(model.design.column_names, model.weights.tolist(), strict=True)),
            "converged": fit.converged,
            "iterations": fit.iterations,
            "message": fit.message,
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

    The frozen model's stage 2 was fitted on these same races, so this comparison favours the
    frozen model: an online component kept here has to beat an in-sample stage 2.
    """
    candidate = OnlineResidualModel(online_input_names(model))
    predictions = predict_period(model, valid)
    result = progressive_evaluation(
        candidate,
        predictions.combined,
        online_inputs(model, valid, predictions),
        valid.won,
        valid.races,
    )
    kept = keep_online(result)
    decision = {
        "kept": kept,
        "races": result.races,
        "learning_rate": candidate.learning_rate,
        "valid_log_loss_frozen": result.log_loss_frozen,
        "valid_log_loss_online": result.log_loss_online,
        "improvement": result.improvement,
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
