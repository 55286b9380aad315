"""Versioned racecard and result events: the one shape every racing source is turned into.

HKJC history, Betfair market-catalogue metadata and any later source all produce `Racecard`
(what is known before the off) and `RaceResult` (what happened). Fields a source lacks stay
`None`, so a Betfair card without official ratings and an HKJC card without a market id are both
valid. Validation is strict about what would corrupt features downstream (duplicate runners,
a finisher without a position, a dead heat with one horse) and reports the reason, so the caller
can dead-letter the event instead of crashing or silently dropping it.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCHEMA_VERSION = 1

Lbs = Annotated[float, Field(ge=50, le=250)]
BodyLbs = Annotated[float, Field(ge=400, le=2500)]


class EventValidationError(ValueError):
    """A racing event that cannot be used; `reason` is a one-line explanation for dead letters."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Surface(StrEnum):
    TURF = "turf"
    ALL_WEATHER = "all_weather"


class RunnerStatus(StrEnum):
    """Racecard status: a withdrawn runner stays on the card so its removal is visible."""

    DECLARED = "declared"
    WITHDRAWN = "withdrawn"


class FinishStatus(StrEnum):
    FINISHED = "finished"
    UNPLACED = "unplaced"
    """Ran and finished behind the placed runners, position not reported (Betfair's LOSER)."""
    DID_NOT_FINISH = "did_not_finish"
    DISQUALIFIED = "disqualified"
    WITHDRAWN = "withdrawn"


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class RacecardRunner(_Event):
    """One declared (or withdrawn) runner as known before the off."""

    runner_id: str = Field(min_length=1, description="Horse id: HKJC brand code or Betfair id.")
    horse_name: str | None = None
    selection_id: int | None = Field(default=None, description="Betfair selection id.")
    saddle_cloth: int | None = Field(default=None, ge=1, le=40)
    draw: int | None = Field(default=None, ge=1, le=40)
    jockey: str | None = None
    trainer: str | None = None
    weight_carried_lbs: Lbs | None = None
    body_weight_lbs: BodyLbs | None = None
    official_rating: int | None = Field(default=None, ge=0, le=200)
    age: int | None = Field(default=None, ge=1, le=25)
    sex: str | None = None
    gear: str | None = None
    days_since_last_run: int | None = Field(default=None, ge=0)
    form: str | None = Field(default=None, description="Recent-form string as the source gives it.")
    status: RunnerStatus = RunnerStatus.DECLARED


class Racecard(_Event):
    """A race before the off: conditions and the field."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_type: Literal["racecard"] = "racecard"
    source: str = Field(min_length=1, description="'hkjc', 'betfair', ...")
    race_id: str = Field(min_length=1)
    market_id: str | None = None
    meeting_date: date
    venue: str = Field(min_length=1)
    race_number: int | None = Field(default=None, ge=1, le=30)
    start_time: datetime | None = None
    race_name: str | None = None
    distance_m: int | None = Field(default=None, ge=800, le=5000)
    going: str | None = None
    surface: Surface | None = None
    course: str | None = Field(default=None, description="Rail/course configuration, e.g. 'C+3'.")
    race_class: str | None = None
    rating_band_low: int | None = Field(default=None, ge=0, le=200)
    rating_band_high: int | None = Field(default=None, ge=0, le=200)
    prize_hkd: float | None = Field(default=None, ge=0)
    runners: list[RacecardRunner] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        _require_unique("runner_id", [r.runner_id for r in self.runners])
        declared = [r for r in self.runners if r.status is RunnerStatus.DECLARED]
        _require_unique("saddle_cloth", [r.saddle_cloth for r in declared if r.saddle_cloth])
        _require_unique("draw", [r.draw for r in declared if r.draw is not None])
        if not declared:
            raise ValueError("no declared runner: every runner is withdrawn")
        low, high = self.rating_band_low, self.rating_band_high
        if low is not None and high is not None and low > high:
            raise ValueError(f"rating band low {low} above high {high}")
        if self.start_time is not None and self.start_time.tzinfo is None:
            raise ValueError("start_time must carry a time zone")
        return self

    @property
    def declared_runners(self) -> list[RacecardRunner]:
        return [r for r in self.runners if r.status is RunnerStatus.DECLARED]


class ResultRunner(_Event):
    """One runner's outcome. Dead-heaters share `finish_position` and have `dead_heat` set."""

    runner_id: str = Field(min_length=1)
    status: FinishStatus
    finish_position: int | None = Field(default=None, ge=1, le=40)
    non_finish_code: str | None = Field(
        default=None, description="Source code when not a plain finish: PU, UR, FE, DISQ, WV..."
    )
    dead_heat: bool = False
    beaten_lengths: float | None = Field(default=None, ge=0)
    finish_time_s: float | None = Field(default=None, gt=0)
    sectional_times_s: list[float] = Field(default_factory=list)
    running_positions: list[int] = Field(default_factory=list)
    win_odds: float | None = Field(default=None, ge=1.0, description="Final decimal win odds.")

    @model_validator(mode="after")
    def _position_matches_status(self) -> Self:
        if self.status is FinishStatus.FINISHED and self.finish_position is None:
            raise ValueError(f"runner {self.runner_id}: finished without a finishing position")
        if self.status is not FinishStatus.FINISHED and self.finish_position is not None:
            raise ValueError(
                f"runner {self.runner_id}: status {self.status} but position {self.finish_position}"
            )
        if self.dead_heat and self.finish_position is None:
            raise ValueError(f"runner {self.runner_id}: dead heat without a position")
        return self


