"""Migrations on real PostgreSQL (plain path): layout, idempotence, locking, the `velo db` CLI."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable

import psycopg
import pytest

import cli.db
from connectors.postgres_sink import TABLES
from sql.migrate import (
    PLAIN,
    TIMESCALE,
    MigrationError,
    load_migrations,
    migration_status,
    render_sql,
    upgrade,
)


def _columns(url: str, table: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod),"
            " CASE WHEN attnotnull THEN 'NOT NULL' ELSE '' END"
            " FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum",
            (table,),
        ).fetchall()


def test_every_version_has_both_paths_or_one_common_file() -> None:
    plain, timescale = load_migrations(PLAIN), load_migrations(TIMESCALE)
    assert [m.version for m in plain] == [m.version for m in timescale] == [1, 2, 3, 4, 5]
    assert [m.label for m in plain] == [
        "0001_core",
        "0002_timeseries.plain",
        "0003_runner_ohlc_1m.plain",
        "0004_predictions",
        "0005_runners_by_handicap",
    ]
    assert plain[0].sql == timescale[0].sql
    assert "create_hypertable" in render_sql(TIMESCALE)
    assert "create_hypertable" not in render_sql(PLAIN)


def test_upgrade_creates_the_schema_once(any_database: str) -> None:
    first = upgrade(any_database)
    assert first.flavour == PLAIN
    assert "timescaledb" in first.reason
    assert [m.version for m in first.applied] == [1, 2, 3, 4, 5]

    second = upgrade(any_database)
    assert second.flavour == PLAIN
    assert second.reason == "recorded by earlier migrations"
    assert second.applied == []

    status = migration_status(any_database)
    assert status.flavour == PLAIN
    assert status.pending == []
    assert [a.version for a in status.applied] == [1, 2, 3, 4, 5]


def test_table_columns_follow_record_fields(any_database: str) -> None:
    """The sink COPYs records positionally: table column order must be the field order."""
    upgrade(any_database)
    for spec in TABLES:
        names = [name for name, _, _ in _columns(any_database, spec.table)]
        assert names == list(spec.record._fields), spec.table


def test_types_match_the_storage_rules(any_database: str) -> None:
    upgrade(any_database)
    types = {name: kind for name, kind, _ in _columns(any_database, "runner_ticks")}
    assert types["publish_time"] == "timestamp with time zone"
    assert types["selection_id"] == "bigint"
    assert types["ltp"] == types["best_back"] == types["traded_volume"] == "double precision"
    assert types["handicap"] == "double precision"


def test_concurrent_upgrades_apply_each_migration_once(
    scratch_database_factory: Callable[[], str],
) -> None:
    url = scratch_database_factory()
    reports, errors = [], []

    def run() -> None:
        try:
            reports.append(upgrade(url))
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    applied = sorted(m.version for report in reports for m in report.applied)
    assert applied == [1, 2, 3, 4, 5]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (5,)


def test_edited_migration_is_refused(scratch_database_factory: Callable[[], str]) -> None:
    url = scratch_database_factory()
    upgrade(url)
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 2")
    with pytest.raises(MigrationError, match=r"0002_timeseries\.plain changed"):
        upgrade(url)


def test_recorded_path_cannot_be_switched(scratch_database_factory: Callable[[], str]) -> None:
    url = scratch_database_factory()
    upgrade(url, PLAIN)
    with pytest.raises(MigrationError, match="cannot switch to timescale"):
        upgrade(url, TIMESCALE)


def test_status_of_an_empty_database_changes_nothing(
    scratch_database_factory: Callable[[], str],
) -> None:
    url = scratch_database_factory()
    status = migration_status(url)
    assert status.flavour is None
    assert [m.version for m in status.pending] == [1, 2, 3, 4, 5]
    assert status.reason.startswith("would use plain")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)


def test_indexes_serve_the_product_lookups(any_database: str) -> None:
    upgrade(any_database)
    with psycopg.connect(any_database) as conn:
        partial = dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE indexname IN"
                " ('markets_open_by_start', 'runners_active')"
            ).fetchall()
        )
        assert "WHERE (status <> 'CLOSED'::text)" in partial["markets_open_by_start"]
        assert "WHERE (status = 'ACTIVE'::text)" in partial["runners_active"]

        # Latest ticks of one runner: a backward scan of the key, no sort, on every partition.
        conn.execute("SELECT velo_ensure_month_partition('runner_ticks', '2024-05-01')")
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN SELECT * FROM runner_ticks WHERE market_id = '1.2' AND selection_id = 7"
                " ORDER BY publish_time DESC LIMIT 5"
            )
        )
        assert "Index Scan Backward using runner_ticks_2024_05_pkey" in plan
        nodes = [line.strip().removeprefix("->").strip() for line in plan.splitlines()]
        assert not any(node.startswith("Sort  (") for node in nodes), plan


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="velo")
    cli.db.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_velo_db_commands(
    scratch_database_factory: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = scratch_database_factory()
    assert _run_cli(["db", "status", "--db", url]) == 1  # everything pending
    assert "pending  0001_core" in capsys.readouterr().out

    assert _run_cli(["db", "upgrade", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "path: plain (timescaledb is not available on this server)" in out
    assert "applied: 0001_core, 0002_timeseries.plain, 0003_runner_ohlc_1m.plain," in out

    assert _run_cli(["db", "upgrade", "--db", url]) == 0
    assert "applied: nothing, already up to date" in capsys.readouterr().out

    assert _run_cli(["db", "status", "--db", url]) == 0
    assert "applied  0005_runners_by_handicap" in capsys.readouterr().out

    assert _run_cli(["db", "refresh", "--db", url]) == 0
    assert "runner_ohlc_1m refreshed" in capsys.readouterr().out

    assert _run_cli(["db", "sql", "--flavour", "timescale"]) == 0
    assert "add_continuous_aggregate_policy" in capsys.readouterr().out


def test_velo_db_reports_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli(["db", "upgrade", "--db", "postgresql://velo@127.0.0.1:1/velo"]) == 2
    assert "error: connection" in capsys.readouterr().err
