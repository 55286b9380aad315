"""Idempotent, batched PostgreSQL writes of the dataflow's records.

One `write(batch)` is one transaction. Rows travel as binary COPY (column types read from the
catalog once per connection, so no per-value type lookup and no text formatting):
- Append-only tables (ticks, windows, dead letters) are COPYed straight into the table while
  their rows are new. The primary key is the arbiter: if any row of the batch is stored already
  (a replay, a Kafka redelivery after a crash, another writer), the COPY fails with a unique
  violation, the transaction rolls back, and the batch is written again through the staging
  path. That table stays on the staging path until a staged batch turns out to be all new.
- The staging path COPYs into a session temp table, then moves the rows with `INSERT ... SELECT
  ... ON CONFLICT (natural key)`; all those statements go in one round trip. Ticks, windows and
  dead letters are `DO NOTHING`, so a replayed batch changes nothing; markets, runners and
  results always take this path: upserts where the latest row wins (a market only moves
  forward in (version, last_publish_time)).

Failure handling:
- Connection loss (`OperationalError`: server restart, network, deadlock with another writer):
  reconnect with exponential backoff and write the same batch again; idempotence makes the
  rewrite safe even when the lost attempt had committed.
- Bad rows (wrong types, NULL in a NOT NULL column, text PostgreSQL cannot store): the batch
  is rewritten table by table under savepoints with text COPY (PostgreSQL parses every value,
  as a plain INSERT would), bisecting to the offending rows, which are stored in
  `dead_letters` (source `postgres_sink:<table>`) and counted as `rejected`; every other row
  is written. Nothing is dropped silently and the flow does not crash.
- Plain PostgreSQL: monthly partitions for the months in a batch are created (in a short
  transaction of their own) the first time this writer sees a month.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, NamedTuple, Protocol

import orjson
import psycopg
from psycopg import sql

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
from sql.migrate import PLAIN, database_flavour, upgrade_connection

log = logging.getLogger(__name__)

SINK_SOURCE_PREFIX = "postgres_sink:"
_REASON_MAX_CHARS = 200
_BAD_DATA_SQLSTATE_CLASSES = ("22", "23", "54")
"""Data exception, integrity violation, program limit (e.g. index row too large)."""
_INTEGER_RANGES = {21: (-(2**15), 2**15 - 1), 23: (-(2**31), 2**31 - 1)}
"""int2 and int4 by type oid: psycopg's binary dumpers truncate out-of-range ints silently."""
_TEMP_BUFFERS = "64MB"
"""Session memory for the staging tables (default 8MB): a large batch stays out of temp files."""
_BINARY_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
"""Signature, flags and header-extension length of PostgreSQL's binary COPY format."""
_BINARY_COPY_TRAILER = b"\xff\xff"


@dataclass(frozen=True)
class TableSpec:
    """How one record type is stored."""

    table: str
    attribute: str
    """Attribute of the batch holding these records (`SinkBatch.windows` etc.)."""
    record: type
    key: tuple[str, ...]
    upsert_order: tuple[str, ...] | None = None
    """None: insert-only (`DO NOTHING`). Else an upsert; among duplicates of a key in one
    batch the row first in this ORDER BY wins (the staging order `_ord DESC` breaks ties)."""
    upsert_guard: str | None = None
    """Extra condition for replacing a stored row, in terms of the table and EXCLUDED."""
    partition_column: str | None = None
    """Range-partition column on the plain path."""

    @property
    def columns(self) -> tuple[str, ...]:
        return self.record._fields

    @property
    def append_only(self) -> bool:
        return self.upsert_order is None

    @property
    def stage(self) -> str:
        return f"_stage_{self.table}"

    def create_stage_sql(self) -> sql.Composed:
        return sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS,"
            " _ord bigint GENERATED ALWAYS AS IDENTITY) ON COMMIT DELETE ROWS"
        ).format(stage=sql.Identifier(self.stage), table=sql.Identifier(self.table))

    def copy_sql(self, *, into_table: bool, binary: bool) -> sql.Composed:
        """COPY into the table itself or into its staging table."""
        return sql.SQL("COPY {target} ({columns}) FROM STDIN{options}").format(
            target=sql.Identifier(self.table if into_table else self.stage),
            columns=_identifiers(self.columns),
            options=sql.SQL(" (FORMAT BINARY)" if binary else ""),
        )

    def insert_sql(self) -> sql.Composed:
        columns = _identifiers(self.columns)
        key = _identifiers(self.key)
        stage = sql.Identifier(self.stage)
        table = sql.Identifier(self.table)
        if self.upsert_order is None:
            return sql.SQL(
                "INSERT INTO {table} ({columns}) SELECT {columns} FROM {stage}"
                " ON CONFLICT ({key}) DO NOTHING"
            ).format(table=table, columns=columns, stage=stage, key=key)
        updates = sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
            for c in self.columns
            if c not in self.key
        )
        guard = sql.SQL("ROW({table}.*) IS DISTINCT FROM ROW(EXCLUDED.*)").format(table=table)
        if self.upsert_guard:
            guard = sql.SQL("({extra}) AND {guard}").format(
                extra=sql.SQL(self.upsert_guard), guard=guard
            )
        order = sql.SQL(", ").join(sql.SQL(part) for part in (*self.upsert_order, "_ord DESC"))
        return sql.SQL(
            "INSERT INTO {table} ({columns})"
            " SELECT DISTINCT ON ({key}) {columns} FROM {stage} ORDER BY {key}, {order}"
            " ON CONFLICT ({key}) DO UPDATE SET {updates} WHERE {guard}"
        ).format(
            table=table,
            columns=columns,
            stage=stage,
            key=key,
            order=order,
            updates=updates,
            guard=guard,
        )


