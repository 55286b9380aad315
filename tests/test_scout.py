"""`velo scout` against the local Exchange Stream server and a real Kafka broker.

The scout runs as a subprocess (`python -m cli.main scout`), exactly as in production; only
Betfair's servers are local (TLS, the real protocol, recorded market data). Every test compares
what lands on Kafka with the recorded file, market by market, including across a SIGKILL and a
restart from the state file.
"""

from __future__ import annotations

import gzip
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer

from connectors.betfair_live import (
    BetfairEndpoints,
    DeliveryLedger,
    KafkaMcmSink,
    MarketRecorder,
    Scout,
    ScoutMetrics,
    ScoutOptions,
    ScoutStateFile,
    StreamPosition,
    SubscriptionSpec,
    make_api_client,
    split_by_market,
    subscription_key,
)
from operators.market_book import MarketBook
from operators.stream_messages import parse_line
from tests.betfair_stream_server import (
    BetfairApiServer,
    BetfairStreamServer,
    DataFilter,
    RecordedFeed,
    TlsMaterial,
    conflate,
    make_tls_material,
    market_changes_by_market,
    read_stream_lines,
)

REPO = Path(__file__).resolve().parents[1]
USERNAME, PASSWORD, APP_KEY = "velo-user", "s3cret-pass", "velo-app-key"
ALL_FIELDS = (
    "EX_ALL_OFFERS,EX_BEST_OFFERS,EX_BEST_OFFERS_DISP,EX_TRADED,EX_TRADED_VOL,EX_LTP,"
    "EX_MARKET_DEF,SP_TRADED,SP_PROJECTED"
)
LIVE_CAPTURE = "1.185781277.bz2"  # raw live stream: SUB_IMAGE, initialClk, batb/batl
HISTORICAL = "1.127236622.bz2"  # historical-file layout, 16,096 lines
FOOTBALL = "1.242971311.bz2"  # ~200 markets per stream, many lines with several markets
GREYHOUND = "1.197931750"  # 166 lines


# --------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return make_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def api(tls: TlsMaterial) -> Iterator[BetfairApiServer]:
    with BetfairApiServer(tls, username=USERNAME, password=PASSWORD, app_key=APP_KEY) as server:
        yield server


def scout_env(
    tls: TlsMaterial,
    api: BetfairApiServer,
    stream_port: int,
    bootstrap: str,
    topic: str,
    dead_letters: str,
    **overrides: str,
) -> dict[str, str]:
    return {
        **api.client_env(),
        "BETFAIR_STREAM_HOST": "localhost",
        "BETFAIR_STREAM_PORT": str(stream_port),
        "KAFKA_BOOTSTRAP": bootstrap,
        "VELO_TOPIC_MCM": topic,
        "VELO_TOPIC_DEAD_LETTERS": dead_letters,
        **overrides,
    }


def start_scout(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "cli.main", "scout", "--backoff-initial", "0.2", *args]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def stop_scout(
    process: subprocess.Popen[str], *, signal_it: bool = True
) -> tuple[int, dict[str, Any], str]:
    """SIGTERM (unless it should exit by itself), then exit code, final metrics line, stderr."""
    if signal_it and process.poll() is None:
        process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return process.returncode, orjson.loads(lines[-1]) if lines else {}, stderr


