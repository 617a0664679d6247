"""Reads run wider than writes while the server keeps up (ReadGate), and the pool's cheaper
idle-connection check still notices a server that closed a kept-alive connection."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import anyio
import httpx
import pytest

from bulkbatch.client import transport
from bulkbatch.client.concurrency import ReadGate
from bulkbatch.client.courier import CourierClient
from bulkbatch.config import Settings

pytestmark = pytest.mark.anyio


def _round(gate: ReadGate, latency: float, *, throttled: bool = False) -> None:
    for _ in range(gate.width):
        gate.record(latency, throttled=throttled)


def test_the_gate_widens_while_latency_holds_up_to_its_limit() -> None:
    gate = ReadGate(4, 16)
    for _ in range(20):
        _round(gate, 0.15)
    assert gate.width == 16 and gate.peak == 16 and gate.cuts == 0


def test_a_throttled_read_narrows_the_gate_once_per_round() -> None:
    gate = ReadGate(16, 64)
    gate.record(0.1, throttled=True)
    assert gate.width == 12
    for _ in range(5):  # the rest of the burst: reads sent before the cut
        gate.record(0.1, throttled=True)
    assert gate.width == 12 and gate.cuts == 1
    _round(gate, 0.1)  # the round after the cut only observes
    assert gate.width == 12
    _round(gate, 0.1)
    assert gate.width == 15


def test_rising_latency_narrows_the_gate() -> None:
    gate = ReadGate(8, 64)
    _round(gate, 0.1)
    assert gate.width == 10
    for _ in range(3):
        _round(gate, 0.5)  # queueing at the server: five times the base latency
    assert gate.width < 10 and gate.cuts >= 1


def test_the_gate_never_goes_below_its_floor() -> None:
    gate = ReadGate(4, 8, floor=2)
    for _ in range(10):
        gate.record(0.1, throttled=True)
        _round(gate, 0.1)  # the round after a cut
    assert gate.width == 2


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="floor <= start <= limit"):
        ReadGate(8, 4)


async def test_no_more_reads_than_the_width_are_in_flight() -> None:
    gate = ReadGate(2, 4)
    most = 0

    async def read() -> None:
        nonlocal most
        async with gate.slot():
            most = max(most, gate.in_flight)
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(read)
    assert most == 2 and gate.in_flight == 0


async def test_the_client_puts_reads_through_the_gate_and_429s_narrow_it() -> None:
    in_flight = most = 0
    throttle = {"left": 1}

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        if request.method == "GET" and throttle["left"]:
            throttle["left"] -= 1
            return httpx.Response(429, json={"message": "slow down"})
        in_flight += 1
        most = max(most, in_flight)
        await anyio.sleep(0.005)
        in_flight -= 1
        if request.method == "GET":
            job = {
                "status": "COMPLETED",
                "definition": {},
                "enqueued": 1,
                "failures": 0,
                "received": 1,
            }
            return httpx.Response(200, json={"job": job})
        return httpx.Response(200, json={"jobId": "j"})

    settings = Settings(base_url="https://api.example.com", api_key="k", concurrency=4, rate=1e5)
    client = CourierClient(settings, transport=httpx.MockTransport(handler), read_limit=8)
    async with client:
        assert client.reads.width == 4 and client.reads.limit == 8

        async def poll() -> None:
            await client.retrieve_job("j")

        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(poll)
        assert client.reads.cuts == 1
        assert 1 <= most <= client.reads.peak <= 8
        await client.create_job({"event": "e"})  # writes do not take a read slot
        assert client.reads.in_flight == 0


# -- the pool's idle check -------------------------------------------------------------------


@pytest.fixture
def closing_server() -> Iterator[str]:
    """Answers each connection's first request, then closes it (no ``Connection: close``)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    thread.join()
    srv.close()


async def test_a_connection_the_server_closed_is_not_reused(closing_server: str) -> None:
    checks: list[bool] = []
    readable = transport._Readable.__call__

    def spy(self: transport._Readable) -> bool:
        checks.append(readable(self))
        return checks[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transport._Readable, "__call__", spy)
        async with httpx.AsyncClient(base_url=closing_server) as http:
            assert transport.speed_up(http)
            assert not transport.speed_up(http)  # once is enough
            for _ in range(3):
                await anyio.sleep(0.05)  # the server has closed the idle connection
                assert (await http.get("/")).text == "ok"
    assert True in checks  # the closed connection was seen and dropped, not reused


async def test_other_transports_are_left_alone() -> None:
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    async with httpx.AsyncClient(transport=mock) as http:
        assert not transport.speed_up(http)
