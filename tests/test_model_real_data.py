"""Real HKJC data (skips without it): `velo train` on a short window, then `velo evaluate --json`
on the following season; checks the JSON contract, sane ranges and ONNX == numpy on real races."""

from __future__ import annotations

import argparse
from datetime import date

import numpy as np
import orjson
import pytest

from cli import models as models_cli
from models.pipeline import load_race_set
from models.registry import load_version
from models.scoring import OnnxScorer

pytestmark = pytest.mark.data

CONTRACT_KEYS = (
    "races",
    "market_r2",
    "market_recalibrated_r2",
    "fundamental_r2",
    "combined_r2",
    "delta_r2",
    "log_loss_market",
    "log_loss_combined",
    "auc",
    "roi",
)


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    models_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_train_then_evaluate_on_the_next_season(hkjc_dir, tmp_path, capsys) -> None:
    model_dir = tmp_path / "registry" / "real-v1"
    assert (
        _run_cli(
            [
                "train",
                "--hkjc",
                str(hkjc_dir),
                "--train-until",
                "2019-08-31",
                "--valid-until",
                "2020-08-31",
                "--out",
                str(model_dir),
                "--variants",
                "linear",
                "--l2-grid",
                "3.0",
                "0.1",
                "--json",
            ]
        )
        == 0
    )
    trained = orjson.loads(capsys.readouterr().out)
    assert trained["path"] == str(model_dir)
    assert trained["validation"]["races"] > 500

    report_dir = tmp_path / "report"
    argv = ["evaluate", "--hkjc", str(hkjc_dir), "--model", str(model_dir)]
    argv += ["--from", "2020-09-01", "--to", "2021-08-31", "--json", "--report", str(report_dir)]
    assert _run_cli(argv) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON object on stdout
    result = orjson.loads(out)
    assert set(CONTRACT_KEYS) <= set(result)
    assert 600 < result["races"] < 1000  # one HK season
    assert not result["overlaps_fitting_period"]
    assert 0.15 < result["market_r2"] < 0.25
    assert abs(result["market_recalibrated_r2"] - result["market_r2"]) < 0.01
    assert 0.02 < result["fundamental_r2"] < 0.25
    assert result["combined_r2"] > result["market_r2"] - 0.005
    assert result["delta_r2"] == pytest.approx(result["combined_r2"] - result["market_r2"])
    assert 1.5 < result["log_loss_combined"] < 2.6 and 1.5 < result["log_loss_market"] < 2.6
    assert 0.7 < result["auc"] < 0.9
    assert -1.0 <= result["roi"] < 1.0
    assert (report_dir / "report.md").is_file() and (report_dir / "calibration.png").is_file()

    version = load_version(model_dir)
    data = load_race_set(hkjc_dir, version.model.feature_names)
    season = data.between(date(2020, 8, 31), date(2021, 8, 31))
    market = season.market_probabilities()
    reference = np.exp(version.model.combined_log_probs(season.x, market, season.races))
    scorer = OnnxScorer(model_dir)
    worst = 0.0
    for start, size in zip(season.races.starts[:200], season.races.sizes[:200], strict=True):
        block = slice(start, start + size)
        worst = max(
            worst,
            float(np.abs(scorer.score(season.x[block], market[block]) - reference[block]).max()),
        )
    assert worst < 1e-5


def test_walk_forward_on_two_seasons(hkjc_dir, capsys) -> None:
    argv = ["walk-forward", "--hkjc", str(hkjc_dir), "--from", "2019-09-01"]
    argv += ["--until", "2021-08-31", "--variant", "linear", "--fundamental-l2", "3.0"]
    argv += ["--combination-source", "market_residual", "--combination-l2", "3.0", "--json"]
    assert _run_cli(argv) == 0
    result = orjson.loads(capsys.readouterr().out)
    data = load_race_set(hkjc_dir)
    rows = result["seasons"]
    assert [(row["from"], row["to"]) for row in rows] == [
        ("2019-09-01", "2020-08-31"),
        ("2020-09-01", "2021-08-31"),
    ]
    assert [row["races"] for row in rows] == [
        data.between(date(2019, 8, 31), date(2020, 8, 31)).n_races,
        data.between(date(2020, 8, 31), date(2021, 8, 31)).n_races,
    ]
    for row in rows:
        assert 0.15 < row["market_r2"] < 0.25 and 0.05 < row["fundamental_r2"] < 0.25
        assert row["gain"] == pytest.approx(row["combined_r2"] - row["market_recalibrated_r2"])
        assert abs(row["gain"]) < 0.01  # the odds already hold nearly everything
    assert "model_version" not in result  # every setting given: no model read
