"""HKJC loader and racing event schema: parsing rules on small files, then the real data."""

from __future__ import annotations

import csv
import gzip
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from connectors.hkjc import (
    FORM_COLUMNS,
    RESULTS_COLUMNS,
    load_hkjc,
    margin_lengths,
    parse_place,
    race_events,
)
from operators.racing_events import (
    EventValidationError,
    Racecard,
    RaceResult,
    dump_event,
    parse_event,
)

RACE = {
    "venue": "沙田", "race_meeting_no": "291", "race_name": "黃嶺讓賽", "race_class": "第五班",
    "distance_m": "1400", "rating_range": "40-15", "going": "好地",
    "course": '草地 - "B+2" 賽道', "prize_hkd": "600000",
    "race_finish_time": "(13.79) (35.93) (59.42) (1:23.30)",
    "sectional_times_header": "13.79 22.14 23.49 23.88",
}  # fmt: skip


def result_row(day: str, race_no: int, place: str, cloth: str, name: str, **extra: str) -> dict:
    row = {
        **RACE, "date": day, "race_no": str(race_no), "place": place, "horse_no": cloth,
        "horse_name": name, "jockey": "潘頓", "trainer": "方嘉柏", "actual_wt_lbs": "123",
        "declared_wt_lbs": "1050", "draw": cloth or "---", "lbw": "-",
        "running_position": "4 3 3 1", "finish_time": "1:23.30", "win_odds": "6.4",
    }  # fmt: skip
    row.update(extra)
    return row


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def small_hkjc(tmp_path: Path) -> Path:
    day = "2016-01-01"
    race1 = [
        result_row(day, 1, "1", "1", "通勝 (S246)"),
        result_row(day, 1, "2 平頭馬", "2", "領先直前 (S193)", lbw="1"),
        result_row(day, 1, "2 平頭馬", "3", "駕迅 (T063)", lbw="1"),
        result_row(day, 1, "PU", "4", "漸信名駒 (T253)", lbw="---", finish_time="---"),
        result_row(day, 1, "WV-A", "", "帝國之星 (T068)", win_odds="---", draw="---"),
    ]
    race2 = [
        result_row(day, 2, "1 平頭馬", "1", "金瀛 (P072)"),
        result_row(day, 2, "1 平頭馬", "2", "佳同 (CL401)"),
        result_row(day, 2, "3", "3", "虎威勇將 (S395)", lbw="頸位"),
        result_row(day, 2, "4", "4", "no brand code here", lbw="2-3/4"),
        result_row(day, 2, "ZZ", "5", "勝捷勝 (N156)"),
    ]
    write_csv(tmp_path / "results_2016-01-01_2016-01-01.csv.gz", RESULTS_COLUMNS, race1 + race2)
    # A later file in the same format, repeating one row exactly (a duplicate, not a new run).
    later = [result_row("2016-01-06", 1, "1", "1", "通勝 (S246)"), race1[0]]
    write_csv(tmp_path / "results_2016-01-06_2016-01-06.csv", RESULTS_COLUMNS, later)
    form = {
        "horse_no": "S246", "race_index": "291", "place": "01", "date": "01/01/16",
        "racecourse": "沙田", "track": "草地", "course": "B+2", "distance_m": "1400",
        "going": "好", "race_class": "5", "draw": "1", "rating": "38", "trainer": "方嘉柏",
        "jockey": "潘頓", "lbw": "-", "win_odds": "6.4", "actual_wt_lbs": "123",
        "running_position": "4 3 1", "finish_time": "1.23.30", "declared_wt_lbs": "1050",
        "gear": "B1/TT",
    }  # fmt: skip
    earlier = {**form, "date": "20/12/2015", "race_index": "250", "rating": "40", "gear": "TT"}
    write_csv(
        tmp_path / "horse_form_records_until_2016-01-06.csv.gz", FORM_COLUMNS, [form, earlier]
    )
    return tmp_path


def test_place_codes() -> None:
    assert parse_place("3") == ("finished", 3, False, None)
    assert parse_place("2 平頭馬") == ("finished", 2, True, None)
    assert parse_place("DH 1") == ("finished", 1, True, None)
    assert parse_place("WV-A") == ("withdrawn", None, False, "WV-A")
    assert parse_place("WXNR")[0] == "withdrawn"
    assert parse_place("PU") == ("did_not_finish", None, False, "PU")
    assert parse_place("DISQ")[0] == "disqualified"
    assert parse_place("ZZ")[0] == "unknown"
    assert parse_place("0")[0] == "unknown"


def test_margins() -> None:
    assert margin_lengths("-") == 0.0
    assert margin_lengths("2-3/4") == 2.75
    assert margin_lengths("3/4") == 0.75
    assert margin_lengths("12") == 12.0
    assert margin_lengths("頸位") == 0.3
    assert margin_lengths("SH") == 0.1
    assert margin_lengths("+鼻位") == 0.05
    assert margin_lengths("???") is None


