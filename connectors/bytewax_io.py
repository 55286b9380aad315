"""Bytewax sources and sinks for the market dataflow.

- `StreamFileSource`: one partition per recording; resumable at a line number.
- `DatabaseSink`: one partition per worker writing each Bytewax batch in one transaction.
  Delivery is at-least-once (a resumed run may rewrite a batch); the writer upserts on
  natural keys, so effects are exactly-once.
- `SnapshotSink`, `SummarySink`: single-partition sinks gathering the end-of-stream book
  snapshot and the run summary, so their output is the same for any number of workers.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)

from connectors.stream_files import read_lines
from operators.market_processor import SinkBatch
from operators.stream_messages import BadLine

Line = tuple[str, int, bytes | BadLine]
SINGLE_PARTITION = "all"


class _FilePartition(StatefulSourcePartition[list[Line], int]):
    def __init__(self, path: Path, batch_lines: int, resume_line: int) -> None:
        self._source = str(path)
        self._lines = read_lines(path, skip=resume_line)
        self._batch_lines = batch_lines
        self._position = resume_line

    def next_batch(self) -> list[list[Line]]:
        batch: list[Line] = []
        source = self._source
        for position, raw in self._lines:
            batch.append((source, position, raw))
            if len(batch) >= self._batch_lines:
                break
        if not batch:
            raise StopIteration
        self._position = batch[-1][1]
        return [batch]

    def snapshot(self) -> int:
        return self._position


class StreamFileSource(FixedPartitionedSource[list[Line], int]):
    """Emits lists of `(source, line_number, raw_line)`; one partition per file."""

    def __init__(self, paths: list[Path], batch_lines: int = 2000) -> None:
        self._paths = {str(p): p for p in paths}
        self._batch_lines = batch_lines

    def list_parts(self) -> list[str]:
        return list(self._paths)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _FilePartition:
        return _FilePartition(self._paths[for_part], self._batch_lines, resume_state or 0)


class _DatabasePartition(StatelessSinkPartition[SinkBatch]):
    def __init__(self, writer_factory: Callable[[], object], overlap: bool) -> None:
        self._writer = writer_factory()
        self._pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="velo-db") if overlap else None
        )
        self._in_flight: Future | None = None

    def write_batch(self, items: list[SinkBatch]) -> None:
        merged = SinkBatch()
        for item in items:
            merged.extend(item)
        if self._pool is None:
            self._writer.write(merged)
            return
        self._wait()  # one batch in flight: bounded memory, and its error surfaces here
        self._in_flight = self._pool.submit(self._writer.write, merged)

    def _wait(self) -> None:
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            in_flight.result()

    def close(self) -> None:
        try:
            self._wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
            self._writer.close()


class DatabaseSink(DynamicSink[SinkBatch]):
    """Writes every batch through a writer with `write(SinkBatch)` and `close()`.

    `overlap=True` writes a batch on a helper thread while the flow computes the next one
    (the database and the operators then use both cores). Only for runs without recovery
    snapshots: Bytewax takes a batch as delivered when `write_batch` returns, so a snapshot
    could get ahead of rows still in flight; without snapshots a crashed run starts over.
    """

    def __init__(self, writer_factory: Callable[[], object], *, overlap: bool = False) -> None:
        self._writer_factory = writer_factory
        self._overlap = overlap

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DatabasePartition:
        return _DatabasePartition(self._writer_factory, self._overlap)


class _SnapshotPartition(StatefulSinkPartition[list[dict], list[dict]]):
    """Keeps the latest book of every runner until the end. Its rows are part of recovery
    snapshots: a market's rows come once, when it closes, and its state is gone after that."""

    def __init__(self, path: Path, resume_rows: list[dict] | None) -> None:
        self._path = path
        self._rows: dict[tuple[str, int, float], dict] = {}
        self.write_batch([resume_rows or []])

    def write_batch(self, values: list[list[dict]]) -> None:
        for rows in values:
            for row in rows:
                self._rows[(row["market_id"], row["selection_id"], row["handicap"])] = row

    def snapshot(self) -> list[dict]:
        return list(self._rows.values())

    def close(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("wb") as handle:
            for key in sorted(self._rows):
                handle.write(orjson.dumps(self._rows[key]) + b"\n")


class _SinglePartitionSink(FixedPartitionedSink):
    """A sink whose items all meet in one partition, so its output is the same for any number
    of workers or processes."""

    def list_parts(self) -> list[str]:
        return [SINGLE_PARTITION]

    def part_fn(self, item_key: str) -> int:
        return 0


class SnapshotSink(_SinglePartitionSink):
    """Collects end-of-stream runner snapshots and writes them sorted to one JSONL file."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def build_part(
        self, step_id: str, for_part: str, resume_state: list[dict] | None
    ) -> _SnapshotPartition:
        return _SnapshotPartition(self._path, resume_state)


@dataclass
class RunSummary:
    """What a run processed, for the progress bar and the final report."""

    lines: int = 0
    messages: int = 0
    markets: set[str] = field(default_factory=set)
    runners: set[tuple[str, int, float]] = field(default_factory=set)
    rows: Counter = field(default_factory=Counter)
    dead_letters: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0
    # The summary is one partition: of a run's processes, only the one holding it counts.
    collected_here: bool = False

    def add(self, batch: SinkBatch) -> None:
        self.lines += batch.lines
        self.messages += batch.messages
        self.markets |= batch.market_ids
        for runner in batch.runners:
            self.runners.add((runner.market_id, runner.selection_id, runner.handicap))
        for kind in ("runner_ticks", "market_ticks", "windows"):
            self.rows[kind] += batch.count(kind)
        self.rows["results"] += len(batch.results)
        if batch.predictions:
            self.rows["predictions"] += len(batch.predictions)
        for dead in batch.dead_letters:
            self.dead_letters[dead.reason] += 1
        self.seconds = time.perf_counter() - self.started

    def as_dict(self) -> dict:
        return {
            "lines": self.lines,
            "messages": self.messages,
            "markets": len(self.markets),
            "runners": len(self.runners),
            "rows": dict(self.rows),
            "bad_lines": sum(self.dead_letters.values()),
            "dead_letters": dict(self.dead_letters),
            "seconds": round(self.seconds, 3),
        }


class _SummaryPartition(StatefulSinkPartition[SinkBatch, None]):
    def __init__(
        self, summary: RunSummary, on_update: Callable[[RunSummary], None] | None, path: Path | None
    ) -> None:
        self._summary = summary
        self._on_update = on_update
        self._path = path

    def write_batch(self, values: list[SinkBatch]) -> None:
        for batch in values:
            self._summary.add(batch)
        if self._on_update is not None:
            self._on_update(self._summary)

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        if self._path is not None:
            self._path.write_bytes(orjson.dumps(self._summary.as_dict()))


class SummarySink(_SinglePartitionSink):
    """Accumulates a RunSummary in one partition; optionally reports progress and saves JSON."""

    def __init__(
        self,
        summary: RunSummary,
        on_update: Callable[[RunSummary], None] | None = None,
        path: Path | None = None,
    ) -> None:
        self._summary = summary
        self._on_update = on_update
        self._path = path

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _SummaryPartition:
        self._summary.collected_here = True
        return _SummaryPartition(self._summary, self._on_update, self._path)
