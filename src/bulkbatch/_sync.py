"""Run a coroutine to completion from synchronous code, even inside Jupyter.

Jupyter already runs an asyncio loop in the main thread, so ``anyio.run`` would fail
there ("already running"). In that case the coroutine runs in a worker thread's own
loop through an anyio blocking portal, and the caller blocks until it is done.

Ctrl-C is taken over while the coroutine runs in the main thread (:func:`_stoppable`).
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
        if _takes_ctrl_c():
            return anyio.run(_stoppable, call)
        return anyio.run(call)
    with anyio.from_thread.start_blocking_portal() as portal:
        return portal.call(call)


def _takes_ctrl_c() -> bool:
    """Whether this call may take Ctrl-C over: only in the main thread (the only one that can
    set signal handlers), and only from Python's default handler, as ``asyncio.run`` does. A
    host with its own SIGINT handler (Dagster's step processes, say) keeps it, and its own
    way of stopping; the default handler is set back when the run ends."""
    return (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )


async def _stoppable(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, which Ctrl-C stops as an anyio cancellation, then ``KeyboardInterrupt``.

    asyncio's own Ctrl-C handling cancels the main task natively, and a native cancel goes
    through anyio's shields: the future of a worker thread that is still using the run
    database is cancelled under it, and the pipeline then closed a DuckDB connection that was
    busy (``ResourceInUseException``). The wait for the ledger's last commit is shielded the
    same way. Taken as an anyio cancellation, every shielded wait holds: DuckDB is interrupted
    and its thread waited for, acknowledged batches are committed, then the stop comes out as
    Ctrl-C does.
    """
    stopped = False
    result: list[T] = []

    async def watch(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        nonlocal stopped
        with anyio.open_signal_receiver(signal.SIGINT) as signals:
            task_status.started()
            async for _ in signals:
                stopped = True
                tg.cancel_scope.cancel()

    try:
        async with anyio.create_task_group() as tg:
            await tg.start(watch)  # the receiver is installed before the work starts
            result.append(await call())
            tg.cancel_scope.cancel()  # done: stop watching
    except BaseExceptionGroup as group:
        raise unwrap(group) from None
    if result:
        return result[0]  # a stop that came as the work finished changes nothing
    if stopped:
        raise KeyboardInterrupt
    raise AssertionError("unreachable: the work neither finished nor was stopped")
