"""The market simulator: determinism, Betfair wire format, lifecycle, market events, racecards.

The generated day is replayed through betfairlightweight's historical stream (the parser users
run on real Betfair files; it makes no network calls) and the checks run on its market books.
"""

from __future__ import annotations

import bz2
import gzip
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import betfairlightweight
import orjson
import pytest
from betfairlightweight import StreamListener

from connectors.racecards_sample import SimulatedRacecard, racecard_event, sample_racecards
from connectors.simulator import (
    DEFAULT_START,
    FIRST_OFF_AFTER_START,
    SimulatedRace,
    simulate_day,
    simulate_races,
    write_stream,
)
from operators.price_ladder import is_valid_price, tick_index
from operators.racing_events import Racecard, RunnerStatus, dump_event, parse_event

SEED = 1
MARKETS = 4


@dataclass
class ReplayedMarket:
    """What betfairlightweight made of one simulated market."""

    statuses: list[tuple[str, bool]] = field(default_factory=list)  # consecutive duplicates dropped
    versions: list[int] = field(default_factory=list)  # one per marketDefinition message
    crossed_books: int = 0
    open_pre_off_books: int = 0
    # selection id → [(publish time ms, best back price, runner total matched)] while OPEN pre-off
    pre_off: dict[int, list[tuple[int, float, float]]] = field(default_factory=dict)
    runner_matched: dict[int, list[float]] = field(default_factory=dict)
    market_matched: list[float] = field(default_factory=list)
    last_book: object = None


@pytest.fixture(scope="module")
def races() -> list[SimulatedRace]:
    return simulate_races(SEED, MARKETS)


@pytest.fixture(scope="module")
def day_lines() -> list[bytes]:
    return list(simulate_day(SEED, MARKETS))


@pytest.fixture(scope="module")
def day_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("simulator") / "day.jsonl"
    write_stream(path, SEED, MARKETS)
    return path


@pytest.fixture(scope="module")
def replay(day_file: Path) -> dict[str, ReplayedMarket]:
    client = betfairlightweight.APIClient("username", "password", "app_key")
    listener = StreamListener(max_latency=None)
    stream = client.streaming.create_historical_generator_stream(
        file_path=str(day_file), listener=listener
    )
    lines = day_file.read_bytes().splitlines()
    markets: dict[str, ReplayedMarket] = defaultdict(ReplayedMarket)
    snapshots = 0
    for line, books in zip(lines, stream.get_generator()(), strict=True):
        snapshots += 1
        change = orjson.loads(line)["mc"][0]
        book = next(b for b in books if b.market_id == change["id"])
        market = markets[change["id"]]
        state = (book.status, book.inplay)
        if not market.statuses or market.statuses[-1] != state:
            market.statuses.append(state)
        if "marketDefinition" in change:
            market.versions.append(book.version)
        market.market_matched.append(book.total_matched)
        pt = book.publish_time_epoch
        for runner in book.runners:
            market.runner_matched.setdefault(runner.selection_id, []).append(runner.total_matched)
        if book.status == "OPEN" and not book.inplay:
            market.open_pre_off_books += 1
            for runner in book.runners:
                if runner.status != "ACTIVE":
                    continue
                backs = runner.ex.available_to_back
                lays = runner.ex.available_to_lay
                if backs and lays and backs[0].price >= lays[0].price:
                    market.crossed_books += 1
                if backs:
                    market.pre_off.setdefault(runner.selection_id, []).append(
                        (pt, backs[0].price, runner.total_matched)
                    )
        market.last_book = book
    assert snapshots == len(lines), "betfairlightweight dropped lines"
    return dict(markets)


def test_same_seed_gives_identical_bytes_and_another_seed_does_not() -> None:
    first = list(simulate_day(5, 2, messages_per_market=600))
    again = list(simulate_day(5, 2, messages_per_market=600))
    other = list(simulate_day(6, 2, messages_per_market=600))
    assert first == again
    assert first != other
    assert all(b"\n" not in line for line in first)


