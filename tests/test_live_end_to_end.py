"""The whole live path: Exchange Stream server → `velo scout` → Kafka → `velo worker` → PostgreSQL.

Betfair's side is the local TLS stream server serving real recordings (dropping the
connection mid-stream); everything else is the production code and real services. The
database must end with exactly the rows `velo replay` stores for the same files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli.replay import replay
from connectors.postgres_sink import dump_table
from tests.betfair_stream_server import BetfairStreamServer, RecordedFeed
from tests.test_scout import (  # noqa: F401  (tls and api are fixtures used below)
    ALL_FIELDS,
    HISTORICAL,
    LIVE_CAPTURE,
    REPO,
    api,
    consume,
    scout_env,
    start_scout,
    stop_scout,
    tls,
)

TABLES = ("markets", "runners", "runner_ticks", "market_ticks", "window_aggregates", "results")

pytestmark = [pytest.mark.integration, pytest.mark.data]


def test_stream_server_to_database_equals_replay(
    betfair_dir: Path,
    tls,  # noqa: F811
    api,  # noqa: F811
    kafka_bootstrap: str,
    kafka_topic,
    fresh_database: str,
    scratch_database_factory,
) -> None:
    files = [betfair_dir / HISTORICAL, betfair_dir / LIVE_CAPTURE]
    feed = RecordedFeed(files)
    topic, dead_letters = kafka_topic(partitions=4), kafka_topic(partitions=1)
    with BetfairStreamServer(
        feed,
        tls,
        app_key="velo-app-key",
        valid_sessions=api.valid_sessions,
        drop_after=[3_000, 15_000],
    ) as server:
        env = scout_env(tls, api, server.port, kafka_bootstrap, topic, dead_letters)
        scout = start_scout(env, "--fields", ALL_FIELDS)
        try:
            consume(kafka_bootstrap, topic, len(feed), settle_s=1.0)
        finally:
            code, metrics, stderr = stop_scout(scout)
    assert code == 0 and metrics["reconnects"] == 2, stderr

    worker_env = {**env, "DATABASE_URL": fresh_database}
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "worker", "--workers", "2", "--exit-when-idle", "3"],
        cwd=REPO,
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    reference = scratch_database_factory()
    replay(files, reference)
    for table in TABLES:
        assert dump_table(fresh_database, table) == dump_table(reference, table), table
