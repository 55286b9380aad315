"""Event-time tumbling windows on publish time, per runner and per market.

Windows are aligned to multiples of their length (a 10 s window covers [t, t+10 s) with
t a multiple of 10 s since the epoch), so every worker and every replay cuts the same
windows. Time comes in as an argument (the message's `pt`), never from the wall clock.
When a market's clock crosses a boundary, every open window of that length closes at once;
`flush` closes the rest at end of stream.
"""

from __future__ import annotations

from datetime import UTC, datetime

from operators.price_ladder import ticks_between
from operators.records import WindowAggregate
from operators.runner_book import RunnerUpdate

DEFAULT_WINDOW_SECONDS: tuple[int, ...] = (1, 10, 60)
PERSISTED_WINDOW_SECONDS: tuple[int, ...] = (10, 60)
"""Lengths written to the database; 1 s windows feed in-flow detectors only (they would
add about one row per stream message)."""
MARKET_SELECTION_ID = 0
"""Market-level windows are stored with this selection id."""


class WindowAccumulator:
    """Running totals of one window for one runner (or the whole market)."""

    __slots__ = (
        "back_added",
        "back_removed",
        "close_price",
        "high_price",
        "lay_added",
        "lay_removed",
        "low_price",
        "open_price",
        "traded_volume",
        "updates",
        "wom_close",
        "wom_open",
    )

    def __init__(self) -> None:
        self.updates = 0
        self.open_price: float | None = None
        self.high_price: float | None = None
        self.low_price: float | None = None
        self.close_price: float | None = None
        self.traded_volume = 0.0
        self.back_added = self.back_removed = self.lay_added = self.lay_removed = 0.0
        self.wom_open: float | None = None
        self.wom_close: float | None = None

    def observe(self, price: float | None, update: RunnerUpdate, wom: float | None) -> None:
        self.updates += 1
        self.traded_volume += update.traded
        self.back_added += update.back_added
        self.back_removed += update.back_removed
        self.lay_added += update.lay_added
        self.lay_removed += update.lay_removed
        if price is not None:
            if self.open_price is None:
                self.open_price = self.high_price = self.low_price = price
            else:
                self.high_price = max(self.high_price, price)
                self.low_price = min(self.low_price, price)
            self.close_price = price
        if wom is not None:
            if self.wom_open is None:
                self.wom_open = wom
            self.wom_close = wom


class MarketWindows:
    """All windows of one market, for every configured length."""

    def __init__(
        self,
        market_id: str,
        window_seconds: tuple[int, ...] = DEFAULT_WINDOW_SECONDS,
        persisted_seconds: tuple[int, ...] = PERSISTED_WINDOW_SECONDS,
    ):
        if not window_seconds or any(s <= 0 for s in window_seconds):
            raise ValueError(f"window lengths must be positive seconds, got {window_seconds!r}")
        self.market_id = market_id
        self.window_seconds = tuple(sorted(set(window_seconds)))
        self.persisted_seconds = frozenset(persisted_seconds)
        self._start_ms: dict[int, int | None] = {s: None for s in self.window_seconds}
        self._open: dict[int, dict[tuple[int, float], WindowAccumulator]] = {
            s: {} for s in self.window_seconds
        }

    def advance(
        self, publish_time_ms: int, persisted: list[WindowAggregate], live: list[WindowAggregate]
    ) -> None:
        """Close every window that ends at or before `publish_time_ms`.

        Closed windows go to `persisted` when their length is stored, else to `live`.
        """
        for seconds in self.window_seconds:
            length = seconds * 1000
            start = self._start_ms[seconds]
            if start is None or publish_time_ms >= start + length:
                if start is not None:
                    self._close(seconds, start, persisted, live)
                self._start_ms[seconds] = publish_time_ms - publish_time_ms % length

    def observe(
        self, key: tuple[int, float], price: float | None, update: RunnerUpdate, wom: float | None
    ) -> None:
        for accumulators in self._open.values():
            acc = accumulators.get(key)
            if acc is None:
                acc = accumulators[key] = WindowAccumulator()
            acc.observe(price, update, wom)

    def flush(self, persisted: list[WindowAggregate], live: list[WindowAggregate]) -> None:
        """Close all open windows (end of stream)."""
        for seconds in self.window_seconds:
            start = self._start_ms[seconds]
            if start is not None:
                self._close(seconds, start, persisted, live)
            self._start_ms[seconds] = None

    def _close(
        self,
        seconds: int,
        start_ms: int,
        persisted: list[WindowAggregate],
        live: list[WindowAggregate],
    ) -> None:
        accumulators = self._open[seconds]
        if not accumulators:
            return
        out = persisted if seconds in self.persisted_seconds else live
        window_start = datetime.fromtimestamp(start_ms / 1000, UTC)
        window_end = datetime.fromtimestamp((start_ms + seconds * 1000) / 1000, UTC)
        for (selection_id, handicap), acc in accumulators.items():
            move = (
                ticks_between(acc.open_price, acc.close_price)
                if acc.open_price is not None and acc.close_price is not None
                else None
            )
            out.append(
                WindowAggregate(
                    self.market_id,
                    selection_id,
                    handicap,
                    seconds,
                    window_start,
                    window_end,
                    acc.updates,
                    acc.open_price,
                    acc.high_price,
                    acc.low_price,
                    acc.close_price,
                    move,
                    acc.traded_volume,
                    acc.back_added,
                    acc.back_removed,
                    acc.lay_added,
                    acc.lay_removed,
                    acc.wom_open,
                    acc.wom_close,
                )
            )
        self._open[seconds] = {}
