"""Unit tests of the evaluation measures, the Kelly simulation and the online keep/discard rule."""

from __future__ import annotations

import numpy as np
import pytest

from models.betting import kelly_fractions, simulate_kelly
from models.metrics import auc, calibration_table, log_loss, pseudo_r2, top_pick_win_rate
from models.online import (
    OnlineResidualModel,
    ProgressiveResult,
    keep_online,
    progressive_evaluation,
)
from models.segments import RaceBlocks


def test_pseudo_r2_is_zero_for_uniform_and_one_for_certainty() -> None:
    races = RaceBlocks.from_starts([0, 4], 10)
    won = np.zeros(10)
    won[[1, 7]] = 1.0
    uniform = np.log(np.concatenate([np.full(4, 0.25), np.full(6, 1 / 6)]))
    assert pseudo_r2(uniform, won, races) == pytest.approx(0.0)
    assert log_loss(uniform, won, races) == pytest.approx((np.log(4) + np.log(6)) / 2)
    certain = np.log(np.where(won > 0, 1.0, 1e-300))
    assert pseudo_r2(certain, won, races) == pytest.approx(1.0)


def test_pseudo_r2_counts_dead_heat_shares() -> None:
    races = RaceBlocks.from_starts([0], 4)
    won = np.array([0.5, 0.5, 0.0, 0.0])
    probs = np.array([0.4, 0.1, 0.3, 0.2])
    expected = 1 - (0.5 * np.log(0.4) + 0.5 * np.log(0.1)) / np.log(0.25)
    assert pseudo_r2(np.log(probs), won, races) == pytest.approx(expected)


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(200), 2)  # rounding creates ties
    positive = rng.random(200) < 0.3
    pos, neg = scores[positive], scores[~positive]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert auc(scores, positive) == pytest.approx(pairwise)


def test_top_pick_and_calibration() -> None:
    races = RaceBlocks.from_starts([0, 3], 6)
    probs = np.array([0.6, 0.3, 0.1, 0.2, 0.5, 0.3])
    won = np.array([1.0, 0, 0, 1.0, 0, 0])
    assert top_pick_win_rate(probs, won, races) == pytest.approx(0.5)
    table = calibration_table(probs, won, np.array([0.0, 0.25, 1.0]))
    assert [b.runners for b in table] == [2, 4]
    assert table[0].observed_win_rate == pytest.approx(0.5)
    assert table[1].mean_predicted == pytest.approx((0.6 + 0.3 + 0.5 + 0.3) / 4)


def test_kelly_stakes_only_positive_edges_and_caps_each_race() -> None:
    races = RaceBlocks.from_starts([0, 3], 6)
    probs = np.array([0.5, 0.3, 0.2, 0.9, 0.05, 0.05])
    odds = np.array([3.0, 2.0, 4.0, 5.0, 10.0, 30.0])
    fractions = kelly_fractions(probs, odds, races, 1.0, 0.0, max_race_fraction=0.5)
    # race 1: only runner 0 has an edge (0.5·3 − 1 = 0.5), Kelly 0.5/2 = 0.25
    np.testing.assert_allclose(fractions[:3], [0.25, 0.0, 0.0])
    # race 2: runner 3 (Kelly 3.5/4 = 0.875) and runner 5 (0.5/29) capped to 0.5 in total
    assert fractions[3:].sum() == pytest.approx(0.5)
    assert fractions[4] == 0.0


def test_kelly_simulation_compounds_in_time_order_without_look_ahead() -> None:
    races = RaceBlocks.from_starts([0, 2], 4)
    probs = np.array([0.6, 0.4, 0.6, 0.4])
    odds = np.array([2.0, 2.4, 2.0, 2.4])
    won = np.array([1.0, 0.0, 0.0, 1.0])
    result = simulate_kelly(probs, odds, won, races, kelly_fraction=0.5, max_race_fraction=1.0)
    # Each race stakes 0.5 · (0.2/1) = 0.1 of the bankroll on runner 0 (edge 0.2): win then lose.
    np.testing.assert_allclose(result.bankroll_curve, [1.1, 1.1 * 0.9])
    assert result.turnover == pytest.approx(0.1 + 0.11)
    assert result.profit == pytest.approx(1.1 * 0.9 - 1)
    assert result.roi == pytest.approx((1.1 * 0.9 - 1) / 0.21)
    assert result.max_drawdown == pytest.approx(0.1)
    assert result.bets == 2 and result.flat_stake_roi == pytest.approx(0.0)


def _races_with_hidden_signal(n_races: int, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    size = 8
    races = RaceBlocks.from_starts(np.arange(n_races) * size, n_races * size)
    hidden = rng.normal(size=n_races * size)
    base = races.log_softmax(rng.normal(size=n_races * size))
    truth = races.softmax(base + 1.0 * hidden)
    won = np.zeros(n_races * size)
    for r in range(n_races):
        won[r * size + rng.choice(size, p=truth[r * size : (r + 1) * size])] = 1.0
    return races, base, hidden[:, None], won


def test_online_component_kept_when_it_learns_a_missing_signal() -> None:
    races, base, hidden, won = _races_with_hidden_signal(1500, seed=4)
    model = OnlineResidualModel(("hidden",), learning_rate=0.02)
    result = progressive_evaluation(model, base, hidden, won, races)
    assert model.weights["hidden"] > 0.5
    assert model.races_learnt == 1500
    assert result.improvement > 0.05
    assert keep_online(result)


def test_online_component_discarded_when_nothing_to_learn() -> None:
    races, base, _, won = _races_with_hidden_signal(1500, seed=5)
    truth = races.log_softmax(base)  # the frozen model below is the true one for these winners
    rng = np.random.default_rng(6)
    for r in range(races.n_races):
        block = slice(r * 8, (r + 1) * 8)
        won[block] = 0.0
        won[r * 8 + rng.choice(8, p=np.exp(truth[block]))] = 1.0
    noise = rng.normal(size=(won.size, 1))
    result = progressive_evaluation(
        OnlineResidualModel(("noise",), learning_rate=0.02), truth, noise, won, races
    )
    assert result.improvement < 1e-4
    assert not keep_online(result)


def test_keep_rule_thresholds() -> None:
    empty = np.zeros(0)
    assert keep_online(ProgressiveResult(100, 2.0, 2.0 - 2e-4, empty))
    assert not keep_online(ProgressiveResult(100, 2.0, 2.0 - 5e-5, empty))
    assert not keep_online(ProgressiveResult(100, 2.0, 2.1, empty))
    assert not keep_online(ProgressiveResult(0, 0.0, 0.0, empty))


def test_online_state_round_trip() -> None:
    model = OnlineResidualModel(("a", "b"), learning_rate=0.01, weights={"a": 0.5})
    restored = OnlineResidualModel.from_state(model.state())
    assert restored.weights == {"a": 0.5, "b": 0.0}
    assert restored.learning_rate == 0.01
