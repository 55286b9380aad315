"""Feature store: offline Parquet entity states with as-of joins, online Redis hashes.

Offline: one Parquet dataset per entity type (horse, jockey, trainer, trainer_jockey,
trainer_fresh, horse_split, draw, pace, par, race) under `<VELO_DATA_DIR>/feature_store/`, each
row a state *after* a race day; training sets are as-of joins (`models.features.compute_features`).
Results folded in later are appended as extra parts; a reader keeps the last row per (key, day).

Online: one hash per entity, `velo:fs:<entity>:<key>`, holding the entity's latest state and,
under `prev:`-prefixed fields, the one before it, so a race later on the same day as a result
still reads the state from before that day (exactly what the offline as-of join returns).
`materialize(until)` loads it from the offline store; `apply_result` updates both as results
arrive. Without REDIS_URL an in-process dictionary stands in for Redis.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Protocol

import orjson
import polars as pl
import redis

from models.features import FeatureState, features_for_race
from models.features.frame import keys_needed, touched_keys
from operators.racing_events import Racecard, RaceResult, parse_event

log = logging.getLogger(__name__)

# Online entity name -> table name in models.features.states.
ENTITIES = {
    "horse": "horse",
    "jockey": "jockey",
    "trainer": "trainer",
    "trainer_jockey": "pair",
    "trainer_fresh": "fresh",
    "horse_split": "split",
    "draw": "draw",
    "pace": "pace",
}
PAR_ENTITY = "par"
RACE_ENTITY = "race"
PREVIOUS = "prev:"
WRITE_BATCH = 2000
RACE_COLUMNS = (
    "race_id", "race_date", "race_no", "venue", "surface", "course", "distance_m",
    "going_group", "class_level", "rating_band_high", "field_size", "season",
)  # fmt: skip


# --- offline ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfflineStore:
    """Parquet datasets, one directory per entity type (plus `runs`, the folded history)."""

    root: Path

    def _parts(self, name: str) -> Path:
        return self.root / name

    def write(self, name: str, frame: pl.DataFrame, part: str = "base") -> Path:
        directory = self._parts(name)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"part-{part}.parquet"
        partial = path.with_suffix(".tmp")
        frame.write_parquet(partial)
        partial.replace(path)
        return path

    def read(self, name: str) -> pl.DataFrame:
        """All parts of one dataset; for states, the last written row per (key, day) wins."""
        parts = sorted(self._parts(name).glob("part-*.parquet"), key=lambda p: p.stat().st_mtime_ns)
        if not parts:
            raise FileNotFoundError(f"offline store has no {name!r} dataset under {self.root}")
        frame = pl.concat([pl.read_parquet(p) for p in parts], how="vertical_relaxed")
        if {"key", "as_of"} <= set(frame.columns):
            frame = frame.unique(["key", "as_of"], keep="last", maintain_order=True).sort(
                "as_of", maintain_order=True
            )
        elif {"race_id", "runner_id"} <= set(frame.columns):
            frame = frame.unique(["race_id", "runner_id"], keep="last", maintain_order=True).sort(
                "race_date", "race_id", "runner_id"
            )
        return frame

    def exists(self) -> bool:
        return all(self._parts(n).is_dir() for n in [*ENTITIES, PAR_ENTITY, "runs"])

    def save_state(self, state: FeatureState, part: str = "base") -> None:
        for entity, table in ENTITIES.items():
            self.write(entity, state.states[table], part)
        self.write(PAR_ENTITY, state.par, part)
        self.write("runs", state.runs, part)

    def load_state(self) -> FeatureState:
        states = {table: self.read(entity) for entity, table in ENTITIES.items()}
        return FeatureState(runs=self.read("runs"), par=self.read(PAR_ENTITY), states=states)

    def point_in_time(
        self, entity: str, frame: pl.DataFrame, key_column: str, time_column: str
    ) -> pl.DataFrame:
        """Attach to each row of `frame` the entity's state strictly before `time_column`."""
        state = self.read(entity)
        order = pl.int_range(pl.len()).alias("_row")
        return (
            frame.with_columns(order)
            .sort(time_column)
            .join_asof(
                state,
                left_on=time_column,
                right_on="as_of",
                by_left=key_column,
                by_right="key",
                strategy="backward",
                allow_exact_matches=False,
                coalesce=False,
                check_sortedness=False,
            )
            .sort("_row")
            .drop("_row", "key", strict=False)
        )


# --- online ----------------------------------------------------------------------------------


class OnlineBackend(Protocol):
    def write(self, items: Iterable[tuple[str, dict[str, str]]]) -> int: ...
    def read(self, keys: list[str]) -> list[dict[str, str]]: ...