def consume(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout_s: float = 120.0,
    settle_s: float = 2.0,
    alive: Callable[[], bool] = lambda: True,
) -> list[Any]:
    """All messages of `topic` once `expected` arrived and nothing more came for `settle_s`."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(1000, timeout=0.5)
            batch = [m for m in batch if m.error() is None]
            if batch:
                messages.extend(batch)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= settle_s and (
                len(messages) >= expected or not alive()
            ):
                break
    finally:
        consumer.close()
    return messages


def by_market(messages: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """Per market key, the parsed messages in partition order (the order a worker sees)."""
    ordered = sorted(messages, key=lambda m: (m.partition(), m.offset()))
    grouped: dict[str, list[dict[str, Any]]] = {}
    for message in ordered:
        grouped.setdefault(message.key().decode(), []).append(orjson.loads(message.value()))
    return grouped


def subscriptions_of(server: BetfairStreamServer) -> list[dict[str, Any]]:
    return [
        request
        for connection in server.connections
        for request in connection.requests
        if request.get("op") == "marketSubscription"
    ]


def final_books(lines: list[bytes]) -> dict[str, list[dict[str, Any]]]:
    """Per market, every runner's end state after applying `lines` in order (the shape of
    `velo replay --snapshot-out`)."""
    books: dict[str, MarketBook] = {}
    for position, line in enumerate(lines):
        for change in parse_line(line, "test", position).changes:
            book = books.setdefault(change.market_id, MarketBook(change.market_id))
            book.apply(change.change, change.publish_time_ms, None)
    return {
        market_id: [runner.snapshot(market_id) for runner in book.runners.values()]
        for market_id, book in books.items()
    }


def expected_changes(betfair_dir: Path, *names: str) -> dict[str, list[dict[str, Any]]]:
    """What a live client must see per market: the file's changes, the first one an image."""
    expected: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        for market_id, changes in market_changes_by_market(betfair_dir / name).items():
            expected[market_id] = [{**changes[0], "img": True}, *changes[1:]]
    return expected


# --------------------------------------------------------------------------------------------
# unit tests (no services)
# --------------------------------------------------------------------------------------------


def test_split_keeps_single_market_lines_byte_for_byte() -> None:
    raw = b'{"op":"mcm","id":3,"clk":"AAE=","pt":1,"mc":[{"id":"1.2","tv":5.0}]}'
    lines, problem = split_by_market(orjson.loads(raw), raw)
    assert lines == [("1.2", raw)] and problem == ""


def test_split_gives_each_market_its_own_line_with_the_header() -> None:
    message = {
        "op": "mcm",
        "id": 2,
        "clk": "AAk=",
        "pt": 7,
        "ct": "SUB_IMAGE",
        "initialClk": "x",
        "mc": [{"id": "1.1", "img": True}, {"id": "bad id"}, {"id": "1.2", "tv": 1}],
    }
    lines, problem = split_by_market(message, orjson.dumps(message))
    assert problem == "malformed_market_id"
    assert [market for market, _ in lines] == ["1.1", "1.2"]
    for (market, line), change in zip(lines, (message["mc"][0], message["mc"][2]), strict=True):
        parsed = orjson.loads(line)
        assert parsed == {**{k: v for k, v in message.items() if k != "mc"}, "mc": [change]}
        assert parsed["mc"][0]["id"] == market


def test_recorder_files_survive_appends_and_read_back(tmp_path: Path) -> None:
    recorder = MarketRecorder(tmp_path, flush_interval_s=0)
    recorder.write("1.5", b'{"a":1}')
    recorder.flush()
    recorder.write("1.5", b'{"a":2}')
    recorder.write("1.6", b'{"b":1}')
    recorder.flush()
    with gzip.open(tmp_path / "1.5.gz") as handle:
        assert handle.read().splitlines() == [b'{"a":1}', b'{"a":2}']
    assert gzip.decompress((tmp_path / "1.6.gz").read_bytes()) == b'{"b":1}\n'


def test_ledger_makes_a_position_safe_only_when_every_earlier_line_is_acked() -> None:
    ledger = DeliveryLedger()
    a, b, c, d = (StreamPosition("i", clk, 0) for clk in "abcd")
    first = ledger.produce()
    ledger.checkpoint(a)
    second, third = ledger.produce(), ledger.produce()
    ledger.checkpoint(b)
    ledger.acked(third)  # another partition answered first
    assert ledger.safe is None
    ledger.acked(first)
    assert ledger.safe == a
    ledger.acked(second)
    assert ledger.safe == b
    ledger.checkpoint(c)  # a heartbeat: no new line, safe at once
    assert ledger.safe == c

    lost, after = ledger.produce(), ledger.produce()
    ledger.checkpoint(d)
    ledger.lost(lost)
    ledger.acked(after)
    assert ledger.safe == c  # never past a line Kafka does not hold
    ledger.reset()  # fresh image
    assert ledger.safe is None and not ledger.failed
    ledger.acked(after)  # late answers from before the reset change nothing
    ledger.checkpoint(d)
    assert ledger.safe == d