def test_small_files_load_with_every_rejection_counted(small_hkjc: Path) -> None:
    data = load_hkjc(small_hkjc)
    report = data.report
    assert report.results_rows_read == 12
    assert report.duplicate_rows == 1
    assert report.rejected == {"no brand code in horse_name": 1, "unknown place code": 1}
    assert report.races == 3
    assert report.withdrawn == 1
    assert report.non_finishers == {"PU": 1}
    assert report.dead_heat_runners == 4

    entries = data.entries
    race1 = entries.filter(pl.col("race_id") == "2016-01-01-ST-01")
    by_id = {row["runner_id"]: row for row in race1.iter_rows(named=True)}
    assert by_id["S246"]["won"] == 1.0 and by_id["S246"]["official_rating"] == 38
    assert by_id["S246"]["gear"] == "B1/TT"  # from the form record dated dd/mm/yy
    assert by_id["S193"]["dead_heat"] and by_id["S193"]["finish_position"] == 2
    assert by_id["T253"]["status"] == "did_not_finish" and by_id["T253"]["won"] == 0.0
    assert by_id["T068"]["status"] == "withdrawn" and by_id["T068"]["win_odds"] is None
    race2 = entries.filter(pl.col("race_id") == "2016-01-01-ST-02")
    assert sorted(race2["won"].to_list()) == [0.0, 0.5, 0.5]  # dead heat for first
    assert race2.filter(pl.col("runner_id") == "S395")["beaten_lengths"].item() == 0.3
    assert entries["distance_m"].to_list() == [1400] * entries.height
    assert entries["going"].unique().to_list() == ["G"]

    # The run dated 20/12/2015 is only in the form records: it becomes horse history.
    assert data.form_runs["race_date"].to_list() == [date(2015, 12, 20)]


def test_small_files_make_valid_events(small_hkjc: Path) -> None:
    events = list(race_events(load_hkjc(small_hkjc).entries))
    assert len(events) == 3
    card, result = events[0]
    assert isinstance(card, Racecard) and isinstance(result, RaceResult)
    assert [r.status.value for r in card.runners].count("withdrawn") == 1
    assert parse_event(dump_event(card)) == card
    assert parse_event(dump_event(result)) == result


def test_missing_column_is_a_clear_error(tmp_path: Path) -> None:
    columns = tuple(c for c in RESULTS_COLUMNS if c != "win_odds")
    write_csv(tmp_path / "results_x.csv", columns, [])
    with pytest.raises(ValueError, match="missing columns"):
        load_hkjc(tmp_path)


def _card(**changes: object) -> dict:
    card = {
        "schema_version": 1, "event_type": "racecard", "source": "betfair", "race_id": "1.2",
        "meeting_date": "2024-03-03", "venue": "Kempton",
        "runners": [{"runner_id": "a", "draw": 1}, {"runner_id": "b", "draw": 2}],
    }  # fmt: skip
    card.update(changes)
    return card


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1]", "JSON object"),
        (_card(schema_version=9), "unsupported schema_version"),
        (_card(event_type="odds"), "unknown event_type"),
        (_card(runners=[{"runner_id": "a"}, {"runner_id": "a"}]), "duplicate runner_id"),
        (_card(runners=[{"runner_id": "a", "draw": 1}, {"runner_id": "b", "draw": 1}]), "draw"),
        (_card(runners=[{"runner_id": "a", "status": "withdrawn"}]), "no declared runner"),
        (_card(start_time="2024-03-03T14:00:00"), "time zone"),
        (_card(distance_m=50), "distance_m"),
        (
            {
                "schema_version": 1, "event_type": "result", "source": "hkjc", "race_id": "r",
                "meeting_date": "2024-03-03", "venue": "ST",
                "runners": [{"runner_id": "a", "status": "finished"}],
            },
            "without a finishing position",
        ),
        (
            {
                "schema_version": 1, "event_type": "result", "source": "hkjc", "race_id": "r",
                "meeting_date": "2024-03-03", "venue": "ST",
                "runners": [
                    {"runner_id": "a", "status": "finished", "finish_position": 1},
                    {"runner_id": "b", "status": "finished", "finish_position": 1},
                ],
            },
            "without a dead-heat flag",
        ),
    ],
)  # fmt: skip
def test_bad_events_give_a_reason(payload: object, reason: str) -> None:
    with pytest.raises(EventValidationError, match=reason) as caught:
        parse_event(payload)  # type: ignore[arg-type]
    assert caught.value.reason


def test_betfair_style_card_without_hkjc_fields_is_valid() -> None:
    runner = {"runner_id": "7", "selection_id": 7, "days_since_last_run": 21, "form": "3-12"}
    card = parse_event(_card(market_id="1.234", runners=[runner]))
    assert isinstance(card, Racecard) and card.runners[0].official_rating is None


@pytest.mark.data
def test_real_results_and_form_records(hkjc_dir: Path) -> None:
    data = load_hkjc(hkjc_dir)
    report = data.report
    assert report.results_rows_read == 98_750
    assert report.form_rows_read == 111_383
    assert report.duplicate_rows == 1_869  # whole races repeated in the results file
    assert report.rejected == {}
    assert report.races == 7_821
    assert report.entries == 96_881
    assert report.withdrawn == 1_683
    assert report.starters == 95_198
    assert report.non_finishers == {"PU": 64, "UR": 49, "DNF": 24, "FE": 28, "TNP": 17, "DISQ": 4}
    assert report.dead_heat_runners == 478
    assert report.filled_from_form == {"class_code": 411, "distance_m": 411}

    starters = data.entries.filter(pl.col("status") != "withdrawn")
    winners = starters.group_by("race_id").agg(pl.col("won").sum())
    assert winners["won"].min() == pytest.approx(1.0) and winners["won"].max() == pytest.approx(1.0)
    assert starters["win_odds"].null_count() == 0
    assert data.entries.filter(pl.col("status") == "withdrawn")["win_odds"].null_count() == 1_683
    assert starters.select(pl.struct("race_id", "runner_id").is_unique().all()).item()
    # Form records cover 2011-2025 with two-digit years read as 20yy.
    assert data.form_runs["race_date"].min() >= date(2011, 1, 1)
    assert data.form_runs["race_date"].max() <= date(2025, 8, 31)
    assert (starters["official_rating"].is_not_null().mean() or 0) > 0.97

    bad = [event for event in race_events(data.entries) if isinstance(event, Exception)]
    assert bad == []