class RedisBackend:
    """Hashes in Redis, written and read in pipelines (one round trip per batch)."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)

    def write(self, items: Iterable[tuple[str, dict[str, str]]]) -> int:
        written = 0
        pipe = self.client.pipeline(transaction=False)
        for key, mapping in items:
            pipe.delete(key)
            if mapping:
                pipe.hset(key, mapping=mapping)
            written += 1
            if written % WRITE_BATCH == 0:
                pipe.execute()
        pipe.execute()
        return written

    def read(self, keys: list[str]) -> list[dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return pipe.execute()

    def close(self) -> None:
        self.client.close()


class MemoryBackend:
    """In-process stand-in for Redis when no REDIS_URL is set (same hash semantics)."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}

    def write(self, items: Iterable[tuple[str, dict[str, str]]]) -> int:
        written = 0
        for key, mapping in items:
            self.hashes[key] = dict(mapping)
            written += 1
        return written

    def read(self, keys: list[str]) -> list[dict[str, str]]:
        return [dict(self.hashes.get(key, {})) for key in keys]

    def close(self) -> None:
        self.hashes.clear()


def _encode(value: object) -> str | None:
    """Exact text form of a state value (floats by repr, so they round-trip bit for bit)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


class OnlineStore:
    """Latest entity states as hashes, read back into the offline tables' shapes."""

    def __init__(self, backend: OnlineBackend, namespace: str = "velo:fs") -> None:
        self.backend = backend
        self.namespace = namespace
        self.schemas: dict[str, dict[str, pl.DataType]] = {}

    @classmethod
    def connect(cls, redis_url: str | None, namespace: str = "velo:fs") -> OnlineStore:
        backend: OnlineBackend = RedisBackend(redis_url) if redis_url else MemoryBackend()
        store = cls(backend, namespace)
        store._load_schemas()
        return store

    def key(self, entity: str, entity_key: str) -> str:
        return f"{self.namespace}:{entity}:{entity_key}"

    def _schema_key(self) -> str:
        return f"{self.namespace}:schema"

    def _load_schemas(self) -> None:
        (stored,) = self.backend.read([self._schema_key()])
        for entity, text in stored.items():
            self.schemas[entity] = {
                name: _dtype(dtype) for name, dtype in orjson.loads(text).items()
            }

    def _save_schema(self, entity: str, frame: pl.DataFrame) -> None:
        self.schemas[entity] = dict(frame.schema)
        encoded = {
            e: orjson.dumps({n: str(t) for n, t in s.items()}).decode()
            for e, s in self.schemas.items()
        }
        self.backend.write([(self._schema_key(), encoded)])

    def write_latest(self, entity: str, state: pl.DataFrame, until: date | None = None) -> int:
        """Write each key's latest row (as of `until`, inclusive) and the row before it."""
        if until is not None:
            state = state.filter(pl.col("as_of") <= until)
        self._save_schema(entity, state)
        last_two = (
            state.sort("key", "as_of", maintain_order=True)
            .group_by("key", maintain_order=True)
            .tail(2)
        )
        columns = [c for c in state.columns if c != "key"]
        items: dict[str, dict[str, str]] = {}
        for row in last_two.iter_rows(named=True):
            hkey = self.key(entity, row["key"])
            mapping = items.setdefault(hkey, {})
            # Rows come oldest first: the current row moves the previous one under `prev:`.
            previous = {
                f"{PREVIOUS}{k}": v for k, v in mapping.items() if not k.startswith(PREVIOUS)
            }
            mapping.clear()
            mapping.update(previous)
            for column in columns:
                encoded = _encode(row[column])
                if encoded is not None:
                    mapping[column] = encoded
        return self.backend.write(items.items())

    def read_states(self, entity: str, keys: Iterable[str]) -> pl.DataFrame:
        """The stored rows (current and previous) of `keys`, typed like the offline table."""
        schema = self.schemas.get(entity)
        if schema is None:
            raise LookupError(f"online store has no {entity!r} states: materialize first")
        wanted = sorted({k for k in keys if k is not None})
        rows: list[dict[str, object]] = []
        for entity_key, stored in zip(
            wanted, self.backend.read([self.key(entity, k) for k in wanted]), strict=True
        ):
            current = {k: v for k, v in stored.items() if not k.startswith(PREVIOUS)}
            previous = {k[len(PREVIOUS) :]: v for k, v in stored.items() if k.startswith(PREVIOUS)}
            rows.extend({"key": entity_key, **part} for part in (previous, current) if part)
        text = pl.DataFrame(rows, schema={name: pl.String for name in schema}, orient="row")
        return text.with_columns(
            [
                pl.col(name).str.to_date() if dtype == pl.Date else pl.col(name).cast(dtype)
                for name, dtype in schema.items()
                if name != "key"
            ]
        ).sort("as_of")

    def states_for(self, cards: pl.DataFrame) -> dict[str, pl.DataFrame]:
        """States of every entity the card rows refer to (for `features_for_race`)."""
        horses = self.read_states("horse", cards["runner_id"].to_list())
        wanted = keys_needed(cards, horses)
        states = {"horse": horses}
        for entity, table in ENTITIES.items():
            if table != "horse":
                states[table] = self.read_states(entity, wanted.get(table, []))
        return states

    def put_race(self, card: Racecard) -> None:
        """Keep an upcoming race's card (conditions and runners) until its result arrives."""
        self.backend.write(
            [(self.key(RACE_ENTITY, card.race_id), {"card": card.model_dump_json()})]
        )

    def get_race(self, race_id: str) -> Racecard | None:
        (stored,) = self.backend.read([self.key(RACE_ENTITY, race_id)])
        if "card" not in stored:
            return None
        event = parse_event(stored["card"].encode())
        return event if isinstance(event, Racecard) else None


