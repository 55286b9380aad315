"""The compiled core (`velo_native`) against the Python reference, record by record.

`test_operator_golden.py` pins both implementations to the same digests; this module says
*where* they differ when they do: every record kind is compared in emission order by `repr`
(so `100` vs `100.0`, `-0.0` vs `0.0` and `True` vs `1` count), and the first difference is
reported with both records. It replays the golden streams with processors pickled and
deep-copied mid-stream, then a catalogue of bad input (garbage bytes, invalid UTF-8, huge
numbers, NaN-like tokens, odd `mc`/`rc`/ladder shapes, broken definitions, publish times
at and beyond the accepted range) and a seeded fuzz of corrupted simulated messages. Neither
implementation may raise on any of it: bad input becomes the same dead letters in both. The
module skips when `velo_native` is not installed.
"""

from __future__ import annotations

import copy
import math
import pickle
import random
import struct
from collections.abc import Iterable
from pathlib import Path

import orjson
import pytest

from connectors.simulator import simulate_day
from operators import price_ladder
from operators.market_processor import UNSERIALISABLE_CHANGE, SinkBatch, ms_to_datetime
from operators.native_core import NATIVE, PYTHON, Operators
from operators.stream_messages import MAX_PUBLISH_TIME_MS, MIN_PUBLISH_TIME_MS
from tests.test_operator_golden import (
    HORSE_RACING_FILES,
    MUTATED_DAY,
    RECORD_KINDS,
    SIMULATED_DAY,
    replay,
    stream_lines,
)

velo_native = pytest.importorskip(
    "velo_native", reason="velo_native is not installed (`make venv` builds it where cargo exists)"
)
assert NATIVE is not None

MARKET = "1.100"
T0 = 1_700_000_000_000


def first_difference(python: SinkBatch, native: SinkBatch) -> str | None:
    """Where two outputs first differ, told with both records; None when identical."""
    for kind in RECORD_KINDS:
        expected, actual = getattr(python, kind), getattr(native, kind)
        for index, (want, got) in enumerate(zip(expected, actual, strict=False)):
            if repr(want) != repr(got):
                return f"{kind}[{index}]:\n  python: {want!r}\n  native: {got!r}"
        if len(expected) != len(actual):
            return f"{kind}: python has {len(expected)} records, native {len(actual)}"
    counts = [(batch.lines, batch.messages) for batch in (python, native)]
    if counts[0] != counts[1]:
        return f"(lines, messages): python {counts[0]}, native {counts[1]}"
    return None


# -- the golden streams ------------------------------------------------------------------------


@pytest.mark.data
@pytest.mark.parametrize("name", [*HORSE_RACING_FILES, SIMULATED_DAY, MUTATED_DAY])
def test_native_records_equal_python_records(betfair_dir: Path, name: str) -> None:
    lines = list(stream_lines(name, betfair_dir))
    python = replay(lines, name, PYTHON)
    native = replay(lines, name, NATIVE)
    assert first_difference(python, native) is None


def test_simulated_day_without_shared_data() -> None:
    lines = list(enumerate(simulate_day(seed=3, markets=2, messages_per_market=500), start=1))
    assert first_difference(replay(lines, "sim", PYTHON), replay(lines, "sim", NATIVE)) is None


# -- routing -------------------------------------------------------------------------------------


def routed_view(operators: Operators, lines: list) -> tuple[str, str, int]:
    """`route_lines` output as text, with native changes shown as `MarketChange` records."""
    routed = operators.route_lines(lines)
    markets = {
        market_id: changes if isinstance(changes, list) else changes.as_market_changes()
        for market_id, changes in routed.by_market.items()
    }
    return repr(markets), repr(routed.bad), routed.lines


@pytest.mark.data
def test_routing_and_pickled_changes_equal_python(betfair_dir: Path) -> None:
    lines = [
        (name, position, raw)
        for name in (MUTATED_DAY, "1.164917629.bz2")
        for position, raw in stream_lines(name, betfair_dir)
    ]
    for start in range(0, len(lines), 300):
        batch = lines[start : start + 300]
        assert routed_view(NATIVE, batch) == routed_view(PYTHON, batch)
    routed = NATIVE.route_lines(lines)
    for changes in routed.by_market.values():
        restored = pickle.loads(pickle.dumps(changes))
        assert restored.market_id == changes.market_id and len(restored) == len(changes)
        assert repr(restored.as_market_changes()) == repr(changes.as_market_changes())


# -- bad input -----------------------------------------------------------------------------------


def message(*changes: dict, pt: int = T0 + 100, **header: object) -> bytes:
    return orjson.dumps({"op": "mcm", "clk": "c", "pt": pt, "mc": list(changes), **header})


def definition(**overrides: object) -> dict:
    return {
        "status": "OPEN",
        "inPlay": False,
        "version": 3,
        "betDelay": 0,
        "marketTime": "2023-11-14T22:23:20.000Z",
        "bspMarket": True,
        "runners": [
            {"id": 1, "status": "ACTIVE", "sortPriority": 1, "name": "One"},
            {"id": 2, "status": "ACTIVE", "sortPriority": 2},
            {"id": 3, "status": "REMOVED", "removalDate": "2023-11-14T21:00:00.000Z"},
        ],
        **overrides,
    }


