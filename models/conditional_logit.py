"""Conditional logit (McFadden; Benter's stage 1): softmax of a linear utility within each race.

p_i = exp(x_i·w) / Σ_{j in race} exp(x_j·w), fitted by maximum likelihood with an L2 penalty.
The target `y` is each runner's share of the win (1, a dead-heat share, or 0), so dead heats
contribute fractional credit rather than being dropped or double counted. There is no intercept:
it cancels inside the within-race softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from models.segments import FloatArray, RaceBlocks


@dataclass(frozen=True)
class ConditionalLogitFit:
    """Fitted weights with what the optimiser reported, kept for the model metadata."""

    weights: FloatArray
    objective: float
    iterations: int
    converged: bool
    message: str


def objective_and_gradient(
    weights: FloatArray,
    x: FloatArray,
    y: FloatArray,
    races: RaceBlocks,
    l2: float,
    penalised: FloatArray | None = None,
) -> tuple[float, FloatArray]:
    """Penalised mean negative log-likelihood per race and its analytic gradient.

    Per race the log-likelihood is Σ y_i log p_i; its gradient is Σ (y_i − p_i·Y_race) x_i with
    Y_race = Σ y_i (1 for every race with a result). Dividing by the number of races makes the L2
    strength comparable across training windows of different size. `penalised` (1/0 per weight,
    default all 1) exempts weights such as the market term of the residual model from L2.
    """
    log_p = races.log_softmax(x @ weights)
    n_races = max(races.n_races, 1)
    y_race = races.sum(y)[races.index]
    residual = y - np.exp(log_p) * y_race
    shrunk = weights if penalised is None else weights * penalised
    objective = -float(y @ log_p) / n_races + 0.5 * l2 * float(shrunk @ shrunk)
    gradient = -(x.T @ residual) / n_races + l2 * shrunk
    return objective, gradient


def fit_conditional_logit(
    x: FloatArray,
    y: FloatArray,
    races: RaceBlocks,
    l2: float = 0.0,
    initial: FloatArray | None = None,
    max_iter: int = 2000,
    penalised: FloatArray | None = None,
) -> ConditionalLogitFit:
    """Maximum-likelihood weights by L-BFGS-B; the problem is convex so the optimum is global.

    BLAS runs single-threaded here: the matrices are small (tens of thousands × tens), so extra
    threads only contend with each other and with other processes (≈7× slower when loaded).
    """
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] != races.n_runners:
        raise ValueError(f"shape mismatch: x {x.shape}, y {y.shape}, {races.n_runners} runners")
    if l2 < 0:
        raise ValueError("l2 must be non-negative")
    start = np.zeros(x.shape[1]) if initial is None else np.asarray(initial, dtype=np.float64)
    with threadpool_limits(limits=1, user_api="blas"):
        result = minimize(
            objective_and_gradient,
            start,
            args=(x, y, races, l2, penalised),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": max_iter, "gtol": 1e-9, "ftol": 1e-13},
        )
    return ConditionalLogitFit(
        weights=np.asarray(result.x, dtype=np.float64),
        objective=float(result.fun),
        iterations=int(result.nit),
        converged=bool(result.success),
        message=str(result.message),
    )


@dataclass(frozen=True)
class Standardizer:
    """Training-period mean and scale, stored with the model so scoring uses the same transform."""

    mean: FloatArray
    scale: FloatArray

    @classmethod
    def fit(cls, x: FloatArray) -> Standardizer:
        """Column mean and standard deviation; constant columns get scale 1 (weight stays ~0)."""
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        return cls(mean=mean, scale=scale)

    def transform(self, x: FloatArray) -> FloatArray:
        return (x - self.mean) / self.scale
