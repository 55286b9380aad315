"""Feature store: online (Redis, or the in-process fallback) agrees with offline Parquet."""

from __future__ import annotations

import random
import statistics
import time
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from connectors.feature_store import (
    ENTITIES,
    FeatureStore,
    MemoryBackend,
    OfflineStore,
    OnlineStore,
    RedisBackend,
)
from connectors.hkjc import HKJCData, load_hkjc, race_events
from models.features import FeatureState

pytestmark = pytest.mark.data

DAY = date(2023, 6, 4)
SINCE = date(2022, 9, 1)


@pytest.fixture(scope="module")
def history(hkjc_dir: Path) -> tuple[HKJCData, HKJCData]:
    """(history before DAY, DAY's races) over a short window, to keep the test quick."""
    data = load_hkjc(hkjc_dir)
    window = (pl.col("race_date") >= SINCE) & (pl.col("race_date") < DAY)
    before = HKJCData(data.entries.filter(window), data.form_runs.filter(window), data.report)
    today = data.entries.filter(pl.col("race_date") == DAY)
    assert today["race_id"].n_unique() >= 8
    return before, HKJCData(today, data.form_runs.clear(), data.report)


def online_as_of(store: FeatureStore, entity: str, keys: list[str], day: date) -> pl.DataFrame:
    """What a reader of the online store gets for `keys` on `day` (latest row before it)."""
    rows = store.online.read_states(entity, keys)
    return (
        rows.filter(pl.col("as_of") < day)
        .sort("key", "as_of")
        .group_by("key", maintain_order=True)
        .last()
        .sort("key")
    )


def offline_as_of(store: FeatureStore, entity: str, keys: list[str], day: date) -> pl.DataFrame:
    """The offline point-in-time join for the same keys and day."""
    probe = pl.DataFrame({"entity_key": keys, "t": [day] * len(keys)})
    joined = store.offline.point_in_time(entity, probe, "entity_key", "t")
    joined = joined.filter(pl.col("as_of").is_not_null()).drop("t")
    return joined.rename({"entity_key": "key"}).sort("key")


def assert_online_matches_offline(
    store: FeatureStore, day: date, keys: dict[str, list[str]]
) -> int:
    compared = 0
    for entity, entity_keys in keys.items():
        online = online_as_of(store, entity, entity_keys, day)
        offline = offline_as_of(store, entity, entity_keys, day)
        assert online.height == offline.height > 0, entity
        assert_frame_equal(online, offline.select(online.columns), check_exact=False,
                           rel_tol=1e-12, abs_tol=1e-12)  # fmt: skip
        compared += online.height
    return compared


def sample_keys(state: FeatureState, day: date, per_entity: int = 25) -> dict[str, list[str]]:
    rng = random.Random(7)
    keys = {}
    for entity, table in ENTITIES.items():
        known = state.states[table].filter(pl.col("as_of") < day)["key"].unique().sort().to_list()
        keys[entity] = rng.sample(known, min(per_entity, len(known)))
    return keys


def run_day(store: FeatureStore, history: tuple[HKJCData, HKJCData]) -> None:
    before, today = history
    store.build_offline(FeatureState.from_hkjc(before))
    written = store.materialize(until=DAY - timedelta(days=1))
    assert written["horse"] > 1000 and written["jockey"] > 20

    keys = sample_keys(store.state, DAY)
    assert assert_online_matches_offline(store, DAY, keys) > 150

    touched: dict[str, set[str]] = {entity: set() for entity in ENTITIES}
    for card, result in race_events(today.entries):
        store.put_racecard(card)
        online = store.features_for_race(card, online=True).sort("runner_id")
        offline = store.features_for_race(card, online=False).sort("runner_id")
        assert_frame_equal(online, offline, check_exact=False, abs_tol=1e-12)
        for entity, count in store.apply_result(result).items():  # card comes from the store
            assert count > 0, entity
        touched["horse"].update(r.runner_id for r in card.declared_runners)
        touched["jockey"].update(r.jockey for r in card.declared_runners if r.jockey)
        # Later races of the same day must still read the states from before the day.
        same_day = {e: sorted(k) for e, k in touched.items() if k}
        assert_online_matches_offline(store, DAY, same_day)

    after = DAY + timedelta(days=1)
    keys["horse"] = sorted(touched["horse"])
    keys["jockey"] = sorted(touched["jockey"])
    assert assert_online_matches_offline(store, after, keys) > 150
    # The appended offline parts reload into the same history.
    reloaded = OfflineStore(store.offline.root).load_state()
    for table in ("horse", "jockey", "split"):
        assert_frame_equal(
            reloaded.states[table].sort("key", "as_of"),
            store.state.states[table].sort("key", "as_of"),
            check_exact=False,
            rel_tol=1e-12,
            abs_tol=1e-12,
        )


def test_in_process_store_agrees_with_offline(
    history: tuple[HKJCData, HKJCData], tmp_path: Path
) -> None:
    store = FeatureStore(OfflineStore(tmp_path), OnlineStore(MemoryBackend()))
    run_day(store, history)


@pytest.mark.integration
def test_redis_store_agrees_with_offline(
    history: tuple[HKJCData, HKJCData], tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    store = FeatureStore(
        OfflineStore(tmp_path), OnlineStore.connect(redis_url, namespace=f"{redis_prefix}velo:fs")
    )
    try:
        run_day(store, history)
        assert isinstance(store.online.backend, RedisBackend)
        # Reads are single round trips: one HGETALL per entity, pipelined per race.
        client = store.online.backend.client
        horses = sample_keys(store.state, DAY, per_entity=300)["horse"]
        timings = []
        for key in horses:
            started = time.perf_counter()
            assert client.hgetall(store.online.key("horse", key))
            timings.append(time.perf_counter() - started)
        median_ms = statistics.median(timings) * 1000
        print(f"redis HGETALL horse state: median {median_ms:.3f} ms over {len(timings)} reads")
        assert median_ms < 5.0  # sub-millisecond on an idle machine; loose for shared CI
        # A fresh connection finds the schema written by materialize and reads the same rows.
        again = OnlineStore.connect(redis_url, namespace=f"{redis_prefix}velo:fs")
        rows = again.read_states("horse", horses[:5])
        assert rows.height >= 5
    finally:
        store.close()


def test_online_store_refuses_reads_before_materialize() -> None:
    store = OnlineStore(MemoryBackend())
    with pytest.raises(LookupError, match="materialize first"):
        store.read_states("horse", ["A001"])