def test_state_file_keeps_positions_per_subscription(tmp_path: Path) -> None:
    path = tmp_path / "state" / "scout.json"
    endpoints = BetfairEndpoints("localhost", 443)
    horses = subscription_key(SubscriptionSpec(), endpoints, "betfair.mcm")
    dogs = subscription_key(SubscriptionSpec(event_type_ids=("4339",)), endpoints, "betfair.mcm")
    assert len({horses, dogs, subscription_key(SubscriptionSpec(), endpoints, "other")}) == 3
    assert horses == subscription_key(SubscriptionSpec(heartbeat_ms=500), endpoints, "betfair.mcm")
    ScoutStateFile(path, dogs).save(StreamPosition("d0", "d1", 5))
    horse_state = ScoutStateFile(path, horses)
    assert horse_state.load() is None
    horse_state.save(StreamPosition("h0", "h1", 7))
    assert ScoutStateFile(path, horses).load() == StreamPosition("h0", "h1", 7)
    assert ScoutStateFile(path, dogs).load() == StreamPosition("d0", "d1", 5)
    horse_state.save(None)
    assert ScoutStateFile(path, horses).load() is None
    assert ScoutStateFile(path, dogs).load() == StreamPosition("d0", "d1", 5)
    assert [p.name for p in path.parent.iterdir()] == ["scout.json"]  # no temporary left
    path.write_bytes(b'{"version": 1, "subscriptions": {"')  # torn by hand: fresh image
    assert ScoutStateFile(path, horses).load() is None


def test_conflation_and_field_filter_match_betfairlightweight_state(betfair_dir: Path) -> None:
    """The server's conflation and data filter keep the final book a client builds."""
    from betfairlightweight.streaming import StreamListener

    def final_books(lines: list[bytes]) -> dict[str, Any]:
        listener = StreamListener(lightweight=True, max_latency=None)
        listener.register_stream(0, "marketSubscription")
        for line in lines:
            listener.on_data(line.decode())
        return {book["marketId"]: book for book in listener.snap()}

    feed = RecordedFeed([betfair_dir / LIVE_CAPTURE])
    original = [
        orjson.dumps({"op": "mcm", "clk": "0", "pt": m.pt, "mc": list(m.changes)})
        for m in feed.messages
    ]
    data_filter = DataFilter.parse(None)
    conflated, position = [], 0
    window_ms = 2000
    while position < len(feed):
        end = position + 1
        while end < len(feed) and feed.messages[end].pt < feed.messages[position].pt + window_ms:
            end += 1
        changes = [c for m in feed.messages[position:end] for c in m.changes]
        merged = data_filter.project(conflate(changes))
        conflated.append(
            orjson.dumps({"op": "mcm", "clk": "0", "pt": feed.messages[end - 1].pt, "mc": [merged]})
        )
        position = end
    assert len(conflated) < len(original) / 3
    before, after = final_books(original), final_books(conflated)
    for book in (*before.values(), *after.values()):
        book.pop("publishTime", None)
        book.pop("publishTimeEpoch", None)
        book.pop("streamUniqueId", None)
        book.pop("conflated", None)
    assert before == after


# --------------------------------------------------------------------------------------------
# integration: scout → Kafka
# --------------------------------------------------------------------------------------------


