"""One HTTP exchange over aiohttp: the request, and its whole answer as an ``httpx.Response``.

Why not httpx all the way down: where the client's CPU bounds a send (a 10M send with no
latency spends as much CPU as wall time; on a small host the client shares its cores with
everything else), httpx's HTTP/1.1 stack (httpcore and h11, pure Python) was over half of
the event loop's samples. Against the emulator at 20 ms, one page GET cost 1.3-2.1 ms of
CPU with ``httpx.AsyncClient`` and 0.34-0.58 ms with ``aiohttp.ClientSession`` (C parser, C
multidicts), in the same runs (``bench/RESULTS.md``, round 12 of #19). So the bytes go over aiohttp, and everything above it stays httpx's:
the answer is an ``httpx.Response`` (decoded by httpx, so a bad gzip body is the same
``httpx.DecodingError``), and aiohttp's errors become the ``httpx`` exceptions the request
loop already classifies (:func:`as_httpx_error`): no answer, a timeout, a broken answer.

Used for direct connections only: a client given a transport (tests) or one whose
environment names a proxy for Courier's URL keeps httpx's transport.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

from bulkbatch.client.answer import (
    ANSWER_PHASE,
    answer_deadline_error,
    check_declared,
    decoded_response,
    read_capped,
)

if TYPE_CHECKING:
    import aiohttp

__all__ = ["REQUEST_PHASE", "AiohttpExchange", "as_httpx_error", "httpx_error_class"]

# aiohttp is imported when a session opens, not with this module: its import builds TLS
# contexts and costs ~150 ms, which `bulkbatch plan`, `status` or `--help` need not pay.


@functools.cache
def _errors() -> tuple[tuple[type[BaseException], type[httpx.TransportError]], ...]:
    """aiohttp's errors as httpx's, most specific first (several subclass others)."""
    import aiohttp

    return (
        (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
        (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
        (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
        (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
        (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
        (aiohttp.ClientConnectorError, httpx.ConnectError),
        (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
        (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
        (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
        (aiohttp.ClientOSError, httpx.ReadError),
        (aiohttp.ClientConnectionError, httpx.ReadError),
        (aiohttp.ClientError, httpx.RemoteProtocolError),
        (TimeoutError, httpx.PoolTimeout),
    )


REQUEST_PHASE = 3
"""Connect, send and the answer's first line: at most this many timeouts in all."""


def _wire_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """httpx's raw headers as aiohttp takes them; a value with CR, LF or NUL is refused as
    h11 refuses it (``httpx.LocalProtocolError``), before anything is sent."""
    sent: list[tuple[str, str]] = []
    for name, value in headers:
        if b"\r" in value or b"\n" in value or b"\0" in value:
            raise httpx.LocalProtocolError("Illegal header value")
        sent.append((name.decode("latin-1"), value.decode("latin-1")))
    return sent


_LARGE_BODY = 1 << 20


def _payload(content: bytes | None) -> bytes | aiohttp.BytesPayload | None:
    """The request body as aiohttp takes it. Over 1 MiB aiohttp warns (``ResourceWarning``)
    that raw bytes "might lock the event loop"; writing them is one copy into the
    transport's buffer, and a 1,000-user ingest with large per-user data can pass 1 MiB, so
    that one warning is silenced while the body is wrapped (nothing is awaited meanwhile)."""
    if content is None or len(content) <= _LARGE_BODY:
        return content
    import aiohttp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        return aiohttp.BytesPayload(content)


def httpx_error_class(kind: type[BaseException]) -> type[httpx.TransportError] | None:
    """The ``httpx`` exception class that says what an aiohttp error of class ``kind`` says
    (``None`` when ``kind`` is not an HTTP failure)."""
    for source, target in _errors():
        if issubclass(kind, source):
            return target
    return None


