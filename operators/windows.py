"""Event-time tumbling windows on publish time, per runner and per market.

Windows are aligned to multiples of their length (a 10 s window covers [t, t+10 s) with
t a multiple of 10 s since the epoch), so every worker and every replay cuts the same
windows. Time comes in as an argument (the message's `pt`), never from the wall clock.
When a market's clock crosses a boundary, every open window of that length closes at once;
`flush` closes the rest at end of stream.

Every window length sees every observation (one per touched runner and one for the market
per message), so observing is the hot path: accumulators are plain lists (see `observe`)
and a message that crosses no boundary costs one comparison in `advance`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from math import inf

from operators.price_ladder import PRICES, ticks_between
from operators.records import WindowAggregate
from operators.runner_book import RunnerBook

DEFAULT_WINDOW_SECONDS: tuple[int, ...] = (1, 10, 60)
PERSISTED_WINDOW_SECONDS: tuple[int, ...] = (10, 60)
"""Lengths written to the database; 1 s windows feed in-flow detectors only (they would
add about one row per stream message)."""
MAX_WINDOW_SECONDS = 86_400
"""Longest window: accepted publish times keep a day inside `datetime`'s range (see
`stream_messages.MIN_PUBLISH_TIME_MS`), so every window boundary is a datetime."""
MARKET_SELECTION_ID = 0
"""Market-level windows are stored with this selection id."""
_TICKS = {price: index for index, price in enumerate(PRICES)}
"""Ladder positions of valid prices: most moves need no call into `ticks_between`."""
_new_record = tuple.__new__
"""Builds a NamedTuple from a tuple without its per-field Python `__new__` (hot path)."""


class MarketWindows:
    """All windows of one market, for every configured length."""

    def __init__(
        self,
        market_id: str,
        window_seconds: tuple[int, ...] = DEFAULT_WINDOW_SECONDS,
        persisted_seconds: tuple[int, ...] = PERSISTED_WINDOW_SECONDS,
    ):
        if not window_seconds or any(not 0 < s <= MAX_WINDOW_SECONDS for s in window_seconds):
            raise ValueError(
                f"window lengths must be positive seconds, at most {MAX_WINDOW_SECONDS}, "
                f"got {window_seconds!r}"
            )
        self.market_id = market_id
        self.window_seconds = tuple(sorted(set(window_seconds)))
        self.persisted_seconds = frozenset(persisted_seconds)
        self._end_ms: list[float] = [-inf for _ in self.window_seconds]
        """Per length: end of the open window (-inf before the first message)."""
        self._windows: list[tuple[int, dict[RunnerBook | None, list]]] = [
            (seconds, {}) for seconds in self.window_seconds
        ]
        """Per length: open accumulators by runner (None: the market), in first-seen order."""
        self._next_end_ms: float = -inf
        """The earliest of `_end_ms`: messages before it close nothing."""

    def advance(
        self, publish_time_ms: int, persisted: list[WindowAggregate], live: list[WindowAggregate]
    ) -> None:
        """Close every window that ends at or before `publish_time_ms`.

        Closed windows go to `persisted` when their length is stored, else to `live`.
        """
        if publish_time_ms < self._next_end_ms:
            return
        ends = self._end_ms
        next_end = inf
        for index, end in enumerate(ends):
            if publish_time_ms >= end:
                length = self._windows[index][0] * 1000
                if end != -inf:
                    self._close(index, end - length, persisted, live)
                end = ends[index] = publish_time_ms - publish_time_ms % length + length
            if end < next_end:
                next_end = end
        self._next_end_ms = next_end

    def observe(self, runners: list[RunnerBook]) -> None:
        """Add what one message did to each runner, and to the market, to every open window.

        Each runner's observation is its price (LTP, else best back), `moved_*` volume and
        churn, and weight of money; the market's is the runners' volume and churn added in
        touch order. An accumulator is a `WindowAggregate` under construction: a list in
        its field order, whose window bounds and price move `_close` fills in. Sums add in
        observation order, so they round the same way on every replay.
        """
        if not runners:
            return
        market_id = self.market_id
        windows = self._windows
        for runner in runners:
            ltp = runner.ltp
            price = ltp if ltp is not None else runner.best_back
            traded = runner.moved_traded
            back_added = runner.moved_back_added
            back_removed = runner.moved_back_removed
            lay_added = runner.moved_lay_added
            lay_removed = runner.moved_lay_removed
            wom = runner.wom
            for seconds, accumulators in windows:
                acc = accumulators.get(runner)
                if acc is None:
                    selection_id, handicap = runner.tick_key
                    accumulators[runner] = [
                        market_id, selection_id, handicap, seconds, None, None,
                        1, price, price, price, price, None,
                        traded, back_added, back_removed, lay_added, lay_removed, wom, wom,
                    ]  # fmt: skip
                    continue
                acc[6] += 1
                if price is not None:
                    if acc[7] is None:
                        acc[7] = acc[8] = acc[9] = price
                    else:
                        if price > acc[8]:
                            acc[8] = price
                        if price < acc[9]:
                            acc[9] = price
                    acc[10] = price
                # Moves are >= 0 and sums never -0.0, so adding a zero would change nothing.
                if traded:
                    acc[12] += traded
                if back_added:
                    acc[13] += back_added
                if back_removed:
                    acc[14] += back_removed
                if lay_added:
                    acc[15] += lay_added
                if lay_removed:
                    acc[16] += lay_removed
                if wom is not None:
                    if acc[17] is None:
                        acc[17] = wom
                    acc[18] = wom

        first, *others = runners
        traded = first.moved_traded
        back_added = first.moved_back_added
        back_removed = first.moved_back_removed
        lay_added = first.moved_lay_added
        lay_removed = first.moved_lay_removed
        for runner in others:
            traded += runner.moved_traded
            back_added += runner.moved_back_added
            back_removed += runner.moved_back_removed
            lay_added += runner.moved_lay_added
            lay_removed += runner.moved_lay_removed
        for seconds, accumulators in windows:
            acc = accumulators.get(None)
            if acc is None:
                accumulators[None] = [
                    market_id, MARKET_SELECTION_ID, 0.0, seconds, None, None,
                    1, None, None, None, None, None,
                    traded, back_added, back_removed, lay_added, lay_removed, None, None,
                ]  # fmt: skip
                continue
            acc[6] += 1
            acc[12] += traded
            acc[13] += back_added
            acc[14] += back_removed
            acc[15] += lay_added
            acc[16] += lay_removed

    def flush(self, persisted: list[WindowAggregate], live: list[WindowAggregate]) -> None:
        """Close all open windows (end of stream)."""
        for index, end in enumerate(self._end_ms):
            if end != -inf:
                self._close(index, end - self._windows[index][0] * 1000, persisted, live)
            self._end_ms[index] = -inf
        self._next_end_ms = -inf

    def _close(
        self,
        index: int,
        start_ms: int,
        persisted: list[WindowAggregate],
        live: list[WindowAggregate],
    ) -> None:
        seconds, accumulators = self._windows[index]
        if not accumulators:
            return
        out = persisted if seconds in self.persisted_seconds else live
        window_start = datetime.fromtimestamp(start_ms / 1000, UTC)
        window_end = datetime.fromtimestamp((start_ms + seconds * 1000) / 1000, UTC)
        ticks = _TICKS
        append = out.append
        for acc in accumulators.values():
            acc[4] = window_start
            acc[5] = window_end
            open_price = acc[7]
            if open_price is not None:
                close = acc[10]
                open_tick = ticks.get(open_price)
                close_tick = ticks.get(close)
                if open_tick is None or close_tick is None:
                    acc[11] = ticks_between(open_price, close)
                else:
                    acc[11] = close_tick - open_tick
            append(_new_record(WindowAggregate, acc))
        self._windows[index] = (seconds, {})
