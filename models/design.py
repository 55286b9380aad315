"""Model-side feature transformations: how raw features become the stage-1 design matrix.

1. Standardise each raw feature with its training mean and scale (xs).
2. Optionally add within-race z-scores of xs: (xs − race mean) / max(race std, floor). A linear
   term already compares runners within a race; this adds scale: a 5-point rating edge means more
   in a race of equals than in a spread-out field.
3. Optionally add hinge terms relu(xs − knot) at training quantiles, a piecewise-linear fit of
   effects that are not straight lines (e.g. days since the last run).
4. Standardise the expanded columns again (training mean/scale), so one L2 strength suits all.

The same steps are written as ONNX nodes in `models.onnx_export`; both are tested equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.conditional_logit import Standardizer
from models.search_space import VARIANTS
from models.segments import FloatArray, RaceBlocks

RACE_STD_FLOOR = 0.05
HINGE_QUANTILES = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class Design:
    """Fitted transformation from raw features to the standardised design matrix."""

    feature_names: tuple[str, ...]
    inputs: Standardizer
    race_relative: bool
    knots: FloatArray  # [n_knots, n_features] in standardised units; 0 rows = no hinges
    outputs: Standardizer

    @property
    def variant(self) -> str:
        return next(k for k, v in VARIANTS.items() if v == (self.race_relative, self.has_hinges))

    @property
    def has_hinges(self) -> bool:
        return self.knots.shape[0] > 0

    @property
    def column_names(self) -> tuple[str, ...]:
        names = list(self.feature_names)
        if self.race_relative:
            names += [f"{n}:race_z" for n in self.feature_names]
        for i in range(self.knots.shape[0]):
            names += [f"{n}:hinge{i}" for n in self.feature_names]
        return tuple(names)

    def standardised_inputs(self, x_raw: FloatArray) -> FloatArray:
        return self.inputs.transform(x_raw)

    def expand(self, x_raw: FloatArray, races: RaceBlocks) -> FloatArray:
        """Expanded, not yet re-standardised, columns (in `column_names` order)."""
        xs = self.inputs.transform(x_raw)
        blocks = [xs]
        if self.race_relative:
            blocks.append(race_z_scores(xs, races))
        if self.has_hinges:
            hinges = np.maximum(xs[:, None, :] - self.knots[None, :, :], 0.0)
            blocks.append(hinges.reshape(xs.shape[0], -1))
        return np.concatenate(blocks, axis=1)

    def transform(self, x_raw: FloatArray, races: RaceBlocks) -> FloatArray:
        return self.outputs.transform(self.expand(x_raw, races))

    @classmethod
    def fit(
        cls,
        feature_names: tuple[str, ...],
        x_raw: FloatArray,
        races: RaceBlocks,
        race_relative: bool,
        hinges: bool,
    ) -> Design:
        inputs = Standardizer.fit(x_raw)
        xs = inputs.transform(x_raw)
        knots = (
            np.quantile(xs, HINGE_QUANTILES, axis=0)
            if hinges
            else np.zeros((0, len(feature_names)))
        )
        partial = cls(feature_names, inputs, race_relative, knots, _identity(0))
        expanded = partial.expand(x_raw, races)
        return cls(feature_names, inputs, race_relative, knots, Standardizer.fit(expanded))


def _identity(n: int) -> Standardizer:
    return Standardizer(mean=np.zeros(n), scale=np.ones(n))


def race_z_scores(xs: FloatArray, races: RaceBlocks) -> FloatArray:
    """(xs − race mean) / max(race std, floor), per column; 0 for a single-runner race."""
    sizes = races.sizes[:, None].astype(np.float64)
    mean = races.sum(xs) / sizes
    centred = xs - mean[races.index]
    std = np.sqrt(races.sum(centred**2) / sizes)
    return centred / np.maximum(std, RACE_STD_FLOOR)[races.index]
