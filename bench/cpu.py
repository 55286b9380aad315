"""Machine-wide CPU accounting for the benchmarks.

The dataflow's cost is spread over processes we do not own (PostgreSQL backends, the Kafka
broker), so per-process timers miss most of it. `/proc/stat` counts every core's busy time;
sampling it around a run gives the core-seconds the whole machine spent, which bounds what
more processes or threads could gain on this machine.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

SAMPLE_SECONDS = 0.02


def _busy_and_total() -> tuple[int, int]:
    """Busy and total jiffies of all cores since boot (idle and iowait count as not busy)."""
    with open("/proc/stat", "rb") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values)
    return total - idle, total


@dataclass
class CpuMeter:
    """Samples machine-wide CPU use in a thread; `busy_cores(start, end)` over any window."""

    samples: list[tuple[float, int, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> CpuMeter:
        self._thread = threading.Thread(target=self._run, daemon=True, name="cpu-meter")
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), *_busy_and_total()))
            time.sleep(SAMPLE_SECONDS)
        self.samples.append((time.perf_counter(), *_busy_and_total()))

    def busy_cores(self, start: float, end: float) -> float:
        """Average busy cores between two `time.perf_counter()` instants (sample resolution)."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            raise ValueError("window shorter than the sampling interval")
        first, last = inside[0], inside[-1]
        total = last[2] - first[2]
        return cores_online() * (last[1] - first[1]) / total if total else 0.0

    def core_seconds(self, start: float, end: float) -> float:
        """Busy core-seconds of the whole machine between two `time.perf_counter()` instants."""
        return self.busy_cores(start, end) * (end - start)


def cores_online() -> int:
    """Cores `/proc/stat` sums over (its totals are per machine, not per process)."""
    return os.cpu_count() or 1
