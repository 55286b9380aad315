"""The market step of the dataflow: a closed market's state leaves the flow, its rows do not.

Betfair sends nothing for a market after the definition that closes it, so the step emits the
market's open windows and final books with that batch and drops its state (a worker that runs
for weeks holds only open markets). Checked for both implementations against the reference
run, which keeps every market until the end of the stream.
"""

from __future__ import annotations

from bytewax.operators import StatefulBatchLogic

from connectors.simulator import simulate_day
from flows.market import _MarketLogic
from operators.market_processor import SinkBatch
from operators.native_core import Operators
from tests.test_operator_golden import RECORD_KINDS, replay

ENCODED_KINDS = ("runner_ticks", "market_ticks", "windows", "live_windows")
"""Kinds the native processor may hand over as COPY tuples (`SinkBatch.records`)."""
FLOW_KINDS = tuple(kind for kind in RECORD_KINDS if kind != "deltas")
"""What the flow's processors emit (they keep no ladder deltas)."""


def all_records(batches: list[SinkBatch]) -> dict[str, list]:
    merged = SinkBatch()
    for batch in batches:
        merged.extend(batch)
    return {
        kind: merged.records(kind) if kind in ENCODED_KINDS else getattr(merged, kind)
        for kind in FLOW_KINDS
    }


def market_lines(seed: int) -> list[tuple[int, bytes]]:
    return list(enumerate(simulate_day(seed=seed, markets=1, messages_per_market=500), start=1))


def test_a_closed_market_is_dropped_with_all_its_rows_out(operators: Operators) -> None:
    lines = market_lines(seed=5)
    logic = _MarketLogic(None)
    emitted: list[SinkBatch] = []
    decisions = []
    for start in range(0, len(lines), 50):
        chunk = [("sim", position, raw) for position, raw in lines[start : start + 50]]
        routed = operators.route_lines(chunk)
        for market_id, changes in routed.by_market.items():
            if logic.processor is None:
                logic.processor = operators.new_market_processor(market_id)
            batches, decision = logic.on_batch([changes])
            emitted.extend(batches)
            decisions.append(decision)

    assert decisions[-1] == StatefulBatchLogic.DISCARD, "the closing batch drops the state"
    assert set(decisions[:-1]) == {StatefulBatchLogic.RETAIN}
    reference = replay(lines, "sim", operators)  # every market kept until end of stream
    got = all_records(emitted)
    for kind in FLOW_KINDS:
        assert [repr(r) for r in got[kind]] == [repr(r) for r in getattr(reference, kind)], kind
    assert got["results"] and got["snapshots"], "a closed market has results and final books"


def test_a_line_after_the_close_is_dead_lettered(operators: Operators) -> None:
    lines = market_lines(seed=6)
    late_tick = next(
        raw for _, raw in reversed(lines) if b'"rc"' in raw and b"marketDefinition" not in raw
    )
    logic = _MarketLogic(None)  # what the flow makes for a key whose state was dropped
    routed = operators.route_lines([("sim", len(lines) + 1, late_tick)])
    ((market_id, changes),) = routed.by_market.items()
    logic.processor = operators.new_market_processor(market_id)
    batches, decision = logic.on_batch([changes])
    assert decision == StatefulBatchLogic.RETAIN
    assert [d.reason for d in batches[0].dead_letters] == ["unknown_market_before_image"]