class RaceResult(_Event):
    """What happened in a race; withdrawn runners are listed with status `withdrawn`."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_type: Literal["result"] = "result"
    source: str = Field(min_length=1)
    race_id: str = Field(min_length=1)
    meeting_date: date
    venue: str = Field(min_length=1)
    race_number: int | None = Field(default=None, ge=1, le=30)
    winning_time_s: float | None = Field(default=None, gt=0)
    sectional_times_s: list[float] = Field(default_factory=list)
    runners: list[ResultRunner] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        _require_unique("runner_id", [r.runner_id for r in self.runners])
        finishers = [r for r in self.runners if r.status is FinishStatus.FINISHED]
        positions = Counter(r.finish_position for r in finishers)
        if finishers and 1 not in positions:
            raise ValueError("runners finished but nobody is placed first")
        for runner in finishers:
            shared = positions[runner.finish_position] > 1
            if shared and not runner.dead_heat:
                raise ValueError(
                    f"position {runner.finish_position} shared without a dead-heat flag"
                )
            if runner.dead_heat and not shared:
                raise ValueError(f"runner {runner.runner_id}: dead heat with nobody else")
        return self


RacingEvent = Racecard | RaceResult


def _require_unique(what: str, values: list[Any]) -> None:
    duplicates = sorted(str(v) for v, n in Counter(values).items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate {what}: {', '.join(duplicates)}")


def _describe(error: ValidationError) -> str:
    """First problems of a pydantic error as one line: location and message."""
    parts = []
    for item in error.errors()[:3]:
        where = ".".join(str(p) for p in item["loc"]) or "event"
        parts.append(f"{where}: {item['msg']}")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def parse_event(payload: bytes | str | dict[str, Any]) -> RacingEvent:
    """Decode and validate one racecard or result; any problem raises `EventValidationError`."""
    if isinstance(payload, bytes | str):
        try:
            payload = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise EventValidationError(f"not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise EventValidationError(f"event must be a JSON object, got {type(payload).__name__}")
    version = payload.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EventValidationError(f"unsupported schema_version {version!r}")
    kind = payload.get("event_type")
    model: type[Racecard] | type[RaceResult]
    if kind == "racecard":
        model = Racecard
    elif kind == "result":
        model = RaceResult
    else:
        raise EventValidationError(f"unknown event_type {kind!r}")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise EventValidationError(f"{kind} {payload.get('race_id')!r}: {_describe(exc)}") from exc


def dump_event(event: RacingEvent) -> bytes:
    """Serialise an event for Kafka or files (round-trips through `parse_event`)."""
    return orjson.dumps(event.model_dump(mode="json"))
