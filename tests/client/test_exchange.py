"""The client's HTTP/1.1 over aiohttp (``bulkbatch.client.exchange``): which clients use it,
what goes on the wire, and broken answers from a raw socket server ending as the same one
clear error httpx's transport gave (the hostile-server suite covers the HTTP-level cases)."""

from __future__ import annotations

import asyncio
import gzip
import inspect
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import httpx
import pytest

from bulkbatch.client.courier import CourierClient, RetryEvent
from bulkbatch.client.exchange import (
    REQUEST_PHASE,
    AiohttpExchange,
    as_httpx_error,
    httpx_error_class,
)
from bulkbatch.client.ratelimit import AdaptiveLimiter
from bulkbatch.config import Settings
from bulkbatch.errors import ApiUnavailable, BadResponse, UsageError
from tests.client.support import JOB, SECRET, ManualClock, Recorder, assert_one_clear_line

JOB_BODY = b'{"jobId":"' + JOB.encode() + b'"}'

Answer = Callable[[bytes], bytes | None]
"""Given the request's bytes, the raw answer to write (``None``: close without one)."""


@asynccontextmanager
async def handled_by(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    scheme: str = "http",
) -> AsyncIterator[str]:
    """A server on 127.0.0.1 whose connections ``handle`` serves; its URL."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"{scheme}://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


def http_answer(body: bytes, *, extra: str = "") -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
    return head.encode() + body


@asynccontextmanager
async def raw_server(answer: Answer) -> AsyncIterator[tuple[str, list[bytes]]]:
    """An HTTP/1.1 server on 127.0.0.1 that reads one request per connection, writes
    ``answer(request)`` and closes; its URL and the requests it read."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            request = head + (await reader.readexactly(length) if length else b"")
            seen.append(request)
            raw = answer(request)
            if raw is not None:
                writer.write(raw)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async with handled_by(handle) as url:
        yield url, seen


def client_for(
    url: str,
    events: list[RetryEvent] | None = None,
    *,
    attempts: int = 2,
    timeout: float = 2.0,
) -> CourierClient:
    clock = ManualClock()
    settings = Settings(base_url=url, api_key=SECRET, max_attempts=attempts, timeout=timeout)
    return CourierClient(
        settings,
        limiter=AdaptiveLimiter(1000.0, clock=clock),
        clock=clock,
        on_retry=None if events is None else events.append,
    )


# -- which clients use it ----------------------------------------------------------------


def test_a_direct_client_uses_aiohttp_and_every_other_keeps_httpx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert client_for("http://127.0.0.1:9")._exchange is not None
    assert client_for("https://api.courier.com")._exchange is not None
    injected = CourierClient(
        Settings(base_url="https://api.courier.com", api_key=SECRET),
        transport=httpx.MockTransport(Recorder(httpx.Response(200))),
    )
    assert injected._exchange is None  # tests' transports are used as given
    with pytest.raises(UsageError, match="must start with https://"):  # refused by Settings
        client_for("ftp://api.courier.com")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert client_for("https://api.courier.com")._exchange is None  # the proxy is httpx's


# -- the error map -------------------------------------------------------------------------


def _aiohttp_errors() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    todo: list[type[BaseException]] = [aiohttp.ClientError]
    while todo:
        kind = todo.pop()
        found.append(kind)
        todo.extend(kind.__subclasses__())
    return found


def test_every_aiohttp_error_is_an_httpx_transport_error() -> None:
    """Whatever aiohttp raises, the request loop sees an ``httpx.TransportError``: retried as
    "no answer", never an unexpected exception (a traceback)."""
    kinds = _aiohttp_errors()
    assert len(kinds) > 20
    for kind in kinds:
        target = httpx_error_class(kind)
        assert target is not None and issubclass(target, httpx.TransportError), kind
    assert httpx_error_class(aiohttp.ConnectionTimeoutError) is httpx.ConnectTimeout
    assert httpx_error_class(aiohttp.SocketTimeoutError) is httpx.ReadTimeout
    assert httpx_error_class(aiohttp.NonHttpUrlClientError) is httpx.UnsupportedProtocol
    assert httpx_error_class(aiohttp.ServerDisconnectedError) is httpx.RemoteProtocolError
    assert httpx_error_class(TimeoutError) is httpx.PoolTimeout
    assert httpx_error_class(ValueError) is None
    mapped = as_httpx_error(aiohttp.ServerDisconnectedError())
    assert isinstance(mapped, httpx.RemoteProtocolError) and str(mapped)


