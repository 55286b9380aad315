"""The one place that picks the market operators' implementation.

`velo_native` (the Rust crate in `native/`) routes lines and runs the per-market state machine
with exactly the records of the pure-Python `operators/` code, several times faster. The
Python stays the readable reference and the fallback: it is used when the extension is not
installed (no Rust toolchain) or when the environment says `VELO_NATIVE=0`.

The two implementations hand different objects between routing and processing (native routing
keeps each market's changes parsed in Rust, as an opaque picklable `MarketChanges`), so a
flow takes both functions from here, never one from each.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

from operators import stream_messages
from operators.market_processor import MarketProcessor, SinkBatch
from operators.windows import DEFAULT_WINDOW_SECONDS, PERSISTED_WINDOW_SECONDS

try:
    import velo_native
except ImportError:  # no compiled core in this environment
    velo_native = None


class Operators(NamedTuple):
    """One implementation of routing and the per-market processor."""

    name: str
    route_lines: Callable[[list], stream_messages.RoutedLines]
    """`[(source, position, raw | BadLine), ...]` → `RoutedLines` (values: market changes)."""
    new_market_processor: Callable[..., Any]
    """`(market_id, window_seconds=…, persisted_window_seconds=…, keep_deltas=False)` → an
    object with `process(changes, out)`, `finish(out)` and `market_id`, picklable."""


def _native_market_processor(
    market_id: str,
    window_seconds: tuple[int, ...] = DEFAULT_WINDOW_SECONDS,
    persisted_window_seconds: tuple[int, ...] = PERSISTED_WINDOW_SECONDS,
    keep_deltas: bool = False,
) -> Any:
    """The native processor with the Python processor's default window lengths."""
    return velo_native.MarketProcessor(
        market_id, window_seconds, persisted_window_seconds, keep_deltas
    )


PYTHON = Operators("python", stream_messages.route_lines, MarketProcessor)
NATIVE: Operators | None = (
    Operators("native", velo_native.route_lines, _native_market_processor)
    if velo_native is not None
    else None
)
CopyRows = velo_native.CopyRows if velo_native is not None else None
"""COPY mode of the native processor (None without it): `rows = CopyRows()`, then
`processor.process(changes, out, rows)` / `processor.finish(out, rows)` put runner ticks,
market ticks, windows and live windows into `rows` instead of `out`'s lists. Per table
(`rows.runner_ticks`, `.market_ticks`, `.windows`, `.live_windows`): `.table`, `.rows`,
`.data` (PostgreSQL binary COPY tuples, no header or trailer; ValueError where psycopg would
refuse a value) and `.records()` (the NamedTuples the Python processor makes)."""

SELECTED = NATIVE if NATIVE is not None and os.environ.get("VELO_NATIVE") != "0" else PYTHON
"""What the flows use: native when installed, unless `VELO_NATIVE=0`."""
route_lines = SELECTED.route_lines
new_market_processor = SELECTED.new_market_processor


def _copy_mode(processor: Any) -> bool:
    """Whether `processor` is native and can put its frequent rows into `CopyRows`."""
    return velo_native is not None and isinstance(processor, velo_native.MarketProcessor)


def process_step(processor: Any, values: list) -> SinkBatch:
    """One flow step of one market: every routed value in order, into one `SinkBatch`.

    The native processor runs in COPY mode here: its ticks and windows stay encoded in
    `out.copy_rows` until the sink sends them (records only if a consumer asks)."""
    out = SinkBatch()
    if _copy_mode(processor):
        rows = CopyRows()
        for changes in values:
            processor.process(changes, out, rows)
        out.copy_rows.append(rows)
    else:
        for changes in values:
            processor.process(changes, out)
    if out.messages:
        out.market_ids.add(processor.market_id)
    return out


def finish_step(processor: Any) -> SinkBatch:
    """End of stream for one market: its open windows and final runner snapshots."""
    out = SinkBatch()
    if not _copy_mode(processor):
        return processor.finish(out)
    rows = CopyRows()
    processor.finish(out, rows)
    out.copy_rows.append(rows)
    return out


def market_id_of(changes: Any) -> str:
    """The market of one routed value: a native `MarketChanges` or a list of `MarketChange`."""
    return changes.market_id if hasattr(changes, "market_id") else changes[0].market_id
