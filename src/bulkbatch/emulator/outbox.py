"""The webhook outbox: one SQLite row per delivery still to make, in the backend's database.

A *status change* of a message (:mod:`.states`) becomes an *event*; an event becomes one
*delivery* (two with ``webhook_dup_rate``, none with ``webhook_drop_rate``); a delivery is a
row of ``outbox`` until it is acknowledged (2xx) or given up. The rows are written in the same
SQLite transaction as the status change, so nothing is lost by a crash or a restart with
``--db``: on start every row is due again (a delivery in flight at shutdown may arrive twice,
which Courier allows too).

An outbox row holds only ``(user row, step)``: the payload is built when it is sent, from the
message row, as the message stood at that step (:meth:`.MessageStates.at_step`), so it never
changes with later steps. Nothing of the webhook secret or URL is stored.

Where the events come from:

* fan-out (``_complete``): ENQUEUED for each message, and under ``immediate`` every later step
  of its path too (SENT, DELIVERED / UNDELIVERABLE, UNROUTABLE), in path order;
* ``polls:N``: each step a read advances;
* ``seconds:T``: :meth:`Outbox.emit_due`, called by the sender about every 20 ms, settles due
  jobs and emits the steps whose time has come (tracked per job in ``webhook_jobs``: all the
  messages of a job share their ``enqueued`` time);
* ``POST /messages/{id}/cancel`` (200): CANCELED.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bulkbatch.emulator.faults import FaultInjector
from bulkbatch.emulator.states import PATHS, MessageStates

if TYPE_CHECKING:
    from bulkbatch.emulator.backend import Backend

__all__ = ["CANCELED_STEP", "OUTBOX_SCHEMA", "Delivery", "Outbox"]

CANCELED_STEP = -1  # the ``step`` of a CANCELED event
MAX_STEP = max(len(path) for path in PATHS.values()) - 1
_STEPS = " UNION ALL ".join(f"SELECT {k} AS k" for k in range(MAX_STEP + 1))

OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    leased INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(leased, due_ms, id);
CREATE TABLE IF NOT EXISTS webhook_jobs (job INTEGER PRIMARY KEY, step INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Delivery:
    """One leased outbox row: POST the event of ``user_id`` at ``step``."""

    id: int
    user_id: int
    step: int
    attempts: int
    generation: int


class Outbox:
    """The outbox of one :class:`~bulkbatch.emulator.backend.Backend` (same lock, same file).

    :param hold_ms: how long ``webhook_reorder_rate`` holds a delivery back (wall-clock ms)
    """

    def __init__(
        self,
        backend: Backend,
        faults: FaultInjector,
        hold_ms: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.faults = faults
        self.hold_ms = hold_ms
        self._clock = clock
        self._conn = backend.conn
        self._lock: threading.RLock = backend.lock
        self.generation = 0
        self.notify: Callable[[], None] = lambda: None
        with self._lock:
            # Leases die with the process that took them: everything is due again.
            self._conn.execute("UPDATE outbox SET leased=0 WHERE leased=1")

    def wall_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- events (called by the backend, under its lock, inside its transaction) ---------

    def _faulty(self) -> bool:
        spec = self.faults.spec
        return bool(spec.webhook_drop_rate or spec.webhook_dup_rate or spec.webhook_reorder_rate)

    def add(self, events: Sequence[tuple[int, int]]) -> None:
        """Queue ``(user row, step)`` events, drawing the webhook faults for each."""
        if not events:
            return
        due = self.wall_ms()
        rows: list[tuple[int, int, int]] = []
        n = dropped = duplicated = held = 0
        for user_id, step in events:
            n += 1
            draw = self.faults.draw_webhook()
            if draw.dropped:
                dropped += 1
                continue
            duplicated += len(draw.held) - 1
            for hold in draw.held:
                held += hold
                rows.append((user_id, step, due + self.hold_ms if hold else due))
        self._conn.executemany("INSERT INTO outbox (user_id, step, due_ms) VALUES (?, ?, ?)", rows)
        count = self.backend.count
        count("webhooks_events", n)
        count("webhooks_dropped", dropped)
        count("webhooks_duplicated", duplicated)
        count("webhooks_reordered", held)
        self.notify()

    def on_complete(self, job: int) -> None:
        """A job fanned out: each message's steps so far (ENQUEUED, or its whole path)."""
        where = (
            f"FROM users u JOIN ({_STEPS}) s ON s.k <= u.step "
            "WHERE u.job = ? AND u.message_id IS NOT NULL ORDER BY u.id, s.k"
        )
        if self._faulty():
            self.add(self._conn.execute(f"SELECT u.id, s.k {where}", (job,)).fetchall())
        else:
            inserted = self._conn.execute(
                f"INSERT INTO outbox (user_id, step, due_ms) SELECT u.id, s.k, ? {where}",
                (self.wall_ms(), job),
            ).rowcount
            self.backend.count("webhooks_events", max(0, inserted))
            self.notify()
        if self.backend.progression.mode == "seconds":
            self._conn.execute("INSERT OR REPLACE INTO webhook_jobs VALUES (?, 0)", (job,))

    def emit_due(self) -> None:
        """``seconds:T``: settle due jobs, then emit every step whose time has come."""
        backend = self.backend
        if backend.progression.mode != "seconds":
            return
        each = backend.progression.step_ms
        with self._lock:
            backend.settle_due_jobs()
            now = backend.now_ms()
            jobs = self._conn.execute(
                "SELECT w.job, w.step, j.completed_ms FROM webhook_jobs w "
                "JOIN jobs j ON j.num = w.job"
            ).fetchall()
            for job, done, at in jobs:
                current = min(MAX_STEP, max(0, (now - at) // each))
                if current > done:
                    self._emit_steps(job, done, current)

    def _emit_steps(self, job: int, done: int, current: int) -> None:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            events = conn.execute(
                f"SELECT u.id, s.k FROM users u JOIN ({_STEPS}) s "
                f"ON s.k > ? AND s.k <= ? AND s.k <= ({MessageStates.final_step_sql()}) "
                "WHERE u.job = ? AND u.message_id IS NOT NULL AND u.canceled_ms IS NULL "
                "ORDER BY s.k, u.id",
                (done, current, job),
            ).fetchall()
            self.add(events)
            if current >= MAX_STEP:
                conn.execute("DELETE FROM webhook_jobs WHERE job=?", (job,))
            else:
                conn.execute("UPDATE webhook_jobs SET step=? WHERE job=?", (current, job))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- deliveries (called by the sender thread) ------------------------------------------

    def lease(self, limit: int) -> list[Delivery]:
        """Up to ``limit`` due deliveries, oldest due first, marked in flight."""
        if limit <= 0:
            return []
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, user_id, step, attempts FROM outbox WHERE leased=0 AND due_ms<=? "
                "ORDER BY due_ms, id LIMIT ?",
                (self.wall_ms(), limit),
            ).fetchall()
            if rows:
                self._conn.executemany(
                    "UPDATE outbox SET leased=1 WHERE id=?", [(r[0],) for r in rows]
                )
            return [Delivery(r[0], r[1], r[2], r[3], self.generation) for r in rows]

    def next_due_ms(self) -> int | None:
        with self._lock:
            row = self._conn.execute("SELECT MIN(due_ms) FROM outbox WHERE leased=0").fetchone()
            return None if row[0] is None else int(row[0])

    def delivered(self, d: Delivery) -> None:
        self._finish(d, "webhooks_delivered")

    def give_up(self, d: Delivery) -> None:
        self._finish(d, "webhooks_dropped")

    def _finish(self, d: Delivery, counter: str) -> None:
        with self._lock:
            if d.generation == self.generation:
                self._conn.execute("DELETE FROM outbox WHERE id=?", (d.id,))
                self.backend.count(counter)

    def retry(self, d: Delivery, due_ms: int) -> None:
        with self._lock:
            if d.generation == self.generation:
                self._conn.execute(
                    "UPDATE outbox SET attempts=?, due_ms=?, leased=0 WHERE id=?",
                    (d.attempts + 1, due_ms, d.id),
                )
                self.backend.count("webhooks_retried")

    def count_attempt(self) -> None:
        self.backend.count("webhooks_sent")

    def flush(self) -> int:
        """Make every waiting delivery (retries and held-back ones too) due now."""
        with self._lock:
            self._conn.execute("UPDATE outbox SET due_ms=0 WHERE leased=0")
            self.notify()
            return self.pending()

    def pending(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def reset(self) -> None:
        """After the backend's reset: deliveries in flight are forgotten, not counted."""
        with self._lock:
            self.generation += 1
