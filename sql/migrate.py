"""Versioned migrations with two DDL paths: TimescaleDB when the server has it, else plain.

Files in `sql/migrations` are `NNNN_name.sql` (same on both paths) or a pair
`NNNN_name.plain.sql` + `NNNN_name.timescale.sql` (one per path). The path is chosen once,
when the first migration is applied, and recorded in `schema_migrations`; later upgrades
stay on it even if the extension appears, because the two layouts are not interchangeable.

Each migration runs in its own transaction together with its `schema_migrations` row, and
the whole upgrade holds a session advisory lock, so concurrent workers starting at once
apply every migration exactly once. Applied migrations are checksummed: editing one after
it shipped is an error, not a silent divergence.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

import psycopg

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
PLAIN = "plain"
TIMESCALE = "timescale"
FLAVOURS = (PLAIN, TIMESCALE)
COMMON = "common"
MIN_TIMESCALEDB = (2, 13)
"""create_hypertable(relation, dimension => by_range(...)) exists since TimescaleDB 2.13."""

_FILE_NAME = re.compile(
    r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+?)(?:\.(?P<variant>plain|timescale))?\.sql$"
)
_LOCK_KEY_SQL = "hashtext('velo:schema_migrations')"
_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    flavour     text NOT NULL CHECK (flavour IN ('plain', 'timescale')),
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migrations on disk and the database disagree, or a file is malformed."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    variant: str
    """`common`, `plain` or `timescale`."""
    sql: str

    @property
    def label(self) -> str:
        suffix = "" if self.variant == COMMON else f".{self.variant}"
        return f"{self.version:04d}_{self.name}{suffix}"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    flavour: str
    checksum: str
    applied_at: datetime


@dataclass(frozen=True)
class UpgradeReport:
    flavour: str
    reason: str
    """Why this path: recorded earlier, extension enabled, or why TimescaleDB was not used."""
    applied: list[Migration]


@dataclass(frozen=True)
class MigrationStatus:
    flavour: str | None
    """None when nothing has been applied yet."""
    reason: str
    applied: list[AppliedMigration]
    pending: list[Migration]
    unknown: list[AppliedMigration]
    """Applied versions this code has no file for (a newer release migrated the database)."""


@cache
def _migration_files() -> tuple[tuple[int, str, str, str], ...]:
    found: list[tuple[int, str, str, str]] = []
    for path in sorted(MIGRATIONS_DIR.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(
                f"{path.name}: migration files are NNNN_name.sql or NNNN_name.(plain|timescale).sql"
            )
        found.append(
            (
                int(match["version"]),
                match["name"],
                match["variant"] or COMMON,
                path.read_text(encoding="utf-8"),
            )
        )
    return tuple(found)


def load_migrations(flavour: str) -> list[Migration]:
    """The migrations of one path, in version order."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, not {flavour!r}")
    by_version: dict[int, dict[str, tuple[str, str]]] = {}
    for version, name, variant, text in _migration_files():
        variants = by_version.setdefault(version, {})
        if variant in variants:
            raise MigrationError(f"two {variant} migrations with version {version:04d}")
        variants[variant] = (name, text)
    migrations = []
    for version in sorted(by_version):
        variants = by_version[version]
        if COMMON in variants and len(variants) > 1:
            raise MigrationError(f"version {version:04d} has both a common and a per-path file")
        if COMMON not in variants and set(variants) != set(FLAVOURS):
            raise MigrationError(f"version {version:04d} needs both .plain.sql and .timescale.sql")
        variant = COMMON if COMMON in variants else flavour
        name, text = variants[variant]
        migrations.append(Migration(version, name, variant, text))
    return migrations


def render_sql(flavour: str) -> str:
    """All DDL of one path as a single script (what `velo db sql` prints)."""
    parts = [f"-- ==== {m.label} ====\n{m.sql.rstrip()}\n" for m in load_migrations(flavour)]
    return "\n".join(parts)


def upgrade(url: str, flavour: str | None = None) -> UpgradeReport:
    """Apply pending migrations to the database at `url`; `flavour` forces a path."""
    with psycopg.connect(url, autocommit=True) as conn:
        return upgrade_connection(conn, flavour)


