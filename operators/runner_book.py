"""One runner's order book: full-depth ladders, depth-limited ladders, traded volume, BSP.

Ladders are `{price: size}` dicts; an update with size 0 removes the level. Every change to
the `atb`/`atl` ladders is recorded as a signed size delta so window operators and
manipulation detectors see what was added or pulled at which price, not only snapshots.
"""

from __future__ import annotations

from typing import NamedTuple

from operators.price_ladder import ticks_between

WOM_LEVELS = 3
"""Weight of money uses the best three levels on each side, as exchange screens show them."""


class LadderDelta(NamedTuple):
    """Size added (positive) or pulled/matched (negative) at one price on one side."""

    selection_id: int
    handicap: float
    side: str  # "back" (atb) or "lay" (atl)
    price: float
    size_delta: float


class RunnerUpdate(NamedTuple):
    """What one `rc` element did to a runner."""

    traded: float
    invalid_entries: int
    back_added: float
    back_removed: float
    lay_added: float
    lay_removed: float


def _valid_number(value: object) -> bool:
    # JSON (orjson) never yields NaN or infinity, so a type check and a sign check suffice.
    kind = type(value)
    return (kind is float or kind is int) and value >= 0


class RunnerBook:
    """Mutable state of one runner in one market."""

    __slots__ = (
        "adjustment_factor",
        "atb",
        "atl",
        "batb",
        "batl",
        "bdatb",
        "bdatl",
        "best_back",
        "best_lay",
        "bsp",
        "handicap",
        "ltp",
        "name",
        "removal_date",
        "selection_id",
        "sort_priority",
        "spb",
        "spf",
        "spl",
        "spn",
        "status",
        "total_matched",
        "trd",
        "trd_notional",
        "trd_volume",
    )

    def __init__(self, selection_id: int, handicap: float) -> None:
        self.selection_id = selection_id
        self.handicap = handicap
        self.status = "ACTIVE"
        self.name: str | None = None
        self.sort_priority: int | None = None
        self.adjustment_factor: float | None = None
        self.removal_date: str | None = None
        self.bsp: float | None = None
        self.clear_prices()

    def clear_prices(self) -> None:
        """Forget all price data (an `img` replaces the runner's state)."""
        self.atb: dict[float, float] = {}
        self.atl: dict[float, float] = {}
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

    # -- applying a runner change (`rc` element) -------------------------------------------

    def apply(self, rc: dict, deltas: list[LadderDelta] | None) -> RunnerUpdate:
        """Apply one `rc` element; say what it traded and added/pulled on each side."""
        traded = back_added = back_removed = lay_added = lay_removed = 0.0
        invalid = 0
        for key, value in rc.items():
            if key == "atb":
                bad, back_added, back_removed = self._apply_full(self.atb, value, "back", deltas)
                invalid += bad
            elif key == "atl":
                bad, lay_added, lay_removed = self._apply_full(self.atl, value, "lay", deltas)
                invalid += bad
            elif key == "trd":
                traded, bad = self._apply_traded(value)
                invalid += bad
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
            elif key == "batb":
                invalid += _apply_levels(self.batb, value)
            elif key == "batl":
                invalid += _apply_levels(self.batl, value)
            elif key == "bdatb":
                invalid += _apply_levels(self.bdatb, value)
            elif key == "bdatl":
                invalid += _apply_levels(self.bdatl, value)
            elif key == "spb":
                invalid += _apply_prices(self.spb, value)
            elif key == "spl":
                invalid += _apply_prices(self.spl, value)
            elif key == "spn":
                self.spn = value if _valid_number(value) else None
            elif key == "spf":
                self.spf = value if _valid_number(value) else None
        if "atb" in rc or "batb" in rc:
            self.best_back = self._best(self.atb, self.batb, max)
        if "atl" in rc or "batl" in rc:
            self.best_lay = self._best(self.atl, self.batl, min)
        return RunnerUpdate(traded, invalid, back_added, back_removed, lay_added, lay_removed)

    def _apply_full(
        self, ladder: dict[float, float], entries: list, side: str, deltas: list | None
    ) -> tuple[int, float, float]:
        """Apply `[price, size]` levels; return (invalid entries, size added, size pulled)."""
        invalid = 0
        added = removed = 0.0
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
                old = ladder.get(price, 0.0)
                ladder[price] = size
            else:
                old = ladder.pop(price, 0.0)
            change = size - old
            if change > 0:
                added += change
            elif change < 0:
                removed -= change
            else:
                continue
            if deltas is not None:
                deltas.append(LadderDelta(self.selection_id, self.handicap, side, price, change))
        return invalid, added, removed

    def _apply_traded(self, entries: list) -> tuple[float, int]:
        added = 0.0
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
            old = self.trd.get(price, 0.0)
            if size:
                self.trd[price] = size
            else:
                self.trd.pop(price, None)
            change = size - old
            self.trd_volume += change
            self.trd_notional += change * price
            if change > 0:
                added += change
        return added, invalid

    @staticmethod
    def _best(
        full: dict[float, float], levels: dict[int, tuple[float, float]], pick
    ) -> float | None:
        if full:
            return pick(full)
        top = levels.get(0)
        return top[0] if top else None

    # -- derived values --------------------------------------------------------------------

    def best_size(self, side: str) -> float | None:
        price = self.best_back if side == "back" else self.best_lay
        if price is None:
            return None
        full = self.atb if side == "back" else self.atl
        if full:
            return full.get(price)
        top = (self.batb if side == "back" else self.batl).get(0)
        return top[1] if top else None

    def spread_ticks(self) -> int | None:
        if self.best_back is None or self.best_lay is None:
            return None
        return ticks_between(self.best_back, self.best_lay)

    def weight_of_money(self) -> float | None:
        """Share of the best levels' size that is on the back side (0..1)."""
        atb, atl = self.atb, self.atl
        back = sum([atb[p] for p in sorted(atb, reverse=True)[:WOM_LEVELS]]) if atb else 0.0
        lay = sum([atl[p] for p in sorted(atl)[:WOM_LEVELS]]) if atl else 0.0
        total = back + lay
        return back / total if total > 0 else None

    def implied_probability(self) -> float | None:
        """Mid of the back and lay prices in probability space; LTP when the book is one-sided."""
        back, lay = self.best_back, self.best_lay
        if back is not None and lay is not None:
            return 0.5 * (1.0 / back + 1.0 / lay)
        if back is not None:
            return 1.0 / back
        if lay is not None:
            return 1.0 / lay
        return 1.0 / self.ltp if self.ltp else None

    def vwap(self) -> float | None:
        return self.trd_notional / self.trd_volume if self.trd_volume > 0 else None

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


def _apply_levels(levels: dict[int, tuple[float, float]], entries: list) -> int:
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
            levels[level] = (price, size)
        else:
            levels.pop(level, None)
    return invalid


def _apply_prices(ladder: dict[float, float], entries: list) -> int:
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