IMAGE = message(
    {
        "id": MARKET,
        "img": True,
        "marketDefinition": definition(),
        "rc": [
            {"id": 1, "atb": [[3.0, 100], [2.98, 50.5]], "atl": [[3.05, 40]], "trd": [[3.0, 7]]},
            {"id": 2, "atb": [[4, 20]], "atl": [[4.2, 30.25]], "ltp": 4.1},
        ],
    },
    pt=T0,
)
UPDATE = message({"id": MARKET, "rc": [{"id": 1, "atb": [[3.0, 90]], "ltp": 3.0}]}, pt=T0 + 2500)


def nested_change(value: str) -> bytes:
    """A change with `value` inside a message, its `mc` list and the change (3 levels):
    1021 more levels reach orjson's limit of 1024, 1022 pass it."""
    return raw_line(f'{{"op":"mcm","pt":{T0 + 300},"mc":[{{"id":"1.100","x":{value}}}]}}')


def rc_line(*runner_changes: object, **change: object) -> bytes:
    return message({"id": MARKET, "rc": list(runner_changes), **change})


def raw_line(text: str) -> bytes:
    return text.encode()


BAD_LINES: dict[str, list[object]] = {
    "garbage bytes": [b"\x00\xff\xfe garbage", b"", b"   ", b"{", b"nul", b"[]", b"{}", b"1 2"],
    "byte order mark": [b"\xef\xbb\xbf" + UPDATE],
    "invalid utf-8": [
        b'{"op":"mcm","pt":5,"mc":[{"id":"1.\xff"}]}',
        b'{"op":"mcm","pt":5,"mc":[{"id":"1.100","\xc0\xaf":1}]}',
        b'{"op":"mcm","pt":5,"mc":[{"id":"1.100","x":"\xed\xa0\x80"}]}',
        raw_line('{"op":"mcm","pt":5,"mc":[{"id":"1.100","x":"\\ud800"}]}'),
        raw_line('{"op":"mcm","pt":5,"mc":[{"id":"1.100","x":"\\udc00"}]}'),
        raw_line('{"op":"mcm","pt":5,"mc":[{"id":"1.100","x":"\\ud83d\\ude00"}]}'),
    ],
    "control characters": [
        b'{"op":"mcm","pt":5,"mc":[{"id":"1.100","x":"a\x01"}]}',
        raw_line('{"op":"mcm","pt":5,"mc":[{"id":"1.100","x":"\\u0001\\u001f\\b\\/é\\u2028"}]}'),
        b'{"op":"mcm",\x0c"pt":5,"mc":[]}',
    ],
    "NaN-like tokens": [
        raw_line('{"op":"mcm","pt":5,"mc":[{"id":"1.100","rc":[{"id":1,"atb":[[NaN,1]]}]}]}'),
        raw_line('{"op":"mcm","pt":5,"mc":[{"id":"1.100","tv":Infinity}]}'),
        raw_line('{"op":"mcm","pt":5,"mc":[{"id":"1.100","tv":-Infinity}]}'),
        raw_line('{"op":"mcm","pt":5,"mc":[{"id":"1.100","tv":nan}]}'),
        rc_line({"id": 1, "atb": [["NaN", 5], [3.0, "nan"], ["inf", 1]], "ltp": "NaN"}),
        rc_line({"id": 1, "hc": "nan", "atb": [[3.0, 1]]}, {"id": 1, "hc": "nan", "ltp": 3.0}),
        rc_line({"id": 1, "hc": "inf"}, {"id": 1, "hc": " 2.5 "}, {"id": 1, "hc": "1_000"}),
        rc_line({"id": 1, "hc": "٣"}, {"id": 1, "hc": "abc"}, {"id": 1, "hc": None}),
    ],
    "huge numbers": [
        raw_line('{"op":"mcm","pt":5,"mc":[{"id":"1.100","tv":1e400}]}'),
        raw_line(f'{{"op":"mcm","pt":{T0 + 300},"mc":[{{"id":"1.100","tv":1e-400}}]}}'),
        raw_line(
            f'{{"op":"mcm","pt":{T0 + 300},"mc":[{{"id":"1.100","rc":[{{"id":1,'
            '"atb":[[3.0,-0],[2.98,-0.0],[2.5,0e0],[2.4,-1e-400]],"trd":[[3.0,-0]]}]}]}'
        ),
        raw_line(
            f'{{"op":"mcm","pt":{T0 + 300},"mc":[{{"id":"1.100","rc":[{{"id":1,'
            '"atb":[[3.0,123456789012345678901234567890],[2.0,18446744073709551615]],'
            '"atl":[[3.05,18446744073709551615],[3.1,9223372036854775808],[3.2,3]],'
            '"trd":[[18446744073709551615,18446744073709551615],[4,9007199254740993]]}]}]}'
        ),
        rc_line({"id": 2, "atb": [[1e308, 1.7976931348623157e308], [2.0, 1.7976931348623157e308]]}),
        rc_line({"id": 2, "trd": [[1e308, 1e308]]}, {"id": 2, "trd": [[1e308, 0], [1.5, 1e308]]}),
        rc_line({"id": 18446744073709551615, "atb": [[2.0, 1]]}, {"id": 1e20, "ltp": 2.0}),
        message({"id": MARKET, "tv": 18446744073709551615}),
        message({"id": MARKET}, pt=18446744073709551615),
        message({"id": MARKET}, pt=-5),
        raw_line('{"op":"mcm","pt":18446744073709551616,"mc":[{"id":"1.100"}]}'),
        raw_line('{"op":"mcm","pt":-9223372036854775809,"mc":[{"id":"1.100"}]}'),
        message({"id": MARKET, "rc": [{"id": 1, "ltp": 2.0}]}, pt=253402300799999),
        message({"id": MARKET, "rc": [{"id": 1, "ltp": 2.0}]}, pt=253402300800000),
    ],
    "publish time range": [
        message({"id": MARKET, "rc": [{"id": 1, "ltp": 2.0}]}, pt=MAX_PUBLISH_TIME_MS - 1),
        message({"id": MARKET, "rc": [{"id": 1, "ltp": 2.5}]}, pt=MAX_PUBLISH_TIME_MS),
        message({"id": MARKET, "rc": [{"id": 1, "ltp": 3.0}]}, pt=MIN_PUBLISH_TIME_MS),
        message({"id": MARKET, "rc": [{"id": 1, "ltp": 3.5}]}, pt=MIN_PUBLISH_TIME_MS - 1),
        message({"id": MARKET}, pt=-(2**62)),
        message({"id": MARKET}, pt=2**62, ct="HEARTBEAT"),
    ],
    "non-dict mc elements": [
        message(3),
        message(None),
        message([1]),
        message("1.100"),
        message({"id": 5}),
        message({"id": None}),
        message({}),
        message({"id": MARKET}, 7),
        raw_line('{"op":"mcm","pt":5,"mc":[1,2]}'),
        raw_line('{"op":"mcm","pt":5,"mc":{"id":"1.100"}}'),
        raw_line('{"op":"mcm","pt":5,"mc":""}'),
        raw_line('{"op":"mcm","pt":5,"mc":null}'),
        raw_line('{"op":"mcm","pt":5,"mc":[],"ct":"HEARTBEAT"}'),
        raw_line('{"op":"mcm","pt":5,"mc":[{"id":"1.100"}],"ct":"HEARTBEAT"}'),
    ],
    "odd headers": [
        raw_line('{"op":[1],"pt":5}'),
        raw_line('{"op":{"a":1},"pt":5}'),
        raw_line('{"op":5,"pt":5}'),
        raw_line('{"op":null}'),
        raw_line('{"op":"status"}'),
        raw_line('{"op":"mcm","pt":5.0,"mc":[]}'),
        raw_line('{"op":"mcm","pt":true,"mc":[]}'),
        raw_line('{"op":"mcm","pt":"5","mc":[]}'),
        raw_line(f'{{"op":"mcm","pt":{T0 + 9},"clk":[1,{{"a":2.50}}],"mc":[{{"id":"1.100"}}]}}'),
    ],
    "negative sizes and prices": [
        rc_line({"id": 1, "atb": [[3.0, -5], [-2.9, 5], [2.8, -0.0], [2.7, 9]]}),
        rc_line({"id": 1, "trd": [[3.0, -1], [-3.0, 1]], "ltp": -2, "tv": -1}),
        rc_line({"id": 1, "spn": -1, "spf": -2.5, "spb": [[-1, 2]], "spl": [[1, -2]]}),
        rc_line({"id": 2, "atl": [[0, 5]]}),
        rc_line({"id": 2, "atb": [[0, 5]]}, {"id": 2, "atb": [[4, 0], [4.0, 0]]}),
        rc_line({"id": 2, "atl": [[0, 0], [-0.0, 0], [0.0, 5], [-0.0, 5], [4.4, 6]]}),
        rc_line({"id": 1, "batb": [[0, 0, 5]]}, {"id": 1, "batl": [[0, 0.0, 0], [0, -0.0, 2]]}),
        rc_line({"id": 5, "batb": [[0, 0, 5]], "batl": [[0, 0, 3]], "atb": [], "ltp": 0}),
    ],
    "strings as prices": [
        rc_line({"id": 1, "atb": [["3.0", 5], [3.0, "5"], [True, 5], [3.0, False], [3.0, None]]}),
        rc_line({"id": 1, "atb": [[3.0, [5]], [3.0, 5, 1], {"3.0": 5}, "35", [3.0]]}),
        rc_line({"id": 1, "atb": None}, {"id": 2, "atl": "xy"}, {"id": 2, "trd": {"a": 1}}),
        rc_line({"id": 1, "atb": 5}, {"id": 2, "atl": [3.0, 5]}, {"id": 2, "trd": [3.0, 5]}),
        rc_line({"id": 1, "atb": []}, {"id": 1, "ltp": "3.0", "tv": "7"}),
    ],
    "depth-limited ladders": [
        rc_line({"id": 1, "batb": [[0, 3.0, 5], [True, 3.1, 1], [False, 3.2, 2], [1.0, 2.0, 1]]}),
        rc_line({"id": 2, "batl": [[0, 3.3, 5], [-1, 3.0, 1], [2**63, 3.1, 1], [0, 3.4, 0]]}),
        rc_line({"id": 2, "atl": [[4.2, 0]]}, {"id": 2, "batl": [[0, 4.6, 2]]}),
        rc_line({"id": 1, "bdatb": [[0, 3.0, 5], ["a", 1, 1]], "bdatl": [[0, 3.0]]}),
        rc_line({"id": 1, "batb": [0, 3.0, 5]}, {"id": 1, "batb": [[0, 3.0, -5]]}),
    ],
    "odd runner changes": [
        message({"id": MARKET, "rc": {"id": 1}}),
        message({"id": MARKET, "rc": "abc"}),
        message({"id": MARKET, "rc": [1, 2]}),
        message({"id": MARKET, "rc": [[1]]}),
        message({"id": MARKET, "rc": 5}),
        message({"id": MARKET, "rc": True}),
        message({"id": MARKET, "rc": 0}),
        message({"id": MARKET, "rc": 1.5, "tv": 9}),
        message({"id": MARKET, "rc": None, "tv": 10}),
        message({"id": MARKET, "rc": {}}),
        message({"id": MARKET, "rc": ""}),
        message({"id": MARKET, "rc": False}),
        rc_line({"id": [1]}, {"id": {"a": 1}}, {"ltp": 2.0}),
        rc_line({"id": 1.0, "ltp": 3.0}, {"id": True, "atb": [[2.5, 1]]}, {"id": "1", "ltp": 2}),
        rc_line({"id": None, "ltp": 3.0}, {"id": 1, "hc": -0.0, "ltp": 3.5}),
        rc_line({"id": 1, "hc": 0, "ltp": 3.0}, {"id": 4, "hc": 0.5, "atb": [[2.0, 3]]}),
        raw_line(
            f'{{"op":"mcm","pt":{T0 + 300},"mc":[{{"id":"1.100","rc":[{{"id":1,'
            '"atb":[[3.0,1]],"ltp":2.0,"atb":[[4.0,1]]}]}]}'
        ),
    ],
    "market change fields": [
        message({"id": MARKET, "img": 1, "rc": [{"id": 9, "atb": [[2.0, 1]]}]}),
        message({"id": MARKET, "img": "", "tv": True}),
        message({"id": MARKET, "img": [], "tv": -1}),
        message({"id": MARKET, "tv": "5"}),
        message({"id": MARKET, "tv": 7}, pt=T0 - 5000),
    ],
    "broken definitions": [
        message({"id": MARKET, "marketDefinition": definition(runners=None)}),
        message({"id": MARKET, "marketDefinition": definition(runners="abc")}),
        message({"id": MARKET, "marketDefinition": definition(runners={"a": 1})}),
        message({"id": MARKET, "marketDefinition": definition(runners=[5, None, {"id": [1]}])}),
        message({"id": MARKET, "marketDefinition": definition(runners=[[1, 2], {"hc": 1}])}),
        message({"id": MARKET, "marketDefinition": definition(status=5, inPlay="yes")}),
        message({"id": MARKET, "marketDefinition": definition(bspMarket="x", version="12")}),
        message({"id": MARKET, "marketDefinition": definition(version="abc")}),
        message({"id": MARKET, "marketDefinition": definition(betDelay=1e300)}),
        message({"id": MARKET, "marketDefinition": definition(betDelay=2.9, version=None)}),
        message({"id": MARKET, "marketDefinition": definition(betDelay=[1])}),
        message({"id": MARKET, "marketDefinition": definition(marketTime=5)}),
        message({"id": MARKET, "marketDefinition": definition(marketTime="garbage")}),
        message({"id": MARKET, "marketDefinition": definition(marketTime="2023-11-14")}),
        message({"id": MARKET, "marketDefinition": definition(marketTime="2023-11-14T22:00+05")}),
        message({"id": MARKET, "marketDefinition": definition(marketTime="")}),
        message({"id": MARKET, "marketDefinition": definition(marketTime=[])}),
        message({"id": MARKET, "marketDefinition": definition(marketTime=True)}),
        message({"id": MARKET, "marketDefinition": definition(marketTime="0001-01-01T00:00:00")}),
        message({"id": MARKET, "marketDefinition": definition(marketTime="0001-01-01T00:00Z")}),
        message({"id": MARKET, "marketDefinition": definition(marketTime="9999-12-31T23:59-01")}),
        message({"id": MARKET, "marketDefinition": definition(runners=5)}),
        message({"id": MARKET, "marketDefinition": definition(runners=True)}),
        message({"id": MARKET, "marketDefinition": definition(runners=[])}),
        message({"id": MARKET, "marketDefinition": definition(betDelay="", version=0)}),
        message({"id": MARKET, "marketDefinition": definition(betDelay="5", version={"a": 1})}),
        message({"id": MARKET, "marketDefinition": definition(version=[], betDelay={})}),
        message(
            {
                "id": MARKET,
                "marketDefinition": definition(
                    runners=[
                        {"id": 1, "removalDate": "garbage", "status": "REMOVED"},
                        {"id": 2, "removalDate": ["x"]},
                        {"id": 3, "removalDate": "0001-01-01T00:00:00"},
                        {"id": 4, "removalDate": "", "hc": "x"},
                        {"id": {"a": 1}},
                        {"id": [1], "hc": 1},
                        {"id": 6, "hc": [1]},
                    ]
                ),
                "rc": [{"id": 1, "atb": [[2.0, 5]]}],
            }
        ),
        message(
            {
                "id": MARKET,
                "marketDefinition": definition(
                    status="CLOSED",
                    runners=[
                        {"id": 1, "status": {"a": 1}, "bsp": [1, 2], "name": None},
                        {"id": 2, "status": "WINNER", "bsp": 4.5, "adjustmentFactor": "x"},
                        {"id": 3.0, "hc": "1", "removalDate": 7},
                    ],
                ),
            }
        ),
        message({"id": MARKET, "marketDefinition": [1]}),
        message({"id": MARKET, "marketDefinition": None, "img": True}),
    ],
    "deep nesting": [
        nested_change("[" * 1021 + "]" * 1021),
        nested_change("[" * 1022 + "]" * 1022),
        nested_change('{"a":' * 1021 + "1" + "}" * 1021),
        raw_line("[" * 2000 + "]" * 2000),
    ],
    "long dead letters": [
        rc_line({"id": 1, "atb": [[3.0, -1]], "x": "é😀" * 6000}),
        rc_line({"id": 1, "atb": [[3.0, -1]], "y": [1.5e-7, 1e16, 0.1, 123456789.0] * 900}),
    ],
    "raw types": ["not bytes", UPDATE.decode(), bytearray(UPDATE), memoryview(UPDATE), 5, None],
}


