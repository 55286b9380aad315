"""Deterministic Betfair Exchange Stream simulator for horse-racing WIN markets.

Why: the demo and most tests must run without the shared recordings, and the pipeline needs
streams with known ground truth (true win probabilities, the winner, where the steam and the spoof
are). `simulate_day` emits JSON lines in the layout of Betfair's historical PRO files
(`{"op":"mcm","clk":..,"pt":..,"mc":[..]}`, full-depth `atb`/`atl` deltas, cumulative `trd`,
`ltp`, runner and market `tv`, `spn`/`spf`), so every parser that reads the real files reads these.

Each market is a small state machine driven by processes on one clock (regular order flow, BSP
projections, a steam move, an optional spoof, an optional late non-runner), then the off, in-play
trading and settlement. The market's belief is a softmax over per-runner log-strengths that mean
revert towards the true probabilities (with a favourite-longshot lean), so prices are informative
but not perfect. Money is kept in integer pence so cumulative volumes never drift.
"""

from __future__ import annotations

import bz2
import gzip
import heapq
import math
import random
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import orjson

from connectors.racecards_sample import SimulatedRacecard, sample_racecards
from operators.price_ladder import PRICES

DEFAULT_START = datetime(2025, 6, 7, 11, 0, tzinfo=UTC)
"""Default day start: a fixed instant, so the same seed always gives the same bytes."""

FIRST_OFF_AFTER_START = timedelta(minutes=60)
"""The first race goes off an hour after `start`; no market opens before `start`."""

_TOP = len(PRICES) - 1
_PRICE_JSON = tuple(int(p) if p.is_integer() else p for p in PRICES)  # 1000 not 1000.0, as Betfair
_LEAN = 0.92  # market strengths are p_true**_LEAN: longshots a little overbet, as on the exchange
_REVERSION_PER_S = 1 / 1200  # market error halves in ~14 minutes
_DIFFUSION_PER_SQRT_S = 0.006
_GAP_RATIO = 12.0  # regular message gaps shrink from the market's open to the off by this factor
_INPLAY_GAP_MEAN_MS = 120.0
_MIN_GAP_MS = 50
_CLASS_LIQUIDITY_PENCE = {1: 320_000, 2: 220_000, 3: 150_000, 4: 110_000, 5: 80_000, 6: 60_000}
_INPLAY_MATCHED_LEVELS = 2  # in-play jumps match the nearest levels; the rest are pulled


@dataclass(frozen=True, slots=True)
class SimulatedRace:
    """One simulated market: its card and the ground truth the stream was generated from."""

    racecard: SimulatedRacecard
    true_probabilities: dict[int, float]  # selection id → win probability, before any removal
    winner: int
    non_runner: int | None
    market_open: datetime  # publish time of the market's first message


def simulate_races(
    seed: int, markets: int = 8, start: datetime | None = None
) -> list[SimulatedRace]:
    """The day's races, without generating any messages (cheap: use it for racecards/truth)."""
    start = _as_utc(start)
    races = []
    for sampled in sample_racecards(seed, markets, start + FIRST_OFF_AFTER_START):
        card = sampled.racecard
        rng = random.Random(f"velo-market:{seed}:{card.market_id}")
        ids = [runner.selection_id for runner in card.runners]
        non_runner = rng.choice(ids) if len(ids) >= 6 and rng.random() < 0.5 else None
        starters = [
            (sid, p)
            for sid, p in zip(ids, sampled.true_probabilities, strict=True)
            if sid != non_runner
        ]
        winner = rng.choices([sid for sid, _ in starters], [p for _, p in starters])[0]
        pre_off_ms = rng.randint(30 * 60_000, 60 * 60_000)
        races.append(
            SimulatedRace(
                racecard=card,
                true_probabilities=dict(zip(ids, sampled.true_probabilities, strict=True)),
                winner=winner,
                non_runner=non_runner,
                market_open=card.off_time - timedelta(milliseconds=pre_off_ms),
            )
        )
    return races


