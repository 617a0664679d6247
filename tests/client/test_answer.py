"""Answers a hostile server never finishes (``bulkbatch.client.answer``): a body that drips a
byte at a time, a body that never ends, a small gzip body that inflates without bound. Each
ends in bounded time and bounded memory with one clear line, on both of the client's paths:
aiohttp's (every direct connection) and httpx's transport (a proxy, an injected transport).

Found in round 13 of #19: a body dripping one byte every 0.3 s held a request for ever (each
read was within the timeout), and an endless body was buffered until the machine ran out of
memory (5 GB after 20 s)."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from bulkbatch.client import answer
from bulkbatch.client.courier import CourierClient, RetryEvent
from bulkbatch.client.ratelimit import AdaptiveLimiter
from bulkbatch.config import Settings
from bulkbatch.errors import ApiUnavailable, BadResponse
from tests.client.support import JOB, SECRET, ManualClock, assert_one_clear_line
from tests.client.test_exchange import handled_by

PATHS = ("aiohttp", "httpx")
CAP = 1 << 20
"""The answer size cap the tests set (the real one is 64 MiB)."""

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
JOB_JSON = b'{"jobId":"' + JOB.encode() + b'"}'


@pytest.fixture(autouse=True)
def small_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answer, "MAX_ANSWER_BYTES", CAP)


def client_on(path: str, url: str, events: list[RetryEvent], *, timeout: float) -> CourierClient:
    clock = ManualClock()
    settings = Settings(base_url=url, api_key=SECRET, max_attempts=2, timeout=timeout)
    return CourierClient(
        settings,
        transport=httpx.AsyncHTTPTransport() if path == "httpx" else None,
        limiter=AdaptiveLimiter(1000.0, clock=clock),
        clock=clock,
        on_retry=events.append,
    )


def serving(head: bytes, body: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> Handler:
    """A handler that reads a request, writes ``head`` and then whatever ``body`` writes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(head)
            await body(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return handle


async def outcome(path: str, handle: Handler, *, seconds: float = 2.0) -> tuple[Exception, int]:
    """The error ``retrieve_job`` ends in, and how many retries were announced."""
    events: list[RetryEvent] = []
    async with handled_by(handle) as url:
        client = client_on(path, url, events, timeout=seconds)
        async with client:
            with pytest.raises(Exception) as info:
                await client.retrieve_job(JOB)
    assert isinstance(info.value, Exception)
    return info.value, len(events)


@pytest.mark.anyio
@pytest.mark.parametrize("path", PATHS)
async def test_a_body_that_drips_ends_at_the_answer_deadline(path: str) -> None:
    async def drip(writer: asyncio.StreamWriter) -> None:
        while True:  # one byte every 0.1 s: every read is well within the 0.5 s timeout
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.1)

    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    began = time.monotonic()
    error, retries = await outcome(path, serving(head, drip), seconds=0.5)
    elapsed = time.monotonic() - began
    assert isinstance(error, ApiUnavailable)
    text = assert_one_clear_line(error)
    assert f"the answer's body took over {answer.ANSWER_PHASE * 0.5:g} s" in text, text
    assert retries == 1  # a timeout, retried like any other
    # two attempts of 3 x 0.5 s each; before the fix this never ended
    assert 2 * answer.ANSWER_PHASE * 0.5 <= elapsed < 8


@pytest.mark.anyio
@pytest.mark.parametrize("path", PATHS)
async def test_a_body_that_never_ends_stops_at_the_size_cap(path: str) -> None:
    async def flood(writer: asyncio.StreamWriter) -> None:
        chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024)
        while True:
            writer.write(chunk)
            await writer.drain()

    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    error, retries = await outcome(path, serving(head, flood))
    assert isinstance(error, BadResponse)
    text = assert_one_clear_line(error)
    assert f"the answer's body is over {answer.size_text(CAP)}" in text, text
    assert retries == 0  # the same request would get the same answer


@pytest.mark.anyio
@pytest.mark.parametrize("path", PATHS)
async def test_a_declared_length_over_the_cap_is_refused_before_reading(path: str) -> None:
    wrote: list[int] = []

    async def nothing(writer: asyncio.StreamWriter) -> None:
        wrote.append(0)
        await asyncio.sleep(5)  # the body never comes; the client must not wait for it

    head = f"HTTP/1.1 200 OK\r\nContent-Length: {CAP + 1}\r\n\r\n".encode()
    began = time.monotonic()
    error, _ = await outcome(path, serving(head, nothing))
    assert isinstance(error, BadResponse)
    assert f"over {answer.size_text(CAP)}" in str(error)
    assert time.monotonic() - began < 2


@pytest.mark.anyio
@pytest.mark.parametrize("path", PATHS)
async def test_a_gzip_body_that_inflates_past_the_cap_is_refused(path: str) -> None:
    bomb = gzip.compress(b" " * (4 * CAP))
    assert len(bomb) < CAP // 100  # small on the wire

    async def send(writer: asyncio.StreamWriter) -> None:
        writer.write(bomb)
        await writer.drain()

    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        f"Content-Length: {len(bomb)}\r\nConnection: close\r\n\r\n"
    ).encode()
    error, retries = await outcome(path, serving(head, send))
    assert isinstance(error, BadResponse)
    assert f"the answer's body is over {answer.size_text(CAP)} once decoded" in str(error)
    assert retries == 0


@pytest.mark.anyio
@pytest.mark.parametrize("path", PATHS)
async def test_answers_under_the_cap_still_arrive_whole(path: str) -> None:
    """The control: a gzip answer and a plain one, each just under the cap."""
    padding = b" " * (CAP - len(JOB_JSON) - 1)
    for encoded, extra in (
        (gzip.compress(JOB_JSON + padding), "Content-Encoding: gzip\r\n"),
        (JOB_JSON + padding, ""),
    ):
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(encoded)}\r\nConnection: close\r\n\r\n"
        ).encode()

        async def send(writer: asyncio.StreamWriter, body: bytes = encoded) -> None:
            writer.write(body)
            await writer.drain()

        events: list[RetryEvent] = []
        async with (
            handled_by(serving(head, send)) as url,
            client_on(path, url, events, timeout=2.0) as client,
        ):
            created = await client.create_job({"event": "e"})
        assert created == JOB
        assert events == []
