"""Fixtures: real emulators on a free loopback port, plus SDK and httpx clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from bulkbatch.emulator import Emulator
from tests.emulator.emulator_helpers import API_KEY


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., Emulator]]:
    """Start emulators with any options; all are stopped at teardown.

    ``flavor`` defaults to ``"tutorial"`` here (not the emulator's ``"current"``): the suites
    written before the flavors assert the tutorial's 201 / 200 ``{total, errors}`` / 202;
    ``test_current_flavor.py`` and the newer tests pass ``flavor="current"``.
    """
    started: list[Emulator] = []

    def make(**kwargs: Any) -> Emulator:
        kwargs.setdefault("flavor", "tutorial")
        emu = Emulator(**kwargs).start()
        started.append(emu)
        return emu

    yield make
    for emu in reversed(started):
        emu.stop()


@pytest.fixture
def emu(make_emulator: Callable[..., Emulator]) -> Emulator:
    """The default emulator: auth on, polls:2 progression, no faults."""
    return make_emulator(api_key=API_KEY)


@pytest.fixture
def http(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=emu.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
    ) as client:
        yield client


@pytest.fixture
def sdk(emu: Emulator) -> Any:
    from courier import Courier

    client = Courier(api_key=API_KEY, base_url=emu.url, max_retries=0)
    yield client
    client.close()
