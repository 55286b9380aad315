"""`velo worker` as a child process, for the tests that run it against real Kafka."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen:
    """`velo worker ARGS` started with `env`; its output (stdout and stderr) is piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker", *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def finish_worker(process: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for a started worker; it must exit 0. Returns its output."""
    output, _ = process.communicate(timeout=timeout)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-3000:]
    return text
