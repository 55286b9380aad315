"""Replay throughput: our full dataflow against orjson, betfairlightweight and flumine.

Runs in one process, one after another, on the same decompressed PRO horse-racing files:
1. bare orjson parsing of every line (the floor);
2. betfairlightweight's historical generator stream with `lightweight=True`;
3. flumine's simulation with a no-op strategy;
4. our dataflow: parse → market state → windows → PostgreSQL sink (embedded server).
Prints lines/s for each and our ratios against the issue's goals.

Then it splits our cost in two, measured in core-seconds of the whole machine (PostgreSQL's
backends included, see `bench.cpu`): the same dataflow with a sink that drops its batches, and
the database writes of those batches alone. Their sum over this machine's cores is the fastest
the full dataflow could run here even if both halves overlapped perfectly; it is printed as a
ceiling next to the goals.

    make bench            # installs flumine into the venv, then runs this
    python -m bench.replay [--repeat N] [FILES...]
"""

from __future__ import annotations

import argparse
import bz2
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from bench.cpu import CpuMeter, cores_online

SHARED_BETFAIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "betfair"
PRO_HORSE_RACING = [
    "1.127236622.bz2",
    "1-206064380.bz2",
    "1.185781277.bz2",
    "SELF-1.181223995",
    "1.205822330.bz2",
]


def decompressed_copies(names: list[Path], target: Path) -> list[Path]:
    """Plain-text copies: betfairlightweight and flumine read plain files only."""
    copies = []
    for source in names:
        plain = target / source.name.removesuffix(".bz2")
        data = source.read_bytes()
        plain.write_bytes(bz2.decompress(data) if source.suffix == ".bz2" else data)
        copies.append(plain)
    return copies


def count_lines(paths: list[Path]) -> int:
    return sum(sum(1 for line in p.open("rb") if line.strip()) for p in paths)


def run_orjson(paths: list[Path]) -> None:
    for path in paths:
        with path.open("rb") as handle:
            for line in handle:
                orjson.loads(line)


def run_betfairlightweight(paths: list[Path]) -> None:
    import betfairlightweight
    from betfairlightweight import StreamListener

    client = betfairlightweight.APIClient("user", "password", "app-key")
    for path in paths:
        listener = StreamListener(max_latency=None, lightweight=True)
        stream = client.streaming.create_historical_generator_stream(
            file_path=str(path), listener=listener
        )
        for _ in stream.get_generator()():
            pass


def run_flumine(paths: list[Path]) -> None:
    from flumine import BaseStrategy, FlumineSimulation, clients
    from flumine.streams.betfairhistoricalstream import BetfairHistoricalStream

    class NoOp(BaseStrategy):
        def check_market_book(self, market, market_book) -> bool:
            return False

        def process_market_book(self, market, market_book) -> None:
            return None

    logging.getLogger("flumine").setLevel(logging.CRITICAL)
    framework = FlumineSimulation(client=clients.SimulatedClient())
    streams = [
        BetfairHistoricalStream(str(path), listener_kwargs={"inplay": None}) for path in paths
    ]
    framework.add_strategy(NoOp(streams=streams))
    framework.run()


class _KeepingWriter:
    """A sink writer that stores nothing: keeps the batches (to write them alone later) or
    drops them (to time the dataflow without a database)."""

    def __init__(self, kept: list | None) -> None:
        self._kept = kept

    def write(self, batch: object) -> dict[str, int]:
        if self._kept is not None:
            self._kept.append(batch)
        return {}

    def close(self) -> None:
        return None


def run_dataflow_without_database(paths: list[Path], kept: list | None = None) -> None:
    from bytewax.run import cli_main

    from cli.runtime import tune_gc_for_streaming
    from connectors.bytewax_io import StreamFileSource
    from flows.market import build_market_flow

    tune_gc_for_streaming()
    flow = build_market_flow(
        StreamFileSource(paths), lambda: _KeepingWriter(kept), overlap_writes=True
    )
    cli_main(flow, workers_per_process=1)


def write_batches_alone(batches: list, database_url: str) -> None:
    from connectors.postgres_sink import ConcurrentPostgresWriter

    with ConcurrentPostgresWriter(database_url, ensure_schema=False) as writer:
        for batch in batches:
            writer.write(batch)


def run_dataflow(paths: list[Path], database_url: str) -> None:
    from cli.replay import replay
    from cli.runtime import tune_gc_for_streaming

    tune_gc_for_streaming()  # as `velo replay` and `velo worker` run
    summary = replay(paths, database_url)
    if summary.messages == 0:
        raise RuntimeError("the dataflow processed nothing")


