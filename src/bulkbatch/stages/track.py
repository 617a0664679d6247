"""Stage 4, track: wait for each job to finish, then page its per-user results.

* **wait** — poll ``GET /bulk/{job}`` every ``poll_interval`` seconds until ``COMPLETED`` or
  ``ERROR``, reporting received / enqueued / failures through ``progress``. The wait is
  bounded (``max_wait``); when it runs out the run stops with
  :class:`~bulkbatch.errors.Interrupted` and stays resumable.
* **page** — ``GET /bulk/{job}/users`` by cursor, 100 users a page. Each page goes to the
  ledger together with the cursor that follows it, so an interrupted paging resumes after
  the last stored page instead of starting over. Paging is sequential within a job; a run
  split into several jobs (``max_job_size``) pages them concurrently.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import duckdb
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from bulkbatch.client.courier import CourierClient, Job
from bulkbatch.errors import Interrupted, JobFailed
from bulkbatch.ledger import LedgerWriter, PageRecord
from bulkbatch.progress import NullProgress, Progress, ProgressEvent
from bulkbatch.state import JobState, RunState

__all__ = ["FINAL_STATUSES", "fetch_messages", "page_users", "wait_for_job"]

FINAL_STATUSES = frozenset({"COMPLETED", "ERROR"})


def _remember(state: RunState, job: JobState, remote: Job) -> None:
    job.status = remote.status
    job.received = remote.received
    job.enqueued = remote.enqueued
    job.failures = remote.failures


async def wait_for_job(
    client: CourierClient,
    state: RunState,
    job: JobState,
    *,
    poll_interval: float = 1.0,
    max_wait: float | None = None,
    progress: Progress = NullProgress,
) -> Job:
    """Poll the job until it is COMPLETED or ERROR; :class:`Interrupted` after ``max_wait`` seconds."""
    assert job.job_id is not None
    started = time.monotonic()
    while True:
        remote = await client.retrieve_job(job.job_id)
        _remember(state, job, remote)
        progress(
            ProgressEvent(
                "wait",
                remote.enqueued + remote.failures,
                remote.received,
                "users",
                message=f"job {job.job_id} {remote.status}",
                extra={
                    "job_no": job.job_no,
                    "status": remote.status,
                    "received": remote.received,
                    "enqueued": remote.enqueued,
                    "failures": remote.failures,
                    "elapsed": time.monotonic() - started,
                },
            )
        )
        if remote.status in FINAL_STATUSES:
            state.save()
            if remote.status == "ERROR":
                raise JobFailed(
                    f"Bulk job {job.job_id} ended in status ERROR ({remote.enqueued} enqueued, "
                    f"{remote.failures} failures of {remote.received}). Contact Courier support "
                    "with the job id; per-user statuses are in the results where known."
                )
            return remote
        if max_wait is not None and time.monotonic() - started + poll_interval > max_wait:
            state.save()
            raise Interrupted(
                f"Job {job.job_id} is still {remote.status} after {max_wait:g}s "
                f"({remote.enqueued} of {remote.received} enqueued). Nothing is lost: run "
                f"'bulkbatch resume {state.run_dir}' later to keep waiting and fetch results."
            )
        await anyio.sleep(poll_interval)


def _paging_position(con: duckdb.DuckDBPyConnection, job_no: int) -> tuple[int, str | None, bool]:
    row = (
        con.cursor()
        .execute("SELECT pages, cursor, done FROM paging WHERE job_no = ?", [job_no])
        .fetchone()
    )
    if row is None:
        return 0, None, False
    return int(row[0]), row[1], bool(row[2])


async def page_users(
    con: duckdb.DuckDBPyConnection,
    client: CourierClient,
    state: RunState,
    job: JobState,
    ledger: LedgerWriter,
    *,
    progress: Progress = NullProgress,
) -> int:
    """Page every user of ``job`` into the ledger, resuming after the last stored page.

    Returns the number of pages fetched by this call.
    """
    assert job.job_id is not None
    page_no, cursor, done = await anyio.to_thread.run_sync(_paging_position, con, job.job_no)
    fetched = 0
    seen = page_no * 100
    while not done:
        page = await client.list_users(job.job_id, cursor=cursor)
        items = page.items
        more = bool(page.more and page.cursor)
        await ledger.put(
            PageRecord(
                job_no=job.job_no,
                page_no=page_no,
                recipients=[i.get("recipient") for i in items],
                message_ids=[i.get("messageId") for i in items],
                statuses=[i.get("status") for i in items],
                next_cursor=page.cursor if more else None,
                done=not more,
            )
        )
        fetched += 1
        page_no += 1
        seen += len(items)
        cursor = page.cursor
        done = not more
        progress(
            ProgressEvent(
                "page", seen, job.received, "users", extra={"job_no": job.job_no, "pages": page_no}
            )
        )
    job.paged = True
    return fetched


MESSAGE_FIELDS = ("enqueued", "sent", "delivered", "opened", "clicked")


def _message_ids(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = (
        con.cursor()
        .execute(
            "SELECT DISTINCT message_id FROM user_pages WHERE message_id IS NOT NULL "
            "ORDER BY message_id"
        )
        .fetchall()
    )
    return [str(r[0]) for r in rows]


def _store_messages(con: duckdb.DuckDBPyConnection, rows: list[tuple[Any, ...]]) -> None:
    cur = con.cursor()
    cur.execute("BEGIN TRANSACTION")
    try:
        cur.executemany(
            "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, current_timestamp)",
            rows,
        )
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise


async def fetch_messages(
    con: duckdb.DuckDBPyConnection,
    client: CourierClient,
    *,
    concurrency: int,
    progress: Progress = NullProgress,
) -> int:
    """Fetch ``GET /messages/{id}`` for every paged message id, under the run's rate limit.

    Delivery moves on after a job completes, so every call refreshes every message.
    Results are stored in chunks by this one task (the single writer). Returns the count.
    """
    ids = await anyio.to_thread.run_sync(_message_ids, con)
    total = len(ids)
    send_ids, recv_ids = anyio.create_memory_object_stream[str](concurrency * 4)
    send_rows, recv_rows = anyio.create_memory_object_stream[tuple[Any, ...]](concurrency * 4)
    done = 0

    async def feed() -> None:
        async with send_ids:
            for message_id in ids:
                await send_ids.send(message_id)

    async def fetch(
        inbox: MemoryObjectReceiveStream[str], outbox: MemoryObjectSendStream[tuple[Any, ...]]
    ) -> None:
        async with inbox, outbox:
            async for message_id in inbox:
                m = await client.retrieve_message(message_id)
                await outbox.send(
                    (
                        message_id,
                        m.get("status"),
                        *(m.get(f) for f in MESSAGE_FIELDS),
                        m.get("error"),
                    )
                )

    async def store() -> None:
        nonlocal done
        pending: list[tuple[Any, ...]] = []
        async with recv_rows:
            async for row in recv_rows:
                pending.append(row)
                if len(pending) >= 1000:
                    await anyio.to_thread.run_sync(_store_messages, con, pending)
                    done += len(pending)
                    pending = []
                    progress(ProgressEvent("messages", done, total, "messages"))
        if pending:
            await anyio.to_thread.run_sync(_store_messages, con, pending)
            done += len(pending)
        progress(ProgressEvent("messages", done, total, "messages"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(feed)
        tg.start_soon(store)
        async with recv_ids, send_rows:
            for _ in range(concurrency):
                tg.start_soon(fetch, recv_ids.clone(), send_rows.clone())
    return done
