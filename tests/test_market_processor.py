"""The market state machine on hand-written stream messages: derived values, windows, bad input."""

from __future__ import annotations

import orjson
import pytest

from operators.market_processor import MarketProcessor, SinkBatch
from operators.price_ladder import PRICES, price_at, tick_index, ticks_between
from operators.stream_messages import parse_line, route_lines

MARKET = "1.100"
OFF_MS = 1_700_000_600_000  # scheduled off, 10 minutes after T0
T0 = 1_700_000_000_000


def definition(status: str = "OPEN", in_play: bool = False, version: int = 1, **runner_status):
    runners = [
        {"id": sid, "status": runner_status.get(f"r{sid}", "ACTIVE"), "sortPriority": sid}
        for sid in (1, 2, 3)
    ]
    return {
        "status": status,
        "inPlay": in_play,
        "version": version,
        "betDelay": 0,
        "marketTime": "2023-11-14T22:23:20.000Z",
        "marketType": "WIN",
        "eventTypeId": "7",
        "numberOfWinners": 1,
        "bspMarket": True,
        "runners": runners,
    }


def line(pt: int, *changes: dict, **header) -> bytes:
    return orjson.dumps({"op": "mcm", "clk": str(pt), "pt": pt, "mc": list(changes), **header})


def run(
    *lines: bytes, processor: MarketProcessor | None = None
) -> tuple[MarketProcessor, SinkBatch]:
    processor = processor or MarketProcessor(MARKET)
    out = SinkBatch()
    routed = route_lines([("test", i, raw) for i, raw in enumerate(lines, start=1)])
    processor.process(routed.by_market.get(MARKET, []), out)
    return processor, out


IMAGE = line(
    T0,
    {
        "id": MARKET,
        "img": True,
        "marketDefinition": definition(),
        "rc": [
            {
                "id": 1,
                "atb": [[3.0, 100], [2.98, 50], [2.96, 10]],
                "atl": [[3.05, 40], [3.1, 60]],
                "trd": [[3.0, 200], [3.05, 100]],
                "ltp": 3.0,
                "tv": 300,
            },
            {"id": 2, "atb": [[4.0, 20]], "atl": [[4.2, 30]]},
            {"id": 3, "atb": [[6.0, 5]], "atl": [[7.0, 5]]},
        ],
    },
)


def test_price_ladder_is_betfairs() -> None:
    assert len(PRICES) == 350 and PRICES[0] == 1.01 and PRICES[-1] == 1000
    assert ticks_between(1.99, 2.02) == 2  # 2.00 then 2.02: the increment changes at 2
    assert ticks_between(3.0, 3.05) == 1
    assert price_at(tick_index(5.5) + 1) == 5.6
    assert tick_index(3.01) == tick_index(3.02)  # off-ladder snaps up


def test_derived_values_after_image() -> None:
    _processor, out = run(IMAGE)
    tick = {t.selection_id: t for t in out.runner_ticks}[1]
    assert (tick.best_back, tick.best_back_size, tick.best_lay, tick.best_lay_size) == (
        3.0,
        100,
        3.05,
        40,
    )
    assert tick.spread_ticks == 1
    assert tick.weight_of_money == pytest.approx(160 / 260)
    assert tick.vwap == pytest.approx((3.0 * 200 + 3.05 * 100) / 300)
    assert tick.traded_volume == 300
    assert tick.implied_probability == pytest.approx(0.5 * (1 / 3.0 + 1 / 3.05))
    assert tick.seconds_to_off == pytest.approx((OFF_MS - T0) / 1000)
    market = out.market_ticks[0]
    assert market.back_overround == pytest.approx(100 * (1 / 3 + 1 / 4 + 1 / 6))
    assert market.lay_overround == pytest.approx(100 * (1 / 3.05 + 1 / 4.2 + 1 / 7))
    assert market.active_runners == 3
    assert [r.selection_id for r in out.runners] == [1, 2, 3]
    assert out.markets[0].version == 1 and out.markets[0].status == "OPEN"