def test_scout_forwards_every_line_once_in_order_through_drops(
    betfair_dir: Path,
    tls: TlsMaterial,
    api: BetfairApiServer,
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
    tmp_path: Path,
) -> None:
    feed = RecordedFeed([betfair_dir / LIVE_CAPTURE, betfair_dir / HISTORICAL])
    topic, dead_letters = kafka_topic(partitions=4), kafka_topic(partitions=1)
    record_dir = tmp_path / "recording"
    expected = expected_changes(betfair_dir, LIVE_CAPTURE, HISTORICAL)
    total = sum(len(changes) for changes in expected.values())
    server = BetfairStreamServer(
        feed,
        tls,
        app_key=APP_KEY,
        valid_sessions=api.valid_sessions,
        drop_after=[3_000, 9_000],
        pause_every=(10_000, 1.2),
    )
    with server:
        env = scout_env(tls, api, server.port, kafka_bootstrap, topic, dead_letters)
        process = start_scout(
            env,
            "--fields",
            ALL_FIELDS,
            "--heartbeat-ms",
            "500",
            "--record",
            str(record_dir),
            "--latency-log-interval",
            "3600",
        )
        try:
            messages = consume(kafka_bootstrap, topic, total, alive=lambda: process.poll() is None)
        finally:
            code, metrics, stderr = stop_scout(process)
    assert code == 0, stderr

    # Exactly once, in order, per market, keyed and partitioned by market id.
    received = by_market(messages)
    assert sorted(received) == sorted(expected)
    for market_id, lines in received.items():
        assert [line["mc"] for line in lines] == [[c] for c in expected[market_id]], market_id
        assert {m.partition() for m in messages if m.key() == market_id.encode()} != set()
        assert len({m.partition() for m in messages if m.key() == market_id.encode()}) == 1
        for line in lines:
            assert line["op"] == "mcm" and line["id"] >= 1 and line["clk"] and line["pt"]
    change_types = [line.get("ct") for lines in received.values() for line in lines]
    assert change_types.count("SUB_IMAGE") == 1
    assert change_types.count("RESUB_DELTA") == 2
    assert "HEARTBEAT" not in change_types

    # The drops really happened, and each resubscription carried the tokens of the last line.
    subscriptions = subscriptions_of(server)
    assert len(subscriptions) == 3
    assert "clk" not in subscriptions[0] or subscriptions[0]["clk"] is None
    assert all(s["initialClk"] == feed.initial_clk and s["clk"] for s in subscriptions[1:])
    # An abrupt drop may lose what was still in flight: the client resumes from what it got.
    resumed = [c.resumed_from for c in server.connections]
    assert resumed[0] == [] and len(resumed) == 3
    assert 0 < resumed[1][0] <= 3_000 < resumed[2][0] <= resumed[1][0] + 9_000

    assert metrics["messages_delivered"] == total
    assert metrics["delivery_failures"] == 0 and metrics["dead_letters"] == 0
    assert metrics["reconnects"] == 2 and metrics["resub_deltas"] == 2
    assert metrics["heartbeats"] >= 2  # mid-stream pauses and the idle end
    assert metrics["latency_warnings"] == total  # recorded 2016/2021 data is "late"
    assert stderr.count("stream latency") == 1  # ...but logged once per interval

    # The recording holds the same lines, one gzip file per market, readable by `velo replay`.
    for market_id in expected:
        with gzip.open(record_dir / f"{market_id}.gz") as handle:
            recorded = handle.read().splitlines()
        on_kafka = [
            m.value()
            for m in sorted(messages, key=lambda m: m.offset())
            if m.key() == market_id.encode()
        ]
        assert recorded == on_kafka


