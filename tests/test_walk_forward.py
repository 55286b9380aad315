"""Walk-forward evidence (models.walk_forward) on synthetic races the market partly misreads."""

from __future__ import annotations

import argparse
from dataclasses import replace
from datetime import date

import numpy as np
import pytest

from cli import models as models_cli
from models.dataset import race_set_from_frame
from models.synthetic import synthetic_training_frame
from models.walk_forward import (
    WalkForwardSettings,
    seasons,
    walk_forward,
    walk_forward_ablation,
)

# Synthetic races run from 2016 to mid-2022 (8 races every 3 days).
WINDOWS = seasons(date(2018, 12, 31), date(2021, 12, 31))
SETTINGS = WalkForwardSettings("linear", 0.1, "market_residual", 1.0)
TRUE_WEIGHTS = {"speed": 0.8, "rating": -0.5, "noise": 0.0}


@pytest.fixture(scope="module")
def races():
    frame = synthetic_training_frame(TRUE_WEIGHTS, n_races=6000, seed=11, market_noise=0.8)
    return race_set_from_frame(frame, tuple(TRUE_WEIGHTS))


def test_each_season_is_predicted_by_earlier_races_and_gains_over_a_noisy_market(races) -> None:
    result = walk_forward(races, WINDOWS, SETTINGS)
    rows = result["seasons"]
    assert [(row["from"], row["to"]) for row in rows] == [
        ("2019-01-01", "2019-12-31"),
        ("2020-01-01", "2020-12-31"),
        ("2021-01-01", "2021-12-31"),
    ]
    assert [row["races"] for row in rows] == [
        races.between(after, until).n_races for after, until in WINDOWS
    ]
    for row in rows:
        assert row["gain"] == pytest.approx(row["combined_r2"] - row["market_recalibrated_r2"])
        # The market sees the utility through noise: the features add in every season.
        assert row["gain"] > 0.005 and row["fundamental_r2"] > 0.05
    gains = np.array([row["gain"] for row in rows])
    assert result["mean_gain"] == pytest.approx(gains.mean())
    assert result["se_gain"] == pytest.approx(gains.std(ddof=1) / np.sqrt(3))
    assert result["seasons_with_gain"] == 3


def test_a_seasons_stage2_is_fitted_on_the_other_seasons_only(races) -> None:
    """Scrambling the last season's results changes its scores but not its α and β, and
    leaves the earlier seasons' stage-1 predictions alone (they never saw it)."""
    before = walk_forward(races, WINDOWS, SETTINGS)["seasons"]
    after, until = (np.datetime64(day, "D") for day in WINDOWS[-1])
    in_last = (races.race_dates > after) & (races.race_dates <= until)
    runners = in_last[races.races.index]
    won = races.won.copy()
    won[runners] = np.roll(won[runners], 1)  # every winner moves to a neighbour
    scrambled = walk_forward(replace(races, won=won), WINDOWS, SETTINGS)["seasons"]
    assert scrambled[-1]["alpha"] == pytest.approx(before[-1]["alpha"])
    assert scrambled[-1]["beta"] == pytest.approx(before[-1]["beta"])
    assert scrambled[-1]["combined_r2"] != pytest.approx(before[-1]["combined_r2"])
    assert scrambled[0]["alpha"] != pytest.approx(before[0]["alpha"])
    earlier = [row["fundamental_r2"] for row in before[:-1]]
    assert [row["fundamental_r2"] for row in scrambled[:-1]] == pytest.approx(earlier)


def test_ablation_finds_the_informative_feature(races) -> None:
    groups = {"speed": ("speed",), "noise": ("noise",)}
    rows = {row["group"]: row for row in walk_forward_ablation(races, WINDOWS, SETTINGS, groups)}
    assert rows["speed"]["without_mean_gain"] < rows["noise"]["without_mean_gain"]
    assert rows["speed"]["alone_mean_fundamental_r2"] > rows["noise"]["alone_mean_fundamental_r2"]
    assert abs(rows["noise"]["alone_mean_gain"]) < 0.003


def test_bad_settings_and_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="two seasons"):
        seasons(date(2020, 8, 31), date(2021, 8, 31))
    with pytest.raises(ValueError, match="variant"):
        WalkForwardSettings("cubic", 0.1, "fundamental", 1.0)
    with pytest.raises(ValueError, match="source"):
        WalkForwardSettings("linear", 0.1, "tips", 1.0)
    with pytest.raises(ValueError, match="L2"):
        WalkForwardSettings("linear", -1.0, "fundamental", 1.0)


def test_cli_without_a_model_needs_every_setting(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    models_cli.register(parser.add_subparsers(dest="command", required=True))
    argv = ["walk-forward", "--hkjc", str(tmp_path), "--root", str(tmp_path / "registry")]
    argv += ["--from", "2019-09-01", "--until", "2021-08-31", "--variant", "linear"]
    args = parser.parse_args(argv)
    assert args.func(args) == models_cli.EXIT_BAD_INPUT
    assert "--fundamental-l2" in capsys.readouterr().err
