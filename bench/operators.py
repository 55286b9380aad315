"""Market operators' CPU throughput: parse → route → `MarketProcessor`, against bare orjson.

Lines are read and decompressed before timing, so the numbers are the operators' hot path
alone (no file I/O, no Bytewax, no database). Routing batches have the file source's
default size, and each market keeps one processor across batches, as in the flow.
`--batch-lines` and `--gc-threshold` show what the flow's batch size and the interpreter's
garbage-collector settings cost (both are process settings, outside the operators).

    python -m bench.operators [--repeat N] [--deltas] [--batch-lines N] [--gc-threshold N]
                              [FILES...]
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import orjson

from connectors.stream_files import read_lines
from operators.market_processor import MarketProcessor, SinkBatch
from operators.stream_messages import route_lines

SHARED_BETFAIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "betfair"
DEFAULT_FILES = [
    "1.127236622.bz2",
    "1-206064380.bz2",
    "1.185781277.bz2",
    "SELF-1.181223995",
    "1.205822330.bz2",
]
BATCH_LINES = 2000
"""`StreamFileSource`'s default batch size."""


def load(path: Path) -> list[tuple[str, int, bytes]]:
    lines = []
    for position, raw in read_lines(path):
        if not isinstance(raw, bytes):
            raise SystemExit(f"{path} is broken at line {position}: {raw.reason}")
        lines.append((path.name, position, raw))
    return lines


def run_orjson(lines: list[tuple[str, int, bytes]]) -> None:
    loads = orjson.loads
    for _, _, raw in lines:
        loads(raw)


def run_operators(
    lines: list[tuple[str, int, bytes]], keep_deltas: bool, batch_lines: int = BATCH_LINES
) -> int:
    """Process all lines; each batch's rows are dropped after it, as the sink would."""
    processors: dict[str, MarketProcessor] = {}
    rows = 0
    for start in range(0, len(lines), batch_lines):
        routed = route_lines(lines[start : start + batch_lines])
        out = SinkBatch()
        for market_id, changes in routed.by_market.items():
            processor = processors.get(market_id)
            if processor is None:
                processor = processors[market_id] = MarketProcessor(
                    market_id, keep_deltas=keep_deltas
                )
            processor.process(changes, out)
        rows += len(out.runner_ticks) + len(out.market_ticks) + len(out.windows)
    out = SinkBatch()
    for processor in processors.values():
        processor.finish(out)
    return rows + len(out.windows)


def best_seconds(run, repeat: int) -> float:
    """Least CPU time of `repeat` runs: on a shared machine wall time measures the neighbours."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--deltas", action="store_true", help="keep ladder deltas too")
    parser.add_argument("--batch-lines", type=int, default=BATCH_LINES)
    parser.add_argument(
        "--gc-threshold", type=int, help="first-generation threshold of the collector"
    )
    args = parser.parse_args()
    if args.gc_threshold:
        gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
    paths = args.files or [SHARED_BETFAIR / name for name in DEFAULT_FILES]

    print(f"{'file':<22}{'lines':>8}{'orjson/s':>12}{'operators/s':>13}{'ratio':>8}")
    total_lines = total_orjson = total_operators = 0.0
    for path in paths:
        lines = load(path)
        orjson_s = best_seconds(lambda lines=lines: run_orjson(lines), args.repeat)
        operators_s = best_seconds(
            lambda lines=lines: run_operators(lines, args.deltas, args.batch_lines), args.repeat
        )
        total_lines += len(lines)
        total_orjson += orjson_s
        total_operators += operators_s
        print(
            f"{path.name:<22}{len(lines):>8}{len(lines) / orjson_s:>12,.0f}"
            f"{len(lines) / operators_s:>13,.0f}{operators_s / orjson_s:>8.1f}"
        )
    print(
        f"{'all':<22}{total_lines:>8.0f}{total_lines / total_orjson:>12,.0f}"
        f"{total_lines / total_operators:>13,.0f}{total_operators / total_orjson:>8.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
