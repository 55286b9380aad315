"""One market's state: definition (status, in-play, version, runners) and runner books.

`apply` takes one `mc` element. `img: true` replaces the market's price state; everything
else is a delta. A market definition, when present, is the full current definition.
"""

from __future__ import annotations

from datetime import datetime
from math import copysign

from operators.runner_book import LadderDelta, RunnerBook

MARKET_CLOSED = "CLOSED"
"""Betfair's final market status: nothing more is sent for the market."""

RunnerKey = tuple[int, float]


def parse_betfair_time(value: object) -> datetime | None:
    """Betfair's ISO timestamps ('2021-07-30T05:44:00.000Z') as aware datetimes; None for
    anything else (absent, not a string, not ISO)."""
    if not value or type(value) is not str:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def betfair_time_ms(value: object) -> int | None:
    """A Betfair timestamp as ms since the epoch; None when `parse_betfair_time` gives none or
    `timestamp()` refuses it (a naive time, read as local time, at an end of the calendar)."""
    parsed = parse_betfair_time(value)
    if parsed is None:
        return None
    try:
        return int(parsed.timestamp() * 1000)
    except (OverflowError, OSError, ValueError):
        return None


def _definition_int(value: object) -> int | None:
    """`int(value or 0)` (`betDelay`, `version`); None where `int` refuses the value."""
    try:
        return int(value or 0)
    except (TypeError, ValueError, OverflowError):
        return None


AppliedChange = tuple[list[RunnerBook], int, bool, bool]
"""What one `mc` element did: (runners touched in first-touch order, invalid entries,
definition received, definition valid)."""


class MarketBook:
    """Mutable state of one market."""

    def __init__(self, market_id: str) -> None:
        self.market_id = market_id
        self.definition: dict = {}
        self.status = "OPEN"
        self.in_play = False
        self.bet_delay = 0
        self.version = 0
        self.market_time_ms: int | None = None
        self.total_matched = 0.0
        self.runners: dict[RunnerKey, RunnerBook] = {}
        self._plain_runners: dict[int, RunnerBook] = {}
        """Runners keyed `(int id, 0.0)`, by id alone: most `rc` elements carry no `hc`."""
        self.publish_time_ms = 0
        self.messages = 0

    def apply(
        self, change: dict, publish_time_ms: int, deltas: list[LadderDelta] | None
    ) -> AppliedChange:
        """Apply one `mc` element; each touched runner's `moved_*` say what it did there."""
        self.messages += 1
        message = self.messages
        if publish_time_ms > self.publish_time_ms:
            self.publish_time_ms = publish_time_ms
        if change.get("img"):
            for runner in self.runners.values():
                runner.clear_prices()
            self.total_matched = 0.0
        definition = change.get("marketDefinition")
        definition_changed = isinstance(definition, dict)
        definition_valid = self._apply_definition(definition) if definition_changed else True
        touched: list[RunnerBook] = []
        invalid = 0
        runner_changes = change.get("rc")
        if type(runner_changes) is list:
            plain_runners = self._plain_runners
            for rc in runner_changes:
                try:
                    selection_id = rc["id"]
                    runner = (
                        plain_runners.get(selection_id)
                        if type(selection_id) is int and "hc" not in rc
                        else None
                    )
                    if runner is not None:
                        key = runner.key
                    else:
                        key = (selection_id, float(rc.get("hc", 0.0)))
                        runner = self.runners.get(key) or self._add_runner(key)
                except (KeyError, TypeError, ValueError):
                    invalid += 1
                    continue
                if runner.touched_in != message:
                    runner.touched_in = message
                    runner.tick_key = key
                    runner.moved_traded = 0.0
                    runner.moved_back_added = runner.moved_back_removed = 0.0
                    runner.moved_lay_added = runner.moved_lay_removed = 0.0
                    touched.append(runner)
                invalid += runner.apply(rc, deltas)
        elif runner_changes is not None:
            invalid += 1  # a number, string or object: no runner change can be read from it
        total = change.get("tv")
        if isinstance(total, (float, int)) and total >= 0:
            self.total_matched = total
        return touched, invalid, definition_changed, definition_valid

    def _add_runner(self, key: RunnerKey) -> RunnerBook:
        runner = self.runners[key] = RunnerBook(*key)
        selection_id, handicap = key
        if type(selection_id) is int and handicap == 0.0 and copysign(1.0, handicap) > 0:
            self._plain_runners[selection_id] = runner
        return runner

    def _apply_definition(self, definition: dict) -> bool:
        """Take a market definition; False when part of it is invalid.

        Invalid parts are skipped and the rest applied: a `betDelay`/`version` that `int`
        refuses keeps the book's value, a `marketTime` that is not a Betfair time (or a
        runner's `removalDate` that is not) reads as none, `runners` that is not a list and
        runner entries without a usable `id`/`hc` are left out. Definitions are rare, so
        this may cost a little more than the per-tick code.
        """
        valid = True
        self.definition = definition
        self.status = definition.get("status", self.status)
        self.in_play = bool(definition.get("inPlay", False))
        bet_delay = _definition_int(definition.get("betDelay", 0))
        if bet_delay is None:
            valid = False
        else:
            self.bet_delay = bet_delay
        if "version" in definition:
            version = _definition_int(definition["version"])
            if version is None:
                valid = False
            else:
                self.version = version
        market_time = definition.get("marketTime")
        self.market_time_ms = betfair_time_ms(market_time) if market_time else None
        if market_time and self.market_time_ms is None:
            valid = False
        runner_definitions = definition.get("runners", [])
        if type(runner_definitions) is not list:
            valid = False
            runner_definitions = []
        for runner_definition in runner_definitions:
            try:
                key = (runner_definition["id"], float(runner_definition.get("hc", 0.0)))
                runner = self.runners.get(key) or self._add_runner(key)
            except (KeyError, TypeError, ValueError):
                valid = False
                continue
            runner.status = runner_definition.get("status", runner.status)
            runner.bsp = runner_definition.get("bsp", runner.bsp)
            runner.adjustment_factor = runner_definition.get("adjustmentFactor")
            removal_date = runner.removal_date = runner_definition.get("removalDate")
            if removal_date and betfair_time_ms(removal_date) is None:
                valid = False
            runner.sort_priority = runner_definition.get("sortPriority")
            runner.name = runner_definition.get("name", runner.name)
        return valid

    # -- derived market values -------------------------------------------------------------

    def overrounds(self) -> tuple[float | None, float | None, int]:
        """(back book %, lay book %, active runners): sums of 1/best price over active runners."""
        back = lay = 0.0
        have_back = have_lay = False
        active = 0
        for runner in self.runners.values():
            if runner.status != "ACTIVE":
                continue
            active += 1
            if runner.best_back:
                back += 1.0 / runner.best_back
                have_back = True
            if runner.best_lay:
                lay += 1.0 / runner.best_lay
                have_lay = True
        return (back * 100 if have_back else None, lay * 100 if have_lay else None, active)

    def seconds_to_off(self, publish_time_ms: int) -> float | None:
        if self.market_time_ms is None:
            return None
        return (self.market_time_ms - publish_time_ms) / 1000.0
