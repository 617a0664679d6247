"""The emulator's state and rules: SQLite tables, no HTTP.

Everything the Courier API would remember lives in one SQLite database (a file with ``--db``,
memory otherwise): jobs, users (one row per accepted user; after fan-out the same row is also
the user's message), idempotency records and the stats counters. All public methods take one
lock, so the backend can be used from the server's event-loop thread and from a test thread.

Rules (see the package docstring for the full table): routing is decided per user at ingest
time and stored in ``users.outcome``; fan-out at completion is one set-based ``UPDATE``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from bulkbatch.emulator import spec
from bulkbatch.emulator.faults import EmulatorConfigError
from bulkbatch.emulator.outbox import CANCELED_STEP, OUTBOX_SCHEMA
from bulkbatch.emulator.rules import (
    DAY_MS,
    YEAR_MS,
    ApiError,
    Progression,
    ValidationError,
    as_dict,
    content_text,
    job_channels,
    merged_data,
    not_found,
    parse_expiration,
    render,
    user_outcome,
)
from bulkbatch.emulator.states import CANCELABLE, CANCELED, MessageStates, Timeline

if TYPE_CHECKING:
    from bulkbatch.emulator.outbox import Outbox

__all__ = [
    "DAY_MS",
    "YEAR_MS",
    "ApiError",
    "Backend",
    "Progression",
    "ValidationError",
    "parse_expiration",
]

JsonDict = dict[str, Any]

PAGE_SIZE = 100  # GET /bulk/{id}/users (courier-bulk-api.md §2.5)
MESSAGES_PAGE_SIZE = 10  # GET /messages: "Only 10 can be fetched at a time" (tracking §3.1)
FLAVORS = ("current", "tutorial")
# Webhook counters (``webhooks_pending`` is the outbox's row count): see outbox.py.
WEBHOOK_COUNTERS = (
    "webhooks_events",
    "webhooks_duplicated",
    "webhooks_reordered",
    "webhooks_sent",
    "webhooks_delivered",
    "webhooks_retried",
    "webhooks_dropped",
)
COUNTER_NAMES = (
    "jobs_created",
    "runs",
    "requests",
    "ingest_attempts",
    "users_accepted",
    "duplicate_users",
    "dropped_connections",
    "idempotent_replays",
    "idempotency_mismatches",
    *WEBHOOK_COUNTERS,
)


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    num INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    definition TEXT NOT NULL,
    channels TEXT NOT NULL,
    event TEXT NOT NULL,
    notification TEXT NOT NULL,
    status TEXT NOT NULL,
    received INTEGER NOT NULL DEFAULT 0,
    enqueued INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    run_ms INTEGER,
    polls INTEGER NOT NULL DEFAULT 0,
    completed_ms INTEGER
);
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    job INTEGER NOT NULL,
    recipient TEXT NOT NULL,
    payload TEXT NOT NULL,
    outcome TEXT NOT NULL,
    channel TEXT,
    status TEXT NOT NULL DEFAULT 'PENDING',
    message_id TEXT,
    enqueued_ms INTEGER,
    step INTEGER NOT NULL DEFAULT 0,
    reads INTEGER NOT NULL DEFAULT 0,
    sent_ms INTEGER,
    done_ms INTEGER,
    canceled_ms INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS users_job_recipient ON users(job, recipient);
CREATE INDEX IF NOT EXISTS users_job ON users(job);
CREATE UNIQUE INDEX IF NOT EXISTS users_message ON users(message_id)
    WHERE message_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status INTEGER NOT NULL,
    body BLOB NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _open(path: str) -> sqlite3.Connection:
    """Open (and create or migrate) the database; a bad ``--db`` is one clear line."""
    if path != ":memory:":
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise EmulatorConfigError(
                f"cannot open emulator database {path!r}: the folder {folder!r} does not "
                "exist; create it or pass another --db path"
            )
    conn = None
    try:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        if path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA cache_size=-65536")
        _migrate(conn)
        conn.executescript(SCHEMA + OUTBOX_SCHEMA)
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        raise EmulatorConfigError(
            f"cannot open emulator database {path!r}: {exc} (is it an emulator SQLite "
            "file?); pass a new or an emulator --db path"
        ) from None
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a database written by an older emulator up to date.

    Older files kept the raw bearer token in ``idempotency.api_key``: that table is dropped
    (replays are a 24 h convenience) and the file vacuumed so the token's bytes are gone.
    """
    columns = {r[1] for r in conn.execute("PRAGMA table_info(idempotency)")}
    if "api_key" in columns:
        conn.execute("DROP TABLE idempotency")
        conn.execute("VACUUM")
    users = {r[1] for r in conn.execute("PRAGMA table_info(users)")}
    if users and "canceled_ms" not in users:
        conn.execute("ALTER TABLE users ADD COLUMN canceled_ms INTEGER")


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(obj)).decode().rstrip("=")


