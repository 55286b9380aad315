"""Shared fixtures: where the shared real data lives (skips when it is absent), and each
implementation of the market operators in turn."""

from __future__ import annotations

from pathlib import Path

import pytest

from operators.native_core import NATIVE, PYTHON, Operators

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BETFAIR_DIR = SHARED_DATA / "betfair"
HKJC_DIR = SHARED_DATA / "racing" / "hkjc"

pytest_plugins = ["tests.service_fixtures", "tests.database_fixtures"]


@pytest.fixture(scope="session")
def betfair_dir() -> Path:
    if not BETFAIR_DIR.is_dir():
        pytest.skip(f"shared Betfair data not found at {BETFAIR_DIR}")
    return BETFAIR_DIR


@pytest.fixture(scope="session")
def hkjc_dir() -> Path:
    if not HKJC_DIR.is_dir():
        pytest.skip(f"shared HKJC data not found at {HKJC_DIR}")
    return HKJC_DIR


@pytest.fixture(params=["python", "native"])
def operators(request: pytest.FixtureRequest) -> Operators:
    """Each implementation in turn; the native one only where `velo_native` is installed."""
    if request.param == "python":
        return PYTHON
    if NATIVE is None:
        pytest.skip("velo_native is not installed (build it with `make venv` where cargo exists)")
    return NATIVE