def test_scout_splits_multi_market_lines(
    betfair_dir: Path,
    tls: TlsMaterial,
    api: BetfairApiServer,
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
) -> None:
    feed = RecordedFeed([betfair_dir / FOOTBALL])
    multi = sum(1 for m in feed.messages if len(m.changes) > 1)
    assert multi > 100  # the file really mixes markets on one line
    topic, dead_letters = kafka_topic(partitions=3), kafka_topic(partitions=1)
    expected = expected_changes(betfair_dir, FOOTBALL)
    total = sum(len(changes) for changes in expected.values())
    with BetfairStreamServer(
        feed, tls, app_key=APP_KEY, valid_sessions=api.valid_sessions, drop_after=[700]
    ) as server:
        env = scout_env(tls, api, server.port, kafka_bootstrap, topic, dead_letters)
        process = start_scout(
            env, "--event-type-ids", "1", "--countries", "", "--market-types", "",
            "--fields", ALL_FIELDS, "--heartbeat-ms", "500",
        )  # fmt: skip
        try:
            messages = consume(kafka_bootstrap, topic, total, alive=lambda: process.poll() is None)
        finally:
            code, metrics, stderr = stop_scout(process)
    assert code == 0, stderr
    received = by_market(messages)
    assert len(received) == len(expected) == 200
    for market_id, lines in received.items():
        assert [line["mc"] for line in lines] == [[c] for c in expected[market_id]], market_id
    # Lines split from one stream message keep its header: same clk and pt for all markets.
    by_clk: dict[str, set[int]] = {}
    for lines in received.values():
        for line in lines:
            by_clk.setdefault(line["clk"], set()).add(line["pt"])
    assert all(len(pts) == 1 for pts in by_clk.values())
    assert max(len(lines) for lines in received.values()) > 1
    assert metrics["mcm_lines"] == len(feed) and metrics["messages_delivered"] == total
    assert metrics["reconnects"] == 1


def test_scout_logs_in_again_when_the_session_expires(
    betfair_dir: Path,
    tls: TlsMaterial,
    api: BetfairApiServer,
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
) -> None:
    feed = RecordedFeed([betfair_dir / LIVE_CAPTURE])
    topic, dead_letters = kafka_topic(partitions=2), kafka_topic(partitions=1)
    expected = expected_changes(betfair_dir, LIVE_CAPTURE)
    total = sum(len(changes) for changes in expected.values())
    server = BetfairStreamServer(
        feed,
        tls,
        app_key=APP_KEY,
        valid_sessions=api.valid_sessions,
        drop_after=[2_500],
        expire_sessions_on_drop=True,
    )
    with server:
        env = scout_env(tls, api, server.port, kafka_bootstrap, topic, dead_letters)
        process = start_scout(env, "--fields", ALL_FIELDS, "--heartbeat-ms", "500")
        try:
            messages = consume(kafka_bootstrap, topic, total, alive=lambda: process.poll() is None)
        finally:
            code, metrics, stderr = stop_scout(process)
    assert code == 0, stderr
    received = by_market(messages)
    assert [line["mc"] for line in received["1.185781277"]] == [
        [c] for c in expected["1.185781277"]
    ]
    logins = [path for path, _ in api.requests if path == "/api/certlogin"]
    assert len(logins) == 2  # first login, then again after INVALID_SESSION_INFORMATION
    assert metrics["status_failures"] == 1
    assert "INVALID_SESSION_INFORMATION" in stderr


def test_login_failure_is_a_clear_error(
    tls: TlsMaterial, api: BetfairApiServer, tmp_path: Path
) -> None:
    env = scout_env(
        tls, api, 1, "127.0.0.1:1", "unused", "unused", BETFAIR_PASSWORD="wrong-password"
    )
    process = start_scout(env)
    code, _, stderr = stop_scout(process, signal_it=False)
    assert code == 2
    assert "Betfair login refused" in stderr and "INVALID_USERNAME_OR_PASSWORD" in stderr
    assert "wrong-password" not in stderr and PASSWORD not in stderr

    missing = start_scout({**env, "BETFAIR_PASSWORD": ""})
    code, _, stderr = stop_scout(missing, signal_it=False)
    assert code == 2 and "Betfair credentials not set: BETFAIR_PASSWORD" in stderr


def test_stream_refusing_the_app_key_is_a_clear_error(
    betfair_dir: Path, tls: TlsMaterial, api: BetfairApiServer
) -> None:
    feed = RecordedFeed([betfair_dir / LIVE_CAPTURE])
    with BetfairStreamServer(
        feed, tls, app_key="another-app-key", valid_sessions=api.valid_sessions
    ) as server:
        env = scout_env(tls, api, server.port, "127.0.0.1:1", "unused", "unused")
        process = start_scout(env)
        code, _, stderr = stop_scout(process, signal_it=False)
    assert code == 2
    assert "Betfair stream refused the connection: INVALID_APP_KEY" in stderr
    assert server.connections[0].authenticated is False


