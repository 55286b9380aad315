"""`velo racecards --hkjc`: real HKJC races onto Kafka as versioned racecard + result events."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from connectors.hkjc import load_hkjc
from operators.racing_events import Racecard, RaceResult, parse_event

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.integration, pytest.mark.data]


def test_hkjc_races_are_published_as_valid_events(
    hkjc_dir: Path, kafka_bootstrap: str, kafka_topic
) -> None:
    topic = kafka_topic(partitions=2, prefix="racecards")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "racecards",
            "--hkjc",
            str(hkjc_dir),
            "--from",
            "2025-07-01",
            "--to",
            "2025-07-16",
            "--topic",
            topic,
        ],
        cwd=REPO,
        env={**os.environ, "KAFKA_BOOTSTRAP": kafka_bootstrap},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    events = []
    idle = 0
    while idle < 6:
        batch = [m for m in consumer.consume(500, timeout=0.5) if m.error() is None]
        idle = 0 if batch else idle + 1
        events.extend((m.key().decode(), parse_event(m.value())) for m in batch)
    consumer.close()

    entries = load_hkjc(hkjc_dir).entries
    races = entries.filter(
        (entries["race_date"].cast(str) >= "2025-07-01")
        & (entries["race_date"].cast(str) <= "2025-07-16")
    )["race_id"].unique()
    cards = {key: e for key, e in events if isinstance(e, Racecard)}
    results = {key: e for key, e in events if isinstance(e, RaceResult)}
    assert len(events) == 2 * len(races) > 0
    assert set(cards) == set(results) == set(races.to_list())
    for race_id, result in results.items():
        assert cards[race_id].race_id == race_id
        winners = [r for r in result.runners if r.finish_position == 1]
        assert winners and all(w.win_odds and w.win_odds >= 1.0 for w in winners)
        declared = {r.runner_id for r in cards[race_id].runners}
        assert {r.runner_id for r in result.runners} <= declared