TABLES: tuple[TableSpec, ...] = (
    TableSpec(
        "markets",
        "markets",
        MarketRow,
        key=("market_id",),
        upsert_order=("version DESC", "last_publish_time DESC"),
        upsert_guard="(EXCLUDED.version, EXCLUDED.last_publish_time)"
        " >= (markets.version, markets.last_publish_time)",
    ),
    TableSpec(
        "runners",
        "runners",
        RunnerRow,
        key=("market_id", "selection_id", "handicap"),
        upsert_order=(),
    ),
    TableSpec(
        "runner_ticks",
        "runner_ticks",
        RunnerTick,
        key=("market_id", "selection_id", "publish_time", "seq", "handicap"),
        partition_column="publish_time",
    ),
    TableSpec(
        "market_ticks",
        "market_ticks",
        MarketTick,
        key=("market_id", "publish_time", "seq"),
        partition_column="publish_time",
    ),
    TableSpec(
        "window_aggregates",
        "windows",
        WindowAggregate,
        key=("market_id", "selection_id", "window_secs", "window_start", "handicap"),
        partition_column="window_start",
    ),
    TableSpec(
        "results",
        "results",
        ResultRow,
        key=("market_id", "selection_id", "handicap"),
        upsert_order=(),
    ),
    TableSpec(
        "predictions",
        "predictions",
        Prediction,
        key=("market_id", "selection_id", "model_version", "publish_time"),
    ),
    TableSpec("dead_letters", "dead_letters", DeadLetter, key=("source", "position", "reason")),
)
TABLE_NAMES = tuple(spec.table for spec in TABLES)
_DEAD_LETTERS = TABLES[-1]


class EncodedTable(Protocol):
    """One table's rows already laid out as binary COPY tuples (`velo_native.CopyTable`)."""

    table: str
    rows: int
    data: bytes
    """The tuples (no header, no trailer); ValueError where a value cannot be sent."""

    def records(self) -> list: ...

    def time_range(self) -> tuple[datetime, datetime] | None:
        """Earliest and latest value of the table's partition column."""
        ...


class EncodedRows(Protocol):
    """Frequent rows of a processing step in COPY form, per table (`velo_native.CopyRows`)."""

    runner_ticks: EncodedTable
    market_ticks: EncodedTable
    windows: EncodedTable


class RecordBatch(Protocol):
    """What `write` takes: lists of records per kind (`operators.market_processor.SinkBatch`),
    plus, optionally, `copy_rows`: a list of `EncodedRows` with more rows of the same tables."""

    markets: Sequence[MarketRow]
    runners: Sequence[RunnerRow]
    runner_ticks: Sequence[RunnerTick]
    market_ticks: Sequence[MarketTick]
    windows: Sequence[WindowAggregate]
    results: Sequence[ResultRow]
    predictions: Sequence[Prediction]
    dead_letters: Sequence[DeadLetter]


