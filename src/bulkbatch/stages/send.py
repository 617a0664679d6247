"""Stage 3, send: create each bulk job once, ingest every planned batch once, run once.

How "exactly once" holds, step by step:

* **keys** — every key derives from the campaign id (:mod:`bulkbatch.identity`), never from
  where the run lives: the same campaign anywhere sends the same keys, and Courier replays its
  saved answers; two campaigns never share one.
* **create** — ``POST /bulk`` carries the key ``bb1.<campaign>.create.<job_no>``; the job id
  is written to ``state.json`` the moment it comes back. A crash before that write replays
  the same key on resume and gets the same job id back. A job that Courier reports as already
  run (the same campaign was sent before, e.g. from a lost run directory) is not ingested
  again: the run goes straight to tracking it.
* **ingest** — each batch is one ``POST /bulk/{job}`` whose body is joined from the users'
  JSON in the plan (read a chunk of batches at a time, so memory stays bounded) and whose
  key is ``bb1.<campaign>.<job>.batch.<n>``. Every user carries a stable ``recipient``,
  Courier's dedupe key, so a batch re-sent after a lost answer gets "Duplicate user" for the
  users it already has: those count as ingested, not failed.
  A batch enters the ledger only after a 2xx, through the one :class:`LedgerWriter`.
* **verify** — before a job is run, ``GET /bulk/{job}`` must report ``received`` equal to the
  planned users minus the per-user ingest errors. If not, the job is *not* run and the
  run fails loudly (:class:`~bulkbatch.errors.AccountingError`).
* **run** — ``POST /bulk/{job}/run`` with key ``bb1.<campaign>.<job>.run``; a 400
  ``BulkJobDuplicateInvocationError`` on a resumed run means it already ran.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import anyio
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from bulkbatch.client.courier import CourierClient
from bulkbatch.errors import AccountingError, JobAlreadyRun, StateError
from bulkbatch.identity import idempotency_key
from bulkbatch.ledger import BatchAck, LedgerWriter
from bulkbatch.progress import NullProgress, Progress, ProgressEvent
from bulkbatch.state import JobState, RunState

__all__ = [
    "SendInfo",
    "acked_batches",
    "acked_users",
    "create_ahead",
    "create_job",
    "ingest_job",
    "ingest_lanes",
    "ingest_progress",
    "plan_jobs",
    "run_job",
    "verify_job",
]

DUPLICATE_USER = "Duplicate user"
CHUNK_BATCHES = 16
"""Batches read from DuckDB per query: bounds the memory of bodies waiting to be sent."""


@dataclass(frozen=True)
class _Body:
    batch_no: int
    users: int
    body: bytes


@dataclass(frozen=True)
class SendInfo:
    """What the send stage did: jobs, users acknowledged, and how the API behaved."""

    jobs: int
    jobs_run: int
    users_planned: int
    users_acked: int
    replayed: bool
    """Courier already had this campaign's jobs: it was sent before, nobody was sent again."""
    seconds: float
    client: dict[str, object]

    @classmethod
    def of(cls, state: RunState, seconds: float) -> SendInfo:
        return cls(
            jobs=len(state.jobs),
            jobs_run=sum(1 for j in state.jobs if j.run),
            users_planned=sum(j.users for j in state.jobs),
            users_acked=int(state.progress.get("users_acked", 0)),
            replayed=state.replayed,
            seconds=seconds,
            client=dict(state.progress.get("client", {})),
        )

    def render(self) -> str:
        """One line for people."""
        if self.replayed:
            return (
                f"campaign already sent: Courier replayed its {self.jobs} job(s); "
                "nobody was sent again"
            )
        retries = self.client.get("retries", 0)
        return (
            f"sent {self.users_acked:,} of {self.users_planned:,} users in {self.jobs} job(s), "
            f"{self.jobs_run} run, in {self.seconds:.1f}s ({retries} retries)"
        )


