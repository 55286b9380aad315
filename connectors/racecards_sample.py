"""Sample racecards (UK/IE style) with a hidden ability model, deterministic from a seed.

The simulator needs a card for every market it invents, and the demo and the model need racecards
whose fields carry real signal. So every runner gets a hidden ability built from the same things a
form student reads (official rating, recent form, jockey, trainer, freshness, draw, weight), plus
luck the card cannot show. `true_probabilities` are the Plackett-Luce win chances from that
ability: the market simulator prices around them and draws the winner from them, so a model fitted
on these cards can learn real, bounded structure instead of noise.

Jockey and trainer skill comes from a stable hash of the name, so the same name has the same skill
under every seed and a model can learn it across simulated days.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from operators.racing_events import Racecard, RacecardRunner, RunnerStatus, Surface

_FURLONG_M = 201.168

_VENUES: tuple[tuple[str, str, str, bool], ...] = (
    # (venue, eventName abbreviation, country code, all-weather flat track)
    ("Ascot", "Asct", "GB", False),
    ("Kempton", "Kemp", "GB", True),
    ("Newmarket", "Newm", "GB", False),
    ("Doncaster", "Donc", "GB", False),
    ("York", "York", "GB", False),
    ("Sandown", "Sand", "GB", False),
    ("Haydock", "Hayd", "GB", False),
    ("Cheltenham", "Chelt", "GB", False),
    ("Wolverhampton", "Wolv", "GB", True),
    ("Lingfield", "Ling", "GB", True),
    ("Chepstow", "Chep", "GB", False),
    ("Musselburgh", "Muss", "GB", False),
    ("Hamilton", "Ham", "GB", False),
    ("Newcastle", "Newc", "GB", True),
    ("Leopardstown", "Leop", "IE", False),
    ("Curragh", "Curr", "IE", False),
    ("Fairyhouse", "Fair", "IE", False),
    ("Dundalk", "Dund", "IE", True),
)
_JUMPS_VENUES = frozenset(
    {"Cheltenham", "Sandown", "Haydock", "Chepstow", "Musselburgh", "Leopardstown", "Fairyhouse"}
)
_TIMEZONE = {"GB": "Europe/London", "IE": "Europe/Dublin"}

_TURF_GOING = (
    ("Firm", 1),
    ("Good To Firm", 4),
    ("Good", 6),
    ("Good To Soft", 4),
    ("Soft", 3),
    ("Heavy", 1),
)
_AW_GOING = (("Standard", 8), ("Standard To Slow", 2))
_JUMPS_GOING = (("Good", 3), ("Good To Soft", 4), ("Soft", 4), ("Heavy", 2))

# (race type, Betfair market-name suffix, title words, class range, handicap, furlongs range)
_RACE_KINDS: tuple[tuple[str, str, str, tuple[int, int], bool, tuple[int, int]], ...] = (
    ("Flat", "Hcap", "Handicap", (2, 6), True, (5, 16)),
    ("Flat", "Mdn Stks", "Maiden Stakes", (4, 5), False, (5, 12)),
    ("Flat", "Nov Stks", "Novice Stakes", (4, 5), False, (5, 10)),
    ("Flat", "Class Stks", "Classified Stakes", (5, 6), False, (6, 12)),
    ("Flat", "Listed", "Listed Stakes", (1, 1), False, (6, 14)),
    ("Hurdle", "Hcap Hrd", "Handicap Hurdle", (2, 5), True, (16, 24)),
    ("Hurdle", "Nov Hrd", "Novices' Hurdle", (3, 4), False, (16, 21)),
    ("Chase", "Hcap Chs", "Handicap Chase", (2, 5), True, (16, 24)),
    ("Chase", "Nov Chs", "Novices' Chase", (2, 4), False, (16, 24)),
)
_FLAT_KIND_WEIGHTS = (8, 3, 2, 2, 1)
_JUMPS_KIND_WEIGHTS = (5, 3, 4, 2)

_CLASS_BASE_RATING = {1: 108, 2: 96, 3: 86, 4: 76, 5: 66, 6: 56, 7: 48}

_SPONSORS = (
    "Sky Bet",
    "Betfred",
    "Racing TV",
    "Coral",
    "William Hill",
    "Paddy Power",
    "Unibet",
    "BoyleSports",
    "British Stallion Studs",
    "Irish Stallion Farms",
    "Download The App",
    "Watch Live On",
)

_ADJECTIVES = (
    "Silent", "Golden", "Rapid", "Hidden", "Royal", "Bold", "Midnight", "Crimson", "Lucky",
    "Wild", "Gentle", "Brave", "Northern", "Southern", "Velvet", "Iron", "Silver", "Quiet",
    "Distant", "Roaring", "Dancing", "Secret", "Noble", "Restless", "Shining", "Frosty", "Amber",
    "Scarlet", "Misty", "Thunder", "Highland", "Western", "Eastern", "Ancient", "Swift", "Proud",
    "Stormy", "Sunny", "Merry", "Lonely", "Magic", "Mighty", "Little", "Grand", "Dark", "Bright",
    "Spanish", "Celtic", "Harbour", "Sea",
)  # fmt: skip
_NOUNS = (
    "Harbour", "Legend", "Echo", "Warrior", "Spirit", "Dancer", "Falcon", "River", "Crown",
    "Breeze", "Arrow", "Comet", "Voyager", "Lady", "Prince", "Duke", "Empress", "Rebel", "Ranger",
    "Promise", "Mirage", "Whisper", "Melody", "Horizon", "Lantern", "Meadow", "Summit", "Tempest",
    "Sovereign", "Raider", "Pilgrim", "Charm", "Fortune", "Jewel", "Venture", "Outlaw", "Saint",
    "Minstrel", "Captain", "Dream", "Gambler", "Rocket", "Shadow", "Knight", "Glory", "Storm",
    "Star", "Fox", "Hawk", "Tide",
)  # fmt: skip
_FIRST_INITIALS = "ABCDEHJKLMNOPRSTW"
_SURNAMES = (
    "Hale", "Brennan", "Doyle", "Fallon", "Marsh", "Quinn", "Rowe", "Sheridan", "Turner",
    "Walsh", "Carver", "Dunne", "Hart", "Keane", "Lynch", "Moran", "Nolan", "Price", "Reid",
    "Stokes", "Bishop", "Cole", "Foley", "Grant", "Hughes", "Kerr", "Lowe", "Mercer", "Nash",
    "Pearce", "Ryan", "Shaw", "Towers", "Vale", "Webb", "Young", "Ashby", "Barrow", "Crosby",
    "Devlin",
)  # fmt: skip

# Fixed pools, identical for every seed, so each name keeps its skill across simulated days.
_JOCKEYS = tuple(f"{_FIRST_INITIALS[i % 17]}. {_SURNAMES[(i * 7) % 40]}" for i in range(36))
_TRAINERS = tuple(
    f"{_FIRST_INITIALS[(i * 5) % 17]}. {_SURNAMES[(i * 11 + 3) % 40]}" for i in range(30)
)

_ABILITY_SCALE = 0.85  # Plackett-Luce temperature: ability units per log-odds unit of winning
_RACE_DAY_LUCK = 0.55  # hidden per-runner noise the card cannot show


@dataclass(frozen=True, slots=True)
class SimulatedRunner:
    """One declared runner as printed on the card."""

    selection_id: int
    cloth_number: int
    horse_name: str
    jockey: str
    trainer: str
    draw: int | None  # stall; jump races have none
    weight_lbs: int
    age: int
    official_rating: int | None  # unrated maidens and novices have none
    days_since_last_run: int | None  # None on debut
    form: str  # last runs, oldest first; '-' marks a new season, '/' a year or more off

    @property
    def weight(self) -> str:
        """Weight in the card's stones-pounds notation, e.g. '9-7'."""
        return f"{self.weight_lbs // 14}-{self.weight_lbs % 14}"