class _Encoded:
    """A group's rows as COPY tuples: sent as they are on the fast path, turned back into
    records for the checking path and when partitions need more than the time range."""

    def __init__(self, tables: list[EncodedTable]) -> None:
        self.tables = tables
        self.count = sum(table.rows for table in tables)

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return iter(self.records())

    def records(self) -> list:
        return [record for table in self.tables for record in table.records()]

    def data(self) -> list[bytes]:
        """Each table's tuples, all encoded before any is sent (an encoder may refuse)."""
        return [table.data for table in self.tables]

    def months(self, index: int) -> set[tuple[int, int]]:
        """Months of the partition column, step by step: one market's step spans seconds to
        minutes, while a whole batch may mix recordings years apart."""
        months: set[tuple[int, int]] = set()
        for table in self.tables:
            bounds = table.time_range()
            if bounds is not None:
                months |= _end_months(*bounds) or _months(table.records(), index)
        return months


def _batch_groups(batch: RecordBatch, specs: Sequence[TableSpec]) -> list[tuple[TableSpec, Any]]:
    """(spec, rows) for every table with rows in `batch`; rows are records or `_Encoded`."""
    encoded: Sequence[EncodedRows] = getattr(batch, "copy_rows", ())
    groups: list[tuple[TableSpec, Any]] = []
    for spec in specs:
        rows = getattr(batch, spec.attribute, None) or []
        if spec is _DEAD_LETTERS:
            rows = _storable_dead_letters(rows)
        tables = [
            table
            for step in encoded
            if (table := getattr(step, spec.attribute, None)) is not None and table.rows
        ]
        if tables:
            rows = _Encoded(tables) if not rows else [*rows, *_Encoded(tables).records()]
        if rows:
            groups.append((spec, rows))
    return groups


@dataclass
class TableBatch:
    """A plain `RecordBatch` for callers that do not run the market processor."""

    markets: list[MarketRow] = field(default_factory=list)
    runners: list[RunnerRow] = field(default_factory=list)
    runner_ticks: list[RunnerTick] = field(default_factory=list)
    market_ticks: list[MarketTick] = field(default_factory=list)
    windows: list[WindowAggregate] = field(default_factory=list)
    results: list[ResultRow] = field(default_factory=list)
    predictions: list[Prediction] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    @classmethod
    def of(cls, records: Iterable[NamedTuple]) -> TableBatch:
        """Group mixed records by type."""
        batch = cls()
        lists = {spec.record: getattr(batch, spec.attribute) for spec in TABLES}
        for record in records:
            target = lists.get(type(record))
            if target is None:
                raise TypeError(f"no table stores {type(record).__name__} records")
            target.append(record)
        return batch


class SinkUnavailableError(RuntimeError):
    """PostgreSQL stayed unreachable through every retry; the batch was not written."""