def test_envelope_clock_and_publish_time_order(day_lines: list[bytes]) -> None:
    clocks = []
    times = []
    for line in day_lines:
        message = orjson.loads(line)
        assert message["op"] == "mcm"
        assert len(message["mc"]) == 1
        assert isinstance(message["clk"], str)
        clocks.append(int(message["clk"]))
        times.append(message["pt"])
    assert all(a < b for a, b in pairwise(clocks))
    assert all(a <= b for a, b in pairwise(times))
    # Markets are interleaved, not concatenated.
    ids = [orjson.loads(line)["mc"][0]["id"] for line in day_lines]
    switches = sum(a != b for a, b in pairwise(ids))
    assert switches > 100


def test_first_message_is_a_full_image(day_lines: list[bytes], races: list[SimulatedRace]) -> None:
    first_seen: dict[str, dict] = {}
    for line in day_lines:
        change = orjson.loads(line)["mc"][0]
        first_seen.setdefault(change["id"], change)
    assert set(first_seen) == {race.racecard.market_id for race in races}
    for race in races:
        change = first_seen[race.racecard.market_id]
        definition = change["marketDefinition"]
        assert definition["status"] == "OPEN" and definition["inPlay"] is False
        assert change["img"] is False
        ids = {runner.selection_id for runner in race.racecard.runners}
        assert {r["id"] for r in definition["runners"]} == ids
        ladders = defaultdict(set)
        for runner_change in change["rc"]:
            ladders[runner_change["id"]].update(runner_change)
        for selection_id in ids:
            assert {"atb", "atl", "trd", "ltp", "tv", "spn"} <= ladders[selection_id]


def test_betfairlightweight_lifecycle(
    replay: dict[str, ReplayedMarket], races: list[SimulatedRace]
) -> None:
    assert set(replay) == {race.racecard.market_id for race in races}
    removal_suspension = r"(\('SUSPENDED', False\)\('OPEN', False\))?"
    lifecycle = re.compile(
        r"\('OPEN', False\)"
        + removal_suspension
        + r"\('SUSPENDED', False\)\('OPEN', True\)\('SUSPENDED', True\)\('CLOSED', True\)"
    )
    for race in races:
        market = replay[race.racecard.market_id]
        assert lifecycle.fullmatch("".join(map(str, market.statuses))), market.statuses
        book = market.last_book
        statuses = {runner.selection_id: runner.status for runner in book.runners}
        assert list(statuses.values()).count("WINNER") == 1
        assert statuses[race.winner] == "WINNER"
        for runner in book.runners:
            if runner.selection_id == race.non_runner:
                assert runner.status == "REMOVED"
                assert runner.removal_date is not None
                assert runner.adjustment_factor > 0
                assert runner.sp.actual_sp is None
            else:
                assert runner.status in {"WINNER", "LOSER"}
                assert 1.01 <= runner.sp.actual_sp <= 1000
        assert book.number_of_active_runners == 0
        # Each definition change carries a new, higher version.
        assert all(a < b for a, b in pairwise(market.versions))
    assert any(race.non_runner is not None for race in races), "choose a seed with a non-runner"


def test_non_runner_reduces_the_other_runners_adjustment_factors(day_lines: list[bytes]) -> None:
    before: dict[str, dict[int, float]] = {}
    seen_removal = False
    for line in day_lines:
        change = orjson.loads(line)["mc"][0]
        definition = change.get("marketDefinition")
        if not definition:
            continue
        market_id = change["id"]
        factors = {r["id"]: r["adjustmentFactor"] for r in definition["runners"]}
        removed = [r for r in definition["runners"] if r["status"] == "REMOVED"]
        if removed and definition["status"] == "SUSPENDED" and market_id in before:
            previous = before.pop(market_id)
            gone = previous[removed[0]["id"]]
            for selection_id, factor in factors.items():
                if selection_id != removed[0]["id"]:
                    expected = previous[selection_id] / (1 - gone / 100)
                    assert factor == pytest.approx(expected, abs=0.011)
            assert definition["numberOfActiveRunners"] == len(factors) - 1
            assert definition["runners"][-1]["status"] == "REMOVED"
            seen_removal = True
        elif not any("removalDate" in r for r in definition["runners"]):
            before[market_id] = factors
    assert seen_removal


