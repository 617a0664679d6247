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
from bulkbatch.stopping import stop_signals, stoppable

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
        return anyio.run(_stoppable, call, _stop_signals())
    with anyio.from_thread.start_blocking_portal() as portal:
        return portal.call(_stoppable, call, [])


def _stop_signals() -> list[signal.Signals]:
    """The signals this call takes over (:func:`bulkbatch.stopping.stop_signals`): none outside
    the main thread, the only one that can set handlers. Every handler is set back after."""
    if threading.current_thread() is not threading.main_thread():
        return []
    return stop_signals()


async def _stoppable(call: Callable[[], Awaitable[T]], taken: list[signal.Signals]) -> T:
    """``call()``, which any of ``taken`` (or :func:`~bulkbatch.stopping.request_stop`) stops
    as an anyio cancellation, then ``KeyboardInterrupt`` naming the signal (or the reason).

    asyncio's own Ctrl-C handling cancels the main task natively, and a native cancel goes
    through anyio's shields: the future of a worker thread that is still using the run
    database is cancelled under it, and the pipeline then closed a DuckDB connection that was
    busy (``ResourceInUseException``). The wait for the ledger's last commit is shielded the
    same way. Taken as an anyio cancellation, every shielded wait holds: DuckDB is interrupted
    and its thread waited for, acknowledged batches are committed, then the stop comes out as
    Ctrl-C does.
    """
    stops: list[str] = []
    result: list[T] = []
    # asyncio sets SIGINT back to Python's default handler and any other signal to SIG_DFL
    # when the receiver closes: the caller's own handlers (the CLI's) are put back after.
    previous = {sig: signal.getsignal(sig) for sig in taken}
    loop = asyncio.get_running_loop()

    def stop_now(reason: str) -> None:
        stops.append(reason)
        tg.cancel_scope.cancel()

    def stop_soon(reason: str) -> None:  # from a signal handler or another thread
        with contextlib.suppress(RuntimeError):  # the loop has closed: the run is over
            loop.call_soon_threadsafe(stop_now, reason)

    async def watch(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(*taken) as signals:
            task_status.started()
            async for signum in signals:
                stop_now(signal.Signals(signum).name)

    try:
        with stoppable(stop_soon):
            async with anyio.create_task_group() as tg:
                if taken:
                    await tg.start(watch)  # the receiver is installed before the work starts
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
    if stops:
        raise KeyboardInterrupt(stops[0])
    raise AssertionError("unreachable: the work neither finished nor was stopped")
