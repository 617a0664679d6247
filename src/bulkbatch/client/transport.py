"""Cheaper connection-pool bookkeeping for httpx: the idle check and the request assignment.

Before every request and after every response httpcore walks *all* pooled connections and
asks each idle one whether its socket is readable (a server that closed it). Its anyio
stream answers ``get_extra_info("is_readable")`` by building anyio's whole attribute map,
which calls ``getpeername()`` — a system call and a dozen objects per idle connection, per
scan. With 16-20 connections that was a sixth of the client's CPU per request (py-spy,
200k users at 20 ms, see ``bench/RESULTS.md``).

:func:`speed_up` wraps the pool's network backend so each connection looks up its raw socket
once, when it is opened, with a ``poll`` object registered for it: a check is then one
``poll(0)`` call, the same test httpcore makes (a closed socket counts as readable). Nothing
else about the connection changes: reads, writes, TLS, timeouts and the exceptions they
raise are the backend's own. A client whose transport is not httpx's plain connection pool
(a mock transport in tests, a proxy) is left alone.

The scan itself was quadratic: for every idle connection httpcore counts the pool again
(``len([c.is_idle() for c in connections])``), and it checks every idle connection's socket
whether or not a request needs one. With reads up to 64 wide (the default then) the pool held
~84 connections, and the scan (twice per request) was ~23 % of all CPU samples of a 1M-person
run at 150 ms (py-spy, ``bench/RESULTS.md``). :class:`_Pool` makes the same decisions walking
the pool at most once: a queued request gets the first connection that can take it, as in
httpcore; surplus idle connections are closed when the pool holds more than
``max_keepalive_connections`` (the count kept as it goes). Whether a connection was closed or
has expired (its keep-alive ran out, or the server closed it) is checked when the scan meets
it, not for all of them on every scan: an expired connection is still never used (it is closed
when it comes up), and closed ones are dropped as they are met or when the pool is full.
"""

from __future__ import annotations

import select
import ssl
from collections.abc import Iterable
from typing import Any, Protocol

import httpcore
import httpx

__all__ = ["speed_up"]

# httpcore's SOCKET_OPTION.
_SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


class _Readable:
    """``is_readable`` for one socket: a ``poll`` object registered once, so each check is
    one system call (httpcore builds and registers a new one per check)."""

    __slots__ = ("_fd", "_poll", "_sock")

    def __init__(self, sock: _HasFileno) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._poll: Any = None
        if self._fd >= 0 and hasattr(select, "poll"):
            self._poll = select.poll()
            self._poll.register(self._fd, select.POLLIN)

    def __call__(self) -> bool:
        """Whether a read would return at once (data, or the ``b""`` of a closed peer); a
        closed socket counts as readable, as in httpcore."""
        if self._fd < 0 or self._sock.fileno() != self._fd:
            return True  # closed since (its number may belong to another socket by now)
        if self._poll is None:  # pragma: no cover - Windows
            ready, _, _ = select.select([self._fd], [], [], 0)
            return bool(ready)
        return bool(self._poll.poll(0))


class _Stream(httpcore.AsyncNetworkStream):
    """A network stream that knows its raw socket (looked up once)."""

    __slots__ = ("_inner", "_readable")

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        # A socket.socket, or asyncio's TransportSocket around one.
        sock = inner.get_extra_info("socket")
        has_fd = callable(getattr(sock, "fileno", None))
        self._readable: _Readable | None = _Readable(sock) if has_fd else None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._readable is not None:
            return self._readable()
        return self._inner.get_extra_info(info)


class _Pool(httpcore.AsyncConnectionPool):
    """httpcore's pool with a linear assignment scan (see the module docstring)."""

    def _assign_requests_to_connections(self) -> list[httpcore.AsyncConnectionInterface]:
        closing: list[httpcore.AsyncConnectionInterface] = []
        connections = self._connections
        if len(connections) > self._max_keepalive_connections:
            self._drop_surplus(closing)
        for pool_request in self._requests:
            if not pool_request.is_queued():
                continue
            origin = pool_request.request.url.origin
            chosen = self._available(origin, closing)
            if chosen is None:
                if len(connections) >= self._max_connections:
                    connections[:] = [c for c in connections if not c.is_closed()]
                if len(connections) >= self._max_connections:
                    idle = next((c for c in connections if c.is_idle()), None)
                    if idle is None:
                        continue  # every connection is busy: the request waits
                    connections.remove(idle)
                    closing.append(idle)
                chosen = self.create_connection(origin)
                connections.append(chosen)
            pool_request.assign_to_connection(chosen)
        return closing

    async def _close_connections(self, closing: list[httpcore.AsyncConnectionInterface]) -> None:
        """Close ``closing``; with none to close, skip httpcore's cancel-shield scope (twice
        per request, almost always empty)."""
        if closing:
            await super()._close_connections(closing)

    def _drop_surplus(self, closing: list[httpcore.AsyncConnectionInterface]) -> None:
        """Closed connections out, and idle ones closed while the pool holds more than
        ``max_keepalive_connections`` (httpcore's rule, counted as it goes)."""
        connections = self._connections
        count = len(connections)
        kept = []
        for connection in connections:
            if connection.is_closed():
                count -= 1
            elif count > self._max_keepalive_connections and connection.is_idle():
                count -= 1
                closing.append(connection)
            else:
                kept.append(connection)
        connections[:] = kept

    def _available(
        self, origin: httpcore.Origin, closing: list[httpcore.AsyncConnectionInterface]
    ) -> httpcore.AsyncConnectionInterface | None:
        """The first connection that can take a request for ``origin`` now. Closed ones met
        on the way leave the pool; expired ones leave it and are closed."""
        connections = self._connections
        i = 0
        while i < len(connections):
            connection = connections[i]
            if connection.is_closed():
                del connections[i]
                continue
            if connection.can_handle_request(origin) and connection.is_available():
                if not connection.has_expired():
                    return connection
                del connections[i]
                closing.append(connection)
                continue
            i += 1
        return None


_POOL_PARTS = (
    "_connections",
    "_requests",
    "_max_connections",
    "_max_keepalive_connections",
    "create_connection",
    "_assign_requests_to_connections",
    "_close_connections",
)


class _Backend(httpcore.AsyncNetworkBackend):
    """Delegates to the pool's own backend and wraps the streams it opens."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[_SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        return _Stream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        socket_options: Iterable[_SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:  # pragma: no cover - bulkbatch speaks TCP
        stream = await self._inner.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options
        )
        return _Stream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def speed_up(http: httpx.AsyncClient) -> bool:
    """Give ``http``'s connection pool the cheaper idle check and the linear assignment scan;
    whether it applied.

    Only a plain ``httpx.AsyncHTTPTransport`` over an ``httpcore.AsyncConnectionPool`` is
    changed (httpx 0.2x keeps them as ``_transport._pool._network_backend``); anything else
    (a mock or ASGI transport, a proxy, another httpx or httpcore layout) is left as it is.
    """
    transport = getattr(http, "_transport", None)
    if type(transport) is not httpx.AsyncHTTPTransport:
        return False
    pool = getattr(transport, "_pool", None)
    if type(pool) is not httpcore.AsyncConnectionPool:
        return False
    backend = getattr(pool, "_network_backend", None)
    if not isinstance(backend, httpcore.AsyncNetworkBackend) or isinstance(backend, _Backend):
        return False
    if not all(hasattr(pool, part) for part in _POOL_PARTS):
        return False
    pool._network_backend = _Backend(backend)
    pool.__class__ = _Pool
    return True
