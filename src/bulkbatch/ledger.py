"""The one writer of a run database while HTTP work is in flight.

Batch workers and pagers never touch DuckDB themselves: they send records into a memory
object stream, and one :class:`LedgerWriter` task commits them. It drains whatever is
waiting and commits it in one transaction (group commit), so a 1M-user run that makes
10,000 page requests does not make 10,000 tiny transactions, yet a record is durable
before the writer reports it done.

A batch is written here only after Courier acknowledged it; a page is written together
with the cursor that follows it, in the same transaction, so paging resumes exactly
after the last stored page.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import anyio
import duckdb
import pyarrow as pa
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from bulkbatch.columns import int32s, strings
from bulkbatch.db import memory_share
from bulkbatch.errors import StateError

__all__ = ["NETWORK_SHARE", "BatchAck", "LedgerWriter", "PageRecord"]

NETWORK_SHARE = 0.25
"""DuckDB's share of its memory cap while a :class:`LedgerWriter` is open, i.e. while the run
talks to Courier. The DuckDB work of that phase is small: reading 16 batches of the plan at a
time, committing groups of acknowledgements and pages. Under the whole cap, DuckDB kept each
plan block the send read cached until the cap was full; at 10M people that held ~270 MiB for
the whole send and made the run's peak RSS (631 MiB). Reading a 10M plan's bodies under 64MB
instead: RSS 452 → 187 MiB, and no slower. With this share, the 10M send and tracking peaked
at 358 MiB (``bench/RESULTS.md``, round 7 of #19)."""


@dataclass(frozen=True)
class BatchAck:
    """Courier acknowledged one ingest call."""

    batch_no: int
    job_no: int
    job_id: str
    users: int
    total: int | None
    duplicate_errors: int
    other_errors: list[tuple[str | None, str]] = field(default_factory=list)
    """(recipient, error text) for per-user errors other than ``Duplicate user``."""


@dataclass(frozen=True)
class PageRecord:
    """One page of ``GET /bulk/{job}/users`` and the cursor after it.

    The users' columns are Arrow strings, built by :meth:`of` as the page arrives. Held as
    Python lists, the pages waiting for a commit (up to a group of 2,000 and a queue of 256,
    100 users each) were the run's most numerous objects: a 1M send's Python arenas grew
    from 45 to 76 while it paged, and the few objects that outlived the pages kept 63 of them
    into the results stage, against 34 this way (``bench/RESULTS.md``, round 21 of #19).
    """

    job_no: int
    page_no: int
    recipients: pa.Array
    message_ids: pa.Array
    statuses: pa.Array
    next_cursor: str | None
    done: bool

    @classmethod
    def of(
        cls,
        job_no: int,
        page_no: int,
        recipients: Sequence[str | None],
        message_ids: Sequence[str | None],
        statuses: Sequence[str | None],
        *,
        next_cursor: str | None,
        done: bool,
    ) -> PageRecord:
        """A page from its users' columns (``None`` is null)."""
        return cls(
            job_no,
            page_no,
            strings(recipients),
            strings(message_ids),
            strings(statuses),
            next_cursor,
            done,
        )


Record = BatchAck | PageRecord


class LedgerWriter:
    """Commits :class:`BatchAck` and :class:`PageRecord` values from many tasks, in order.

    Usage::

        async with LedgerWriter(con) as ledger:
            await ledger.put(ack)

    A record waits at most ``linger`` seconds before its group is committed; a crash in
    that window only means a batch is re-sent under the same Idempotency-Key (Courier
    replays the answer) or a page is fetched again, never a duplicate. :meth:`flush` cuts
    the wait short, so nothing that waits on a commit waits for the linger. While it is open,
    DuckDB runs under :data:`NETWORK_SHARE` of its memory cap.

    ``linger`` is 0.5 s: a commit costs ~10 ms of CPU whatever its size (the paging upsert
    and the WAL sync), and at 0.1 s a 200k-user run at 20 ms latency made ~50 commits of ~27
    pages each, a quarter of the paging loop's CPU; at 0.5 s it makes ~18 (``bench/RESULTS.md``).
    """

    MAX_GROUP = 2000

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        on_commit: Callable[[list[Record]], None] | None = None,
        buffer: int = 256,
        linger: float = 0.5,
    ) -> None:
        self.linger = linger
        self._cursor = con.cursor()
        self._on_commit = on_commit
        send, recv = anyio.create_memory_object_stream[Record](buffer)
        self._send: MemoryObjectSendStream[Record] = send
        self._recv: MemoryObjectReceiveStream[Record] = recv
        self._queued = 0
        self._committed = 0
        self._flush_to = 0  # the most records a flush has waited for
        self._progress = anyio.Event()
        self._failed: BaseException | None = None
        self._finished = anyio.Event()
        self._lingering: anyio.CancelScope | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Self:
        self._cm = self._open()
        return await self._cm.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._cm.__aexit__(exc_type, exc, tb)

    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[Self]:
        with memory_share(self._cursor, NETWORK_SHARE):
            async with self._writing():
                yield self

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[Self]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._run)
            try:
                yield self
            finally:
                self._send.close()
                # Commit what was acknowledged even when the caller is failing: those batches
                # really were accepted by Courier, and recording them saves a resend on resume.
                with anyio.CancelScope(shield=True):
                    await self._finished.wait()

    async def put(self, record: Record) -> None:
        """Queue ``record``; it is committed soon, in arrival order."""
        self._queued += 1
        await self._send.send(record)

    async def flush(self) -> None:
        """Return once every record queued before this call is committed."""
        target = self._queued
        self._flush_to = max(self._flush_to, target)
        while self._committed < target:
            if self._lingering is not None:
                self._lingering.cancel()
            if self._failed is not None:
                raise StateError(
                    f"Could not record progress in the run database: {self._failed}"
                ) from self._failed
            await self._progress.wait()

    async def _run(self) -> None:
        try:
            await self._drain()
        except BaseException as exc:
            self._failed = exc
            self._progress.set()
            raise
        finally:
            self._finished.set()

    async def _drain(self) -> None:
        async with self._recv:
            while True:
                try:
                    first = await self._recv.receive()
                except anyio.EndOfStream:
                    return
                group = await self._gather(first)
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._commit, group)
                self._committed += len(group)
                self._progress.set()
                self._progress = anyio.Event()
                if self._on_commit is not None:
                    self._on_commit(group)

    async def _gather(self, first: Record) -> list[Record]:
        """``first`` and the records after it, for one commit.

        Linger a moment so one transaction carries many records: a DuckDB commit syncs its
        WAL, and one commit per 100-user page was a third of a 1M run's CPU. A full group and
        :meth:`flush` cut the wait short, and a flush that came before this task could begin
        to linger (``put`` then ``flush``, as after a job's last page or batch) means no
        linger at all, only what is queued already: such a flush had waited the whole linger
        (0.5 s after a job's last batch and after its last page, when the writer task sat
        idle at the put; the last job's are on the run's critical path; ``tests/test_ledger.py``).
        """
        group: list[Record] = [first]
        if self._flush_to > self._committed:  # a flush waits for this group
            with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream):
                while len(group) < self.MAX_GROUP:
                    group.append(self._recv.receive_nowait())
            return group
        with anyio.move_on_after(self.linger) as self._lingering:
            while len(group) < self.MAX_GROUP:
                try:
                    group.append(await self._recv.receive())
                except anyio.EndOfStream:
                    break
        self._lingering = None
        return group

    def _commit(self, group: list[Record]) -> None:
        cur = self._cursor
        now = datetime.now(UTC).replace(tzinfo=None)
        acks = [r for r in group if isinstance(r, BatchAck)]
        pages = [r for r in group if isinstance(r, PageRecord)]
        cur.execute("BEGIN TRANSACTION")
        try:
            if acks:
                _insert_rows(
                    cur,
                    "INSERT OR REPLACE INTO batches",
                    [
                        (
                            a.batch_no,
                            a.job_no,
                            a.job_id,
                            a.users,
                            a.total,
                            a.duplicate_errors,
                            len(a.other_errors),
                            now,
                        )
                        for a in acks
                    ],
                )
                errors = [(a.batch_no, r, e) for a in acks for r, e in a.other_errors]
                if errors:
                    cur.executemany(
                        "DELETE FROM ingest_errors WHERE batch_no = ?",
                        [(b,) for b in {a.batch_no for a in acks}],
                    )
                    cur.executemany("INSERT INTO ingest_errors VALUES (?, ?, ?)", errors)
            if pages:
                rows = pa.Table.from_arrays(
                    [
                        int32s([p.job_no for p in pages for _ in range(len(p.recipients))]),
                        int32s([p.page_no for p in pages for _ in range(len(p.recipients))]),
                        pa.concat_arrays([p.recipients for p in pages]),
                        pa.concat_arrays([p.message_ids for p in pages]),
                        pa.concat_arrays([p.statuses for p in pages]),
                    ],
                    names=["job_no", "page_no", "recipient", "message_id", "status"],
                )
                cur.register("_page_rows", rows)
                cur.execute("INSERT INTO user_pages SELECT * FROM _page_rows")
                cur.unregister("_page_rows")
                last: dict[int, PageRecord] = {}
                for p in pages:
                    last[p.job_no] = p
                _insert_rows(
                    cur,
                    "INSERT OR REPLACE INTO paging",
                    [(p.job_no, p.page_no + 1, p.next_cursor, p.done) for p in last.values()],
                )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise


def _insert_rows(
    cur: duckdb.DuckDBPyConnection, insert: str, rows: list[tuple[object, ...]]
) -> None:
    """One multi-row INSERT: DuckDB's ``executemany`` runs a statement per row, which made
    the per-page cursor upsert a tenth of a 1M run's CPU."""
    if not rows:
        return
    one = "(" + ", ".join("?" * len(rows[0])) + ")"
    cur.execute(f"{insert} VALUES {', '.join([one] * len(rows))}", [v for r in rows for v in r])