@dataclass(frozen=True, slots=True)
class SimulatedRacecard:
    """A race as a punter sees it before the off. `market_name` is Betfair's short name."""

    market_id: str
    event_id: str
    venue: str
    venue_abbreviation: str
    country_code: str
    timezone: str
    off_time: datetime
    race_number: int  # order within the meeting
    race_name: str
    market_name: str
    race_type: str  # Flat, Hurdle or Chase
    handicap: bool
    distance: str  # e.g. '1m2f'
    distance_m: int
    going: str
    race_class: int
    runners: tuple[SimulatedRunner, ...]


@dataclass(frozen=True, slots=True)
class SampledRace:
    """A card plus the hidden truth behind it, aligned with `racecard.runners`."""

    racecard: SimulatedRacecard
    true_probabilities: tuple[float, ...]


def skill(name: str) -> float:
    """Hidden skill in ability units, a stable function of the name (same under every seed)."""
    return (zlib.crc32(name.encode()) / 0xFFFFFFFF - 0.5) * 0.7


def distance_text(furlongs: int) -> str:
    """Furlongs in card notation: 5 → '5f', 10 → '1m2f', 16 → '2m'."""
    miles, rest = divmod(furlongs, 8)
    return (f"{miles}m" if miles else "") + (f"{rest}f" if rest else "")