def _unb64(text: str) -> Any:
    try:
        return orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise ValidationError(f"Invalid cursor {text!r}.") from None


def _recipient_id() -> str:
    # The backend assigns a nanoid when a user has no recipient.
    return secrets.token_urlsafe(15)


class Backend:
    """All emulator state in one SQLite database."""

    def __init__(
        self,
        db: str | os.PathLike[str] | None = None,
        progression: str | Progression = "polls:2",
        clock: Callable[[], float] = time.time,
        flavor: str = "current",
        routes: Mapping[str, list[str]] | None = None,
    ) -> None:
        if flavor not in FLAVORS:
            raise EmulatorConfigError(f"bad flavor {flavor!r}: expected 'current' or 'tutorial'")
        self.progression = Progression.parse(progression)
        self.states = MessageStates(self.progression)
        self.flavor = flavor
        self.routes = dict(routes or {})
        self._clock = clock
        self._offset_ms = 0
        self._lock = threading.RLock()
        self.path = os.fspath(db) if db is not None else ":memory:"
        self._conn = _open(self.path)
        self._counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._by_status: dict[str, int] = {}
        self._max_cache: tuple[int, int] | None = None
        self.webhooks: Outbox | None = None  # set by create_app with --webhook-url
        row = self._conn.execute("SELECT value FROM meta WHERE key='counters'").fetchone()
        if row:
            saved = orjson.loads(row[0])
            for name in COUNTER_NAMES:
                self._counters[name] = int(saved.get(name, 0))
            self._by_status = {str(k): int(v) for k, v in saved.get("by_status", {}).items()}
        offset = self._conn.execute("SELECT value FROM meta WHERE key='clock_offset_ms'").fetchone()
        if offset:
            self._offset_ms = int(offset[0])

    # -- housekeeping -------------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        return self._conn

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def close(self) -> None:
        with self._lock:
            self.flush_counters()
            self._conn.close()

    def now_ms(self) -> int:
        return int(self._clock() * 1000) + self._offset_ms

    def advance_clock(self, seconds: float) -> int:
        """Move the emulator's clock forward (tests of expiry and ``seconds:T``)."""
        with self._lock:
            self._offset_ms += int(seconds * 1000)
            self._conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('clock_offset_ms', ?)", (str(self._offset_ms),)
            )
            return self.now_ms()

    def reset(self) -> None:
        """Forget every job, user, message, idempotency record and counter."""
        with self._lock:
            self._conn.execute("BEGIN")
            for table in ("jobs", "users", "idempotency", "meta", "outbox", "webhook_jobs"):
                self._conn.execute(f"DELETE FROM {table}")
            self._conn.execute("COMMIT")
            self._counters = dict.fromkeys(COUNTER_NAMES, 0)
            self._by_status = {}
            self._max_cache = None
            self._offset_ms = 0
            if self.webhooks is not None:
                self.webhooks.reset()

    # -- counters -------------------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def count_status(self, status: int) -> None:
        with self._lock:
            key = str(status)
            self._by_status[key] = self._by_status.get(key, 0) + 1

    def flush_counters(self) -> None:
        with self._lock:
            value = orjson.dumps({**self._counters, "by_status": self._by_status}).decode()
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('counters', ?)", (value,))

    def stats(self) -> JsonDict:
        with self._lock:
            c = self._counters
            stats = {
                "jobs_created": c["jobs_created"],
                "runs": c["runs"],
                "requests": c["requests"],
                "requests_by_status": dict(sorted(self._by_status.items())),
                "ingest_attempts": c["ingest_attempts"],
                "users_accepted": c["users_accepted"],
                "duplicate_users": c["duplicate_users"],
                "dropped_connections": c["dropped_connections"],
                "max_accepted_per_recipient": self._max_accepted_per_recipient(),
                "idempotent_replays": c["idempotent_replays"],
                "idempotency_mismatches": c["idempotency_mismatches"],
            }
            if self.webhooks is not None:  # only with --webhook-url
                stats.update({name: c[name] for name in WEBHOOK_COUNTERS})
                stats["webhooks_pending"] = self.webhooks.pending()
            return stats

    def _max_accepted_per_recipient(self) -> int:
        # Derived from persisted rows: within a job a recipient is unique, so only a
        # recipient present in several jobs can count more than once.
        total = self._conn.execute("SELECT COUNT(*) FROM users").fetchone()[0]
        if self._max_cache is not None and self._max_cache[0] == total:
            return self._max_cache[1]
        if total == 0:
            value = 0
        else:
            jobs = self._conn.execute("SELECT COUNT(DISTINCT job) FROM users").fetchone()[0]
            if jobs <= 1:
                value = 1
            else:
                value = self._conn.execute(
                    "SELECT MAX(c) FROM (SELECT COUNT(*) AS c FROM users GROUP BY recipient)"
                ).fetchone()[0]
        self._max_cache = (total, int(value))
        return int(value)

    # -- idempotency ----------------------------------------------------------------------

    def _salt(self) -> bytes:
        row = self._conn.execute("SELECT value FROM meta WHERE key='scope_salt'").fetchone()
        if row:
            return bytes.fromhex(row[0])
        salt = secrets.token_bytes(16)
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('scope_salt', ?)", (salt.hex(),))
        return salt

    def scope(self, token: str) -> str:
        """The idempotency scope of a bearer token: a salted hash, never the token itself
        (the salt is random per database, so the file alone does not confirm a guess)."""
        with self._lock:
            return hmac.new(self._salt(), token.encode(), hashlib.sha256).hexdigest()

    def idempotency_lookup(self, scope: str, key: str) -> tuple[int, bytes, str] | None:
        """The saved ``(status, body, request_hash)`` of an unexpired key, else ``None``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT request_hash, status, body, expires_ms FROM idempotency "
                "WHERE scope=? AND key=?",
                (scope, key),
            ).fetchone()
            if row is None:
                return None
            if row[3] <= self.now_ms():
                self._conn.execute("DELETE FROM idempotency WHERE scope=? AND key=?", (scope, key))
                return None
            return int(row[1]), bytes(row[2]), str(row[0])

    def idempotency_save(
        self, scope: str, key: str, request_hash: str, status: int, body: bytes, expires_ms: int
    ) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?, ?)",
                (scope, key, request_hash, status, body, expires_ms),
            )

    @staticmethod
    def request_hash(method: str, path: str, body: bytes) -> str:
        return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()

    # -- bulk jobs ------------------------------------------------------------------------

    def validate_create(self, body: object, raw: bytes | None = None) -> JsonDict:
        """Return the job's ``message`` or raise the API's 400 (nothing is stored).

        ``raw``: the bytes ``body`` was parsed from (a valid body then takes the fast check).
        """
        if self.flavor == "tutorial":
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
        if self.flavor == "current" and not message["event"]:
            raise ValidationError("message.event is required (it is an empty string).")
        result: JsonDict = message
        return result

    def validate_ingest(self, body: object, raw: bytes | None = None) -> list[Any]:
        if self.flavor == "tutorial":
            users = body.get("users") if isinstance(body, dict) else None
            if not isinstance(users, list):
                raise ValidationError("The 'users' parameter is required.")
        self._check_body("POST", "/bulk/{job_id}", body, raw)
        result: list[Any] = body["users"]  # type: ignore[index]  # checked by the schema
        return result

    def _check_body(self, method: str, path: str, body: object, raw: bytes | None) -> None:
        try:
            spec.body_validator(self.flavor, method, path)(body, raw)
        except spec.SpecViolation as exc:
            raise ValidationError(str(exc)) from None

    def create_job(self, message: JsonDict) -> str:
        nested = as_dict(message.get("message"))
        event = message.get("event") or message.get("template") or nested.get("template") or ""
        notification = message.get("template") or nested.get("template") or event
        channels = job_channels(message, self.routes, self.flavor)
        with self._lock:
            now = self.now_ms()
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
            self._counters["jobs_created"] += 1
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
            self._counters["users_accepted"] += len(rows)
            self._counters["duplicate_users"] += duplicates
            return {"total": int(total), "errors": errors}

    def run_job(self, job_id: str) -> None:
        with self._lock:
            num, status, *_ = self._job(job_id)
            if status != "CREATED":
                raise ApiError(400, "BulkJobDuplicateInvocationError")
            now = self.now_ms()
            self._conn.execute(
                "UPDATE jobs SET status='PROCESSING', run_ms=? WHERE num=?", (now, num)
            )
            self._counters["runs"] += 1
            if self.progression.mode == "immediate":
                self._complete(num, job_id, now)

    def _complete(self, num: int, job_id: str, at_ms: int) -> None:
        """Fan out in SQL: every PENDING user gets a messageId and ENQUEUED (or ERROR)."""
        final = self.progression.mode == "immediate"
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
                                THEN ({self.states.final_step_sql()}) ELSE 0 END,
                    sent_ms = CASE WHEN :final AND outcome IN ({self.states.sending_sql()})
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
            if self.webhooks is not None:
                self.webhooks.on_complete(num)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def settle_due_jobs(self) -> None:
        with self._lock:
            self._settle_due_jobs()

    def _settle_due_jobs(self) -> None:
        """``seconds:T``: complete every PROCESSING job whose time has come."""
        if self.progression.mode != "seconds":
            return
        step = self.progression.step_ms
        due = self._conn.execute(
            "SELECT num, id, run_ms FROM jobs WHERE status='PROCESSING' AND run_ms + ? <= ?",
            (step, self.now_ms()),
        ).fetchall()
        for num, job_id, run_ms in due:
            self._complete(num, job_id, run_ms + step)

    def retrieve_job(self, job_id: str) -> JsonDict:
        with self._lock:
            self._settle_due_jobs()
            num, status, _c, _r, _run, polls = self._job(job_id)
            if status == "PROCESSING" and self.progression.mode == "polls":
                polls += 1
                self._conn.execute("UPDATE jobs SET polls=? WHERE num=?", (polls, num))
                if polls >= self.progression.polls:
                    self._complete(num, job_id, self.now_ms())
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
                key = _unb64(cursor)
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
            next_cursor = _b64({"after": rows[-1][0]}) if more else None
            return {"items": items, "paging": {"cursor": next_cursor, "more": more}}

    # -- messages -------------------------------------------------------------------------

    _MESSAGE_COLUMNS = (
        "u.id, u.message_id, u.recipient, u.outcome, u.channel, u.enqueued_ms, u.step, "
        "u.reads, u.sent_ms, u.done_ms, u.canceled_ms, j.event, j.notification"
    )
    _MESSAGE_FROM = "FROM users u JOIN jobs j ON j.num = u.job"

    def _details(self, row: tuple[Any, ...], now: int, providers: bool) -> JsonDict:
        """MessageDetails (+ ``providers`` for ``GET /messages/{id}`` only)."""
        outcome, enq, step = row[3], row[5], row[6]
        sent, done, canceled = row[8], row[9], row[10]
        at = self.states.timeline((outcome, enq, step, sent, done, canceled), now)
        return self._details_at(row, at, providers)

    def _details_at(self, row: tuple[Any, ...], at: Timeline, providers: bool) -> JsonDict:
        _id, mid, recipient, _o, channel, enq, _s, _r, _sent, _done, _c, ev, nt = row
        details: JsonDict = {
            "id": mid,
            "status": at.status,
            "enqueued": enq,
            "recipient": recipient,
            "event": ev,
            "notification": nt,
        }
        if at.sent is not None:
            details["sent"] = at.sent
        if at.status == "DELIVERED":
            details["delivered"] = at.done
        if at.status == "UNDELIVERABLE":
            details["reason"] = "BOUNCED"
            details["error"] = "The email address bounced (emulated: '.invalid' domain)."
        elif at.status == "UNROUTABLE":
            details["reason"] = "NO_CHANNELS"
            details["error"] = "No channel of the job could be routed for this recipient."
        if providers:
            details["providers"] = []
            if at.sent is not None and channel:
                provider: JsonDict = {
                    "channel": {"key": channel, "name": channel},
                    "provider": f"emulator-{channel}",
                    "status": at.status,
                    "sent": at.sent,
                }
                if "delivered" in details:
                    provider["delivered"] = details["delivered"]
                if at.status == "UNDELIVERABLE":
                    provider["error"] = details["error"]
                details["providers"].append(provider)
        return details

    def webhook_payload(self, user_id: int, step: int) -> JsonDict | None:
        """The ``message:updated`` event of a message at ``step`` (``CANCELED_STEP``: its
        cancellation): ``data`` is ``GET /messages/{id}`` as it stood then, plus the
        webhook-only ``recipientId`` (and ``canceledAt``). ``None`` if the message is gone."""
        with self._lock:
            found = self._conn.execute(
                f"SELECT {self._MESSAGE_COLUMNS} {self._MESSAGE_FROM} WHERE u.id = ?", (user_id,)
            ).fetchone()
            if found is None or found[1] is None:
                return None
            row = tuple(found)
            outcome, enq, sent, done, canceled = row[3], row[5], row[8], row[9], row[10]
            if step == CANCELED_STEP:
                at = Timeline(CANCELED, 0, enq, None, None, canceled)
            else:
                at = self.states.at_step(outcome, enq, step, sent, done)
            data = self._details_at(row, at, providers=True)
            data["recipientId"] = row[2]
            if step == CANCELED_STEP:
                data["canceledAt"] = canceled
            return {"type": "message:updated", "data": data}

    def _advance(self, rows: list[tuple[Any, ...]], now: int) -> list[tuple[Any, ...]]:
        """``polls:N``: count one read of each message; every N-th read advances a step."""
        if self.progression.mode != "polls" or not rows:
            return rows
        n = self.progression.polls
        out = []
        updates = []
        changed: list[tuple[int, int]] = []
        for row in rows:
            rid, mid, rec, outcome, channel, enq, step, reads, sent, done, canceled, ev, nt = row
            reads += 1
            if reads % n == 0 and canceled is None:
                before = step
                step, sent, done = self.states.advance(outcome, step, sent, done, now)
                if step != before:
                    changed.append((rid, step))
            updates.append((step, reads, sent, done, rid))
            out.append(
                (rid, mid, rec, outcome, channel, enq, step, reads, sent, done, canceled, ev, nt)
            )
        self._conn.executemany(
            "UPDATE users SET step=?, reads=?, sent_ms=?, done_ms=? WHERE id=?", updates
        )
        if self.webhooks is not None:
            self.webhooks.add(changed)
        return out

    def _message_row(self, message_id: str) -> tuple[Any, ...]:
        row = self._conn.execute(
            f"SELECT {self._MESSAGE_COLUMNS} {self._MESSAGE_FROM} WHERE u.message_id = ?",
            (message_id,),
        ).fetchone()
        if row is None:
            raise not_found()
        return tuple(row)

    def retrieve_message(self, message_id: str) -> JsonDict:
        with self._lock:
            self._settle_due_jobs()
            now = self.now_ms()
            (row,) = self._advance([self._message_row(message_id)], now)
            return self._details(row, now, providers=True)

    def cancel_message(self, message_id: str) -> tuple[int, JsonDict]:
        """200 + the record with ``canceledAt`` while not yet sent; 409 + the record after."""
        with self._lock:
            self._settle_due_jobs()
            now = self.now_ms()
            row = self._message_row(message_id)
            details = self._details(row, now, providers=False)
            if details["status"] not in CANCELABLE:
                return 409, details
            self._conn.execute("UPDATE users SET canceled_ms=? WHERE id=?", (now, row[0]))
            if self.webhooks is not None:
                self.webhooks.add([(row[0], CANCELED_STEP)])
            details = self._details((*row[:10], now, *row[11:]), now, providers=False)
            details["canceledAt"] = now
            return 200, details

    def message_history(self, message_id: str, type_: str | None) -> JsonDict:
        """``{results: [...]}``: one item per step reached, ``ts`` in epoch ms, oldest first."""
        with self._lock:
            self._settle_due_jobs()
            now = self.now_ms()
            row = self._message_row(message_id)
            rid, _mid, recipient, outcome, channel, enq, step, _r, sent, done, canceled = row[:11]
            at = self.states.timeline((outcome, enq, step, sent, done, canceled), now)
            (payload, definition) = self._conn.execute(
                "SELECT u.payload, j.definition FROM users u JOIN jobs j ON j.num = u.job "
                "WHERE u.id = ?",
                (rid,),
            ).fetchone()
            user, job = orjson.loads(payload), orjson.loads(definition)
            items: list[JsonDict] = [
                {
                    "ts": enq,
                    "type": "ENQUEUED",
                    "data": merged_data(job, user),
                    "event": row[11],
                    "profile": as_dict(user.get("profile")),
                    "override": as_dict(job.get("override")),
                    "recipient": recipient,
                }
            ]
            routed = {
                "channel": {"id": channel},
                "integration": {"id": f"emulator-{channel}", "provider": f"emulator-{channel}"},
            }
            if at.sent is not None:
                items.append({"ts": at.sent, "type": "SENT", **routed})
            if at.status == "DELIVERED":
                items.append({"ts": at.done, "type": "DELIVERED", **routed, "reference": {}})
            elif at.status == "UNDELIVERABLE":
                error = "The email address bounced (emulated: '.invalid' domain)."
                items.append(
                    {"ts": at.done, "type": "UNDELIVERABLE", **routed, "error_message": error}
                )
            elif at.status == "UNROUTABLE":
                items.append(
                    {
                        "ts": at.done,
                        "type": "UNROUTABLE",
                        "channel": {"id": None},
                        "reason": "NO_CHANNELS",
                    }
                )
            if type_:
                items = [i for i in items if i["type"] == type_]
            return {"results": items}

    def _message_filters(self, query: Mapping[str, list[str]], params: JsonDict) -> list[str]:
        """SQL conditions for the documented ``GET /messages`` filters (ANDed; within one
        filter, any value matches). Values may be comma-joined or repeated."""

        def values(name: str) -> list[str]:
            return [v for raw in query.get(name, []) for v in raw.split(",") if v]

        where = ["u.message_id IS NOT NULL"]
        payload = "json_extract(u.payload, '$.to.{}')"
        metadata = "json_extract(j.definition, '$.message.metadata.{}')"
        tags = (
            "(SELECT value FROM json_each(j.definition, '$.message.metadata.tags') "
            "WHERE json_type(j.definition, '$.message.metadata.tags') = 'array')"
        )
        for name, column in (
            ("status", self.states.status_sql()),
            ("recipient", "u.recipient"),
            ("event", "j.event"),
            ("notification", "j.notification"),
            ("messageId", "u.message_id"),
            ("provider", "'emulator-' || u.channel"),
            ("list", payload.format("list_id")),
            (
                "tenant_id",
                f"COALESCE({payload.format('tenant_id')}, {payload.format('context.tenant_id')})",
            ),
            ("traceId", metadata.format("trace_id")),
        ):
            wanted = values(name)
            if wanted:
                keys = [f"{name}{i}" for i in range(len(wanted))]
                params.update(zip(keys, wanted, strict=True))
                where.append(f"({column}) IN ({', '.join(':' + k for k in keys)})")
        wanted_tags = values("tag") + values("tags")
        if wanted_tags:
            params["tags"] = orjson.dumps(wanted_tags).decode()
            where.append(f"EXISTS (SELECT 1 FROM json_each(:tags) t WHERE t.value IN {tags})")
        after = values("enqueued_after")
        if after:
            params["enqueued_after"] = self._parse_time(after[0])
            where.append("u.enqueued_ms > :enqueued_after")
        return where

    def list_messages(self, query: Mapping[str, list[str]]) -> JsonDict:
        """``GET /messages``: newest first, 10 a page, no ``providers`` on the rows.

        A list read counts as a read of each message on the page (``polls:N``); the page
        shows each status as it was before this read. ``archived`` is accepted and changes
        nothing: the emulator never archives a message.
        """
        with self._lock:
            self._settle_due_jobs()
            now = self.now_ms()
            params: JsonDict = {"now": now, "step_ms": self.progression.step_ms}
            where = self._message_filters(query, params)
            cursor = query.get("cursor", [""])[0]
            if cursor:
                key = _unb64(cursor)
                if not (
                    isinstance(key, list) and len(key) == 2 and all(isinstance(k, int) for k in key)
                ):
                    raise ValidationError(f"Invalid cursor {cursor!r}.")
                params["c_enq"], params["c_id"] = key
                where.append(
                    "(u.enqueued_ms < :c_enq OR (u.enqueued_ms = :c_enq AND u.id < :c_id))"
                )
            rows = [
                tuple(r)
                for r in self._conn.execute(
                    f"SELECT {self._MESSAGE_COLUMNS} {self._MESSAGE_FROM} "
                    f"WHERE {' AND '.join(where)} ORDER BY u.enqueued_ms DESC, u.id DESC "
                    f"LIMIT {MESSAGES_PAGE_SIZE + 1}",
                    params,
                )
            ]
            more = len(rows) > MESSAGES_PAGE_SIZE
            rows = rows[:MESSAGES_PAGE_SIZE]
            results = [self._details(r, now, providers=False) for r in rows]
            self._advance(rows, now)
            next_cursor = _b64([rows[-1][5], rows[-1][0]]) if more else None
            return {"paging": {"cursor": next_cursor, "more": more}, "results": results}

    @staticmethod
    def _parse_time(text: str) -> int:
        if re.fullmatch(r"\d+", text):
            return int(text)
        from datetime import UTC, datetime

        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError(
                f"Invalid enqueued_after {text!r}: expected an ISO-8601 date or epoch ms."
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)

    def message_output(self, message_id: str) -> JsonDict:
        """Render the job's inline content with the user's merged data."""
        with self._lock:
            self._settle_due_jobs()
            row = self._conn.execute(
                "SELECT u.payload, u.channel, u.outcome, j.definition FROM users u "
                "JOIN jobs j ON j.num = u.job WHERE u.message_id = ?",
                (message_id,),
            ).fetchone()
            if row is None:
                raise not_found()
            payload, channel, outcome, definition_json = row
            if outcome == "UNROUTABLE":
                return {"results": []}
            definition = orjson.loads(definition_json)
            user = orjson.loads(payload)
            data = merged_data(definition, user)
            content = definition.get("content") or as_dict(definition.get("message")).get("content")
            title, body = content_text(content)
            title, body = render(title, data), render(body, data)
            return {
                "results": [
                    {
                        "channel": channel,
                        "channel_id": f"emulator-{channel}",
                        "content": {
                            "blocks": [{"type": "text", "text": body}] if body else [],
                            "body": body,
                            "html": f"<p>{html.escape(body)}</p>" if body else "",
                            "subject": title,
                            "text": body,
                            "title": title,
                        },
                    }
                ]
            }