def test_deltas_remove_levels_and_image_replaces_state() -> None:
    processor, _ = run(IMAGE, line(T0 + 100, {"id": MARKET, "rc": [{"id": 1, "atb": [[3.0, 0]]}]}))
    runner = processor.book.runners[(1, 0.0)]
    assert runner.best_back == 2.98 and 3.0 not in runner.atb
    new_image = line(T0 + 200, {"id": MARKET, "img": True, "rc": [{"id": 2, "atb": [[5.0, 1]]}]})
    run(new_image, processor=processor)
    assert runner.atb == {} and runner.trd == {} and runner.best_back is None
    assert processor.book.runners[(2, 0.0)].atb == {5.0: 1}


def test_ladder_deltas_are_exposed_for_detectors() -> None:
    processor = MarketProcessor(MARKET, keep_deltas=True)
    spoof = line(T0 + 100, {"id": MARKET, "rc": [{"id": 2, "atl": [[4.2, 5030]]}]})
    pulled = line(T0 + 900, {"id": MARKET, "rc": [{"id": 2, "atl": [[4.2, 30]]}]})
    _, out = run(IMAGE, spoof, pulled, processor=processor)
    spoof_deltas = [(d.side, d.price, d.size_delta) for d in out.deltas if d.selection_id == 2]
    assert spoof_deltas[-2:] == [("lay", 4.2, 5000), ("lay", 4.2, -5000)]


def test_windows_aggregate_moves_volume_and_churn() -> None:
    steam = [
        line(
            T0 + 1000 + i * 300,
            {
                "id": MARKET,
                "rc": [
                    {"id": 1, "atb": [[price, 500]], "trd": [[price, 50 * (i + 1)]], "ltp": price}
                ],
            },
        )
        for i, price in enumerate((3.0, 2.9, 2.8, 2.7))
    ]
    after = line(T0 + 12_000, {"id": MARKET, "rc": [{"id": 3, "atb": [[6.0, 6]]}]})
    _, out = run(IMAGE, *steam, after)
    ten_second = [w for w in out.windows if w.window_secs == 10 and w.selection_id == 1]
    assert len(ten_second) == 1
    window = ten_second[0]
    assert window.window_end.timestamp() - window.window_start.timestamp() == 10
    assert window.open_ltp == 3.0 and window.close_ltp == 2.7 and window.low_ltp == 2.7
    assert window.price_move_ticks == ticks_between(3.0, 2.7) == -15
    assert window.updates == 5  # the image and four steam updates
    # traded: 300 in the image, then 3.0 rises from 200 to 50 (not counted) and three new prices
    assert window.traded_volume == pytest.approx(300 + 100 + 150 + 200)
    assert window.back_added == pytest.approx(160 + 400 + 500 * 3)
    market_window = next(w for w in out.windows if w.window_secs == 10 and w.selection_id == 0)
    assert market_window.updates == 5
    # one-second windows feed detectors in the flow and are not persisted
    assert not [w for w in out.windows if w.window_secs == 1]
    assert sum(w.updates for w in out.live_windows if w.selection_id == 1) == 5


def test_unknown_market_before_image_is_dead_lettered() -> None:
    orphan = line(T0, {"id": MARKET, "rc": [{"id": 1, "atb": [[3.0, 1]]}]})
    processor, out = run(orphan, IMAGE)
    assert [d.reason for d in out.dead_letters] == ["unknown_market_before_image"]
    assert processor.book.runners[(1, 0.0)].atb[3.0] == 100


def test_out_of_order_publish_time_is_applied_and_counted() -> None:
    late = line(T0 - 5000, {"id": MARKET, "rc": [{"id": 1, "atb": [[3.0, 7]]}]})
    processor, out = run(IMAGE, late)
    assert [d.reason for d in out.dead_letters] == ["out_of_order_publish_time"]
    assert processor.book.runners[(1, 0.0)].atb[3.0] == 7
    assert len(out.runner_ticks) == 4  # runner 1 changed: a tick even though late