def run_lines(operators: Operators, lines: Iterable[object], copy_rows: object = None) -> SinkBatch:
    """Route and process one line at a time (neither implementation may raise on any line).

    With `copy_rows` (native only), ticks and windows go there (COPY mode)."""
    extra = () if copy_rows is None else (copy_rows,)
    processors: dict[str, object] = {}
    out = SinkBatch()
    for position, raw in enumerate(lines, start=1):
        routed = operators.route_lines([("case", position, raw)])
        out.dead_letters.extend(routed.bad)
        for market_id, changes in routed.by_market.items():
            processor = processors.get(market_id)
            if processor is None:
                processor = processors[market_id] = operators.new_market_processor(
                    market_id, keep_deltas=True
                )
            processor.process(changes, out, *extra)
    for processor in processors.values():
        processor.finish(out, *extra)
    return out


def assert_same_output_in_both(lines: list) -> SinkBatch:
    """Python, native and native COPY mode give the same records (and COPY data psycopg's)."""
    python = run_lines(PYTHON, lines)
    assert first_difference(python, run_lines(NATIVE, lines)) is None
    copy_rows = velo_native.CopyRows()
    copied = run_lines(NATIVE, lines, copy_rows)
    assert first_difference(python, with_copied_records(copied, copy_rows)) is None
    for kind in COPY_KINDS:
        assert_copy_data_like_psycopg(getattr(copy_rows, kind))
    return python


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_input_gives_the_same_records(case: str) -> None:
    for lines in ([IMAGE, *BAD_LINES[case], UPDATE], [*BAD_LINES[case], IMAGE, UPDATE]):
        assert_same_output_in_both(lines)


