"""Train → save → evaluate → report on synthetic races, and the `velo models` sub-commands."""

from __future__ import annotations

import argparse
from datetime import date

import orjson
import pytest

from cli import models as models_cli
from models.dataset import race_set_from_frame
from models.evaluation import evaluate, online_input_names
from models.online import OnlineResidualModel
from models.pipeline import run_evaluation, train_and_save
from models.report import write_report
from models.synthetic import synthetic_training_frame

WEIGHTS = {"form_a": 0.6, "form_b": -0.3, "tie_a": 0.25, "tie_b": 0.0}
GROUPS = {"form": ("form_a", "form_b"), "tie": ("tie_a", "tie_b")}
EXPECTED_KEYS = {
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
}


@pytest.fixture(scope="module")
def data():
    frame = synthetic_training_frame(WEIGHTS, n_races=4000, seed=5, market_noise=0.8)
    return race_set_from_frame(frame, tuple(WEIGHTS))


@pytest.fixture(scope="module")
def version(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    return train_and_save(
        data,
        date(2017, 12, 31),
        date(2018, 12, 31),
        None,
        root,
        "synthetic",
        GROUPS,
        l2_grid=(0.1, 0.01, 0.001),
        variants=("linear", "race_relative"),
    )


def test_metadata_records_provenance_and_decisions(version) -> None:
    meta = version.metadata
    assert meta["feature_names"] == list(WEIGHTS)
    assert meta["feature_groups"] == {g: list(c) for g, c in GROUPS.items()}
    assert len(meta["training_data_hash"]) == 64 and len(meta["feature_code_hash"]) == 64
    assert meta["data_window"]["train_until"] == "2017-12-31"
    assert meta["data_window"]["valid_dates"][1] <= "2018-12-31"
    # 2 variants x 2 stage-1 models x 3 L2 strengths
    assert len(meta["search"]) == 12
    assert meta["stage1"]["variant"] in ("linear", "race_relative")
    assert meta["stage1"]["combination_l2"] in (0.1, 0.01, 0.001)
    assert set(meta["stage1"]["fundamental_weights"]) == set(meta["stage1"]["combination_weights"])
    assert set(meta["stage2"]) == {"alpha", "beta", "market_beta"}
    assert meta["online"]["kept"] == (version.online is not None)
    assert meta["online"]["races"] == meta["data_window"]["valid_races"]
    assert version.version.endswith(meta["training_data_hash"][:8])


def test_evaluation_is_out_of_sample_and_complete(version, data, tmp_path) -> None:
    run = run_evaluation(version, data, date(2019, 1, 1), None, with_ablation=True)
    summary = run.summary
    assert set(summary) >= EXPECTED_KEYS
    assert not summary["overlaps_fitting_period"]
    assert summary["window"][0] >= "2019-01-01"
    # The synthetic fundamentals are the truth the market only sees through noise.
    assert summary["fundamental_r2"] > summary["market_r2"]
    assert summary["combined_r2"] >= summary["market_recalibrated_r2"]
    assert summary["delta_r2"] == pytest.approx(summary["combined_r2"] - summary["market_r2"])
    assert 0.5 < summary["auc"] < 1.0
    groups = {row["group"]: row for row in run.ablation}
    assert set(groups) == {"form", "tie"}
    assert groups["form"]["fundamental_r2_loss"] > groups["tie"]["fundamental_r2_loss"] > 0
    report = write_report(run, version, tmp_path / "report")
    text = report.read_text()
    assert "Benter (1994)" in text and "0.1396" in text and "Ablation" in text
    assert (tmp_path / "report" / "calibration.png").stat().st_size > 1000
    assert (tmp_path / "report" / "bankroll.png").stat().st_size > 1000
    assert (
        orjson.loads((tmp_path / "report" / "metrics.json").read_bytes())["races"]
        == (summary["races"])
    )


def test_overlapping_window_is_flagged(version, data) -> None:
    run = run_evaluation(version, data, date(2018, 6, 1), date(2018, 12, 31))
    assert run.summary["overlaps_fitting_period"]


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    models_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_models_list_show_promote(version, capsys) -> None:
    root = str(version.path.parent)
    assert _run_cli(["models", "list", "--root", root, "--json"]) == 0
    listed = orjson.loads(capsys.readouterr().out)
    assert [item["version"] for item in listed] == [version.version]
    assert not listed[0]["promoted"]
    assert _run_cli(["models", "promote", version.version, "--root", root]) == 0
    capsys.readouterr()
    assert _run_cli(["models", "show", "--root", root]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert shown["version"] == version.version and shown["stage2"] == version.metadata["stage2"]
    assert _run_cli(["models", "promote", "missing", "--root", root]) == 2
    assert "missing" in capsys.readouterr().err


def test_a_kept_online_component_keeps_learning_through_the_evaluation(version, data) -> None:
    online = OnlineResidualModel(online_input_names(version.model), learning_rate=0.001)
    window = data.between(date(2018, 12, 31), None)
    evaluation = evaluate(version.model, window, online=online)
    assert online.races_learnt == window.n_races
    assert evaluation.online is not None and evaluation.online.races == window.n_races
    assert evaluation.metrics["log_loss_online"] == pytest.approx(evaluation.online.log_loss_online)
    assert evaluation.metrics["online_r2"] < 1.0
