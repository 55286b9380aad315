"""Our order book equals betfairlightweight's market cache through every real horse-racing file.

Both consume the same lines in the same order; at regular checkpoints and at the end every
runner's ladders (atb/atl), traded ladder, LTP, total matched and status must agree, and the
final state must carry the closing definition's winners, losers, removals and BSPs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from betfairlightweight import StreamListener

from connectors.stream_files import read_lines
from operators.market_processor import MarketProcessor, SinkBatch
from operators.stream_messages import parse_line

HORSE_RACING_FILES = [
    "1.127236622.bz2",
    "1-206064380.bz2",
    "1.185781277.bz2",
    "SELF-1.181223995",
    "1.205822330.bz2",
    "BASIC-1.132153978",
    "1.164917629.bz2",
]
CHECKPOINT_EVERY = 500


def _ladder(entries: list[dict]) -> list[tuple[float, float]]:
    return sorted((e["price"], e["size"]) for e in entries)


def _compare(processors: dict[str, MarketProcessor], books: list[dict], where: str) -> int:
    compared = 0
    for book in books:
        processor = processors[book["marketId"]]
        assert processor.book.status == book["status"], where
        assert processor.book.in_play == book["inplay"], where
        for runner in book["runners"]:
            ours = processor.book.runners[(runner["selectionId"], float(runner["handicap"] or 0))]
            context = f"{where} market {book['marketId']} runner {runner['selectionId']}"
            assert sorted(ours.atb.items()) == _ladder(runner["ex"]["availableToBack"]), context
            assert sorted(ours.atl.items()) == _ladder(runner["ex"]["availableToLay"]), context
            assert sorted(ours.trd.items()) == _ladder(runner["ex"]["tradedVolume"]), context
            assert ours.ltp == runner.get("lastPriceTraded"), context
            assert ours.total_matched == pytest.approx(runner.get("totalMatched") or 0), context
            assert ours.status == runner["status"], context
            compared += 1
    return compared


@pytest.mark.data
@pytest.mark.parametrize("name", HORSE_RACING_FILES)
def test_book_matches_betfairlightweight(betfair_dir: Path, name: str) -> None:
    path = betfair_dir / name
    listener = StreamListener(max_latency=None, lightweight=True)
    listener.register_stream(0, "marketSubscription")
    processors: dict[str, MarketProcessor] = {}
    out = SinkBatch()
    compared = 0
    lines = 0
    for position, raw in read_lines(path):
        assert isinstance(raw, bytes), f"{name} broke at line {position}"
        listener.on_data(raw.decode())
        for change in parse_line(raw, name, position).changes:
            processor = processors.get(change.market_id)
            if processor is None:
                processor = processors[change.market_id] = MarketProcessor(change.market_id)
            processor.process([change], out)
        lines += 1
        if lines % CHECKPOINT_EVERY == 0:
            compared += _compare(processors, listener.snap(), f"{name}:{position}")
    final_books = listener.snap()
    compared += _compare(processors, final_books, f"{name}:end")
    assert lines > 100 and compared > 0
    assert not out.dead_letters, out.dead_letters[:3]

    # The final state carries the closing definition's results and BSPs.
    for book in final_books:
        if book["status"] != "CLOSED":
            continue
        for runner in book["runners"]:
            ours = processors[book["marketId"]].book.runners[
                (runner["selectionId"], float(runner["handicap"] or 0))
            ]
            assert ours.status in {"WINNER", "LOSER", "REMOVED", "PLACED"}
            assert ours.bsp == runner["sp"]["actualSP"]


@pytest.mark.data
def test_closing_results_are_emitted(betfair_dir: Path) -> None:
    """The closing definition of a settled WIN market yields one WINNER and BSP results."""
    path = betfair_dir / "1.127236622.bz2"
    processor = MarketProcessor("1.127236622")
    out = SinkBatch()
    for position, raw in read_lines(path):
        processor.process(parse_line(raw, path.name, position).changes, out)
    final = {row.selection_id: row for row in out.results}
    assert len(final) == 13
    assert [row.status for row in final.values()].count("WINNER") == 1
    assert final[11129238].status == "WINNER" and final[11129238].bsp == 7.69
