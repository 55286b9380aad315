"""Live scoring with onnxruntime: `OnnxScorer.score(features, market_probs)` for one race.

The dataflow builds, for a race whose racecard and prices are known, a float32 matrix of the
model's features (`scorer.feature_names`, raw units, one row per runner still in the race) and
the market probabilities (1/odds of the same runners, normalised or not) and gets back win
probabilities that sum to 1. Bad input raises `ValueError` so the caller can dead-letter it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from models.onnx_export import FEATURES_INPUT, FUNDAMENTAL_OUTPUT, MARKET_INPUT, WIN_OUTPUT
from models.registry import ONNX_FILE, load_version, resolve_model_dir


class OnnxScorer:
    """One onnxruntime session per model version, single-threaded (a race is ~14 runners)."""

    def __init__(self, model_dir: Path) -> None:
        loaded = load_version(Path(model_dir))
        self.version = loaded.version
        self.feature_names = loaded.model.feature_names
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(Path(model_dir) / ONNX_FILE), options, providers=["CPUExecutionProvider"]
        )

    @classmethod
    def from_registry(cls, version: str | None = None, root: Path | None = None) -> OnnxScorer:
        """The named version under the registry root, or the promoted one."""
        return cls(resolve_model_dir(version, root))

    def _inputs(
        self, features: npt.ArrayLike, market_probs: npt.ArrayLike
    ) -> dict[str, np.ndarray]:
        x = np.asarray(features, dtype=np.float32)
        pi = np.asarray(market_probs, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names) or x.shape[0] == 0:
            raise ValueError(
                f"features must be [n_runners>0, {len(self.feature_names)}], got {x.shape}"
            )
        if pi.shape != (x.shape[0],):
            raise ValueError(f"market_probs must have shape ({x.shape[0]},), got {pi.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain NaN or infinite values")
        if not np.all(np.isfinite(pi) & (pi > 0)):
            raise ValueError("market_probs must be finite and positive")
        return {FEATURES_INPUT: x, MARKET_INPUT: pi}

    def score(self, features: npt.ArrayLike, market_probs: npt.ArrayLike) -> np.ndarray:
        """Combined win probabilities for one race's runners (float32, sum 1)."""
        (win,) = self._session.run([WIN_OUTPUT], self._inputs(features, market_probs))
        return win

    def score_with_fundamental(
        self, features: npt.ArrayLike, market_probs: npt.ArrayLike
    ) -> tuple[np.ndarray, np.ndarray]:
        """(combined, fundamental-only) probabilities for one race."""
        win, fundamental = self._session.run(
            [WIN_OUTPUT, FUNDAMENTAL_OUTPUT], self._inputs(features, market_probs)
        )
        return win, fundamental