def ingest_lanes(concurrency: int) -> int:
    """How many jobs ingest side by side: each job boundary costs a create and a check (two
    round trips) plus the tail of its last batches, so jobs ingested one after another left
    the line idle most of a 1M-person run at 150 ms per request (82 s of send). Up to four
    jobs share the --concurrency write slots (so requests in flight stay within it), and any
    of them may use every slot the others leave free: with a quarter each, a lane between two
    jobs left its slots idle (1M at 150 ms: send 14.6-16.0 s, against 13.3-13.5 s)."""
    return max(1, min(4, concurrency // 4))


def _slot(slots: anyio.CapacityLimiter | None) -> AbstractAsyncContextManager[object]:
    """One write slot of ``slots`` (shared by every job's writes), or none to take."""
    return slots if slots is not None else contextlib.nullcontext()


def _key(state: RunState, *parts: object) -> str:
    if not state.campaign:
        raise StateError(f"Run {state.run_id} has no campaign id yet: plan it first.")
    return idempotency_key(state.campaign, *parts)


async def create_job(
    client: CourierClient,
    state: RunState,
    job: JobState,
    *,
    slots: anyio.CapacityLimiter | None = None,
) -> str:
    """Create ``job`` once: reuse the id in state, else ``POST /bulk`` under a fixed key.

    A job Courier reports as already run (this campaign was sent before, from a run
    directory that is gone) is marked ingested and run: it is tracked, never re-sent.

    :param slots: write slots shared with the batches (the ``POST`` takes one)
    """
    if job.job_id is None:
        async with _slot(slots):
            job_id = await client.create_job(
                state.message, idempotency_key=_key(state, "create", job.job_no)
            )
        remote = await client.retrieve_job(job_id)
        job.job_id = job_id
        if not state.emulator and not state.base_url:
            state.base_url = client.base_url  # the run's jobs exist there, and only there
        if remote.status != "CREATED":
            job.ingested = job.run = True
            job.status, job.received = remote.status, remote.received
            state.replayed = True
        state.save()
    return job.job_id


async def create_ahead(
    client: CourierClient,
    state: RunState,
    job: JobState,
    creating: anyio.CapacityLimiter,
    writes: anyio.CapacityLimiter,
    progress: Progress = NullProgress,
) -> None:
    """Create ``job`` ahead of its ingest, a few jobs at a time (``creating``): a create and
    its check are two round trips an ingest lane would otherwise wait for, per job. The
    ``POST`` takes one of the run's write slots (``writes``). A job created before, or a
    canceled run (refused by :func:`ingest_job`), is left alone."""
    if job.job_id is not None or state.canceled:
        return
    async with creating:
        extra = {"job_no": job.job_no, "jobs": len(state.jobs)}
        progress(ProgressEvent("create", message=f"job {job.job_no}", extra=extra))
        await create_job(client, state, job, slots=writes)


def plan_jobs(con: duckdb.DuckDBPyConnection) -> list[tuple[int, int, int, int]]:
    """The plan's jobs: ``(job_no, users, first batch, last batch)``, in order."""
    rows = (
        con.cursor()
        .execute(
            "SELECT job_no, count(*), min(batch_no), max(batch_no) FROM plan "
            "GROUP BY job_no ORDER BY job_no"
        )
        .fetchall()
    )
    return [(int(j), int(n), int(lo), int(hi)) for j, n, lo, hi in rows]


def acked_users(con: duckdb.DuckDBPyConnection) -> int:
    """Users in acknowledged batches so far."""
    row = con.cursor().execute("SELECT coalesce(sum(users), 0) FROM batches").fetchone()
    return int(row[0]) if row else 0


def acked_batches(con: duckdb.DuckDBPyConnection, job: JobState) -> set[int]:
    rows = (
        con.cursor()
        .execute("SELECT batch_no FROM batches WHERE job_no = ?", [job.job_no])
        .fetchall()
    )
    return {int(r[0]) for r in rows}


_OPEN, _CLOSE = b'{"users":[', b"]}"


def _read_bodies(con: duckdb.DuckDBPyConnection, lo: int, hi: int, skip: set[int]) -> list[_Body]:
    """Batches ``lo..hi`` as ready-to-send request bodies.

    DuckDB reads the users' JSON in order, each followed by a comma, into one Arrow column;
    a batch's body is then one slice of that column's data buffer, copied once between the
    brackets. ``string_agg(… ORDER BY row_number) GROUP BY batch_no`` built the same bytes,
    but its ordered hash aggregate took about 14 MiB of DuckDB memory per query and 52-56 ms
    of CPU per 16 batches, against about 4.5 MiB and 31-35 ms for this ordered scan joined
    in Python (10M plan, ``bench/RESULTS.md``, round 7 of #19). The send runs a query per
    lane while DuckDB is held to a quarter of its cap
    (:data:`bulkbatch.ledger.NETWORK_SHARE`), where four of those aggregates ran out.
    Fetched as Python rows, each chunk's 16,000 small strings spread over Python's arenas (a
    1M send's grew from 26 to 45), and the few objects that outlived the chunks kept those
    arenas to the end of the run; this way a chunk also takes ~40 % less CPU (round 21 of #19).
    """
    table = (
        con.cursor()
        .sql(
            "SELECT batch_no, user_json || ',' AS item FROM plan "
            "WHERE batch_no BETWEEN ? AND ? ORDER BY batch_no, row_number",
            params=[lo, hi],
        )
        .to_arrow_table()
    )
    if table.num_rows == 0:
        return []
    # One layout whatever the connection's Arrow settings: 64-bit offsets (widening them
    # copies 8 bytes a user; the data buffer is shared).
    items = table.column("item").combine_chunks().cast(pa.large_string())
    if items.null_count:  # a null would be an empty slice: a body short of users, silently
        raise StateError(
            f"The plan holds users without JSON ({items.null_count} in batches {lo}-{hi}): the "
            "run database is damaged. Plan the audience again in a new run directory."
        )
    data = memoryview(items.buffers()[2])
    ends = memoryview(items.buffers()[1]).cast("q")[items.offset :]
    runs = pc.run_end_encode(table.column("batch_no").combine_chunks())
    bodies = []
    first = 0
    for batch_no, last in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
        if batch_no not in skip:
            # the slice ends before the last user's comma
            body = b"".join((_OPEN, data[ends[first] : ends[last] - 1], _CLOSE))
            bodies.append(_Body(int(batch_no), last - first, body))
        first = last
    return bodies


def _chunks(first: int, last: int, size: int) -> Iterator[tuple[int, int]]:
    lo = first
    while lo <= last:
        yield lo, min(lo + size - 1, last)
        lo += size


async def ingest_job(
    con: duckdb.DuckDBPyConnection,
    client: CourierClient,
    state: RunState,
    job: JobState,
    ledger: LedgerWriter,
    *,
    concurrency: int,
    on_ack: Callable[[BatchAck], None] | None = None,
    slots: anyio.CapacityLimiter | None = None,
) -> int:
    """Send every batch of ``job`` that the ledger does not hold. Returns batches sent.

    :param concurrency: this job's workers (batches in flight)
    :param slots: write slots shared with other jobs' batches and creates: each ``POST``
        takes one, so writes in flight across the run stay within their number
    """
    if state.canceled:
        raise StateError(f"Run {state.run_id} was canceled: nothing more is ingested.")
    job_id = await create_job(client, state, job, slots=slots)
    if job.ingested:  # replayed: the job had already run
        return 0
    done = await anyio.to_thread.run_sync(acked_batches, con, job)
    if len(done) >= job.batches:
        return 0
    # No buffer: the workers hold what they were handed (waiting for a write slot, or in
    # flight) while the producer reads the next chunk, so a job holds at most one body per
    # worker plus one chunk (it was that plus a buffer of two per worker). A run's jobs
    # may each have --concurrency workers; the write slots bound what is in flight.
    send_bodies, recv_bodies = anyio.create_memory_object_stream[_Body](0)
    sent = 0

    async def produce(out: MemoryObjectSendStream[_Body]) -> None:
        async with out:
            for lo, hi in _chunks(job.first_batch, job.last_batch, CHUNK_BATCHES):
                if all(b in done for b in range(lo, hi + 1)):
                    continue
                for body in await anyio.to_thread.run_sync(_read_bodies, con, lo, hi, done):
                    await out.send(body)

    async def work(inbox: MemoryObjectReceiveStream[_Body]) -> None:
        nonlocal sent
        async with inbox:
            async for item in inbox:
                async with _slot(slots):
                    result = await client.add_users(
                        job_id,
                        item.body,
                        idempotency_key=_key(state, job_id, "batch", item.batch_no),
                    )
                dup = 0
                other: list[tuple[str | None, str]] = []
                for err in result.errors:
                    text = str(err.get("error", "")) if isinstance(err, dict) else str(err)
                    user = err.get("user") if isinstance(err, dict) else None
                    recipient = user.get("recipient") if isinstance(user, dict) else None
                    if text == DUPLICATE_USER:
                        dup += 1
                    else:
                        other.append((recipient, text or "ingest error"))
                ack = BatchAck(
                    batch_no=item.batch_no,
                    job_no=job.job_no,
                    job_id=job_id,
                    users=item.users,
                    total=result.total,
                    duplicate_errors=dup,
                    other_errors=other,
                )
                await ledger.put(ack)
                sent += 1
                if on_ack is not None:
                    on_ack(ack)

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce, send_bodies)
        async with recv_bodies:
            for _ in range(concurrency):
                tg.start_soon(work, recv_bodies.clone())
    return sent


async def verify_job(
    con: duckdb.DuckDBPyConnection, client: CourierClient, state: RunState, job: JobState
) -> None:
    """Check ``received`` against the plan before the job may run (never run a wrong job)."""
    assert job.job_id is not None
    cur = con.cursor()
    acked, errors = cur.execute(
        "SELECT count(*), coalesce(sum(other_errors), 0) FROM batches WHERE job_no = ?",
        [job.job_no],
    ).fetchone() or (0, 0)
    if int(acked) != job.batches:
        raise AccountingError(
            f"Job {job.job_id}: only {acked} of {job.batches} batches are acknowledged; "
            f"run 'bulkbatch resume {state.run_dir}' to send the rest."
        )
    remote = await client.retrieve_job(job.job_id)
    expected = job.users - int(errors)
    job.received = remote.received
    job.status = remote.status
    if remote.received != expected:
        raise AccountingError(
            f"Job {job.job_id} reports {remote.received} users received but the plan sent "
            f"{job.users} with {errors} rejected at ingest, so {expected} were expected. The "
            "job was NOT run. Check that nothing else ingests into this job, then inspect it "
            f"with 'bulkbatch status {state.run_dir}'."
        )
    job.ingested = True
    state.save()


async def run_job(client: CourierClient, state: RunState, job: JobState) -> bool:
    """Run the job once. Returns False when it had already run (a resumed run)."""
    assert job.job_id is not None
    if job.run:
        return False
    if state.canceled:
        raise StateError(f"Run {state.run_id} was canceled: job {job.job_id} is never run.")
    try:
        await client.run_job(job.job_id, idempotency_key=_key(state, job.job_id, "run"))
        ran_now = True
    except JobAlreadyRun:
        ran_now = False
    job.run = True
    state.save()
    return ran_now


def ingest_progress(
    state: RunState, progress: Progress = NullProgress, client: CourierClient | None = None
) -> Callable[[BatchAck], None]:
    """An ``on_ack`` callback reporting users acknowledged so far across the run."""
    total = sum(j.users for j in state.jobs)
    done = int(state.progress.get("users_acked", 0))
    started = time.monotonic()
    last_save = started

    def on_ack(ack: BatchAck) -> None:
        nonlocal done, last_save
        done += ack.users
        state.progress["users_acked"] = done
        now = time.monotonic()
        extra: dict[str, object] = {"elapsed": now - started, "jobs": len(state.jobs)}
        if client is not None:
            extra["rate"] = client.limiter.current_rate
            extra["retries"] = client.stats.retries
            extra["throttled"] = client.stats.throttled
        progress(ProgressEvent("ingest", done, total, "users", extra=extra))
        if now - last_save > 2.0:
            # A snapshot for 'bulkbatch status' in another process; the ledger is the truth.
            last_save = now
            state.save()

    return on_ack
