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
import html
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from bulkbatch.emulator.faults import EmulatorConfigError

__all__ = [
    "ApiError",
    "Backend",
    "Progression",
    "ValidationError",
    "parse_expiration",
]

JsonDict = dict[str, Any]

PAGE_SIZE = 100
DAY_MS = 24 * 3600 * 1000
YEAR_MS = 365 * DAY_MS
COUNTER_NAMES = (
    "jobs_created",
    "runs",
    "requests",
    "ingest_attempts",
    "users_accepted",
    "duplicate_users",
    "dropped_connections",
    "idempotent_replays",
)
PROGRESSION_FORM = "'immediate', 'polls:N' (N an integer >= 1) or 'seconds:T' (T a number >= 0)"


class ApiError(Exception):
    """An API-shaped error: HTTP status plus the ``{message, type}`` envelope."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type

    def envelope(self) -> JsonDict:
        return {"message": self.message, "type": self.type}


class ValidationError(ApiError):
    """A 400 raised before the endpoint started executing (never saved for idempotency)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message, "invalid_request_error")


def not_found() -> ApiError:
    return ApiError(404, "Not Found", "invalid_request_error")


@dataclass(frozen=True)
class Progression:
    """How a run job and its messages advance: ``immediate``, ``polls:N`` or ``seconds:T``."""

    mode: Literal["immediate", "polls", "seconds"] = "polls"
    polls: int = 2
    seconds: float = 0.0

    @classmethod
    def parse(cls, value: str | Progression) -> Progression:
        if isinstance(value, Progression):
            return value
        text = value.strip()
        if text == "immediate":
            return cls("immediate")
        kind, sep, arg = text.partition(":")
        try:
            if sep and kind == "polls":
                n = int(arg)
                if n >= 1:
                    return cls("polls", polls=n)
            elif sep and kind == "seconds":
                t = float(arg)
                if t == 0:
                    return cls("immediate")
                if t > 0 and t < float("inf"):
                    return cls("seconds", seconds=t)
        except ValueError:
            pass
        raise EmulatorConfigError(f"bad progression {value!r}: expected {PROGRESSION_FORM}")

    def __str__(self) -> str:
        if self.mode == "polls":
            return f"polls:{self.polls}"
        if self.mode == "seconds":
            return f"seconds:{self.seconds:g}"
        return "immediate"

    @property
    def step_ms(self) -> int:
        return max(1, round(self.seconds * 1000))


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
    done_ms INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS users_job_recipient ON users(job, recipient);
