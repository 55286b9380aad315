"""The flow's database sink: with overlapped writes, batches stay in order, at most one is in
flight, and a failed write surfaces (never a silent loss)."""

from __future__ import annotations

import threading

import pytest

from connectors.bytewax_io import DatabaseSink
from operators.market_processor import SinkBatch


class RecordingWriter:
    def __init__(self, fail_on: int | None = None) -> None:
        self.written: list[int] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on
        self.closed = False

    def write(self, batch: SinkBatch) -> dict[str, int]:
        self.threads.add(threading.current_thread().name)
        if batch.lines == self.fail_on:
            raise RuntimeError("database gone")
        self.written.append(batch.lines)
        return {}

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("overlap", [False, True])
def test_batches_are_written_in_order_and_all_before_close_returns(overlap: bool) -> None:
    writer = RecordingWriter()
    partition = DatabaseSink(lambda: writer, overlap=overlap).build("db", 0, 1)
    for lines in range(1, 6):
        partition.write_batch([SinkBatch(lines=lines), SinkBatch(lines=100)])
    partition.close()
    assert writer.written == [101, 102, 103, 104, 105]
    assert writer.closed
    assert (writer.threads != {threading.current_thread().name}) is overlap


def test_an_overlapped_write_that_fails_fails_the_next_call() -> None:
    writer = RecordingWriter(fail_on=2)
    partition = DatabaseSink(lambda: writer, overlap=True).build("db", 0, 1)
    partition.write_batch([SinkBatch(lines=1)])
    partition.write_batch([SinkBatch(lines=2)])
    with pytest.raises(RuntimeError, match="database gone"):
        partition.write_batch([SinkBatch(lines=3)])
    partition.close()
    assert writer.written == [1]
    assert writer.closed


def test_an_overlapped_write_that_fails_last_fails_close() -> None:
    writer = RecordingWriter(fail_on=1)
    partition = DatabaseSink(lambda: writer, overlap=True).build("db", 0, 1)
    partition.write_batch([SinkBatch(lines=1)])
    with pytest.raises(RuntimeError, match="database gone"):
        partition.close()
    assert writer.closed
