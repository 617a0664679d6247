"""The emulator's state and rules: SQLite tables, no HTTP.

Everything the Courier API would remember lives in one SQLite database (a file with ``--db``,
memory otherwise): jobs, users (one row per accepted user; after fan-out the same row is also
the user's message), idempotency records and the stats counters. All public methods take one
lock, so the backend can be used from the server's event-loop thread and from a test thread.

Rules (see the package docstring for the full table): routing is decided per user at ingest
time and stored in ``users.outcome``; fan-out at completion is one set-based ``UPDATE``.

:class:`Backend` is the one object the HTTP side calls. It is built in layers, each module
importing only the ones before it:

* :mod:`.database`: the schema; opening and migrating the file;
* :mod:`.store`: the connection, the lock, the clock, the settings and the counters
  (``Backend`` is a :class:`~.store.Store`);
* :mod:`.idempotency`: the saved answers of ``Idempotency-Key`` requests;
* :mod:`.jobs`: bulk jobs and their users, up to fan-out;
* :mod:`.messages`: the messages, their reads, history, output and cancellation.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from bulkbatch.emulator import idempotency
from bulkbatch.emulator.idempotency import Idempotency
from bulkbatch.emulator.jobs import Jobs
from bulkbatch.emulator.messages import Messages
from bulkbatch.emulator.rules import (
    DAY_MS,
    YEAR_MS,
    ApiError,
    Progression,
    ValidationError,
    parse_expiration,
)
from bulkbatch.emulator.store import JsonDict, Store

__all__ = [
    "DAY_MS",
    "YEAR_MS",
    "ApiError",
    "Backend",
    "Progression",
    "ValidationError",
    "parse_expiration",
]


class Backend(Store):
    """All emulator state in one SQLite database."""

    def __init__(
        self,
        db: str | os.PathLike[str] | None = None,
        progression: str | Progression = "polls:2",
        clock: Callable[[], float] = time.time,
        flavor: str = "current",
        routes: Mapping[str, list[str]] | None = None,
    ) -> None:
        super().__init__(db, progression, clock, flavor, routes)
        self._idempotency = Idempotency(self)
        self._jobs = Jobs(self)
        self._messages = Messages(self, self._jobs.settle_due_jobs)

    # -- idempotency ----------------------------------------------------------------------

    def scope(self, token: str) -> str:
        """The idempotency scope of a bearer token (a salted hash, never the token)."""
        return self._idempotency.scope(token)

    def idempotency_lookup(self, scope: str, key: str) -> tuple[int, bytes, str] | None:
        """The saved ``(status, body, request_hash)`` of an unexpired key, else ``None``."""
        return self._idempotency.lookup(scope, key)

    def idempotency_save(
        self, scope: str, key: str, request_hash: str, status: int, body: bytes, expires_ms: int
    ) -> None:
        self._idempotency.save(scope, key, request_hash, status, body, expires_ms)

    @staticmethod
    def request_hash(method: str, path: str, body: bytes) -> str:
        return idempotency.request_hash(method, path, body)

    # -- bulk jobs ------------------------------------------------------------------------

    def validate_create(self, body: object, raw: bytes | None = None) -> JsonDict:
        """Return the job's ``message`` or raise the API's 400 (nothing is stored)."""
        return self._jobs.validate_create(body, raw)

    def validate_ingest(self, body: object, raw: bytes | None = None) -> list[Any]:
        return self._jobs.validate_ingest(body, raw)

    def create_job(self, message: JsonDict) -> str:
        return self._jobs.create_job(message)

    def ingest(self, job_id: str, users: list[Any]) -> JsonDict:
        """Add users; duplicates (same ``recipient``) are reported, not stored."""
        return self._jobs.ingest(job_id, users)

    def run_job(self, job_id: str) -> None:
        self._jobs.run_job(job_id)

    def settle_due_jobs(self) -> None:
        """``seconds:T``: complete every PROCESSING job whose time has come."""
        self._jobs.settle_due_jobs()

    def retrieve_job(self, job_id: str) -> JsonDict:
        return self._jobs.retrieve_job(job_id)

    def list_users(self, job_id: str, cursor: str | None) -> JsonDict:
        return self._jobs.list_users(job_id, cursor)

    # -- messages -------------------------------------------------------------------------

    def retrieve_message(self, message_id: str) -> JsonDict:
        return self._messages.retrieve_message(message_id)

    def cancel_message(self, message_id: str) -> tuple[int, JsonDict]:
        """200 + the record with ``canceledAt`` while not yet sent; 409 + the record after."""
        return self._messages.cancel_message(message_id)

    def message_history(self, message_id: str, type_: str | None) -> JsonDict:
        return self._messages.message_history(message_id, type_)

    def list_messages(self, query: Mapping[str, list[str]]) -> JsonDict:
        """``GET /messages``: newest first, 10 a page, no ``providers`` on the rows."""
        return self._messages.list_messages(query)

    def message_output(self, message_id: str) -> JsonDict:
        return self._messages.message_output(message_id)

    def webhook_payload(self, user_id: int, step: int) -> JsonDict | None:
        """The ``message:updated`` event of a message at ``step`` (``None`` if it is gone)."""
        return self._messages.webhook_payload(user_id, step)