def _dtype(name: str) -> pl.DataType:
    """polars dtype from its printed name (the schema is stored as text in the online store)."""
    simple = {"Float64": pl.Float64, "Int32": pl.Int32, "Int64": pl.Int64, "String": pl.String,
              "Date": pl.Date, "Boolean": pl.Boolean, "UInt32": pl.UInt32}  # fmt: skip
    if name not in simple:
        raise ValueError(f"unsupported state column type {name}")
    return simple[name]()


# --- the store -------------------------------------------------------------------------------


class FeatureStore:
    """Offline + online stores kept consistent: build, materialise, fold in results, read."""

    def __init__(self, offline: OfflineStore, online: OnlineStore) -> None:
        self.offline = offline
        self.online = online
        self._state: FeatureState | None = None

    @classmethod
    def open(
        cls, root: Path | None = None, redis_url: str | None = None, namespace: str = "velo:fs"
    ) -> FeatureStore:
        from connectors.settings import get_settings

        settings = get_settings()
        root = root or settings.velo_data_dir / "feature_store"
        return cls(
            OfflineStore(root),
            OnlineStore.connect(
                redis_url if redis_url is not None else settings.redis_url, namespace
            ),
        )

    def build_offline(self, state: FeatureState) -> None:
        """Replace the offline store with the states of `state` (e.g. from HKJC history)."""
        self.offline.save_state(state)
        self.offline.write(RACE_ENTITY, race_table(state.runs))
        self._state = state

    @property
    def state(self) -> FeatureState:
        if self._state is None:
            self._state = self.offline.load_state()
        return self._state

    def materialize(self, until: date) -> dict[str, int]:
        """Load the online store with every entity's state as of the end of `until`."""
        written = {
            entity: self.online.write_latest(entity, self.state.states[table], until)
            for entity, table in ENTITIES.items()
        }
        written[PAR_ENTITY] = self.online.write_latest(PAR_ENTITY, self.state.par, until)
        return written

    def put_racecard(self, card: Racecard) -> None:
        self.online.put_race(card)

    def apply_result(self, result: RaceResult, card: Racecard | None = None) -> dict[str, int]:
        """Fold a result into both stores; only the entities the race touched are rewritten."""
        card = card or self.online.get_race(result.race_id)
        if card is None:
            raise LookupError(f"no racecard stored for race {result.race_id}")
        after = self.state.apply_result(card, result)
        self._state = after
        part = f"{result.meeting_date.isoformat()}-{result.race_id}"
        # The meeting's speed figures change with each result (shared track variant).
        day_runs = after.runs.filter(pl.col("race_date") == result.meeting_date)
        touched = touched_keys(day_runs)
        self.offline.write("runs", day_runs, part)
        self.offline.write(RACE_ENTITY, race_table(day_runs), part)
        tables = [(entity, after.states[table]) for entity, table in ENTITIES.items()]
        written: dict[str, int] = {}
        for entity, state in [*tables, (PAR_ENTITY, after.par)]:
            rows = state.filter(pl.col("key").is_in(touched.implode()))
            self.offline.write(entity, rows, part)
            written[entity] = self.online.write_latest(entity, rows)
        return written

    def features_for_race(self, card: Racecard, online: bool = True) -> pl.DataFrame:
        """Features of an upcoming race from the online store (or the offline state)."""
        return features_for_race(self.online if online else self.state, card)

    def close(self) -> None:
        self.online.backend.close()


def race_table(runs: pl.DataFrame) -> pl.DataFrame:
    """Race entity: conditions of each fully known race, keyed by race id."""
    races = runs.filter(pl.col("complete_field")).unique("race_id", keep="first")
    return races.select(
        pl.col("race_id").alias("key"), pl.col("race_date").alias("as_of"), *RACE_COLUMNS
    ).sort("as_of", "key")
