"""Bulk jobs and their users: the job state machine, from ``POST /bulk`` to fan-out.

A job is CREATED, takes users (``ingest``), is run (PROCESSING) and completes when the
progression says so (``immediate``: at once; ``polls:N``: on the N-th ``GET /bulk/{id}``;
``seconds:T``: T seconds after the run). Routing is decided per user at ingest time and
stored in ``users.outcome``; fan-out at completion is one set-based ``UPDATE`` that gives
each routable user its ``messageId`` (the messages are then :mod:`.messages`'s).
"""

from __future__ import annotations

import secrets
import sqlite3
from typing import Any

import orjson

from bulkbatch.emulator import spec
from bulkbatch.emulator.cursors import decode_cursor, encode_cursor
from bulkbatch.emulator.rules import (
    ApiError,
    ValidationError,
    as_dict,
    job_channels,
    not_found,
    user_outcome,
)
from bulkbatch.emulator.store import JsonDict, Store

__all__ = ["PAGE_SIZE", "Jobs"]

PAGE_SIZE = 100  # GET /bulk/{id}/users (courier-bulk-api.md §2.5)


def _recipient_id() -> str:
    # The backend assigns a nanoid when a user has no recipient.
    return secrets.token_urlsafe(15)


class Jobs:
    """The bulk jobs of one :class:`~.store.Store` (same lock, same file)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._conn = store.conn
        self._lock = store.lock

    def validate_create(self, body: object, raw: bytes | None = None) -> JsonDict:
        """Return the job's ``message`` or raise the API's 400 (nothing is stored).

        ``raw``: the bytes ``body`` was parsed from (a valid body then takes the fast check).
        """
        if self._store.flavor == "tutorial":
            # The backend snapshot's wording first (courier-bulk-api.md §2.1), then the spec.
            message = body.get("message") if isinstance(body, dict) else None
            if message is None:
                raise ValidationError("The 'message' parameter is required.")
            if not isinstance(message, dict):
                raise ValidationError("The 'message' parameter must be an object.")
            nested = as_dict(message.get("message"))
            if not (
                (isinstance(message.get("event"), str) and message["event"])
                or message.get("template")
                or message.get("content")
                or nested.get("template")
                or nested.get("content")
            ):
                raise ValidationError("The 'event' parameter is required.")
        self._check_body("POST", "/bulk", body, raw)
        message = body["message"]  # type: ignore[index]  # checked by the schema
        if self._store.flavor == "current" and not message["event"]:
            raise ValidationError("message.event is required (it is an empty string).")
        result: JsonDict = message
        return result

    def validate_ingest(self, body: object, raw: bytes | None = None) -> list[Any]:
        if self._store.flavor == "tutorial":
            users = body.get("users") if isinstance(body, dict) else None
            if not isinstance(users, list):
                raise ValidationError("The 'users' parameter is required.")
        self._check_body("POST", "/bulk/{job_id}", body, raw)
        result: list[Any] = body["users"]  # type: ignore[index]  # checked by the schema
        return result

    def _check_body(self, method: str, path: str, body: object, raw: bytes | None) -> None:
        try:
            spec.body_validator(self._store.flavor, method, path)(body, raw)
        except spec.SpecViolation as exc:
            raise ValidationError(str(exc)) from None

    def create_job(self, message: JsonDict) -> str:
        nested = as_dict(message.get("message"))
        event = message.get("event") or message.get("template") or nested.get("template") or ""
        notification = message.get("template") or nested.get("template") or event
        channels = job_channels(message, self._store.routes, self._store.flavor)
        with self._lock:
            now = self._store.now_ms()
            job_id = f"1-{now // 1000:08x}-{secrets.token_hex(12)}"
            self._conn.execute(
                "INSERT INTO jobs (id, definition, channels, event, notification, status, "
                "created_ms) VALUES (?, ?, ?, ?, ?, 'CREATED', ?)",
                (
                    job_id,
                    orjson.dumps(message).decode(),
                    orjson.dumps(channels).decode(),
                    str(event),
                    str(notification),
                    now,
                ),
            )
            self._store.count("jobs_created")
            return job_id

    def _job(self, job_id: str) -> sqlite3.Row | tuple[Any, ...]:
        row = self._conn.execute(
            "SELECT num, status, channels, received, run_ms, polls FROM jobs WHERE id=?",
            (job_id,),
        ).fetchone()
        if row is None:
            raise not_found()
        return tuple(row)

    def ingest(self, job_id: str, users: list[Any]) -> JsonDict:
        """Add users; duplicates (same ``recipient``) are reported, not stored."""
        with self._lock:
            num, status, channels_json, _received, _run, _polls = self._job(job_id)
            if status != "CREATED":
                raise ApiError(400, "BulkJobAlreadySubmittedError")
            channels = orjson.loads(channels_json)
            errors: list[JsonDict] = []
            fresh: dict[str, JsonDict] = {}
            order: list[tuple[str, JsonDict] | JsonDict] = []
            for user in users:
                if not isinstance(user, dict):
                    order.append({"user": user, "error": "Error occurred during ingestion"})
                    continue
                recipient = user.get("recipient")
                if recipient is None:
                    recipient = _recipient_id()
                    user = {**user, "recipient": recipient}
                elif isinstance(recipient, (int, float)) and not isinstance(recipient, bool):
                    recipient = str(recipient)
                elif not isinstance(recipient, str):
                    order.append({"user": user, "error": "Error occurred during ingestion"})
                    continue
                if recipient in fresh:
                    order.append({"user": user, "error": "Duplicate user"})
                    continue
                fresh[recipient] = user
                order.append((recipient, user))
            existing: set[str] = set()
            if fresh:
                existing = {
                    r
                    for (r,) in self._conn.execute(
                        "SELECT recipient FROM users WHERE job=? AND recipient IN "
                        "(SELECT value FROM json_each(?))",
                        (num, orjson.dumps(list(fresh)).decode()),
                    )
                }
            rows: list[tuple[int, str, str, str, str | None]] = []
            duplicates = 0
            for entry in order:
                if isinstance(entry, dict):
                    errors.append(entry)
                    duplicates += entry["error"] == "Duplicate user"
                    continue
                recipient, user = entry
                if recipient in existing:
                    errors.append({"user": user, "error": "Duplicate user"})
                    duplicates += 1
                    continue
                outcome, channel = user_outcome(user, channels)
                rows.append((num, recipient, orjson.dumps(user).decode(), outcome, channel))
            conn = self._conn
            conn.execute("BEGIN")
            try:
                conn.executemany(
                    "INSERT INTO users (job, recipient, payload, outcome, channel) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                conn.execute(
                    "UPDATE jobs SET received = received + ? WHERE num=?", (len(rows), num)
                )
                total = conn.execute("SELECT received FROM jobs WHERE num=?", (num,)).fetchone()[0]
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._store.count("users_accepted", len(rows))
            self._store.count("duplicate_users", duplicates)
            return {"total": int(total), "errors": errors}

    def run_job(self, job_id: str) -> None:
        with self._lock:
            num, status, *_ = self._job(job_id)
            if status != "CREATED":
                raise ApiError(400, "BulkJobDuplicateInvocationError")
            now = self._store.now_ms()
            self._conn.execute(
                "UPDATE jobs SET status='PROCESSING', run_ms=? WHERE num=?", (now, num)
            )
            self._store.count("runs")
            if self._store.progression.mode == "immediate":
                self._complete(num, job_id, now)

    def _complete(self, num: int, job_id: str, at_ms: int) -> None:
        """Fan out in SQL: every PENDING user gets a messageId and ENQUEUED (or ERROR)."""
        final = self._store.progression.mode == "immediate"
        prefix = f"1-{at_ms // 1000:08x}-{job_id[-24:-8]}"
        conn = self._conn
        conn.execute("BEGIN")
        try:
            conn.execute(
                f"""
                UPDATE users SET
                    status = CASE WHEN outcome = 'ERROR' THEN 'ERROR' ELSE 'ENQUEUED' END,
                    message_id = CASE WHEN outcome = 'ERROR' THEN NULL
                                      ELSE :prefix || printf('%08x', id) END,
                    enqueued_ms = CASE WHEN outcome = 'ERROR' THEN NULL ELSE :at END,
                    step = CASE WHEN :final AND outcome != 'ERROR'
                                THEN ({self._store.states.final_step_sql()}) ELSE 0 END,
                    sent_ms = CASE WHEN :final AND outcome IN ({self._store.states.sending_sql()})
                                   THEN :at END,
                    done_ms = CASE WHEN :final AND outcome != 'ERROR' THEN :at END
                WHERE job = :job AND status = 'PENDING'
                """,
                {"prefix": prefix, "at": at_ms, "final": int(final), "job": num},
            )
            conn.execute(
                "UPDATE jobs SET status='COMPLETED', completed_ms=:at, enqueued="
                "(SELECT COUNT(*) FROM users WHERE job=:job AND status='ENQUEUED') WHERE num=:job",
                {"at": at_ms, "job": num},
            )
            if self._store.webhooks is not None:
                self._store.webhooks.on_complete(num)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def settle_due_jobs(self) -> None:
        with self._lock:
            self._settle_due_jobs()

    def _settle_due_jobs(self) -> None:
        """``seconds:T``: complete every PROCESSING job whose time has come."""
        if self._store.progression.mode != "seconds":
            return
        step = self._store.progression.step_ms
        due = self._conn.execute(
            "SELECT num, id, run_ms FROM jobs WHERE status='PROCESSING' AND run_ms + ? <= ?",
            (step, self._store.now_ms()),
        ).fetchall()
        for num, job_id, run_ms in due:
            self._complete(num, job_id, run_ms + step)

    def retrieve_job(self, job_id: str) -> JsonDict:
        with self._lock:
            self._settle_due_jobs()
            num, status, _c, _r, _run, polls = self._job(job_id)
            if status == "PROCESSING" and self._store.progression.mode == "polls":
                polls += 1
                self._conn.execute("UPDATE jobs SET polls=? WHERE num=?", (polls, num))
                if polls >= self._store.progression.polls:
                    self._complete(num, job_id, self._store.now_ms())
            definition, enqueued, failures, received, status = self._conn.execute(
                "SELECT definition, enqueued, failures, received, status FROM jobs WHERE num=?",
                (num,),
            ).fetchone()
            return {
                "job": {
                    "definition": orjson.Fragment(definition),
                    "enqueued": enqueued,
                    "failures": failures,
                    "received": received,
                    "status": status,
                }
            }

    def list_users(self, job_id: str, cursor: str | None) -> JsonDict:
        with self._lock:
            self._settle_due_jobs()
            num = self._job(job_id)[0]
            after = 0
            if cursor:
                key = decode_cursor(cursor)
                if not isinstance(key, dict) or not isinstance(key.get("after"), int):
                    raise ValidationError(f"Invalid cursor {cursor!r}.")
                after = key["after"]
            rows = self._conn.execute(
                "SELECT id, recipient, payload, status, message_id FROM users "
                "WHERE job=? AND id>? ORDER BY id LIMIT ?",
                (num, after, PAGE_SIZE + 1),
            ).fetchall()
            more = len(rows) > PAGE_SIZE
            rows = rows[:PAGE_SIZE]
            items = []
            for _id, recipient, payload, status, message_id in rows:
                item = orjson.loads(payload)
                item["recipient"] = recipient
                item["status"] = status
                if message_id is not None:
                    item["messageId"] = message_id
                items.append(item)
            next_cursor = encode_cursor({"after": rows[-1][0]}) if more else None
            return {"items": items, "paging": {"cursor": next_cursor, "more": more}}
