"""Run a coroutine to completion from synchronous code, even inside Jupyter.

Jupyter already runs an asyncio loop in the main thread, so ``anyio.run`` would fail
there ("already running"). In that case the coroutine runs in a worker thread's own
loop through an anyio blocking portal, and the caller blocks until it is done.

Ctrl-C (and what :func:`bulkbatch.stopping.stop_on` adds) is taken over while the coroutine
runs in the main thread, and :func:`bulkbatch.stopping.request_stop` reaches it from any
thread or signal handler (:func:`_stoppable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import anyio
import anyio.abc
import anyio.from_thread

from bulkbatch.errors import unwrap
from bulkbatch.stopping import HostHandler, host_handlers, stop_signals, stoppable

__all__ = ["run_sync"]

T = TypeVar("T")
P = ParamSpec("P")


def run_sync(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn(*args, **kwargs)`` and return its result, whether or not a loop is running."""

    async def call() -> T:
        try:
            return await fn(*args, **kwargs)
        except BaseExceptionGroup as group:
            # Task groups wrap errors; callers (and the CLI) expect the error itself.
            raise unwrap(group) from None

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return anyio.run(_stoppable, call, *_stop_signals())
    with anyio.from_thread.start_blocking_portal() as portal:
        return portal.call(_stoppable, call, [], {})


def _stop_signals() -> tuple[list[signal.Signals], dict[signal.Signals, HostHandler]]:
    """The signals this call takes over (:func:`bulkbatch.stopping.stop_signals` and
    :func:`~bulkbatch.stopping.host_handlers`): none outside the main thread, the only one
    that can set handlers. Every handler is set back after."""
    if threading.current_thread() is not threading.main_thread():
        return [], {}
    return stop_signals(), host_handlers()


class _Stop:
    """How a run in :func:`_stoppable` is stopped, and what it ends in."""

    def __init__(self, scope: anyio.CancelScope, hosts: dict[signal.Signals, HostHandler]):
        self.scope = scope
        self.hosts = hosts
        self.reasons: list[str] = []
        self.raised: list[BaseException] = []
        self.loop = asyncio.get_running_loop()

    def now(self, reason: str) -> None:
        self.reasons.append(reason)
        self.scope.cancel()

    def soon(self, reason: str) -> None:
        """:meth:`now`, from a signal handler or another thread."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: the run is over
            self.loop.call_soon_threadsafe(self.now, reason)

    def received(self, signum: int) -> None:
        sig = signal.Signals(signum)
        host = self.hosts.get(sig)
        if host is None:
            self.now(sig.name)
            return
        try:
            host(signum, None)  # a handler that returns lets the run go on
        except BaseException as exc:  # noqa: BLE001 - the host's, raised once the run unwound
            self.raised.append(exc)
            self.now(sig.name)

    def error(self) -> BaseException:
        if self.raised:
            return self.raised[0]
        if self.reasons:
            return KeyboardInterrupt(self.reasons[0])
        return AssertionError("unreachable: the work neither finished nor was stopped")


async def _stoppable(
    call: Callable[[], Awaitable[T]],
    taken: list[signal.Signals],
    hosts: dict[signal.Signals, HostHandler],
) -> T:
    """``call()``, which any of ``taken`` (or :func:`~bulkbatch.stopping.request_stop`) stops
    as an anyio cancellation, then ``KeyboardInterrupt`` naming the signal (or the reason).
    A signal of ``hosts`` calls the host's handler from this loop; if it raises, the run is
    stopped the same way and its exception comes out after.

    asyncio's own Ctrl-C handling cancels the main task natively, and a native cancel goes
    through anyio's shields: the future of a worker thread that is still using the run
    database is cancelled under it, and the pipeline then closed a DuckDB connection that was
    busy (``ResourceInUseException``). A host's handler raising where the signal landed,
    inside the event loop, did the same. The wait for the ledger's last commit is shielded
    the same way. Taken as an anyio cancellation, every shielded wait holds: DuckDB is
    interrupted and its thread waited for, acknowledged batches are committed, then the stop
    comes out.
    """
    result: list[T] = []
    watched = [*taken, *hosts]
    # asyncio sets SIGINT back to Python's default handler and any other signal to SIG_DFL
    # when the receiver closes: the caller's own handlers (the CLI's, a host's) are put back.
    previous = {sig: signal.getsignal(sig) for sig in watched}

    async def watch(stop: _Stop, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(*watched) as signals:
            task_status.started()
            async for signum in signals:
                stop.received(signum)

    try:
        async with anyio.create_task_group() as tg:
            stop = _Stop(tg.cancel_scope, hosts)
            with stoppable(stop.soon):
                if watched:
                    await tg.start(watch, stop)  # installed before the work starts
                result.append(await call())
                tg.cancel_scope.cancel()  # done: stop watching
    except BaseExceptionGroup as group:
        raise unwrap(group) from None
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(sig, handler)
    if result:
        return result[0]  # a stop that came as the work finished changes nothing
    raise stop.error()
