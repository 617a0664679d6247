"""Fixtures for the whole suite: a clean environment and a working directory per test."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import EmulatorProcess

# Never the developer's own campaign registry or once-per ledger, even in fixtures wider than
# a test (each test then gets its own directory, below).
os.environ["BULKBATCH_DATA_DIR"] = tempfile.mkdtemp(prefix="bulkbatch-test-data-")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never depend on (or leak) the developer's Courier settings, and each test has
    its own per-user data directory (campaign registry, default once-per ledger)."""
    for name in ("COURIER_API_KEY", "COURIER_BASE_URL", "BULKBATCH_EMULATOR_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BULKBATCH_DATA_DIR", str(tmp_path_factory.mktemp("bulkbatch-data")))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a fresh directory, so default ``runs/`` folders land in tmp."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def emulator_process(tmp_path: Path) -> Iterator[EmulatorProcess]:
    """A real ``bulkbatch emulator`` process (polls:2, key required, no faults)."""
    with EmulatorProcess() as emu:
        yield emu