def simulate_day(
    seed: int,
    markets: int = 8,
    start: datetime | None = None,
    *,
    messages_per_market: int = 3000,
) -> Iterator[bytes]:
    """Stream lines (bytes, no newline) of `markets` interleaved markets in publish-time order.

    Same arguments → identical bytes. Arguments are checked before the first line is made.
    `messages_per_market` is a target: about ±5 % at the default, overshot for small targets
    because the in-play phase alone takes 400-800 messages.
    """
    if messages_per_market < 500:
        raise ValueError(f"messages_per_market must be at least 500, got {messages_per_market}")
    races = simulate_races(seed, markets, start)
    meeting_open: dict[str, datetime] = {}
    for race in races:
        event = race.racecard.event_id
        meeting_open[event] = min(
            meeting_open.get(event, race.racecard.off_time), race.racecard.off_time
        )
    streams = [
        _tag(
            _MarketSimulation(
                race, seed, messages_per_market, meeting_open[race.racecard.event_id]
            ).run(),
            index,
        )
        for index, race in enumerate(races)
    ]
    return _lines(streams, random.Random(f"velo-clk:{seed}"))


def _lines(
    streams: list[Iterator[tuple[int, int, dict]]], clk_rng: random.Random
) -> Iterator[bytes]:
    """Merge the markets by publish time (ties: market order) under one increasing `clk`."""
    clk = clk_rng.randrange(7_000_000_000, 8_000_000_000)
    for pt, _, change in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
        clk += clk_rng.randint(1, 40)
        yield orjson.dumps({"op": "mcm", "clk": str(clk), "pt": pt, "mc": [change]})


def write_stream(
    path: str | Path,
    seed: int,
    markets: int = 8,
    start: datetime | None = None,
    *,
    messages_per_market: int = 3000,
) -> int:
    """Write `simulate_day` to `path` (.gz/.bz2 compress by suffix); returns lines written."""
    path = Path(path)
    opener: Callable[..., IO[bytes]]
    if path.suffix == ".gz":
        opener = gzip.open
    elif path.suffix == ".bz2":
        opener = bz2.open
    else:
        opener = open
    lines = 0
    with opener(path, "wb") as out:
        for line in simulate_day(seed, markets, start, messages_per_market=messages_per_market):
            out.write(line)
            out.write(b"\n")
            lines += 1
    return lines


def _tag(stream: Iterator[tuple[int, dict]], index: int) -> Iterator[tuple[int, int, dict]]:
    for pt, change in stream:
        yield pt, index, change


