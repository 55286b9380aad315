"""Betfair Exchange Stream lines → per-market changes, or a reason why a line is unusable.

One parser serves replayed files (historical layout, flumine self-recordings, raw live
captures) and the live path (raw lines from Kafka). A line is one JSON object:

    {"op": "mcm", "id": 1, "clk": "...", "initialClk": "...", "ct": "SUB_IMAGE",
     "pt": 1627622269330, "mc": [{"id": "1.185781277", "img": true,
                                  "marketDefinition": {...}, "rc": [...], "tv": 12.5}]}

`op` values other than `mcm` that the stream legitimately sends (`connection`, `status`,
`heartbeat`) carry no market data and are skipped; anything else is a dead letter. So is a
publish time (`pt`, ms since the epoch) that is not an int or lies outside
`[MIN_PUBLISH_TIME_MS, MAX_PUBLISH_TIME_MS)`: every record carries it as a datetime.
"""

from __future__ import annotations

from typing import NamedTuple

from orjson import JSONDecodeError, loads

CONTROL_OPS = frozenset({"connection", "status", "heartbeat"})
MIN_PUBLISH_TIME_MS = -62_135_510_400_000
"""0001-01-02T00:00Z: a day inside `datetime`'s range, so a window of up to a day (see
`windows.MAX_WINDOW_SECONDS`) around any accepted publish time is a datetime too."""
MAX_PUBLISH_TIME_MS = 253_402_214_400_000
"""9999-12-31T00:00Z (exclusive), a day inside `datetime`'s range likewise."""
_new_record = tuple.__new__
"""Builds a NamedTuple from a tuple without its per-field Python `__new__` (hot path)."""


class MarketChange(NamedTuple):
    """One element of an `mcm` message's `mc` list, with the message header it came with."""

    market_id: str
    publish_time_ms: int
    clk: str | None
    change: dict
    source: str
    """Where the line came from: a file path, or `topic[partition]` on Kafka."""
    position: int
    """Line number in a file (1-based) or Kafka offset."""


class BadLine(NamedTuple):
    """A line that could not be turned into market changes."""

    source: str
    position: int
    reason: str
    raw: bytes


class ParsedLine(NamedTuple):
    changes: list[MarketChange]
    bad: BadLine | None
    heartbeat: bool


def parse_line(raw: bytes | str, source: str, position: int) -> ParsedLine:
    """Split one stream line into market changes; never raises on bad input."""
    parsed = _parse(raw, source, position)
    if parsed is None:
        return ParsedLine([], None, True)
    if type(parsed) is str:
        return ParsedLine([], _bad_line(source, position, parsed, raw), False)
    return ParsedLine(parsed, None, False)


def _parse(raw: bytes | str, source: str, position: int) -> list[MarketChange] | str | None:
    """The line's market changes, or why it is bad, or None for a control message/heartbeat.

    `route_lines` calls this for every line, so it returns plain values, not a `ParsedLine`.
    """
    try:
        message = loads(raw)
    except JSONDecodeError:
        return "malformed_json"
    if type(message) is not dict:
        return "not_an_object"
    op = message.get("op")
    if op != "mcm":
        return None if type(op) is str and op in CONTROL_OPS else "unknown_op"
    publish_time = message.get("pt")
    if type(publish_time) is not int:
        return "missing_publish_time"
    if not MIN_PUBLISH_TIME_MS <= publish_time < MAX_PUBLISH_TIME_MS:
        return "publish_time_out_of_range"
    market_changes = message.get("mc")
    if market_changes is None or message.get("ct") == "HEARTBEAT":
        return None
    if type(market_changes) is not list:
        return "malformed_market_changes"
    clk = message.get("clk")
    changes = []
    for change in market_changes:
        market_id = change.get("id") if type(change) is dict else None
        if type(market_id) is not str:
            return "malformed_market_changes"
        changes.append(
            _new_record(MarketChange, (market_id, publish_time, clk, change, source, position))
        )
    return changes


def _bad_line(source: str, position: int, reason: str, raw: bytes | str) -> BadLine:
    return BadLine(source, position, reason, raw.encode() if isinstance(raw, str) else raw)


class RoutedLines(NamedTuple):
    """A batch of lines split by market, in stream order within each market."""

    by_market: dict[str, list[MarketChange]]
    bad: list[BadLine]
    lines: int


def route_lines(lines: list[tuple[str, int, bytes | BadLine]]) -> RoutedLines:
    """Parse `(source, position, raw)` lines and group the changes by market id.

    A source may hand over a `BadLine` in place of raw bytes (e.g. a truncated file).
    """
    by_market: dict[str, list[MarketChange]] = {}
    bad: list[BadLine] = []
    for source, position, raw in lines:
        if type(raw) is BadLine:
            bad.append(raw)
            continue
        parsed = _parse(raw, source, position)
        if parsed is None:
            continue
        if type(parsed) is str:
            bad.append(_bad_line(source, position, parsed, raw))
            continue
        for change in parsed:
            market = by_market.get(change[0])
            if market is None:
                by_market[change[0]] = [change]
            else:
                market.append(change)
    return RoutedLines(by_market, bad, len(lines))
