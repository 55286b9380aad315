"""The market dataflow: stream lines → per-market book and windows → database.

    lines   [(source, position, raw_line), ...]      one item per source batch
    routed  (market_id, [MarketChange, ...]) | (BAD_LINES, SinkBatch)
    books   (market_id, SinkBatch)                   rows from the market's state machine
    sinks   database (all batches), summary, snapshot

Replay and live share everything but the source (`replay_flow` reads files, the Kafka
worker passes a Kafka source to `build_market_flow`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from connectors.bytewax_io import (
    SINGLE_PARTITION,
    DatabaseSink,
    RunSummary,
    SnapshotSink,
    StreamFileSource,
    SummarySink,
)
from connectors.stream_files import expand_paths
from operators.market_processor import MarketProcessor, SinkBatch, dead_letter_from_bad_line
from operators.stream_messages import MarketChange, route_lines

BAD_LINES = "\x00bad-lines"
"""Routing key of the per-batch dead letters and line counts (never a market id)."""


def _route(lines: list) -> Iterable[tuple[str, object]]:
    routed = route_lines(lines)
    yield (
        BAD_LINES,
        SinkBatch(
            dead_letters=[dead_letter_from_bad_line(bad) for bad in routed.bad], lines=routed.lines
        ),
    )
    yield from routed.by_market.items()


class _MarketLogic(StatefulBatchLogic[list[MarketChange], SinkBatch, MarketProcessor]):
    """Engine shim around MarketProcessor: batch in, one SinkBatch out; flush at EOF."""

    def __init__(self, processor: MarketProcessor | None) -> None:
        self.processor = processor

    def on_batch(self, values: list[list[MarketChange]]) -> tuple[list[SinkBatch], bool]:
        if self.processor is None:
            self.processor = MarketProcessor(values[0][0].market_id)
        out = SinkBatch()
        for changes in values:
            self.processor.process(changes, out)
        return [out], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[SinkBatch], bool]:
        return [self.processor.finish(SinkBatch())], StatefulBatchLogic.RETAIN

    def snapshot(self) -> MarketProcessor:
        return copy.deepcopy(self.processor)


def build_market_flow(
    source: Source,
    writer_factory: Callable[[], object],
    *,
    summary: RunSummary | None = None,
    on_progress: Callable[[RunSummary], None] | None = None,
    summary_path: Path | None = None,
    snapshot_path: Path | None = None,
    dead_letter_sink: Sink | None = None,
) -> Dataflow:
    flow = Dataflow("market")
    lines = op.input("lines", flow, source)
    routed = op.flat_map("route_by_market", lines, _route)
    split = op.branch("split_bad_lines", routed, lambda kv: kv[0] != BAD_LINES)
    books = op.stateful_batch(
        "market_state",
        split.trues,
        _MarketLogic,
    )
    batches = op.merge(
        "all_batches",
        op.map("book_rows", books, lambda kv: kv[1]),
        op.map("bad_line_rows", split.falses, lambda kv: kv[1]),
    )
    op.output("database", batches, DatabaseSink(writer_factory))
    if dead_letter_sink is not None:
        op.output("dead_letter_topic", batches, dead_letter_sink)
    if summary is not None or summary_path is not None:
        op.output(
            "summary",
            op.key_on("summary_key", batches, lambda _: SINGLE_PARTITION),
            SummarySink(summary or RunSummary(), on_progress, summary_path),
        )
    if snapshot_path is not None:
        snapshots = op.filter_map(
            "snapshot_rows",
            batches,
            lambda b: (SINGLE_PARTITION, b.snapshots) if b.snapshots else None,
        )
        op.output("snapshot", snapshots, SnapshotSink(snapshot_path))
    return flow


def replay_flow(
    paths: list[str],
    database_url: str,
    snapshot_out: str | None = None,
    summary_out: str | None = None,
) -> Dataflow:
    """Factory for `python -m bytewax.run "flows.market:replay_flow([...], 'postgresql://…')"`."""
    from connectors.postgres_sink import PostgresWriter

    return build_market_flow(
        StreamFileSource(expand_paths(paths)),
        lambda: PostgresWriter(database_url),
        snapshot_path=Path(snapshot_out) if snapshot_out else None,
        summary_path=Path(summary_out) if summary_out else None,
    )