def _weighted(rng: random.Random, options: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([name for name, _ in options], [w for _, w in options])[0]


def _form_string(rng: random.Random, runs: int, quality: float, jumps: bool) -> str:
    """Recent finishing positions driven by current form `quality` (higher is better)."""
    marks = []
    mean_position = 3.6 * math.exp(-0.55 * quality)
    for _ in range(runs):
        if jumps and rng.random() < 0.06:
            marks.append(rng.choice("FPU"))
            continue
        position = 1 + int(rng.expovariate(1 / mean_position))
        marks.append(str(position) if position < 10 else "0")
    text = ""
    for i, mark in enumerate(marks):
        if i and rng.random() < 0.12:
            text += "/" if rng.random() < 0.25 else "-"
        text += mark
    return text


def _days_effect(days: int | None) -> float:
    if days is None:
        return -0.25
    if days < 8:
        return -0.1
    if days <= 60:
        return 0.12
    if days <= 180:
        return 0.0
    return -0.3


def _softmax(values: list[float]) -> tuple[float, ...]:
    top = max(values)
    weights = [math.exp(v - top) for v in values]
    total = sum(weights)
    return tuple(w / total for w in weights)


def _sample_race(
    rng: random.Random,
    venue: tuple[str, str, str, bool],
    off_time: datetime,
    race_number: int,
    market_id: str,
    event_id: str,
    used_names: set[str],
    used_ids: set[int],
) -> SampledRace:
    name, abbreviation, country, all_weather = venue
    jumps_meeting = name in _JUMPS_VENUES and not all_weather
    if jumps_meeting:
        kind = rng.choices(_RACE_KINDS[5:], _JUMPS_KIND_WEIGHTS)[0]
        going = _weighted(rng, _JUMPS_GOING)
    else:
        kind = rng.choices(_RACE_KINDS[:5], _FLAT_KIND_WEIGHTS)[0]
        going = _weighted(rng, _AW_GOING if all_weather else _TURF_GOING)
    race_type, suffix, title, (class_lo, class_hi), handicap, (f_lo, f_hi) = kind
    race_class = rng.randint(class_lo, class_hi)
    furlongs = rng.randint(f_lo, f_hi)
    jumps = race_type != "Flat"
    field = rng.randint(5, 14) if jumps else rng.randint(6, 16)
    novice_race = not handicap and race_class >= 3

    quality = [rng.gauss(0, 1) for _ in range(field)]
    current = [rng.gauss(0, 0.5) for _ in range(field)]
    base = _CLASS_BASE_RATING[race_class] + (12 if jumps else 0)
    ratings: list[int | None] = []
    run_counts: list[int] = []
    for q in quality:
        runs = rng.randint(0, 3) if novice_race else rng.randint(2, 6)
        run_counts.append(runs)
        unrated = runs < 3 and novice_race and rng.random() < 0.7
        ratings.append(None if unrated else max(20, round(base + 7 * q + rng.gauss(0, 3))))

    # Handicaps weight the rated runners 1 lb per rating point below the top weight.
    top_weight = 166 if jumps else 136
    bottom_weight = 140 if jumps else 112
    known = [r for r in ratings if r is not None]
    top_rating = max(known) if known else base
    weights = []
    for rating in ratings:
        if handicap:
            weights.append(max(bottom_weight, top_weight - (top_rating - (rating or base - 10))))
        else:
            weights.append(rng.choice((top_weight - 10, top_weight - 7, top_weight - 3)))

    draws = list(range(1, field + 1))
    rng.shuffle(draws)
    jockeys = rng.sample(_JOCKEYS, field)
    trainers = [rng.choice(_TRAINERS) for _ in range(field)]

    abilities = []
    provisional = []
    for i in range(field):
        runs = run_counts[i]
        days = None if runs == 0 else min(400, max(4, round(rng.lognormvariate(math.log(25), 0.8))))
        form = _form_string(rng, runs, quality[i] + current[i], jumps)
        horse = _horse_name(rng, used_names)
        selection_id = _selection_id(rng, used_ids)
        if jumps:
            age = rng.choices(range(4, 12), (3, 5, 6, 6, 5, 3, 2, 1))[0]
        else:
            age = rng.choices(range(2, 9), (2, 6, 6, 5, 3, 2, 1))[0]
        draw = None if jumps else draws[i]
        ability = (
            quality[i]
            + current[i]
            + skill(jockeys[i])
            + skill(trainers[i])
            + _days_effect(days)
            + rng.gauss(0, _RACE_DAY_LUCK)
        )
        if handicap:
            ability -= 0.8 * (weights[i] - bottom_weight) / 7
        if draw is not None and furlongs <= 7:
            ability += 0.2 * (0.5 - (draw - 1) / max(1, field - 1))
        abilities.append(ability)
        provisional.append(
            (
                selection_id,
                horse,
                jockeys[i],
                trainers[i],
                draw,
                weights[i],
                age,
                ratings[i],
                days,
                form,
            )
        )

    # Cloth numbers follow the weights, heaviest first, as on a real card.
    order = sorted(range(field), key=lambda i: (-weights[i], provisional[i][1]))
    runners = tuple(
        SimulatedRunner(
            selection_id=provisional[i][0],
            cloth_number=number,
            horse_name=provisional[i][1],
            jockey=provisional[i][2],
            trainer=provisional[i][3],
            draw=provisional[i][4],
            weight_lbs=provisional[i][5],
            age=provisional[i][6],
            official_rating=provisional[i][7],
            days_since_last_run=provisional[i][8],
            form=provisional[i][9],
        )
        for number, i in enumerate(order, start=1)
    )
    probabilities = _softmax([abilities[i] * _ABILITY_SCALE for i in order])
    distance = distance_text(furlongs)
    sponsor = rng.choice(_SPONSORS)
    class_text = "" if race_class == 1 else f" (Class {race_class})"
    racecard = SimulatedRacecard(
        market_id=market_id,
        event_id=event_id,
        venue=name,
        venue_abbreviation=abbreviation,
        country_code=country,
        timezone=_TIMEZONE[country],
        off_time=off_time,
        race_number=race_number,
        race_name=f"{sponsor} {title}{class_text}",
        market_name=f"{distance} {suffix}",
        race_type=race_type,
        handicap=handicap,
        distance=distance,
        distance_m=round(furlongs * _FURLONG_M),
        going=going,
        race_class=race_class,
        runners=runners,
    )
    return SampledRace(racecard, probabilities)


def _horse_name(rng: random.Random, used: set[str]) -> str:
    while True:
        name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
        if name not in used and name.split()[0] != name.split()[1]:
            used.add(name)
            return name


def _selection_id(rng: random.Random, used: set[int]) -> int:
    while True:
        selection_id = rng.randrange(1_000_000, 60_000_000)
        if selection_id not in used:
            used.add(selection_id)
            return selection_id


def sample_racecards(seed: int, races: int, first_off: datetime) -> list[SampledRace]:
    """`races` cards for one day, spread over one to three meetings, ordered by off time.

    Meetings race every 30-35 minutes, staggered so the day's offs interleave like a real
    Saturday; market and event ids are unique within the day.
    """
    if races < 1:
        raise ValueError(f"races must be at least 1, got {races}")
    rng = random.Random(f"velo-racecards:{seed}")
    meetings = 1 if races <= 4 else 2 if races <= 12 else 3
    venues = rng.sample(_VENUES, meetings)
    next_market = rng.randrange(230_000_000, 240_000_000)
    event_ids = [rng.randrange(33_000_000, 34_000_000) + i for i in range(meetings)]
    first_offs = [
        first_off + timedelta(minutes=(12 + rng.randint(0, 5)) * m) for m in range(meetings)
    ]
    gaps = [rng.randint(30, 35) for _ in range(meetings)]
    slots = []
    for race in range(races):
        meeting = race % meetings
        number = race // meetings + 1
        slots.append(
            (first_offs[meeting] + timedelta(minutes=gaps[meeting] * (number - 1)), meeting, number)
        )
    slots.sort()
    used_names: set[str] = set()
    used_ids: set[int] = set()
    sampled = []
    for off, meeting, number in slots:
        next_market += rng.randint(1, 40)
        sampled.append(
            _sample_race(
                rng,
                venues[meeting],
                off,
                number,
                f"1.{next_market}",
                str(event_ids[meeting]),
                used_names,
                used_ids,
            )
        )
    return sampled


def racecard_event(
    card: SimulatedRacecard, withdrawn: Collection[int] = (), source: str = "simulator"
) -> Racecard:
    """The card as the project's versioned `Racecard` event (what the racecards topic carries).

    `withdrawn` lists selection ids already known to be non-runners; they stay on the card with
    status withdrawn, as a real card shows them.
    """
    surface = Surface.ALL_WEATHER if card.going.startswith("Standard") else Surface.TURF
    return Racecard(
        source=source,
        race_id=f"{source}:{card.market_id}",
        market_id=card.market_id,
        meeting_date=card.off_time.date(),
        venue=card.venue,
        race_number=card.race_number,
        start_time=card.off_time,
        race_name=card.race_name,
        distance_m=card.distance_m,
        going=card.going,
        surface=surface,
        race_class=str(card.race_class),
        runners=[
            RacecardRunner(
                runner_id=str(runner.selection_id),
                horse_name=runner.horse_name,
                selection_id=runner.selection_id,
                saddle_cloth=runner.cloth_number,
                draw=runner.draw,
                jockey=runner.jockey,
                trainer=runner.trainer,
                weight_carried_lbs=runner.weight_lbs,
                official_rating=runner.official_rating,
                age=runner.age,
                days_since_last_run=runner.days_since_last_run,
                form=runner.form or None,
                status=RunnerStatus.WITHDRAWN
                if runner.selection_id in withdrawn
                else RunnerStatus.DECLARED,
            )
            for runner in card.runners
        ],
    )
