"""Cancel a campaign sent by mistake: stop ingesting, never run what has not run, and cancel
every message Courier has not sent yet.

``bulkbatch cancel RUN_DIR`` (and ``Run.cancel()``):

1. marks the run canceled in ``state.json``: from then on nothing is ingested and no job is
   run (``send`` refuses), and ``resume`` refuses, naming the reason;
2. for each job that already ran, waits for its fan-out to finish and pages its users (so
   every message id is known), then
3. posts ``POST /messages/{id}/cancel`` for each message, concurrently and resumably: Courier
   answers 200 with ``CANCELED`` while a message is not yet sent, 409 with the record once it
   is too late. Each answer is stored in table ``cancels`` the moment it arrives, so a stopped
   cancel continues where it stopped and never posts twice for one message.

results.parquet then says, per person, ``canceled`` (never sent: in a job never run, or
message canceled) or ``too late`` in ``cancel``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio
import duckdb
from anyio.streams.memory import MemoryObjectReceiveStream

from bulkbatch.client.courier import CourierClient
from bulkbatch.errors import NotFound
from bulkbatch.progress import NullProgress, Progress, ProgressEvent

__all__ = ["CANCELS_DDL", "CancelInfo", "cancel_messages", "pending_message_ids"]

CANCELS_DDL = """
CREATE TABLE IF NOT EXISTS cancels (
    message_id VARCHAR PRIMARY KEY,
    outcome VARCHAR NOT NULL,
    status VARCHAR,
    answered_at TIMESTAMP NOT NULL
)
"""
_FLUSH_EVERY = 200


@dataclass(frozen=True)
class CancelInfo:
    """What a cancel did."""

    jobs_never_run: int
    users_never_sent: int
    canceled: int
    too_late: int
    not_found: int
    seconds: float

    def render(self) -> str:
        """A few lines for people."""
        never = f"({self.users_never_sent:,} users never sent)"
        lines = [
            f"  jobs never run          {self.jobs_never_run:>10,}  {never}",
            f"  messages canceled       {self.canceled:>10,}",
            f"  too late (already sent) {self.too_late:>10,}",
        ]
        if self.not_found:
            lines.append(f"  not found               {self.not_found:>10,}")
        return "\n".join(lines)


def pending_message_ids(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Message ids of paged users with no cancel answer stored yet."""
    con.execute(CANCELS_DDL)
    rows = con.execute(
        "SELECT DISTINCT message_id FROM user_pages WHERE message_id IS NOT NULL "
        "AND message_id NOT IN (SELECT message_id FROM cancels) ORDER BY message_id"
    ).fetchall()
    return [str(r[0]) for r in rows]


def _store(con: duckdb.DuckDBPyConnection, rows: list[tuple[str, str, str | None]]) -> None:
    if rows:
        con.executemany(
            "INSERT OR REPLACE INTO cancels VALUES (?, ?, ?, now())",
            [list(r) for r in rows],
        )


def cancel_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Stored cancel answers by outcome."""
    con.execute(CANCELS_DDL)
    return {str(k): int(n) for k, n in con.execute(
        "SELECT outcome, count(*) FROM cancels GROUP BY 1"
    ).fetchall()}  # fmt: skip


async def cancel_messages(
    con: duckdb.DuckDBPyConnection,
    client: CourierClient,
    *,
    concurrency: int,
    progress: Progress = NullProgress,
) -> dict[str, int]:
    """Post a cancel for every paged message without a stored answer; returns all answers
    stored so far by outcome (``canceled``, ``too late``, ``not found``)."""
    ids = await anyio.to_thread.run_sync(pending_message_ids, con)
    total, done = len(ids), 0
    answers: list[tuple[str, str, str | None]] = []
    send, receive = anyio.create_memory_object_stream[str](concurrency * 2)
    lock = anyio.Lock()

    async def flush() -> None:
        nonlocal answers
        batch, answers = answers, []
        await anyio.to_thread.run_sync(_store, con, batch)

    async def work(inbox: MemoryObjectReceiveStream[str]) -> None:
        nonlocal done
        async with inbox:
            async for message_id in inbox:
                try:
                    record = await client.cancel_message(message_id)
                    outcome = "canceled" if record.status == "CANCELED" else "too late"
                    status: str | None = record.status
                except NotFound:
                    outcome, status = "not found", None
                async with lock:
                    answers.append((message_id, outcome, status))
                    done += 1
                    if len(answers) >= _FLUSH_EVERY:
                        await flush()
                progress(ProgressEvent("cancel", done, total, "messages"))

    started = time.monotonic()
    try:
        async with anyio.create_task_group() as tg:
            with receive:  # each worker holds its own clone, taken before any can end
                for _ in range(max(1, concurrency)):
                    tg.start_soon(work, receive.clone())
            async with send:
                for message_id in ids:
                    await send.send(message_id)
    finally:
        with anyio.CancelScope(shield=True):
            async with lock:
                await flush()
    progress(
        ProgressEvent(
            "cancel", done, total, "messages", extra={"elapsed": time.monotonic() - started}
        )
    )
    return await anyio.to_thread.run_sync(cancel_counts, con)
