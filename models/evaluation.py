"""Out-of-sample evaluation of a model version over a date window, Benter-style.

Every probability is computed from information available before the race: the model's
parameters were fitted on earlier periods, the market probabilities are the final odds, and the
online component (when the registry kept it) predicts each race before learning its result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models.betting import BettingResult, simulate_kelly
from models.dataset import RaceSet
from models.metrics import (
    CALIBRATION_EDGES,
    CalibrationBin,
    auc,
    calibration_table,
    log_loss,
    pseudo_r2,
    top_pick_win_rate,
    uniform_log_likelihoods,
)
from models.online import OnlineResidualModel, ProgressiveResult, progressive_evaluation
from models.segments import FloatArray
from models.two_stage import TwoStageModel

BENTER_1994 = {"market_r2": 0.1218, "fundamental_r2": 0.1245, "combined_r2": 0.1396}


@dataclass(frozen=True)
class PeriodPredictions:
    """Log-probabilities of each runner under each model, for one set of races."""

    market: FloatArray
    market_recalibrated: FloatArray
    fundamental: FloatArray
    combined: FloatArray


def predict_period(model: TwoStageModel, data: RaceSet) -> PeriodPredictions:
    market_probs = data.market_probabilities()
    return PeriodPredictions(
        market=np.log(market_probs),
        market_recalibrated=model.recalibrated_market_log_probs(market_probs, data.races),
        fundamental=model.fundamental_log_probs(data.x, data.races),
        combined=model.combined_log_probs(data.x, market_probs, data.races),
    )


def online_inputs(
    model: TwoStageModel, data: RaceSet, predictions: PeriodPredictions
) -> FloatArray:
    """The online component's per-runner inputs: standardised features, log f and log π."""
    return np.column_stack(
        [model.design.standardised_inputs(data.x), predictions.fundamental, predictions.market]
    )


def online_input_names(model: TwoStageModel) -> tuple[str, ...]:
    return (*model.feature_names, "log_f", "log_pi")


def period_metrics(model: TwoStageModel, data: RaceSet) -> dict[str, Any]:
    """Log losses, pseudo-R²s, AUCs and top-pick rates of the four models on one period."""
    return metrics_from_predictions(predict_period(model, data), data)


def metrics_from_predictions(predictions: PeriodPredictions, data: RaceSet) -> dict[str, Any]:
    """The same metrics from given predictions (e.g. walk-forward ones made during training)."""
    won, races = data.won, data.races
    winners = won > 0
    metrics: dict[str, Any] = {
        "races": data.n_races,
        "runners": races.n_runners,
        "window": data.window(),
        "log_loss_uniform": -float(uniform_log_likelihoods(won, races).mean()),
    }
    for name, log_probs in (
        ("market", predictions.market),
        ("market_recalibrated", predictions.market_recalibrated),
        ("fundamental", predictions.fundamental),
        ("combined", predictions.combined),
    ):
        probs = np.exp(log_probs)
        metrics[f"{name}_r2"] = pseudo_r2(log_probs, won, races)
        metrics[f"log_loss_{name}"] = log_loss(log_probs, won, races)
        metrics[f"auc_{name}"] = auc(probs, winners)
        metrics[f"top_pick_win_rate_{name}"] = top_pick_win_rate(probs, won, races)
    metrics["delta_r2"] = metrics["combined_r2"] - metrics["market_r2"]
    metrics["delta_r2_vs_recalibrated"] = metrics["combined_r2"] - metrics["market_recalibrated_r2"]
    metrics["auc"] = metrics["auc_combined"]
    metrics["top_pick_win_rate"] = metrics["top_pick_win_rate_combined"]
    return metrics


@dataclass(frozen=True)
class Evaluation:
    """Everything the report shows for one window."""

    metrics: dict[str, Any]
    calibration: dict[str, list[CalibrationBin]]
    betting: BettingResult
    online: ProgressiveResult | None
    race_dates: np.ndarray


def evaluate(
    model: TwoStageModel,
    data: RaceSet,
    online: OnlineResidualModel | None = None,
    kelly_fraction: float = 0.25,
    min_edge: float = 0.0,
) -> Evaluation:
    """Metrics, calibration tables, Kelly simulation and (if given) progressive online scores."""
    if data.n_races == 0:
        raise ValueError("no usable races in the evaluation window")
    metrics = period_metrics(model, data)
    predictions = predict_period(model, data)
    combined = np.exp(predictions.combined)
    calibration = {
        name: calibration_table(np.exp(log_probs), data.won, CALIBRATION_EDGES)
        for name, log_probs in (
            ("market", predictions.market),
            ("fundamental", predictions.fundamental),
            ("combined", predictions.combined),
        )
    }
    betting = simulate_kelly(
        combined,
        data.win_odds,
        data.won,
        data.races,
        kelly_fraction=kelly_fraction,
        min_edge=min_edge,
    )
    metrics.update(
        roi=betting.roi,
        bets=betting.bets,
        turnover=betting.turnover,
        final_bankroll=betting.final_bankroll,
        max_drawdown=betting.max_drawdown,
        flat_stake_roi=betting.flat_stake_roi,
    )
    progressive = None
    if online is not None:
        progressive = progressive_evaluation(
            online,
            predictions.combined,
            online_inputs(model, data, predictions),
            data.won,
            data.races,
        )
        metrics.update(
            log_loss_online=progressive.log_loss_online,
            online_r2=pseudo_r2(progressive.online_log_probs, data.won, data.races),
        )
    metrics["benter_1994"] = dict(BENTER_1994)
    return Evaluation(
        metrics=metrics,
        calibration=calibration,
        betting=betting,
        online=progressive,
        race_dates=data.race_dates,
    )
