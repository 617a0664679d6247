"""Stage 4, track: wait for each job to finish, then page its per-user results.

* **wait** — poll ``GET /bulk/{job}`` until ``COMPLETED`` or ``ERROR``, reporting received /
  enqueued / failures through ``progress``. The first re-poll comes after 0.1 s and the
  wait doubles up to ``poll_interval`` (:class:`~bulkbatch.client.paging.PollSchedule`).
  The wait is always bounded: by ``max_wait`` (``--timeout``, Python ``timeout=``) or, when
  none is given, by a generous default that grows with the job's size
  (:func:`~bulkbatch.client.paging.default_max_wait`). When it runs out the run stops with
  :class:`~bulkbatch.errors.Interrupted` and stays resumable.
* **page** — ``GET /bulk/{job}/users`` by cursor, 100 users a page. Each page goes to the
  ledger together with the cursor that follows it, so an interrupted paging resumes after
  the last stored page instead of starting over. Paging is sequential within a job; a run
  split into several jobs (``max_job_size``) pages them concurrently. Paging is bounded
  (:class:`~bulkbatch.client.paging.UsersPaging`): a repeated cursor, more pages than the
  job's ``received`` allows, or more users than it received stop it with one
  :class:`~bulkbatch.errors.PagingError` naming the job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import duckdb
import pyarrow as pa
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from bulkbatch.client.concurrency import TRACKED_PER_READ_SLOT
from bulkbatch.client.courier import CourierClient, Job
from bulkbatch.client.paging import PollSchedule, UsersPaging
from bulkbatch.client.ratelimit import AnyioClock, Clock
from bulkbatch.columns import int64s, strings
from bulkbatch.errors import Interrupted, JobFailed
from bulkbatch.ledger import LedgerWriter, PageRecord
from bulkbatch.models import FINAL_JOB_STATUSES
from bulkbatch.progress import NullProgress, Progress, ProgressEvent
from bulkbatch.state import JobState, RunState

__all__ = [
    "FINAL_STATUSES",
    "TrackInfo",
    "fetch_messages",
    "page_users",
    "tracked_at_once",
    "wait_for_job",
]

FINAL_STATUSES = FINAL_JOB_STATUSES


def tracked_at_once(client: CourierClient) -> int:
    """How many jobs a run waits on and pages at once: ``TRACKED_PER_READ_SLOT`` (2) for each
    read the client may have in flight (``client.reads.limit``); the client's pool holds a
    connection for each (:mod:`bulkbatch.client.concurrency`).

    More jobs than read slots page side by side, and their pages queue at the client's read
    gate, which hands a freed slot to the job with the most pages left
    (:mod:`bulkbatch.client.concurrency`). One job per read slot, as before, made the last
    jobs to finish ingesting wait for a whole job to be paged and then paged them alone: 1M
    people at 150 ms in 98 jobs for 64 slots (``--max-job-size 10000``), 34 jobs paged one page
    at a time for the last 12 s; 45.7 s for the run, 38.5-38.8 with every job tracked at once
    (40.6-41.1 with slots first come, first served). The bound keeps a run of thousands of
    small jobs from polling all of them at once (a waiting job polls at most once per
    ``--poll-interval``; status reads take no read slot).
    """
    return TRACKED_PER_READ_SLOT * client.reads.limit


def _remember(state: RunState, job: JobState, remote: Job) -> None:
    job.status = remote.status
    job.received = remote.received
    job.enqueued = remote.enqueued
    job.failures = remote.failures


def _wait_event(job: JobState, remote: Job, elapsed: float) -> ProgressEvent:
    return ProgressEvent(
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
            "elapsed": elapsed,
        },
    )


def _failed(job: JobState, remote: Job) -> JobFailed:
    return JobFailed(
        f"Bulk job {job.job_id} ended in status ERROR ({remote.enqueued} enqueued, "
        f"{remote.failures} failures of {remote.received}). Contact Courier support "
        "with the job id; per-user statuses are in the results where known."
    )


def _gave_up(state: RunState, job: JobState, remote: Job, schedule: PollSchedule) -> Interrupted:
    if schedule.is_default:
        limit = f"after {schedule.limit:g} s, the default wait for a job of {schedule.users} users"
        more = "To wait longer in one go, pass --timeout SECONDS (Python: timeout=)."
    else:
        limit = f"after {schedule.limit:g} s (--timeout, Python timeout=)"
        more = "Raise --timeout (Python: timeout=) to wait longer in one go."
    return Interrupted(
        f"Job {job.job_id} is still {remote.status} {limit} ({remote.enqueued} of "
        f"{remote.received} enqueued). Nothing is lost: run 'bulkbatch resume "
        f"{state.run_dir}' later to keep waiting and fetch results. {more}"
    )


async def wait_for_job(
    client: CourierClient,
    state: RunState,
    job: JobState,
    *,
    poll_interval: float = 1.0,
    max_wait: float | None = None,
    progress: Progress = NullProgress,
    clock: Clock | None = None,
) -> Job:
    """Poll the job until it is COMPLETED or ERROR.

    :param poll_interval: the longest wait between polls; the first re-poll is after 0.1 s
    :param max_wait: seconds to wait in all; ``None``: the default for the job's size
    :param clock: time and sleep (tests pass a fake one); the event loop's by default
    :raises JobFailed: the job ended in ERROR
    :raises Interrupted: the wait ran out (the run is resumable)
    """
    assert job.job_id is not None
    clock = clock if clock is not None else AnyioClock()
    started = clock.now()
    schedule: PollSchedule | None = None
    while True:
        remote = await client.retrieve_job(job.job_id)
        _remember(state, job, remote)
        elapsed = clock.now() - started
        progress(_wait_event(job, remote, elapsed))
        if remote.status in FINAL_STATUSES:
            state.save()
            if remote.status == "ERROR":
                raise _failed(job, remote)
            return remote
        if schedule is None:
            users = max(job.users, remote.received)
            schedule = PollSchedule(poll_interval, max_wait=max_wait, users=users)
        wait = schedule.next_wait()
        if schedule.expired(elapsed, wait):
            state.save()
            raise _gave_up(state, job, remote, schedule)
        await clock.sleep(wait)


def _paging_position(
    con: duckdb.DuckDBPyConnection, job_no: int
) -> tuple[int, str | None, bool, int]:
    """``(pages, cursor, done, users listed)`` stored for ``job_no``."""
    cur = con.cursor()
    row = cur.execute(
        "SELECT pages, cursor, done FROM paging WHERE job_no = ?", [job_no]
    ).fetchone()
    if row is None:
        return 0, None, False, 0
    listed = cur.execute("SELECT count(*) FROM user_pages WHERE job_no = ?", [job_no]).fetchone()
    return int(row[0]), row[1], bool(row[2]), int(listed[0]) if listed else 0


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

    :raises PagingError: a cursor repeats, or the listing outgrows the job's ``received``
    """
    assert job.job_id is not None
    page_no, cursor, done, listed = await anyio.to_thread.run_sync(
        _paging_position, con, job.job_no
    )
    received = job.received if job.received is not None else job.users
    paging = UsersPaging(job.job_id, received, pages=page_no, listed=listed, cursor=cursor)
    fetched = 0
    while not done:
        page = await client.list_user_statuses(
            job.job_id, cursor=paging.cursor, pages_left=paging.pages_left
        )
        more = paging.check_recipients(page.recipients, page.cursor, page.more)
        await ledger.put(
            PageRecord.of(
                job.job_no,
                page_no,
                page.recipients,
                page.message_ids,
                page.statuses,
                next_cursor=page.cursor if more else None,
                done=not more,
            )
        )
        fetched += 1
        page_no += 1
        done = not more
        progress(
            ProgressEvent(
                "page",
                paging.listed,
                job.received,
                "users",
                extra={
                    "job_no": job.job_no,
                    "pages": page_no,
                    "jobs": len(state.jobs),
                    "users": sum(j.users for j in state.jobs),
                    "paged": done,
                },
            )
        )
    # Every page is committed before the job counts as paged: a state.json saved by another
    # job's step must never claim pages the ledger does not hold yet.
    await ledger.flush()
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