class PostgresWriter:
    """Writes `RecordBatch`es; one instance per sink worker (it owns one connection)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        ensure_schema: bool = True,
        max_attempts: int = 8,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        application_name: str = "velo-sink",
        tables: Iterable[str] | None = None,
    ) -> None:
        """`tables`: write only these tables of a batch (default: all of them)."""
        if url is None:
            from connectors.database import resolve_database_url

            url = resolve_database_url(None)
        self.url = url
        self.ensure_schema = ensure_schema
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.application_name = application_name
        self.specs = TABLES if tables is None else tuple(s for s in TABLES if s.table in tables)
        unknown = set(tables or ()) - set(TABLE_NAMES)
        if unknown:
            raise ValueError(f"no such sink table(s): {', '.join(sorted(unknown))}")
        self.totals: Counter[str] = Counter()
        """Rows written per table (plus `rejected`) over the writer's life."""
        self.reconnects = 0
        self._connected_before = False
        self._conn: psycopg.Connection | None = None
        self._flavour: str | None = None
        self._known_partitions: set[tuple[str, int, int]] = set()
        self._column_types: dict[str, tuple[int, ...]] = {}
        """Type oid of every column, in record field order (binary COPY)."""
        self._integer_checks: dict[str, tuple[tuple[int, int, int], ...]] = {}
        """(column index, low, high) of the int2/int4 columns of each table."""
        self._direct = {spec.table for spec in self.specs if spec.append_only}
        """Append-only tables COPYed straight into the table (their recent rows were new)."""

    def write(self, batch: RecordBatch) -> dict[str, int]:
        """Write one batch in one transaction; rows written per table, plus `rejected`.

        "Written" counts inserted rows and changed upserts, so a replayed batch reports 0s.
        """
        return self.write_groups(self.groups(batch))

    def groups(self, batch: RecordBatch) -> list[tuple[TableSpec, Any]]:
        """This writer's tables with rows in `batch` (empty: nothing to write)."""
        return _batch_groups(batch, self.specs)

    def write_groups(self, groups: list[tuple[TableSpec, Any]]) -> dict[str, int]:
        """`write` of what `groups` picked out of a batch."""
        if not groups:
            return {}
        attempt = 1
        while True:
            try:
                counts = self._write_once(self._connection(), groups)
            except psycopg.OperationalError as error:
                self._drop_connection()
                if attempt >= self.max_attempts:
                    raise SinkUnavailableError(
                        f"PostgreSQL unreachable after {attempt} attempts: {error}"
                    ) from error
                delay = min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1))
                log.warning(
                    "database write failed (attempt %d/%d), retrying in %.1fs: %s",
                    attempt,
                    self.max_attempts,
                    delay,
                    " ".join(str(error).split()),
                )
                time.sleep(delay)
                attempt += 1
                continue
            self.totals.update(counts)
            return counts

    @property
    def direct_tables(self) -> frozenset[str]:
        """Append-only tables whose next rows go straight into the table (no staging)."""
        return frozenset(self._direct)

    def close(self) -> None:
        self._drop_connection()

    def __enter__(self) -> PostgresWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- one attempt ------------------------------------------------------------------

    def _write_once(
        self, conn: psycopg.Connection, groups: list[tuple[TableSpec, Sequence]]
    ) -> dict[str, int]:
        self._ensure_partitions(conn, groups)
        direct = frozenset(spec.table for spec, _ in groups if spec.table in self._direct)
        try:
            self._check_integer_ranges(groups)
            try:
                with conn.transaction():
                    return self._copy_and_insert(conn, groups, direct=direct, binary=True)
            except psycopg.errors.UniqueViolation:
                if not direct:
                    raise
                # Part of the batch is stored already (replay, redelivery after a crash,
                # another writer): stage it all and let ON CONFLICT skip what exists.
                self._direct -= direct
            with conn.transaction():
                return self._copy_and_insert(conn, groups, direct=frozenset(), binary=True)
        except Exception as error:
            if not _is_bad_data(error):
                raise
            # Not always bad rows: binary COPY is stricter than PostgreSQL's own parsing (a
            # naive time, "1" for an integer); the text path below stores those as before.
            log.info(
                "batch needs the row-checking path (%s); writing it table by table",
                _primary_message(error),
            )
        return self._write_tolerant(conn, groups)

    def _copy_and_insert(
        self,
        conn: psycopg.Connection,
        groups: list[tuple[TableSpec, Sequence]],
        *,
        direct: frozenset[str],
        binary: bool,
    ) -> dict[str, int]:
        """COPY every group (into its table when listed in `direct`, else into its staging
        table), then move the staged rows with one round trip of INSERT ... ON CONFLICT."""
        counts: dict[str, int] = {}
        staged: list[tuple[TableSpec, int]] = []
        with conn.cursor() as cur:
            for spec, rows in groups:
                into_table = spec.table in direct
                if not binary and isinstance(rows, _Encoded):
                    rows = rows.records()
                with cur.copy(spec.copy_sql(into_table=into_table, binary=binary)) as copy:
                    if isinstance(rows, _Encoded):
                        parts = rows.data()
                        copy.write(_BINARY_COPY_HEADER)
                        for part in parts:
                            copy.write(part)
                        copy.write(_BINARY_COPY_TRAILER)
                    else:
                        if binary:
                            copy.set_types(self._column_types[spec.table])
                        write_row = copy.write_row
                        for row in rows:
                            write_row(row)
                if into_table:
                    counts[spec.table] = cur.rowcount
                else:
                    staged.append((spec, len(rows)))
            if staged:
                cur.execute(sql.SQL("; ").join(spec.insert_sql() for spec, _ in staged))
                for spec, staged_rows in staged:
                    written = max(cur.rowcount, 0)
                    counts[spec.table] = written
                    if spec.append_only and written == staged_rows:
                        # None of it was stored: back to COPYing straight into the table.
                        self._direct.add(spec.table)
                    cur.nextset()
        return {spec.table: counts[spec.table] for spec, _ in groups}

    def _check_integer_ranges(self, groups: list[tuple[TableSpec, Sequence]]) -> None:
        """Refuse int2/int4 values out of range before binary COPY would truncate them; the
        tolerant text path then lets PostgreSQL reject exactly those rows."""
        for spec, rows in groups:
            if isinstance(rows, _Encoded):
                continue  # the encoder refuses out-of-range values itself (ValueError)
            for index, low, high in self._integer_checks[spec.table]:
                values = [v for v in map(itemgetter(index), rows) if v is not None]
                if values and (min(values) < low or max(values) > high):
                    raise ValueError(f"{spec.table}.{spec.columns[index]}: integer out of range")

    def _write_tolerant(
        self, conn: psycopg.Connection, groups: list[tuple[TableSpec, Sequence]]
    ) -> dict[str, int]:
        """Slow path: per-table savepoints, bisecting to the rows PostgreSQL refuses. Text COPY
        here: PostgreSQL parses each value (naive times in the session zone, UTC), and its
        messages name the problem."""
        counts: Counter[str] = Counter()
        rejected: list[tuple[TableSpec, Any, BaseException]] = []
        with conn.transaction():
            for spec, rows in groups:
                counts[spec.table] += self._bisect(conn, spec, list(rows), rejected)
            if rejected:
                letters = [_rejection_letter(spec, row, error) for spec, row, error in rejected]
                counts[_DEAD_LETTERS.table] += self._copy_and_insert(
                    conn, [(_DEAD_LETTERS, letters)], direct=frozenset(), binary=False
                )[_DEAD_LETTERS.table]
        if rejected:
            counts["rejected"] = len(rejected)
            log.warning(
                "%d row(s) rejected by PostgreSQL, stored in dead_letters as %s<table>",
                len(rejected),
                SINK_SOURCE_PREFIX,
            )
        return dict(counts)

    def _bisect(
        self,
        conn: psycopg.Connection,
        spec: TableSpec,
        rows: list,
        rejected: list[tuple[TableSpec, Any, BaseException]],
    ) -> int:
        try:
            with conn.transaction():
                written = self._copy_and_insert(
                    conn, [(spec, rows)], direct=frozenset(), binary=False
                )[spec.table]
                conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(spec.stage)))
            return written
        except Exception as error:
            if not _is_bad_data(error):
                raise
            if len(rows) == 1:
                rejected.append((spec, rows[0], error))
                return 0
            middle = len(rows) // 2
            return self._bisect(conn, spec, rows[:middle], rejected) + self._bisect(
                conn, spec, rows[middle:], rejected
            )

    # -- partitions (plain path) ------------------------------------------------------

    def _ensure_partitions(
        self, conn: psycopg.Connection, groups: list[tuple[TableSpec, Sequence]]
    ) -> None:
        """Create the monthly partitions this batch needs that this writer has not seen.

        Each in its own short transaction, before the batch: attaching a partition locks the
        DEFAULT partition exclusively, which must not last as long as a batch write. One
        partition per transaction, because holding one table's DEFAULT partition while
        waiting for another's deadlocks with a reader of several tables (`count_rows`). And
        one creation per table at a time (an advisory lock on the parent): two writers adding
        different months would each hold the DEFAULT partition (moving its rows) while waiting
        for the other's ATTACH, a deadlock.
        """
        if self._flavour != PLAIN:
            return
        wanted: set[tuple[str, int, int]] = set()
        for spec, rows in groups:
            if spec.partition_column is not None:
                index = spec.columns.index(spec.partition_column)
                wanted |= {(spec.table, y, m) for y, m in _months(rows, index)}
        for table, year, month in sorted(wanted - self._known_partitions):
            with conn.transaction():
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('velo_partitions_of:' || %s))",
                    (table,),
                )
                conn.execute(
                    "SELECT velo_ensure_month_partition(%s, make_date(%s, %s, 1))",
                    (table, year, month),
                )
            self._known_partitions.add((table, year, month))

    # -- connection -------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        conn = psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=10,
            application_name=self.application_name,
        )
        try:
            conn.execute(f"SET TIME ZONE 'UTC'; SET temp_buffers = '{_TEMP_BUFFERS}'")
            if self.ensure_schema:
                self._flavour = upgrade_connection(conn).flavour
            else:
                self._flavour = database_flavour(conn)
                if self._flavour is None:
                    raise RuntimeError("database is not migrated; run `velo db upgrade` first")
            self._load_column_types(conn)
            conn.execute(sql.SQL("; ").join(spec.create_stage_sql() for spec in TABLES))
        except BaseException:
            conn.close()
            raise
        if self._connected_before:
            self.reconnects += 1
        self._connected_before = True
        self._conn = conn
        return conn

    def _load_column_types(self, conn: psycopg.Connection) -> None:
        found: dict[str, dict[str, int]] = {}
        for table, column, oid in conn.execute(
            "SELECT c.relname::text, a.attname::text, a.atttypid::int"
            " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " WHERE a.attrelid = ANY(%s::regclass[]) AND a.attnum > 0 AND NOT a.attisdropped",
            (list(TABLE_NAMES),),
        ):
            found.setdefault(table, {})[column] = oid
        for spec in TABLES:
            columns = found.get(spec.table, {})
            missing = [c for c in spec.columns if c not in columns]
            if missing:
                raise RuntimeError(
                    f"table {spec.table} has no column(s) {', '.join(missing)};"
                    " run `velo db upgrade`"
                )
            oids = tuple(columns[c] for c in spec.columns)
            self._column_types[spec.table] = oids
            self._integer_checks[spec.table] = tuple(
                (index, *_INTEGER_RANGES[oid])
                for index, oid in enumerate(oids)
                if oid in _INTEGER_RANGES
            )

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


