"""Artifact layout of one model version, and the registry root that holds many.

    <root>/<version>/model.onnx      the scoring graph (see models.onnx_export)
    <root>/<version>/params.json     exact float64 parameters (the numpy reference) + online state
    <root>/<version>/metadata.json   features, code and data hashes, windows, metrics, decisions
    <root>/PROMOTED                  the name of the version the live system should score with

A version directory is written to a temporary sibling and renamed into place, so a reader never
sees a half-written model; PROMOTED is replaced atomically the same way.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import orjson

from connectors.settings import get_settings
from models.conditional_logit import Standardizer
from models.design import Design
from models.online import OnlineResidualModel
from models.onnx_export import build_onnx_model
from models.two_stage import TwoStageModel

ONNX_FILE = "model.onnx"
PARAMS_FILE = "params.json"
METADATA_FILE = "metadata.json"
PROMOTED_FILE = "PROMOTED"


def default_root() -> Path:
    """`$VELO_DATA_DIR/models` (`.data/models` in the repository by default)."""
    return get_settings().velo_data_dir / "models"


def new_version_name(training_data_hash: str, now: datetime | None = None) -> str:
    """Sortable by creation time and tied to the data it was trained on."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{training_data_hash[:8]}"


@dataclass(frozen=True)
class ModelVersion:
    """A loaded version: the numpy model, its online component (if stored) and metadata."""

    path: Path
    model: TwoStageModel
    online: OnlineResidualModel | None
    metadata: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def place_weights(self) -> tuple[float, ...]:
        """Stage 1's place weights; versions from before them were fitted on the win alone."""
        return tuple(self.metadata["stage1"].get("place_weights", (1.0,)))


def _params_document(model: TwoStageModel, online: OnlineResidualModel | None) -> dict[str, Any]:
    design = model.design
    return {
        "feature_names": list(design.feature_names),
        "input_mean": design.inputs.mean.tolist(),
        "input_scale": design.inputs.scale.tolist(),
        "race_relative": design.race_relative,
        "knots": design.knots.tolist(),
        "output_mean": design.outputs.mean.tolist(),
        "output_scale": design.outputs.scale.tolist(),
        "fundamental_weights": model.fundamental_weights.tolist(),
        "fundamental_l2": model.fundamental_l2,
        "combination_source": model.combination_source,
        "combination_weights": model.combination_weights.tolist(),
        "combination_l2": model.combination_l2,
        "alpha": model.alpha,
        "beta": model.beta,
        "market_beta": model.market_beta,
        "online": online.state() if online is not None else None,
    }


def _design_from(params: dict[str, Any]) -> Design:
    names = tuple(params["feature_names"])
    return Design(
        feature_names=names,
        inputs=Standardizer(
            mean=np.asarray(params["input_mean"], dtype=np.float64),
            scale=np.asarray(params["input_scale"], dtype=np.float64),
        ),
        race_relative=bool(params["race_relative"]),
        knots=np.asarray(params["knots"], dtype=np.float64).reshape(-1, len(names)),
        outputs=Standardizer(
            mean=np.asarray(params["output_mean"], dtype=np.float64),
            scale=np.asarray(params["output_scale"], dtype=np.float64),
        ),
    )


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def save_version(
    out_dir: Path,
    model: TwoStageModel,
    online: OnlineResidualModel | None,
    metadata: dict[str, Any],
) -> Path:
    """Write a complete version directory; refuses to overwrite an existing non-empty one."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"model directory {out_dir} already exists and is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    version = out_dir.name
    metadata = {**metadata, "version": version}
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=out_dir.parent))
    try:
        onnx.save_model(build_onnx_model(model, version), staging / ONNX_FILE)
        _write_json(staging / PARAMS_FILE, _params_document(model, online))
        _write_json(staging / METADATA_FILE, metadata)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def load_version(model_dir: Path) -> ModelVersion:
    """Read a version directory back; a missing or malformed file is a clear error."""
    model_dir = Path(model_dir)
    for name in (ONNX_FILE, PARAMS_FILE, METADATA_FILE):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir} is not a model version: {name} is missing")
    try:
        params = orjson.loads((model_dir / PARAMS_FILE).read_bytes())
        metadata = orjson.loads((model_dir / METADATA_FILE).read_bytes())
        model = TwoStageModel(
            design=_design_from(params),
            fundamental_weights=np.asarray(params["fundamental_weights"], dtype=np.float64),
            fundamental_l2=float(params["fundamental_l2"]),
            combination_source=str(params["combination_source"]),
            combination_weights=np.asarray(params["combination_weights"], dtype=np.float64),
            combination_l2=float(params["combination_l2"]),
            alpha=float(params["alpha"]),
            beta=float(params["beta"]),
            market_beta=float(params["market_beta"]),
        )
        expected = (len(model.design.column_names),)
        if model.fundamental_weights.shape != expected or (
            model.combination_weights.shape != expected
        ):
            raise ValueError("stage-1 weights do not match the design's columns")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{model_dir}: malformed model parameters: {exc}") from exc
    online = OnlineResidualModel.from_state(params["online"]) if params.get("online") else None
    return ModelVersion(path=model_dir, model=model, online=online, metadata=metadata)


def list_versions(root: Path) -> list[dict[str, Any]]:
    """One summary per version directory under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    current = promoted_version(root)
    summaries = []
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or not (child / METADATA_FILE).is_file():
            continue
        metadata = orjson.loads((child / METADATA_FILE).read_bytes())
        validation = metadata.get("metrics", {}).get("validation", {})
        summaries.append(
            {
                "version": child.name,
                "created_at": metadata.get("created_at"),
                "promoted": child.name == current,
                "features": len(metadata.get("feature_names", [])),
                "train_until": metadata.get("data_window", {}).get("train_until"),
                "valid_until": metadata.get("data_window", {}).get("valid_until"),
                "valid_delta_r2": validation.get("delta_r2"),
                "path": str(child),
            }
        )
    return summaries


def promoted_version(root: Path) -> str | None:
    pointer = Path(root) / PROMOTED_FILE
    if not pointer.is_file():
        return None
    return pointer.read_text(encoding="utf-8").strip() or None


def promote(root: Path, version: str) -> Path:
    """Point PROMOTED at `version` (which must be a loadable version under `root`)."""
    root = Path(root)
    load_version(root / version)
    with tempfile.NamedTemporaryFile(
        "w", dir=root, prefix=".PROMOTED.", delete=False, encoding="utf-8"
    ) as handle:
        handle.write(version + "\n")
    os.replace(handle.name, root / PROMOTED_FILE)
    return root / version


def resolve_model_dir(reference: str | Path | None, root: Path | None = None) -> Path:
    """A model directory from a path, a version name under `root`, or (None) the promoted one."""
    root = Path(root) if root is not None else default_root()
    if reference is None:
        version = promoted_version(root)
        if version is None:
            raise FileNotFoundError(f"no promoted model under {root}")
        return root / version
    candidate = Path(reference)
    if (candidate / METADATA_FILE).is_file():
        return candidate
    if (root / str(reference) / METADATA_FILE).is_file():
        return root / str(reference)
    raise FileNotFoundError(f"no model version at {candidate} or {root / str(reference)}")


def sha256_of_files(paths: list[Path], base: Path) -> str:
    """Hash of file names (relative to `base`) and contents, in a stable order."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(base)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()
