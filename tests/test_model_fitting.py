"""Unit tests of the model's fitting code on synthetic races with known coefficients."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import numpy as np
import polars as pl
import pytest
from scipy.optimize import approx_fprime

from models.conditional_logit import Standardizer, fit_conditional_logit, objective_and_gradient
from models.dataset import RaceSet, placing_races, race_set_from_frame
from models.design import RACE_STD_FLOOR, race_z_scores
from models.segments import RaceBlocks
from models.synthetic import synthetic_training_frame
from models.training import Stage1Rows, fit_stage1, train_two_stage, validation_folds
from models.two_stage import fit_market_residual, fit_stage2

VARIANTS = ("linear", "race_relative")
TRUE_WEIGHTS = {"speed": 0.8, "rating": -0.5, "draw": 0.3, "noise": 0.0}


@pytest.fixture(scope="module")
def synthetic_races():
    frame = synthetic_training_frame(TRUE_WEIGHTS, n_races=6000, seed=7)
    return race_set_from_frame(frame, tuple(TRUE_WEIGHTS))


def test_softmax_sums_to_one_within_each_race() -> None:
    rng = np.random.default_rng(0)
    races = RaceBlocks.from_starts([0, 3, 10, 11], 20)
    utilities = rng.normal(scale=50.0, size=20)
    probs = races.softmax(utilities)
    np.testing.assert_allclose(races.sum(probs), np.ones(4), atol=1e-12)
    assert probs[10] == pytest.approx(1.0)
    first = np.exp(utilities[:3] - utilities[:3].max())
    np.testing.assert_allclose(probs[:3], first / first.sum(), rtol=1e-12)


def test_race_z_scores_are_within_race_standardised_with_a_floor() -> None:
    races = RaceBlocks.from_starts([0, 4, 7], 8)
    xs = np.array([[1.0], [2.0], [3.0], [6.0], [5.0], [5.0], [5.01], [9.0]])
    z = race_z_scores(xs, races)
    first = xs[:4, 0]
    np.testing.assert_allclose(z[:4, 0], (first - first.mean()) / first.std())
    # a near-constant race is divided by the floor, not by its tiny spread
    np.testing.assert_allclose(z[4:7, 0], (xs[4:7, 0] - xs[4:7, 0].mean()) / RACE_STD_FLOOR)
    assert z[7, 0] == 0.0  # a single runner has nothing to be relative to


def test_race_blocks_reject_bad_starts() -> None:
    with pytest.raises(ValueError):
        RaceBlocks.from_starts([1, 3], 5)
    with pytest.raises(ValueError):
        RaceBlocks.from_starts([0, 3, 3], 5)


def test_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(1)
    races = RaceBlocks.from_starts([0, 5, 12, 20], 27)
    x = rng.normal(size=(27, 4))
    y = np.zeros(27)
    y[[2, 7, 15]] = 1.0
    y[[21, 25]] = 0.5  # a dead heat
    weights = rng.normal(size=4)
    _, analytic = objective_and_gradient(weights, x, y, races, l2=0.3)
    numeric = approx_fprime(weights, lambda w: objective_and_gradient(w, x, y, races, 0.3)[0], 1e-7)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_recovers_known_coefficients(synthetic_races) -> None:
    standardizer = Standardizer.fit(synthetic_races.x)
    fit = fit_conditional_logit(
        standardizer.transform(synthetic_races.x), synthetic_races.won, synthetic_races.races
    )
    assert fit.converged
    # The synthetic utility uses unit-variance features, so standardised weights are comparable.
    np.testing.assert_allclose(fit.weights, list(TRUE_WEIGHTS.values()), atol=0.06)


def test_placing_races_add_each_later_place_among_the_unplaced() -> None:
    nan = np.nan
    places = np.array([3, 1, 2, 4, 1, 1, 3, nan, 1, 2, 2, nan])
    won = np.array([0, 1, 0, 0, 0.5, 0.5, 0, 0, 1, 0, 0, 0])
    races = RaceBlocks.from_starts([0, 4, 8], 12)
    data = RaceSet(
        feature_names=(),
        races=races,
        race_ids=np.array(["a", "b", "c"]),
        race_dates=np.array(["2020-01-01"] * 3, dtype="datetime64[D]"),
        runner_ids=np.array([str(i) for i in range(12)]),
        x=np.zeros((12, 0)),
        won=won,
        win_odds=np.full(12, 4.0),
        places=places,
    )
    win_only = placing_races(data, (1.0,))
    assert np.array_equal(win_only.index, np.arange(12)) and np.array_equal(win_only.y, won)
    placings = placing_races(data, (1.0, 0.5, 0.25))
    # 2nd place: race a among runners 0, 2, 3; race b has none (dead heat for 1st); race c has
    # a dead heat for 2nd among 9, 10, 11. 3rd place: a among 0, 3; b among 6, 7; c has none.
    expected = [
        *range(12),
        *[(0, 0.0), (2, 0.5), (3, 0.0)],
        *[(9, 0.25), (10, 0.25), (11, 0.0)],
        *[(0, 0.25), (3, 0.0)],
        *[(6, 0.25), (7, 0.0)],
    ]
    rows = [(int(i), float(y)) for i, y in zip(placings.index[12:], placings.y[12:], strict=True)]
    assert rows == expected[12:]
    assert placings.races.sizes.tolist() == [4, 4, 4, 3, 3, 2, 2]
    with pytest.raises(ValueError, match="positive"):
        placing_races(data, (1.0, 0.0))


def test_later_places_sharpen_the_estimates() -> None:
    """The synthetic 2nd place is a Plackett–Luce draw from the same utility: fitting it too
    recovers the weights, closer than the win alone on the same races."""
    data = race_set_from_frame(
        synthetic_training_frame(TRUE_WEIGHTS, n_races=1500, seed=21), tuple(TRUE_WEIGHTS)
    )
    x = Standardizer.fit(data.x).transform(data.x)
    truth = np.array(list(TRUE_WEIGHTS.values()))
    errors = []
    for place_weights in ((1.0,), (1.0, 1.0)):
        rows = Stage1Rows.of(x, data, place_weights)
        weights = fit_stage1("fundamental", rows, l2=0.0)
        errors.append(np.abs(weights - truth).max())
    assert errors[1] < errors[0] and errors[1] < 0.08


def test_l2_shrinks_weights(synthetic_races) -> None:
    x = Standardizer.fit(synthetic_races.x).transform(synthetic_races.x)
    free = fit_conditional_logit(x, synthetic_races.won, synthetic_races.races, l2=0.0)
    shrunk = fit_conditional_logit(x, synthetic_races.won, synthetic_races.races, l2=1.0)
    assert np.linalg.norm(shrunk.weights) < 0.7 * np.linalg.norm(free.weights)


def test_market_residual_model_finds_what_the_market_misses() -> None:
    rng = np.random.default_rng(8)
    n_races, size = 6000, 10
    races = RaceBlocks.from_starts(np.arange(n_races) * size, n_races * size)
    market_view, missed, noise = rng.normal(size=(3, n_races * size))
    log_pi = races.log_softmax(market_view)
    seen = market_view + 0.5 * noise  # a feature whose information the odds already hold
    probs = races.softmax(market_view + 0.4 * missed)
    won = np.zeros(n_races * size)
    for r in range(n_races):
        won[r * size + rng.choice(size, p=probs[r * size : (r + 1) * size])] = 1.0
    x = np.column_stack([seen, missed])
    weights, gamma, fit = fit_market_residual(x, np.exp(log_pi), won, races, l2=0.0)
    assert fit.converged
    # `seen` is already in the odds, so only `missed` keeps a weight; γ carries the market.
    np.testing.assert_allclose(weights, [0.0, 0.4], atol=0.06)
    assert gamma == pytest.approx(1.0, abs=0.08)
    # L2 shrinks the feature weights but never the market term.
    shrunk, shrunk_gamma, _ = fit_market_residual(x, np.exp(log_pi), won, races, l2=10.0)
    assert np.abs(shrunk).max() < 0.05 and shrunk_gamma == pytest.approx(1.0, abs=0.1)


def test_stage2_recovers_alpha_and_beta() -> None:
    rng = np.random.default_rng(3)
    n_races, size = 8000, 10
    races = RaceBlocks.from_starts(np.arange(n_races) * size, n_races * size)
    log_f = races.log_softmax(rng.normal(size=n_races * size))
    log_pi = races.log_softmax(rng.normal(size=n_races * size))
    true_utility = 0.6 * log_f + 1.2 * log_pi
    probs = races.softmax(true_utility)
    won = np.zeros(n_races * size)
    for r in range(n_races):
        block = slice(r * size, (r + 1) * size)
        won[r * size + rng.choice(size, p=probs[block])] = 1.0
    fit = fit_stage2(log_f, np.exp(log_pi), won, races)
    assert fit.alpha == pytest.approx(0.6, abs=0.06)
    assert fit.beta == pytest.approx(1.2, abs=0.06)


def test_dataset_drops_unusable_races_with_reasons() -> None:
    frame = synthetic_training_frame({"a": 1.0}, n_races=6, seed=2)
    race_ids = frame["race_id"].unique(maintain_order=True).to_list()
    frame = frame.with_columns(
        win_odds=pl.when((pl.col("race_id") == race_ids[0]) & (pl.col("won") == 0))
        .then(None)
        .otherwise(pl.col("win_odds")),
        a=pl.when(pl.col("race_id") == race_ids[1]).then(float("nan")).otherwise(pl.col("a")),
        won=pl.when(pl.col("race_id") == race_ids[2]).then(0.0).otherwise(pl.col("won")),
    )
    data = race_set_from_frame(frame, ("a",))
    assert data.n_races == 3
    assert data.dropped == {
        "missing_or_invalid_odds": 1,
        "no_single_result": 1,
        "non_finite_features": 1,
    }
    assert set(data.race_ids) == set(race_ids[3:])
    with pytest.raises(ValueError, match="lacks columns"):
        race_set_from_frame(frame.drop("win_odds"), ("a",))


def test_dataset_orders_races_in_time_and_splits(synthetic_races) -> None:
    assert np.all(np.diff(synthetic_races.race_dates.astype(np.int64)) >= 0)
    train = synthetic_races.between(None, date(2018, 12, 31))
    valid = synthetic_races.between(date(2018, 12, 31), date(2020, 12, 31))
    assert train.race_dates.max() <= np.datetime64("2018-12-31")
    assert valid.race_dates.min() > np.datetime64("2018-12-31")
    assert train.n_races + valid.n_races <= synthetic_races.n_races
    np.testing.assert_allclose(valid.races.sum(valid.market_probabilities()), 1.0)


def test_train_two_stage_picks_l2_on_validation_and_never_reads_test(synthetic_races) -> None:
    train_until, valid_until = date(2019, 12, 31), date(2021, 12, 31)
    result = train_two_stage(
        synthetic_races, train_until, valid_until, l2_grid=(1.0, 0.01, 0.0001), variants=VARIANTS
    )
    search = result.details["search"]
    assert len(search) == 3 * len(VARIANTS) * 2
    best = min(search, key=lambda row: row["valid_log_loss_combined"])
    model = result.model
    assert (model.design.variant, model.combination_source, model.combination_l2) == (
        best["variant"],
        best["source"],
        best["l2"],
    )
    best_fundamental = min(
        (r for r in search if r["source"] == "fundamental" and r["variant"] == best["variant"]),
        key=lambda row: row["valid_log_loss_stage1"],
    )
    assert model.fundamental_l2 == best_fundamental["l2"]
    assert result.details["windows"]["validation"][1] <= str(valid_until)
    # Changing every test-period result must not change the fitted model.
    test_mask = synthetic_races.race_dates > np.datetime64(valid_until)
    scrambled = synthetic_races.won.copy()
    runners = test_mask[synthetic_races.races.index]
    scrambled[runners] = np.roll(scrambled[runners], 1)
    again = train_two_stage(
        replace(synthetic_races, won=scrambled),
        train_until,
        valid_until,
        l2_grid=(1.0, 0.01, 0.0001),
        variants=VARIANTS,
    )
    np.testing.assert_array_equal(again.model.combination_weights, model.combination_weights)
    np.testing.assert_array_equal(again.model.fundamental_weights, model.fundamental_weights)
    assert again.model.alpha == model.alpha
    # Stage 1 is refitted on training + validation races, so validation results do matter.
    valid_runners = (
        (synthetic_races.race_dates > np.datetime64(train_until))
        & (synthetic_races.race_dates <= np.datetime64(valid_until))
    )[synthetic_races.races.index]
    changed = synthetic_races.won.copy()
    changed[valid_runners] = np.roll(changed[valid_runners], 1)
    refit = train_two_stage(
        replace(synthetic_races, won=changed),
        train_until,
        valid_until,
        l2_grid=(model.combination_l2,),
        variants=(model.design.variant,),
        sources=(model.combination_source,),
        with_online=False,
    )
    assert not np.allclose(refit.model.combination_weights, model.combination_weights)


def test_validation_folds_walk_forward_by_year() -> None:
    assert validation_folds(date(2021, 8, 31), date(2023, 8, 31)) == [
        (date(2021, 8, 31), date(2022, 8, 31)),
        (date(2022, 8, 31), date(2023, 8, 31)),
    ]
    assert validation_folds(date(2021, 8, 31), date(2022, 3, 1)) == [
        (date(2021, 8, 31), date(2022, 3, 1))
    ]
    # Calendar years: a leap day inside a fold does not shift the later cuts.
    folds = validation_folds(date(2018, 8, 31), date(2023, 8, 31))
    assert [end for _, end in folds] == [date(y, 8, 31) for y in range(2019, 2024)]
    assert validation_folds(date(2020, 2, 29), date(2021, 6, 1))[0] == (
        date(2020, 2, 29),
        date(2021, 2, 28),
    )