def upgrade_connection(conn: psycopg.Connection, flavour: str | None = None) -> UpgradeReport:
    """`upgrade` on an open autocommit connection (the sink reuses its own)."""
    if not conn.autocommit:
        raise ValueError("upgrade needs an autocommit connection (one transaction per migration)")
    conn.execute(f"SELECT pg_advisory_lock({_LOCK_KEY_SQL})")
    try:
        conn.execute(_CREATE_LEDGER)
        chosen, reason = _choose_flavour(conn, flavour)
        applied = {a.version: a for a in _applied(conn)}
        done: list[Migration] = []
        for migration in load_migrations(chosen):
            previous = applied.get(migration.version)
            if previous is not None:
                _check_unchanged(migration, previous)
                continue
            with conn.transaction():
                conn.execute(migration.sql)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, flavour, checksum)"
                    " VALUES (%s, %s, %s, %s)",
                    (migration.version, migration.label, chosen, migration.checksum),
                )
            done.append(migration)
        return UpgradeReport(chosen, reason, done)
    finally:
        if not conn.broken:
            conn.execute(f"SELECT pg_advisory_unlock({_LOCK_KEY_SQL})")


def migration_status(url: str) -> MigrationStatus:
    """What is applied and what is pending, without changing anything."""
    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        applied = _applied(conn) if exists and exists[0] else []
        if applied:
            flavour: str | None = applied[0].flavour
            reason = "recorded by earlier migrations"
            expected = load_migrations(applied[0].flavour)
        else:
            flavour = None
            predicted, reason = _probe_timescaledb(conn, try_create=False)
            reason = f"would use {predicted}: {reason}"
            expected = load_migrations(predicted)
    known = {m.version for m in expected}
    applied_versions = {a.version for a in applied}
    return MigrationStatus(
        flavour=flavour,
        reason=reason,
        applied=[a for a in applied if a.version in known],
        pending=[m for m in expected if m.version not in applied_versions],
        unknown=[a for a in applied if a.version not in known],
    )


def database_flavour(conn: psycopg.Connection) -> str | None:
    """The recorded path of a migrated database, None if it was never migrated."""
    row = conn.execute(
        "SELECT CASE WHEN to_regclass('schema_migrations') IS NULL THEN NULL ELSE 1 END"
    ).fetchone()
    if row is None or row[0] is None:
        return None
    found = conn.execute("SELECT flavour FROM schema_migrations LIMIT 1").fetchone()
    return found[0] if found else None


def refresh_ohlc(url: str) -> str:
    """Refresh runner_ohlc_1m (plain path) or report the continuous aggregate (TimescaleDB)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT velo_refresh_ohlc()").fetchone()
    return str(row[0]) if row else ""


def _choose_flavour(conn: psycopg.Connection, forced: str | None) -> tuple[str, str]:
    recorded = {row[0] for row in conn.execute("SELECT DISTINCT flavour FROM schema_migrations")}
    if len(recorded) > 1:
        raise MigrationError(f"schema_migrations mixes paths {sorted(recorded)}")
    if recorded:
        (flavour,) = recorded
        if forced is not None and forced != flavour:
            raise MigrationError(
                f"database was migrated on the {flavour} path; cannot switch to {forced}"
            )
        return flavour, "recorded by earlier migrations"
    if forced is not None:
        if forced not in FLAVOURS:
            raise ValueError(f"flavour must be one of {FLAVOURS}, not {forced!r}")
        return forced, "chosen explicitly"
    return _probe_timescaledb(conn, try_create=True)


def _probe_timescaledb(conn: psycopg.Connection, *, try_create: bool) -> tuple[str, str]:
    """(flavour, reason): TimescaleDB if installed or installable and recent enough."""
    installed = conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
    ).fetchone()
    if installed:
        return _by_version(installed[0], "installed")
    available = conn.execute(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if not available:
        return PLAIN, "timescaledb is not available on this server"
    flavour, reason = _by_version(available[0], "available")
    if flavour == PLAIN or not try_create:
        return flavour, reason
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        return PLAIN, f"timescaledb is available but CREATE EXTENSION failed: {first_line}"
    return TIMESCALE, f"timescaledb {available[0]} enabled"


def _by_version(version: str, state: str) -> tuple[str, str]:
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if numbers < MIN_TIMESCALEDB:
        minimum = ".".join(map(str, MIN_TIMESCALEDB))
        return PLAIN, f"timescaledb {version} is {state} but older than {minimum}"
    return TIMESCALE, f"timescaledb {version} {state}"


def _applied(conn: psycopg.Connection) -> list[AppliedMigration]:
    rows = conn.execute(
        "SELECT version, name, flavour, checksum, applied_at FROM schema_migrations"
        " ORDER BY version"
    ).fetchall()
    return [AppliedMigration(*row) for row in rows]


def _check_unchanged(migration: Migration, applied: AppliedMigration) -> None:
    if applied.checksum != migration.checksum:
        raise MigrationError(
            f"{migration.label} changed after it was applied (checksum {applied.checksum[:12]}"
            f" in the database, {migration.checksum[:12]} on disk); add a new migration instead"
        )