_MESSAGE_COLUMNS: tuple[tuple[str, Callable[[Any], pa.Array]], ...] = (
    ("message_id", strings),
    ("delivery_status", strings),
    ("enqueued", int64s),
    ("sent", int64s),
    ("delivered", int64s),
    ("opened", int64s),
    ("clicked", int64s),
    ("error", strings),
)
"""The ``messages`` columns and how each is built (:mod:`bulkbatch.columns`: not
``pa.array``, which imports pandas)."""


def _store_messages(con: duckdb.DuckDBPyConnection, rows: list[tuple[Any, ...]]) -> None:
    """Upsert ``rows`` in one statement over an Arrow table: DuckDB's ``executemany`` runs
    one statement per row, which made storing 2,000 messages a third of the demo's CPU."""
    latest = {row[0]: row for row in rows}  # one row per id (the last), as the upsert needs
    columns = list(zip(*latest.values(), strict=True)) if latest else [()] * 8
    table = pa.table(
        {name: build(col) for (name, build), col in zip(_MESSAGE_COLUMNS, columns, strict=True)}
    )
    cur = con.cursor()
    cur.execute("BEGIN TRANSACTION")
    try:
        cur.register("_message_rows", table)
        cur.execute(
            "INSERT OR REPLACE INTO messages SELECT *, current_timestamp FROM _message_rows"
        )
        cur.unregister("_message_rows")
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
    ids: Sequence[str] | None = None,
) -> int:
    """Fetch ``GET /messages/{id}`` for every paged message id (or just ``ids``), under the
    run's rate limit.

    Delivery moves on after a job completes, so every call refreshes every message it asks
    for. Results are stored in chunks by this one task (the single writer), so a stopped
    fetch keeps what it got. Returns the count.
    """
    if ids is None:
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
                    (message_id, m.status, *(getattr(m, f) for f in MESSAGE_FIELDS), m.error)
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


@dataclass(frozen=True)
class TrackInfo:
    """What tracking learned: each job's final status and how its users ended."""

    jobs: int
    jobs_final: int
    jobs_paged: int
    statuses: dict[str, int]
    """Jobs by status (``COMPLETED``, ``ERROR``, ``PROCESSING`` …)."""
    received: int
    enqueued: int
    failures: int

    @classmethod
    def of(cls, state: RunState) -> TrackInfo:
        statuses: dict[str, int] = {}
        for j in state.jobs:
            key = j.status or "CREATED"
            statuses[key] = statuses.get(key, 0) + 1
        return cls(
            jobs=len(state.jobs),
            jobs_final=sum(1 for j in state.jobs if j.status in FINAL_STATUSES),
            jobs_paged=sum(1 for j in state.jobs if j.paged),
            statuses=statuses,
            received=sum(int(j.received or 0) for j in state.jobs),
            enqueued=sum(int(j.enqueued or 0) for j in state.jobs),
            failures=sum(int(j.failures or 0) for j in state.jobs),
        )

    def render(self) -> str:
        """One line for people."""
        parts = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items()))
        return (
            f"{self.jobs} job(s): {parts}; {self.received:,} received, {self.enqueued:,} "
            f"enqueued, {self.failures:,} failed; {self.jobs_paged} paged"
        )