def test_lost_deliveries_trigger_a_fresh_image(
    betfair_dir: Path, tls: TlsMaterial, api: BetfairApiServer
) -> None:
    """A line Kafka never took cannot be resent: the scout resubscribes without tokens."""
    settings = api.settings()
    metrics = ScoutMetrics()
    # Nothing listens on port 1: librdkafka gives up on each line after the delivery timeout.
    sink = KafkaMcmSink("127.0.0.1:1", "unused", "unused", metrics, delivery_timeout_ms=1500)
    feed = RecordedFeed([betfair_dir / LIVE_CAPTURE])
    with BetfairStreamServer(
        feed, tls, app_key=APP_KEY, valid_sessions=api.valid_sessions
    ) as server:
        endpoints = BetfairEndpoints(
            "localhost", server.port, api.identity_url, api.api_url, tls.ca_file
        )
        scout = Scout(
            make_api_client(settings, endpoints),
            SubscriptionSpec(heartbeat_ms=500),
            endpoints,
            sink,
            metrics,
            ScoutOptions(backoff_initial_s=0.1, use_certs=True, flush_timeout_s=3),
        )
        runner = threading.Thread(target=scout.run)
        runner.start()
        try:
            deadline = time.monotonic() + 30
            while metrics.resyncs == 0 or metrics.connections < 2:
                assert time.monotonic() < deadline, metrics
                time.sleep(0.1)
        finally:
            scout.stop()
            runner.join(30)
    assert not runner.is_alive()
    assert metrics.delivery_failures > 0
    subscriptions = subscriptions_of(server)
    assert len(subscriptions) >= 2
    assert subscriptions[1].get("clk") is None and subscriptions[1].get("initialClk") is None
    assert metrics.sub_images >= 2  # the fresh image arrived


def _table_rows(url: str) -> dict[str, list[str]]:
    """Every row of every table (but the migration log), as sorted reprs."""
    import psycopg

    with psycopg.connect(url) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "select table_name from information_schema.tables where table_schema = 'public'"
                " and table_type = 'BASE TABLE' and table_name <> 'schema_migrations'"
            )
        ]
        return {t: sorted(map(repr, conn.execute(f'select * from "{t}"'))) for t in tables}


