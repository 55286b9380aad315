"""Tick-to-database latency and throughput through the real broker on loopback.

Needs the local services (`velo services up`). For 1 and 2 worker processes:
1. latency: lines of real PRO files are published at `--rate` lines/s (a busy racing day is a
   few thousand per second) while `velo worker` consumes them; a benchmark-only trigger on
   `market_ticks` sends NOTIFY per row, which PostgreSQL delivers at commit, so
   latency = commit notification received − the producer's send time of that line;
2. throughput: the topic is pre-loaded with `--lines` lines and the worker drains it;
   rate = lines / (last commit − first commit).
Prints p50/p99 latency, throughput and the 2-process speed-up against the issue's goals,
with the machine-wide busy cores while one process drains the topic (`bench.cpu`): the
speed-up more processes can give on this machine is at most cores / that.

    python -m bench.latency [--rate 3000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bench.cpu import CpuMeter, cores_online
from connectors.database import create_scratch_database, drop_database
from connectors.services import services_database_url
from connectors.settings import get_settings
from connectors.stream_files import read_lines
from sql.migrate import upgrade

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_BETFAIR = PROJECT_ROOT.parent / "shared" / "data" / "betfair"
FILES = ["1.127236622.bz2", "1-206064380.bz2", "1.185781277.bz2", "1.205822330.bz2"]
WARM_UP_SECONDS = 3.0
"""The steady-state p99 leaves out lines sent in the first seconds (connections, partitions)."""
NOTIFY_TRIGGER = """
create function bench_notify() returns trigger language plpgsql as $$
begin perform pg_notify('velo_bench', new.market_id || ' ' || new.seq); return null; end $$;
create trigger bench_notify after insert on market_ticks
  for each row execute function bench_notify();