OWN_CONNECTION_TABLES = ("runner_ticks", "window_aggregates")
"""The largest tables (≈ 55 % and 33 % of the rows of real PRO files): each is written on a
connection of its own by `ConcurrentPostgresWriter`."""


class ConcurrentPostgresWriter:
    """Writes each batch over several connections at once: each of `OWN_CONNECTION_TABLES` on
    its own, every other table on one more, so PostgreSQL backends ingest in parallel while
    the flow waits (measured: three connections ≈ 8 % faster than two on 2 cores).

    Each connection commits its own transaction. That is safe because every table's write is
    idempotent on its natural key: if one commit is lost (a crash between them), the
    at-least-once redelivery writes the batch again and the committed parts change nothing.
    """

    def __init__(self, url: str | None = None, **options: Any) -> None:
        others = [name for name in TABLE_NAMES if name not in OWN_CONNECTION_TABLES]
        self.writers = (
            *(PostgresWriter(url, tables=(name,), **options) for name in OWN_CONNECTION_TABLES),
            PostgresWriter(url, tables=others, **options),
        )
        self._pool = ThreadPoolExecutor(
            max_workers=len(OWN_CONNECTION_TABLES), thread_name_prefix="velo-sink"
        )

    def write(self, batch: RecordBatch) -> dict[str, int]:
        """Write one batch; rows written per table, plus `rejected` (as `PostgresWriter`)."""
        *own, rest = self.writers
        # Only writers with rows get a thread hand-off: small live batches often have none.
        pending = [
            self._pool.submit(writer.write_groups, groups)
            for writer in own
            if (groups := writer.groups(batch))
        ]
        try:
            counts = Counter(rest.write(batch))
        finally:
            done = [future.result() for future in pending]
        for written in done:
            counts.update(written)
        return dict(counts)

    @property
    def totals(self) -> Counter[str]:
        return sum((writer.totals for writer in self.writers), Counter())

    @property
    def reconnects(self) -> int:
        return sum(writer.reconnects for writer in self.writers)

    def close(self) -> None:
        self._pool.shutdown()
        for writer in self.writers:
            writer.close()

    def __enter__(self) -> ConcurrentPostgresWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- reading back -------------------------------------------------------------------------


