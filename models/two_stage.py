"""Benter's two-stage model: fundamentals (stage 1) combined with the de-biased market (stage 2).

Stage 1 is a conditional logit on standardised features giving fundamental probabilities f.
Stage 2 (V9PM convergence) fits p = softmax(α·log f + β·log π) on a later validation period.
The DLV correction of the market's favourite–longshot bias is π^β renormalised: it is exactly
stage 2 with α = 0 (the "recalibrated market"), so it is fitted the same way and reported
separately, which shows how much of the gain is the fundamentals and how much is mere
recalibration of the odds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.conditional_logit import fit_conditional_logit
from models.design import Design
from models.segments import FloatArray, RaceBlocks


@dataclass(frozen=True)
class Stage2Fit:
    """Stage-2 exponents: α on log f, β on log π; β_market for the α = 0 fit."""

    alpha: float
    beta: float
    market_beta: float


@dataclass(frozen=True)
class TwoStageModel:
    """Everything needed to score a race: the numpy reference for the ONNX graph."""

    design: Design
    weights: FloatArray
    alpha: float
    beta: float
    market_beta: float
    l2: float

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.design.feature_names

    def utilities(self, x_raw: FloatArray, races: RaceBlocks) -> FloatArray:
        return self.design.transform(x_raw, races) @ self.weights

    def fundamental_log_probs(self, x_raw: FloatArray, races: RaceBlocks) -> FloatArray:
        return races.log_softmax(self.utilities(x_raw, races))

    def combined_log_probs(
        self, x_raw: FloatArray, market_probs: FloatArray, races: RaceBlocks
    ) -> FloatArray:
        log_f = self.fundamental_log_probs(x_raw, races)
        return races.log_softmax(self.alpha * log_f + self.beta * np.log(market_probs))

    def recalibrated_market_log_probs(
        self, market_probs: FloatArray, races: RaceBlocks
    ) -> FloatArray:
        return races.log_softmax(self.market_beta * np.log(market_probs))


def fit_stage2(
    log_f: FloatArray, market_probs: FloatArray, won: FloatArray, races: RaceBlocks
) -> Stage2Fit:
    """Unpenalised maximum likelihood for (α, β) and for β alone; both problems are convex."""
    log_pi = np.log(market_probs)
    combined = fit_conditional_logit(np.column_stack([log_f, log_pi]), won, races, l2=0.0)
    market_only = fit_conditional_logit(log_pi[:, None], won, races, l2=0.0)
    return Stage2Fit(
        alpha=float(combined.weights[0]),
        beta=float(combined.weights[1]),
        market_beta=float(market_only.weights[0]),
    )
