"""The market dataflow: stream lines → per-market book and windows → database.

    lines   [(source, position, raw_line), ...]      one item per source batch
    routed  (market_id, changes) | (BAD_LINES, SinkBatch)   changes: see operators/native_core
    books   (market_id, SinkBatch)                   rows from the market's state machine
    sinks   database (all batches), summary, snapshot

With a model, racecard events join in (same line batches, from a JSONL file or the racecards
topic):

    cards   (market_id, RacecardFeatures) | (BAD_LINES, SinkBatch)   features per racecard
    scored  (market_id, SinkBatch(predictions))      books + cards, per market, on a cadence
    sinks   database and summary (with everything else), the predictions topic

Replay and live share everything but the sources (`replay_flow` reads files, the Kafka
worker passes Kafka sources to `build_market_flow`).
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

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
from operators.market_book import MARKET_CLOSED
from operators.market_processor import MarketProcessor, SinkBatch, dead_letter_from_bad_line
from operators.native_core import (
    finish_step,
    market_id_of,
    new_market_processor,
    process_step,
    route_lines,
)
from operators.race_scoring import RacecardFeatures, RaceScoringState

if TYPE_CHECKING:
    from models.live_scoring import LiveRaceScorer

log = logging.getLogger(__name__)

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


class _MarketLogic(StatefulBatchLogic[object, SinkBatch, MarketProcessor]):
    """Engine shim around the market processor (native or Python, see
    `operators.native_core`): batch in, its SinkBatch out; flush at EOF.

    A market's state goes as soon as a definition closes it: Betfair sends nothing for a
    closed market, so its open windows and final runner books are emitted then, as at end of
    stream, and a long-running worker holds only the markets still open. A line that still
    comes for it starts the market again: dead-lettered unless it is an image or definition.
    """

    def __init__(self, processor: MarketProcessor | None) -> None:
        self.processor = processor

    def on_batch(self, values: list[object]) -> tuple[list[SinkBatch], bool]:
        if self.processor is None:
            self.processor = new_market_processor(market_id_of(values[0]))
        out = process_step(self.processor, values)
        if out.markets and out.markets[-1].status == MARKET_CLOSED:
            return [out, finish_step(self.processor)], StatefulBatchLogic.DISCARD
        return [out], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[SinkBatch], bool]:
        return [finish_step(self.processor)], StatefulBatchLogic.RETAIN

    def snapshot(self) -> MarketProcessor:
        return copy.deepcopy(self.processor)


def _once_per_process(factory: Callable[[], LiveRaceScorer]) -> Callable[[], LiveRaceScorer]:
    """The scorer holds an ONNX session (not picklable, costly): one per process, shared by
    its worker threads, made on first use; never part of a step's state."""
    lock = threading.Lock()
    made: list[LiveRaceScorer] = []

    def get() -> LiveRaceScorer:
        with lock:
            if not made:
                made.append(factory())
            return made[0]

    return get


def _racecard_reader(
    scorer: Callable[[], LiveRaceScorer],
) -> Callable[[list], Iterable[tuple[str, object]]]:
    def read(lines: list) -> Iterable[tuple[str, object]]:
        cards, dead = scorer().read_racecards(lines)
        if dead:
            yield (BAD_LINES, SinkBatch(dead_letters=dead))
        for card in cards:
            yield (card.market_id, card)

    return read


ScoringInput = tuple[str, RacecardFeatures | SinkBatch]
"""(market_id, a racecard's features or a batch of the market's rows)."""


