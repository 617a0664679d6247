"""Serve the receiver with uvicorn: in a thread (:class:`WebhookReceiver`) or blocking (:func:`serve`).

Loopback (``127.0.0.1``) is the default bind: put an HTTPS reverse proxy in front of it to
expose it to Courier (see ``docs/webhooks.md``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Generator, Sequence
from types import FrameType, TracebackType
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette

from bulkbatch.webhooks.receiver import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    WEBHOOK_PATH,
    create_app,
)
from bulkbatch.webhooks.signature import DEFAULT_MAX_AGE, DEFAULT_MAX_FUTURE
from bulkbatch.webhooks.store import WebhookStore

__all__ = ["WebhookReceiver", "serve"]


def _config(app: Starlette, log_config: dict[str, Any] | None) -> uvicorn.Config:
    fast_http = importlib.util.find_spec("httptools") is not None
    fast_loop = importlib.util.find_spec("uvloop") is not None and os.name != "nt"
    return uvicorn.Config(
        app,
        http="httptools" if fast_http else "h11",
        loop="uvloop" if fast_loop else "asyncio",
        lifespan="on",
        access_log=False,
        log_level="warning",
        log_config=log_config,
        timeout_keep_alive=75,
        server_header=False,
        date_header=False,
        backlog=2048,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _url(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server with a ready callback; SIGINT/SIGTERM exit cleanly (status 0)."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_ready: Callable[[], None] | None = None,
        handle_signals: bool = False,
    ) -> None:
        super().__init__(config)
        self._on_ready = on_ready
        self._handle_signals = handle_signals

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(sig: int, frame: FrameType | None) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_ready is not None:
            self._on_ready()


class WebhookReceiver:
    """The receiver served by uvicorn in a background thread (tests, notebooks, embedding).

    >>> with WebhookReceiver("webhooks.sqlite", secrets="whsec_...") as rx:  # doctest: +SKIP
    ...     print(rx.webhook_url)  # http://127.0.0.1:PORT/webhooks/courier

    Keyword arguments are :func:`bulkbatch.webhooks.receiver.create_app`'s. Port 0 picks a
    free port; ``url`` is valid after ``start()``.
    """

    def __init__(
        self,
        store_path: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        **app_options: Any,
    ) -> None:
        self.store_path = store_path
        self.host = host
        self.port = port
        self.url = ""
        self.app = create_app(store_path, **app_options)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def __repr__(self) -> str:
        return f"WebhookReceiver({self.url or 'not started'}, store={os.fspath(self.store_path)!r})"

    @property
    def webhook_url(self) -> str:
        return self.url + WEBHOOK_PATH

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"the receiver is already started at {self.url}")
        self._sock = _bind(self.host, self.port)
        self.url = _url(self.host, self._sock)
        self._server = _Server(_config(self.app, log_config=None))
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"bulkbatch-webhooks-{self.url}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the webhook receiver failed to start; see the log")
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve(
    store_path: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8090,
    secrets: str | Sequence[str] | None = None,
    insecure_no_signature: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_age: float | None = DEFAULT_MAX_AGE,
    max_future: float = DEFAULT_MAX_FUTURE,
    keep_bodies: bool = False,
    durability: str = "fsync",
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, then commit what is queued; call ``on_ready(url)`` once up.

    Raises :class:`~bulkbatch.webhooks.errors.WebhookConfigError` (no secret),
    :class:`~bulkbatch.webhooks.errors.WebhookStoreError` (store cannot be opened) or
    ``OSError`` (cannot listen).
    """
    app = create_app(
        store_path,
        secrets=secrets,
        insecure_no_signature=insecure_no_signature,
        max_body_bytes=max_body_bytes,
        max_age=max_age,
        max_future=max_future,
        keep_bodies=keep_bodies,
        durability=durability,
        body_timeout=body_timeout,
    )
    # Open the store before listening, so a bad path fails fast with a clear error.
    WebhookStore(store_path, durability=durability).close()
    # The writer thread gives up the GIL for every SQLite step and fsync; with the event loop
    # busy in the main thread, each retake waits up to a switch interval (5 ms by default).
    # This process is ours alone, so shorten it: measured 2.7k -> 4.6k events/s.
    sys.setswitchinterval(0.0005)
    sock = _bind(host, port)
    url = _url(host, sock)
    server = _Server(
        _config(app, log_config=dict(uvicorn.config.LOGGING_CONFIG)),
        on_ready=(lambda: on_ready(url)) if on_ready is not None else None,
        handle_signals=True,
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise RuntimeError("the webhook receiver failed to start; see the log above")
