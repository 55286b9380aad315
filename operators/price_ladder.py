"""Betfair's CLASSIC price ladder as data: a cutoff table that generates every valid price.

Prices are compared and differenced by their index on the ladder (ticks), never by float
arithmetic, because the increment changes at each cutoff (1.01 → 2 by 0.01, 2 → 3 by 0.02 …).
"""

from __future__ import annotations

from bisect import bisect_left

# (upper bound of the band, increment within the band), in hundredths of a unit.
_BANDS_CENTS: tuple[tuple[int, int], ...] = (
    (200, 1),
    (300, 2),
    (400, 5),
    (600, 10),
    (1000, 20),
    (2000, 50),
    (3000, 100),
    (5000, 200),
    (10000, 500),
    (100000, 1000),
)


def _build_ladder() -> tuple[float, ...]:
    cents = [101]
    for upper, step in _BANDS_CENTS:
        while cents[-1] < upper:
            cents.append(cents[-1] + step)
    return tuple(c / 100 for c in cents)


PRICES: tuple[float, ...] = _build_ladder()
"""All 350 valid prices from 1.01 to 1000, ascending."""

_INDEX = {price: i for i, price in enumerate(PRICES)}


def tick_index(price: float) -> int:
    """Ladder position of `price`; off-ladder prices snap to the nearest valid one at or above."""
    index = _INDEX.get(price)
    if index is not None:
        return index
    return min(bisect_left(PRICES, price - 1e-9), len(PRICES) - 1)


def ticks_between(from_price: float, to_price: float) -> int:
    """Signed number of ladder ticks from one price to another (positive = drifting out)."""
    return tick_index(to_price) - tick_index(from_price)


def price_at(index: int) -> float:
    """Price at a ladder position, clamped to the ladder's ends."""
    return PRICES[max(0, min(index, len(PRICES) - 1))]


def is_valid_price(price: float) -> bool:
    return price in _INDEX
