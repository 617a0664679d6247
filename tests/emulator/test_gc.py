"""The emulator's own process collects young objects rarely (``emulator.cli.tune_gc``): a
1,000-user ingest body set off ~14 collections at Python's default threshold, 14-17 % of the
process's CPU in an ingest benchmark. An emulator inside another process leaves that
process's collector alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import bulkbatch.emulator.server
from bulkbatch.emulator import Emulator, emulator_command
from bulkbatch.emulator.cli import GC_GEN0

DEFAULT = (700, 10, 10)
"""Python's own thresholds, set before each test (the suite's ``_gc_as_found`` puts back
whatever the worker had afterwards)."""


@pytest.fixture
def default_gc() -> Iterator[tuple[int, int, int]]:
    gc.set_threshold(*DEFAULT)
    yield DEFAULT


def test_the_emulator_command_tunes_its_process_before_serving(
    monkeypatch: pytest.MonkeyPatch, default_gc: tuple[int, int, int]
) -> None:
    assert default_gc[0] != GC_GEN0
    seen: dict[str, Any] = {}

    def fake_serve(*args: object, **kwargs: object) -> None:
        seen["threshold"] = gc.get_threshold()
        seen["frozen"] = gc.get_freeze_count()

    monkeypatch.setattr(bulkbatch.emulator.server, "serve", fake_serve)
    result = CliRunner().invoke(emulator_command, ["--port", "0"])
    assert result.exit_code == 0, result.output
    assert seen["threshold"] == (GC_GEN0, *default_gc[1:])
    assert seen["frozen"] > 0  # what was loaded before serving is out of every collection


def test_an_emulator_in_this_process_leaves_its_collector_alone(
    default_gc: tuple[int, int, int],
) -> None:
    frozen = gc.get_freeze_count()
    with Emulator(progression="immediate") as emu:
        created = httpx.post(f"{emu.url}/bulk", json={"message": {"event": "welcome"}})
        assert created.status_code == 200
    assert gc.get_threshold() == default_gc
    assert gc.get_freeze_count() == frozen
