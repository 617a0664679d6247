"""Serve the emulator with uvicorn: in a thread (:class:`Emulator`) or blocking (:func:`serve`)."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from types import FrameType, TracebackType
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette

from bulkbatch.emulator.app import create_app
from bulkbatch.emulator.backend import Progression
from bulkbatch.emulator.contract import check_wanted
from bulkbatch.emulator.faults import EmulatorConfigError, FaultSpec
from bulkbatch.emulator.handlers import DROP_LOG_MESSAGE, EmulatorState
from bulkbatch.emulator.rules import parse_routes
from bulkbatch.emulator.webhooks import DEFAULT_TIME_SCALE, TIMEOUT_S

__all__ = ["Emulator", "serve"]


class _QuietDrops(logging.Filter):
    """Hide uvicorn's error line for the connections the emulator drops on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != DROP_LOG_MESSAGE


_filter_lock = threading.Lock()
_filter_installed = False


def _install_drop_filter() -> None:
    global _filter_installed
    with _filter_lock:
        if not _filter_installed:
            logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
            _filter_installed = True


def _config(app: Starlette, log_config: dict[str, Any] | None) -> uvicorn.Config:
    fast_http = importlib.util.find_spec("httptools") is not None
    fast_loop = importlib.util.find_spec("uvloop") is not None and os.name != "nt"
    return uvicorn.Config(
        app,
        http="httptools" if fast_http else "h11",
        loop="uvloop" if fast_loop else "asyncio",
        lifespan="off",
        access_log=False,
        log_level="warning",
        log_config=log_config,
        timeout_keep_alive=30,
        server_header=False,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
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
    """uvicorn's server with a ready callback and signal handling that exits cleanly."""

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
        # uvicorn re-raises the captured signal after shutdown (exit status 130/143); the
        # emulator command must exit 0 on SIGINT/SIGTERM, so handle them here instead.
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


class Emulator:
    """The emulator served by uvicorn in a background thread.

    >>> with Emulator() as emu:  # doctest: +SKIP
    ...     httpx.post(f"{emu.url}/bulk", json={"message": {"event": "welcome"}})

    ``start()`` returns once the server accepts connections; ``stop()`` shuts it down and
    joins the thread. Port 0 (the default) picks a free port; ``url`` is valid after start.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        db: str | os.PathLike[str] | None = None,
        api_key: str | None = None,
        faults: str | FaultSpec | None = None,
        progression: str = "polls:2",
        flavor: str = "current",
        routes: Iterable[str] | Mapping[str, Iterable[str]] | None = None,
        check_contract: bool | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        webhook_time_scale: float = DEFAULT_TIME_SCALE,
        webhook_timeout: float = TIMEOUT_S,
    ) -> None:
        if api_key is not None and not api_key.strip():
            raise EmulatorConfigError(
                "the emulator API key is empty, which would accept any request; pass a "
                "non-empty api_key, or None to turn auth off"
            )
        if flavor not in ("current", "tutorial"):
            raise EmulatorConfigError(f"bad flavor {flavor!r}: expected 'current' or 'tutorial'")
        self.host = host
        self.port = port
        self.db = db
        self._api_key = api_key
        self.faults = FaultSpec.parse(faults)
        self.progression = Progression.parse(progression)
        self.flavor = flavor
        self.routes = parse_routes(routes)
        self.check_contract = check_wanted(check_contract)
        self.webhook_url = webhook_url
        self._webhook_secret = webhook_secret
        self.webhook_time_scale = webhook_time_scale
        self.webhook_timeout = webhook_timeout
        self.url = ""
        self.app: Starlette | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def __repr__(self) -> str:
        state = self.url or "not started"
        return (
            f"Emulator({state}, db={os.fspath(self.db) if self.db else None!r}, "
            f"flavor={self.flavor!r}, progression={str(self.progression)!r}, "
            f"faults={str(self.faults)!r}, auth={self._api_key is not None}, "
            f"webhooks={self.webhook_url is not None})"
        )

    @property
    def state(self) -> EmulatorState:
        if self.app is None:
            raise RuntimeError("Emulator is not started; call start() or use it as a context")
        state: EmulatorState = self.app.state.emulator
        return state

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"Emulator already started at {self.url}")
        _install_drop_filter()
        self.app = create_app(
            self.db,
            self._api_key,
            self.faults,
            self.progression,
            flavor=self.flavor,
            routes=self.routes,
            check_contract=self.check_contract,
            webhook_url=self.webhook_url,
            webhook_secret=self._webhook_secret,
            webhook_time_scale=self.webhook_time_scale,
            webhook_timeout=self.webhook_timeout,
        )
        self._sock = _bind(self.host, self.port)
        self.url = _url(self.host, self._sock)
        self.state.start()
        self._server = _Server(_config(self.app, log_config=None))
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"bulkbatch-emulator-{self.url}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the emulator server failed to start")
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        if self.app is not None:
            self.state.close()
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None
        self.app = None

    def stats(self) -> dict[str, Any]:
        """The same JSON as ``GET /_emulator/stats``."""
        return self.state.stats()

    def reset(self) -> None:
        """The same as ``POST /_emulator/reset``."""
        self.state.reset()

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
    host: str = "127.0.0.1",
    port: int = 8089,
    db: str | os.PathLike[str] | None = None,
    api_key: str | None = None,
    faults: str | FaultSpec | None = None,
    progression: str = "polls:2",
    on_ready: Callable[[str], None] | None = None,
    flavor: str = "current",
    routes: Iterable[str] | Mapping[str, Iterable[str]] | None = None,
    check_contract: bool | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    webhook_time_scale: float = DEFAULT_TIME_SCALE,
    webhook_timeout: float = TIMEOUT_S,
) -> None:
    """Serve until SIGINT/SIGTERM; call ``on_ready(url)`` once listening. Returns normally.

    Raises :class:`~bulkbatch.emulator.faults.EmulatorConfigError` for bad settings (before
    binding the port).
    """
    _install_drop_filter()
    app = create_app(
        db,
        api_key,
        faults,
        progression,
        flavor=flavor,
        routes=routes,
        check_contract=check_contract,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        webhook_time_scale=webhook_time_scale,
        webhook_timeout=webhook_timeout,
    )
    state: EmulatorState = app.state.emulator
    sock = _bind(host, port)
    url = _url(host, sock)
    log_config = dict(uvicorn.config.LOGGING_CONFIG)
    server = _Server(
        _config(app, log_config=log_config),
        on_ready=(lambda: on_ready(url)) if on_ready is not None else None,
        handle_signals=True,
    )
    try:
        state.start()
        server.run(sockets=[sock])
    finally:
        state.close()
        sock.close()