def test_bad_input_is_not_silently_lost() -> None:
    """The catalogue does reach the dead-letter paths (it is not all skipped)."""
    everything = [line for lines in BAD_LINES.values() for line in lines]
    out = run_lines(NATIVE, [IMAGE, *everything])
    reasons = {getattr(d, "reason", None) for d in out.dead_letters}
    assert {
        "malformed_json",
        "not_an_object",
        "unknown_op",
        "missing_publish_time",
        "publish_time_out_of_range",
        "malformed_market_changes",
        "out_of_order_publish_time",
        "invalid_ladder_entry",
        "invalid_market_definition",
    } <= reasons


def dead_letter_reasons(lines: list) -> list[tuple[int, str]]:
    """(line, reason) of each dead letter, the same in both implementations (asserted)."""
    out = assert_same_output_in_both(lines)
    return [(letter.position, letter.reason) for letter in out.dead_letters]


ONCE_RAISING: dict[str, tuple[bytes, str]] = {
    "lay price 0": (rc_line({"id": 2, "atl": [[0, 5], [4.1, 3]]}), "invalid_ladder_entry"),
    "back price 0 as the only level": (
        rc_line({"id": 2, "atb": [[0, 5]]}, {"id": 2, "atb": [[4, 0]]}),
        "invalid_ladder_entry",
    ),
    "level 0 at price 0": (rc_line({"id": 1, "batl": [[0, 0, 5]]}), "invalid_ladder_entry"),
    "rc a number": (message({"id": MARKET, "rc": 5, "tv": 9}), "invalid_ladder_entry"),
    "rc true": (message({"id": MARKET, "rc": True}), "invalid_ladder_entry"),
    "runners null": (
        message({"id": MARKET, "marketDefinition": definition(runners=None)}),
        "invalid_market_definition",
    ),
    "runners a number": (
        message({"id": MARKET, "marketDefinition": definition(runners=5)}),
        "invalid_market_definition",
    ),
    "unhashable runner id": (
        message({"id": MARKET, "marketDefinition": definition(runners=[{"id": [1]}])}),
        "invalid_market_definition",
    ),
    "version int() refuses": (
        message({"id": MARKET, "marketDefinition": definition(version="abc")}),
        "invalid_market_definition",
    ),
    "betDelay int() refuses": (
        message({"id": MARKET, "marketDefinition": definition(betDelay=[1])}),
        "invalid_market_definition",
    ),
    "marketTime a number": (
        message({"id": MARKET, "marketDefinition": definition(marketTime=5)}),
        "invalid_market_definition",
    ),
    "marketTime before the epoch can be placed": (
        message({"id": MARKET, "marketDefinition": definition(marketTime="0001-01-01T00:00")}),
        "invalid_market_definition",
    ),
    "removalDate a number": (
        message(
            {"id": MARKET, "marketDefinition": definition(runners=[{"id": 3, "removalDate": 7}])}
        ),
        "invalid_market_definition",
    ),
    "publish time after year 9999": (message({"id": MARKET}, pt=253402300800000), ""),
    "publish time too large for datetime": (message({"id": MARKET}, pt=2**62), ""),
    "publish time before year 1": (message({"id": MARKET}, pt=-62135596800001), ""),
    "publish time in the last day of year 9999": (
        message({"id": MARKET, "rc": [{"id": 1, "ltp": 2.0}]}, pt=253402300799999),
        "",
    ),
    "unhashable op (list)": (raw_line('{"op":[1],"pt":5}'), "unknown_op"),
    "unhashable op (object)": (raw_line('{"op":{"a":1},"pt":5}'), "unknown_op"),
}
"""Lines on which both implementations used to raise, and the dead letter each gives now
(after an image; "" for a publish time out of range)."""


