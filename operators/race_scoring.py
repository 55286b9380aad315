"""Per-market join of a racecard's features with the live market: win probabilities on a cadence.

The state holds what is needed to score one race: the racecard's runners (Betfair selection
ids) with their feature rows, and the latest implied probability and status of each runner
from the market's rows. The scorer (an ONNX session) is passed in per call, so the state stays
a plain picklable value for Bytewax recovery.

When to score is decided by the market alone, so the same stream gives the same predictions
however it is batched and whenever the racecard arrives. A *moment* is a publish time at which,
once all of that publish time's rows are applied, the market is open and not in play, every
active runner has a price, a price or the set of active runners changed since the last moment,
and at least `every_seconds` of publish time have passed since it. A moment is scored as soon as
the racecard is known; moments before the racecard arrives wait (at most
`MAX_PENDING_MOMENTS`, oldest dropped and counted) and are scored when it does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Protocol

import numpy as np

from operators.market_book import MARKET_CLOSED
from operators.market_processor import SinkBatch
from operators.records import MarketRow, MarketTick, Prediction, RunnerRow, RunnerTick

MAX_PENDING_MOMENTS = 360
"""Moments kept for a market whose racecard has not arrived (an hour at a 10 s cadence)."""

ACTIVE = "ACTIVE"
OPEN = "OPEN"


class RaceScorer(Protocol):
    """What scoring needs from a model (`models.live_scoring.LiveRaceScorer`)."""

    @property
    def version(self) -> str: ...

    def score(self, features: np.ndarray, market: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features [n, k] float32, market probabilities [n]) → (combined, fundamental) [n]."""
        ...


@dataclass(frozen=True, slots=True)
class RacecardFeatures:
    """A racecard turned into the model's inputs: one feature row per declared runner."""

    market_id: str
    race_id: str
    selection_ids: tuple[int, ...]
    features: np.ndarray


@dataclass(frozen=True, slots=True)
class Moment:
    """The market at one scoring moment: active runners (ascending) and their implied
    probabilities as observed (normalised only when scored)."""

    publish_time: datetime
    selection_ids: tuple[int, ...]
    probabilities: tuple[float, ...]