Window = tuple[float, float]
"""`time.perf_counter()` at the start and the end of a measured run."""


def window(work: Callable[[], None]) -> Window:
    """`time.perf_counter()` before and after `work`."""
    started = time.perf_counter()
    work()
    return started, time.perf_counter()


def fastest(run: Callable[[], Window], repeat: int) -> Window:
    """The shortest window of `repeat` calls of `run`."""
    return min((run() for _ in range(repeat)), key=lambda w: w[1] - w[0])


def report(label: str, lines: int, measured: Window) -> float:
    """Lines/s of one measured run, printed."""
    seconds = measured[1] - measured[0]
    rate = lines / seconds
    print(f"{label:<42} {seconds:8.3f} s  {rate:>12,.0f} lines/s")
    return rate


def timed(label: str, lines: int, run: Callable[[], Window], repeat: int) -> float:
    """Lines/s of the fastest of `repeat` calls of `run`, printed."""
    return report(label, lines, fastest(run, repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs per contender")
    args = parser.parse_args()
    sources = args.files or [SHARED_BETFAIR / name for name in PRO_HORSE_RACING]
    missing = [p for p in sources if not p.exists()]
    if missing:
        raise SystemExit(f"missing input files: {missing}")

    from connectors.database import create_scratch_database, drop_database, start_embedded_server
    from sql.migrate import upgrade

    with tempfile.TemporaryDirectory(prefix="velo-bench-") as folder:
        work = Path(folder)
        work.chmod(0o755)
        paths = decompressed_copies(sources, work)
        lines = count_lines(paths)
        server = start_embedded_server(work / "pg", keep_running=False)
        print(f"{len(paths)} files, {lines:,} lines; best of {args.repeat}")
        orjson_rate = timed(
            "orjson parsing alone", lines, lambda: window(lambda: run_orjson(paths)), args.repeat
        )
        bflw_rate = timed(
            "betfairlightweight generator (lightweight)",
            lines,
            lambda: window(lambda: run_betfairlightweight(paths)),
            args.repeat,
        )
        flumine_rate = timed(
            "flumine simulation, no-op strategy",
            lines,
            lambda: window(lambda: run_flumine(paths)),
            args.repeat,
        )

        def ours() -> Window:
            """One replay into a new database, migrated before the clock starts (a deployed
            system has its schema; `velo db upgrade` is not part of ingesting)."""
            database_url = create_scratch_database(server.get_uri())
            try:
                upgrade(database_url)
                return window(lambda: run_dataflow(paths, database_url))
            finally:
                drop_database(database_url)

        with CpuMeter() as meter:
            full = fastest(ours, args.repeat)
            flow_only = fastest(
                lambda: window(lambda: run_dataflow_without_database(paths)), args.repeat
            )
            batches: list = []
            run_dataflow_without_database(paths, batches)
            database_url = create_scratch_database(server.get_uri())
            try:
                upgrade(database_url)
                writes = window(lambda: write_batches_alone(batches, database_url))
            finally:
                drop_database(database_url)
        ours_rate = report("velo dataflow (parse→state→windows→PostgreSQL)", lines, full)
        print()
        print(f"Where our time goes (busy core-seconds of all {cores_online()} cores):")
        for label, (start, end) in (
            ("full dataflow", full),
            ("dataflow, batches dropped (no database)", flow_only),
            ("its database writes alone", writes),
        ):
            used = meter.core_seconds(start, end)
            seconds = end - start
            print(
                f"  {label:<40} {seconds:7.3f} s  {used:6.2f} core-s  {used / seconds:5.2f} cores"
            )
        ceiling = (
            lines * cores_online() / (meter.core_seconds(*flow_only) + meter.core_seconds(*writes))
        )
        print(
            f"  ceiling on {cores_online()} cores (both halves perfectly overlapped): "
            f"{ceiling:,.0f} lines/s = {ceiling / flumine_rate:.1f}× flumine, "
            f"{ceiling / bflw_rate:.1f}× betfairlightweight, orjson / ceiling "
            f"{orjson_rate / ceiling:.1f}×"
        )
    print()
    print(f"velo / flumine            {ours_rate / flumine_rate:6.2f}×   (goal ≥ 10×)")
    print(f"velo / betfairlightweight {ours_rate / bflw_rate:6.2f}×   (goal ≥ 4×)")
    print(f"orjson / velo             {orjson_rate / ours_rate:6.2f}×   (goal ≤ 4×)")


if __name__ == "__main__":
    main()
