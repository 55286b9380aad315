"""Betting simulation: fractional Kelly on the combined model's edge against the final odds.

HKJC decimal win odds already include the stake and the pool's takeout (17.5% of the win pool),
so a winning bet of s returns s·odds. Races are settled one after another in time order and each
race's stakes are a fraction of the bankroll after the previous race: nothing uses a later
result. The final odds are what a bettor would be paid, but they are only known at the off and
our own bets would move them; this is the standard idealisation of Benter-style studies.
Dead heats pay the dead-heat share of the odds (s·odds·share).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.segments import FloatArray, RaceBlocks


@dataclass(frozen=True)
class BettingResult:
    """Summary of one simulated betting season (bankroll starts at 1)."""

    kelly_fraction: float
    min_edge: float
    max_race_fraction: float
    races: int
    races_bet: int
    bets: int
    turnover: float
    profit: float
    roi: float
    final_bankroll: float
    max_drawdown: float
    flat_stake_bets: int
    flat_stake_roi: float
    bankroll_curve: FloatArray


def kelly_fractions(
    probs: FloatArray,
    odds: FloatArray,
    races: RaceBlocks,
    kelly_fraction: float,
    min_edge: float,
    max_race_fraction: float,
) -> FloatArray:
    """Share of the bankroll staked on each runner.

    Each runner with expected return p·odds − 1 above `min_edge` gets the single-bet Kelly stake
    (p·odds − 1)/(odds − 1) times `kelly_fraction`; a race's total is scaled down to at most
    `max_race_fraction` of the bankroll.
    """
    edge = probs * odds - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        full_kelly = np.where(odds > 1.0, edge / (odds - 1.0), 0.0)
    fractions = np.where(edge > min_edge, kelly_fraction * full_kelly, 0.0)
    race_total = races.sum(fractions)
    over = race_total > max_race_fraction
    scale = np.ones_like(race_total)
    scale[over] = max_race_fraction / race_total[over]
    return fractions * scale[races.index]


def simulate_kelly(
    probs: FloatArray,
    odds: FloatArray,
    won: FloatArray,
    races: RaceBlocks,
    kelly_fraction: float = 0.25,
    min_edge: float = 0.0,
    max_race_fraction: float = 0.2,
) -> BettingResult:
    """Compound the bankroll race by race; also report a flat 1-unit stake on each edge bet."""
    fractions = kelly_fractions(probs, odds, races, kelly_fraction, min_edge, max_race_fraction)
    race_return = 1.0 + races.sum(fractions * (odds * won - 1.0))
    bankroll_after = np.cumprod(race_return)
    bankroll_before = np.concatenate(([1.0], bankroll_after[:-1]))
    stakes = fractions * bankroll_before[races.index]
    turnover = float(stakes.sum())
    profit = float(bankroll_after[-1] - 1.0) if bankroll_after.size else 0.0
    peaks = np.maximum.accumulate(np.concatenate(([1.0], bankroll_after)))
    drawdowns = 1.0 - np.concatenate(([1.0], bankroll_after)) / peaks
    flat = fractions > 0
    flat_count = int(flat.sum())
    flat_profit = float((odds[flat] * won[flat] - 1.0).sum())
    return BettingResult(
        kelly_fraction=kelly_fraction,
        min_edge=min_edge,
        max_race_fraction=max_race_fraction,
        races=races.n_races,
        races_bet=int((races.sum(flat.astype(np.float64)) > 0).sum()),
        bets=flat_count,
        turnover=turnover,
        profit=profit,
        roi=profit / turnover if turnover > 0 else 0.0,
        final_bankroll=float(bankroll_after[-1]) if bankroll_after.size else 1.0,
        max_drawdown=float(drawdowns.max()),
        flat_stake_bets=flat_count,
        flat_stake_roi=flat_profit / flat_count if flat_count else 0.0,
        bankroll_curve=bankroll_after,
    )