def test_pre_off_books_never_cross(replay: dict[str, ReplayedMarket]) -> None:
    for market in replay.values():
        assert market.open_pre_off_books > 1000
        assert market.crossed_books == 0


def test_every_price_is_on_the_betfair_ladder(day_lines: list[bytes]) -> None:
    checked = 0
    for line in day_lines:
        for runner_change in orjson.loads(line)["mc"][0]["rc"]:
            for key in ("atb", "atl", "trd"):
                for price, size in runner_change.get(key, ()):
                    assert is_valid_price(float(price)), (key, price)
                    assert size >= 0
                    checked += 1
            if "ltp" in runner_change:
                assert is_valid_price(runner_change["ltp"])
    assert checked > 20_000


def test_traded_volume_only_grows(
    replay: dict[str, ReplayedMarket], day_lines: list[bytes]
) -> None:
    for market in replay.values():
        matched = market.market_matched
        assert all(a <= b + 1e-9 for a, b in pairwise(matched))
        assert matched[-1] > 10_000
        for series in market.runner_matched.values():
            assert all(a <= b + 1e-9 for a, b in pairwise(series))
    # The per-price cumulative amounts in `trd` never go down either.
    traded: dict[tuple[str, int, float], float] = {}
    for line in day_lines:
        change = orjson.loads(line)["mc"][0]
        for runner_change in change["rc"]:
            for price, size in runner_change.get("trd", ()):
                key = (change["id"], runner_change["id"], price)
                assert size >= traded.get(key, 0.0)
                traded[key] = size


def test_every_market_has_a_steam_move(replay: dict[str, ReplayedMarket]) -> None:
    """A runner's best back shortens by at least 3 ticks within 10 s, with money matched."""
    for market_id, market in replay.items():
        assert any(_has_steam(series) for series in market.pre_off.values()), market_id


def _has_steam(series: list[tuple[int, float, float]]) -> bool:
    start = 0
    for end, (pt, price, matched) in enumerate(series):
        while pt - series[start][0] > 10_000:
            start += 1
        for first_pt, first_price, first_matched in series[start:end]:
            shortened = tick_index(first_price) - tick_index(price)
            if shortened >= 3 and matched > first_matched and pt - first_pt <= 10_000:
                return True
    return False


def test_a_spoof_is_placed_and_pulled_without_matching(day_lines: list[bytes]) -> None:
    """A level jumps to at least ten times its size (and >= £1000), then goes back within 5 s
    while the runner matches nothing."""
    sizes: dict[tuple, float] = {}
    matched: dict[tuple[str, int], float] = defaultdict(float)
    placed: dict[tuple, tuple[int, float, float]] = {}
    spoofs = 0
    for line in day_lines:
        message = orjson.loads(line)
        change = message["mc"][0]
        for runner_change in change["rc"]:
            runner = (change["id"], runner_change["id"])
            if "tv" in runner_change:
                matched[runner] = runner_change["tv"]
            for side in ("atb", "atl"):
                for price, size in runner_change.get(side, ()):
                    key = (*runner, side, price)
                    old = sizes.get(key, 0.0)
                    if key in placed:
                        at, before, tv = placed.pop(key)
                        if size <= before and message["pt"] - at <= 5000 and matched[runner] == tv:
                            spoofs += 1
                    elif size >= 1000 and size >= 10 * max(old, 1.0):
                        placed[key] = (message["pt"], old, matched[runner])
                    sizes[key] = size
    assert spoofs >= 1