CREATE INDEX IF NOT EXISTS users_job ON users(job);
CREATE UNIQUE INDEX IF NOT EXISTS users_message ON users(message_id)
    WHERE message_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS idempotency (
    api_key TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status INTEGER NOT NULL,
    body BLOB NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (api_key, key)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_TEMPLATE_VAR = re.compile(r"\{\{\s*([\w.\-]+)\s*\}\}")


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


def parse_expiration(value: str, now_ms: int) -> int:
    """Parse ``x-idempotency-expiration`` into an absolute epoch-ms expiry.

    Accepts epoch milliseconds, epoch seconds (values below 10^11), ISO-8601, or a duration
    like ``"2 days"``/``"36 hours"``. The result is clamped to [now + 24 h, now + 1 year].
    """
    text = value.strip()
    expires: int
    duration = re.fullmatch(r"(\d+)\s*(day|days|hour|hours|d|h)", text, re.IGNORECASE)
    if re.fullmatch(r"\d+(\.\d+)?", text):
        number = float(text)
        expires = int(number * 1000) if number < 1e11 else int(number)
    elif duration:
        unit = 24 * 3600_000 if duration.group(2).lower().startswith("d") else 3600_000
        expires = now_ms + int(duration.group(1)) * unit
    else:
        from datetime import UTC, datetime

        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError(
                f"Invalid x-idempotency-expiration {value!r}: expected epoch milliseconds "
                "or an ISO-8601 date."
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        expires = int(parsed.timestamp() * 1000)
    return min(max(expires, now_ms + DAY_MS), now_ms + YEAR_MS)


def _as_dict(value: object) -> JsonDict:
    return value if isinstance(value, dict) else {}


def job_channels(message: Mapping[str, Any]) -> list[str]:
    """The job's channels: nested ``message.message.routing.channels``, else
    ``message.routing.channels``, else ``["email"]``. Only string entries count."""
    for routing in (
        _as_dict(_as_dict(message.get("message")).get("routing")),
        _as_dict(message.get("routing")),
    ):
        channels = routing.get("channels")
        if isinstance(channels, list):
            found = [c for c in channels if isinstance(c, str)]
            if found:
                return found
    return ["email"]


def user_outcome(user: Mapping[str, Any], channels: Iterable[str]) -> tuple[str, str | None]:
    """Decide a user's fate at ingest: ``(outcome, channel)``.

    ERROR when ``profile``, ``data`` or ``to`` is present, not null and not a JSON object.
    Otherwise the first routable channel of the job wins: ``email`` needs ``profile.email``,
    ``sms`` needs ``profile.phone_number``, ``push``/``inbox`` need ``to.user_id`` or a
    recipient (always present). None routable → UNROUTABLE. An email whose domain is or ends
    in ``.invalid`` → UNDELIVERABLE. Everything else → DELIVERED.
    """
    profile, data, to = user.get("profile"), user.get("data"), user.get("to")
    for part in (profile, data, to):
        if part is not None and not isinstance(part, dict):
            return "ERROR", None
    profile_d = profile or {}
    for channel in channels:
        if channel == "email":
            email = profile_d.get("email")
            if isinstance(email, str) and email:
                domain = email.rpartition("@")[2].strip().lower().rstrip(".")
                if domain == "invalid" or domain.endswith(".invalid"):
                    return "UNDELIVERABLE", "email"
                return "DELIVERED", "email"
        elif channel == "sms":
            phone = profile_d.get("phone_number")
            if isinstance(phone, str) and phone:
                return "DELIVERED", "sms"
        elif channel in ("push", "inbox"):
            return "DELIVERED", channel
    return "UNROUTABLE", None


def merged_data(definition: Mapping[str, Any], user: Mapping[str, Any]) -> JsonDict:
    """``{...message.data, ...message.message.data, ...user.data, ...user.to.data}``."""
    out: JsonDict = {}
    out.update(_as_dict(definition.get("data")))
    out.update(_as_dict(_as_dict(definition.get("message")).get("data")))
    out.update(_as_dict(user.get("data")))
    out.update(_as_dict(_as_dict(user.get("to")).get("data")))
    return out


def render(text: str, data: Mapping[str, Any]) -> str:
    """Replace ``{{var}}`` / ``{{a.b}}`` with values from ``data``; missing → empty string."""

    def lookup(match: re.Match[str]) -> str:
        value: Any = data
        for part in match.group(1).split("."):
            if not isinstance(value, dict) or part not in value:
                return ""
            value = value[part]
        if isinstance(value, str):
            return value
        if value is None:
            return ""
        return orjson.dumps(value).decode()

    return _TEMPLATE_VAR.sub(lookup, text)


def _final_step(outcome: str) -> int:
    return 1 if outcome == "UNROUTABLE" else 2


def message_status(outcome: str, step: int) -> str:
    if step >= _final_step(outcome):
        return outcome
    return "ENQUEUED" if step <= 0 else "SENT"


class Backend:
    """All emulator state in one SQLite database."""

    def __init__(
        self,
        db: str | os.PathLike[str] | None = None,
        progression: str | Progression = "polls:2",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.progression = Progression.parse(progression)
        self._clock = clock
        self._offset_ms = 0
        self._lock = threading.RLock()
        self.path = os.fspath(db) if db is not None else ":memory:"
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA temp_store=MEMORY")
        self._conn.execute("PRAGMA cache_size=-65536")
        self._conn.executescript(SCHEMA)
        self._counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._by_status: dict[str, int] = {}
        self._max_cache: tuple[int, int] | None = None
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
            for table in ("jobs", "users", "idempotency", "meta"):
                self._conn.execute(f"DELETE FROM {table}")
            self._conn.execute("COMMIT")
            self._counters = dict.fromkeys(COUNTER_NAMES, 0)
            self._by_status = {}
            self._max_cache = None
            self._offset_ms = 0

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
            return {
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
            }

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

    def idempotency_lookup(
        self, api_key: str, key: str, request_hash: str
    ) -> tuple[int, bytes] | Literal["mismatch"] | None:
        """A saved ``(status, body)``, ``"mismatch"`` for another request, or ``None``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT request_hash, status, body, expires_ms FROM idempotency "
                "WHERE api_key=? AND key=?",
                (api_key, key),
            ).fetchone()
            if row is None:
                return None
            if row[3] <= self.now_ms():
                self._conn.execute(
                    "DELETE FROM idempotency WHERE api_key=? AND key=?", (api_key, key)
                )
                return None
            if row[0] != request_hash:
                return "mismatch"
            return int(row[1]), bytes(row[2])

    def idempotency_save(
        self, api_key: str, key: str, request_hash: str, status: int, body: bytes, expires_ms: int
    ) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?, ?)",
                (api_key, key, request_hash, status, body, expires_ms),
            )

    @staticmethod
    def request_hash(method: str, path: str, body: bytes) -> str:
        return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()

    # -- bulk jobs ------------------------------------------------------------------------

    @staticmethod
    def validate_create(body: object) -> JsonDict:
        """Return the job's ``message`` or raise the API's 400."""
        message = body.get("message") if isinstance(body, dict) else None
        if message is None:
            raise ValidationError("The 'message' parameter is required.")
        if not isinstance(message, dict):
            raise ValidationError("The 'message' parameter must be an object.")
        nested = message.get("message")
        has_event = isinstance(message.get("event"), str) and bool(message["event"])
        has_inline = message.get("template") or message.get("content")
        has_nested = isinstance(nested, dict) and (nested.get("template") or nested.get("content"))
        if not (has_event or has_inline or has_nested):
            raise ValidationError("The 'event' parameter is required.")
        return message

    def create_job(self, message: JsonDict) -> str:
        nested = _as_dict(message.get("message"))
        event = message.get("event") or message.get("template") or nested.get("template") or ""
        notification = message.get("template") or nested.get("template") or event
        with self._lock:
            now = self.now_ms()
            job_id = f"1-{now // 1000:08x}-{secrets.token_hex(12)}"
            self._conn.execute(
                "INSERT INTO jobs (id, definition, channels, event, notification, status, "
                "created_ms) VALUES (?, ?, ?, ?, ?, 'CREATED', ?)",
                (
                    job_id,
                    orjson.dumps(message).decode(),
                    orjson.dumps(job_channels(message)).decode(),
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

    @staticmethod
    def validate_ingest(body: object) -> list[Any]:
        users = body.get("users") if isinstance(body, dict) else None
        if not isinstance(users, list):
            raise ValidationError("The 'users' parameter is required.")
        return users

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
                """
                UPDATE users SET
                    status = CASE WHEN outcome = 'ERROR' THEN 'ERROR' ELSE 'ENQUEUED' END,
                    message_id = CASE WHEN outcome = 'ERROR' THEN NULL
                                      ELSE :prefix || printf('%08x', id) END,
                    enqueued_ms = CASE WHEN outcome = 'ERROR' THEN NULL ELSE :at END,
                    step = CASE WHEN :final AND outcome != 'ERROR'
                                THEN (CASE outcome WHEN 'UNROUTABLE' THEN 1 ELSE 2 END)
                                ELSE 0 END,
                    sent_ms = CASE WHEN :final AND outcome IN ('DELIVERED', 'UNDELIVERABLE')
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
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

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
        "u.reads, u.sent_ms, u.done_ms, j.event, j.notification"
    )

    def _step_sql(self) -> str:
        if self.progression.mode == "seconds":
            return "MAX(0, MIN(2, (:now - u.enqueued_ms) / :step_ms))"
        return "u.step"

    def _details(self, row: tuple[Any, ...], now: int) -> JsonDict:
        _id, mid, recipient, outcome, channel, enq, step, _reads, sent, done, event, notif = row
        final = _final_step(outcome)
        if self.progression.mode == "seconds":
            sms = self.progression.step_ms
            step = max(0, min(final, (now - enq) // sms))
            sent = enq + sms if step >= 1 and outcome != "UNROUTABLE" else None
            done = enq + final * sms if step >= final else None
        status = message_status(outcome, step)
        details: JsonDict = {
            "id": mid,
            "status": status,
            "enqueued": enq,
            "recipient": recipient,
            "event": event,
            "notification": notif,
        }
        if sent is not None and step >= 1 and outcome != "UNROUTABLE":
            details["sent"] = sent
        if status == "DELIVERED":
            details["delivered"] = done
        if status == "UNDELIVERABLE":
            details["reason"] = "BOUNCED"
            details["error"] = "The email address bounced (emulated: '.invalid' domain)."
        elif status == "UNROUTABLE":
            details["reason"] = "NO_CHANNELS"
            details["error"] = "No channel of the job could be routed for this recipient."
        providers = []
        if "sent" in details and channel:
            provider: JsonDict = {
                "channel": {"key": channel, "name": channel},
                "provider": f"emulator-{channel}",
                "status": status if status != "ENQUEUED" else "SENT",
                "sent": details["sent"],
            }
            if "delivered" in details:
                provider["delivered"] = details["delivered"]
            providers.append(provider)
        details["providers"] = providers
        return details

    def _advance(self, rows: list[tuple[Any, ...]], now: int) -> list[tuple[Any, ...]]:
        """``polls:N``: count one read of each message; every N-th read advances a step."""
        if self.progression.mode != "polls" or not rows:
            return rows
        n = self.progression.polls
        out = []
        updates = []
        for row in rows:
            rid, mid, rec, outcome, channel, enq, step, reads, sent, done, ev, nt = row
            reads += 1
            if reads % n == 0 and step < _final_step(outcome):
                step += 1
                if step == 1 and outcome != "UNROUTABLE":
                    sent = now
                if step == _final_step(outcome):
                    done = now
            updates.append((step, reads, sent, done, rid))
            out.append((rid, mid, rec, outcome, channel, enq, step, reads, sent, done, ev, nt))
        self._conn.executemany(
            "UPDATE users SET step=?, reads=?, sent_ms=?, done_ms=? WHERE id=?", updates
        )
        return out

    def retrieve_message(self, message_id: str) -> JsonDict:
        with self._lock:
            self._settle_due_jobs()
            row = self._conn.execute(
                f"SELECT {self._MESSAGE_COLUMNS} FROM users u JOIN jobs j ON j.num = u.job "
                "WHERE u.message_id = ?",
                (message_id,),
            ).fetchone()
            if row is None:
                raise not_found()
            now = self.now_ms()
            (row,) = self._advance([tuple(row)], now)
            return self._details(row, now)

    def list_messages(self, query: Mapping[str, list[str]]) -> JsonDict:
        """``GET /messages``: newest first, 100 a page, filters ANDed.

        A list read counts as a read of each message on the page (``polls:N``); the page
        shows each status as it was before this read.
        """
        with self._lock:
            self._settle_due_jobs()
            now = self.now_ms()
            step = self._step_sql()
            status_sql = (
                f"CASE WHEN ({step}) >= (CASE u.outcome WHEN 'UNROUTABLE' THEN 1 ELSE 2 END) "
                f"THEN u.outcome WHEN ({step}) <= 0 THEN 'ENQUEUED' ELSE 'SENT' END"
            )
            where = ["u.message_id IS NOT NULL"]
            params: JsonDict = {"now": now, "step_ms": self.progression.step_ms}

            def values(name: str) -> list[str]:
                return [v for raw in query.get(name, []) for v in raw.split(",") if v]

            for name, column in (
                ("status", status_sql),
                ("recipient", "u.recipient"),
                ("event", "j.event"),
                ("notification", "j.notification"),
                ("messageId", "u.message_id"),
            ):
                wanted = values(name)
                if wanted:
                    keys = [f"{name}{i}" for i in range(len(wanted))]
                    params.update(zip(keys, wanted, strict=True))
                    where.append(f"({column}) IN ({', '.join(':' + k for k in keys)})")
            after = values("enqueued_after")
            if after:
                params["enqueued_after"] = self._parse_time(after[0])
                where.append("u.enqueued_ms > :enqueued_after")
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
                    f"SELECT {self._MESSAGE_COLUMNS} FROM users u JOIN jobs j ON j.num = u.job "
                    f"WHERE {' AND '.join(where)} ORDER BY u.enqueued_ms DESC, u.id DESC "
                    f"LIMIT {PAGE_SIZE + 1}",
                    params,
                )
            ]
            more = len(rows) > PAGE_SIZE
            rows = rows[:PAGE_SIZE]
            results = [self._details(r, now) for r in rows]
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
            content = definition.get("content") or _as_dict(definition.get("message")).get(
                "content"
            )
            title, body = _content_text(content)
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


def _content_text(content: object) -> tuple[str, str]:
    """``(title, body)`` of ElementalContentSugar ``{title, body}`` or ``{elements: [...]}``."""
    if not isinstance(content, dict):
        return "", ""
    if "elements" in content and isinstance(content["elements"], list):
        title, bodies = "", []
        for element in content["elements"]:
            if not isinstance(element, dict):
                continue
            if element.get("type") == "meta" and isinstance(element.get("title"), str):
                title = element["title"]
            elif element.get("type") == "text" and isinstance(element.get("content"), str):
                bodies.append(element["content"])
        return title, "\n".join(bodies)
    sugar_title, sugar_body = content.get("title"), content.get("body")
    return (
        sugar_title if isinstance(sugar_title, str) else "",
        sugar_body if isinstance(sugar_body, str) else "",
    )
