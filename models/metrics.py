"""Out-of-sample measures in Benter's terms, plus the usual classification ones.

Benter's pseudo-R² is 1 − logL(model)/logL(uniform), where logL sums each race's log
probability of its winner (dead heats: the shares) and the uniform model gives each of a
race's n runners 1/n. Log loss is −logL per race.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from models.segments import FloatArray, RaceBlocks


def race_log_likelihoods(log_probs: FloatArray, won: FloatArray, races: RaceBlocks) -> FloatArray:
    """Σ y_i log p_i for each race."""
    return races.sum(won * log_probs)


def uniform_log_likelihoods(won: FloatArray, races: RaceBlocks) -> FloatArray:
    """The same for the uniform model p = 1/n."""
    return -np.log(races.sizes.astype(np.float64)) * races.sum(won)


def pseudo_r2(log_probs: FloatArray, won: FloatArray, races: RaceBlocks) -> float:
    """Benter's pseudo-R² over all races."""
    uniform = float(uniform_log_likelihoods(won, races).sum())
    return 1.0 - float(race_log_likelihoods(log_probs, won, races).sum()) / uniform


def log_loss(log_probs: FloatArray, won: FloatArray, races: RaceBlocks) -> float:
    """Mean negative log-likelihood of the winner per race."""
    return -float(race_log_likelihoods(log_probs, won, races).mean())


def auc(scores: FloatArray, positive: np.ndarray) -> float:
    """Area under the ROC curve by the Mann–Whitney rank statistic (ties get mid-ranks)."""
    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def top_pick_win_rate(probs: FloatArray, won: FloatArray, races: RaceBlocks) -> float:
    """Share of races won by the runner the model rates highest (dead-heat shares count)."""
    best = races.max(probs)[races.index]
    is_top = probs >= best
    top_count = races.sum(is_top.astype(np.float64))
    return float((races.sum(won * is_top) / top_count).mean())


@dataclass(frozen=True)
class CalibrationBin:
    low: float
    high: float
    runners: int
    mean_predicted: float
    observed_win_rate: float


def calibration_table(
    probs: FloatArray, won: FloatArray, edges: FloatArray
) -> list[CalibrationBin]:
    """Mean predicted probability vs observed win rate per probability bin."""
    bins = np.clip(np.searchsorted(edges, probs, side="right") - 1, 0, edges.size - 2)
    table = []
    for b in range(edges.size - 1):
        members = bins == b
        count = int(members.sum())
        if count == 0:
            continue
        table.append(
            CalibrationBin(
                low=float(edges[b]),
                high=float(edges[b + 1]),
                runners=count,
                mean_predicted=float(probs[members].mean()),
                observed_win_rate=float(won[members].mean()),
            )
        )
    return table


CALIBRATION_EDGES = np.array([0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0])
