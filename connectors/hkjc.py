"""Loader for the Hong Kong Jockey Club result and form-record files.

Reads every `results_*.csv[.gz]` and `horse_form_records_*.csv[.gz]` in a directory (so a later
file in the same format is picked up without code changes) into typed polars frames, and turns
each race into a validated `Racecard` + `RaceResult` (operators/racing_events.py).

What the raw files hold and how it is mapped:
- `place`: a number, `N 平頭馬` / `N DH` (dead heat at N), `WV*`/`WX*` (withdrawn, kept as
  withdrawn entries), `PU`/`UR`/`FE`/`DNF`/`TNP`/... (started, did not finish), `DISQ`.
- `horse_name` carries the lifelong brand code in brackets (`通勝 (S246)`): that code is the
  runner id; results' `horse_no` is only the saddle cloth.
- Form records add the official rating carried into each run and the declared gear; they are
  dated dd/mm/yyyy or dd/mm/yy, use `1.23.45` finish times, and also hold runs missing from the
  results files (before 2016, results-file gaps), which become horse history (`form_runs`).
- Rows that cannot be used are counted by reason in `LoadReport`, never dropped silently.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import polars as pl

from operators.racing_events import (
    EventValidationError,
    FinishStatus,
    Racecard,
    RaceResult,
    RunnerStatus,
)

RESULTS_PATTERNS = ("results_*.csv", "results_*.csv.gz")
FORM_PATTERNS = ("horse_form_records_*.csv", "horse_form_records_*.csv.gz")

RESULTS_COLUMNS = (
    "date", "venue", "race_no", "race_meeting_no", "race_name", "race_class", "distance_m",
    "rating_range", "going", "course", "prize_hkd", "race_finish_time", "sectional_times_header",
    "place", "horse_no", "horse_name", "jockey", "trainer", "actual_wt_lbs", "declared_wt_lbs",
    "draw", "lbw", "running_position", "finish_time", "win_odds",
)  # fmt: skip
FORM_COLUMNS = (
    "horse_no", "race_index", "place", "date", "racecourse", "track", "course", "distance_m",
    "going", "race_class", "draw", "rating", "trainer", "jockey", "lbw", "win_odds",
    "actual_wt_lbs", "running_position", "finish_time", "declared_wt_lbs", "gear",
)  # fmt: skip

VENUES = {
    "沙田": "ST", "跑馬地": "HV", "Sha Tin": "ST", "Happy Valley": "HV", "ST": "ST", "HV": "HV",
    "沙田全天候": "ST", "從化": "CH", "Conghua": "CH",
}  # fmt: skip
# Long (results) and short (form records) Chinese going names, plus English, to one code.
GOING_CODES = {
    "好地": "G", "好": "G", "GOOD": "G",
    "好地至快地": "GF", "好/快": "GF", "GOOD TO FIRM": "GF",
    "快地": "F", "快": "F", "FIRM": "F",
    "好地至黏地": "GY", "好/黏": "GY", "GOOD TO YIELDING": "GY",
    "黏地": "Y", "黏": "Y", "YIELDING": "Y",
    "黏地至軟地": "YS", "黏/軟": "YS", "YIELDING TO SOFT": "YS",
    "軟地": "S", "軟": "S", "SOFT": "S",
    "大爛地": "H", "大爛": "H", "HEAVY": "H",
    "濕快地": "WF", "濕快": "WF", "WET FAST": "WF",
    "濕慢地": "WS", "濕慢": "WS", "WET SLOW": "WS",
    "慢地": "SL", "慢": "SL", "SLOW": "SL",
    "封地": "SE", "封": "SE", "SEALED": "SE",
}  # fmt: skip
RESULTS_CLASS_CODES = {
    "第一班": "1", "第二班": "2", "第三班": "3", "第四班": "4", "第五班": "5",
    "第三班（條件限制）": "3R", "第四班（條件限制）": "4R", "第五班（條件限制）": "5R",
    "香港一級賽": "HKG1", "香港二級賽": "HKG2", "香港三級賽": "HKG3",
    "一級賽": "G1", "二級賽": "G2", "三級賽": "G3", "新馬賽": "GRIFFIN", "四歲馬": "4YO",
}  # fmt: skip
# Class as a number where 1 is the top handicap class: group races above it, griffins below 5.
CLASS_LEVELS = {
    "G1": -1.0, "HKG1": -0.5, "G2": -0.5, "HKG2": 0.0, "G3": 0.0, "HKG3": 0.0, "4YO": 1.0,
    "1": 1.0, "2": 2.0, "3": 3.0, "3R": 3.0, "3S": 3.0, "4": 4.0, "4R": 4.0, "4S": 4.0,
    "5": 5.0, "5R": 5.0, "R": 5.0, "GRIFFIN": 6.0,
}  # fmt: skip
NON_FINISH_CODES = frozenset(
    {"PU", "UR", "FE", "DNF", "TNP", "BD", "RO", "LFT", "SU", "DNS", "CO", "FL", "RR"}
)
WORD_MARGINS = {
    "鼻位": 0.05, "NOSE": 0.05, "N": 0.05, "短馬頭位": 0.1, "SH": 0.1, "頭位": 0.2, "HD": 0.2,
    "頸位": 0.3, "NK": 0.3, "多個馬位": 30.0, "遙遙落後": 30.0, "DIST": 30.0,
}  # fmt: skip
MAX_BEATEN_LENGTHS = 99.0

_DEAD_HEAT = re.compile(r"^(?:(\d+)\s*(?:平頭馬|DH)|DH\s*(\d+))$")
_MARGIN = re.compile(r"^(?:(\d+)-)?(?:(\d+)/(\d+)|(\d+))$")


@dataclass
class LoadReport:
    """What the loader read, used and refused, with reasons (printed by the CLI and docs)."""

    files: list[str] = field(default_factory=list)
    results_rows_read: int = 0
    form_rows_read: int = 0
    duplicate_rows: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    filled_from_form: Counter[str] = field(default_factory=Counter)
    unparsed: Counter[str] = field(default_factory=Counter)
    races: int = 0
    entries: int = 0
    starters: int = 0
    withdrawn: int = 0
    non_finishers: Counter[str] = field(default_factory=Counter)
    dead_heat_runners: int = 0
    form_only_runs: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "results_rows_read": self.results_rows_read,
            "form_rows_read": self.form_rows_read,
            "duplicate_rows": self.duplicate_rows,
            "rejected": dict(self.rejected),
            "filled_from_form": dict(self.filled_from_form),
            "unparsed_kept_as_null": dict(self.unparsed),
            "races": self.races,
            "entries": self.entries,
            "starters": self.starters,
            "withdrawn": self.withdrawn,
            "non_finishers": dict(self.non_finishers),
            "dead_heat_runners": self.dead_heat_runners,
            "form_only_runs": self.form_only_runs,
        }


@dataclass
class HKJCData:
    """Typed HKJC data: `entries` (one row per race entry, withdrawn included, sorted by race),
    `form_runs` (horse runs known only from form records) and the load report."""

    entries: pl.DataFrame
    form_runs: pl.DataFrame
    report: LoadReport


def input_files(hkjc_dir: Path) -> list[Path]:
    """The files the loader reads, in a stable order (also the cache key of derived frames)."""
    found = {p for pattern in RESULTS_PATTERNS + FORM_PATTERNS for p in hkjc_dir.glob(pattern)}
    return sorted(found)


def load_hkjc(hkjc_dir: Path) -> HKJCData:
    """Read, clean and join every HKJC results and form-record file in `hkjc_dir`."""
    report = LoadReport()
    results_files = _glob(hkjc_dir, RESULTS_PATTERNS)
    form_files = _glob(hkjc_dir, FORM_PATTERNS)
    if not results_files:
        raise FileNotFoundError(f"no results_*.csv[.gz] in {hkjc_dir}")
    report.files = [p.name for p in results_files + form_files]

    raw_results = _read_all(results_files, RESULTS_COLUMNS)
    report.results_rows_read = raw_results.height
    deduplicated = raw_results.unique(maintain_order=True)
    report.duplicate_rows = raw_results.height - deduplicated.height

    form = _parse_form(_read_all(form_files, FORM_COLUMNS), report) if form_files else None
    entries = _parse_results(deduplicated, report)
    entries = _join_form(entries, form, report)
    entries = _reject_inconsistent_races(entries, report)
    entries = entries.sort("race_date", "venue", "race_no", "finish_position", "saddle_cloth")

    form_runs = _form_only_runs(form, entries) if form is not None else _empty_form_runs()
    report.races = entries["race_id"].n_unique()
    report.entries = entries.height
    report.withdrawn = int((entries["status"] == FinishStatus.WITHDRAWN.value).sum())
    report.starters = report.entries - report.withdrawn
    report.non_finishers = Counter(
        entries.filter(pl.col("non_finish_code").is_not_null() & (pl.col("status") != "withdrawn"))[
            "non_finish_code"
        ].to_list()
    )
    report.dead_heat_runners = int(entries["dead_heat"].sum())
    report.form_only_runs = form_runs.height
    return HKJCData(entries=entries, form_runs=form_runs, report=report)


def _glob(directory: Path, patterns: tuple[str, ...]) -> list[Path]:
    return sorted({p for pattern in patterns for p in directory.glob(pattern)})


def _read_all(files: list[Path], required: tuple[str, ...]) -> pl.DataFrame:
    frames = []
    for path in files:
        frame = pl.read_csv(path, infer_schema=False, encoding="utf8-lossy")
        frame = frame.rename({c: c.lstrip("\ufeff").strip() for c in frame.columns})
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise ValueError(f"{path.name}: missing columns {missing}")
        frames.append(frame.select(required))
    return pl.concat(frames, how="vertical")


def _reject(frame: pl.DataFrame, bad: pl.Expr, reason: str, report: LoadReport) -> pl.DataFrame:
    """Drop the rows where `bad` holds, counting them under `reason`."""
    flagged = frame.with_columns(_bad=bad.fill_null(True))
    count = int(flagged["_bad"].sum())
    if count:
        report.rejected[reason] += count
    return flagged.filter(~pl.col("_bad")).drop("_bad")


# --- value parsers -------------------------------------------------------------------------


def parse_date(column: str) -> pl.Expr:
    """ISO, dd/mm/yyyy or dd/mm/yy; anything else is null (and rejected by the caller)."""
    text = pl.col(column).str.strip_chars()
    return pl.coalesce(
        text.str.strptime(pl.Date, "%Y-%m-%d", strict=False),
        pl.when(text.str.len_chars() == 10).then(
            text.str.strptime(pl.Date, "%d/%m/%Y", strict=False)
        ),
        pl.when(text.str.len_chars() == 8).then(
            text.str.strptime(pl.Date, "%d/%m/%y", strict=False)
        ),
    )


def parse_race_time(column: str) -> pl.Expr:
    """`1:23.30` (results), `1.23.30` (form records) or `56.28` seconds; `---` is null."""
    text = pl.col(column).str.strip_chars()
    parts = text.str.extract_groups(r"^(?:(\d+)[:.])?(\d{1,2}\.\d+)$")
    minutes = parts.struct.field("1").cast(pl.Float64, strict=False).fill_null(0.0)
    seconds = parts.struct.field("2").cast(pl.Float64, strict=False)
    return (minutes * 60.0 + seconds).alias(column)


def parse_int(column: str) -> pl.Expr:
    return pl.col(column).str.strip_chars().cast(pl.Int32, strict=False)


def parse_float(column: str) -> pl.Expr:
    return pl.col(column).str.strip_chars().cast(pl.Float64, strict=False)


def margin_lengths(text: str | None) -> float | None:
    """Beaten margin in lengths: `2-3/4`, `3/4`, `頸位` (neck), `SH`...; `-` (winner) is 0."""
    if text is None:
        return None
    value = text.strip().lstrip("+").upper()
    if value in {"-", ""}:
        return 0.0
    if value in WORD_MARGINS:
        return WORD_MARGINS[value]
    match = _MARGIN.match(value)
    if not match:
        return None
    whole, numerator, denominator, integer = match.groups()
    lengths = Fraction(int(whole or 0))
    if integer is not None:
        lengths += int(integer)
    elif int(denominator):
        lengths += Fraction(int(numerator), int(denominator))
    return min(float(lengths), MAX_BEATEN_LENGTHS)


def parse_place(text: str | None) -> tuple[str, int | None, bool, str | None]:
    """(status, finishing position, dead heat, source code) of one `place` value.

    Unknown codes give status "unknown" so the caller can reject and count them.
    """
    if text is None:
        return ("unknown", None, False, None)
    value = text.strip().upper()
    if value.isdigit() and int(value) > 0:
        return (FinishStatus.FINISHED.value, int(value), False, None)
    dead_heat = _DEAD_HEAT.match(text.strip())
    if dead_heat:
        return (
            FinishStatus.FINISHED.value,
            int(dead_heat.group(1) or dead_heat.group(2)),
            True,
            None,
        )
    if value.startswith(("WV", "WX")) or value in {"W", "WD", "SCR"}:
        return (FinishStatus.WITHDRAWN.value, None, False, value)
    if value in {"DISQ", "DQ"}:
        return (FinishStatus.DISQUALIFIED.value, None, False, value)
    if value in NON_FINISH_CODES:
        return (FinishStatus.DID_NOT_FINISH.value, None, False, value)
    return ("unknown", None, False, value)


def _parse_places(frame: pl.DataFrame) -> pl.DataFrame:
    """Add status / finish_position / dead_heat / non_finish_code from `place` (per unique)."""
    uniques = frame.select(pl.col("place").unique())
    parsed = [parse_place(v) for v in uniques["place"].to_list()]
    table = uniques.with_columns(
        status=pl.Series([p[0] for p in parsed], dtype=pl.String),
        finish_position=pl.Series([p[1] for p in parsed], dtype=pl.Int32),
        dead_heat=pl.Series([p[2] for p in parsed], dtype=pl.Boolean),
        non_finish_code=pl.Series([p[3] for p in parsed], dtype=pl.String),
    )
    return frame.join(table, on="place", how="left", nulls_equal=True)


def _parse_margins(frame: pl.DataFrame) -> pl.DataFrame:
    uniques = frame.select(pl.col("lbw").unique())
    table = uniques.with_columns(
        beaten_lengths=pl.Series(
            [margin_lengths(v) for v in uniques["lbw"].to_list()], dtype=pl.Float64
        )
    )
    return frame.join(table, on="lbw", how="left", nulls_equal=True)


def _number_list(column: str, dtype: type[pl.DataType]) -> pl.Expr:
    """Space-separated numbers (running positions, sectional splits) as a list; junk dropped."""
    return (
        pl.col(column)
        .str.strip_chars()
        .str.extract_all(r"\d+(?:\.\d+)?")
        .list.eval(pl.element().cast(dtype, strict=False).drop_nulls())
    )


# --- results -------------------------------------------------------------------------------


def _parse_results(raw: pl.DataFrame, report: LoadReport) -> pl.DataFrame:
    frame = raw.with_columns(
        race_date=parse_date("date"),
        venue=pl.col("venue").str.strip_chars().replace_strict(VENUES, default=None),
        race_no=parse_int("race_no"),
        runner_id=pl.col("horse_name").str.extract(r"\(([A-Z]{1,3}\d{2,4})\)"),
    )
    frame = _reject(frame, pl.col("race_date").is_null(), "unparseable date", report)
    frame = _reject(frame, pl.col("venue").is_null(), "unknown venue", report)
    frame = _reject(frame, pl.col("race_no").is_null(), "unparseable race_no", report)
    frame = _reject(frame, pl.col("runner_id").is_null(), "no brand code in horse_name", report)
    frame = _parse_places(frame)
    frame = _reject(frame, pl.col("status") == "unknown", "unknown place code", report)
    frame = _parse_margins(frame).with_columns(_raw_going=pl.col("going"))

    course = pl.col("course").str.strip_chars()
    class_text = pl.col("race_class").str.strip_chars()
    band = pl.col("rating_range").str.extract_groups(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
    band_a = band.struct.field("1").cast(pl.Int32, strict=False)
    band_b = band.struct.field("2").cast(pl.Int32, strict=False)
    frame = frame.with_columns(
        race_id=_race_id(),
        race_index=parse_int("race_meeting_no"),
        race_name=pl.col("race_name").str.strip_chars(),
        class_code=class_text.replace_strict(RESULTS_CLASS_CODES, default=None),
        distance_m=parse_int("distance_m"),
        rating_band_low=pl.min_horizontal(band_a, band_b),
        rating_band_high=pl.max_horizontal(band_a, band_b),
        going=pl.col("going").str.strip_chars().replace_strict(GOING_CODES, default=None),
        surface=pl.when(course.str.contains("全天候|AWT|All Weather"))
        .then(pl.lit("all_weather"))
        .when(course.is_not_null())
        .then(pl.lit("turf")),
        course=pl.when(course.str.contains("全天候|AWT|All Weather"))
        .then(pl.lit("AWT"))
        .otherwise(course.str.extract(r'"([A-C](?:\+\d)?)"')),
        prize_hkd=parse_float("prize_hkd"),
        winning_time_s=pl.col("race_finish_time")
        .str.extract(r"\(([\d:.]+)\)\s*$")
        .alias("_win_time"),
        race_sectionals_s=_number_list("sectional_times_header", pl.Float64),
        horse_name=pl.col("horse_name").str.replace(r"\s*\([A-Z]{1,3}\d{2,4}\).*$", ""),
        saddle_cloth=parse_int("horse_no"),
        jockey=pl.col("jockey").str.strip_chars(),
        trainer=pl.col("trainer").str.strip_chars(),
        weight_carried_lbs=parse_float("actual_wt_lbs"),
        body_weight_lbs=parse_float("declared_wt_lbs"),
        draw=parse_int("draw"),
        running_positions=_number_list("running_position", pl.Int32),
        finish_time_s=parse_race_time("finish_time"),
        win_odds=parse_float("win_odds"),
    )
    frame = frame.with_columns(
        winning_time_s=parse_race_time("winning_time_s"),
        class_code=pl.when(pl.col("class_code").is_null() & pl.col("race_class").is_not_null())
        .then(pl.col("race_class").str.strip_chars())
        .otherwise(pl.col("class_code")),
    )
    for column, raw_column in (("going", "_raw_going"), ("class_code", "race_class")):
        unparsed = frame.filter(pl.col(column).is_null() & pl.col(raw_column).is_not_null())
        if unparsed.height:
            report.unparsed[column] += unparsed.height
    return frame.select(
        "race_id", "race_date", "venue", "race_no", "race_index", "race_name", "class_code",
        "distance_m", "rating_band_low", "rating_band_high", "going", "surface", "course",
        "prize_hkd", "winning_time_s", "race_sectionals_s", "runner_id", "horse_name",
        "saddle_cloth", "jockey", "trainer", "weight_carried_lbs", "body_weight_lbs", "draw",
        "place", "status", "non_finish_code", "finish_position", "dead_heat", "beaten_lengths",
        "running_positions", "finish_time_s", "win_odds",
    )  # fmt: skip


def _race_id() -> pl.Expr:
    """`YYYY-MM-DD-VV-NN`: unique per race and sortable in race order within a meeting."""
    return pl.format(
        "{}-{}-{}",
        pl.col("race_date").dt.strftime("%Y-%m-%d"),
        pl.col("venue"),
        pl.col("race_no").cast(pl.String).str.zfill(2),
    )


# --- form records --------------------------------------------------------------------------


def _parse_form(raw: pl.DataFrame, report: LoadReport) -> pl.DataFrame:
    report.form_rows_read = raw.height
    frame = raw.unique(maintain_order=True)
    report.duplicate_rows += raw.height - frame.height
    racecourse = pl.col("racecourse").str.strip_chars()
    frame = frame.with_columns(
        runner_id=pl.col("horse_no").str.strip_chars(),
        race_date=parse_date("date"),
        venue=pl.when(racecourse.str.starts_with("從化"))
        .then(pl.lit("CH"))
        .otherwise(racecourse.replace_strict(VENUES, default=None)),
    )
    frame = _reject(frame, pl.col("race_date").is_null(), "form: unparseable date", report)
    frame = _reject(frame, pl.col("venue").is_null(), "form: unknown racecourse", report)
    frame = _reject(frame, pl.col("runner_id").is_null(), "form: no horse_no", report)
    frame = _parse_places(frame)
    frame = _reject(frame, pl.col("status") == "unknown", "form: unknown place code", report)
    frame = _parse_margins(frame)
    all_weather = racecourse.str.contains("全天候") | pl.col("course").str.contains("AWT")
    frame = frame.with_columns(
        race_index=parse_int("race_index"),
        surface=pl.when(all_weather).then(pl.lit("all_weather")).otherwise(pl.lit("turf")),
        course=pl.when(all_weather)
        .then(pl.lit("AWT"))
        .otherwise(
            pl.coalesce(
                pl.col("course").str.strip_chars(), racecourse.str.extract(r'"([A-C](?:\+\d)?)"')
            )
        ),
        distance_m=parse_int("distance_m"),
        going=pl.col("going").str.strip_chars().replace_strict(GOING_CODES, default=None),
        class_code=pl.col("race_class").str.strip_chars().str.to_uppercase(),
        draw=parse_int("draw"),
        official_rating=parse_int("rating"),
        trainer=pl.col("trainer").str.strip_chars(),
        jockey=pl.col("jockey").str.strip_chars(),
        win_odds=parse_float("win_odds"),
        weight_carried_lbs=parse_float("actual_wt_lbs"),
        running_positions=_number_list("running_position", pl.Int32),
        finish_time_s=parse_race_time("finish_time"),
        body_weight_lbs=parse_float("declared_wt_lbs"),
        gear=pl.col("gear").str.strip_chars().replace({"--": None, "-": None, "": None}),
    )
    # A horse entered twice on one day ran at most once: prefer the run over the withdrawal.
    frame = frame.sort(pl.col("status") == FinishStatus.WITHDRAWN.value).unique(
        ["runner_id", "race_date"], keep="first", maintain_order=True
    )
    return frame.select(
        "runner_id", "race_date", "venue", "race_index", "surface", "course", "distance_m",
        "going", "class_code", "draw", "official_rating", "trainer", "jockey", "place", "status",
        "non_finish_code", "finish_position", "dead_heat", "beaten_lengths", "win_odds",
        "weight_carried_lbs", "running_positions", "finish_time_s", "body_weight_lbs", "gear",
    )  # fmt: skip


def _join_form(
    entries: pl.DataFrame, form: pl.DataFrame | None, report: LoadReport
) -> pl.DataFrame:
    """Add rating and gear per run; fill race class/distance the results file left empty."""
    if form is None:
        return entries.with_columns(
            official_rating=pl.lit(None, pl.Int32), gear=pl.lit(None, pl.String)
        )
    extra = form.select(
        "runner_id",
        "race_date",
        "official_rating",
        "gear",
        pl.col("class_code").alias("_form_class"),
        pl.col("distance_m").alias("_form_distance"),
    )
    joined = entries.join(extra, on=["runner_id", "race_date"], how="left")
    per_race = joined.group_by("race_id").agg(
        pl.col("_form_class").drop_nulls().mode().first().alias("_race_form_class"),
        pl.col("_form_distance").drop_nulls().mode().first().alias("_race_form_distance"),
    )
    joined = joined.join(per_race, on="race_id", how="left")
    for target, source in (
        ("class_code", "_race_form_class"),
        ("distance_m", "_race_form_distance"),
    ):
        filled = joined.filter(pl.col(target).is_null() & pl.col(source).is_not_null())
        report.filled_from_form[target] += filled["race_id"].n_unique()
        joined = joined.with_columns(pl.coalesce(target, source).alias(target))
    return joined.drop("_form_class", "_form_distance", "_race_form_class", "_race_form_distance")


def _reject_inconsistent_races(entries: pl.DataFrame, report: LoadReport) -> pl.DataFrame:
    """Drop whole races that would mislead every feature: conflicting runner rows, no winner."""
    duplicate_runner = pl.len().over("race_id", "runner_id") > 1
    entries = _reject(
        entries,
        duplicate_runner.any().over("race_id"),
        "race with a runner listed twice (conflicting rows)",
        report,
    )
    finished = pl.col("status") == FinishStatus.FINISHED.value
    no_winner = finished.any().over("race_id") & ~(pl.col("finish_position") == 1).any().over(
        "race_id"
    )
    entries = _reject(entries, no_winner, "race with finishers but no winner", report)
    no_distance = pl.col("distance_m").is_null()
    entries = _reject(entries, no_distance, "race distance unknown (results and form)", report)
    # Flag dead heats from shared positions too, in case a later file drops the marker.
    shared = finished & (pl.len().over("race_id", "finish_position") > 1)
    winners = (finished & (pl.col("finish_position") == 1)).sum().over("race_id")
    return entries.with_columns(
        dead_heat=pl.col("dead_heat") | shared.fill_null(False),
        won=pl.when(finished & (pl.col("finish_position") == 1)).then(1.0 / winners).otherwise(0.0),
        class_level=_class_level(),
        field_size=(pl.col("status") != FinishStatus.WITHDRAWN.value)
        .sum()
        .over("race_id")
        .cast(pl.Int32),
    )


def _form_only_runs(form: pl.DataFrame, entries: pl.DataFrame) -> pl.DataFrame:
    """Runs known only from form records (before 2016, gaps in results), for horse history."""
    known = entries.select("runner_id", "race_date").unique()
    runs = form.filter(pl.col("status") != FinishStatus.WITHDRAWN.value).join(
        known, on=["runner_id", "race_date"], how="anti"
    )
    # Field size is not in form records: count the horses seen in that race (a lower bound).
    race_key = ["race_date", "venue", "race_index"]
    seen = pl.max_horizontal(
        pl.len().over(race_key), pl.col("finish_position").max().over(race_key)
    )
    return runs.with_columns(
        field_size=seen.cast(pl.Int32),
        class_level=_class_level(),
        won=(pl.col("finish_position") == 1).cast(pl.Float64).fill_null(0.0),
    ).sort("race_date", "runner_id")


def _class_level() -> pl.Expr:
    return pl.col("class_code").replace_strict(CLASS_LEVELS, default=None, return_dtype=pl.Float64)


def _empty_form_runs() -> pl.DataFrame:
    return pl.DataFrame(
        schema={"runner_id": pl.String, "race_date": pl.Date, "finish_position": pl.Int32}
    )


# --- events --------------------------------------------------------------------------------


def race_events(
    entries: pl.DataFrame,
) -> Iterator[tuple[Racecard, RaceResult] | EventValidationError]:
    """Each race as (racecard, result); a race that fails validation yields the error instead."""
    for race in entries.partition_by("race_id", maintain_order=True):
        rows = race.to_dicts()
        first = rows[0]
        try:
            yield _racecard(first, rows), _result(first, rows)
        except ValueError as exc:  # pydantic ValidationError subclasses ValueError
            yield EventValidationError(f"race {first['race_id']}: {exc}".splitlines()[0])


def _racecard(race: dict, rows: list[dict]) -> Racecard:
    return Racecard(
        source="hkjc",
        race_id=race["race_id"],
        meeting_date=race["race_date"],
        venue=race["venue"],
        race_number=race["race_no"],
        race_name=race["race_name"],
        distance_m=race["distance_m"],
        going=race["going"],
        surface=race["surface"],
        course=race["course"],
        race_class=race["class_code"],
        rating_band_low=race["rating_band_low"],
        rating_band_high=race["rating_band_high"],
        prize_hkd=race["prize_hkd"],
        runners=[
            {
                "runner_id": row["runner_id"],
                "horse_name": row["horse_name"],
                "saddle_cloth": row["saddle_cloth"],
                "draw": row["draw"],
                "jockey": row["jockey"],
                "trainer": row["trainer"],
                "weight_carried_lbs": row["weight_carried_lbs"],
                "body_weight_lbs": row["body_weight_lbs"],
                "official_rating": row["official_rating"],
                "gear": row["gear"],
                "status": RunnerStatus.WITHDRAWN
                if row["status"] == FinishStatus.WITHDRAWN.value
                else RunnerStatus.DECLARED,
            }
            for row in rows
        ],
    )


def _result(race: dict, rows: list[dict]) -> RaceResult:
    return RaceResult(
        source="hkjc",
        race_id=race["race_id"],
        meeting_date=race["race_date"],
        venue=race["venue"],
        race_number=race["race_no"],
        winning_time_s=race["winning_time_s"],
        sectional_times_s=race["race_sectionals_s"] or [],
        runners=[
            {
                "runner_id": row["runner_id"],
                "status": row["status"],
                "finish_position": row["finish_position"],
                "non_finish_code": row["non_finish_code"],
                "dead_heat": row["dead_heat"],
                "beaten_lengths": row["beaten_lengths"]
                if row["status"] == FinishStatus.FINISHED.value
                else None,
                "finish_time_s": row["finish_time_s"],
                "running_positions": row["running_positions"] or [],
                "win_odds": row["win_odds"],
            }
            for row in rows
        ],
    )
