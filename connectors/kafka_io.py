"""Kafka edges of the market dataflow: raw stream lines in, dead letters and predictions out.

`KafkaLinesSource` has one Bytewax partition per topic partition and emits the same
`[(source, position, raw_line), ...]` batches as the file source, with `source` =
`topic[partition]` and `position` = offset, so replay and live share the whole flow.
Its resume state is the next offset, so with recovery on, a restarted worker re-reads
exactly what its last snapshot had not covered (at-least-once; the sinks are idempotent).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from connectors.bytewax_io import Line
from operators.market_processor import SinkBatch

IDLE_POLL_INTERVAL = timedelta(milliseconds=2)
"""How soon to poll an idle partition again: short, for tick-to-database latency."""


def list_topic_partitions(bootstrap: str, topic: str, timeout_seconds: float = 10.0) -> list[int]:
    """Partition ids of `topic`; a clear error if the broker or the topic is missing."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        metadata = admin.list_topics(topic, timeout=timeout_seconds)
    except KafkaException as error:
        raise RuntimeError(f"Kafka on {bootstrap} did not answer: {error}") from error
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        reason = found.error if found is not None else "not found"
        raise RuntimeError(f"Kafka topic {topic!r} on {bootstrap} is unusable: {reason}")
    return sorted(found.partitions)


class _KafkaLinesPartition(StatefulSourcePartition[list[Line], int]):
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partition: int,
        offset: int,
        batch_size: int,
        exit_when_idle_seconds: float | None,
    ) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                # librdkafka needs a group id; offsets live in the recovery snapshots
                "group.id": "velo-market-worker",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 10,
            }
        )
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        self._source = f"{topic}[{partition}]"
        self._offset = offset
        self._batch_size = batch_size
        self._idle_limit = exit_when_idle_seconds
        self._last_message = time.monotonic()
        self._next_awake: datetime | None = None
        self.errors = 0

    def next_batch(self) -> list[list[Line]]:
        messages = self._consumer.consume(self._batch_size, 0)
        batch: list[Line] = []
        for message in messages:
            if message.error() is not None:
                if message.error().code() != KafkaError._PARTITION_EOF:
                    self.errors += 1
                continue
            batch.append((self._source, message.offset(), message.value() or b""))
        now = time.monotonic()
        if batch:
            self._offset = batch[-1][1] + 1
            self._last_message = now
            self._next_awake = None
            return [batch]
        if self._idle_limit is not None and now - self._last_message >= self._idle_limit:
            raise StopIteration
        self._next_awake = datetime.now(UTC) + IDLE_POLL_INTERVAL
        return []

    def next_awake(self) -> datetime | None:
        return self._next_awake

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class KafkaLinesSource(FixedPartitionedSource[list[Line], int]):
    """Raw Betfair stream lines from every partition of a topic, from the beginning."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        batch_size: int = 2000,
        exit_when_idle_seconds: float | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._batch_size = batch_size
        self._idle = exit_when_idle_seconds

    def list_parts(self) -> list[str]:
        return [str(p) for p in list_topic_partitions(self._bootstrap, self._topic)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _KafkaLinesPartition:
        offset = OFFSET_BEGINNING if resume_state is None else resume_state
        return _KafkaLinesPartition(
            self._bootstrap, self._topic, int(for_part), offset, self._batch_size, self._idle
        )


class _DeadLetterPartition(StatelessSinkPartition[SinkBatch]):
    def __init__(self, bootstrap: str, topic: str) -> None:
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
        self._topic = topic

    def write_batch(self, items: list[SinkBatch]) -> None:
        for batch in items:
            for dead in batch.dead_letters:
                # Same shape as `velo scout`'s dead letters, plus where the line came from.
                record = {
                    "source": dead.source,
                    "position": dead.position,
                    "reason": dead.reason,
                    "at": dead.recorded_time.isoformat(),
                    "raw": dead.raw,
                }
                self._producer.produce(
                    self._topic,
                    key=f"{dead.source}:{dead.position}".encode(),
                    value=orjson.dumps(record),
                )
        self._producer.poll(0)

    def close(self) -> None:
        self._producer.flush(10)


class DeadLetterTopicSink(DynamicSink[SinkBatch]):
    """Publishes each batch's dead letters (reason + offending line) to a Kafka topic."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        return _DeadLetterPartition(self._bootstrap, self._topic)


class _PredictionPartition(StatelessSinkPartition[SinkBatch]):
    def __init__(self, bootstrap: str, topic: str) -> None:
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
        self._topic = topic

    def write_batch(self, items: list[SinkBatch]) -> None:
        for batch in items:
            for prediction in batch.predictions:
                key = prediction.market_id.encode()
                value = orjson.dumps(prediction._asdict())
                try:
                    self._producer.produce(self._topic, key=key, value=value)
                except BufferError:
                    # Local queue full: let deliveries drain, then queue it again.
                    self._producer.poll(1)
                    self._producer.produce(self._topic, key=key, value=value)
        self._producer.poll(0)

    def close(self) -> None:
        self._producer.flush(10)


class PredictionTopicSink(DynamicSink[SinkBatch]):
    """Publishes each batch's predictions as JSON (the `predictions` table's columns, times in
    ISO 8601), keyed by market id so one market's predictions stay in order in a partition."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _PredictionPartition:
        return _PredictionPartition(self._bootstrap, self._topic)
