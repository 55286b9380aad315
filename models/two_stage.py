"""Benter's two-stage model: fundamentals (stage 1) combined with the de-biased market (stage 2).

Stage 1 fits conditional logits on the design matrix (models.design):
- the fundamental model f: features only, the "fundamental model on its own";
- the market-residual model g: features plus log π as an unpenalised term while fitting, so
  its feature weights describe what the odds leave out (log π is dropped again when scoring g).
Stage 2 (V9PM convergence) fits p = softmax(α·log s + β·log π) on a later validation period,
where s is f or g, whichever gives the better validation log loss (`combination_source`).
The DLV correction of the market's favourite–longshot bias is π^β renormalised: exactly stage 2
with α = 0 (the "recalibrated market"), fitted the same way and reported separately, which shows
how much of any gain is the fundamentals and how much is mere recalibration of the odds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.conditional_logit import ConditionalLogitFit, fit_conditional_logit
from models.design import Design
from models.segments import FloatArray, RaceBlocks


@dataclass(frozen=True)
class Stage2Fit:
    """Stage-2 exponents: α on the stage-1 log-probability, β on log π; β_market for α = 0."""

    alpha: float
    beta: float
    market_beta: float


@dataclass(frozen=True)
class TwoStageModel:
    """Everything needed to score a race: the numpy reference for the ONNX graph."""

    design: Design
    fundamental_weights: FloatArray
    fundamental_l2: float
    combination_source: str
    combination_weights: FloatArray
    combination_l2: float
    alpha: float
    beta: float
    market_beta: float

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.design.feature_names

    def fundamental_log_probs(self, x_raw: FloatArray, races: RaceBlocks) -> FloatArray:
        return races.log_softmax(self.design.transform(x_raw, races) @ self.fundamental_weights)

    def stage1_log_probs(self, x_raw: FloatArray, races: RaceBlocks) -> FloatArray:
        """log s: the stage-1 log-probability that stage 2 combines with the market."""
        return races.log_softmax(self.design.transform(x_raw, races) @ self.combination_weights)

    def combined_log_probs(
        self, x_raw: FloatArray, market_probs: FloatArray, races: RaceBlocks
    ) -> FloatArray:
        log_s = self.stage1_log_probs(x_raw, races)
        return races.log_softmax(self.alpha * log_s + self.beta * np.log(market_probs))

    def recalibrated_market_log_probs(
        self, market_probs: FloatArray, races: RaceBlocks
    ) -> FloatArray:
        return races.log_softmax(self.market_beta * np.log(market_probs))


def fit_stage2(
    log_s: FloatArray, market_probs: FloatArray, won: FloatArray, races: RaceBlocks
) -> Stage2Fit:
    """Unpenalised maximum likelihood for (α, β) and for β alone; both problems are convex."""
    log_pi = np.log(market_probs)
    combined = fit_conditional_logit(np.column_stack([log_s, log_pi]), won, races, l2=0.0)
    market_only = fit_conditional_logit(log_pi[:, None], won, races, l2=0.0)
    return Stage2Fit(
        alpha=float(combined.weights[0]),
        beta=float(combined.weights[1]),
        market_beta=float(market_only.weights[0]),
    )


def fit_market_residual(
    x: FloatArray,
    market_probs: FloatArray,
    won: FloatArray,
    races: RaceBlocks,
    l2: float,
    initial: FloatArray | None = None,
) -> tuple[FloatArray, float, ConditionalLogitFit]:
    """Feature weights of p = softmax(x·w + γ·log π); returns (w, γ, fit). γ is not penalised."""
    design = np.column_stack([x, np.log(market_probs)])
    penalised = np.append(np.ones(x.shape[1]), 0.0)
    start = None if initial is None else np.append(initial, 1.0)
    fit = fit_conditional_logit(design, won, races, l2=l2, initial=start, penalised=penalised)
    return fit.weights[:-1], float(fit.weights[-1]), fit
