"""Reads run wider than writes while the server keeps up (ReadGate), and the pool's cheaper
idle-connection check still notices a server that closed a kept-alive connection."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import httpcore
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


async def _grant_order(width: int, priorities: list[int]) -> list[int]:
    """Indexes of ``priorities`` in the order their reads got a slot, queued (in list
    order) behind ``width`` reads holding every slot, which then finish together."""
    gate = ReadGate(width, width)
    order: list[int] = []
    for _ in range(width):
        await gate.acquire()

    async def read(i: int, priority: int) -> None:
        await gate.acquire(priority)
        order.append(i)
        await anyio.lowlevel.checkpoint()
        gate.release()

    async with anyio.create_task_group() as tg:
        for i, priority in enumerate(priorities):
            tg.start_soon(read, i, priority)
            await anyio.lowlevel.checkpoint()  # queued in this order
        assert gate.in_flight == width and not order
        for _ in range(width):
            gate.release()
    assert gate.in_flight == 0
    return order


async def test_queued_reads_get_free_slots_largest_priority_first() -> None:
    """A job's result pages ask with the pages it has left: the longest chain goes first."""
    assert await _grant_order(1, [1, 5, 3, 5, 0]) == [1, 3, 2, 0, 4]


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 4),
    priorities=st.lists(st.integers(0, 5), min_size=1, max_size=12),
)
def test_every_queued_read_gets_one_slot_by_priority_then_arrival(
    width: int, priorities: list[int]
) -> None:
    order = anyio.run(_grant_order, width, priorities)
    assert order == sorted(range(len(priorities)), key=lambda i: (-priorities[i], i))


async def test_a_read_cancelled_in_the_queue_holds_no_slot() -> None:
    gate = ReadGate(1, 1)
    await gate.acquire()
    async with anyio.create_task_group() as tg:
        tg.start_soon(gate.acquire, 3)
        await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()  # the queued read goes away without a slot
    gate.release()
    assert gate.in_flight == 0
    with anyio.fail_after(1):
        await gate.acquire()  # the slot is free, not promised to the cancelled read
    assert gate.in_flight == 1


async def test_a_read_cancelled_as_its_slot_is_granted_leaves_it_free() -> None:
    gate = ReadGate(1, 1)
    await gate.acquire()

    async def read() -> None:
        async with gate.slot():
            await anyio.sleep(10)

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        await anyio.lowlevel.checkpoint()
        gate.release()  # handed to the queued read, which has not run yet ...
        tg.cancel_scope.cancel()  # ... and is cancelled before it does
    assert gate.in_flight == 0


async def test_a_wider_gate_lets_queued_reads_in_at_once() -> None:
    gate = ReadGate(1, 4)
    await gate.acquire()
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(gate.acquire, 0)
        await anyio.lowlevel.checkpoint()
        assert gate.in_flight == 1
        for _ in range(8):  # rounds at a steady latency: the gate widens to its limit
            _round(gate, 0.1)
    assert gate.width == 4 and gate.in_flight == 4


_JOB = {"status": "COMPLETED", "definition": {}, "enqueued": 1, "failures": 0, "received": 1}
_PAGE = {"items": [], "paging": {"cursor": None, "more": False}}


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
            return httpx.Response(200, json=_PAGE)
        return httpx.Response(200, json={"jobId": "j"})

    settings = Settings(base_url="https://api.example.com", api_key="k", concurrency=4, rate=1e5)
    client = CourierClient(settings, transport=httpx.MockTransport(handler), read_limit=8)
    async with client:
        assert client.reads.width == 4 and client.reads.limit == 8

        async def page() -> None:
            await client.list_users("j")

        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(page)
        assert client.reads.cuts >= 1  # the 429 (a jittery latency may add a cut above start)
        assert client.stats.throttled == 1
        assert 1 <= most <= client.reads.peak <= 8
        await client.create_job({"event": "e"})  # writes do not take a read slot
        assert client.reads.in_flight == 0


async def test_job_status_reads_never_queue_behind_result_pages() -> None:
    """Verify, run and poll need ``GET /bulk/{job}``; pages filling every read slot must
    not hold them up (it stalled the ingest of a 1M run behind 10,000 pages)."""
    release = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/users"):
            await release.wait()
            return httpx.Response(200, json=_PAGE)
        return httpx.Response(200, json={"job": _JOB})

    settings = Settings(base_url="https://api.example.com", api_key="k", concurrency=1, rate=1e5)
    client = CourierClient(settings, transport=httpx.MockTransport(handler), read_limit=1)
    async with client, anyio.create_task_group() as tg:
        tg.start_soon(client.list_users, "j")
        await anyio.wait_all_tasks_blocked()
        assert client.reads.in_flight == client.reads.width == 1  # every read slot taken
        with anyio.fail_after(5):
            job = await client.retrieve_job("j")
        assert job.status == "COMPLETED"
        assert client.reads.in_flight == 1  # the page is still waiting
        release.set()


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


