"""Scratch databases on both real PostgreSQL servers: the embedded one and the services one.

`any_database` runs a test once per server; `scratch_database_factory` hands out fresh
empty databases on the embedded server. Each database is dropped after its test.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from connectors.database import create_scratch_database, drop_database, start_embedded_server


@pytest.fixture(scope="session")
def embedded_server_url() -> Iterator[str]:
    # The embedded server runs as an unprivileged user when we are root: give it a
    # directory that user can enter (pytest's tmp_path is 0700 under /tmp/pytest-of-root).
    root = Path(tempfile.mkdtemp(prefix="velo-embedded-pg-"))
    root.chmod(0o755)
    server = start_embedded_server(root / "pg", keep_running=False)
    yield server.get_uri()


@pytest.fixture
def scratch_database_factory(embedded_server_url: str) -> Iterator[Callable[[], str]]:
    created: list[str] = []

    def make() -> str:
        created.append(create_scratch_database(embedded_server_url))
        return created[-1]

    yield make
    for url in created:
        drop_database(url)


@pytest.fixture(params=["embedded", "services"])
def any_database(request: pytest.FixtureRequest, embedded_server_url: str) -> Iterator[str]:
    """A fresh database on the embedded PostgreSQL, then on the services PostgreSQL."""
    if request.param == "embedded":
        server_url = embedded_server_url
    else:
        server_url = request.getfixturevalue("pg_url")
    url = create_scratch_database(server_url)
    yield url
    drop_database(url)