# -- the wire ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_request_carries_the_clients_headers_and_nothing_of_aiohttps() -> None:
    server = raw_server(lambda request: http_answer(JOB_BODY))
    async with server as (url, seen), client_for(url) as client:
        assert await client.create_job({"event": "welcome"}) == JOB
        await client.add_users(JOB, b'{"users":[]}', idempotency_key="bb1.k.batch.0")
    create, ingest = (r.split(b"\r\n\r\n")[0].decode().lower().split("\r\n") for r in seen)
    assert create[0] == "post /bulk http/1.1" and ingest[0] == f"post /bulk/{JOB} http/1.1".lower()
    for head in (create, ingest):
        headers = dict(line.split(": ", 1) for line in head[1:])
        assert headers["authorization"] == f"bearer {SECRET}".lower()
        assert headers["user-agent"].startswith("bulkbatch/")
        assert headers["content-type"] == "application/json"
        assert "cookie" not in headers and "aiohttp" not in " ".join(head)
    sent_keys = [
        dict(line.split(": ", 1) for line in h[1:])["idempotency-key"] for h in (create, ingest)
    ]
    assert sent_keys[0].startswith("bulkbatch-") and sent_keys[1] == "bb1.k.batch.0"


@pytest.mark.anyio
async def test_a_body_over_a_mebibyte_goes_out_whole_and_without_a_warning() -> None:
    """aiohttp warns about raw bodies over 1 MiB (the suite turns warnings into errors)."""
    body = b'{"users":[' + b",".join([b'{"recipient":"' + b"r" * 3000 + b'"}'] * 700) + b"]}"
    assert len(body) > 2 << 20
    answer = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
    async with raw_server(lambda request: answer) as (url, seen), client_for(url) as client:
        await client.add_users(JOB, body, idempotency_key="bb1.k.batch.0")
    head, _, sent = seen[0].partition(b"\r\n\r\n")
    assert sent == body
    lines = head.decode().lower().split("\r\n")
    assert f"content-length: {len(body)}" in lines and "content-type: application/json" in lines


@pytest.mark.anyio
async def test_a_get_sends_no_content_type_and_its_query_is_encoded() -> None:
    page = b'{"items":[],"paging":{"more":false}}'
    async with raw_server(lambda request: http_answer(page)) as (url, seen), client_for(url) as c:
        await c.list_user_statuses(JOB, cursor="a b+c/=")
    line, *rest = seen[0].split(b"\r\n\r\n")[0].decode().split("\r\n")
    method, target, version = line.split(" ")
    assert (method, version) == ("GET", "HTTP/1.1")
    sent = httpx.URL("http://x" + target)
    assert sent.path == f"/bulk/{JOB}/users" and sent.params["cursor"] == "a b+c/="
    assert not any(h.lower().startswith("content-type") for h in rest)


@pytest.mark.anyio
async def test_a_gzip_answer_is_decoded_as_httpx_decodes_it() -> None:
    body = gzip.compress(JOB_BODY)
    answer = http_answer(body, extra="Content-Encoding: gzip\r\n")
    async with raw_server(lambda request: answer) as (url, _), client_for(url) as client:
        assert await client.create_job({"event": "welcome"}) == JOB


@pytest.mark.anyio
async def test_a_broken_gzip_answer_is_a_bad_response() -> None:
    answer = http_answer(b"not gzip at all", extra="Content-Encoding: gzip\r\n")
    async with raw_server(lambda request: answer) as (url, _), client_for(url) as client:
        with pytest.raises(BadResponse) as info:
            await client.create_job({"event": "welcome"})
    assert "could not be decoded" in assert_one_clear_line(info.value)