"""


def load_lines() -> list[tuple[str, bytes]]:
    """(market id, line) of every line of the files, interleaved market by market."""
    per_file = []
    for name in FILES:
        lines = []
        for _, raw in read_lines(SHARED_BETFAIR / name):
            message = orjson.loads(raw)
            lines.append((message["mc"][0]["id"], raw))
        per_file.append(lines)
    merged: list[tuple[str, bytes]] = []
    for index in range(max(len(lines) for lines in per_file)):
        merged.extend(lines[index] for lines in per_file if index < len(lines))
    return merged


def make_topic(bootstrap: str, partitions: int) -> str:
    name = f"bench.mcm.{time.time_ns()}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[
        name
    ].result(30)
    return name


def start_workers(processes: int, topic: str, database_url: str, idle_seconds: float) -> list:
    settings = get_settings()
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "VELO_TOPIC_MCM": topic,
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
    }
    addresses = ";".join(f"127.0.0.1:{2101 + i}" for i in range(processes))
    workers = []
    for index in range(processes):
        cluster = ["-i", str(index), "-a", addresses] if processes > 1 else []
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cli.main",
                    "worker",
                    "--exit-when-idle",
                    str(idle_seconds),
                    "--snapshot-interval",
                    "30",
                    *cluster,
                ],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    return workers


class CommitListener(threading.Thread):
    """Receives one NOTIFY per committed market tick and stamps its arrival time.

    Market ticks are written only when the market's values change, so not every line has one:
    latency is measured over the lines that do.
    """

    def __init__(self, database_url: str) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(database_url, autocommit=True)
        self.conn.execute("listen velo_bench")
        self.arrivals: dict[tuple[str, int], float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            select.select([self.conn.fileno()], [], [], 0.2)
            for notify in self.conn.notifies(timeout=0, stop_after=0):
                market_id, seq = notify.payload.split()
                self.arrivals.setdefault((market_id, int(seq)), time.perf_counter())


def run_case(
    lines: list[tuple[str, bytes]], processes: int, rate: float | None, meter: CpuMeter
) -> dict:
    settings = get_settings()
    server = services_database_url(settings)
    database_url = create_scratch_database(server, prefix="velo_bench")
    try:
        upgrade(database_url)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(NOTIFY_TRIGGER)
        topic = make_topic(settings.kafka_bootstrap, 4)
        producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "linger.ms": 0,
                "enable.idempotence": True,
                "acks": "all",
            }
        )
        listener = CommitListener(database_url)
        listener.start()
        sent: dict[tuple[str, int], float] = {}
        seq: dict[str, int] = {}
        if rate is None:  # throughput: pre-load, then drain
            for market_id, raw in lines:
                producer.produce(topic, key=market_id.encode(), value=raw)
                producer.poll(0)
            producer.flush(60)
            workers = start_workers(processes, topic, database_url, idle_seconds=5)
        else:  # latency: workers up first, then paced publishing
            workers = start_workers(processes, topic, database_url, idle_seconds=5)
            # A live producer has its topic's metadata long before a race: fetch it now, or
            # the first half second of lines waits for it and is measured as worker latency.
            producer.list_topics(topic, timeout=10)
            time.sleep(6)  # let the workers connect and assign partitions
            interval = 1.0 / rate
            next_send = time.perf_counter()
            for market_id, raw in lines:
                seq[market_id] = seq.get(market_id, 0) + 1
                now = time.perf_counter()
                if next_send > now:
                    time.sleep(next_send - now)
                sent[(market_id, seq[market_id])] = time.perf_counter()
                producer.produce(topic, key=market_id.encode(), value=raw)
                producer.poll(0)
                next_send += interval
            producer.flush(60)
        for worker in workers:
            worker.wait(600)
        time.sleep(1.0)  # the last commits' notifications
        listener.stop.set()
        listener.join(5)
        arrivals = listener.arrivals
        if rate is None:
            first, last = min(arrivals.values()), max(arrivals.values())
            return {
                "lines": len(lines),
                "throughput": len(lines) / (last - first),
                "busy_cores": meter.busy_cores(first, last),
            }
        keys = [key for key in sent if key in arrivals]
        latencies = np.array([arrivals[key] - sent[key] for key in keys])
        start = min(sent.values())
        steady = np.array(
            [arrivals[key] - sent[key] for key in keys if sent[key] - start >= WARM_UP_SECONDS]
        )
        return {
            "lines": len(latencies),
            "p50_ms": float(np.percentile(latencies, 50) * 1000),
            "p99_ms": float(np.percentile(latencies, 99) * 1000),
            "steady_p99_ms": float(np.percentile(steady, 99) * 1000),
            "max_ms": float(latencies.max() * 1000),
        }
    finally:
        drop_database(database_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=3000.0, help="lines/s for the latency run")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the latency run")
    args = parser.parse_args()
    lines = load_lines()
    paced = lines[: int(args.rate * args.seconds)]
    results = {}
    with CpuMeter() as meter:
        for processes in (1, 2):
            latency = run_case(paced, processes, args.rate, meter)
            throughput = run_case(lines, processes, None, meter)
            results[processes] = (latency, throughput)
    for processes, (latency, throughput) in results.items():
        print(
            f"{processes} worker process(es): latency at {args.rate:,.0f} lines/s over "
            f"{latency['lines']:,} lines p50 {latency['p50_ms']:.1f} ms, "
            f"p99 {latency['p99_ms']:.1f} ms (goal < 20 ms), after {WARM_UP_SECONDS:.0f} s "
            f"{latency['steady_p99_ms']:.1f} ms, max {latency['max_ms']:.0f} ms; throughput "
            f"{throughput['throughput']:,.0f} lines/s over {throughput['lines']:,} lines "
            f"(goal ≥ 50,000) with {throughput['busy_cores']:.2f} of {cores_online()} cores busy"
        )
    speedup = results[2][1]["throughput"] / results[1][1]["throughput"]
    bound = cores_online() / results[1][1]["busy_cores"]
    print(
        f"2 processes / 1 process throughput: {speedup:.2f}× (goal ≥ 1.7×); on this machine "
        f"at most {bound:.2f}× ({cores_online()} cores / the cores one process keeps busy)"
    )


if __name__ == "__main__":
    main()