def _as_utc(start: datetime | None) -> datetime:
    if start is None:
        return DEFAULT_START
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware (e.g. datetime(..., tzinfo=UTC))")
    return start.astimezone(UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _money(pence: int) -> int | float:
    """Pence as Betfair prints amounts: 20 not 20.0, 2.48 not 2.4800000001."""
    return pence // 100 if pence % 100 == 0 else pence / 100


def _ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _back_index_for(probability: float) -> int:
    """Best back level for a fair probability: the highest ladder price at or below 1/p."""
    index = bisect_right(PRICES, 1 / max(probability, 1e-9) + 1e-9) - 1
    return max(0, min(index, _TOP - 1))


class _Runner:
    __slots__ = (
        "active",
        "af",
        "back",
        "bsp",
        "depth",
        "lay",
        "locked_until",
        "ltp",
        "moved_at",
        "name",
        "p_true",
        "race_noise",
        "removal_date",
        "sid",
        "traded",
        "tv",
        "z",
        "z_target",
    )

    def __init__(self, sid: int, name: str, p_true: float, z: float, z_target: float, depth: int):
        self.sid = sid
        self.name = name
        self.p_true = p_true
        self.z = z  # market log-strength
        self.z_target = z_target  # where the market's belief is heading (truth plus a small bias)
        self.depth = depth
        self.back: dict[int, int] = {}  # ladder index → pence available to back
        self.lay: dict[int, int] = {}
        self.traded: dict[int, int] = {}  # ladder index → cumulative pence matched
        self.tv = 0
        self.ltp: int | None = None
        self.active = True
        self.locked_until = 0  # a steam or spoof owns the runner's book until then
        self.moved_at = 0
        self.af = 0.0
        self.removal_date: str | None = None
        self.bsp: float | None = None
        self.race_noise = 0.0  # in-play Brownian term


class _MarketSimulation:
    """One market from its first image to settlement, as (publish time ms, market change) pairs."""

    def __init__(self, race: SimulatedRace, seed: int, messages: int, meeting_open: datetime):
        card = race.racecard
        self.race = race
        self.card = card
        self.rng = rng = random.Random(f"velo-ticks:{seed}:{card.market_id}")
        self.meeting_open_ms = _ms(meeting_open)
        self.open_ms = _ms(race.market_open)
        self.off_ms = _ms(card.off_time)
        self.pre_off_ms = self.off_ms - self.open_ms
        race_seconds = card.distance_m / (16.0 if card.race_type == "Flat" else 14.5)
        self.race_ms = int(min(130.0, max(60.0, race_seconds)) * 1000 * rng.uniform(0.95, 1.05))
        inplay_messages = self.race_ms / (_MIN_GAP_MS + _INPLAY_GAP_MEAN_MS)
        pre_off_messages = max(200.0, messages - inplay_messages - 60)
        # Gap mean grows linearly with time to the off: a + b*s; chosen so ∫ds/(a+bs) = count.
        self.gap_at_off = (
            self.pre_off_ms * math.log(_GAP_RATIO) / (pre_off_messages * (_GAP_RATIO - 1))
        )
        self.gap_slope = self.gap_at_off * (_GAP_RATIO - 1) / self.pre_off_ms
        self.liquidity = _CLASS_LIQUIDITY_PENCE.get(card.race_class, 60_000) * rng.uniform(0.6, 1.6)
        self.version = rng.randrange(4_000_000_000, 5_000_000_000)
        self.market_tv = 0
        self.status = "OPEN"
        self.in_play = False
        self.bsp_reconciled = False
        self.cross_matching = False
        self.inplay_start_ms = 0
        self.now = self.open_ms  # the pre-off clock, advanced by the process scheduler
        self.runners: list[_Runner] = []
        for runner in card.runners:
            p_true = race.true_probabilities[runner.selection_id]
            truth = _LEAN * math.log(p_true)
            self.runners.append(
                _Runner(
                    runner.selection_id,
                    runner.horse_name,
                    p_true,
                    z=truth + rng.gauss(0, 0.3),
                    z_target=truth + rng.gauss(0, 0.1),
                    depth=rng.randint(4, 8),
                )
            )
        opening = self._probabilities()
        for runner in self.runners:
            runner.af = round(100 * opening[runner.sid], 2)
        self.by_id = {runner.sid: runner for runner in self.runners}
        self.winner = race.winner
        starters = [r for r in self.runners if r.sid != race.non_runner]
        losers = [r for r in starters if r.sid != race.winner]
        self.fader = rng.choice(losers).sid if losers else None

    # ---- market belief and money -------------------------------------------------------------

    def _active(self) -> list[_Runner]:
        return [r for r in self.runners if r.active]

    def _probabilities(self) -> dict[int, float]:
        active = self._active()
        top = max(r.z for r in active)
        weights = {r.sid: math.exp(r.z - top) for r in active}
        total = sum(weights.values())
        return {sid: w / total for sid, w in weights.items()}

    def _inplay_probabilities(self, now: int) -> dict[int, float]:
        """Race-state belief: pre-off strength plus noise, the winner pulling clear late."""
        phase = min(1.0, (now - self.inplay_start_ms) / self.race_ms)
        scores = {}
        for r in self._active():
            score = r.z + r.race_noise
            if r.sid == self.winner:
                score += 9.0 * phase**2.5
            elif r.sid == self.fader:
                score += 2.5 * math.sin(math.pi * phase)
            scores[r.sid] = score
        top = max(scores.values())
        weights = {sid: math.exp(s - top) for sid, s in scores.items()}
        total = sum(weights.values())
        return {sid: w / total for sid, w in weights.items()}

    def _liquidity(self, probability: float, now: int) -> float:
        """Typical pence per ladder level: more for favourites, more as the off approaches."""
        if self.in_play:
            factor = 0.5
        else:
            elapsed = min(1.0, max(0.0, (now - self.open_ms) / self.pre_off_ms))
            factor = 0.35 + 1.3 * elapsed * elapsed
        return self.liquidity * probability**0.6 * factor

    def _level_size(self, liquidity: float, depth_rank: int) -> int:
        size = liquidity * (0.35 + 0.25 * depth_rank) * self.rng.lognormvariate(0, 0.6)
        return max(100, int(size))

    def _spread(self, back_index: int, now: int) -> int:
        rng = self.rng
        price = PRICES[back_index]
        if self.in_play:
            spread = rng.randint(1, 3)
        elif price < 8:
            spread = 1
        elif price < 25:
            spread = 1 + (rng.random() < 0.3)
        else:
            spread = rng.randint(2, 4)
        if not self.in_play and self.off_ms - now > 20 * 60_000 and rng.random() < 0.25:
            spread += 1
        return min(spread, _TOP - back_index)

    def _record_trade(self, r: _Runner, index: int, pence: int, trades: dict[int, None]) -> None:
        r.traded[index] = r.traded.get(index, 0) + pence
        r.tv += pence
        r.ltp = index
        self.market_tv += pence
        trades[index] = None

    # ---- building market changes -----------------------------------------------------------

    def _change(self, rc: list[dict] | None = None, definition: dict | None = None) -> dict:
        change: dict = {"id": self.card.market_id}
        if definition is not None:
            change["marketDefinition"] = definition
        change["rc"] = rc or []
        change["con"] = True
        change["img"] = False
        change["tv"] = _money(self.market_tv)
        return change

    @staticmethod
    def _emit(r: _Runner, atb: list, atl: list, trades: dict[int, None], rc: list[dict]) -> None:
        if atb:
            rc.append({"atb": atb, "id": r.sid})
        if atl:
            rc.append({"atl": atl, "id": r.sid})
        if trades and r.ltp is not None:
            rc.append(
                {
                    "trd": [[_PRICE_JSON[i], _money(r.traded[i])] for i in trades],
                    "ltp": PRICES[r.ltp],
                    "tv": _money(r.tv),
                    "id": r.sid,
                }
            )

    def _reshape(
        self, r: _Runner, back_index: int, spread: int, now: int, atb: list, atl: list
    ) -> None:
        """Make the book exactly `depth` levels each side of a best back/lay pair, as deltas."""
        lay_index = back_index + spread
        back_floor = max(0, back_index - r.depth + 1)
        lay_ceiling = min(_TOP, lay_index + r.depth - 1)
        liquidity = self._liquidity(self._probability_of(r, now), now)
        for index in [i for i in r.back if i > back_index or i < back_floor]:
            del r.back[index]
            atb.append([_PRICE_JSON[index], 0])
        for index in [i for i in r.lay if i < lay_index or i > lay_ceiling]:
            del r.lay[index]
            atl.append([_PRICE_JSON[index], 0])
        for index in range(back_index, back_floor - 1, -1):
            if index not in r.back:
                r.back[index] = size = self._level_size(liquidity, back_index - index)
                atb.append([_PRICE_JSON[index], _money(size)])
        for index in range(lay_index, lay_ceiling + 1):
            if index not in r.lay:
                r.lay[index] = size = self._level_size(liquidity, index - lay_index)
                atl.append([_PRICE_JSON[index], _money(size)])

    def _probability_of(self, r: _Runner, now: int) -> float:
        beliefs = self._inplay_probabilities(now) if self.in_play else self._probabilities()
        return beliefs[r.sid]

    def _current_back(self, r: _Runner, fallback: int) -> int:
        if r.back:
            return max(r.back)
        if r.lay:
            return max(0, min(r.lay) - 1)
        return fallback

    def _move_to(self, r: _Runner, new_back: int, now: int, rc: list[dict]) -> None:
        """Walk the price to `new_back`, matching the levels the move eats, then re-quote.

        Pre-off every crossed level is matched; in-play only the nearest ones are, the rest of
        the book is pulled as the price jumps.
        """
        current = self._current_back(r, new_back)
        atb: list = []
        atl: list = []
        trades: dict[int, None] = {}
        if new_back < current:  # shortening: backers take the back side down
            eaten = sorted((i for i in r.back if i > new_back), reverse=True)
            book, delta = r.back, atb
        else:  # drifting (or level): layers take the lay side up
            eaten = sorted(i for i in r.lay if i <= new_back)
            book, delta = r.lay, atl
        if self.in_play:
            eaten = eaten[:_INPLAY_MATCHED_LEVELS]
        for index in eaten:
            self._record_trade(r, index, book.pop(index), trades)
            delta.append([_PRICE_JSON[index], 0])
        self._reshape(r, new_back, self._spread(new_back, now), now, atb, atl)
        self._emit(r, atb, atl, trades, rc)

    def _clear_books(self) -> list[dict]:
        """Every unmatched offer lapses (removal, the off, the finish)."""
        rc: list[dict] = []
        for r in self.runners:
            atb = [[_PRICE_JSON[i], 0] for i in r.back]
            atl = [[_PRICE_JSON[i], 0] for i in r.lay]
            r.back.clear()
            r.lay.clear()
            self._emit(r, atb, atl, {}, rc)
        return rc

    def _definition(self, *, results: bool = False, settled_ms: int | None = None) -> dict:
        self.version += self.rng.randint(1, 400)
        ordered = self.runners
        if any(not r.active for r in self.runners):
            removed = [r for r in self.runners if not r.active]
            active = [r for r in self.runners if r.active]
            ordered = removed + active if results else active + removed
        runners = []
        for priority, r in enumerate(ordered, start=1):
            entry: dict = {"adjustmentFactor": r.af}
            if not r.active:
                entry["status"] = "REMOVED"
            elif results:
                entry["status"] = "WINNER" if r.sid == self.winner else "LOSER"
            else:
                entry["status"] = "ACTIVE"
            entry["sortPriority"] = priority
            if r.removal_date is not None:
                entry["removalDate"] = r.removal_date
            if r.bsp is not None:
                entry["bsp"] = r.bsp
            entry["id"] = r.sid
            entry["name"] = r.name
            runners.append(entry)
        card = self.card
        definition: dict = {
            "bspMarket": True,
            "turnInPlayEnabled": True,
            "persistenceEnabled": True,
            "marketBaseRate": 5.0,
            "eventId": card.event_id,
            "eventTypeId": "7",
            "numberOfWinners": 1,
            "bettingType": "ODDS",
            "marketType": "WIN",
            "marketTime": _iso(self.off_ms),
            "suspendTime": _iso(self.off_ms),
            "bspReconciled": self.bsp_reconciled,
            "complete": True,
            "inPlay": self.in_play,
            "crossMatching": self.cross_matching and self.status != "CLOSED",
            "runnersVoidable": False,
            "numberOfActiveRunners": 0 if results else sum(r.active for r in self.runners),
            "betDelay": 1 if self.in_play else 0,
            "status": self.status,
        }
        if settled_ms is not None:
            definition["settledTime"] = _iso(settled_ms // 1000 * 1000)
        off = card.off_time
        definition.update(
            {
                "runners": runners,
                "regulators": ["MR_INT"],
                "venue": card.venue,
                "countryCode": card.country_code,
                "discountAllowed": True,
                "timezone": card.timezone,
                "openDate": _iso(self.meeting_open_ms),
                "version": self.version,
                "name": card.market_name,
                "eventName": f"{card.venue_abbreviation} {_ordinal(off.day)} {off:%b}",
                "raceType": card.race_type,
                "priceLadderDefinition": {"type": "CLASSIC"},
            }
        )
        return definition

    # ---- the market's life -------------------------------------------------------------------

    def run(self) -> Iterator[tuple[int, dict]]:
        yield self.open_ms, self._image()
        yield from self._pre_off()
        yield from self._off_and_race()

    def _image(self) -> dict:
        """First message: full definition, full ladders, traded history from before the capture."""
        rng = self.rng
        beliefs = self._probabilities()
        rc: list[dict] = []
        for r in self.runners:
            back = _back_index_for(beliefs[r.sid])
            liquidity = self._liquidity(beliefs[r.sid], self.open_ms)
            trades: dict[int, None] = {}
            for index in sorted({max(0, min(_TOP, back + rng.randint(-3, 3))) for _ in range(6)}):
                self._record_trade(
                    r, index, max(100, int(liquidity * rng.uniform(0.2, 2.0))), trades
                )
            r.ltp = min(trades, key=lambda index: abs(index - back))
            atb: list = []
            atl: list = []
            self._reshape(r, back, self._spread(back, self.open_ms), self.open_ms, atb, atl)
            self._emit(r, atb, atl, trades, rc)
            rc.append({"spn": round(1 / beliefs[r.sid], 2), "spf": "NaN", "id": r.sid})
            r.moved_at = self.open_ms
        return self._change(rc, self._definition())

    def _pre_off(self) -> Iterator[tuple[int, dict]]:
        """Run the pre-off processes on one clock until the off."""
        rng = self.rng
        start = self.open_ms
        processes: list[tuple[int, int, Iterator[tuple[dict | None, int | None]]]] = []

        def schedule(at: int, process: Iterator[tuple[dict | None, int | None]]) -> None:
            processes.append((at, len(processes), process))

        schedule(start + self._gap(start), self._regular_flow())
        schedule(start + rng.randint(20_000, 60_000), self._bsp_projections())
        busy: list[tuple[int, int]] = []
        if self.race.non_runner is not None:
            at = rng.randint(start + 3 * 60_000, self.off_ms - 20 * 60_000)
            schedule(at, self._non_runner(self.by_id[self.race.non_runner]))
            busy.append((at - 15_000, at + 45_000))
        candidates = [r for r in self.runners if r.sid != self.race.non_runner]
        steamer = self._pick_steamer(candidates)
        schedule(rng.randint(self.off_ms - 15 * 60_000, self.off_ms - 60_000), self._steam(steamer))
        if rng.random() < 0.6:
            favourites = sorted(
                (r for r in candidates if r is not steamer), key=lambda r: -r.p_true
            )[:5]
            while True:
                at = rng.randint(start + 2 * 60_000, self.off_ms - 60_000)
                if not any(lo <= at <= hi for lo, hi in busy):
                    break
            schedule(at, self._spoof(rng.choice(favourites)))

        heapq.heapify(processes)
        while processes:
            now, order, process = heapq.heappop(processes)
            self.now = now
            change, wake = next(process)
            if change is not None:
                yield now, change
            if wake is not None and wake < self.off_ms:
                heapq.heappush(processes, (wake, order, process))

    def _gap(self, now: int) -> int:
        mean = self.gap_at_off + self.gap_slope * max(0, self.off_ms - now) - _MIN_GAP_MS
        return _MIN_GAP_MS + int(self.rng.expovariate(1 / max(1.0, mean)))

    def _pick_steamer(self, candidates: list[_Runner]) -> _Runner:
        """Usually a runner the market underrates (informed money), priced between 3 and 40."""
        beliefs = self._probabilities()
        priced = [r for r in candidates if 1 / 40 <= beliefs[r.sid] <= 1 / 3] or candidates
        underrated = [r for r in priced if r.p_true > beliefs[r.sid]]
        pool = underrated if underrated and self.rng.random() < 0.7 else priced
        return self.rng.choice(pool)

    def _regular_flow(self) -> Iterator[tuple[dict | None, int | None]]:
        rng = self.rng
        while True:
            now = self.now
            change = None
            if self.status == "OPEN":
                rc: list[dict] = []
                for _ in range(1 if rng.random() < 0.8 else 2):
                    self._order_flow_event(now, rc)
                if rc:
                    change = self._change(rc)
            yield change, now + self._gap(now)

    def _pick_runner(self, now: int, beliefs: dict[int, float]) -> _Runner | None:
        free = [r for r in self.runners if r.active and r.locked_until <= now]
        if not free:
            return None
        return self.rng.choices(free, [beliefs[r.sid] ** 0.5 + 0.02 for r in free])[0]

    def _order_flow_event(self, now: int, rc: list[dict]) -> None:
        """One piece of ordinary activity: a quote change, a match, or a price move."""
        beliefs = self._inplay_probabilities(now) if self.in_play else self._probabilities()
        r = self._pick_runner(now, beliefs)
        if r is None:
            return
        roll = self.rng.random()
        if not r.back and not r.lay:
            self._move_to(r, _back_index_for(beliefs[r.sid]), now, rc)
        elif roll < 0.5:
            self._quote(r, beliefs[r.sid], now, rc)
        elif roll < 0.75:
            self._trade(r, beliefs[r.sid], now, rc)
        else:
            self._drift(r, now, rc)

    def _quote(self, r: _Runner, probability: float, now: int, rc: list[dict]) -> None:
        rng = self.rng
        is_back = rng.random() < 0.5
        book = r.back if is_back else r.lay
        if not book:
            is_back = not is_back
            book = r.back if is_back else r.lay
        levels = sorted(book, reverse=is_back)
        other = r.lay if is_back else r.back
        roll = rng.random()
        delta: list = []
        if roll < 0.12 and len(levels) > 2:
            index = levels[rng.randint(1, len(levels) - 1)]
            del book[index]
            delta.append([_PRICE_JSON[index], 0])
        elif roll < 0.24:
            # A new level: inside the spread if there is room, else behind the deepest.
            best = levels[0]
            inside = best + 1 if is_back else best - 1
            opposite = (min(other) if is_back else max(other)) if other else None
            if opposite is not None and (inside < opposite if is_back else inside > opposite):
                index = inside
            else:
                index = levels[-1] - 1 if is_back else levels[-1] + 1
            if 0 <= index <= _TOP and index not in book:
                book[index] = size = self._level_size(self._liquidity(probability, now), 1)
                delta.append([_PRICE_JSON[index], _money(size)])
        else:
            rank = min(int(rng.expovariate(0.7)), len(levels) - 1)
            index = levels[rank]
            book[index] = size = max(50, int(book[index] * rng.lognormvariate(0, 0.5)))
            delta.append([_PRICE_JSON[index], _money(size)])
        if delta:
            self._emit(r, delta if is_back else [], [] if is_back else delta, {}, rc)

    def _trade(self, r: _Runner, probability: float, now: int, rc: list[dict]) -> None:
        rng = self.rng
        is_back = (rng.random() < 0.5 and bool(r.back)) or not r.lay
        book = r.back if is_back else r.lay
        index = max(book) if is_back else min(book)
        wanted = max(200, int(self._liquidity(probability, now) * 0.25 * rng.expovariate(1)))
        matched = min(book[index], wanted)
        left = book[index] - matched
        if left < 50:
            matched = book.pop(index)
            left = 0
        else:
            book[index] = left
        trades: dict[int, None] = {}
        self._record_trade(r, index, matched, trades)
        delta = [[_PRICE_JSON[index], _money(left)]]
        self._emit(r, delta if is_back else [], [] if is_back else delta, trades, rc)

    def _drift(self, r: _Runner, now: int, rc: list[dict]) -> None:
        """Mean-reverting belief update; the price follows by at most three ticks per message."""
        rng = self.rng
        if self.in_play:
            phase_gap = max(0.0, (now - r.moved_at) / self.race_ms)
            r.race_noise += rng.gauss(0, 1.5 * math.sqrt(phase_gap))
            limit = 10
        else:
            seconds = max(0.0, (now - r.moved_at) / 1000)
            pull = min(1.0, _REVERSION_PER_S * seconds)
            noise = rng.gauss(0, _DIFFUSION_PER_SQRT_S * math.sqrt(seconds))
            r.z += pull * (r.z_target - r.z) + noise
            limit = 3
        r.moved_at = now
        target = _back_index_for(self._probability_of(r, now))
        current = self._current_back(r, target)
        step = max(-limit, min(limit, target - current))
        self._move_to(r, current + step, now, rc)

    def _bsp_projections(self) -> Iterator[tuple[dict | None, int | None]]:
        rng = self.rng
        while True:
            now = self.now
            change = None
            if self.status == "OPEN":
                beliefs = self._probabilities()
                mature = now - self.open_ms > self.pre_off_ms / 2
                rc = []
                for r in self._active():
                    fair = 1 / beliefs[r.sid]
                    near = round(min(1000.0, max(1.01, fair * rng.lognormvariate(0, 0.04))), 2)
                    far = round(min(1000.0, max(1.01, fair * rng.lognormvariate(0, 0.12))), 2)
                    rc.append({"spn": near, "spf": far if mature else "NaN", "id": r.sid})
                change = self._change(rc)
            yield change, now + rng.randint(40_000, 90_000)

    def _steam(self, r: _Runner) -> Iterator[tuple[dict | None, int | None]]:
        """Informed money: the runner shortens 4-7 ticks inside ten seconds, matching as it goes."""
        rng = self.rng
        ticks = rng.randint(4, 7)
        done = 0
        r.locked_until = self.off_ms
        while done < ticks and self.status == "OPEN":
            now = self.now
            step = 2 if ticks - done >= 2 and rng.random() < 0.25 else 1
            current = self._current_back(r, _back_index_for(self._probabilities()[r.sid]))
            rc: list[dict] = []
            self._move_to(r, max(0, current - step), now, rc)
            done += step
            yield self._change(rc), now + rng.randint(300, 1300)
        # The market now believes the new price.
        price = PRICES[self._current_back(r, 0)]
        others = sum(math.exp(o.z) for o in self._active() if o is not r)
        probability = min(0.95, 1 / price)
        r.z = math.log(probability * others / (1 - probability))
        r.moved_at = self.now
        r.locked_until = 0
        yield None, None

    def _spoof(self, r: _Runner) -> Iterator[tuple[dict | None, int | None]]:
        """A big order at the top of the book, pulled within seconds before anything matches it."""
        rng = self.rng
        is_back = rng.random() < 0.5
        book = r.back if is_back else r.lay
        if not book or self.status != "OPEN":
            yield None, None
            return
        r.locked_until = self.off_ms
        best = max(book) if is_back else min(book)
        behind = best - 1 if is_back else best + 1
        index = behind if rng.random() < 0.4 and 0 <= behind <= _TOP else best
        previous = book.get(index)
        liquidity = self._liquidity(self._probabilities()[r.sid], self.now)
        book[index] = max(150_000, int(liquidity * rng.uniform(15, 35))) + (previous or 0)
        delta = [[_PRICE_JSON[index], _money(book[index])]]
        rc: list[dict] = []
        self._emit(r, delta if is_back else [], [] if is_back else delta, {}, rc)
        yield self._change(rc), self.now + rng.randint(1200, 4000)
        if previous is None:
            del book[index]
        else:
            book[index] = previous
        delta = [[_PRICE_JSON[index], _money(previous or 0)]]
        rc = []
        self._emit(r, delta if is_back else [], [] if is_back else delta, {}, rc)
        r.locked_until = 0
        yield self._change(rc), None

    def _non_runner(self, removed: _Runner) -> Iterator[tuple[dict | None, int | None]]:
        """Late withdrawal: suspend, lapse every offer, mark REMOVED, reopen, books re-form."""
        rng = self.rng
        now = self.now
        self.status = "SUSPENDED"
        removed.removal_date = _iso(now // 1000 * 1000)
        yield self._change(definition=self._definition()), now + rng.randint(100, 400)
        yield self._change(self._clear_books()), self.now + rng.randint(200, 600)
        removed.active = False
        reduction = 1 - removed.af / 100
        for r in self._active():
            r.af = round(r.af / reduction, 2)
        yield self._change(definition=self._definition()), self.now + rng.randint(200, 600)
        self.status = "OPEN"
        self.cross_matching = True
        yield self._change(definition=self._definition()), self.now + rng.randint(100, 300)
        active = self._active()
        for first in range(0, len(active), 3):
            now = self.now
            beliefs = self._probabilities()
            rc: list[dict] = []
            for r in active[first : first + 3]:
                self._move_to(r, _back_index_for(beliefs[r.sid]), now, rc)
                r.moved_at = now
            last = first + 3 >= len(active)
            yield self._change(rc), None if last else now + rng.randint(100, 300)

    def _off_and_race(self) -> Iterator[tuple[int, dict]]:
        rng = self.rng
        now = self.off_ms
        self.status = "SUSPENDED"
        self.cross_matching = True
        beliefs = self._probabilities()
        for r in self._active():
            fair = 1 / beliefs[r.sid]
            r.bsp = round(min(1000.0, max(1.01, fair * rng.lognormvariate(0, 0.02))), 2)
        yield now, self._change(definition=self._definition())
        now += rng.randint(250, 600)
        self.bsp_reconciled = True
        yield now, self._change(definition=self._definition())
        now += rng.randint(150, 400)
        self.status = "OPEN"
        self.in_play = True
        self.inplay_start_ms = now
        yield now, self._change(definition=self._definition())
        now += rng.randint(0, 100)
        yield now, self._change(self._clear_books())
        for r in self.runners:
            r.moved_at = now
            r.locked_until = 0

        finish = self.inplay_start_ms + self.race_ms
        now += _MIN_GAP_MS + int(rng.expovariate(1 / _INPLAY_GAP_MEAN_MS))
        while now < finish:
            rc: list[dict] = []
            for _ in range(rng.choice((1, 1, 2, 3))):
                self._order_flow_event(now, rc)
            if rc:
                yield now, self._change(rc)
            now += _MIN_GAP_MS + int(rng.expovariate(1 / _INPLAY_GAP_MEAN_MS))

        self.status = "SUSPENDED"
        yield now, self._change(definition=self._definition())
        now += rng.randint(300, 800)
        yield now, self._change(self._clear_books())
        now += rng.randint(20_000, 60_000)
        self.status = "CLOSED"
        yield now, self._change(definition=self._definition(results=True, settled_ms=now))
