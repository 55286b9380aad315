"""Row shapes the operators emit and the sinks persist.

Each record is a NamedTuple whose field order is the column order of its table in
`sql/migrations`, so sinks can COPY tuples straight through. Natural keys (named in
each docstring) make every write idempotent: replaying a stream twice, or a Kafka
redelivery after a crash, leaves the same rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple


class MarketRow(NamedTuple):
    """Latest market definition. Key: market_id (upsert, newest version wins)."""

    market_id: str
    event_id: str | None
    event_type_id: str | None
    market_type: str | None
    name: str | None
    event_name: str | None
    venue: str | None
    country_code: str | None
    market_time: datetime | None
    number_of_winners: int | None
    status: str
    in_play: bool
    bet_delay: int
    version: int
    bsp_market: bool
    last_publish_time: datetime


class RunnerRow(NamedTuple):
    """Latest runner definition. Key: (market_id, selection_id, handicap), upsert."""

    market_id: str
    selection_id: int
    handicap: float
    name: str | None
    sort_priority: int | None
    status: str
    adjustment_factor: float | None
    removal_date: datetime | None
    bsp: float | None


class RunnerTick(NamedTuple):
    """Per-runner book snapshot after one stream message touched the runner.

    Key: (market_id, selection_id, handicap, publish_time, seq). `seq` is the market's message
    sequence number (1 for the first message of the market), so two messages with the same
    publish time stay distinct and a replay reproduces the same keys.
    """

    market_id: str
    selection_id: int
    handicap: float
    publish_time: datetime
    seq: int
    status: str
    in_play: bool
    best_back: float | None
    best_back_size: float | None
    best_lay: float | None
    best_lay_size: float | None
    ltp: float | None
    traded_volume: float
    spread_ticks: int | None
    weight_of_money: float | None
    implied_probability: float | None
    vwap: float | None
    spn: float | None
    spf: float | None
    seconds_to_off: float | None


class MarketTick(NamedTuple):
    """Market-wide book after one stream message. Key: (market_id, publish_time, seq)."""

    market_id: str
    publish_time: datetime
    seq: int
    status: str
    in_play: bool
    total_matched: float
    back_overround: float | None
    lay_overround: float | None
    active_runners: int
    seconds_to_off: float | None


class WindowAggregate(NamedTuple):
    """One closed event-time window on publish time.

    Key: (market_id, selection_id, handicap, window_secs, window_start). Market-level windows use
    selection_id 0. Price moves are in Betfair ladder ticks; churn is the volume added
    and removed across all ladder levels in the window.
    """

    market_id: str
    selection_id: int
    handicap: float
    window_secs: int
    window_start: datetime
    window_end: datetime
    updates: int
    open_ltp: float | None
    high_ltp: float | None
    low_ltp: float | None
    close_ltp: float | None
    price_move_ticks: int | None
    traded_volume: float
    back_added: float
    back_removed: float
    lay_added: float
    lay_removed: float
    wom_open: float | None
    wom_close: float | None


class ResultRow(NamedTuple):
    """Settled runner outcome. Key: (market_id, selection_id, handicap)."""

    market_id: str
    selection_id: int
    handicap: float
    status: str
    bsp: float | None
    settled_time: datetime


class Prediction(NamedTuple):
    """Model win probability of one runner at one moment before the off.

    Key: (market_id, selection_id, model_version, publish_time). `market_probability` is the
    market's implied probability normalised over the active runners.
    """

    market_id: str
    selection_id: int
    publish_time: datetime
    model_version: str
    market_probability: float
    fundamental_probability: float
    win_probability: float


class DeadLetter(NamedTuple):
    """A line or message that could not be used, with why. Key: (source, position, reason)."""

    source: str
    position: int
    reason: str
    raw: str
    recorded_time: datetime