class _RaceScoringLogic(StatefulBatchLogic[ScoringInput, SinkBatch, RaceScoringState]):
    """Engine shim around RaceScoringState: predictions out; the state goes when the market
    closes, unless moments still wait for a racecard that a slower input has yet to deliver."""

    def __init__(
        self,
        state: RaceScoringState | None,
        scorer: Callable[[], LiveRaceScorer],
        every_seconds: float,
    ) -> None:
        self.state = state
        self.scorer = scorer
        self.every_seconds = every_seconds

    def on_batch(self, values: list[ScoringInput]) -> tuple[list[SinkBatch], bool]:
        if self.state is None:
            self.state = RaceScoringState(values[0][0])
        state, scorer = self.state, self.scorer()
        predictions = []
        for _, value in values:
            if isinstance(value, RacecardFeatures):
                predictions.extend(state.observe_racecard(value, scorer))
            else:
                predictions.extend(state.observe_batch(value, scorer, self.every_seconds))
        out = [SinkBatch(predictions=predictions)] if predictions else []
        if state.closed and (state.racecard is not None or not state.pending):
            level = logging.INFO if state.racecard is not None else logging.DEBUG
            log.log(
                level,
                "market %s closed: %d predictions, no prediction for %s",
                state.market_id,
                state.predictions,
                state.skipped or "nothing",
            )
            return out, StatefulBatchLogic.DISCARD
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[SinkBatch], bool]:
        predictions = self.state.finish(self.scorer(), self.every_seconds)
        return ([SinkBatch(predictions=predictions)] if predictions else []), (
            StatefulBatchLogic.RETAIN
        )

    def snapshot(self) -> RaceScoringState:
        return copy.deepcopy(self.state)


def build_market_flow(
    source: Source,
    writer_factory: Callable[[], object],
    *,
    summary: RunSummary | None = None,
    on_progress: Callable[[RunSummary], None] | None = None,
    summary_path: Path | None = None,
    snapshot_path: Path | None = None,
    dead_letter_sink: Sink | None = None,
    racecards: Source | None = None,
    scorer_factory: Callable[[], LiveRaceScorer] | None = None,
    prediction_sink: Sink | None = None,
    score_every_seconds: float = 10.0,
    overlap_writes: bool = False,
) -> Dataflow:
    """The market dataflow; with `racecards` and `scorer_factory`, also the race scoring.

    `scorer_factory` is called once per process, on first use. Predictions go to the
    database (and the summary) with every other row, and to `prediction_sink` if given.
    `overlap_writes`: write each batch while the next is computed (runs without recovery
    snapshots only, see `DatabaseSink`).
    """
    if (racecards is None) != (scorer_factory is None):
        raise ValueError("racecards and scorer_factory must be given together")
    if prediction_sink is not None and scorer_factory is None:
        raise ValueError("prediction_sink needs racecards and a scorer_factory")
    flow = Dataflow("market")
    lines = op.input("lines", flow, source)
    routed = op.flat_map("route_by_market", lines, _route)
    split = op.branch("split_bad_lines", routed, lambda kv: kv[0] != BAD_LINES)
    books = op.stateful_batch(
        "market_state",
        split.trues,
        _MarketLogic,
    )
    streams = [
        op.map("book_rows", books, lambda kv: kv[1]),
        op.map("bad_line_rows", split.falses, lambda kv: kv[1]),
    ]
    if racecards is not None and scorer_factory is not None:
        scorer = _once_per_process(scorer_factory)
        cards = op.flat_map(
            "racecard_features", op.input("racecards", flow, racecards), _racecard_reader(scorer)
        )
        card_split = op.branch("split_bad_racecards", cards, lambda kv: kv[0] != BAD_LINES)
        scoring_inputs = op.map(
            "keep_market_id",
            op.merge("books_and_racecards", books, card_split.trues),
            lambda kv: (kv[0], kv),
        )
        scored = op.map(
            "prediction_rows",
            op.stateful_batch(
                "race_scoring",
                scoring_inputs,
                lambda state: _RaceScoringLogic(state, scorer, score_every_seconds),
            ),
            lambda kv: kv[1],
        )
        if prediction_sink is not None:
            op.output("prediction_topic", scored, prediction_sink)
        streams += [scored, op.map("bad_racecard_rows", card_split.falses, lambda kv: kv[1])]
    batches = op.merge("all_batches", *streams)
    op.output("database", batches, DatabaseSink(writer_factory, overlap=overlap_writes))
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
