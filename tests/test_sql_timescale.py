"""The TimescaleDB path, validated without TimescaleDB (not installable on this machine).

1. The documented API of every extension function the DDL calls is recorded below, with
   the documentation page it comes from. From those records the test creates PostgreSQL
   functions with exactly the documented argument names and types; their bodies check the
   documented preconditions and log each call. PostgreSQL itself then rejects any call
   whose function name, argument name or argument type is not the documented one.
2. The rendered TimescaleDB DDL runs on real PostgreSQL with only the extension-specific
   clauses taken out (`CREATE EXTENSION`, the `timescaledb.*` storage options, which are
   checked against the documented option names instead). Everything else - tables, keys,
   the OHLC query with time_bucket/first/last - executes for real.
3. Both paths are then compared: same tables, columns, types and keys, and the same OHLC
   rows from the same ticks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from connectors.postgres_sink import TABLE_NAMES
from operators.records import RunnerTick
from sql.migrate import TIMESCALE, render_sql, upgrade

DOCS = "https://www.tigerdata.com/docs/api/latest"
"""Reference pages (same text in github.com/timescale/docs, api/**.md)."""


@dataclass(frozen=True)
class Arg:
    name: str
    documented_type: str
    required: bool
    default: str | None = None


@dataclass(frozen=True)
class Signature:
    name: str
    url: str
    args: tuple[Arg, ...]
    returns: str


# Types as the docs give them; "X or Y" (several accepted types) becomes `anyelement`.
DOCUMENTED = (
    Signature(
        "by_range",
        f"{DOCS}/hypertable/create_hypertable/#by_range",
        (
            Arg("column_name", "NAME", True),
            Arg("partition_interval", "ANYELEMENT", True),
            Arg("partition_func", "REGPROC", False),
        ),
        "dimension_info",
    ),
    Signature(
        "create_hypertable",
        f"{DOCS}/hypertable/create_hypertable/",
        (
            Arg("relation", "REGCLASS", True),
            Arg("dimension", "DIMENSION_INFO", True),
            Arg("create_default_indexes", "BOOLEAN", False, "TRUE"),
            Arg("if_not_exists", "BOOLEAN", False, "FALSE"),
            Arg("migrate_data", "BOOLEAN", False, "FALSE"),
        ),
        "TABLE (hypertable_id integer, created boolean)",
    ),
    Signature(
        "add_compression_policy",
        f"{DOCS}/compression/add_compression_policy/",
        (
            Arg("hypertable", "REGCLASS", True),
            Arg("compress_after", "INTERVAL or INTEGER", True),
            Arg("if_not_exists", "BOOLEAN", False, "FALSE"),
            Arg("schedule_interval", "INTERVAL", False),
            Arg("initial_start", "TIMESTAMPTZ", False),
            Arg("timezone", "TEXT", False),
            Arg("compress_created_before", "INTERVAL", False),
            Arg("hypercore_use_access_method", "BOOLEAN", False),
        ),
        "integer",
    ),
    Signature(
        "add_continuous_aggregate_policy",
        f"{DOCS}/continuous-aggregates/add_continuous_aggregate_policy/",
        (
            Arg("continuous_aggregate", "REGCLASS", True),
            Arg("start_offset", "INTERVAL or integer", True),
            Arg("end_offset", "INTERVAL or integer", True),
            Arg("schedule_interval", "INTERVAL", False, "INTERVAL '24 hours'"),
            Arg("initial_start", "TIMESTAMPTZ", False),
            Arg("if_not_exists", "BOOLEAN", False, "FALSE"),
            Arg("timezone", "TEXT", False),
            Arg("include_tiered_data", "BOOLEAN", False),
            Arg("buckets_per_batch", "INTEGER", False),
            Arg("max_batches_per_execution", "INTEGER", False),
            Arg("refresh_newest_first", "BOOLEAN", False),
        ),
        "integer",
    ),
    Signature(
        "time_bucket",
        f"{DOCS}/hyperfunctions/time_bucket/",
        (Arg("bucket_width", "INTERVAL", True), Arg("ts", "TIMESTAMPTZ", True)),
        "timestamptz",
    ),
)
FIRST_LAST_URL = f"{DOCS}/hyperfunctions/first/ and {DOCS}/hyperfunctions/last/"
"""first(value, time) / last(value, time): aggregates, value of `value` at the min/max `time`."""

# Documented WITH options (create_materialized_view, alter_table_compression pages).
CONTINUOUS_OPTIONS = {"continuous", "materialized_only", "create_group_indexes", "finalized"}
COMPRESSION_OPTIONS = {
    "compress",
    "compress_segmentby",
    "compress_orderby",
    "compress_chunk_time_interval",
}
_ORDERBY_ITEM = re.compile(r"^(\w+)(\s+(ASC|DESC))?(\s+NULLS\s+(FIRST|LAST))?$", re.IGNORECASE)

_BODIES = {
    "by_range": """
        SELECT ROW(column_name, pg_typeof(partition_interval), partition_interval::text,
                   partition_func)::dimension_info
    """,
    "create_hypertable": """
    DECLARE
        time_type regtype;
        time_attnum smallint;
        has_rows boolean;
    BEGIN
        IF (SELECT relkind FROM pg_class WHERE oid = relation) <> 'r' THEN
            RAISE EXCEPTION 'create_hypertable: % must be a plain, unpartitioned table', relation;
        END IF;
        SELECT atttypid::regtype, attnum INTO time_type, time_attnum FROM pg_attribute
        WHERE attrelid = relation AND attname = (dimension).column_name AND NOT attisdropped;
        IF time_type IS NULL THEN
            RAISE EXCEPTION 'create_hypertable: % has no column %',
                relation, (dimension).column_name;
        END IF;
        IF time_type IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype)
           AND (dimension).interval_type
               NOT IN ('interval'::regtype, 'bigint'::regtype, 'integer'::regtype) THEN
            RAISE EXCEPTION 'by_range: a time column takes an INTERVAL or integer microseconds,'
                ' not %', (dimension).interval_type;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = relation AND contype IN ('p', 'u')
                   AND NOT time_attnum = ANY (conkey)) THEN
            RAISE EXCEPTION 'create_hypertable: UNIQUE/PRIMARY KEY of % must include %',
                relation, (dimension).column_name;
        END IF;
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', relation) INTO has_rows;
        IF has_rows AND NOT migrate_data THEN
            RAISE EXCEPTION 'create_hypertable: % has rows and migrate_data is false', relation;
        END IF;
        INSERT INTO timescale_calls (fn, relation, args)
        VALUES ('create_hypertable', relation::text, jsonb_build_object(
            'column', (dimension).column_name, 'column_type', time_type::text,
            'interval', (dimension).partition_interval,
            'create_default_indexes', create_default_indexes, 'if_not_exists', if_not_exists));
        RETURN QUERY SELECT 1, true;
    END
    """,
    "add_compression_policy": """
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM timescale_calls WHERE fn = 'create_hypertable'
                       AND relation = hypertable::text) THEN
            RAISE EXCEPTION 'add_compression_policy: % is not a hypertable', hypertable;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM timescale_calls WHERE fn = 'alter_table_compress'
                       AND relation = hypertable::text) THEN
            RAISE EXCEPTION 'add_compression_policy: compression is not enabled on %', hypertable;
        END IF;
        IF pg_typeof(compress_after) <> 'interval'::regtype THEN
            RAISE EXCEPTION 'compress_after must be an INTERVAL for a timestamptz hypertable';
        END IF;
        INSERT INTO timescale_calls (fn, relation, args) VALUES ('add_compression_policy',
            hypertable::text, jsonb_build_object('compress_after', compress_after::text,
                                                 'if_not_exists', if_not_exists));
        RETURN 1000;
    END
    """,
    "add_continuous_aggregate_policy": """
    BEGIN
        IF (SELECT relkind FROM pg_class WHERE oid = continuous_aggregate) <> 'm' THEN
            RAISE EXCEPTION '% is not a continuous aggregate', continuous_aggregate;
        END IF;
        IF pg_typeof(start_offset) <> 'interval'::regtype THEN
            RAISE EXCEPTION 'offsets must be INTERVALs for a timestamptz hypertable';
        END IF;
        IF start_offset IS NOT NULL AND end_offset IS NOT NULL AND start_offset <= end_offset THEN
            RAISE EXCEPTION 'start_offset must be greater than end_offset';
        END IF;
        INSERT INTO timescale_calls (fn, relation, args) VALUES ('add_continuous_aggregate_policy',
            continuous_aggregate::text,
            jsonb_build_object('start_offset', start_offset::text, 'end_offset', end_offset::text,
                               'schedule_interval', schedule_interval::text,
                               'if_not_exists', if_not_exists));
        RETURN 1001;
    END
    """,
    "time_bucket": """
        SELECT date_bin(bucket_width, ts, TIMESTAMPTZ '2000-01-03 00:00:00+00')
    """,
}
_SQL_LANGUAGE = {"by_range", "time_bucket"}

_SUPPORT = """
CREATE TABLE timescale_calls (
    call serial PRIMARY KEY, fn text NOT NULL, relation text NOT NULL, args jsonb NOT NULL
);
CREATE TYPE dimension_info AS (
    column_name name, interval_type regtype, partition_interval text, partition_func regproc
);
CREATE TYPE time_pick AS (value double precision, at timestamptz);
CREATE FUNCTION first_step(state time_pick, value double precision, at timestamptz)
RETURNS time_pick LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN (state).at IS NULL OR at < (state).at THEN ROW(value, at)::public.time_pick
                ELSE state END $$;
CREATE FUNCTION last_step(state time_pick, value double precision, at timestamptz)
RETURNS time_pick LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN (state).at IS NULL OR at >= (state).at THEN ROW(value, at)::public.time_pick
                ELSE state END $$;
CREATE FUNCTION picked(state time_pick) RETURNS double precision LANGUAGE sql IMMUTABLE AS $$
    SELECT (state).value $$;
CREATE AGGREGATE first(double precision, timestamptz) (
    SFUNC = first_step, STYPE = time_pick, FINALFUNC = picked);
CREATE AGGREGATE last(double precision, timestamptz) (
    SFUNC = last_step, STYPE = time_pick, FINALFUNC = picked);
"""


def _pg_type(documented: str) -> str:
    if " or " in documented.lower() or documented.upper() == "ANYELEMENT":
        return "anyelement"
    return documented.lower()


def _shim_ddl(signature: Signature) -> str:
    params = []
    for arg in signature.args:
        param = f"{arg.name} {_pg_type(arg.documented_type)}"
        if not arg.required:
            param += f" DEFAULT {arg.default or 'NULL'}"
        params.append(param)
    language = "sql" if signature.name in _SQL_LANGUAGE else "plpgsql"
    return (
        f"CREATE FUNCTION {signature.name}({', '.join(params)}) RETURNS {signature.returns}"
        f" LANGUAGE {language} AS $shim${_BODIES[signature.name]}$shim$;"
    )


@dataclass
class Stripped:
    sql: str
    compression: dict[str, dict[str, str | None]]
    continuous_options: list[dict[str, str | None]]


def _options(text: str) -> dict[str, str | None]:
    """`timescaledb.a, timescaledb.b = 'x, y'` -> {"a": None, "b": "x, y"}."""
    options: dict[str, str | None] = {}
    for match in re.finditer(r"timescaledb\.(\w+)\s*(?:=\s*('(?:[^']*)'|\w+))?", text):
        value = match[2]
        options[match[1]] = value.strip("'") if value else None
    return options


def strip_extension_clauses(ddl: str) -> Stripped:
    """The TimescaleDB DDL minus what only the extension understands, recorded for checks."""
    compression: dict[str, dict[str, str | None]] = {}
    continuous: list[dict[str, str | None]] = []

    def alter(match: re.Match) -> str:
        compression[match[1]] = _options(match[2])
        # Keep the statement's place (policies must come after it) and its table check.
        return (
            "INSERT INTO timescale_calls (fn, relation, args) VALUES"
            f" ('alter_table_compress', '{match[1]}'::regclass::text, '{{}}');"
        )

    def with_continuous(match: re.Match) -> str:
        continuous.append(_options(match[1]))
        return ""

    sql_text = re.sub(r"CREATE EXTENSION IF NOT EXISTS timescaledb;", "", ddl)
    sql_text = re.sub(r"ALTER TABLE (\w+) SET \(((?:\s*timescaledb\.[^;]*))\);", alter, sql_text)
    sql_text = re.sub(r"WITH \((timescaledb\.continuous[^)]*)\)", with_continuous, sql_text)
    code = "\n".join(line.split("--", 1)[0] for line in sql_text.splitlines())
    assert "timescaledb" not in code, "an extension-only clause was not recognised"
    return Stripped(sql_text, compression, continuous)


def _build_through_shims(url: str, ddl: str) -> Stripped:
    stripped = strip_extension_clauses(ddl)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_SUPPORT)
        for signature in DOCUMENTED:
            conn.execute(_shim_ddl(signature))
        with conn.transaction():
            conn.execute(stripped.sql)
    return stripped


@pytest.fixture
def timescale_like_database(scratch_database_factory: Callable[[], str]) -> tuple[str, Stripped]:
    """A database with the TimescaleDB-path schema built through the documented-API shims."""
    url = scratch_database_factory()
    return url, _build_through_shims(url, render_sql(TIMESCALE))


@pytest.mark.parametrize(
    ("documented", "wrong"),
    [
        ("compress_after =>", "older_than =>"),  # drop_chunks' argument, not this function's
        ("partition_interval =>", "chunk_time_interval =>"),  # pre-2.13 create_hypertable
        ("end_offset => INTERVAL '1 minute'", "end_offset => 60"),  # integer on a time column
        ("relation => 'runner_ticks'", "relation => 'runner_tick'"),  # no such table
    ],
)
def test_shims_reject_calls_off_the_documented_api(
    scratch_database_factory: Callable[[], str], documented: str, wrong: str
) -> None:
    """The check above can fail: a call that deviates from the docs does not build."""
    ddl = render_sql(TIMESCALE)
    assert documented in ddl
    with pytest.raises(psycopg.Error):
        _build_through_shims(scratch_database_factory(), ddl.replace(documented, wrong, 1))


def _calls(url: str, fn: str) -> dict[str, dict]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT relation, args FROM timescale_calls WHERE fn = %s ORDER BY call", (fn,)
        ).fetchall()
    return dict(rows)


def test_hypertables_use_the_documented_api(timescale_like_database: tuple[str, Stripped]) -> None:
    url, _ = timescale_like_database
    hypertables = _calls(url, "create_hypertable")
    assert {name: (a["column"], a["column_type"]) for name, a in hypertables.items()} == {
        "runner_ticks": ("publish_time", "timestamp with time zone"),
        "market_ticks": ("publish_time", "timestamp with time zone"),
        "window_aggregates": ("window_start", "timestamp with time zone"),
    }
    assert hypertables["runner_ticks"]["interval"] == "1 day"
    assert all(a["if_not_exists"] for a in hypertables.values())


def test_compression_settings_use_documented_options_and_real_columns(
    timescale_like_database: tuple[str, Stripped],
) -> None:
    url, stripped = timescale_like_database
    assert set(stripped.compression) == {"runner_ticks", "market_ticks", "window_aggregates"}
    assert stripped.compression["runner_ticks"]["compress_segmentby"] == "market_id, selection_id"
    with psycopg.connect(url) as conn:
        for table, options in stripped.compression.items():
            assert set(options) <= COMPRESSION_OPTIONS, options
            assert "compress" in options
            columns = {
                row[0]
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                    (table,),
                )
            }
            segment = [c.strip() for c in (options["compress_segmentby"] or "").split(",")]
            assert set(segment) <= columns
            order_items = [i.strip() for i in (options["compress_orderby"] or "").split(",")]
            for item in order_items:
                match = _ORDERBY_ITEM.match(item)
                assert match and match[1] in columns, item
            # Every key column is segmented or ordered on, so unique checks stay cheap.
            key = conn.execute(
                "SELECT array_agg(a.attname::text) FROM pg_constraint c JOIN pg_attribute a"
                " ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)"
                " WHERE c.conrelid = %s::regclass AND c.contype = 'p'",
                (table,),
            ).fetchone()[0]
            ordered = {_ORDERBY_ITEM.match(i)[1] for i in order_items}
            assert set(key) <= set(segment) | ordered, table
    policies = _calls(url, "add_compression_policy")
    assert set(policies) == set(stripped.compression)
    assert {p["compress_after"] for p in policies.values()} == {"7 days"}


def test_continuous_aggregate_uses_documented_options_and_policy(
    timescale_like_database: tuple[str, Stripped],
) -> None:
    url, stripped = timescale_like_database
    (options,) = stripped.continuous_options
    assert set(options) <= CONTINUOUS_OPTIONS
    assert "continuous" in options and options["materialized_only"] == "false"
    # Documented shape: GROUP BY time_bucket(<const>, <partition column of the hypertable>).
    ddl = render_sql(TIMESCALE)
    assert re.search(
        r"FROM runner_ticks\s+GROUP BY time_bucket\(INTERVAL '1 minute', publish_time\)", ddl
    )
    assert "WITH NO DATA" in ddl  # allowed inside the migration's transaction
    (policy,) = _calls(url, "add_continuous_aggregate_policy").items()
    assert policy[0] == "runner_ohlc_1m"
    assert policy[1]["start_offset"] is None
    assert policy[1]["end_offset"] == "00:01:00"


def _column_layout(url: str) -> dict[str, list[tuple[str, str, bool]]]:
    with psycopg.connect(url) as conn:
        layout = {}
        for relation in (*TABLE_NAMES, "runner_ohlc_1m"):
            layout[relation] = conn.execute(
                "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull"
                " FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
                " AND NOT attisdropped ORDER BY attnum",
                (relation,),
            ).fetchall()
        return layout


def _keys(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE contype = 'p' AND conrelid::regclass::text = ANY (%s)",
            (list(TABLE_NAMES),),
        ).fetchall()
    return dict(rows)


def test_both_paths_have_the_same_tables_columns_and_keys(
    timescale_like_database: tuple[str, Stripped], scratch_database_factory: Callable[[], str]
) -> None:
    timescale_url, _ = timescale_like_database
    plain_url = scratch_database_factory()
    upgrade(plain_url)
    assert _column_layout(timescale_url) == _column_layout(plain_url)
    assert _keys(timescale_url) == _keys(plain_url)


def _ticks() -> list[RunnerTick]:
    """Two runners over three minutes, with gaps in the last traded price."""
    start = datetime(2024, 3, 9, 13, 59, 50, tzinfo=UTC)
    base = RunnerTick(
        market_id="1.500",
        selection_id=0,
        handicap=0.0,
        publish_time=start,
        seq=0,
        status="ACTIVE",
        in_play=False,
        best_back=2.8,
        best_back_size=10.0,
        best_lay=3.0,
        best_lay_size=12.0,
        ltp=None,
        traded_volume=0.0,
        spread_ticks=2,
        weight_of_money=0.4,
        implied_probability=0.33,
        vwap=3.0,
        spn=None,
        spf=None,
        seconds_to_off=600.0,
    )
    prices = [None, 3.0, 3.1, 2.9, 3.05, None, 2.8, 2.84, 3.2, 3.0]
    return [
        base._replace(
            selection_id=selection,
            publish_time=start + timedelta(seconds=14 * i),
            seq=i + 1,
            ltp=None if ltp is None else ltp + selection / 100,
            traded_volume=100.0 * i + selection,
        )
        for i, ltp in enumerate(prices)
        for selection in (11, 12)
    ]


def test_both_paths_compute_the_same_ohlc(
    timescale_like_database: tuple[str, Stripped], scratch_database_factory: Callable[[], str]
) -> None:
    timescale_url, _ = timescale_like_database
    plain_url = scratch_database_factory()
    upgrade(plain_url)
    columns = ", ".join(RunnerTick._fields)
    placeholders = ", ".join(["%s"] * len(RunnerTick._fields))
    results = []
    for url, refresh in (
        (plain_url, "SELECT velo_refresh_ohlc()"),
        (timescale_url, "REFRESH MATERIALIZED VIEW runner_ohlc_1m"),
    ):
        with psycopg.connect(url) as conn:
            conn.cursor().executemany(
                f"INSERT INTO runner_ticks ({columns}) VALUES ({placeholders})", _ticks()
            )
            conn.commit()
            conn.execute(refresh)
            results.append(
                conn.execute("SELECT * FROM runner_ohlc_1m ORDER BY 2, 3, 4, 1").fetchall()
            )
    plain, timescale = results
    assert plain == timescale
    assert len(plain) == 2 * 3  # two runners over minutes 13:59, 14:00, 14:01
