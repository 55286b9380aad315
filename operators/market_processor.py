"""Per-market state machine: stream changes in, database records out.

This is the whole market pipeline minus the engine: `MarketProcessor.process` takes the
changes of one market in stream order and returns a `SinkBatch` of rows (ticks, windows,
definitions, results, dead letters) and, for detectors, the ladder deltas. The Bytewax flow
keeps one processor per market key; tests drive it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from operators.market_book import MARKET_CLOSED, MarketBook, parse_betfair_time
from operators.records import (
    DeadLetter,
    MarketRow,
    MarketTick,
    Prediction,
    ResultRow,
    RunnerRow,
    RunnerTick,
    WindowAggregate,
)
from operators.runner_book import LadderDelta, RunnerBook
from operators.stream_messages import BadLine, MarketChange
from operators.windows import (
    DEFAULT_WINDOW_SECONDS,
    PERSISTED_WINDOW_SECONDS,
    MarketWindows,
)

_new_record = tuple.__new__
"""Builds a NamedTuple from a tuple without its per-field Python `__new__` (hot path)."""


UNSERIALISABLE_CHANGE = "<market change nested too deeply to write as JSON>"
"""`DeadLetter.raw` of a change `orjson.dumps` refuses (nested deeper than it writes)."""


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@dataclass(slots=True)
class SinkBatch:
    """Rows produced by one step, grouped by table, plus counters for the run summary."""

    markets: list[MarketRow] = field(default_factory=list)
    runners: list[RunnerRow] = field(default_factory=list)
    runner_ticks: list[RunnerTick] = field(default_factory=list)
    market_ticks: list[MarketTick] = field(default_factory=list)
    windows: list[WindowAggregate] = field(default_factory=list)
    live_windows: list[WindowAggregate] = field(default_factory=list)
    """Closed windows of lengths that are not persisted (for in-flow detectors only)."""
    results: list[ResultRow] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    predictions: list[Prediction] = field(default_factory=list)
    """Model win probabilities from the race-scoring step (empty without a model)."""
    deltas: list[LadderDelta] = field(default_factory=list)
    snapshots: list[dict] = field(default_factory=list)
    """End-of-stream runner books (`velo replay --snapshot-out`)."""
    copy_rows: list = field(default_factory=list)
    """More runner ticks, market ticks and windows, already encoded for PostgreSQL's binary
    COPY by the native processor (`velo_native.CopyRows`, one per processing step): the flow
    never turns them into Python records unless a consumer asks (`records`)."""
    market_ids: set[str] = field(default_factory=set)
    """Markets that processed at least one message in this batch."""
    lines: int = 0
    messages: int = 0

    def extend(self, other: SinkBatch) -> None:
        self.markets.extend(other.markets)
        self.runners.extend(other.runners)
        self.runner_ticks.extend(other.runner_ticks)
        self.market_ticks.extend(other.market_ticks)
        self.windows.extend(other.windows)
        self.live_windows.extend(other.live_windows)
        self.results.extend(other.results)
        self.dead_letters.extend(other.dead_letters)
        self.predictions.extend(other.predictions)
        self.deltas.extend(other.deltas)
        self.snapshots.extend(other.snapshots)
        self.copy_rows.extend(other.copy_rows)
        self.market_ids |= other.market_ids
        self.lines += other.lines
        self.messages += other.messages

    def records(self, kind: str) -> list:
        """Records of one kind (`runner_ticks`, `market_ticks`, `windows`), encoded ones made."""
        return getattr(self, kind) + [
            r for rows in self.copy_rows for r in getattr(rows, kind).records()
        ]

    def count(self, kind: str) -> int:
        """Rows of one kind (`runner_ticks`, `market_ticks`, `windows`), encoded ones included."""
        return len(getattr(self, kind)) + sum(getattr(rows, kind).rows for rows in self.copy_rows)


class MarketProcessor:
    """Order book, windows and record emission for one market."""

    def __init__(
        self,
        market_id: str,
        window_seconds: tuple[int, ...] = DEFAULT_WINDOW_SECONDS,
        persisted_window_seconds: tuple[int, ...] = PERSISTED_WINDOW_SECONDS,
        keep_deltas: bool = False,
    ) -> None:
        self.market_id = market_id
        self.book = MarketBook(market_id)
        self.windows = MarketWindows(market_id, window_seconds, persisted_window_seconds)
        self.keep_deltas = keep_deltas
        self.seq = 0
        self.started = False
        self.last_publish_ms = 0
        # Tick rows are written only when a value changes: a message that moves nothing a
        # tick shows (e.g. a level deep in the ladder) leaves its trace in the windows' churn.
        self._last_runner_values: dict[RunnerBook, tuple] = {}
        self._last_market_values: tuple | None = None
        self._overrounds = self.book.overrounds()

    def process(self, changes: list[MarketChange], out: SinkBatch | None = None) -> SinkBatch:
        out = out if out is not None else SinkBatch()
        for change in changes:
            self._process_one(change, out)
        return out

    def _process_one(self, item: MarketChange, out: SinkBatch) -> None:
        change = item.change
        if not self.started:
            if not (change.get("img") or "marketDefinition" in change):
                out.dead_letters.append(self._dead(item, "unknown_market_before_image"))
                return
            self.started = True
        publish_ms = item.publish_time_ms
        if publish_ms < self.last_publish_ms:
            # Applied to the book (skipping it would corrupt the ladders), counted, and
            # windowed at the market's latest event time.
            out.dead_letters.append(self._dead(item, "out_of_order_publish_time"))
            publish_ms = self.last_publish_ms
        self.last_publish_ms = publish_ms
        self.seq += 1
        seq = self.seq
        out.messages += 1
        windows = self.windows
        windows.advance(publish_ms, out.windows, out.live_windows)

        book = self.book
        touched, invalid, definition_changed, definition_valid = book.apply(
            change, publish_ms, out.deltas if self.keep_deltas else None
        )
        # Book percentages change only with a best price or a status: recompute them when a
        # runner's tick shows a new best (or a new runner), or after a definition or image.
        prices_moved = definition_changed or change.get("img")
        if not definition_valid:
            out.dead_letters.append(self._dead(item, "invalid_market_definition"))
        if invalid:
            out.dead_letters.append(self._dead(item, "invalid_ladder_entry"))
        publish_time = ms_to_datetime(item.publish_time_ms)
        seconds_to_off = book.seconds_to_off(publish_ms)
        if definition_changed:
            self._emit_definition(publish_time, out)

        market_id = self.market_id
        in_play = book.in_play
        last_values = self._last_runner_values
        runner_ticks = out.runner_ticks
        for runner in touched:
            values = runner.tick_values(in_play)
            last = last_values.get(runner)
            if last != values:
                if last is None or last[2] != values[2] or last[4] != values[4]:
                    prices_moved = True  # a new runner, or its best back (2) / lay (4) moved
                last_values[runner] = values
                selection_id, handicap = runner.tick_key
                runner_ticks.append(
                    _new_record(
                        RunnerTick,
                        (
                            market_id,
                            selection_id,
                            handicap,
                            publish_time,
                            seq,
                            *values,
                            seconds_to_off,
                        ),
                    )
                )
        windows.observe(touched)
        if prices_moved:
            self._overrounds = book.overrounds()
        market_values = (book.status, book.in_play, book.total_matched, *self._overrounds)
        if market_values != self._last_market_values:
            self._last_market_values = market_values
            out.market_ticks.append(
                MarketTick(self.market_id, publish_time, seq, *market_values, seconds_to_off)
            )

    def _emit_definition(self, publish_time: datetime, out: SinkBatch) -> None:
        book = self.book
        definition = book.definition
        out.markets.append(
            MarketRow(
                self.market_id,
                definition.get("eventId"),
                definition.get("eventTypeId"),
                definition.get("marketType"),
                definition.get("name"),
                definition.get("eventName"),
                definition.get("venue"),
                definition.get("countryCode"),
                parse_betfair_time(definition.get("marketTime")),
                definition.get("numberOfWinners"),
                book.status,
                book.in_play,
                book.bet_delay,
                book.version,
                bool(definition.get("bspMarket", False)),
                publish_time,
            )
        )
        for runner in book.runners.values():
            out.runners.append(
                RunnerRow(
                    self.market_id,
                    runner.selection_id,
                    runner.handicap,
                    runner.name,
                    runner.sort_priority,
                    runner.status,
                    runner.adjustment_factor,
                    parse_betfair_time(runner.removal_date),
                    runner.bsp,
                )
            )
        if book.status == MARKET_CLOSED:
            out.results.extend(
                ResultRow(self.market_id, r.selection_id, r.handicap, r.status, r.bsp, publish_time)
                for r in book.runners.values()
            )

    def finish(self, out: SinkBatch) -> SinkBatch:
        """End of stream: close open windows and add the per-runner final snapshot."""
        self.windows.flush(out.windows, out.live_windows)
        out.snapshots.extend(
            runner.snapshot(self.market_id) for runner in self.book.runners.values()
        )
        return out

    def _dead(self, item: MarketChange, reason: str) -> DeadLetter:
        try:
            raw = orjson.dumps(item.change).decode()[:10_000]
        except orjson.JSONEncodeError:  # nested deeper than orjson writes (it reads deeper)
            raw = UNSERIALISABLE_CHANGE
        return DeadLetter(
            item.source, item.position, reason, raw, ms_to_datetime(item.publish_time_ms)
        )


def dead_letter_from_bad_line(bad: BadLine) -> DeadLetter:
    return DeadLetter(
        bad.source,
        bad.position,
        bad.reason,
        bad.raw[:10_000].decode("utf-8", "replace"),
        datetime.now(UTC),
    )
