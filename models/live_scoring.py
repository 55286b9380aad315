"""The model in the dataflow: racecard events → feature rows, market + features → probabilities.

`LiveRaceScorer` is what the race-scoring step of the market dataflow calls. Features come
from the same definitions as training (`models.features.features_for_race`) over a history
source: the online feature store when it has been materialised, else an empty `FeatureState`.
Runners with no history get the features' neutral fills, so a race of unknown horses is still
priced, mostly from what the card shows (rating, weight, draw) and the market.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from models.features import FeatureState, features_for_race
from models.features.frame import StateSource
from models.scoring import OnnxScorer
from operators.market_processor import dead_letter_from_bad_line
from operators.race_scoring import RacecardFeatures
from operators.racing_events import EventValidationError, Racecard, RunnerStatus, parse_event
from operators.records import DeadLetter
from operators.stream_messages import BadLine

INVALID_EVENT = "invalid_racing_event"
NOT_SCORABLE = "racecard_not_scorable"
_REASON_MAX_CHARS = 200
_RAW_MAX_CHARS = 10_000


class LiveRaceScorer:
    """One model version and one history source, shared by a worker's scoring steps."""

    def __init__(self, model_dir: Path, history: StateSource) -> None:
        self.scorer = OnnxScorer(model_dir)
        self.history = history

    @property
    def version(self) -> str:
        return self.scorer.version

    def racecard_features(self, card: Racecard) -> RacecardFeatures:
        """The card's declared runners that carry a Betfair selection id, as model inputs.

        Raises ValueError when the card cannot be scored (no market id, no selection ids,
        features that cannot be computed).
        """
        if not card.market_id:
            raise ValueError(f"racecard {card.race_id} has no market id")
        runners = [
            r
            for r in card.runners
            if r.status == RunnerStatus.DECLARED and r.selection_id is not None
        ]
        if not runners:
            raise ValueError(f"racecard {card.race_id} has no declared runner with a selection id")
        try:
            frame = features_for_race(self.history, card)
        except pl.exceptions.PolarsError as error:
            raise ValueError(f"racecard {card.race_id}: features failed: {error}") from error
        row_of = {runner_id: i for i, runner_id in enumerate(frame["runner_id"].to_list())}
        missing = [r.runner_id for r in runners if r.runner_id not in row_of]
        if missing:
            raise ValueError(f"racecard {card.race_id}: no feature row for runners {missing}")
        matrix = frame.select(self.scorer.feature_names).to_numpy().astype(np.float32)
        return RacecardFeatures(
            market_id=card.market_id,
            race_id=card.race_id,
            selection_ids=tuple(int(r.selection_id) for r in runners),
            features=matrix[[row_of[r.runner_id] for r in runners]],
        )

    def read_racecards(
        self, lines: Sequence[tuple[str, int, bytes | BadLine]]
    ) -> tuple[list[RacecardFeatures], list[DeadLetter]]:
        """Racecard lines (file or Kafka) → the cards this flow can score, and dead letters.

        Results and cards without a Betfair market id (e.g. HKJC history) are for the feature
        store, not for market scoring: they are skipped, not dead-lettered.
        """
        cards: list[RacecardFeatures] = []
        dead: list[DeadLetter] = []
        for source, position, raw in lines:
            if isinstance(raw, BadLine):
                dead.append(dead_letter_from_bad_line(raw))
                continue
            try:
                event = parse_event(raw)
            except EventValidationError as error:
                dead.append(_dead_letter(source, position, INVALID_EVENT, error.reason, raw))
                continue
            if not isinstance(event, Racecard) or not event.market_id:
                continue
            try:
                cards.append(self.racecard_features(event))
            except ValueError as error:
                dead.append(_dead_letter(source, position, NOT_SCORABLE, str(error), raw))
        return cards, dead

    def score(self, features: np.ndarray, market: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(combined, fundamental) win probabilities for one race's active runners."""
        return self.scorer.score_with_fundamental(features, market)


def _dead_letter(source: str, position: int, kind: str, detail: str, raw: bytes) -> DeadLetter:
    reason = f"{kind}: {' '.join(detail.split())}"[:_REASON_MAX_CHARS]
    text = raw[:_RAW_MAX_CHARS].decode("utf-8", "replace")
    return DeadLetter(source, position, reason, text, datetime.now(UTC))


def live_history(redis_url: str | None, namespace: str = "velo:fs") -> tuple[StateSource, str]:
    """History for live features, and a line saying which one it is.

    The online feature store (Redis) when it has been materialised; otherwise an empty
    history, so every runner gets the neutral fills. A configured Redis that does not answer
    raises (redis.ConnectionError): scoring on the wrong history must not go unnoticed.
    """
    from connectors.feature_store import ENTITIES, OnlineStore

    if redis_url:
        store = OnlineStore.connect(redis_url, namespace)
        if set(ENTITIES) <= set(store.schemas):
            return store, "online feature store (Redis)"
        store.backend.close()
        note = "Redis feature store not materialised"
    else:
        note = "no REDIS_URL"
    return FeatureState.empty(), f"no feature history ({note}): neutral fills for every runner"