def test_recording_replays_to_the_same_rows_as_the_original_file(
    betfair_dir: Path,
    tls: TlsMaterial,
    api: BetfairApiServer,
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
    pg_url: str,
    tmp_path: Path,
) -> None:
    """`--record` output, written across a dropped connection, is what `velo replay` reads."""
    import psycopg

    feed = RecordedFeed([betfair_dir / LIVE_CAPTURE])
    topic, dead_letters = kafka_topic(partitions=1), kafka_topic(partitions=1)
    record_dir = tmp_path / "recording"
    with BetfairStreamServer(
        feed, tls, app_key=APP_KEY, valid_sessions=api.valid_sessions, drop_after=[1_500]
    ) as server:
        env = scout_env(tls, api, server.port, kafka_bootstrap, topic, dead_letters)
        process = start_scout(env, "--fields", ALL_FIELDS, "--record", str(record_dir))
        try:
            consume(kafka_bootstrap, topic, len(feed), settle_s=1.0)
        finally:
            code, metrics, stderr = stop_scout(process)
    assert code == 0 and metrics["reconnects"] == 1, stderr

    names = [f"velo_scout_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    urls = [pg_url.rsplit("/", 1)[0] + f"/{name}" for name in names]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f'create database "{name}"')
    try:
        snapshots = []
        for url, source in zip(
            urls, (record_dir / "1.185781277.gz", betfair_dir / LIVE_CAPTURE), strict=True
        ):
            snapshot = tmp_path / f"{url.rsplit('/', 1)[1]}.jsonl"
            command = [sys.executable, "-m", "cli.main", "replay", "--db", url]
            command += ["--snapshot-out", str(snapshot), "--no-progress", str(source)]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr
            snapshots.append(snapshot.read_bytes())
        assert snapshots[0] == snapshots[1] and snapshots[0]
        recorded_rows, original_rows = (_table_rows(url) for url in urls)
        assert recorded_rows == original_rows and recorded_rows["runner_ticks"]
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for name in names:
                conn.execute(f'drop database if exists "{name}" with (force)')


# --------------------------------------------------------------------------------------------
# restarts: the state file
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "filter_args", "kill_after", "pause_every", "interval", "min_skipped"),
    [
        # One state write early on, then none until shutdown: the killed scout leaves
        # thousands of lines on the topic beyond the saved position.
        ((LIVE_CAPTURE, HISTORICAL), (), 8_000, (500, 0.1), "3600", 1_000),
        # 200 markets, lines split per market, frequent writes: the kill may cut a split line.
        ((FOOTBALL,), ("--event-type-ids", "1", "--countries", "", "--market-types", ""),
         800, (50, 0.05), "0.05", 0),
    ],
    ids=["horse-racing", "multi-market"],
)  # fmt: skip
def test_scout_killed_and_restarted_resumes_from_the_state_file(
    betfair_dir: Path,
    tls: TlsMaterial,
    api: BetfairApiServer,
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
    tmp_path: Path,
    files: tuple[str, ...],
    filter_args: tuple[str, ...],
    kill_after: int,
    pause_every: tuple[int, float],
    interval: str,
    min_skipped: int,
) -> None:
    """SIGKILL mid-stream, restart with the same state file: the topic holds every line once,
    in order, after the one image; the books end as a straight run's."""
    feed = RecordedFeed([betfair_dir / name for name in files])
    topic, dead_letters = kafka_topic(partitions=4), kafka_topic(partitions=1)
    expected = expected_changes(betfair_dir, *files)
    total = sum(len(changes) for changes in expected.values())
    state_file = tmp_path / "scout-state.json"
    args = (*filter_args, "--fields", ALL_FIELDS, "--heartbeat-ms", "500")
    args += ("--state-interval", interval)
    with BetfairStreamServer(
        feed, tls, app_key=APP_KEY, valid_sessions=api.valid_sessions, pause_every=pause_every
    ) as server:
        env = scout_env(tls, api, server.port, kafka_bootstrap, topic, dead_letters)
        first = start_scout(env, *args, "--state-file", str(state_file))
        try:
            deadline = time.monotonic() + 60
            while not server.connections or server.connections[0].data_messages_sent < kill_after:
                assert first.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            first.kill()  # SIGKILL: no flush, no final state write
            _, first_stderr = first.communicate(timeout=30)
        assert first.returncode == -signal.SIGKILL, first_stderr
        saved = orjson.loads(state_file.read_bytes())["subscriptions"]
        [(key, entry)] = saved.items()
        assert entry["initialClk"] == feed.initial_clk
        saved_at = feed.position_of(entry["initialClk"], entry["clk"])
        assert saved_at is not None and saved_at < kill_after

        # The restart reads the state file from the environment this time.
        restarted = start_scout({**env, "VELO_SCOUT_STATE_FILE": str(state_file)}, *args)
        try:
            messages = consume(
                kafka_bootstrap, topic, total, alive=lambda: restarted.poll() is None
            )
        finally:
            code, metrics, stderr = stop_scout(restarted)
    assert code == 0, stderr

    # The restart resubscribed from the saved tokens, not for a fresh image.
    subscriptions = subscriptions_of(server)
    assert len(subscriptions) == 2
    assert (subscriptions[1]["initialClk"], subscriptions[1]["clk"]) == (
        entry["initialClk"],
        entry["clk"],
    )
    assert server.connections[1].resumed_from == [saved_at]
    assert metrics["resumed_from_state"] == 1 and metrics["sub_images"] == 0
    # Everything between the saved position and the kill was already on Kafka.
    assert metrics["duplicates_skipped"] >= min_skipped

    # Every line exactly once, in order, per market: one image, then each change once.
    received = by_market(messages)
    assert sorted(received) == sorted(expected)
    for market_id, lines in received.items():
        assert [line["mc"] for line in lines] == [[c] for c in expected[market_id]], market_id
    images = [line.get("ct") == "SUB_IMAGE" for lines in received.values() for line in lines]
    assert sum(images) == len(feed.messages[0].changes)  # the first message, split by market
    assert not any(line.get("ct") == "SUB_IMAGE" for ls in received.values() for line in ls[1:])

    # Same books as a straight run over the recorded files.
    on_kafka = [m.value() for m in sorted(messages, key=lambda m: (m.partition(), m.offset()))]
    straight = [line for name in files for line in read_stream_lines(betfair_dir / name)]
    assert final_books(on_kafka) == final_books(straight)

    # A clean stop wrote the final position: the end of the feed.
    final = orjson.loads(state_file.read_bytes())["subscriptions"][key]
    assert feed.position_of(final["initialClk"], final["clk"]) == len(feed)


