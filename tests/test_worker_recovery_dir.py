"""`velo worker --recovery-dir`: a directory remembers which operators wrote its state."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main as velo_main
from cli.worker import RECOVERY_OPERATORS_FILE, check_recovery_operators
from operators import native_core


def test_an_empty_directory_is_claimed_by_the_running_operators(tmp_path: Path) -> None:
    check_recovery_operators(tmp_path)
    assert (tmp_path / RECOVERY_OPERATORS_FILE).read_text() == native_core.SELECTED.name + "\n"
    check_recovery_operators(tmp_path)  # the same operators resume it


@pytest.mark.parametrize("written", ["native", "python"])
def test_state_of_the_other_operators_is_refused_before_anything_starts(
    written: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    running = "python" if written == "native" else "native"
    monkeypatch.setattr(native_core, "SELECTED", native_core.SELECTED._replace(name=running))
    (tmp_path / RECOVERY_OPERATORS_FILE).write_text(written + "\n")
    # No Kafka, database or model is touched: the refusal comes first.
    assert velo_main(["worker", "--no-model", "--recovery-dir", str(tmp_path)]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert f"holds market state of the {written} operators" in error
    assert f"this worker runs the {running} ones" in error
