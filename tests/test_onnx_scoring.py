"""The exported ONNX graph must reproduce the numpy reference, fast, one race at a time."""

from __future__ import annotations

import time
from datetime import date

import numpy as np
import pytest

from models.dataset import race_set_from_frame
from models.design import VARIANTS, Design
from models.registry import save_version
from models.scoring import OnnxScorer
from models.segments import RaceBlocks
from models.synthetic import synthetic_training_frame
from models.training import train_two_stage
from models.two_stage import TwoStageModel

WEIGHTS = {"rating": 0.7, "days_since_run": -0.3, "weight_carried": 0.2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    frame = synthetic_training_frame(WEIGHTS, n_races=2500, seed=11)
    data = race_set_from_frame(frame, tuple(WEIGHTS))
    result = train_two_stage(
        data,
        date(2017, 3, 31),
        date(2017, 12, 31),
        l2_grid=(0.01,),
        variants=("race_relative+hinges",),
        with_online=False,
    )
    path = save_version(
        tmp_path_factory.mktemp("registry") / "v1", result.model, None, {"note": "test"}
    )
    test_data = data.between(date(2017, 12, 31), None)
    assert test_data.n_races > 150
    return result.model, test_data, path


def test_onnx_matches_numpy_reference_within_1e5(trained) -> None:
    model, test_data, path = trained
    scorer = OnnxScorer(path)
    assert scorer.feature_names == tuple(WEIGHTS)
    market = test_data.market_probabilities()
    reference_combined = np.exp(model.combined_log_probs(test_data.x, market, test_data.races))
    reference_fundamental = np.exp(model.fundamental_log_probs(test_data.x, test_data.races))
    worst = 0.0
    for start, size in zip(test_data.races.starts, test_data.races.sizes, strict=True):
        block = slice(start, start + size)
        combined, fundamental = scorer.score_with_fundamental(test_data.x[block], market[block])
        assert combined.sum() == pytest.approx(1.0, abs=1e-5)
        worst = max(
            worst,
            float(np.abs(combined - reference_combined[block]).max()),
            float(np.abs(fundamental - reference_fundamental[block]).max()),
        )
    assert worst < 1e-5


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_design_variant_exports_exactly(variant, trained, tmp_path) -> None:
    _, test_data, _ = trained
    race_relative, hinges = VARIANTS[variant]
    design = Design.fit(tuple(WEIGHTS), test_data.x, test_data.races, race_relative, hinges)
    rng = np.random.default_rng(len(variant))
    model = TwoStageModel(
        design=design,
        fundamental_weights=rng.normal(scale=0.3, size=len(design.column_names)),
        fundamental_l2=0.0,
        combination_source="market_residual",
        combination_weights=rng.normal(scale=0.3, size=len(design.column_names)),
        combination_l2=0.0,
        alpha=0.8,
        beta=1.1,
        market_beta=1.05,
    )
    scorer = OnnxScorer(save_version(tmp_path / variant, model, None, {}))
    market = test_data.market_probabilities()
    reference = np.exp(model.combined_log_probs(test_data.x, market, test_data.races))
    fundamental = np.exp(model.fundamental_log_probs(test_data.x, test_data.races))
    for start, size in zip(test_data.races.starts, test_data.races.sizes, strict=True):
        block = slice(start, start + size)
        win, alone = scorer.score_with_fundamental(test_data.x[block], market[block])
        np.testing.assert_allclose(win, reference[block], rtol=0, atol=1e-5)
        np.testing.assert_allclose(alone, fundamental[block], rtol=0, atol=1e-5)


def test_unnormalised_market_probabilities_give_the_same_answer(trained) -> None:
    _, test_data, path = trained
    scorer = OnnxScorer(path)
    block = slice(0, int(test_data.races.sizes[0]))
    odds = test_data.win_odds[block]
    market = (1 / odds) / (1 / odds).sum()
    np.testing.assert_allclose(
        scorer.score(test_data.x[block], 1 / odds),
        scorer.score(test_data.x[block], market),
        atol=1e-6,
    )


def test_scoring_one_race_takes_under_a_millisecond(trained) -> None:
    _, test_data, path = trained
    scorer = OnnxScorer(path)
    block = slice(0, int(test_data.races.sizes[0]))
    features, market = test_data.x[block], test_data.market_probabilities()[block]
    for _ in range(50):
        scorer.score(features, market)
    timings = []
    for _ in range(500):
        started = time.perf_counter()
        scorer.score(features, market)
        timings.append(time.perf_counter() - started)
    assert float(np.median(timings)) < 1e-3


def test_bad_inputs_are_rejected_clearly(trained) -> None:
    _, test_data, path = trained
    scorer = OnnxScorer(path)
    features = test_data.x[:5]
    market = np.full(5, 0.2)
    with pytest.raises(ValueError, match="features must be"):
        scorer.score(features[:, :2], market)
    with pytest.raises(ValueError, match="market_probs must have shape"):
        scorer.score(features, market[:4])
    with pytest.raises(ValueError, match="NaN"):
        scorer.score(np.where(np.eye(5, 3) > 0, np.nan, features), market)
    with pytest.raises(ValueError, match="positive"):
        scorer.score(features, np.array([0.2, 0.2, 0.0, 0.3, 0.3]))


def test_single_runner_race_gets_probability_one(trained) -> None:
    model, test_data, path = trained
    win = OnnxScorer(path).score(test_data.x[:1], np.array([0.7]))
    assert win == pytest.approx([1.0])
    races = RaceBlocks.from_starts([0], 1)
    assert np.exp(model.combined_log_probs(test_data.x[:1], np.array([0.7]), races)) == (
        pytest.approx([1.0])
    )
