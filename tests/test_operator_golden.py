"""The market operators' output is pinned: every record of every real file and a simulated day.

The operators are optimised for speed; this test proves an optimisation changed nothing a
consumer can see. Each stream is replayed in flow-sized batches through one
`MarketProcessor` per market (with ladder deltas kept), copying every processor by pickle or
`deepcopy` along the way as a Bytewax recovery snapshot would, and finished at end of stream.
Every record kind (ticks, windows, live windows, deltas, definitions, results, dead letters,
snapshots) is reduced to a sha256 over its records' `repr`s in emission order, so a change in
any value, its type (`100` vs `100.0`), or the order of records shows up. The data cannot be
committed, so only the digests are; the test skips when the shared data is absent.

Both implementations are pinned to the same digests: the Python reference and the compiled
`velo_native` core (skipped when it is not installed).

Regenerate the digests (only after a deliberate change of output) with
`python -m tests.test_operator_golden` (it runs the Python reference).
"""

from __future__ import annotations

import copy
import hashlib
import pickle
import random
from collections.abc import Iterable
from pathlib import Path

import orjson
import pytest

from connectors.simulator import simulate_day
from connectors.stream_files import read_lines
from operators.market_processor import SinkBatch
from operators.native_core import PYTHON, Operators
from operators.stream_messages import BadLine

HORSE_RACING_FILES = [
    "1.127236622.bz2",
    "1-206064380.bz2",
    "1.185781277.bz2",
    "SELF-1.181223995",
    "1.205822330.bz2",
    "BASIC-1.132153978",
    "1.164917629.bz2",
]
SIMULATED_DAY = "simulated-day-seed-7"
MUTATED_DAY = "mutated-day-seed-11"
"""A small simulated day with invalid entries, bad lines and odd types mixed in: the real files
are clean, so this stream pins the dead-letter and edge paths (int prices next to float ones,
best level pulled, `batb`/`bdatb` levels, handicaps, late messages, mid-stream images)."""
BATCH_LINES = 250
"""Lines per routing batch, as a source would hand them over."""
SNAPSHOT_EVERY_BATCHES = 10
"""Replace the processors by copies this often, alternately by pickle and by `deepcopy`
(Bytewax recovery snapshots use both)."""
RECORD_KINDS = (
    "markets",
    "runners",
    "runner_ticks",
    "market_ticks",
    "windows",
    "live_windows",
    "results",
    "dead_letters",
    "deltas",
    "snapshots",
)


def replay(
    lines: Iterable[tuple[int, bytes | BadLine]], source: str, operators: Operators = PYTHON
) -> SinkBatch:
    """All records one stream yields through the operators, in emission order."""
    processors: dict[str, object] = {}
    out = SinkBatch()
    batch: list[tuple[str, int, bytes | BadLine]] = []
    batches = 0

    def run_batch() -> None:
        nonlocal batches
        routed = operators.route_lines(batch)
        out.dead_letters.extend(routed.bad)
        out.lines += routed.lines
        for market_id, changes in routed.by_market.items():
            processor = processors.get(market_id)
            if processor is None:
                processor = processors[market_id] = operators.new_market_processor(
                    market_id, keep_deltas=True
                )
            processor.process(changes, out)
        batch.clear()
        batches += 1
        if batches % SNAPSHOT_EVERY_BATCHES == 0:
            for market_id, processor in processors.items():
                processors[market_id] = (
                    pickle.loads(pickle.dumps(processor))
                    if batches % (2 * SNAPSHOT_EVERY_BATCHES)
                    else copy.deepcopy(processor)
                )

    for position, raw in lines:
        batch.append((source, position, raw))
        if len(batch) == BATCH_LINES:
            run_batch()
    if batch:
        run_batch()
    for processor in processors.values():
        processor.finish(out)
    return out


def digests(out: SinkBatch) -> dict[str, str]:
    """Each record kind's count and sha256 (first 128 bits) over its reprs in order."""
    result = {}
    for kind in RECORD_KINDS:
        records = getattr(out, kind)
        digest = hashlib.sha256()
        for record in records:
            digest.update(repr(record).encode())
            digest.update(b"\n")
        result[kind] = f"{len(records)}:{digest.hexdigest()[:32]}"
    result["counts"] = f"lines={out.lines} messages={out.messages}"
    return result


