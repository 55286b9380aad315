"""Per-market join of a racecard's features with the live market: win probabilities on a cadence.

The state holds what is needed to score one race: the racecard's runners (Betfair selection
ids) with their feature rows, and the latest market probability and status of each runner
from the market's tick rows. The scoring function (an ONNX session) is passed in per call,
so the state stays a plain picklable value for Bytewax recovery.

A race is scored before the off only (the model prices a race, not a running one), when
every active runner of the market is on the racecard and has a price, at most once per
`every_seconds` of publish time, and only when a market probability moved since the last
score.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from operators.records import Prediction, RunnerRow, RunnerTick

ScoreFunction = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""(features [n, k] float32, market probabilities [n]) → (combined, fundamental) [n]."""


@dataclass(frozen=True, slots=True)
class RacecardFeatures:
    """A racecard turned into the model's inputs: one feature row per declared runner."""

    market_id: str
    race_id: str
    selection_ids: tuple[int, ...]
    features: np.ndarray


@dataclass(slots=True)
class RaceScoringState:
    """Everything one market needs to be scored; mutated by `observe_*`, read by `score`."""

    market_id: str
    racecard: RacecardFeatures | None = None
    probabilities: dict[int, float] = field(default_factory=dict)
    statuses: dict[int, str] = field(default_factory=dict)
    in_play: bool = False
    last_publish_ms: int = 0
    last_scored_ms: int | None = None
    changed_since_score: bool = False
    skipped: dict[str, int] = field(default_factory=dict)
    """Why scoring was not possible, counted (e.g. runners missing from the racecard)."""

    def observe_racecard(self, racecard: RacecardFeatures) -> None:
        self.racecard = racecard
        self.changed_since_score = True

    def observe_market(self, runners: Iterable[RunnerRow], ticks: Iterable[RunnerTick]) -> None:
        for runner in runners:
            self.statuses[runner.selection_id] = runner.status
        for tick in ticks:
            self.statuses[tick.selection_id] = tick.status
            self.in_play = tick.in_play
            self.last_publish_ms = max(
                self.last_publish_ms, int(tick.publish_time.timestamp() * 1000)
            )
            if tick.implied_probability is not None and (
                self.probabilities.get(tick.selection_id) != tick.implied_probability
            ):
                self.probabilities[tick.selection_id] = tick.implied_probability
                self.changed_since_score = True

    def due(self, every_seconds: float) -> bool:
        return (
            self.racecard is not None
            and not self.in_play
            and self.changed_since_score
            and (
                self.last_scored_ms is None
                or self.last_publish_ms - self.last_scored_ms >= every_seconds * 1000
            )
        )

    def score(self, score: ScoreFunction, model_version: str) -> list[Prediction]:
        """Predictions for the active runners now, or [] (with the reason counted)."""
        card = self.racecard
        assert card is not None
        active = [sid for sid, status in self.statuses.items() if status == "ACTIVE"]
        row_of = {sid: i for i, sid in enumerate(card.selection_ids)}
        if not active:
            return self._skip("no_active_runners")
        if any(sid not in row_of for sid in active):
            return self._skip("runner_not_on_racecard")
        if any(sid not in self.probabilities for sid in active):
            return self._skip("runner_without_price")
        active.sort()
        features = card.features[[row_of[sid] for sid in active]]
        market = np.array([self.probabilities[sid] for sid in active], dtype=np.float32)
        market = market / market.sum()
        combined, fundamental = score(features, market)
        self.last_scored_ms = self.last_publish_ms
        self.changed_since_score = False
        publish_time = datetime.fromtimestamp(self.last_publish_ms / 1000, UTC)
        return [
            Prediction(
                self.market_id,
                sid,
                publish_time,
                model_version,
                float(market[i]),
                float(fundamental[i]),
                float(combined[i]),
            )
            for i, sid in enumerate(active)
        ]

    def _skip(self, reason: str) -> list[Prediction]:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.changed_since_score = False
        return []
