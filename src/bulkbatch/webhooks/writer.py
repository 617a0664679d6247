"""Group commit: one writer thread turns many concurrent events into one SQLite transaction.

Request handlers call ``await writer.write(event)``; it returns only after the transaction
holding that event committed (``synchronous=FULL``), and raises if the commit failed. So a
2xx always means "on disk". The thread takes whatever is queued (up to ``max_batch``),
waits at most ``linger`` seconds for more while the batch is small, commits, and wakes every
waiting handler with one ``call_soon_threadsafe`` per event loop. Under load the batches
grow by themselves: events queue up while the previous commit is being fsync'ed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from bulkbatch.webhooks.errors import WebhookStoreError
from bulkbatch.webhooks.events import WebhookEvent
from bulkbatch.webhooks.store import WebhookStore

__all__ = ["GroupCommitWriter", "WriterStats"]

log = logging.getLogger("bulkbatch.webhooks")

_Item = tuple[WebhookEvent, asyncio.AbstractEventLoop, "asyncio.Future[None]"]


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters of a :class:`GroupCommitWriter` (for ``/healthz`` and benchmarks)."""

    committed: int
    commits: int
    failed: int
    pending: int
    alive: bool
    last_error: str | None


def _settle(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for fut in futures:
        if fut.done():  # the handler gave up (client went away); nothing to tell
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


class GroupCommitWriter:
    """The single writer of a :class:`WebhookStore`, batching concurrent events.

    :param store_path: the SQLite file (created if missing)
    :param max_batch: most events in one transaction
    :param linger: seconds to wait for more events when fewer than ``max_batch`` are queued
    :param max_pending: when this many events wait, :meth:`write` fails fast (the receiver
        answers 503, which Courier retries) instead of growing memory without bound
    :param durability: ``fsync`` or ``process``, see :class:`WebhookStore`
    """

    def __init__(
        self,
        store_path: str | os.PathLike[str],
        *,
        max_batch: int = 2000,
        linger: float = 0.0,
        max_pending: int = 50_000,
        durability: str = "fsync",
    ) -> None:
        if max_batch < 1 or linger < 0 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be >= 1 and linger >= 0")
        self.store_path = store_path
        self.max_batch = max_batch
        self.linger = linger
        self.max_pending = max_pending
        self.durability = durability
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._open_error: BaseException | None = None
        self._closing = False
        self._committed = 0
        self._commits = 0
        self._failed = 0
        self._last_error: str | None = None

    def start(self) -> None:
        """Open the store in the writer thread; raise :class:`WebhookStoreError` if it fails."""
        if self._thread is not None:
            raise RuntimeError("the writer is already started")
        self._thread = threading.Thread(target=self._run, name="bulkbatch-webhooks-writer")
        self._thread.daemon = True
        self._thread.start()
        self._ready.wait()
        if self._open_error is not None:
            self._thread.join()
            raise self._open_error

    async def write(self, event: WebhookEvent) -> None:
        """Store ``event``; return once its transaction committed.

        Raises :class:`WebhookStoreError` if the writer is stopped, overloaded or the commit
        failed (nothing of that batch is stored then).
        """
        if self._closing or self._thread is None or not self._thread.is_alive():
            raise WebhookStoreError("the webhook store writer is not running")
        if self._queue.qsize() >= self.max_pending:
            raise WebhookStoreError(f"more than {self.max_pending} events wait to be written")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._queue.put((event, loop, fut))
        await fut

    def stats(self) -> WriterStats:
        alive = self._thread is not None and self._thread.is_alive()
        return WriterStats(
            self._committed,
            self._commits,
            self._failed,
            self._queue.qsize(),
            alive,
            self._last_error,
        )

    def close(self, timeout: float | None = 30.0) -> None:
        """Commit what is queued, then stop the thread and close the store."""
        self._closing = True
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)

    # -- the writer thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            store = WebhookStore(self.store_path, durability=self.durability)
        except (WebhookStoreError, OSError) as exc:
            self._open_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                batch, stop = self._take()
                if batch:
                    self._commit(store, batch)
                if stop:
                    return
        finally:
            store.close()

    def _take(self) -> tuple[list[_Item], bool]:
        first = self._queue.get()
        if first is None:
            return self._drain_rest(), True
        batch = [first]
        deadline = time.monotonic() + self.linger
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is None:
                batch.extend(self._drain_rest())
                return batch, True
            batch.append(item)
        return batch, False

    def _drain_rest(self) -> list[_Item]:
        rest: list[_Item] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return rest
            if item is not None:
                rest.append(item)

    def _commit(self, store: WebhookStore, batch: list[_Item]) -> None:
        error: BaseException | None = None
        try:
            store.insert(item[0] for item in batch)
            self._committed += len(batch)
            self._commits += 1
        except WebhookStoreError as exc:
            error = exc
            log.error("webhook store commit failed for %d events: %s", len(batch), exc)
        except Exception as exc:  # never leave a handler waiting forever
            error = WebhookStoreError(f"unexpected {type(exc).__name__} while writing: {exc}")
            log.exception("webhook store commit failed for %d events", len(batch))
        if error is not None:
            self._failed += len(batch)
            self._last_error = str(error)
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = defaultdict(list)
        for _, loop, fut in batch:
            by_loop[loop].append(fut)
        for loop, futures in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: its handlers are gone
                loop.call_soon_threadsafe(_settle, futures, error)
