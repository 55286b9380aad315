"""One runner's order book: full-depth ladders, depth-limited ladders, traded volume, BSP.

Ladders are `{price: size}` dicts; an update with size 0 removes the level. Every change to
the `atb`/`atl` ladders is recorded as a signed size delta so window operators and
manipulation detectors see what was added or pulled at which price, not only snapshots.

This is the hottest code of the market flow (every `rc` element of every message), so the
book keeps each full ladder's prices in a sorted list next to the dict: the best price and
the weight-of-money levels (the best three, as exchange screens show them) are read off its
ends instead of scanning or sorting the ladder.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import NamedTuple

from operators.price_ladder import ticks_between

_new_record = tuple.__new__
"""Builds a NamedTuple from a tuple without its per-field Python `__new__` (hot path)."""


class LadderDelta(NamedTuple):
    """Size added (positive) or pulled/matched (negative) at one price on one side."""

    selection_id: int
    handicap: float
    side: str  # "back" (atb) or "lay" (atl)
    price: float
    size_delta: float


def _valid_number(value: object) -> bool:
    # JSON (orjson) never yields NaN or infinity, so a type check and a sign check suffice.
    kind = type(value)
    return (kind is float or kind is int) and value >= 0


class RunnerBook:
    """Mutable state of one runner in one market.

    `moved_*` hold what the current stream message did to the runner (the market book resets
    them when a message first touches it); the processor feeds them to the windows.
    """

    __slots__ = (
        "adjustment_factor",
        "atb",
        "atl",
        "back_prices",
        "batb",
        "batl",
        "bdatb",
        "bdatl",
        "best_back",
        "best_lay",
        "bsp",
        "handicap",
        "key",
        "lay_prices",
        "ltp",
        "moved_back_added",
        "moved_back_removed",
        "moved_lay_added",
        "moved_lay_removed",
        "moved_traded",
        "name",
        "removal_date",
        "selection_id",
        "sort_priority",
        "spb",
        "spf",
        "spl",
        "spn",
        "spread",
        "spread_back",
        "spread_lay",
        "status",
        "tick_key",
        "top_back_size",
        "top_back_stale",
        "top_lay_size",
        "top_lay_stale",
        "total_matched",
        "touched_in",
        "trd",
        "trd_notional",
        "trd_volume",
        "wom",
    )

    def __init__(self, selection_id: int, handicap: float) -> None:
        self.selection_id = selection_id
        self.handicap = handicap
        self.key = (selection_id, handicap)
        self.status = "ACTIVE"
        self.name: str | None = None
        self.sort_priority: int | None = None
        self.adjustment_factor: float | None = None
        self.removal_date: str | None = None
        self.bsp: float | None = None
        self.touched_in = -1
        """Number of the market message that last touched the runner."""
        self.tick_key = self.key
        """`(id, hc)` exactly as that message spelled them (what its records carry)."""
        self.moved_traded = 0.0
        self.moved_back_added = self.moved_back_removed = 0.0
        self.moved_lay_added = self.moved_lay_removed = 0.0
        self.spread_back: float | None = None
        self.spread_lay: float | None = None
        self.spread: int | None = None
        """Spread in ticks between `spread_back` and `spread_lay`, cached: the ladder lookup
        is not free and the best prices change less often than the runner is touched."""
        self.clear_prices()

    def clear_prices(self) -> None:
        """Forget all price data (an `img` replaces the runner's state)."""
        self.atb: dict[float, float] = {}
        self.atl: dict[float, float] = {}
        self.back_prices: list[float] = []
        """`atb`'s prices (its own key objects), ascending: best back is the last."""
        self.lay_prices: list[float] = []
        """`atl`'s prices (its own key objects), ascending: best lay is the first."""
        self.batb: dict[int, tuple[float, float]] = {}
        self.batl: dict[int, tuple[float, float]] = {}
        self.bdatb: dict[int, tuple[float, float]] = {}
        self.bdatl: dict[int, tuple[float, float]] = {}
        self.trd: dict[float, float] = {}
        self.spb: dict[float, float] = {}
        self.spl: dict[float, float] = {}
        self.trd_volume = 0.0
        self.trd_notional = 0.0
        self.ltp: float | None = None
        self.total_matched = 0.0
        self.spn: float | None = None
        self.spf: float | None = None
        self.best_back: float | None = None
        self.best_lay: float | None = None
        self.top_back_size = self.top_lay_size = 0.0
        """Size on the best three levels of `atb`/`atl`, as added for the weight of money."""
        self.top_back_stale = self.top_lay_stale = False
        """The ladder changed since its `top_*_size` was added up."""
        self.wom: float | None = None

    # -- applying a runner change (`rc` element) -------------------------------------------

    def apply(self, rc: dict, deltas: list[LadderDelta] | None) -> int:
        """Apply one `rc` element, add its volume and churn to `moved_*`; count bad entries.

        Keys are handled in the element's order, so deltas come out in stream order.
        """
        invalid = 0
        back_levels = lay_levels = False
        for key, value in rc.items():
            if key == "id":
                continue
            if key == "atb":
                bad, added, removed = self._apply_full(
                    self.atb, self.back_prices, value, "back", deltas
                )
                invalid += bad
                self.moved_back_added += added
                self.moved_back_removed += removed
                back_levels = self.top_back_stale = True
            elif key == "atl":
                bad, added, removed = self._apply_full(
                    self.atl, self.lay_prices, value, "lay", deltas
                )
                invalid += bad
                self.moved_lay_added += added
                self.moved_lay_removed += removed
                lay_levels = self.top_lay_stale = True
            elif key == "trd":
                invalid += self._apply_traded(value)
            elif key == "ltp":
                if _valid_number(value):
                    self.ltp = value
                else:
                    invalid += 1
            elif key == "tv":
                if _valid_number(value):
                    self.total_matched = value
                else:
                    invalid += 1
            elif key == "spn":
                self.spn = value if _valid_number(value) else None
            elif key == "spf":
                self.spf = value if _valid_number(value) else None
            elif key == "spb":
                invalid += _apply_prices(self.spb, value)
            elif key == "spl":
                invalid += _apply_prices(self.spl, value)
            elif key == "batb":
                invalid += _apply_levels(self.batb, value)
                back_levels = True
            elif key == "batl":
                invalid += _apply_levels(self.batl, value)
                lay_levels = True
            elif key == "bdatb":
                invalid += _apply_levels(self.bdatb, value)
            elif key == "bdatl":
                invalid += _apply_levels(self.bdatl, value)
        if back_levels:
            prices = self.back_prices
            self.best_back = prices[-1] if prices else _top_price(self.batb)
        if lay_levels:
            prices = self.lay_prices
            self.best_lay = prices[0] if prices else _top_price(self.batl)
        return invalid

    def _apply_full(
        self,
        ladder: dict[float, float],
        prices: list[float],
        entries: list,
        side: str,
        deltas: list | None,
    ) -> tuple[int, float, float]:
        """Apply `[price, size]` levels; return (invalid entries, size added, size pulled).

        Prices and sizes are non-negative numbers, and a level with a size has a positive
        price (it may become the best price, which is divided by; `[0, 0]` removes nothing).
        """
        if type(entries) is not list:
            return 1, 0.0, 0.0
        invalid = 0
        added = removed = 0.0
        for entry in entries:
            try:
                price, size = entry
            except (TypeError, ValueError):
                invalid += 1
                continue
            price_kind = type(price)
            size_kind = type(size)
            if not (
                (price_kind is float or price_kind is int)
                and (size_kind is float or size_kind is int)
                and price >= 0
                and size >= 0
            ):
                invalid += 1
                continue
            if size:
                if not price:
                    invalid += 1
                    continue
                old = ladder.get(price)
                ladder[price] = size
                if old is None:
                    insort(prices, price)
                    old = 0.0
            else:
                old = ladder.pop(price, None)
                if old is None:
                    continue
                del prices[bisect_left(prices, price)]
            change = size - old
            if change > 0:
                added += change
            elif change < 0:
                removed -= change
            else:
                continue
            if deltas is not None:
                deltas.append(
                    _new_record(
                        LadderDelta, (self.selection_id, self.handicap, side, price, change)
                    )
                )
        return invalid, added, removed

    def _apply_traded(self, entries: list) -> int:
        """Apply traded-volume levels; add the volume traded to `moved_traded`."""
        if type(entries) is not list:
            return 1
        trd = self.trd
        added = 0.0
        invalid = 0
        for entry in entries:
            try:
                price, size = entry
            except (TypeError, ValueError):
                invalid += 1
                continue
            price_kind = type(price)
            size_kind = type(size)
            if not (
                (price_kind is float or price_kind is int)
                and (size_kind is float or size_kind is int)
                and price >= 0
                and size >= 0
            ):
                invalid += 1
                continue
            old = trd.get(price, 0.0)
            if size:
                trd[price] = size
            else:
                trd.pop(price, None)
            change = size - old
            self.trd_volume += change
            self.trd_notional += change * price
            if change > 0:
                added += change
        self.moved_traded += added
        return invalid

    # -- derived values --------------------------------------------------------------------

    def tick_values(self, in_play: bool) -> tuple:
        """The values of a `RunnerTick` from `status` to `spf`, in its field order."""
        back = self.best_back
        lay = self.best_lay
        if back is None:
            back_size = None
        elif self.atb:
            back_size = self.atb.get(back)
        else:
            back_size = self.batb[0][1]
        if lay is None:
            lay_size = None
        elif self.atl:
            lay_size = self.atl.get(lay)
        else:
            lay_size = self.batl[0][1]
        if back != self.spread_back or lay != self.spread_lay:
            self.spread_back = back
            self.spread_lay = lay
            self.spread = None if back is None or lay is None else ticks_between(back, lay)
        if self.top_back_stale or self.top_lay_stale:
            self.wom = self._weight_of_money()
        if back is not None and lay is not None:
            implied = 0.5 * (1.0 / back + 1.0 / lay)
        elif back is not None:
            implied = 1.0 / back
        elif lay is not None:
            implied = 1.0 / lay
        else:
            implied = 1.0 / self.ltp if self.ltp else None
        volume = self.trd_volume
        return (
            self.status,
            in_play,
            back,
            back_size,
            lay,
            lay_size,
            self.ltp,
            volume,
            self.spread,
            self.wom,
            implied,
            self.trd_notional / volume if volume > 0 else None,
            self.spn,
            self.spf,
        )

    def _weight_of_money(self) -> float | None:
        """Share of the best three levels' size that is on the back side (0..1).

        Sizes add best level first, one by one, as `sum` did on Python 3.11; a side's total
        is re-added only when its ladder changed.
        """
        if self.top_back_stale:
            self.top_back_stale = False
            atb, prices = self.atb, self.back_prices
            depth = len(prices)
            if depth > 2:
                self.top_back_size = atb[prices[-1]] + atb[prices[-2]] + atb[prices[-3]]
            elif depth == 2:
                self.top_back_size = atb[prices[-1]] + atb[prices[-2]]
            else:
                self.top_back_size = atb[prices[-1]] if depth else 0.0
        if self.top_lay_stale:
            self.top_lay_stale = False
            atl, prices = self.atl, self.lay_prices
            depth = len(prices)
            if depth > 2:
                self.top_lay_size = atl[prices[0]] + atl[prices[1]] + atl[prices[2]]
            elif depth == 2:
                self.top_lay_size = atl[prices[0]] + atl[prices[1]]
            else:
                self.top_lay_size = atl[prices[0]] if depth else 0.0
        back = self.top_back_size
        total = back + self.top_lay_size
        return back / total if total > 0 else None

    def snapshot(self, market_id: str) -> dict:
        """The end-of-stream JSON shape of `velo replay --snapshot-out`."""
        return {
            "market_id": market_id,
            "selection_id": self.selection_id,
            "handicap": self.handicap,
            "status": self.status,
            "bsp": self.bsp,
            "ltp": self.ltp,
            "total_matched": float(self.total_matched),
            "atb": [[p, float(s)] for p, s in sorted(self.atb.items(), reverse=True)],
            "atl": [[p, float(s)] for p, s in sorted(self.atl.items())],
            "trd": [[p, float(s)] for p, s in sorted(self.trd.items())],
        }


def _top_price(levels: dict[int, tuple[float, float]]) -> float | None:
    top = levels.get(0)
    return top[0] if top else None


def _apply_levels(levels: dict[int, tuple[float, float]], entries: list) -> int:
    if type(entries) is not list:
        return 1
    invalid = 0
    for entry in entries:
        try:
            level, price, size = entry
        except (TypeError, ValueError):
            invalid += 1
            continue
        if not (isinstance(level, int) and _valid_number(price) and _valid_number(size)):
            invalid += 1
            continue
        if size:
            if not price:  # level 0 gives the best price, which is divided by
                invalid += 1
                continue
            levels[level] = (price, size)
        else:
            levels.pop(level, None)
    return invalid


def _apply_prices(ladder: dict[float, float], entries: list) -> int:
    if type(entries) is not list:
        return 1
    invalid = 0
    for entry in entries:
        try:
            price, size = entry
        except (TypeError, ValueError):
            invalid += 1
            continue
        if not (_valid_number(price) and _valid_number(size)):
            invalid += 1
            continue
        if size:
            ladder[price] = size
        else:
            ladder.pop(price, None)
    return invalid