@dataclass(slots=True)
class RaceScoringState:
    """Everything one market needs to be scored; fed with the market step's batches."""

    market_id: str
    racecard: RacecardFeatures | None = None
    probabilities: dict[int, float] = field(default_factory=dict)
    statuses: dict[int, str] = field(default_factory=dict)
    market_status: str | None = None
    in_play: bool = False
    group_time: datetime | None = None
    """Publish time whose rows are being applied; it becomes a candidate moment once a later
    publish time (or the end of the stream) shows that all its rows are in."""
    last_moment: datetime | None = None
    changed: bool = False
    pending: list[Moment] = field(default_factory=list)
    predictions: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    """Why a moment gave no prediction, counted (e.g. a runner missing from the racecard)."""

    @property
    def closed(self) -> bool:
        return self.market_status == MARKET_CLOSED

    def observe_racecard(self, card: RacecardFeatures, scorer: RaceScorer) -> list[Prediction]:
        """Use `card` from now on; score the moments that were waiting for it."""
        self.racecard = card
        waiting, self.pending = self.pending, []
        return [p for moment in waiting for p in self._score(moment, scorer)]

    def observe_batch(
        self, batch: SinkBatch, scorer: RaceScorer, every_seconds: float
    ) -> list[Prediction]:
        """Apply one market-step batch in publish-time order; predictions of its moments."""
        out: list[Prediction] = []
        # Within a publish time: definitions, then market ticks, then runner ticks (a
        # message's ticks already reflect its own definition); the sort is stable.
        events: list[tuple[datetime, int, dict[int, str] | MarketTick | RunnerTick]] = [
            (time, 0, statuses)
            for time, statuses in definition_statuses(batch.markets, batch.runners)
        ]
        events.extend((tick.publish_time, 1, tick) for tick in batch.records("market_ticks"))
        events.extend((tick.publish_time, 2, tick) for tick in batch.records("runner_ticks"))
        events.sort(key=itemgetter(0, 1))
        for time, _, event in events:
            if self.group_time is None or time > self.group_time:
                if self.group_time is not None:
                    out.extend(self._close_group(scorer, every_seconds))
                self.group_time = time
            # An out-of-order publish time is applied to the current group.
            if isinstance(event, RunnerTick):
                self._observe_runner_tick(event)
            elif isinstance(event, MarketTick):
                self.market_status = event.status
                self.in_play = event.in_play
            else:
                for selection_id, status in event.items():
                    self._set_status(selection_id, status)
        return out

    def finish(self, scorer: RaceScorer, every_seconds: float) -> list[Prediction]:
        """End of stream: the last publish time is complete, so it may be a moment."""
        if self.group_time is None:
            return []
        return self._close_group(scorer, every_seconds)

    def _set_status(self, selection_id: int, status: str) -> None:
        if self.statuses.get(selection_id) != status:
            self.statuses[selection_id] = status
            self.changed = True

    def _observe_runner_tick(self, tick: RunnerTick) -> None:
        selection_id = tick.selection_id
        self._set_status(selection_id, tick.status)
        implied = tick.implied_probability
        if self.probabilities.get(selection_id) != implied:
            if implied is None:
                del self.probabilities[selection_id]
            else:
                self.probabilities[selection_id] = implied
            self.changed = True

    def _close_group(self, scorer: RaceScorer, every_seconds: float) -> list[Prediction]:
        now = self.group_time
        assert now is not None
        if (
            not self.changed
            or self.market_status != OPEN
            or self.in_play
            or (
                self.last_moment is not None
                and (now - self.last_moment).total_seconds() < every_seconds
            )
        ):
            return []
        active = sorted(sid for sid, status in self.statuses.items() if status == ACTIVE)
        if not active:
            return []
        if any(sid not in self.probabilities for sid in active):
            # Books re-forming (e.g. after a non-runner): wait for every price, stay due.
            self._count("runner_without_price")
            return []
        moment = Moment(now, tuple(active), tuple(self.probabilities[sid] for sid in active))
        self.last_moment = now
        self.changed = False
        if self.racecard is not None:
            return self._score(moment, scorer)
        self.pending.append(moment)
        if len(self.pending) > MAX_PENDING_MOMENTS:
            del self.pending[0]
            self._count("racecard_too_late")
        return []

    def _score(self, moment: Moment, scorer: RaceScorer) -> list[Prediction]:
        card = self.racecard
        assert card is not None
        row_of = {sid: i for i, sid in enumerate(card.selection_ids)}
        if any(sid not in row_of for sid in moment.selection_ids):
            self._count("runner_not_on_racecard")
            return []
        features = card.features[[row_of[sid] for sid in moment.selection_ids]]
        market = np.asarray(moment.probabilities, dtype=np.float32)
        market = market / market.sum()
        try:
            combined, fundamental = scorer.score(features, market)
        except ValueError:
            self._count("invalid_model_input")
            return []
        self.predictions += len(moment.selection_ids)
        return [
            Prediction(
                self.market_id,
                sid,
                moment.publish_time,
                scorer.version,
                float(market[i]),
                float(fundamental[i]),
                float(combined[i]),
            )
            for i, sid in enumerate(moment.selection_ids)
        ]

    def _count(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def definition_statuses(
    markets: Sequence[MarketRow], runners: Sequence[RunnerRow]
) -> list[tuple[datetime, dict[int, str]]]:
    """Runner statuses of each market definition in a batch, at the definition's publish time.

    The market step emits, per definition, its market row and then a row for every runner the
    book knows. The book never forgets a runner, so a runner seen again starts the next
    definition's group, and the groups belong to the last market rows of the batch.
    """
    groups: list[dict[int, str]] = []
    current: dict[tuple[int, float], str] = {}
    for runner in runners:
        key = (runner.selection_id, runner.handicap)
        if key in current:
            groups.append({sid: status for (sid, _), status in current.items()})
            current = {}
        current[key] = runner.status
    if current:
        groups.append({sid: status for (sid, _), status in current.items()})
    if not groups or not markets:
        return []
    if len(groups) > len(markets):
        # Not what the market step emits; keep the latest statuses rather than guess.
        return [(markets[-1].last_publish_time, groups[-1])]
    times = [market.last_publish_time for market in markets[len(markets) - len(groups) :]]
    return list(zip(times, groups, strict=True))
