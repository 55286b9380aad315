"""The market dataflow end to end on real files into real PostgreSQL (embedded and services).

Replays are idempotent (twice → same rows), worker-count independent (-w 2 == -w 1), and
bad input is dead-lettered and counted while everything else is processed.
"""

from __future__ import annotations

import bz2
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import psycopg
import pytest

from cli.main import main as velo_main
from cli.replay import replay
from connectors.postgres_sink import count_rows, dump_table
from connectors.stream_files import expand_paths

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WIN_FILES = ["1.127236622.bz2", "1-206064380.bz2", "1.185781277.bz2"]
ALL_HORSE_RACING = [
    *WIN_FILES,
    "SELF-1.181223995",
    "1.205822330.bz2",
    "BASIC-1.132153978",
    "1.164917629.bz2",
]
TABLES = ("markets", "runners", "runner_ticks", "market_ticks", "window_aggregates", "results")


def _copy(betfair_dir: Path, names: list[str], target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(betfair_dir / name, target / name)
    return sorted(target.iterdir())


@pytest.mark.data
def test_every_horse_racing_file_replays_with_results(
    betfair_dir: Path, any_database: str, tmp_path: Path
) -> None:
    paths = _copy(betfair_dir, ALL_HORSE_RACING, tmp_path / "files")
    snapshot = tmp_path / "snapshot.jsonl"
    summary = replay(paths, any_database, snapshot_out=snapshot)
    # line counts from SOURCES.md: every line of every file is one market change
    assert summary.lines == summary.messages == 70_843
    assert len(summary.markets) == len(ALL_HORSE_RACING)
    assert sum(summary.dead_letters.values()) == 0

    with psycopg.connect(any_database) as conn:
        winners = conn.execute(
            "select market_id, count(*) filter (where status = 'WINNER'),"
            " count(*) filter (where status = 'REMOVED'), count(*) filter (where bsp is not null)"
            " from results group by market_id order by market_id"
        ).fetchall()
    # every settled market's closing definition: winners / removed / BSPs (SOURCES.md)
    expected = {
        "1.127236622": (1, 0, 13),
        "1.206064380": (1, 1, 12),
        "1.185781277": (1, 3, 14),
        "1.181223995": (3, 0, 10),
        "1.205822330": (3, 3, 14),
        "1.132153978": (1, 2, 12),
    }
    assert {m: (w, r, b) for m, w, r, b in winners} == expected

    rows = [orjson.loads(line) for line in snapshot.read_bytes().splitlines()]
    by_market = {}
    for row in rows:
        by_market.setdefault(row["market_id"], []).append(row)
        assert [p for p, _ in row["atb"]] == sorted((p for p, _ in row["atb"]), reverse=True)
        assert [p for p, _ in row["atl"]] == sorted(p for p, _ in row["atl"])
        assert all(isinstance(s, float) and s > 0 for _, s in row["atb"] + row["atl"] + row["trd"])
    assert len(by_market) == len(ALL_HORSE_RACING)
    winner = next(r for r in by_market["1.127236622"] if r["status"] == "WINNER")
    assert (winner["selection_id"], winner["bsp"]) == (11129238, 7.69)


@pytest.mark.data
def test_every_handicap_line_of_an_asian_handicap_market_is_stored(
    betfair_dir: Path, scratch_database_factory, tmp_path: Path
) -> None:
    """The football recording's Asian handicap markets list selections at several lines."""
    (path,) = _copy(betfair_dir, ["1.242971311.bz2"], tmp_path / "files")
    latest = {}
    for line in bz2.decompress(path.read_bytes()).splitlines():
        for change in orjson.loads(line).get("mc", []):
            for runner in (change.get("marketDefinition") or {}).get("runners", []):
                key = (change["id"], runner["id"], float(runner.get("hc", 0.0)))
                latest[key] = (runner.get("sortPriority"), runner["status"])
    assert len(latest) > len({(market, selection) for market, selection, _ in latest})
    database = scratch_database_factory()
    replay([path], database)
    stored = dump_table(database, "runners")
    assert {(m, s, h): (priority, status) for m, s, h, _, priority, status, *_ in stored} == latest


@pytest.mark.data
def test_replay_twice_and_two_workers_give_identical_rows(
    betfair_dir: Path, scratch_database_factory, tmp_path: Path
) -> None:
    paths = _copy(betfair_dir, [*WIN_FILES, "SELF-1.181223995"], tmp_path / "files")
    one_worker = scratch_database_factory()
    replay(paths, one_worker, workers=1)
    first = count_rows(one_worker)
    replay(paths, one_worker, workers=1)
    assert count_rows(one_worker) == first
    assert first["runner_ticks"] > 50_000 and first["window_aggregates"] > 10_000

    two_workers = scratch_database_factory()
    replay(paths, two_workers, workers=2)
    for table in TABLES:
        assert dump_table(two_workers, table) == dump_table(one_worker, table), table


def _corrupt(source: Path, other: Path, target: Path) -> dict[str, int]:
    """Cut lines, insert garbage and unknown ops into a copy; truncate a bz2 copy of another.

    Two different markets: one market's lines from two files would interleave out of order.
    """
    lines = bz2.decompress(source.read_bytes()).splitlines()
    corrupted = []
    for number, line in enumerate(lines):
        if number in (100, 2000):
            corrupted.append(line[: len(line) // 2])  # a line cut mid-way
        elif number == 500:
            corrupted.extend([b"garbage \x00\xff not json", line])
        elif number == 900:
            corrupted.extend([b'{"op": "xyz", "pt": 1}', line])
        else:
            corrupted.append(line)
    (target / "corrupt.jsonl").write_bytes(b"\n".join(corrupted) + b"\n")
    packed = other.read_bytes()
    (target / "truncated.bz2").write_bytes(packed[: len(packed) * 2 // 3])
    return {"malformed_json": 3, "unknown_op": 1, "truncated_compressed_file": 1}


@pytest.mark.data
def test_corrupted_files_are_dead_lettered_and_the_rest_processed(
    betfair_dir: Path, any_database: str, tmp_path: Path
) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    expected = _corrupt(betfair_dir / "1.127236622.bz2", betfair_dir / "1-206064380.bz2", folder)
    # the truncated copy's last decompressed line is usually cut too
    summary = replay(expand_paths([folder]), any_database)
    counts = dict(summary.dead_letters)
    cut_tail = counts.get("malformed_json", 0) - expected["malformed_json"]
    assert cut_tail in (0, 1)
    assert counts == {**expected, "malformed_json": expected["malformed_json"] + cut_tail}
    total_lines = len(bz2.decompress((betfair_dir / "1.127236622.bz2").read_bytes()).splitlines())
    # corrupt copy: every good line processed (two were cut, two extra were bad)
    assert summary.messages > total_lines - 2
    with psycopg.connect(any_database) as conn:
        stored = dict(
            conn.execute("select reason, count(*) from dead_letters group by reason").fetchall()
        )
    assert stored == counts


@pytest.mark.data
def test_cli_replay_exit_codes_and_summary(
    betfair_dir: Path, any_database: str, tmp_path: Path, capsys
) -> None:
    summary_json = tmp_path / "summary.json"
    code = velo_main(
        [
            "replay",
            str(betfair_dir / "BASIC-1.132153978"),
            "--db",
            any_database,
            "--summary-json",
            str(summary_json),
            "--no-progress",
        ]
    )
    assert code == 0
    summary = orjson.loads(summary_json.read_bytes())
    assert summary["markets"] == 1 and summary["lines"] == 480 and summary["bad_lines"] == 0
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"not json\n{\n")
    assert velo_main(["replay", str(garbage), "--db", any_database, "--no-progress"]) == 1
    assert velo_main(["replay", str(tmp_path / "missing"), "--db", any_database]) == 2


@pytest.mark.data
def test_bytewax_run_with_two_workers_matches_in_process_replay(
    betfair_dir: Path, scratch_database_factory, tmp_path: Path
) -> None:
    paths = [str(p) for p in _copy(betfair_dir, WIN_FILES, tmp_path / "files")]
    in_process = scratch_database_factory()
    replay([Path(p) for p in paths], in_process)
    via_bytewax_run = scratch_database_factory()
    # the bytewax.run flow does not migrate: the CLI and replay() do
    from sql.migrate import upgrade

    upgrade(via_bytewax_run)
    flow_ref = f"flows.market:replay_flow({paths!r}, {via_bytewax_run!r})"
    subprocess.run(
        [sys.executable, "-m", "bytewax.run", flow_ref, "-w", "2"],
        cwd=PROJECT_ROOT,
        check=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    for table in TABLES:
        assert dump_table(via_bytewax_run, table) == dump_table(in_process, table), table


def _once_crashing_stream(path: Path) -> dict[str, int]:
    """A stream file whose lines once crashed the operators (both implementations), between a
    valid image and a valid update; returns the dead letters it must give, by reason."""
    t0 = 1_700_000_000_000
    market = "1.100"

    def line(*changes: object, pt: int, op: object = "mcm") -> bytes:
        return orjson.dumps({"op": op, "clk": "c", "pt": pt, "mc": list(changes)})

    def definition(**overrides: object) -> dict:
        return {
            "status": "OPEN",
            "version": 3,
            "betDelay": 0,
            "marketTime": "2023-11-14T22:23:20.000Z",
            "runners": [{"id": 1, "status": "ACTIVE"}, {"id": 2, "status": "ACTIVE"}],
            **overrides,
        }

    def with_definition(pt: int, **overrides: object) -> bytes:
        return line({"id": market, "marketDefinition": definition(**overrides)}, pt=pt)

    # read by orjson (1024 levels), too deep for it to write back (254)
    deep = f'{{"op":"mcm","pt":{t0 + 1000},"mc":[{{"id":"1.200","x":{"[" * 1000}{"]" * 1000}}}]}}'
    lines = [
        line(
            {
                "id": market,
                "img": True,
                "marketDefinition": definition(),
                "rc": [
                    {"id": 1, "atb": [[3.0, 100]], "atl": [[3.05, 40]]},
                    {"id": 2, "atb": [[4.0, 20]], "atl": [[4.2, 30]]},
                ],
            },
            pt=t0,
        ),
        line({"id": market, "rc": [{"id": 2, "atl": [[0, 5], [4.1, 3]]}]}, pt=t0 + 100),
        line({"id": market, "rc": 5, "tv": 10.5}, pt=t0 + 200),
        with_definition(t0 + 300, runners=None),
        with_definition(t0 + 400, runners=[{"id": [1]}, {"id": 2}]),
        with_definition(t0 + 500, version="abc"),
        with_definition(t0 + 600, betDelay=[1]),
        with_definition(t0 + 700, marketTime=5),
        with_definition(t0 + 800, runners=[{"id": 1}, {"id": 2, "removalDate": 7}]),
        line({"id": market}, pt=2**62),
        line({"id": market}, pt=-(2**62)),
        line({"id": market, "rc": [{"id": 1, "ltp": 3.0}]}, pt=253_402_300_799_999),
        line({"id": market}, pt=t0 + 900, op=[1]),
        deep.encode(),
        line({"id": market, "rc": [{"id": 1, "atb": [[3.0, 90]], "ltp": 3.0}]}, pt=t0 + 2500),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return {
        "invalid_ladder_entry": 2,
        "invalid_market_definition": 6,
        "publish_time_out_of_range": 3,
        "unknown_op": 1,
        "unknown_market_before_image": 1,
    }


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "python"])
def test_lines_that_once_crashed_are_dead_lettered_by_velo_replay(
    native: str, scratch_database_factory, tmp_path: Path
) -> None:
    from operators.market_processor import UNSERIALISABLE_CHANGE
    from operators.native_core import NATIVE

    if native == "1" and NATIVE is None:
        pytest.skip("velo_native is not installed")
    stream = tmp_path / "once-crashing.jsonl"
    expected = _once_crashing_stream(stream)
    database = scratch_database_factory()
    summary_json = tmp_path / "summary.json"
    arguments = ["replay", str(stream), "--db", database, "--summary-json", str(summary_json)]
    finished = subprocess.run(
        [sys.executable, "-m", "cli.main", *arguments, "--no-progress"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "VELO_NATIVE": native},
    )
    assert finished.returncode == 0, finished.stderr.decode()[-3000:]
    summary = orjson.loads(summary_json.read_bytes())
    assert summary["dead_letters"] == expected
    assert summary["bad_lines"] == sum(expected.values())
    assert summary["lines"] == 15
    # image, 2 ladder lines, 6 definitions, the update; the 3 out-of-range lines, the op and
    # the change before its market's image are not processed
    assert summary["messages"] == 10
    with psycopg.connect(database) as conn:
        stored = dict(
            conn.execute("select reason, count(*) from dead_letters group by reason").fetchall()
        )
        (deep_raw,) = conn.execute(
            "select raw from dead_letters where reason = 'unknown_market_before_image'"
        ).fetchone()
        versions = [v for (v,) in conn.execute("select version from markets").fetchall()]
        best_lay = conn.execute(
            "select best_lay from runner_ticks where selection_id = 2 order by seq desc limit 1"
        ).fetchone()
    assert stored == expected
    assert deep_raw == UNSERIALISABLE_CHANGE
    assert versions == [3]  # the one market row; the refused version left the book's value
    assert best_lay == (4.1,)  # the price-0 level was skipped, the rest of the line applied