BROKEN: dict[str, Answer] = {
    "closed without an answer": lambda request: None,
    "a status line that is not HTTP": lambda request: b"SMTP ready\r\n\r\n",
    "a body shorter than its Content-Length": (
        lambda request: b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{}"
    ),
    "a header line of 100 kB": (
        lambda request: b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(BROKEN))
async def test_a_broken_answer_is_retried_then_one_clear_line(case: str) -> None:
    events: list[RetryEvent] = []
    async with raw_server(BROKEN[case]) as (url, seen), client_for(url, events) as client:
        with pytest.raises(ApiUnavailable) as info:
            await client.create_job({"event": "welcome"})
    text = assert_one_clear_line(info.value)
    assert "got no answer" in text and "gave up after 2 attempts" in text
    assert SECRET not in text
    assert len(seen) == 2 and [e.will_retry for e in events] == [True]


@pytest.mark.anyio
async def test_an_answer_that_never_comes_times_out() -> None:
    release = asyncio.Event()

    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(1)
            await release.wait()
        finally:
            writer.close()

    async with handled_by(never) as url:
        try:
            async with client_for(url, attempts=1, timeout=0.3) as client:
                with pytest.raises(ApiUnavailable) as info:
                    await client.create_job({"event": "welcome"})
        finally:
            release.set()
    text = assert_one_clear_line(info.value)
    assert "timed out" in text and "ReadTimeout" in text


@pytest.mark.anyio
async def test_a_server_that_stops_reading_a_large_body_times_out() -> None:
    """aiohttp has no write timeout: without the request-phase deadline this send of 48 MB to
    a server that reads nothing waited for ever (httpx's transport: WriteTimeout)."""
    release = asyncio.Event()

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await release.wait()
        finally:
            writer.close()

    began = time.monotonic()
    async with handled_by(deaf) as url:
        try:
            async with client_for(url, attempts=1, timeout=0.3) as client:
                with pytest.raises(ApiUnavailable) as info:
                    body = b"x" * (48 << 20)
                    await client.add_users(JOB, body, idempotency_key="bb1.k.batch.0")
        finally:
            release.set()
    text = assert_one_clear_line(info.value)
    assert "timed out" in text and "WriteTimeout" in text
    assert time.monotonic() - began < REQUEST_PHASE * 0.3 + 3


@pytest.mark.anyio
async def test_an_https_url_speaks_tls() -> None:
    """Nothing goes out in clear text to an ``https://`` URL: a plain-HTTP server sees a TLS
    handshake, never the request, and the client says it got no answer."""
    got: list[bytes] = []

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            got.append(await reader.read(4096))
            writer.write(http_answer(JOB_BODY))
            await writer.drain()
        finally:
            writer.close()

    async with handled_by(plain, "https") as url, client_for(url, attempts=1) as client:
        assert client._exchange is not None
        with pytest.raises(ApiUnavailable) as info:
            await client.create_job({"event": "welcome"})
    assert "got no answer" in assert_one_clear_line(info.value)
    assert got and got[0][:1] == b"\x16"  # a TLS handshake record
    assert SECRET.encode() not in b"".join(got)


@pytest.mark.anyio
async def test_closing_the_client_closes_the_session() -> None:
    async with raw_server(lambda request: http_answer(JOB_BODY)) as (url, _):
        client = client_for(url)
        async with client:
            await client.create_job({"event": "welcome"})
            exchange = client._exchange
            assert exchange is not None and exchange._session is not None
            session = exchange._session
        assert exchange._session is None and session.closed


def test_aiohttp_is_imported_when_a_session_opens_not_with_the_client() -> None:
    """Its import builds TLS contexts (~150 ms): `plan`, `status` and `--help` skip it."""
    code = (
        "import sys, bulkbatch.client.courier, bulkbatch.cli; "
        "from bulkbatch.config import Settings; "
        "bulkbatch.client.courier.CourierClient(Settings(base_url='http://127.0.0.1:9')); "
        "print('aiohttp' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_exchange_is_opened_inside_the_loop_not_before() -> None:
    """Built with the client (maybe outside any loop), the session opens on first use."""
    exchange = AiohttpExchange(limit=4, timeout=1.0, tls=False)
    assert exchange._session is None
    assert inspect.iscoroutinefunction(exchange.send)
