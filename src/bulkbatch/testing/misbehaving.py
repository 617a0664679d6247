"""A Courier that misbehaves on purpose, over real HTTP on 127.0.0.1.

Each mode breaks the contract one way; everything else answers like Courier's current
contract (``POST /bulk`` 200 ``{jobId}``, ingest 204, run 204, a COMPLETED job of
``received`` users, pages of 100):

=============== =================================================================
mode            what the server does
=============== =================================================================
ok              nothing wrong (the control case)
endless-cursor  ``GET /bulk/{id}/users`` never ends: empty pages, a new cursor each
repeat-cursor   the users listing hands back the same cursor every time
repeat-items    pages of 105 users (315 listed for 300 received)
wrong-types     ``GET /bulk/{id}`` says ``"received": "x"``; ``/users`` items are strings
non-json        every answer is a 200 HTML page
huge-retry      every answer is 429 with ``Retry-After: 86400``
never-completes the job stays PROCESSING forever
redirect        every answer is a 307 to ``http://elsewhere.invalid`` (another host)
hang            every request is accepted and never answered (until the server stops)
=============== =================================================================

Use :func:`serve` (a context manager; port 0, a thread, a clean stop)::

    with serve("endless-cursor") as server:
        settings = Settings(base_url=server.url, api_key="k")
        ...
        server.requests  # [(method, path, headers), ...] as received
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Self

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["JOB_ID", "MODES", "MisbehavingServer", "misbehaving_app", "serve"]

JOB_ID = "1-00000000-000000000000000000000bad"
MODES = (
    "ok",
    "endless-cursor",
    "repeat-cursor",
    "repeat-items",
    "wrong-types",
    "non-json",
    "huge-retry",
    "never-completes",
    "redirect",
    "hang",
)
_ANY_PATH = (
    "non-json",
    "huge-retry",
    "redirect",
    "hang",
)


@dataclass
class _State:
    mode: str
    received: int
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _users(start: int, count: int) -> list[dict[str, Any]]:
    return [
        {"recipient": f"u{n}", "status": "ENQUEUED", "messageId": f"m{n}"}
        for n in range(start, start + count)
    ]


def _page(items: list[dict[str, Any]], cursor: str | None) -> JSONResponse:
    return JSONResponse({"items": items, "paging": {"cursor": cursor, "more": cursor is not None}})


def _users_page(state: _State, cursor: str | None) -> Response:
    mode = state.mode
    at = int(cursor[1:]) if cursor and cursor[1:].isdigit() else 0
    if mode == "endless-cursor":
        return _page([], f"c{at + 1}")
    if mode == "repeat-cursor":
        return _page(_users(0, 1) if cursor is None else [], "c-same")
    if mode == "repeat-items":
        return _page(_users(at * 100, 105), f"c{at + 1}")
    if mode == "wrong-types":
        return JSONResponse({"items": ["u1", "u2"], "paging": {"cursor": None, "more": False}})
    count = max(0, min(100, state.received - at * 100))
    done = (at + 1) * 100 >= state.received
    return _page(_users(at * 100, count), None if done else f"c{at + 1}")


def _job(state: _State) -> Response:
    received: Any = "x" if state.mode == "wrong-types" else state.received
    status = "PROCESSING" if state.mode == "never-completes" else "COMPLETED"
    job = {
        "definition": {"event": "welcome"},
        "enqueued": 0 if status == "PROCESSING" else state.received,
        "failures": 0,
        "received": received,
        "status": status,
    }
    return JSONResponse({"job": job})


async def _everywhere(state: _State) -> Response:
    mode = state.mode
    if mode == "non-json":
        return Response("<html><body>Gateway says hi</body></html>", media_type="text/html")
    if mode == "huge-retry":
        return JSONResponse(
            {"message": "Too Many Requests", "type": "rate_limit_error"},
            status_code=429,
            headers={"Retry-After": "86400"},
        )
    if mode == "redirect":
        return Response(status_code=307, headers={"Location": "http://elsewhere.invalid/bulk"})
    # hang: answer only once the server is stopping
    await anyio.to_thread.run_sync(state.stopping.wait, abandon_on_cancel=True)
    return Response(status_code=503)


def misbehaving_app(mode: str, *, received: int = 300) -> Starlette:
    """The ASGI app for ``mode`` (one of :data:`MODES`); ``app.state.misbehaving`` holds
    the requests it received."""
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    state = _State(mode, received)

    async def endpoint(request: Request) -> Response:
        path = request.url.path
        with state.lock:
            state.requests.append((request.method, path, dict(request.headers)))
        await request.body()
        if mode in _ANY_PATH:
            return await _everywhere(state)
        parts = [p for p in path.split("/") if p]
        if request.method == "POST":
            if parts == ["bulk"]:
                return JSONResponse({"jobId": JOB_ID})
            return Response(status_code=204)
        if parts[:1] == ["bulk"] and len(parts) == 2:
            return _job(state)
        if parts[:1] == ["bulk"] and parts[2:] == ["users"]:
            return _users_page(state, request.query_params.get("cursor"))
        return JSONResponse({"message": "Not Found", "type": "invalid_request_error"}, 404)

    app = Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])
    app.state.misbehaving = state
    return app


class MisbehavingServer:
    """:func:`misbehaving_app` served by uvicorn in a thread on ``127.0.0.1``, port 0."""

    def __init__(self, mode: str, *, received: int = 300) -> None:
        self.app = misbehaving_app(mode, received=received)
        self._state: _State = self.app.state.misbehaving
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def requests(self) -> list[tuple[str, str, dict[str, str]]]:
        """``(method, path, headers)`` of every request received, in order."""
        with self._state.lock:
            return list(self._state.requests)

    def start(self, timeout: float = 10.0) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        host, port = sock.getsockname()[:2]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            log_level="critical",
            lifespan="off",
            loop="auto",  # uvloop when installed: asyncio's loop here adds ~40 ms per GET
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="misbehaving", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                raise RuntimeError("the misbehaving server did not start")
            time.sleep(0.01)
        self._server, self._thread = server, thread
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._state.stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def serve(mode: str, *, received: int = 300) -> Iterator[MisbehavingServer]:
    """Serve ``mode`` on 127.0.0.1 (a free port) for the ``with`` block; stops cleanly."""
    server = MisbehavingServer(mode, received=received)
    with server:
        yield server