def count_rows(url: str) -> dict[str, int]:
    """Exact row count of every sink table."""
    query = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {name}, count(*) FROM {table}").format(
            name=sql.Literal(name), table=sql.Identifier(name)
        )
        for name in TABLE_NAMES
    )
    with psycopg.connect(url) as conn:
        return {name: int(count) for name, count in conn.execute(query).fetchall()}


def dump_table(url: str, table: str) -> list[tuple]:
    """Every row of `table`, all columns in table order, sorted by all columns (comparable)."""
    with psycopg.connect(url) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        cur = conn.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(sql.Identifier(table)))
        width = len(cur.description or ())
        order = sql.SQL(", ").join(sql.Literal(i) for i in range(1, width + 1))
        query = sql.SQL("SELECT * FROM {} ORDER BY {}").format(sql.Identifier(table), order)
        return [tuple(row) for row in conn.execute(query).fetchall()]


# -- helpers ------------------------------------------------------------------------------


def _identifiers(names: Iterable[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _is_bad_data(error: BaseException) -> bool:
    """Whether the rows (not the connection or our SQL) caused `error`."""
    if isinstance(error, psycopg.OperationalError):
        return False
    if isinstance(error, psycopg.Error):
        state = error.sqlstate
        # No SQLSTATE: psycopg could not adapt a Python value before sending it.
        return state is None or state[:2] in _BAD_DATA_SQLSTATE_CLASSES
    return isinstance(error, (TypeError, ValueError))


def _end_months(low: datetime, high: datetime) -> set[tuple[int, int]] | None:
    """The months of `low` and `high` when no month lies between them (so the rows' months
    are exactly these); None when the rows must be looked at one by one."""
    if high.year * 12 + high.month - (low.year * 12 + low.month) <= 1:
        return {(low.year, low.month), (high.year, high.month)}
    return None


def _months(rows: Sequence | _Encoded, index: int) -> set[tuple[int, int]]:
    """UTC (year, month) of the partition column; naive times are taken as UTC."""
    if isinstance(rows, _Encoded):
        return rows.months(index)
    getter = itemgetter(index)
    try:
        low, high = min(map(getter, rows)), max(map(getter, rows))
        return _end_months(_utc(low), _utc(high)) or {
            (t.year, t.month) for t in map(_utc, map(getter, rows))
        }
    except (TypeError, ValueError, AttributeError, IndexError):
        # Bad rows (no or non-datetime time) are rejected later; partition for the rest.
        months = set()
        for row in rows:
            try:
                value = row[index]
            except (TypeError, IndexError):
                continue
            if isinstance(value, datetime):
                utc = _utc(value)
                months.add((utc.year, utc.month))
        return months


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is None else value.astimezone(UTC)


def _storable_dead_letters(letters: Sequence[DeadLetter]) -> Sequence[DeadLetter]:
    """Escape NUL characters (PostgreSQL text cannot hold them) as the JSON-style `\\u0000`,
    so a dead letter of a corrupt line keeps its own source/position key."""
    if not any(_has_nul(letter) for letter in letters):
        return letters
    return [_escape_nul(letter) if _has_nul(letter) else letter for letter in letters]


def _has_nul(row: object) -> bool:
    return isinstance(row, tuple) and any(isinstance(v, str) and "\x00" in v for v in row)


def _escape_nul(row: tuple) -> tuple:
    escaped = (v.replace("\x00", "\\u0000") if isinstance(v, str) else v for v in row)
    return type(row)(*escaped) if hasattr(row, "_fields") else tuple(escaped)


def _primary_message(error: BaseException) -> str:
    """The stable part of an error: no DETAIL/CONTEXT, which carry per-attempt values."""
    if isinstance(error, psycopg.Error) and error.diag.message_primary:
        return error.diag.message_primary
    return " ".join(str(error).split()) or type(error).__name__


def _rejection_letter(spec: TableSpec, row: Any, error: BaseException) -> DeadLetter:
    """A dead letter for a row PostgreSQL refused; position is a hash of the row, so a
    replay of the same bad row maps to the same key (idempotent like everything else)."""
    record = row._asdict() if hasattr(row, "_asdict") else row
    payload = orjson.dumps(record, default=repr, option=orjson.OPT_NON_STR_KEYS)
    detail = " ".join(str(error).split()) or type(error).__name__
    raw = orjson.dumps(
        {"table": spec.table, "record": orjson.Fragment(payload), "error": detail}
    ).decode()
    return DeadLetter(
        source=f"{SINK_SOURCE_PREFIX}{spec.table}",
        position=zlib.crc32(payload),
        reason=_primary_message(error)[:_REASON_MAX_CHARS],
        raw=raw,
        recorded_time=datetime.now(UTC),
    )