@pytest.mark.parametrize("case", sorted(ONCE_RAISING))
def test_input_that_used_to_raise_is_a_counted_dead_letter(case: str) -> None:
    line, reason = ONCE_RAISING[case]
    reason = reason or "publish_time_out_of_range"
    assert dead_letter_reasons([IMAGE, line, UPDATE]) == [(2, reason)]


def test_a_dead_letter_for_a_change_too_deep_to_write_says_so() -> None:
    """orjson reads 1024 levels of nesting but writes 254: the dead letter of a change
    nested deeper than that (the change itself is a level) says so instead."""
    for depth, writable in ((253, True), (254, False), (1021, False)):
        deep = nested_change("[" * depth + "]" * depth)
        out = assert_same_output_in_both([deep, IMAGE, UPDATE])
        (letter,) = out.dead_letters
        assert letter.reason == "unknown_market_before_image"
        if writable:
            assert orjson.loads(letter.raw)["id"] == MARKET
        else:
            assert letter.raw == UNSERIALISABLE_CHANGE


def test_the_valid_rest_of_a_line_is_applied() -> None:
    """An invalid part is skipped; the rest of the change still reaches the book."""
    bad_definition = definition(status="SUSPENDED", version="abc", marketTime=5, runners=None)
    lines = [
        IMAGE,
        message({"id": MARKET, "marketDefinition": bad_definition}, pt=T0 + 100),
        rc_line({"id": 2, "atl": [[0, 5], [4.1, 3]]}, {"id": 1, "ltp": 3.05}),
        message({"id": MARKET, "rc": 5, "tv": 77.5}, pt=T0 + 200),
    ]
    out = assert_same_output_in_both(lines)
    assert [(d.position, d.reason) for d in out.dead_letters] == [
        (2, "invalid_market_definition"),
        (3, "invalid_ladder_entry"),
        (4, "invalid_ladder_entry"),
    ]
    market = out.markets[-1]
    assert (market.status, market.version, market.market_time) == ("SUSPENDED", 3, None)
    assert out.market_ticks[-1].total_matched == 77.5
    lay = [t for t in out.runner_ticks if t.selection_id == 2][-1]
    assert (lay.best_lay, lay.best_lay_size) == (4.1, 3)
    assert [t for t in out.runner_ticks if t.selection_id == 1][-1].ltp == 3.05