def as_httpx_error(exc: BaseException) -> httpx.TransportError | None:
    """``exc`` (raised by aiohttp) as the ``httpx`` exception the request loop classifies,
    or ``None``. The message is aiohttp's: a URL at most, never a header value (header
    values are checked before anything is sent)."""
    target = httpx_error_class(type(exc))
    return None if target is None else target(str(exc) or type(exc).__name__)


class AiohttpExchange:
    """Requests over one ``aiohttp.ClientSession``, opened on first use (it needs the running
    loop) and closed by :meth:`aclose`.

    :param limit: the most connections open at once (the pool's size)
    :param timeout: seconds for each of: getting a connection, connecting, each read
    :param tls: whether the API is ``https://``: then the TLS context is httpx's (made on
        first use), so ``SSL_CERT_FILE`` and friends apply as they do to httpx
    """

    def __init__(self, *, limit: int, timeout: float, tls: bool) -> None:
        self._limit = limit
        self._timeout = timeout
        self._phase = REQUEST_PHASE * timeout
        self._answer = ANSWER_PHASE * timeout
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None
        self._client_error: type[Exception] = TimeoutError  # aiohttp.ClientError once open
        self._asyncio: bool | None = None

    def works_here(self) -> bool:
        """Whether the running event loop is asyncio's (aiohttp needs it; under another
        anyio backend the client keeps httpx's transport). Decided once."""
        if self._asyncio is None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                self._asyncio = False
            else:
                self._asyncio = True
        return self._asyncio

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        self._client_error = aiohttp.ClientError
        context: ssl.SSLContext | bool = httpx.create_ssl_context() if self._tls else False
        connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=0, ssl=context)
        wait = self._timeout
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=wait, sock_connect=wait, sock_read=wait
            ),
            auto_decompress=False,  # httpx decodes, as on its own transport
            trust_env=False,  # proxies go through httpx's transport instead
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Content-Type",),
        )

    async def send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None,
        headers: list[tuple[bytes, bytes]],
        content: bytes | None,
    ) -> httpx.Response:
        """Send one request and read its whole answer.

        Connecting, sending and waiting for the answer's first line together get
        :data:`REQUEST_PHASE` times the timeout (aiohttp has no write timeout: a server that
        stops reading a large body would hold the request for ever); the answer's body
        then gets the timeout for each read and :data:`~bulkbatch.client.answer.ANSWER_PHASE`
        times it in all, and may be at most ``MAX_ANSWER_BYTES`` (:mod:`.answer`).

        :param headers: every header to send, as httpx keeps them (``Headers.raw``)
        :raises httpx.LocalProtocolError: a header value HTTP does not allow (as h11 refuses
            it: a CR, LF or NUL); nothing was sent
        :raises httpx.HTTPError: no answer, a timeout or a broken answer (as httpx says it)
        :raises AnswerTooLarge: the answer's body is over the cap
        """
        sent, data = _wire_headers(headers), _payload(content)
        session = self._session
        if session is None:
            session = self._session = self._open()
        phase, reading = asyncio.timeout(self._phase), asyncio.timeout(self._answer)
        try:
            async with phase:
                answer = await session.request(
                    method, url, params=params, headers=sent, data=data, allow_redirects=False
                )
            async with answer:
                check_declared(answer.content_length)
                async with reading:
                    body = await read_capped(answer.content.iter_any())
                status, raw = answer.status, answer.raw_headers
        except (TimeoutError, self._client_error) as exc:
            if phase.expired():
                raise httpx.WriteTimeout(
                    f"connecting, sending and the answer's first line took over {self._phase:g} s"
                ) from exc
            if reading.expired():
                raise answer_deadline_error(self._answer) from exc
            mapped = as_httpx_error(exc)
            if mapped is None:  # pragma: no cover - every ClientError maps
                raise
            raise mapped from exc
        return decoded_response(status, list(raw), body)

    async def aclose(self) -> None:
        """Close the connections (a no-op if none was ever opened)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
