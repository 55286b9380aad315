"""Per-race (segment) operations on runners stored contiguously, race after race.

Every model in this package works on flat arrays of runners where each race occupies one
contiguous block. Segment reductions (`np.maximum.reduceat`, `np.add.reduceat`) keep everything
vectorised: there is no Python loop per race in fitting or scoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class RaceBlocks:
    """Where each race's block of runners starts, with the derived per-runner race index."""

    starts: IntArray
    sizes: IntArray
    index: IntArray

    @classmethod
    def from_starts(cls, starts: npt.ArrayLike, n_runners: int) -> RaceBlocks:
        starts_arr = np.asarray(starts, dtype=np.int64)
        if starts_arr.size and (starts_arr[0] != 0 or np.any(np.diff(starts_arr) <= 0)):
            raise ValueError("race starts must begin at 0 and be strictly increasing")
        if starts_arr.size and starts_arr[-1] >= n_runners:
            raise ValueError("a race start lies past the last runner")
        sizes = np.diff(np.append(starts_arr, n_runners)).astype(np.int64)
        index = np.repeat(np.arange(starts_arr.size, dtype=np.int64), sizes)
        return cls(starts=starts_arr, sizes=sizes, index=index)

    @classmethod
    def from_keys(cls, race_keys: npt.ArrayLike) -> RaceBlocks:
        """Blocks of a key array already grouped race after race (equal keys adjacent)."""
        keys = np.asarray(race_keys)
        if keys.size == 0:
            return cls.from_starts(np.zeros(0, dtype=np.int64), 0)
        changed = np.flatnonzero(keys[1:] != keys[:-1]) + 1
        return cls.from_starts(np.concatenate(([0], changed)), keys.size)

    @property
    def n_races(self) -> int:
        return int(self.starts.size)

    @property
    def n_runners(self) -> int:
        return int(self.index.size)

    def sum(self, values: npt.NDArray[np.floating]) -> FloatArray:
        """Sum of `values` (1-D, or 2-D along axis 0) within each race."""
        if self.n_races == 0:
            return np.zeros((0, *values.shape[1:]))
        return np.add.reduceat(values, self.starts, axis=0)

    def max(self, values: FloatArray) -> FloatArray:
        return np.maximum.reduceat(values, self.starts)

    def log_softmax(self, utilities: FloatArray) -> FloatArray:
        """log p_i = u_i - logsumexp(u over i's race), shifted by the race maximum for stability."""
        shifted = utilities - self.max(utilities)[self.index]
        log_norm = np.log(self.sum(np.exp(shifted)))
        return shifted - log_norm[self.index]

    def softmax(self, utilities: FloatArray) -> FloatArray:
        """Within-race softmax: probabilities that sum to 1 in each race."""
        return np.exp(self.log_softmax(utilities))

    def take(self, race_mask: npt.NDArray[np.bool_]) -> tuple[RaceBlocks, npt.NDArray[np.bool_]]:
        """Blocks of the races selected by `race_mask`, and the matching runner mask."""
        runner_mask = race_mask[self.index]
        kept_sizes = self.sizes[race_mask]
        starts = np.concatenate(([0], np.cumsum(kept_sizes)[:-1])) if kept_sizes.size else []
        return RaceBlocks.from_starts(starts, int(kept_sizes.sum())), runner_mask
