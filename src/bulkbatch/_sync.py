"""Run a coroutine to completion from synchronous code, even inside Jupyter.

Jupyter already runs an asyncio loop in the main thread, so ``anyio.run`` would fail
there ("already running"). In that case the coroutine runs in a worker thread's own
loop through an anyio blocking portal, and the caller blocks until it is done.

Ctrl-C (and what :func:`bulkbatch.stopping.stop_on` adds) is taken over while the coroutine runs in the main
thread (:func:`_stoppable`).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import anyio
import anyio.abc
import anyio.from_thread

from bulkbatch.errors import unwrap
from bulkbatch.stopping import stop_signals

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
        taken = _stop_signals()
        if taken:
            return anyio.run(_stoppable, call, taken)
        return anyio.run(call)
    with anyio.from_thread.start_blocking_portal() as portal:
        return portal.call(call)


def _stop_signals() -> list[signal.Signals]:
    """The signals this call takes over (:func:`bulkbatch.stopping.stop_signals`): none outside
    the main thread, the only one that can set handlers. Every handler is set back after."""
    if threading.current_thread() is not threading.main_thread():
        return []
    return stop_signals()


async def _stoppable(call: Callable[[], Awaitable[T]], taken: list[signal.Signals]) -> T:
    """``call()``, which any of ``taken`` stops as an anyio cancellation, then
    ``KeyboardInterrupt`` naming the signal.

    asyncio's own Ctrl-C handling cancels the main task natively, and a native cancel goes
    through anyio's shields: the future of a worker thread that is still using the run
    database is cancelled under it, and the pipeline then closed a DuckDB connection that was
    busy (``ResourceInUseException``). The wait for the ledger's last commit is shielded the
    same way. Taken as an anyio cancellation, every shielded wait holds: DuckDB is interrupted
    and its thread waited for, acknowledged batches are committed, then the stop comes out as
    Ctrl-C does.
    """
    received: list[signal.Signals] = []
    result: list[T] = []
    # asyncio sets SIGINT back to Python's default handler and any other signal to SIG_DFL
    # when the receiver closes: the caller's own handlers (the CLI's) are put back after.
    previous = {sig: signal.getsignal(sig) for sig in taken}

    async def watch(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(*taken) as signals:
            task_status.started()
            async for signum in signals:
                received.append(signal.Signals(signum))
                tg.cancel_scope.cancel()

    try:
        async with anyio.create_task_group() as tg:
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
    if received:
        raise KeyboardInterrupt(received[0].name)
    raise AssertionError("unreachable: the work neither finished nor was stopped")
