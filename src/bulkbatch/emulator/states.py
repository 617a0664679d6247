"""The one state machine of a job and its messages (moto's ``ManagedState`` is the model).

A job goes ``CREATED → PROCESSING → COMPLETED``; run moves it to PROCESSING and the
progression (:class:`~bulkbatch.emulator.rules.Progression`) completes it. At completion each
accepted user becomes a message whose *outcome* (decided at ingest) picks its path:

================ ===========================================
outcome          path (one step per advance)
================ ===========================================
``DELIVERED``    ENQUEUED → SENT → DELIVERED
``UNDELIVERABLE`` ENQUEUED → SENT → UNDELIVERABLE
``UNROUTABLE``   ENQUEUED → UNROUTABLE
================ ===========================================

A message is at a *step* (an index into its path). With ``polls:N`` the step is stored and
advanced by reads; with ``seconds:T`` it is ``(now - enqueued) // T``; with ``immediate`` it
is the last step. ``POST /messages/{id}/cancel`` is allowed while the status is in
:data:`CANCELABLE` and freezes the message at CANCELED.

The status rule exists once, in :data:`PATHS`; :meth:`MessageStates.status` (Python) and
:meth:`MessageStates.status_sql` (the ``GET /messages`` ``status`` filter) are both derived
from it, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bulkbatch.emulator.rules import Progression

__all__ = ["CANCELABLE", "CANCELED", "JOB_STATUSES", "PATHS", "MessageStates", "Timeline"]

JOB_STATUSES = ("CREATED", "PROCESSING", "COMPLETED")
PATHS: dict[str, tuple[str, ...]] = {
    "DELIVERED": ("ENQUEUED", "SENT", "DELIVERED"),
    "UNDELIVERABLE": ("ENQUEUED", "SENT", "UNDELIVERABLE"),
    "UNROUTABLE": ("ENQUEUED", "UNROUTABLE"),
}
CANCELABLE = frozenset({"ENQUEUED"})
CANCELED = "CANCELED"


@dataclass(frozen=True)
class Timeline:
    """Where a message stands: its status and the epoch-ms time of each step reached."""

    status: str
    step: int
    enqueued: int
    sent: int | None
    done: int | None
    canceled: int | None


class MessageStates:
    """Statuses and timestamps of messages under one progression."""

    def __init__(self, progression: Progression) -> None:
        self.progression = progression

    @staticmethod
    def final_step(outcome: str) -> int:
        return len(PATHS[outcome]) - 1

    @staticmethod
    def status(outcome: str, step: int, canceled: bool = False) -> str:
        if canceled:
            return CANCELED
        path = PATHS[outcome]
        return path[max(0, min(step, len(path) - 1))]

    def initial_step(self, outcome: str) -> int:
        """The step a message starts at when its job completes."""
        return self.final_step(outcome) if self.progression.mode == "immediate" else 0

    def timeline(self, row: tuple[Any, ...], now: int) -> Timeline:
        """``row`` = ``(outcome, enqueued_ms, step, sent_ms, done_ms, canceled_ms)``."""
        outcome, enq, step, sent, done, canceled = row
        if canceled is not None:
            return Timeline(CANCELED, step, enq, None, None, canceled)
        if self.progression.mode == "seconds":
            step = max(0, min(self.final_step(outcome), (now - enq) // self.progression.step_ms))
        return self.at_step(outcome, enq, step, sent, done)

    def at_step(self, outcome: str, enq: int, step: int, sent: Any, done: Any) -> Timeline:
        """Where the message stood when it reached ``step`` (a webhook event's snapshot):
        only the timestamps of the steps up to ``step`` are set."""
        final = self.final_step(outcome)
        step = max(0, min(final, step))
        if self.progression.mode == "seconds":
            each = self.progression.step_ms
            sent, done = enq + each, enq + final * each
        if step < 1 or PATHS[outcome][1] != "SENT":
            sent = None
        done = done if step >= final else None
        return Timeline(self.status(outcome, step), step, enq, sent, done, None)

    def advance(self, outcome: str, step: int, sent: Any, done: Any, now: int) -> tuple[Any, ...]:
        """One step forward (``polls:N``): the new ``(step, sent_ms, done_ms)``."""
        final = self.final_step(outcome)
        if step >= final:
            return step, sent, done
        step += 1
        if PATHS[outcome][step] == "SENT":
            sent = now
        if step == final:
            done = now
        return step, sent, done

    @staticmethod
    def final_step_sql() -> str:
        """SQL for the last step of ``outcome`` (fan-out under ``immediate``)."""
        arms = " ".join(f"WHEN '{o}' THEN {len(p) - 1}" for o, p in PATHS.items())
        return f"CASE outcome {arms} ELSE 0 END"

    @staticmethod
    def sending_sql() -> str:
        """SQL list of the outcomes whose path passes SENT."""
        return ", ".join(f"'{o}'" for o, p in PATHS.items() if "SENT" in p)

    def step_sql(self) -> str:
        """SQL for a message's current step (``u`` = users, params ``:now``, ``:step_ms``)."""
        if self.progression.mode == "seconds":
            return "MAX(0, (:now - u.enqueued_ms) / :step_ms)"
        return "u.step"

    def status_sql(self) -> str:
        """SQL for a message's current status, generated from :data:`PATHS`."""
        step = self.step_sql()
        arms = []
        for outcome, path in PATHS.items():
            steps = " ".join(f"WHEN {i} THEN '{status}'" for i, status in enumerate(path[:-1]))
            arms.append(
                f"WHEN u.outcome = '{outcome}' THEN CASE WHEN ({step}) >= {len(path) - 1} "
                f"THEN '{path[-1]}' ELSE CASE ({step}) {steps} END END"
            )
        return f"CASE WHEN u.canceled_ms IS NOT NULL THEN '{CANCELED}' {' '.join(arms)} END"
