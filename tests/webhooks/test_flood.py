"""The receiver as its own process under a flood: right final state; SIGKILL loses no ack."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from bulkbatch.webhooks import delivery_outcomes
from tests.webhooks.helpers import PATH, ReceiverProcess, message_event, signed_headers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

T0 = 1_764_000_000_000
LIFECYCLES = [
    ["ENQUEUED", "SENT", "DELIVERED", "OPENED", "CLICKED"],
    ["ENQUEUED", "SENT", "DELIVERED", "OPENED"],
    ["ENQUEUED", "SENT", "DELIVERED"],
    ["ENQUEUED", "SENT", "UNDELIVERABLE"],
    ["ENQUEUED", "UNROUTABLE"],
    ["ENQUEUED", "CANCELED"],
]
STAMPS = {"SENT": "sent", "DELIVERED": "delivered", "OPENED": "opened", "CLICKED": "clicked"}


def flood(n_messages: int, n_events: int, seed: int) -> tuple[list[bytes], dict[str, str]]:
    rng = random.Random(seed)
    bodies: list[bytes] = []
    expected: dict[str, str] = {}
    for m in range(n_messages):
        mid = f"1-{m:08x}-flood"
        life = LIFECYCLES[m % len(LIFECYCLES)]
        expected[mid] = life[-1]
        data: dict[str, object] = {"enqueued": T0 + m}
        for i, status in enumerate(life):
            if status in STAMPS:
                data[STAMPS[status]] = T0 + m + 1000 * (i + 1)
            bodies.append(message_event(mid, status, **data))
    while len(bodies) < n_events:  # duplicates (Courier retries)
        bodies.append(rng.choice(bodies))
    rng.shuffle(bodies)
    return bodies, expected


async def send_all(
    url: str,
    bodies: list[bytes],
    senders: int,
    acked: list[bytes] | None = None,
    reached: tuple[int, asyncio.Event] | None = None,
) -> int:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    ok = 0

    async def sender() -> None:
        nonlocal ok
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while not queue.empty():
                body = queue.get_nowait()
                try:
                    r = await client.post(PATH, content=body, headers=signed_headers(body))
                except httpx.TransportError:
                    if acked is not None:  # the receiver was killed
                        return
                    raise
                if r.status_code == 200:
                    ok += 1
                    if acked is not None:
                        acked.append(body)
                    if reached is not None and ok == reached[0]:
                        reached[1].set()

    await asyncio.gather(*(sender() for _ in range(senders)))
    return ok


@pytest.mark.timeout(240)
def test_flood_with_duplicates_in_any_order_ends_in_the_right_state(tmp_path: Path) -> None:
    store = tmp_path / "webhooks.sqlite"
    bodies, expected = flood(2000, 20_000, seed=17)
    with ReceiverProcess(store) as rx:
        ok = asyncio.run(send_all(rx.url, bodies, senders=16))
        assert ok == len(bodies)
        # readable while the receiver runs
        table = delivery_outcomes(store).read_all()
    got = dict(
        zip(table["message_id"].to_pylist(), table["delivery_status"].to_pylist(), strict=True)
    )
    assert got == expected
    counts = dict(zip(table["message_id"].to_pylist(), table["events"].to_pylist(), strict=True))
    assert sum(counts.values()) == 20_000
    delivered = {
        m
        for m, d in zip(
            table["message_id"].to_pylist(), table["delivered_at"].to_pylist(), strict=True
        )
        if d
    }
    assert delivered == {m for m, s in expected.items() if s in ("DELIVERED", "OPENED", "CLICKED")}


@pytest.mark.timeout(240)
def test_sigkill_mid_flood_loses_no_acknowledged_event(tmp_path: Path) -> None:
    store = tmp_path / "webhooks.sqlite"
    bodies = [
        message_event(f"1-kill-{i:06d}", "DELIVERED", delivered=T0 + i) for i in range(60_000)
    ]
    acked: list[bytes] = []
    rx = ReceiverProcess(store).start()
    try:

        async def flood_then_kill() -> None:
            halfway = asyncio.Event()
            task = asyncio.create_task(
                send_all(rx.url, bodies, senders=16, acked=acked, reached=(3000, halfway))
            )
            await halfway.wait()
            rx.kill()
            await task

        asyncio.run(flood_then_kill())
    finally:
        rx.stop()
    assert 3000 <= len(acked) < len(bodies)
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        present = {row[0] for row in conn.execute("SELECT message_id FROM events")}
        folded = {row[0] for row in conn.execute("SELECT message_id FROM messages")}
    ids = {b.split(b'"id":"')[1].split(b'"')[0].decode() for b in acked}
    assert ids <= present
    assert ids <= folded
    # the store reopens for writing and serving, and export works
    with ReceiverProcess(store) as again:
        body = message_event("after", "SENT")
        assert httpx.post(again.url + PATH, content=body, headers=signed_headers(body)).is_success
    from bulkbatch.webhooks import export_events

    export_events(store, tmp_path / "events.parquet")
    assert pq.read_table(tmp_path / "events.parquet").num_rows == len(present) + 1
