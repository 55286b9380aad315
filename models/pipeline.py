"""What `velo train` and `velo evaluate` do, from the HKJC directory to artifacts and reports.

The features come from `models.features` (one definition for training and live scoring); this
module only orders the steps and records provenance: which feature code, which data, which
windows, so any number in a report can be reproduced by one command.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from models.dataset import RaceSet, group_ablations, race_set_from_frame
from models.evaluation import Evaluation, evaluate, period_metrics
from models.registry import ModelVersion, load_version, new_version_name, save_version
from models.registry.store import sha256_of_files
from models.search_space import L2_GRID, PLACE_WEIGHTS, VARIANTS
from models.training import train_two_stage, training_data_hash

FEATURES_PACKAGE = Path(__file__).resolve().parent / "features"
MODEL_CODE_FILES = (
    "conditional_logit.py",
    "dataset.py",
    "design.py",
    "evaluation.py",
    "online.py",
    "onnx_export.py",
    "segments.py",
    "training.py",
    "two_stage.py",
)
DEFAULT_VALIDATION_DAYS = 730


def feature_code_hash() -> str:
    """Hash of the feature definitions and the HKJC loader they read through: a change in
    either can change feature values, which invalidates a trained model."""
    repository = FEATURES_PACKAGE.parent.parent
    files = [*FEATURES_PACKAGE.rglob("*.py"), repository / "connectors" / "hkjc.py"]
    return sha256_of_files([f for f in files if f.is_file()], repository)


def model_code_hash() -> str:
    base = Path(__file__).resolve().parent
    return sha256_of_files([base / name for name in MODEL_CODE_FILES], base)


def feature_groups() -> dict[str, tuple[str, ...]]:
    """Feature columns by group (form/class, T.I.E., SSM, BOP, TRA, ...)."""
    from models.features import FEATURE_GROUPS

    return {group: tuple(columns) for group, columns in FEATURE_GROUPS.items()}


def load_race_set(hkjc_dir: Path, feature_names: tuple[str, ...] | None = None) -> RaceSet:
    """Point-in-time training frame from the HKJC files, as race-blocked arrays."""
    from models.features import FEATURE_COLUMNS, build_training_frame

    if not Path(hkjc_dir).is_dir():
        raise FileNotFoundError(f"HKJC data directory {hkjc_dir} does not exist")
    frame = build_training_frame(Path(hkjc_dir))
    return race_set_from_frame(frame, tuple(feature_names or FEATURE_COLUMNS))


def default_valid_until(train_until: date) -> date:
    return train_until + timedelta(days=DEFAULT_VALIDATION_DAYS)


def train_and_save(
    data: RaceSet,
    train_until: date,
    valid_until: date,
    out_dir: Path | None,
    registry_root: Path,
    source: str,
    groups: dict[str, tuple[str, ...]],
    l2_grid: tuple[float, ...] = L2_GRID,
    variants: tuple[str, ...] = tuple(VARIANTS),
    place_weights: tuple[float, ...] = PLACE_WEIGHTS,
) -> ModelVersion:
    """Train, then write the version directory (default `<registry_root>/<version>`).

    `groups` maps feature groups to their columns; it is stored for the ablation report.
    """
    result = train_two_stage(
        data,
        train_until,
        valid_until,
        l2_grid=l2_grid,
        variants=variants,
        place_weights=place_weights,
    )
    data_hash = training_data_hash(data.between(None, valid_until))
    out_dir = out_dir if out_dir is not None else registry_root / new_version_name(data_hash)
    metadata: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "feature_names": list(data.feature_names),
        "feature_groups": {g: list(c) for g, c in groups.items()},
        "feature_code_hash": feature_code_hash(),
        "model_code_hash": model_code_hash(),
        "training_data_hash": data_hash,
        "data_window": {
            "source": source,
            "train_until": train_until.isoformat(),
            "valid_until": valid_until.isoformat(),
            "train_races": result.details["races"]["train"],
            "valid_races": result.details["races"]["validation"],
            "train_dates": result.details["windows"]["train"],
            "valid_dates": result.details["windows"]["validation"],
            "dropped_races": data.dropped,
        },
        **{
            key: result.details[key]
            for key in ("search", "validation_folds", "stage1", "stage2", "metrics")
        },
        "online": result.details.get("online"),
    }
    save_version(out_dir, result.model, result.online, metadata)
    return load_version(out_dir)


@dataclass(frozen=True)
class EvaluationRun:
    evaluation: Evaluation
    summary: dict[str, Any]
    ablation: list[dict[str, Any]] | None


def evaluation_window(data: RaceSet, date_from: date, date_to: date | None) -> RaceSet:
    return data.between(date_from - timedelta(days=1), date_to)


def run_evaluation(
    version: ModelVersion,
    data: RaceSet,
    date_from: date,
    date_to: date | None,
    with_ablation: bool = False,
) -> EvaluationRun:
    """Evaluate a stored version on [date_from, date_to]; flag any overlap with its fitting."""
    window = evaluation_window(data, date_from, date_to)
    evaluation = evaluate(version.model, window, online=version.online)
    valid_until = date.fromisoformat(version.metadata["data_window"]["valid_until"])
    summary: dict[str, Any] = {
        "model_version": version.version,
        "from": date_from.isoformat(),
        "to": date_to.isoformat() if date_to else None,
        **evaluation.metrics,
        "overlaps_fitting_period": date_from <= valid_until,
        "feature_code_changed": version.metadata.get("feature_code_hash") != feature_code_hash(),
        "online_kept": version.online is not None,
        "dropped_races": data.dropped,
    }
    ablation = None
    if with_ablation:
        ablation = ablation_table(version, data, window)
        summary["ablation"] = ablation
    return EvaluationRun(evaluation=evaluation, summary=summary, ablation=ablation)


def ablation_table(version: ModelVersion, data: RaceSet, window: RaceSet) -> list[dict[str, Any]]:
    """Retrain both stages (same windows, design, source, L2s) without each group, and alone."""
    train_until = date.fromisoformat(version.metadata["data_window"]["train_until"])
    valid_until = date.fromisoformat(version.metadata["data_window"]["valid_until"])
    full = period_metrics(version.model, window)
    rows = []
    for group, features, subsets in group_ablations(data, version.metadata["feature_groups"]):
        row: dict[str, Any] = {"group": group, "features": features}
        for label, removed in subsets:
            retrained = train_two_stage(
                data.without_features(removed),
                train_until,
                valid_until,
                l2_grid=tuple({version.model.fundamental_l2, version.model.combination_l2}),
                variants=(version.model.design.variant,),
                sources=(version.model.combination_source,),
                with_online=False,
                place_weights=version.place_weights,
            )
            metrics = period_metrics(retrained.model, window.without_features(removed))
            row[f"{label}_fundamental_r2"] = metrics["fundamental_r2"]
            row[f"{label}_combined_r2"] = metrics["combined_r2"]
            row[f"{label}_delta_r2"] = metrics["delta_r2"]
        if "without_fundamental_r2" in row:
            row["fundamental_r2_loss"] = full["fundamental_r2"] - row["without_fundamental_r2"]
            row["delta_r2_loss"] = full["delta_r2"] - row["without_delta_r2"]
        rows.append(row)
    return rows