# -- seeded fuzz ---------------------------------------------------------------------------------

ODD_VALUES = [
    0, -0.0, 1, -1, 2.5, 1e308, 3, True, False, None, "x", "2.5", "nan", [], {}, [1, 2],
    [[2.0, 1]], 18446744073709551615, -9223372036854775808, 1.5e-7, 1000, 1.01, 0.5,
]  # fmt: skip


def corrupt(rng: random.Random, value: object, depth: int = 0) -> object:
    """A copy of `value` with a few leaves or shapes replaced by odd values."""
    if rng.random() < 0.03 or depth > 6:
        return rng.choice(ODD_VALUES)
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            if rng.random() < 0.02:
                continue
            result[key] = corrupt(rng, item, depth + 1)
        if rng.random() < 0.02:
            result[rng.choice(["hc", "img", "tv", "ltp", "batb", "bdatl", "spn"])] = rng.choice(
                ODD_VALUES
            )
        return result
    if isinstance(value, list):
        return [corrupt(rng, item, depth + 1) for item in value if rng.random() > 0.02]
    if isinstance(value, float) and rng.random() < 0.1:
        return int(value) if value.is_integer() else value
    return value


@pytest.mark.parametrize("seed", range(4))
def test_fuzzed_streams_give_the_same_records(seed: int) -> None:
    rng = random.Random(seed)
    lines = []
    for raw in simulate_day(seed=seed, markets=2, messages_per_market=500):
        parsed = orjson.loads(raw)
        if rng.random() < 0.5:
            parsed = corrupt(rng, parsed)
        lines.append(orjson.dumps(parsed))
    assert_same_output_in_both(lines)


# -- recovery snapshots --------------------------------------------------------------------------


def test_processor_survives_pickle_and_deepcopy_at_every_message() -> None:
    lines = list(simulate_day(seed=5, markets=1, messages_per_market=500))
    reference = run_lines(PYTHON, lines)
    processors: dict[str, object] = {}
    out = SinkBatch()
    for position, raw in enumerate(lines, start=1):
        routed = NATIVE.route_lines([("case", position, raw)])
        for market_id, changes in routed.by_market.items():
            changes = pickle.loads(pickle.dumps(changes))
            processor = processors.get(market_id) or NATIVE.new_market_processor(
                market_id, keep_deltas=True
            )
            processor.process(changes, out)
            copier = copy.deepcopy if position % 2 else (lambda p: pickle.loads(pickle.dumps(p)))
            processors[market_id] = copier(processor)
    for processor in processors.values():
        processor.finish(out)
    out.lines = reference.lines
    assert first_difference(reference, out) is None


