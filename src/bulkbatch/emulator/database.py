"""The emulator's SQLite file: its schema, and opening (creating, migrating) it.

One database (a file with ``--db``, memory otherwise) holds everything the Courier API would
remember: ``jobs``, ``users`` (one row per accepted user; after fan-out the same row is also
the user's message), ``idempotency`` records, ``meta`` (the stats counters, the clock offset,
the scope salt) and the webhook outbox's tables (:mod:`.outbox`).
"""

from __future__ import annotations

import os
import sqlite3

from bulkbatch.emulator.faults import EmulatorConfigError
from bulkbatch.emulator.outbox import OUTBOX_SCHEMA

__all__ = ["SCHEMA", "TABLES", "open_database"]

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

# Every table a reset empties (this module's and the outbox's).
TABLES = ("jobs", "users", "idempotency", "meta", "outbox", "webhook_jobs")


def open_database(path: str) -> sqlite3.Connection:
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
