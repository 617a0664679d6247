"""Run a coroutine to completion from synchronous code, even inside Jupyter.

Jupyter already runs an asyncio loop in the main thread, so ``anyio.run`` would fail
there ("already running"). In that case the coroutine runs in a worker thread's own
loop through an anyio blocking portal, and the caller blocks until it is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import anyio
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
        return anyio.run(call)
    with anyio.from_thread.start_blocking_portal() as portal:
        return portal.call(call)