def test_processor_interface_matches() -> None:
    processor = NATIVE.new_market_processor(MARKET, (60, 10, 10), (60,), keep_deltas=True)
    assert processor.market_id == MARKET and processor.keep_deltas
    out = processor.process(NATIVE.route_lines([("s", 1, IMAGE)]).by_market[MARKET])
    assert isinstance(out, SinkBatch) and out.messages == 1
    for lengths in ((0, 10), (86_401,), ()):
        with pytest.raises(ValueError):
            NATIVE.new_market_processor(MARKET, lengths)
    with pytest.raises(TypeError):
        processor.process(PYTHON.route_lines([("s", 1, IMAGE)]).by_market[MARKET])


# -- the parser, the writer and the clock --------------------------------------------------------


def random_floats(count: int) -> list[float]:
    rng = random.Random(17)
    values = []
    while len(values) < count:
        value = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        if math.isfinite(value):
            values.append(value)
    values += [rng.uniform(1.01, 1000) for _ in range(count // 4)]
    values += [round(rng.uniform(0, 5000), rng.randint(0, 4)) for _ in range(count // 4)]
    return values


def exact_ties(count: int) -> list[float]:
    """Doubles exactly halfway between two shortest decimal candidates (x.25 and x.75 at 2^50:
    Rust's own formatting rounds these differently from orjson and Python)."""
    rng = random.Random(5)
    return [rng.randrange(2**50, 2**51) + rng.choice((0.25, 0.75)) for _ in range(count)]


def test_floats_read_and_write_like_orjson() -> None:
    values = random_floats(20_000) + exact_ties(2000)
    for value in values:
        raw = orjson.dumps([value, -value])
        assert velo_native.reserialize(raw) == raw.decode(), value
    texts = [repr(value) for value in values[:2000]]
    texts += ["0.1234567890123456789012345e-5", "9007199254740993.0", "2.2250738585072011e-308"]
    texts += ["1" + "0" * 400 + ".0e-400", "123456789012345678901234567890", "1E2", "-0", "0.0"]
    for text in texts:
        assert velo_native.reserialize(text.encode()) == orjson.dumps(orjson.loads(text)).decode()


def test_price_ladder_and_tick_positions_equal_python() -> None:
    """The ladder is built in both languages; spreads and price moves rest on it being equal."""
    assert velo_native.price_ladder() == list(price_ladder.PRICES)
    rng = random.Random(5)
    prices: list[float | int] = [*price_ladder.PRICES, 0.5, 1.0, 1.005, 1000.5, 5000.0, 2, 1000]
    prices += [round(rng.uniform(1.0, 1001.0), rng.choice((2, 3, 6))) for _ in range(20_000)]
    prices += [p + d for p in price_ladder.PRICES for d in (-1e-9, 1e-9, -1e-12, 0.001)]
    for price in prices:
        assert velo_native.tick_index(price) == price_ladder.tick_index(price), price


def test_strings_and_odd_documents_read_and_write_like_orjson() -> None:
    documents = [
        '{"a":1,"b":2,"a":3}',
        '{"a":"\\u0000\\u001f\\"\\\\/\\b\\f\\n\\r\\t\\u007f\\u2028é😀"}',
        '[1,[2,[3,{"x":[true,false,null]}]]]',
        '{"' + "k" * 40 + '":"' + "v" * 40 + '"}',
        "{" + ",".join(f'"k{i}":{i}' for i in range(40)) + ',"k3":"dup","k39":[]}',
        '{"a":[]," ":{}}',
    ]
    for document in documents:
        expected = orjson.dumps(orjson.loads(document)).decode()
        assert velo_native.reserialize(document.encode()) == expected


def test_publish_times_equal_python_datetimes() -> None:
    rng = random.Random(3)
    samples = [rng.randint(-62135596800000, 253402300799999) for _ in range(20_000)]
    samples += [0, -1, 1, 999, -999, 1627622269330, 253402300799999, -62135596800000]
    samples += [
        rng.randint(-62135596800, 253402300798) * 1000 + rng.choice([0, 1, 499, 500, 501, 999])
        for _ in range(2000)
    ]
    for ms in samples:
        assert repr(velo_native.ms_to_datetime(ms)) == repr(ms_to_datetime(ms)), ms
    for ms in (253402300800000, -62135596800001, 2**62, -(2**62), 2**70):
        with pytest.raises((ValueError, OverflowError, OSError)) as python_error:
            ms_to_datetime(ms)
        with pytest.raises(python_error.type):
            velo_native.ms_to_datetime(ms)


# -- COPY mode: ticks and windows as PostgreSQL binary COPY tuples -------------------------------

COPY_KINDS = ("runner_ticks", "market_ticks", "windows", "live_windows")
COLUMN_TYPES = {
    "runner_ticks": "text int8 float8 timestamptz int8 text bool float8 float8 float8 float8 "
    "float8 float8 int4 float8 float8 float8 float8 float8 float8",
    "market_ticks": "text timestamptz int8 text bool float8 float8 float8 int4 float8",
    "window_aggregates": "text int8 float8 int4 timestamptz timestamptz int4 float8 float8 float8 "
    "float8 int4 float8 float8 float8 float8 float8 float8 float8",
}
"""Column types of the tables in `sql/migrations` (0002), in record field order."""
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
COPY_TRAILER = b"\xff\xff"


def replay_copy(lines: list, source: str) -> tuple[SinkBatch, object]:
    """`replay` in COPY mode: ticks and windows into one `CopyRows`, the rest into the batch."""
    processors: dict[str, object] = {}
    out = SinkBatch()
    copy_rows = velo_native.CopyRows()
    for start in range(0, len(lines), 250):
        routed = NATIVE.route_lines([(source, p, raw) for p, raw in lines[start : start + 250]])
        out.dead_letters.extend(routed.bad)
        out.lines += routed.lines
        batch_rows = velo_native.CopyRows()
        for market_id, changes in routed.by_market.items():
            processor = processors.get(market_id)
            if processor is None:
                processor = processors[market_id] = NATIVE.new_market_processor(
                    market_id, keep_deltas=True
                )
            processor.process(changes, out, batch_rows)
        copy_rows.extend(pickle.loads(pickle.dumps(batch_rows)))
    for processor in processors.values():
        processor.finish(out, copy_rows)
    return out, copy_rows


def with_copied_records(out: SinkBatch, copy_rows: object) -> SinkBatch:
    for kind in COPY_KINDS:
        assert getattr(out, kind) == [], f"{kind} went to the batch in COPY mode"
        setattr(out, kind, getattr(copy_rows, kind).records())
    return out


def assert_copy_data_like_psycopg(table: object) -> None:
    """`data` is psycopg's bytes; where it refuses, psycopg raises or would truncate an int4."""
    records = table.records()
    try:
        expected = psycopg_copy_tuples(table.table, records)
    except Exception:  # psycopg refuses the value (TypeError, OverflowError, ...)
        expected = None
    int4_columns = [i for i, kind in enumerate(COLUMN_TYPES[table.table].split()) if kind == "int4"]
    int4_overflow = any(
        record[i] is not None and not -(2**31) <= record[i] < 2**31
        for record in records
        for i in int4_columns
    )
    try:
        data = table.data
    except ValueError:
        assert expected is None or int4_overflow, "native refused what psycopg sends"
        return
    assert data == expected


def psycopg_copy_tuples(table: str, records: list) -> bytes:
    """What psycopg's binary COPY (`set_types` + `write_row`) sends for these records."""
    from psycopg import adapters
    from psycopg.adapt import Transformer
    from psycopg.pq import Format

    oids = [adapters.types[name].oid for name in COLUMN_TYPES[table].split()]
    transformer = Transformer()
    transformer.set_dumper_types(oids, Format.BINARY)
    formats = [Format.BINARY] * len(oids)
    data = bytearray()
    for record in records:
        data += struct.pack("!h", len(oids))
        for value in transformer.dump_sequence(record, formats):
            data += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value))
            data += value or b""
    return bytes(data)


@pytest.mark.data
@pytest.mark.parametrize("name", [*HORSE_RACING_FILES, SIMULATED_DAY, MUTATED_DAY])
def test_copy_mode_gives_the_same_records_and_psycopg_bytes(betfair_dir: Path, name: str) -> None:
    lines = list(stream_lines(name, betfair_dir))
    python = replay(lines, name, PYTHON)
    out, copy_rows = replay_copy(lines, name)
    assert first_difference(python, with_copied_records(out, copy_rows)) is None
    for kind in COPY_KINDS:
        table = getattr(copy_rows, kind)
        records = getattr(python, kind)
        assert table.rows == len(records)
        assert table.data == psycopg_copy_tuples(table.table, records), kind
        partition_times = [
            record[4] if "window" in kind else record.publish_time for record in records
        ]
        expected_range = (min(partition_times), max(partition_times)) if records else None
        assert table.time_range() == expected_range, kind


def test_copy_data_loads_into_postgresql(scratch_database_factory) -> None:
    import psycopg

    from sql.migrate import PLAIN, upgrade

    url = scratch_database_factory()
    upgrade(url, PLAIN)
    lines = list(enumerate(simulate_day(seed=9, markets=2, messages_per_market=500), start=1))
    _, copy_rows = replay_copy(lines, "sim")
    with psycopg.connect(url) as conn:
        for kind in ("runner_ticks", "market_ticks", "windows"):
            table = getattr(copy_rows, kind)
            with conn.cursor().copy(f"COPY {table.table} FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(COPY_HEADER + table.data + COPY_TRAILER)
            columns = ", ".join(
                conn.execute(f"SELECT * FROM {table.table} LIMIT 0").description[i].name
                for i in range(len(COLUMN_TYPES[table.table].split()))
            )
            stored = conn.execute(f"SELECT {columns} FROM {table.table}").fetchall()
            expected = [tuple(record) for record in table.records()]
            assert sorted(stored, key=repr) == sorted(expected, key=repr), kind


def test_copy_data_refuses_what_psycopg_would_refuse() -> None:
    odd_status = message({"id": MARKET, "marketDefinition": definition(status=5)})
    lines = [IMAGE, odd_status, UPDATE]
    processor = NATIVE.new_market_processor(MARKET)
    copy_rows = velo_native.CopyRows()
    for position, raw in enumerate(lines, start=1):
        changes = NATIVE.route_lines([("s", position, raw)]).by_market[MARKET]
        processor.process(changes, SinkBatch(), copy_rows)
    with pytest.raises(ValueError, match="market_ticks row 1"):
        _ = copy_rows.market_ticks.data
    assert [tick.status for tick in copy_rows.market_ticks.records()] == ["OPEN", 5]
    assert copy_rows.runner_ticks.data == psycopg_copy_tuples(
        "runner_ticks", copy_rows.runner_ticks.records()
    )
