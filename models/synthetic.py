"""Synthetic races with known coefficients, in the shape of the real training frame.

Used by the tests to check that the fitting code recovers what generated the data, and that the
whole train → export → score → evaluate path works without the shared HKJC data.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl

TAKEOUT = 0.175


def synthetic_training_frame(
    true_weights: dict[str, float],
    n_races: int,
    seed: int = 0,
    market_noise: float = 0.5,
    market_exponent: float = 0.85,
    dead_heat_share: float = 0.02,
    start: date = date(2016, 1, 1),
) -> pl.DataFrame:
    """One row per starter with race_id, race_date, runner_id, won, win_odds and features.

    Winners are drawn from softmax(Σ w_k·x_k). The market sees the true utility through noise
    and over-rates longshots (exponent < 1), then the takeout is added to its odds, so both the
    fundamentals and the favourite–longshot correction have something to add.
    """
    rng = np.random.default_rng(seed)
    names = list(true_weights)
    weights = np.array([true_weights[n] for n in names])
    sizes = rng.integers(6, 15, size=n_races)
    n = int(sizes.sum())
    race_of = np.repeat(np.arange(n_races), sizes)
    offsets = rng.normal(0.0, 5.0, size=len(names))
    spreads = rng.uniform(0.5, 20.0, size=len(names))
    standard = rng.normal(size=(n, len(names)))
    x = offsets + spreads * standard
    utility = standard @ weights

    won = np.zeros(n)
    place = np.full(n, np.nan)  # the first two of a Plackett–Luce draw; the rest unplaced
    market = np.zeros(n)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    for s, size in zip(starts, sizes, strict=True):
        block = slice(s, s + size)
        p = np.exp(utility[block] - utility[block].max())
        p /= p.sum()
        order = rng.choice(size, size=2, replace=False, p=p)
        if rng.random() < dead_heat_share:
            won[s + order[0]] = won[s + order[1]] = 0.5
            place[s + order] = 1.0
        else:
            won[s + order[0]] = 1.0
            place[s + order] = (1.0, 2.0)
        seen = market_exponent * (utility[block] + rng.normal(0.0, market_noise, size=size))
        q = np.exp(seen - seen.max())
        market[block] = q / q.sum()
    odds = np.round(1.0 / (market * (1.0 + TAKEOUT)), 2).clip(1.01, 999.0)

    race_dates = [start + timedelta(days=int(d)) for d in np.arange(n_races) // 8 * 3]
    return pl.DataFrame(
        {
            "race_id": [f"R{r:06d}" for r in race_of],
            "race_date": [race_dates[r] for r in race_of],
            "runner_id": [f"H{i:07d}" for i in range(n)],
            "won": won,
            "win_odds": odds,
            "finish_position": place,
            **{name: x[:, k] for k, name in enumerate(names)},
        }
    )
