"""One feature path for training and live scoring: card rows + entity states -> features.

Training: every HKJC race's card rows, joined as-of (strictly before the race day) to states
folded from all runs. Live: one racecard's rows joined to the same states, from memory
(`FeatureState`) or from the online store; both go through `compute_features`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import polars as pl

from connectors.hkjc import CLASS_LEVELS, GOING_CODES, HKJCData, input_files, load_hkjc
from models.features import (
    bias_positioning,
    form_class,
    sectional_speed,
    trainer_intention,
    trip,
)
from models.features.runs import build_runs, cards_from_entries, with_days_since_prev
from models.features.states import (
    DRAW_KEY,
    PACE_KEY,
    SPLITS,
    STATE_BUILDERS,
    STATE_KEYS,
    add_speed_figures,
    as_of_join,
    build_states,
    par_state,
)
from operators.racing_events import FinishStatus, Racecard, RaceResult

log = logging.getLogger(__name__)

# Order matters: later groups reuse earlier intermediate columns (career_finish_pct,
# early_position_avg_3).
GROUP_MODULES = {
    "form_class": form_class,
    "trainer_intention": trainer_intention,
    "sectional_speed": sectional_speed,
    "bias_positioning": bias_positioning,
    "trip": trip,
}
FEATURE_GROUPS: dict[str, list[str]] = {g: list(m.FEATURES) for g, m in GROUP_MODULES.items()}
FEATURE_COLUMNS: list[str] = [name for names in FEATURE_GROUPS.values() for name in names]
FEATURE_DESCRIPTIONS: dict[str, str] = {
    name: text for module in GROUP_MODULES.values() for name, text in module.FEATURES.items()
}
ID_COLUMNS = ["race_id", "race_date", "race_start", "race_no", "venue", "runner_id"]
OUTCOME_COLUMNS = ["won", "win_odds", "finish_position", "status", "field_size"]
FEATURES_DIR = Path(__file__).resolve().parent
CACHED_FRAMES_KEPT = 3

# Each state table, the card column holding its key, and the prefix of its joined columns.
STATE_JOINS = (
    ("horse", "runner_id", "h_"),
    ("jockey", "jockey", "j_"),
    ("jockey", "h_jockey", "lj_"),
    ("trainer", "trainer", "t_"),
    ("pair", "_pair_key", "tj_"),
    ("fresh", "trainer", "tf_"),
    ("split", "_split_dist", "sd_"),
    ("split", "_split_course", "sc_"),
    ("split", "_split_going", "sg_"),
    ("split", "_split_course_dist", "sx_"),
    ("draw", "_draw_key", "dr_"),
    ("pace", "_pace_key", "pc_"),
)


class StateSource(Protocol):
    """Anything that can hand over entity states for a set of card rows."""

    def states_for(self, cards: pl.DataFrame) -> Mapping[str, pl.DataFrame]: ...


def card_keys(cards: pl.DataFrame) -> pl.DataFrame:
    """Entity keys of each card row (the same key expressions the state builders use)."""
    return cards.with_columns(
        _pair_key=pl.format("{}|{}", "trainer", "jockey"),
        _split_dist=SPLITS["dist"],
        _split_course=SPLITS["course"],
        _split_going=SPLITS["going"],
        _split_course_dist=SPLITS["course_dist"],
        _draw_key=DRAW_KEY,
        _pace_key=PACE_KEY,
    )


def keys_needed(cards: pl.DataFrame, horse_states: pl.DataFrame) -> dict[str, list[str]]:
    """Per state table, the keys that card rows join on (last jockeys from the horses' states)."""
    keyed = card_keys(cards)
    last_jockeys = horse_states["jockey"].drop_nulls().unique().to_list()
    wanted: dict[str, set[str]] = {}
    for table, key_column, _ in STATE_JOINS:
        values = last_jockeys if key_column == "h_jockey" else keyed[key_column].to_list()
        wanted.setdefault(table, set()).update(v for v in values if v is not None)
    return {table: sorted(keys) for table, keys in wanted.items()}


def compute_features(
    cards: pl.DataFrame, states: Mapping[str, pl.DataFrame], coverage: bool = False
) -> pl.DataFrame:
    """Card rows + states -> card rows with every FEATURE_COLUMNS column (Float64, no nulls).

    With `coverage`, a Boolean `covered__<feature>` column per feature says whether the value
    comes from data (True) or from a neutral fill (False).
    """
    frame = card_keys(cards)
    for table, key_column, prefix in STATE_JOINS:
        frame = as_of_join(frame, states[table], key_column, prefix)
    if coverage:
        frame = frame.with_columns(
            expr.fill_null(False).alias(f"covered__{name}")
            for module in GROUP_MODULES.values()
            for name, expr in module.COVERAGE.items()
        )
    for module in GROUP_MODULES.values():
        frame = module.compute(frame)
    frame = frame.with_columns(pl.col(FEATURE_COLUMNS).cast(pl.Float64))
    bad = frame.select(
        [(pl.col(c).is_null() | ~pl.col(c).is_finite()).sum().alias(c) for c in FEATURE_COLUMNS]
    ).row(0, named=True)
    missing = {name: count for name, count in bad.items() if count}
    if missing:
        raise ValueError(f"feature values missing or non-finite: {missing}")
    helper = [c for c in frame.columns if c.startswith(("_", *_JOINED_PREFIXES))]
    return frame.drop(helper)


_JOINED_PREFIXES = tuple({prefix for _, _, prefix in STATE_JOINS})


@dataclass(frozen=True)
class FeatureState:
    """History as runs plus the entity states folded from them (the offline store in memory)."""

    runs: pl.DataFrame
    par: pl.DataFrame
    states: dict[str, pl.DataFrame]

    @classmethod
    def from_hkjc(cls, data: HKJCData) -> FeatureState:
        return cls._folded(data.entries, data.form_runs)

    @classmethod
    def empty(cls) -> FeatureState:
        """No history at all (no store materialised yet): every runner gets the neutral fills,
        so live scoring still works. Built from empty frames, so every table has its schema."""
        return cls._folded(pl.DataFrame(schema=_ENTRY_SCHEMA), pl.DataFrame())

    @classmethod
    def _folded(cls, entries: pl.DataFrame, form_runs: pl.DataFrame) -> FeatureState:
        runs = build_runs(entries, form_runs)
        par = par_state(runs)
        runs = add_speed_figures(runs, par)
        return cls(runs=runs, par=par, states=build_states(runs))

    def states_for(self, cards: pl.DataFrame) -> Mapping[str, pl.DataFrame]:
        """Only the rows of the entities the cards refer to (the as-of join does the rest)."""
        horses = self.states["horse"].filter(pl.col("key").is_in(cards["runner_id"].implode()))
        wanted = keys_needed(cards, horses)
        return {
            table: horses
            if table == "horse"
            else state.filter(
                pl.col("key").is_in(pl.Series(wanted[table], dtype=pl.String).implode())
            )
            for table, state in self.states.items()
        }

    def apply_result(self, card: Racecard, result: RaceResult) -> FeatureState:
        """Fold one race's result into the history; only the entities it touches are rebuilt.

        The day's speed figures share a track variant, so the whole meeting's figures (and the
        states of every horse that ran that day) are recomputed with each result.
        """
        new_runs = build_runs(entries_from_events(card, result), pl.DataFrame())
        runs = (
            pl.concat([self.runs, new_runs], how="diagonal_relaxed")
            .unique(["race_id", "runner_id"], keep="last", maintain_order=True)
            .pipe(with_days_since_prev)
        )
        same_day = pl.col("race_date") == card.meeting_date
        day_runs = add_speed_figures(runs.filter(same_day).drop("speed_fig"), self.par)
        runs = pl.concat([runs.filter(~same_day), day_runs.select(runs.columns)]).sort(
            "race_date", "race_id", "runner_id"
        )
        touched = touched_keys(day_runs)
        states = {
            name: _rebuild_keys(self.states[name], builder, runs, STATE_KEYS[name], touched)
            for name, builder in STATE_BUILDERS.items()
        }
        par = _rebuild_keys(self.par, par_state, runs, STATE_KEYS["par"], touched)
        return replace(self, runs=runs, par=par, states=states)


def touched_keys(new_runs: pl.DataFrame) -> pl.Series:
    """Every entity key (of any state table) that the given runs change."""
    expressions = [expr for keys in STATE_KEYS.values() for expr in keys]
    keys = [new_runs.select(expr.alias("k")) for expr in expressions]
    return pl.concat(keys)["k"].drop_nulls().unique()


def _rebuild_keys(
    state: pl.DataFrame,
    builder: Callable[[pl.DataFrame], pl.DataFrame],
    runs: pl.DataFrame,
    key_expressions: list[pl.Expr],
    touched: pl.Series,
) -> pl.DataFrame:
    """Replace the rows of every touched key, rebuilt from those keys' full history."""
    relevant = runs.filter(
        pl.any_horizontal([key.is_in(touched.implode()) for key in key_expressions])
    )
    rebuilt = builder(relevant).filter(pl.col("key").is_in(touched.implode()))
    kept = state.filter(~pl.col("key").is_in(touched.implode()))
    return pl.concat([kept, rebuilt], how="vertical_relaxed").sort("as_of", maintain_order=True)


def entries_from_events(card: Racecard, result: RaceResult | None = None) -> pl.DataFrame:
    """Loader-shaped entry rows for one race from its racecard (and result, once known)."""
    outcome = {r.runner_id: r for r in result.runners} if result else {}
    rows = []
    for runner in card.runners:
        ran = outcome.get(runner.runner_id)
        withdrawn = runner.status == "withdrawn" or (
            ran is not None and ran.status is FinishStatus.WITHDRAWN
        )
        rows.append(
            {
                "race_id": card.race_id,
                "race_date": card.meeting_date,
                "race_no": card.race_number,
                "venue": card.venue,
                "surface": card.surface.value if card.surface else None,
                "course": card.course,
                "distance_m": card.distance_m,
                "going": _going_code(card.going),
                "class_level": CLASS_LEVELS.get(card.race_class or ""),
                "rating_band_high": card.rating_band_high,
                "runner_id": runner.runner_id,
                "draw": runner.draw,
                "jockey": runner.jockey,
                "trainer": runner.trainer,
                "weight_carried_lbs": runner.weight_carried_lbs,
                "body_weight_lbs": runner.body_weight_lbs,
                "official_rating": runner.official_rating,
                "gear": runner.gear,
                "status": FinishStatus.WITHDRAWN.value if withdrawn else "declared",
                "won": None,
                "finish_position": ran.finish_position if ran else None,
                "beaten_lengths": ran.beaten_lengths if ran else None,
                "running_positions": ran.running_positions if ran else [],
                "finish_time_s": ran.finish_time_s if ran else None,
                "winning_time_s": result.winning_time_s if result else None,
                "win_odds": ran.win_odds if ran else None,
            }
        )
    frame = pl.DataFrame(rows, schema=_ENTRY_SCHEMA)
    winners = (pl.col("finish_position") == 1) & (pl.col("status") != "withdrawn")
    return frame.with_columns(
        won=pl.when(winners).then(1.0 / winners.sum()).otherwise(0.0)
        if result
        else pl.lit(None, pl.Float64)
    )


_ENTRY_SCHEMA = {
    "race_id": pl.String, "race_date": pl.Date, "race_no": pl.Int32, "venue": pl.String,
    "surface": pl.String, "course": pl.String, "distance_m": pl.Int32, "going": pl.String,
    "class_level": pl.Float64, "rating_band_high": pl.Int32, "runner_id": pl.String,
    "draw": pl.Int32, "jockey": pl.String, "trainer": pl.String,
    "weight_carried_lbs": pl.Float64, "body_weight_lbs": pl.Float64,
    "official_rating": pl.Int32, "gear": pl.String, "status": pl.String, "won": pl.Float64,
    "finish_position": pl.Int32, "beaten_lengths": pl.Float64,
    "running_positions": pl.List(pl.Int32), "finish_time_s": pl.Float64,
    "winning_time_s": pl.Float64, "win_odds": pl.Float64,
}  # fmt: skip


def _going_code(going: str | None) -> str | None:
    if going is None:
        return None
    if going in GOING_CODES.values():
        return going
    return GOING_CODES.get(going.strip()) or GOING_CODES.get(going.strip().upper())


def cards_from_racecard(card: Racecard) -> pl.DataFrame:
    """Card rows of one upcoming race (declared runners only)."""
    return cards_from_entries(entries_from_events(card))


def features_for_race(history: StateSource, racecard: Racecard) -> pl.DataFrame:
    """Features of one race's declared runners from history strictly before its day.

    Gives the same values as `build_training_frame` for that race (tests/test_features.py).
    """
    cards = cards_from_racecard(racecard)
    frame = compute_features(cards, history.states_for(cards))
    return frame.select("race_id", "runner_id", *FEATURE_COLUMNS)


def _cache_key(hkjc_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in input_files(hkjc_dir):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    loader = FEATURES_DIR.parent.parent / "connectors" / "hkjc.py"
    for path in [*sorted(FEATURES_DIR.glob("*.py")), loader]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def training_frame_from(data: HKJCData, state: FeatureState | None = None) -> pl.DataFrame:
    """The training frame of already-loaded data (no cache)."""
    state = state or FeatureState.from_hkjc(data)
    cards = cards_from_entries(data.entries)
    features = compute_features(cards, state.states)
    outcomes = data.entries.filter(pl.col("status") != FinishStatus.WITHDRAWN.value).select(
        "race_id", "runner_id", "won", "win_odds", "finish_position", "status"
    )
    frame = features.join(outcomes, on=["race_id", "runner_id"], how="left").with_columns(
        race_start=pl.lit(None, pl.Datetime("us", "Asia/Hong_Kong"))
    )
    return frame.select(*ID_COLUMNS, *OUTCOME_COLUMNS, *FEATURE_COLUMNS).sort(
        "race_date", "race_no", "race_id", "runner_id"
    )


def build_training_frame(hkjc_dir: Path, cache_dir: Path | None = None) -> pl.DataFrame:
    """One row per starter of every HKJC race with outcomes and FEATURE_COLUMNS.

    Cached as Parquet under `<VELO_DATA_DIR>/features/`, keyed by the input files' content and
    the feature code, so a second call (or another process) reads it back in well under a second.
    """
    if cache_dir is None:
        from connectors.settings import get_settings

        cache_dir = get_settings().velo_data_dir / "features"
    cached = cache_dir / f"training_{_cache_key(hkjc_dir)}.parquet"
    if cached.exists():
        return pl.read_parquet(cached)
    frame = training_frame_from(load_hkjc(hkjc_dir))
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".tmp")
    frame.write_parquet(partial)
    partial.replace(cached)
    stale = sorted(cache_dir.glob("training_*.parquet"), key=lambda p: p.stat().st_mtime_ns)
    for old in stale[:-CACHED_FRAMES_KEPT]:
        old.unlink(missing_ok=True)
    log.info("training frame: %d runners, cached at %s", frame.height, cached)
    return frame
