"""PostgreSQL sink throughput on realistic rows, per table, on the embedded and services servers.

The rows come from replaying a real Betfair recording through `MarketProcessor`, cut into one
batch per 2,000 stream lines (what the dataflow's file source hands over). For each table the
batches are written into a fresh scratch database (new rows), then written again (a replay: every
row already stored), and finally all tables together as the dataflow writes them. Prints rows/s.

    python -m bench.sink [--file PATH] [--lines-per-batch N] [--repeat N] [--no-services]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from connectors.database import (
    create_scratch_database,
    drop_database,
    start_embedded_server,
)
from connectors.postgres_sink import TABLES, ConcurrentPostgresWriter, PostgresWriter, TableBatch
from connectors.services import probe_postgres, services_database_url
from connectors.settings import get_settings
from connectors.stream_files import read_lines
from operators.market_processor import MarketProcessor, SinkBatch
from operators.stream_messages import route_lines

DEFAULT_FILE = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "betfair" / "1.127236622.bz2"
)


def recorded_batches(path: Path, lines_per_batch: int) -> list[SinkBatch]:
    """The rows the market processor emits for `path`, one SinkBatch per chunk of lines."""
    source = str(path)
    lines = [(source, number, raw) for number, raw in read_lines(path)]
    processors: dict[str, MarketProcessor] = {}
    batches = []
    for start in range(0, len(lines), lines_per_batch):
        out = SinkBatch()
        for market_id, changes in route_lines(
            lines[start : start + lines_per_batch]
        ).by_market.items():
            processors.setdefault(market_id, MarketProcessor(market_id)).process(changes, out)
        batches.append(out)
    for processor in processors.values():
        processor.finish(batches[-1])
    return batches


def only(batches: list[SinkBatch], attribute: str) -> list[TableBatch]:
    """The same batches restricted to one table (empty ones dropped)."""
    picked = [TableBatch(**{attribute: getattr(b, attribute)}) for b in batches]
    return [b for b in picked if getattr(b, attribute)]


def rows_in(batches: list) -> int:
    return sum(len(getattr(b, spec.attribute)) for b in batches for spec in TABLES)


def timed_writes(url: str, batches: list, *, concurrent: bool = False) -> float:
    """Seconds to write `batches` through one writer (connection and migration check excluded);
    `concurrent`: the flow's writer, one connection per table group."""
    with ConcurrentPostgresWriter(url) if concurrent else PostgresWriter(url) as writer:
        for single in writer.writers if concurrent else (writer,):
            single._connection()  # connect and check the schema outside the timing
        started = time.perf_counter()
        for batch in batches:
            writer.write(batch)
        return time.perf_counter() - started


def best_of(repeat: int, server_url: str, work: Callable[[str], float]) -> float:
    """Best time of `repeat` runs, each on a fresh scratch database."""
    best = float("inf")
    for _ in range(repeat):
        url = create_scratch_database(server_url, prefix="velo_bench")
        try:
            best = min(best, work(url))
        finally:
            drop_database(url)
    return best


def bench_server(label: str, server_url: str, batches: list[SinkBatch], repeat: int) -> None:
    print(f"\n{label}")
    print(f"{'table':<20}{'rows':>9}{'new rows/s':>14}{'replayed rows/s':>18}")
    for spec in TABLES:
        table_batches = only(batches, spec.attribute)
        rows = rows_in(table_batches)
        if rows < 1000:
            continue

        def new_then_replay(url: str, table_batches: list = table_batches) -> float:
            return timed_writes(url, table_batches)

        def replay(url: str, table_batches: list = table_batches) -> float:
            timed_writes(url, table_batches)
            return timed_writes(url, table_batches)

        new = best_of(repeat, server_url, new_then_replay)
        again = best_of(repeat, server_url, replay)
        print(f"{spec.table:<20}{rows:>9,}{rows / new:>14,.0f}{rows / again:>18,.0f}")
    rows = rows_in(batches)
    new = best_of(repeat, server_url, lambda url: timed_writes(url, batches))
    print(f"{'all, one connection':<20}{rows:>9,}{rows / new:>14,.0f}  ({len(batches)} batches)")
    new = best_of(repeat, server_url, lambda url: timed_writes(url, batches, concurrent=True))
    print(f"{'all (as the flow)':<20}{rows:>9,}{rows / new:>14,.0f}  (the flow's connections)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--lines-per-batch", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    parser.add_argument("--no-services", action="store_true", help="embedded server only")
    args = parser.parse_args()
    if not args.file.exists():
        raise SystemExit(f"missing input file: {args.file}")

    batches = recorded_batches(args.file, args.lines_per_batch)
    rows = rows_in(batches)
    print(f"{args.file.name}: {rows:,} rows in {len(batches)} batches; best of {args.repeat}")
    with tempfile.TemporaryDirectory(prefix="velo-bench-sink-") as folder:
        work = Path(folder)
        work.chmod(0o755)  # the embedded server runs as an unprivileged user when we are root
        server = start_embedded_server(work / "pg", keep_running=False)
        bench_server("embedded PostgreSQL", server.get_uri(), batches, args.repeat)
    if not args.no_services:
        url = services_database_url(get_settings())
        problem = probe_postgres(url)
        if problem is not None:
            print(f"\nservices PostgreSQL skipped: {problem} (start it with `velo services up`)")
            return
        bench_server("services PostgreSQL", url, batches, args.repeat)


if __name__ == "__main__":
    main()