def _bad_entry(rng: random.Random, entry: list) -> object:
    return rng.choice(
        [
            [entry[0], -1],
            [entry[0], "x"],
            [entry[0]],
            [*entry, 1],
            None,
            "3.0",
            [True, 5],
            [entry[0], None],
            [entry[0], False],
        ]
    )


def _mutate_runner_change(rng: random.Random, rc: dict) -> None:
    for side in ("atb", "atl", "trd"):
        entries = rc.get(side)
        if not entries:
            continue
        for i, entry in enumerate(entries):
            roll = rng.random()
            if roll < 0.04:
                entries[i] = _bad_entry(rng, entry)
            elif roll < 0.25 and isinstance(entry[0], float) and entry[0].is_integer():
                entries[i] = [int(entry[0]), entry[1]]
            elif roll < 0.32:
                entries[i] = [float(entry[0]), int(entry[1])]
        if rng.random() < 0.1:
            entries.append([rng.choice((1.5, 2.0, 3, 5.0, 21.0, 1000)), 0])
    roll = rng.random()
    if roll < 0.05:
        side = rng.choice(("batb", "batl", "bdatb", "bdatl"))
        price = rng.choice((2.0, 3, 4.5, 10.0))
        rc[side] = [
            [0, price, rng.choice((0, 5, 7.5))],
            [1, price + 1, 3],
            ["a", price, 1],
            [2, price],
            [0.0, price, 1],
        ][: rng.randint(1, 5)]
    elif roll < 0.07:
        rc[rng.choice(("spn", "spf", "ltp", "tv"))] = rng.choice(("x", -1, True, None, 0, 4))
    elif roll < 0.09:
        rc[rng.choice(("spb", "spl"))] = [[2.0, 5], [3.0, 0], [4.0, -1], ["x"]]
    elif roll < 0.10:
        rc["hc"] = rng.choice((0.5, -1, "abc", None, "2.5"))
    elif roll < 0.11:
        del rc["id"]


def mutated_day() -> Iterable[bytes]:
    """`simulate_day(seed=11)` with deterministic corruption (see MUTATED_DAY)."""
    rng = random.Random("velo-golden-mutations")
    junk = [
        b"not json",
        b"[1, 2]",
        b'{"op": "ocm", "pt": 1}',
        b'{"op": "mcm", "mc": []}',
        b'{"op": "mcm", "pt": 1, "mc": {"id": "1.1"}}',
        b'{"op": "mcm", "pt": 5, "mc": [3]}',
        b'{"op": "heartbeat"}',
        b'{"op": "mcm", "ct": "HEARTBEAT", "pt": 5}',
    ]
    last_pt = 0
    for raw in simulate_day(seed=11, markets=3, messages_per_market=600):
        message = orjson.loads(raw)
        roll = rng.random()
        if roll < 0.01:
            yield rng.choice(junk)
        elif roll < 0.015:
            yield orjson.dumps(
                {
                    "op": "mcm",
                    "pt": message["pt"],
                    "mc": [{"id": "1.999", "rc": [{"id": 1, "atb": [[2.0, 5]]}]}],
                }
            )
        for change in message["mc"]:
            for rc in change.get("rc") or ():
                _mutate_runner_change(rng, rc)
            roll = rng.random()
            if roll < 0.01:
                change["img"] = True
            elif roll < 0.02:
                change["tv"] = rng.choice((-5, "x", 7))
        if rng.random() < 0.01 and last_pt:
            message["pt"] = last_pt - rng.randint(1, 3000)
        last_pt = max(last_pt, message["pt"])
        yield orjson.dumps(message)


def stream_lines(name: str, betfair_dir: Path) -> Iterable[tuple[int, bytes | BadLine]]:
    if name == SIMULATED_DAY:
        return enumerate(simulate_day(seed=7, markets=8), start=1)
    if name == MUTATED_DAY:
        return enumerate(mutated_day(), start=1)
    return read_lines(betfair_dir / name)


@pytest.mark.data
@pytest.mark.parametrize("name", [*HORSE_RACING_FILES, SIMULATED_DAY, MUTATED_DAY])
def test_operator_output_is_unchanged(betfair_dir: Path, name: str, operators: Operators) -> None:
    assert digests(replay(stream_lines(name, betfair_dir), name, operators)) == EXPECTED[name]