def test_rejected_saved_tokens_fall_back_to_a_fresh_image(
    betfair_dir: Path,
    tls: TlsMaterial,
    api: BetfairApiServer,
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
    tmp_path: Path,
) -> None:
    """Tokens the stream does not accept (another feed, expired): INVALID_CLOCK, then a fresh
    image, and the state file gets the new stream's tokens."""
    feed = RecordedFeed([betfair_dir / GREYHOUND])
    topic, dead_letters = kafka_topic(partitions=2), kafka_topic(partitions=1)
    expected = expected_changes(betfair_dir, GREYHOUND)
    total = sum(len(changes) for changes in expected.values())
    metrics = ScoutMetrics()
    sink = KafkaMcmSink(kafka_bootstrap, topic, dead_letters, metrics)
    spec = SubscriptionSpec(
        event_type_ids=("4339",), fields=tuple(ALL_FIELDS.split(",")), heartbeat_ms=500
    )
    with BetfairStreamServer(
        feed, tls, app_key=APP_KEY, valid_sessions=api.valid_sessions
    ) as server:
        endpoints = BetfairEndpoints(
            "localhost", server.port, api.identity_url, api.api_url, tls.ca_file
        )
        state = ScoutStateFile(tmp_path / "state.json", subscription_key(spec, endpoints, topic))
        state.save(StreamPosition("from-another-stream", "AAAAAAAB", int(time.time() * 1000)))
        scout = Scout(
            make_api_client(api.settings(), endpoints),
            spec,
            endpoints,
            sink,
            metrics,
            ScoutOptions(backoff_initial_s=0.1, use_certs=True, state_interval_s=0.0),
            state=state,
        )
        runner = threading.Thread(target=scout.run)
        runner.start()
        try:
            deadline = time.monotonic() + 30
            while metrics.messages_delivered < total or metrics.heartbeats == 0:
                assert time.monotonic() < deadline, metrics
                time.sleep(0.05)
        finally:
            scout.stop()
            runner.join(30)
    assert not runner.is_alive()
    subscriptions = subscriptions_of(server)
    assert subscriptions[0]["initialClk"] == "from-another-stream"
    assert subscriptions[1].get("initialClk") is None and subscriptions[1].get("clk") is None
    assert metrics.status_failures == 1 and metrics.sub_images == 1
    assert metrics.resumed_from_state == 1 and metrics.state_saves >= 2  # cleared, then new
    saved = ScoutStateFile(tmp_path / "state.json", subscription_key(spec, endpoints, topic)).load()
    assert saved is not None and saved.initial_clk == feed.initial_clk
    assert feed.position_of(saved.initial_clk, saved.clk) == len(feed)
    received = by_market(consume(kafka_bootstrap, topic, total))
    assert [line["mc"] for line in received[GREYHOUND]] == [[c] for c in expected[GREYHOUND]]