def test_bsp_is_near_the_last_pre_off_price(replay: dict[str, ReplayedMarket]) -> None:
    for market in replay.values():
        bsp = {r.selection_id: r.sp.actual_sp for r in market.last_book.runners}
        for selection_id, series in market.pre_off.items():
            if bsp.get(selection_id) is None:
                continue
            last_back = series[-1][1]
            assert abs(math.log(bsp[selection_id] / last_back)) < 0.3, (
                bsp[selection_id],
                last_back,
            )


def test_timing_is_realistic(day_lines: list[bytes], races: list[SimulatedRace]) -> None:
    by_market: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for line in day_lines:
        message = orjson.loads(line)
        by_market[message["mc"][0]["id"]].append((message["pt"], message["mc"][0]))
    for race in races:
        messages = by_market[race.racecard.market_id]
        off = int(race.racecard.off_time.timestamp() * 1000)
        first = messages[0][0]
        assert 30 * 60_000 <= off - first <= 60 * 60_000
        in_play = [
            pt for pt, change in messages if change.get("marketDefinition", {}).get("inPlay")
        ]
        race_ms = in_play[-2] - in_play[0]  # to the suspension at the finish
        assert 55_000 <= race_ms <= 140_000
        gaps = sorted(b[0] - a[0] for a, b in pairwise(messages) if b[0] < off)
        assert gaps[len(gaps) // 10] >= 50 and gaps[len(gaps) // 2] <= 3000
        assert gaps[int(len(gaps) * 0.99)] >= 3000  # a quiet early market has gaps of seconds
        assert 2500 <= len(messages) <= 3500


def test_eight_markets_of_three_thousand_messages_take_under_two_seconds() -> None:
    started = time.process_time()
    lines = sum(1 for _ in simulate_day(2, 8))
    elapsed = time.process_time() - started
    assert 8 * 2700 <= lines <= 8 * 3300
    assert elapsed < 2.0, f"{lines} lines took {elapsed:.2f} s of CPU"


@pytest.mark.parametrize("name", ["day.jsonl", "day.jsonl.gz", "day.jsonl.bz2"])
def test_write_stream_compresses_by_suffix(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    written = write_stream(path, 3, 1, messages_per_market=600)
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(path.suffix, open)
    with opener(path, "rb") as handle:
        content = handle.read()
    expected = list(simulate_day(3, 1, messages_per_market=600))
    assert written == len(expected)
    assert content == b"\n".join(expected) + b"\n"


def test_start_moves_the_whole_day() -> None:
    start = datetime(2024, 3, 9, 12, 30, tzinfo=UTC)
    races = simulate_races(4, 3, start)
    assert min(r.racecard.off_time for r in races) == start + FIRST_OFF_AFTER_START
    assert all(r.market_open >= start for r in races)
    first_pt = orjson.loads(next(simulate_day(4, 3, start, messages_per_market=600)))["pt"]
    assert first_pt >= int(start.timestamp() * 1000)
    default = simulate_races(4, 3)
    assert min(r.racecard.off_time for r in default) == DEFAULT_START + FIRST_OFF_AFTER_START


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"markets": 0}, "races must be at least 1"),
        ({"start": datetime(2024, 1, 1, 12)}, "timezone-aware"),
        ({"messages_per_market": 100}, "messages_per_market"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        simulate_day(1, **kwargs)


def test_racecards_match_the_stream(day_lines: list[bytes], races: list[SimulatedRace]) -> None:
    definitions = {}
    for line in day_lines:
        change = orjson.loads(line)["mc"][0]
        definitions.setdefault(change["id"], change.get("marketDefinition"))
    for race in races:
        card = race.racecard
        definition = definitions[card.market_id]
        assert definition["eventId"] == card.event_id
        assert definition["name"] == card.market_name
        assert definition["venue"] == card.venue
        assert definition["marketTime"] == card.off_time.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        names = {r["id"]: r["name"] for r in definition["runners"]}
        assert names == {runner.selection_id: runner.horse_name for runner in card.runners}
        assert sum(race.true_probabilities.values()) == pytest.approx(1.0)
        assert race.winner in names and race.winner != race.non_runner


def test_racecards_are_complete_and_deterministic() -> None:
    first_off = DEFAULT_START + FIRST_OFF_AFTER_START
    cards = [sampled.racecard for sampled in sample_racecards(9, 12, first_off)]
    assert cards == [sampled.racecard for sampled in sample_racecards(9, 12, first_off)]
    assert len({card.market_id for card in cards}) == 12
    assert [card.off_time for card in cards] == sorted(card.off_time for card in cards)
    for venue in {card.venue for card in cards}:
        numbers = [card.race_number for card in cards if card.venue == venue]
        assert numbers == list(range(1, len(numbers) + 1))
    for card in cards:
        _assert_card_is_sane(card)


def test_racecards_become_valid_racecard_events() -> None:
    """Every sampled card passes the project's racecard validation, withdrawals included."""
    for race in simulate_races(21, 24):
        card = race.racecard
        withdrawn = {race.non_runner} if race.non_runner is not None else set()
        event = parse_event(dump_event(racecard_event(card, withdrawn)))
        assert isinstance(event, Racecard)
        assert event.market_id == card.market_id and event.start_time == card.off_time
        assert [r.selection_id for r in event.runners] == [r.selection_id for r in card.runners]
        statuses = {r.selection_id: r.status for r in event.runners}
        for selection_id in withdrawn:
            assert statuses[selection_id] is RunnerStatus.WITHDRAWN
        assert len(event.declared_runners) == len(card.runners) - len(withdrawn)


def _assert_card_is_sane(card: SimulatedRacecard) -> None:
    assert card.race_type in {"Flat", "Hurdle", "Chase"}
    assert 1000 <= card.distance_m <= 6000 and 1 <= card.race_class <= 7
    assert card.going and card.race_name and card.venue
    numbers = [runner.cloth_number for runner in card.runners]
    assert numbers == list(range(1, len(card.runners) + 1))
    draws = [runner.draw for runner in card.runners]
    if card.race_type == "Flat":
        assert sorted(draws) == numbers  # type: ignore[type-var]
    else:
        assert draws == [None] * len(draws)
    for runner in card.runners:
        assert re.fullmatch(r"\d+-\d+", runner.weight)
        assert re.fullmatch(r"[0-9FPU/-]*", runner.form)
        assert (runner.days_since_last_run is None) == (runner.form == "")
        assert 2 <= runner.age <= 11
        assert runner.jockey and runner.trainer and runner.horse_name


def test_racecard_fields_carry_signal_about_the_winner() -> None:
    """The card must be informative, so a model has something real to learn."""
    top_rated = []
    good_form = []
    poor_form = []
    for seed in range(150):
        for race in simulate_races(seed, 8):
            probabilities = race.true_probabilities
            field_size = len(race.racecard.runners)
            rated = [r for r in race.racecard.runners if r.official_rating is not None]
            if not race.racecard.handicap and len(rated) >= 3:
                best = max(rated, key=lambda r: r.official_rating or 0)
                top_rated.append(probabilities[best.selection_id] * field_size)
            for runner in race.racecard.runners:
                last = runner.form[-1:] if runner.form else ""
                if last == "1":
                    good_form.append(probabilities[runner.selection_id] * field_size)
                elif last in {"6", "7", "8", "9", "0"}:
                    poor_form.append(probabilities[runner.selection_id] * field_size)
    # Probability relative to an even chance (1.0 = no information).
    assert sum(top_rated) / len(top_rated) > 1.5
    assert sum(good_form) / len(good_form) > 1.3 * sum(poor_form) / len(poor_form)
    # Winners come from the true probabilities: favourites win about as often as priced.
    favourites, wins = 0.0, 0
    for seed in range(150):
        for race in simulate_races(seed, 8):
            favourite = max(race.true_probabilities, key=race.true_probabilities.get)  # type: ignore[arg-type]
            favourites += race.true_probabilities[favourite]
            wins += race.winner == favourite
    assert abs(wins - favourites) < 4 * math.sqrt(favourites)