def test_latency_that_stays_high_is_the_new_normal_not_a_reason_to_narrow() -> None:
    """A busy host delays every answer alike: reads keep widening at a steady latency."""
    gate = ReadGate(16, 64)
    _round(gate, 0.15)  # one quick round, then the host gets busy and stays busy
    for _ in range(30):
        _round(gate, 0.40)
    assert gate.width == 64


def test_rising_latency_never_narrows_the_gate_below_its_start() -> None:
    """Only the server's own signal (a 429) takes reads below --concurrency."""
    gate = ReadGate(16, 64)
    for _ in range(4):
        _round(gate, 0.1)
    assert gate.width > 16
    latency = 0.1
    for _ in range(20):
        latency *= 2  # queueing that grows round after round
        _round(gate, latency)
    assert gate.width == 16 and gate.cuts >= 1
    gate.record(latency, throttled=True)
    assert gate.width == 12


# -- the pool's assignment scan --------------------------------------------------------------


class _Conn:
    """A pooled connection as the pool sees it; counts the questions it is asked."""

    asked = 0

    def __init__(self, name: str, *, idle: bool = True, closed: bool = False) -> None:
        self.name, self.idle, self.closed, self.expired = name, idle, closed, False

    def _ask(self) -> None:
        _Conn.asked += 1

    def is_closed(self) -> bool:
        self._ask()
        return self.closed

    def is_idle(self) -> bool:
        self._ask()
        return self.idle

    def is_available(self) -> bool:
        self._ask()
        return self.idle

    def has_expired(self) -> bool:
        self._ask()
        return self.expired

    def can_handle_request(self, origin: object) -> bool:
        self._ask()
        return True

    def __repr__(self) -> str:
        return self.name


def _pool(conns: list[_Conn], *, most: int) -> transport._Pool:
    pool = transport._Pool(max_connections=most)
    pool._connections = list(conns)  # type: ignore[arg-type]
    pool.create_connection = lambda origin: _Conn("new", idle=False)  # type: ignore[method-assign,assignment,return-value]
    return pool


def _queue(pool: transport._Pool, n: int = 1) -> list[object]:
    from httpcore._async.connection_pool import AsyncPoolRequest

    reqs = [AsyncPoolRequest(httpcore.Request("GET", "http://h/")) for _ in range(n)]
    pool._requests.extend(reqs)
    return reqs


async def test_a_request_gets_the_first_usable_connection_and_expired_ones_are_closed() -> None:
    busy, stale, ok, later = _Conn("busy", idle=False), _Conn("stale"), _Conn("ok"), _Conn("l")
    stale.expired = True
    gone = _Conn("gone", closed=True)
    pool = _pool([gone, busy, stale, ok, later], most=10)
    (req,) = _queue(pool)
    closing = pool._assign_requests_to_connections()
    assert req.connection is ok  # type: ignore[attr-defined]
    assert closing == [stale]
    assert pool._connections == [busy, ok, later]


async def test_a_full_pool_replaces_an_idle_connection_and_a_busy_one_makes_requests_wait() -> None:
    busy, other = _Conn("busy", idle=False), _Conn("other", idle=False)
    pool = _pool([busy, other], most=2)
    (req,) = _queue(pool)
    assert pool._assign_requests_to_connections() == []
    assert req.is_queued()  # type: ignore[attr-defined]  # every connection busy: it waits
    other.idle = True
    other.expired = True  # idle but expired: not usable, so it is replaced
    closing = pool._assign_requests_to_connections()
    assert closing == [other] and not req.is_queued()  # type: ignore[attr-defined]
    assert [c.name for c in pool._connections] == ["busy", "new"]


async def test_one_scan_asks_each_connection_a_bounded_number_of_questions() -> None:
    """httpcore recounted the whole pool for every idle connection: 84 connections cost
    ~7,000 calls per scan, twice per request."""
    for n in (10, 100):
        conns = [_Conn(f"c{i}", idle=False) for i in range(n - 1)] + [_Conn("last")]
        pool = _pool(conns, most=n)
        _queue(pool)
        _Conn.asked = 0
        pool._assign_requests_to_connections()
        assert _Conn.asked <= 4 * n


async def test_a_closed_connection_makes_room_in_a_full_pool() -> None:
    busy, gone = _Conn("busy", idle=False), _Conn("gone", idle=False, closed=True)
    pool = _pool([busy, gone], most=2)
    (req,) = _queue(pool)
    assert pool._assign_requests_to_connections() == []  # closed: dropped, not closed again
    assert not req.is_queued()  # type: ignore[attr-defined]
    assert [c.name for c in pool._connections] == ["busy", "new"]


async def test_connections_taken_out_are_closed_and_an_empty_list_costs_nothing() -> None:
    closed: list[str] = []

    class Closable(_Conn):
        async def aclose(self) -> None:
            closed.append(self.name)

    pool = _pool([], most=2)
    await pool._close_connections([])
    await pool._close_connections([Closable("a"), Closable("b")])  # type: ignore[list-item]
    assert closed == ["a", "b"]
