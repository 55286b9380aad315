"""Betfair Exchange Stream lines → per-market changes, or a reason why a line is unusable.

One parser serves replayed files (historical layout, flumine self-recordings, raw live
captures) and the live path (raw lines from Kafka). A line is one JSON object:

    {"op": "mcm", "id": 1, "clk": "...", "initialClk": "...", "ct": "SUB_IMAGE",
     "pt": 1627622269330, "mc": [{"id": "1.185781277", "img": true,
                                  "marketDefinition": {...}, "rc": [...], "tv": 12.5}]}

`op` values other than `mcm` that the stream legitimately sends (`connection`, `status`,
`heartbeat`) carry no market data and are skipped; anything else is a dead letter.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

CONTROL_OPS = frozenset({"connection", "status", "heartbeat"})


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
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _bad(source, position, "malformed_json", raw)
    if not isinstance(message, dict):
        return _bad(source, position, "not_an_object", raw)
    op = message.get("op")
    if op != "mcm":
        if op in CONTROL_OPS:
            return ParsedLine([], None, True)
        return _bad(source, position, "unknown_op", raw)
    publish_time = message.get("pt")
    if not isinstance(publish_time, int) or isinstance(publish_time, bool):
        return _bad(source, position, "missing_publish_time", raw)
    market_changes = message.get("mc")
    if market_changes is None or message.get("ct") == "HEARTBEAT":
        return ParsedLine([], None, True)
    if not isinstance(market_changes, list):
        return _bad(source, position, "malformed_market_changes", raw)
    clk = message.get("clk")
    changes = []
    for change in market_changes:
        market_id = change.get("id") if isinstance(change, dict) else None
        if not isinstance(market_id, str):
            return _bad(source, position, "malformed_market_changes", raw)
        changes.append(MarketChange(market_id, publish_time, clk, change, source, position))
    return ParsedLine(changes, None, False)


def _bad(source: str, position: int, reason: str, raw: bytes | str) -> ParsedLine:
    data = raw.encode() if isinstance(raw, str) else raw
    return ParsedLine([], BadLine(source, position, reason, data), False)


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
        if isinstance(raw, BadLine):
            bad.append(raw)
            continue
        parsed = parse_line(raw, source, position)
        if parsed.bad is not None:
            bad.append(parsed.bad)
            continue
        for change in parsed.changes:
            market = by_market.get(change.market_id)
            if market is None:
                by_market[change.market_id] = [change]
            else:
                market.append(change)
    return RoutedLines(by_market, bad, len(lines))
