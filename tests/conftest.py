"""Fixtures for the whole suite: a clean environment, a working directory per test, and the
contract check on every emulator the tests start (a violation fails the test that caused it)."""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulkbatch.emulator.contract import ENV_CHECK, ENV_LOG, drain_violations
from tests.support import CHECKED_PIDS, EmulatorProcess

# Never the developer's own campaign registry or once-per ledger, even in fixtures wider than
# a test (each test then gets its own directory, below).
# Removed at the end of this process's session (below).
DATA_DIR = Path(tempfile.mkdtemp(prefix="bulkbatch-test-data-"))
os.environ["BULKBATCH_DATA_DIR"] = str(DATA_DIR)

# Every emulator started by the suite validates its responses against the vendored spec:
# in-process ones (``bulkbatch.Emulator``, ``send(emulator=True)``, tests/emulator fixtures)
# read the default of ``check_contract`` from ENV_CHECK, and so do ``bulkbatch emulator`` and
# ``bulkbatch send --emulator`` child processes, which inherit the environment. Each
# violation is recorded in-process (``drain_violations``) and appended to ENV_LOG by any
# process, so ``_contract_clean`` below can fail the test that caused it.
os.environ[ENV_CHECK] = "1"
_fd, _log = tempfile.mkstemp(prefix="bulkbatch-contract-", suffix=".jsonl")
os.close(_fd)
os.environ[ENV_LOG] = _log
CONTRACT_LOG = Path(_log)


def _logged_since(offset: int) -> list[dict[str, Any]]:
    """Violations other processes appended to the log after ``offset`` (this process's own
    are drained in memory; emulator processes whose stats ``EmulatorProcess`` checked at
    stop are reported there)."""
    with CONTRACT_LOG.open("rb") as f:
        f.seek(offset)
        records = [orjson.loads(line) for line in f.read().splitlines() if line.strip()]
    skip = CHECKED_PIDS | {os.getpid()}
    return [r for r in records if r.get("pid") not in skip]


@pytest.fixture(autouse=True)
def _contract_clean() -> Iterator[None]:
    """Fail the test if any emulator answered it with a response the spec does not allow.

    Autouse and defined here, so it is torn down after every other function fixture (the
    emulators they start are stopped by then). A test that provokes a violation on purpose
    drains it itself (``bulkbatch.emulator.contract.drain_violations()``)."""
    offset = CONTRACT_LOG.stat().st_size
    yield
    found = drain_violations() + _logged_since(offset)
    if found:
        lines = "\n".join(
            f"  {v['operation']} -> {v['status']} ({v.get('flavor')}): {v['error']}"
            for v in found[:20]
        )
        pytest.fail(
            f"{len(found)} emulator response(s) violate courier-openapi.yaml:\n{lines}",
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def _gc_as_found() -> Iterator[None]:
    """Put the collector back as each test found it: ``bulkbatch emulator`` tunes its own
    process's (``emulator.cli.tune_gc``), and a test that runs the command in-process
    (``CliRunner``) would otherwise leave the worker tuned for the tests after it."""
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    yield
    gc.set_threshold(*threshold)
    if gc.get_freeze_count() != frozen:
        gc.unfreeze()


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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """This process's own temp files go (tests/test_suite_hygiene.py)."""
    CONTRACT_LOG.unlink(missing_ok=True)
    shutil.rmtree(DATA_DIR, ignore_errors=True)
