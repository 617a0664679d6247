"""The emulator handles one request per event-loop turn (``handlers.Turns``).

A wave of requests that wake together (their ``latency_ms`` sleeps end in the same turn)
used to be handled back to back: the loop polled no socket until the whole wave was done,
so the clients' next requests queued in the kernel, arrived together and slept in step, and
the loop idled through every latency sleep (16 ingests in flight at 150 ms: 34-37 batches/s
where the loop could do 55). The test drives the app in-process and records the loop's
turns next to the handlers.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from typing import Any

import httpx
import pytest

from bulkbatch.emulator import create_app
from bulkbatch.emulator.handlers import ApiEndpoint, Turns


def _wave_events(monkeypatch: pytest.MonkeyPatch, requests: int) -> list[str]:
    app = create_app(faults="latency_ms=20", flavor="current", progression="immediate")
    original = ApiEndpoint._handle
    events: list[str] = []

    def handle(self: ApiEndpoint, scope: Any, raw: bytes) -> Any:
        events.append("handle")
        time.sleep(0.005)  # a handler's synchronous work
        return original(self, scope, raw)

    monkeypatch.setattr(ApiEndpoint, "_handle", handle)

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as client:
            job = (await client.post("/bulk", json={"message": {"event": "welcome"}})).json()
            events.clear()
            stop = asyncio.Event()

            async def ticker() -> None:
                while not stop.is_set():
                    events.append("turn")
                    await asyncio.sleep(0)

            async def block_past_the_sleeps() -> None:
                await asyncio.sleep(0.005)
                # hold the loop on purpose: every request's 20 ms sleep ends meanwhile
                time.sleep(0.05)  # noqa: ASYNC251

            tick = asyncio.create_task(ticker())
            await asyncio.gather(
                block_past_the_sleeps(),
                *(client.get(f"/bulk/{job['jobId']}") for _ in range(requests)),
            )
            stop.set()
            await tick

    asyncio.run(main())
    app.state.emulator.close()
    return events


def test_the_loop_gets_a_turn_between_two_requests_of_a_wave(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = _wave_events(monkeypatch, requests=4)
    handled = [i for i, event in enumerate(events) if event == "handle"]
    assert len(handled) == 4
    back_to_back = [(a, b) for a, b in itertools.pairwise(handled) if b == a + 1]
    assert back_to_back == []


def test_turns_run_work_in_the_order_it_became_ready() -> None:
    order: list[int] = []

    def work(i: int) -> int:
        order.append(i)
        return i

    async def main() -> None:
        turns = Turns()
        results = await asyncio.gather(*(turns.run(functools.partial(work, i)) for i in range(5)))
        assert results == list(range(5))

    asyncio.run(main())
    asyncio.run(main())  # a second loop gets its own lock
    assert order == list(range(5)) * 2