def test_negative_and_non_numeric_sizes_are_skipped_and_counted() -> None:
    bad = line(T0 + 10, {"id": MARKET, "rc": [{"id": 1, "atb": [[3.0, -5], [2.9, "x"], [2.8, 9]]}]})
    processor, out = run(IMAGE, bad)
    assert [d.reason for d in out.dead_letters] == ["invalid_ladder_entry"]
    assert processor.book.runners[(1, 0.0)].atb == {3.0: 100, 2.98: 50, 2.96: 10, 2.8: 9}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"op": "mcm", "pt": 1, "mc": [', "malformed_json"),
        (b"[1, 2]", "not_an_object"),
        (b'{"op": "ocm", "pt": 1}', "unknown_op"),
        (b'{"op": "mcm", "mc": []}', "missing_publish_time"),
        (b'{"op": "mcm", "pt": 1, "mc": {"id": "1.1"}}', "malformed_market_changes"),
        (b'{"op": ["mcm"], "pt": 1}', "unknown_op"),
        (b'{"op": "mcm", "pt": 253402214400000, "mc": []}', "publish_time_out_of_range"),
        (b'{"op": "mcm", "pt": -62135510400001, "mc": []}', "publish_time_out_of_range"),
    ],
)
def test_bad_lines_have_reasons(raw: bytes, reason: str) -> None:
    parsed = parse_line(raw, "file", 7)
    assert parsed.bad is not None and parsed.bad.reason == reason and parsed.bad.raw == raw


def test_invalid_definition_parts_are_skipped_and_counted() -> None:
    broken = {**definition("SUSPENDED", version=1), "version": "v2", "marketTime": 5}
    broken["runners"] = [*broken["runners"], {"id": [4]}, {"id": 5, "hc": "x"}]
    processor, out = run(IMAGE, line(T0 + 10, {"id": MARKET, "marketDefinition": broken}))
    assert [d.reason for d in out.dead_letters] == ["invalid_market_definition"]
    book = processor.book
    assert (book.status, book.version, book.market_time_ms) == ("SUSPENDED", 1, None)
    assert len(book.runners) == 3
    assert out.markets[-1].market_time is None


def test_a_price_of_zero_with_a_size_is_skipped_and_counted() -> None:
    zero = line(T0 + 10, {"id": MARKET, "rc": [{"id": 1, "atl": [[0, 5], [3.02, 2]]}]})
    processor, out = run(IMAGE, zero)
    assert [d.reason for d in out.dead_letters] == ["invalid_ladder_entry"]
    assert processor.book.runners[(1, 0.0)].best_lay == 3.02
    cleared = line(T0 + 20, {"id": MARKET, "rc": [{"id": 1, "batl": [[0, 0, 0]]}]})
    assert run(IMAGE, cleared)[1].dead_letters == []  # a level cleared at price 0 is valid


def test_window_lengths_are_positive_and_at_most_a_day() -> None:
    MarketProcessor(MARKET, window_seconds=(86_400,), persisted_window_seconds=())
    for lengths in ((0,), (86_401,), ()):
        with pytest.raises(ValueError):
            MarketProcessor(MARKET, window_seconds=lengths)


def test_control_messages_and_heartbeats_are_not_errors() -> None:
    for raw in (
        b'{"op": "status", "statusCode": "SUCCESS"}',
        b'{"op": "mcm", "id": 1, "ct": "HEARTBEAT", "clk": "x", "pt": 5}',
    ):
        parsed = parse_line(raw, "live", 1)
        assert parsed.bad is None and parsed.heartbeat and not parsed.changes


def test_closing_definition_emits_results() -> None:
    closing = line(
        T0 + 600_000,
        {
            "id": MARKET,
            "marketDefinition": {
                **definition("CLOSED", version=9, r1="WINNER", r2="LOSER", r3="REMOVED")
            },
        },
    )
    _, out = run(IMAGE, closing)
    assert {(r.selection_id, r.status) for r in out.results} == {
        (1, "WINNER"),
        (2, "LOSER"),
        (3, "REMOVED"),
    }


def test_ticks_are_written_only_when_a_value_changes() -> None:
    deep = line(T0 + 10, {"id": MARKET, "rc": [{"id": 1, "atb": [[1.5, 3]]}]})
    top = line(T0 + 20, {"id": MARKET, "rc": [{"id": 1, "atb": [[3.0, 101]]}]})
    processor, out = run(IMAGE, deep, top)
    assert [(t.seq, t.selection_id) for t in out.runner_ticks] == [(1, 1), (1, 2), (1, 3), (3, 1)]
    assert [t.seq for t in out.market_ticks] == [1]  # the book % did not move
    processor.finish(out)
    ten_second = next(w for w in out.windows if w.window_secs == 10 and w.selection_id == 1)
    assert ten_second.back_added == pytest.approx(160 + 3 + 1)  # the deep level is in the churn
