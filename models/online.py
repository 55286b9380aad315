"""Online learning (PRSCL / Genesis): a River-updated correction on top of the frozen model.

p = softmax(z + θ·h) within each race, where z is the frozen two-stage log-probability and h are
the runner's standardised stage-1 features plus log f and log π (so the online part can also
let α and β drift). θ starts at 0 and, after each race's result, takes one River SGD step on
that race's conditional-logit loss. Evaluation is progressive: every race is predicted before
its own result is learnt, so the comparison with the frozen model has no look-ahead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from river import optim

from models.segments import FloatArray, RaceBlocks

DEFAULT_LEARNING_RATE = 0.0003
ONLINE_LEARNING_RATES = (0.003, 0.001, 0.0003, 0.0001)
MIN_IMPROVEMENT = 1e-4


class OnlineResidualModel:
    """Conditional-logit correction θ learnt one race at a time with `river.optim.SGD`."""

    def __init__(
        self,
        input_names: tuple[str, ...],
        learning_rate: float = DEFAULT_LEARNING_RATE,
        weights: dict[str, float] | None = None,
        races_learnt: int = 0,
    ) -> None:
        self.input_names = input_names
        self.learning_rate = learning_rate
        self.weights = {name: 0.0 for name in input_names} | dict(weights or {})
        self.races_learnt = races_learnt
        self._optimizer = optim.SGD(learning_rate)

    def _theta(self) -> FloatArray:
        return np.array([self.weights[name] for name in self.input_names])

    def log_probs(self, base_log_probs: FloatArray, inputs: FloatArray) -> FloatArray:
        """Corrected log-probabilities for one race's runners."""
        utility = base_log_probs + inputs @ self._theta()
        shifted = utility - utility.max()
        return shifted - np.log(np.exp(shifted).sum())

    def learn(self, base_log_probs: FloatArray, inputs: FloatArray, won: FloatArray) -> None:
        """One SGD step on −Σ y log p for a finished race."""
        probs = np.exp(self.log_probs(base_log_probs, inputs))
        gradient = -(inputs.T @ (won - probs * won.sum()))
        self._optimizer.step(
            self.weights, {n: float(g) for n, g in zip(self.input_names, gradient, strict=True)}
        )
        self.races_learnt += 1

    def state(self) -> dict[str, object]:
        return {
            "input_names": list(self.input_names),
            "learning_rate": self.learning_rate,
            "weights": {name: float(value) for name, value in self.weights.items()},
            "races_learnt": self.races_learnt,
        }

    @classmethod
    def from_state(cls, state: dict[str, object]) -> OnlineResidualModel:
        return cls(
            input_names=tuple(state["input_names"]),  # type: ignore[arg-type]
            learning_rate=float(state["learning_rate"]),  # type: ignore[arg-type]
            weights=dict(state["weights"]),  # type: ignore[call-overload]
            races_learnt=int(state["races_learnt"]),  # type: ignore[call-overload]
        )


@dataclass(frozen=True)
class ProgressiveResult:
    """Predict-then-learn log losses over a period, race by race in time order."""

    races: int
    log_loss_frozen: float
    log_loss_online: float
    online_log_probs: FloatArray

    @property
    def improvement(self) -> float:
        return self.log_loss_frozen - self.log_loss_online


def progressive_evaluation(
    model: OnlineResidualModel,
    base_log_probs: FloatArray,
    inputs: FloatArray,
    won: FloatArray,
    races: RaceBlocks,
) -> ProgressiveResult:
    """Score each race with the current θ, then learn from its result (updates `model`)."""
    online = np.empty_like(base_log_probs)
    for start, size in zip(races.starts, races.sizes, strict=True):
        block = slice(int(start), int(start + size))
        online[block] = model.log_probs(base_log_probs[block], inputs[block])
        model.learn(base_log_probs[block], inputs[block], won[block])
    frozen_ll = races.sum(won * base_log_probs)
    online_ll = races.sum(won * online)
    return ProgressiveResult(
        races=races.n_races,
        log_loss_frozen=-float(frozen_ll.mean()) if races.n_races else 0.0,
        log_loss_online=-float(online_ll.mean()) if races.n_races else 0.0,
        online_log_probs=online,
    )


def keep_online(result: ProgressiveResult, min_improvement: float = MIN_IMPROVEMENT) -> bool:
    """Keep the online component only if it lowered the log loss by at least `min_improvement`."""
    return result.races > 0 and result.improvement >= min_improvement