EXPECTED: dict[str, dict[str, str]] = {
    "1.127236622.bz2": {
        "markets": "111:8b2dbb8b1b406b3b1450a2a793716ec5",
        "runners": "1443:67ec2b67873b465c408c056097daa7c6",
        "runner_ticks": "31931:e67018c445e999badde187c7a4677916",
        "market_ticks": "6831:84e805aa6e0437b7e9886c1087527e0a",
        "windows": "25313:cf8b1dc155ea5fdefd15b68a1f758555",
        "live_windows": "31128:3eec545618cb4128470368c220abf84a",
        "results": "13:44d34e1ee34b888db52598a077b1e3d5",
        "dead_letters": "0:e3b0c44298fc1c149afbf4c8996fb924",
        "deltas": "86712:2bd2e99c7ecc50c8bbd3d0e283610c2d",
        "snapshots": "13:d4b32d09c3cea34b9572781a3f422424",
        "counts": "lines=16096 messages=16096",
    },
    "1-206064380.bz2": {
        "markets": "20:78a4e708428f182fb4e1f615bbd5f8e5",
        "runners": "260:1428bc701f7516d99896d21712729bef",
        "runner_ticks": "23831:d8032f59bd27f802f8af10d3648b2344",
        "market_ticks": "3042:b882272c571ab4f6587542c5b21d23e9",
        "windows": "15001:e492f00c277ab486c2747468d0116b5c",
        "live_windows": "26661:d2885cfb7d4f114870078e98c75f2154",
        "results": "13:76507fecbdc705f6600610ded21beb82",
        "dead_letters": "0:e3b0c44298fc1c149afbf4c8996fb924",
        "deltas": "64211:f889072afef03a7e7fa750661708e573",
        "snapshots": "13:4d86e288a4b4b7c59c1f59728c734892",
        "counts": "lines=18793 messages=18793",
    },
    "1.185781277.bz2": {
        "markets": "13:64755e1d4036c658ad7a7ab9af406c54",
        "runners": "221:25458168c3d602d403acb142a133c0fd",
        "runner_ticks": "14159:21f79383a1d717bbdb3085e631664948",
        "market_ticks": "2411:f024a6ef3f3acb83ceb50dcaa660b265",
        "windows": "2409:8ab9b49019f5244b6fb52403d252e698",
        "live_windows": "10876:d211a5a808af1f5999955b2e2dd112cf",
        "results": "17:c16d7110339f217f52992ab618b299ef",
        "dead_letters": "0:e3b0c44298fc1c149afbf4c8996fb924",
        "deltas": "43566:38276baecd6d5c72ff2aaeb9cd045e19",
        "snapshots": "17:aca9e9245b9246c6fb33325e1acc2072",
        "counts": "lines=7600 messages=7600",
    },
    "SELF-1.181223995": {
        "markets": "91:c1405279fc674b8894eefbcb32966446",
        "runners": "910:6d3cab84c81fb4d69ac5bd99520968d7",
        "runner_ticks": "33247:8cdd36fa85f7726ad08a077316a1e0a6",
        "market_ticks": "8910:bdbaa028944ea4a7e834664102d186d3",
        "windows": "18662:a63566c623ccae9e3108fb46d76ec882",
        "live_windows": "28771:6dbe3219f9e29f6ff13d4f668618b044",
        "results": "10:9bbfcf57ed0d9c6233bdd7b3f0102abc",
        "dead_letters": "0:e3b0c44298fc1c149afbf4c8996fb924",
        "deltas": "56212:212a203d1f5ba570a00652267e11a99b",
        "snapshots": "10:04a4ef7c76f1af6033c7daabc928f5cb",
        "counts": "lines=21922 messages=21922",
    },
    "1.205822330.bz2": {
        "markets": "25:6a2d31f036f75c737a828aea809b8db1",
        "runners": "425:2aed038946617d6f4bd31de703a83bdc",
        "runner_ticks": "9840:1797d905b76d8193d8add9c43cae0e2c",
        "market_ticks": "1922:df8e077547c5abbf1bdba0ec0f1ae2de",
        "windows": "7080:61a467f8d5e1dac4c72ebd8a0eda09d2",
        "live_windows": "10190:7944ea935fa64616daba54b521bc8a3d",
        "results": "17:773e1f521372762edadceb1ec83809b1",
        "dead_letters": "0:e3b0c44298fc1c149afbf4c8996fb924",
        "deltas": "26843:67675dc79c90d50601a8515b1ebeac0f",
        "snapshots": "17:893e204a69ebec753eff3d9f8ace5e37",
        "counts": "lines=5654 messages=5654",
    },
    "BASIC-1.132153978": {
        "markets": "13:2608a1ad983963329fd2ecf9bbd3c587",
        "runners": "182:c35f6bff671308ee3cac931d5c56a6d0",
        "runner_ticks": "1208:16a3bb7bce97ce5c11be7e8b03966e09",
        "market_ticks": "6:cbada6a1841208eff4e17bfaebab65fb",
        "windows": "3368:bdc252a1cb009d7843af8f27585c022b",
        "live_windows": "1684:08b18814861d7177765b5680a0de5d93",
        "results": "14:4cf7e755d51b632583c9a9b31e36fd4c",
        "dead_letters": "0:e3b0c44298fc1c149afbf4c8996fb924",
        "deltas": "0:e3b0c44298fc1c149afbf4c8996fb924",
        "snapshots": "14:5140ece27ec3dfb872228ba55a6d4ff0",
        "counts": "lines=480 messages=480",
    },
    "1.164917629.bz2": {
        "markets": "2:b8ed1cf96479574e1382c4fe536fe93e",
        "runners": "20:e22289e317d3b882107efdf87c5bad12",
        "runner_ticks": "247:c1081fc294b2d7449357820b80b98066",
        "market_ticks": "82:4fc5f837cc1cec13e9b36e2304a6aea3",
        "windows": "269:615c4887e3647eaa16c8a5b74a38798e",
        "live_windows": "441:8ab0c5e39252961724d3d2f71d37fc1c",
        "results": "0:e3b0c44298fc1c149afbf4c8996fb924",
        "dead_letters": "0:e3b0c44298fc1c149afbf4c8996fb924",
        "deltas": "1236:5cd507040afc6f3393d72452e630af31",
        "snapshots": "10:0e687c46079f0a373faef03a3cae7a8d",
        "counts": "lines=298 messages=298",
    },
    "simulated-day-seed-7": {
        "markets": "57:84396d9e62fb6ded88610c14f64ad277",
        "runners": "693:fada764f43f2eb160789812bf39010d3",
        "runner_ticks": "30069:d4b540f9812e9344d335bd95a8b4c269",
        "market_ticks": "13402:dd6ed3e2f9aefeb0e90daf3517ebcfec",
        "windows": "22164:50c2aa0e060d8c06997ebae292f801a6",
        "live_windows": "39651:f9d8af75c3e5ebef90a51c98b840ec45",
        "results": "99:5ac6f81f95c7b43a31bb4540ae14bf17",
        "dead_letters": "0:e3b0c44298fc1c149afbf4c8996fb924",
        "deltas": "90112:08734ed9a44052de8cf9cffbe605e350",
        "snapshots": "99:94bed2886937e31c7bc5a210dad180e6",
        "counts": "lines=23295 messages=23295",
    },
    "mutated-day-seed-11": {
        "markets": "18:59ef86551242fc4c0e6bbf9cd1acc5f2",
        "runners": "326:ba879e44c63ae0adad893ad74edbec0b",
        "runner_ticks": "4460:3eb7831874c3343f979151f150029100",
        "market_ticks": "1715:8412f8a72ea9304defb28daa8d5153f1",
        "windows": "4506:8f04f64b61a2ea5a2b76eed5ff50149a",
        "live_windows": "4692:462a4d11323bb3e5467951fdfbfb4bc5",
        "results": "69:e244a014116160d70d0633cda7185714",
        "dead_letters": "922:03e38995e80311983f03ac8f3d175783",
        "deltas": "13749:8d6754325ae417f89d16f38d8e302309",
        "snapshots": "69:583c0180fce0b6111d33cb3434eaba5f",
        "counts": "lines=2493 messages=2465",
    },
}
"""Digests of the operators' output before they were optimised (Python 3.11)."""


if __name__ == "__main__":
    from tests.conftest import BETFAIR_DIR

    expected = {
        stream: digests(replay(stream_lines(stream, BETFAIR_DIR), stream))
        for stream in [*HORSE_RACING_FILES, SIMULATED_DAY, MUTATED_DAY]
    }
    print(f"EXPECTED: dict[str, dict[str, str]] = {expected!r}")
