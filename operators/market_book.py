"""One market's state: definition (status, in-play, version, runners) and runner books.

`apply` takes one `mc` element. `img: true` replaces the market's price state; everything
else is a delta. A market definition, when present, is the full current definition.
"""

from __future__ import annotations

from datetime import datetime
from math import copysign

from operators.runner_book import LadderDelta, RunnerBook

RunnerKey = tuple[int, float]
SETTLED_STATUSES = frozenset({"WINNER", "LOSER", "PLACED", "REMOVED", "HIDDEN"})


def parse_betfair_time(value: str | None) -> datetime | None:
    """Betfair's ISO timestamps ('2021-07-30T05:44:00.000Z') as aware datetimes."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


AppliedChange = tuple[list[RunnerBook], int, bool]
"""What one `mc` element did: (runners touched in first-touch order, invalid entries,
definition received)."""


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
        if definition_changed:
            self._apply_definition(definition)
        touched: list[RunnerBook] = []
        invalid = 0
        runner_changes = change.get("rc")
        if runner_changes:
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
        total = change.get("tv")
        if isinstance(total, (float, int)) and total >= 0:
            self.total_matched = total
        return touched, invalid, definition_changed

    def _add_runner(self, key: RunnerKey) -> RunnerBook:
        runner = self.runners[key] = RunnerBook(*key)
        selection_id, handicap = key
        if type(selection_id) is int and handicap == 0.0 and copysign(1.0, handicap) > 0:
            self._plain_runners[selection_id] = runner
        return runner

    def _apply_definition(self, definition: dict) -> None:
        self.definition = definition
        self.status = definition.get("status", self.status)
        self.in_play = bool(definition.get("inPlay", False))
        self.bet_delay = int(definition.get("betDelay", 0) or 0)
        self.version = int(definition.get("version", self.version) or 0)
        market_time = parse_betfair_time(definition.get("marketTime"))
        self.market_time_ms = int(market_time.timestamp() * 1000) if market_time else None
        for runner_definition in definition.get("runners", ()):
            try:
                key = (runner_definition["id"], float(runner_definition.get("hc", 0.0)))
            except (KeyError, TypeError, ValueError):
                continue
            runner = self.runners.get(key) or self._add_runner(key)
            runner.status = runner_definition.get("status", runner.status)
            runner.bsp = runner_definition.get("bsp", runner.bsp)
            runner.adjustment_factor = runner_definition.get("adjustmentFactor")
            runner.removal_date = runner_definition.get("removalDate")
            runner.sort_priority = runner_definition.get("sortPriority")
            runner.name = runner_definition.get("name", runner.name)

    # -- derived market values -------------------------------------------------------------

    def active_runners(self) -> list[RunnerBook]:
        return [r for r in self.runners.values() if r.status == "ACTIVE"]

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

    @property
    def is_settled(self) -> bool:
        return self.status == "CLOSED" and any(
            r.status in SETTLED_STATUSES and r.status != "REMOVED" for r in self.runners.values()
        )
