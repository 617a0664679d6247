"""The webhook event store: one SQLite file in WAL mode, shared by many runs.

Why SQLite (WAL) and not Parquet segments: events arrive one by one, thousands a second,
and must be durable before the receiver answers 2xx. SQLite gives that with one fsync per
group commit, while readers (``bulkbatch results``, ``webhooks export``, a notebook) read a
consistent snapshot as the receiver keeps writing; and a message's outcome is one
``GROUP BY`` away. Parquet segments would need a flush (and a small file) per commit, a
compactor, and a reader that tolerates half-written files. Export to Parquet is one command.

Table ``events``: one row per accepted webhook, kept as received (duplicates included);
``seq`` is arrival order and is used for nothing but auditing. Every timestamp is an integer
of epoch milliseconds. A message's outcome is derived by status precedence and timestamps
(:data:`bulkbatch.webhooks.events.STATUS_RANK`), never by arrival order:

* ``delivery_status``: the received status with the highest rank (ties cannot happen between
  known statuses; unknown ones tie-break by name)
* ``reason`` / ``error``: of an event carrying that winning status (the greatest, if
  duplicates disagree)
* ``enqueued_at`` ... ``clicked_at``: the earliest value any event carried for that field
  (fields build up as a message moves on, so a CLICKED event still carries ``delivered``)
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, Self

import pyarrow as pa
import pyarrow.parquet as pq

from bulkbatch.columns import int64s, strings
from bulkbatch.webhooks.errors import WebhookStoreError
from bulkbatch.webhooks.events import MESSAGE_UPDATED, STATUS_RANK, WebhookEvent

__all__ = [
    "DURABILITY",
    "EVENTS_SCHEMA",
    "OUTCOMES_SCHEMA",
    "SCHEMA_VERSION",
    "WebhookStore",
    "delivery_outcomes",
    "events_reader",
    "export_events",
    "export_outcomes",
]

SCHEMA_VERSION = 1
#: ``fsync``: a commit is fsync'ed (survives a power loss); ``process``: a commit is in the OS
#: (survives the receiver being killed, not the machine crashing), several times faster.
DURABILITY = {"fsync": "FULL", "process": "NORMAL"}
_BUSY_TIMEOUT_MS = 30_000

_DDL = """
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY,
    type         TEXT    NOT NULL,
    message_id   TEXT,
    status       TEXT,
    event        TEXT,
    notification TEXT,
    recipient    TEXT,
    recipient_id TEXT,
    enqueued     INTEGER,
    sent         INTEGER,
    delivered    INTEGER,
    opened       INTEGER,
    clicked      INTEGER,
    reason       TEXT,
    error        TEXT,
    signed_at    INTEGER,
    received_at  INTEGER NOT NULL,
    body         BLOB
);
CREATE TABLE IF NOT EXISTS messages (
    message_id     TEXT PRIMARY KEY,
    k              TEXT NOT NULL,
    kr             TEXT NOT NULL,
    ke             TEXT NOT NULL,
    enqueued       INTEGER,
    sent           INTEGER,
    delivered      INTEGER,
    opened         INTEGER,
    clicked        INTEGER,
    recipient      TEXT,
    recipient_id   TEXT,
    events         INTEGER NOT NULL,
    first_received INTEGER NOT NULL,
    last_received  INTEGER NOT NULL
) WITHOUT ROWID;
"""

_INSERT = """
INSERT INTO events (type, message_id, status, event, notification, recipient, recipient_id,
    enqueued, sent, delivered, opened, clicked, reason, error, signed_at, received_at, body)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

_TS = pa.timestamp("ms", tz="UTC")

EVENTS_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("received_at", _TS),
        ("type", pa.string()),
        ("message_id", pa.string()),
        ("status", pa.string()),
        ("event", pa.string()),
        ("notification", pa.string()),
        ("recipient", pa.string()),
        ("recipient_id", pa.string()),
        ("enqueued", _TS),
        ("sent", _TS),
        ("delivered", _TS),
        ("opened", _TS),
        ("clicked", _TS),
        ("reason", pa.string()),
        ("error", pa.string()),
        ("signed_at", _TS),
    ]
)

OUTCOMES_SCHEMA = pa.schema(
    [
        ("message_id", pa.string()),
        ("delivery_status", pa.string()),
        ("delivered_at", _TS),
        ("opened_at", _TS),
        ("clicked_at", _TS),
        ("reason", pa.string()),
        ("error", pa.string()),
        ("enqueued_at", _TS),
        ("sent_at", _TS),
        ("recipient", pa.string()),
        ("recipient_id", pa.string()),
        ("events", pa.int64()),
        ("first_received_at", _TS),
        ("last_received_at", _TS),
    ]
)


def _rank_case() -> str:
    whens = " ".join(f"WHEN '{status}' THEN {rank}" for status, rank in STATUS_RANK.items())
    return f"CASE status {whens} ELSE 0 END"


# Table ``messages`` folds every message:updated event of a message into one row, in the
# same transaction as the events. k = 3-digit rank || status, so MAX(k) is the winning status;
# kr/ke append a separator (\x1f sorts below every printable character) and reason/error, so
# their MAX keeps the winner's prefix in front. Every column merges with max/min/sum, which
# are commutative and associative: the result cannot depend on the order events arrive in.
_AGGREGATE = f"""
SELECT message_id,
       MAX(k) AS k,
       MAX(k || char(31) || coalesce(reason, '')) AS kr,
       MAX(k || char(31) || coalesce(error, '')) AS ke,
       MIN(enqueued), MIN(sent), MIN(delivered), MIN(opened), MIN(clicked),
       MAX(recipient), MAX(recipient_id),
       COUNT(*), MIN(received_at), MAX(received_at)
FROM (
    SELECT message_id, printf('%03d', {_rank_case()}) || status AS k, reason, error,
           enqueued, sent, delivered, opened, clicked, recipient, recipient_id, received_at
    FROM events
    WHERE seq > ? AND type = '{MESSAGE_UPDATED}' AND message_id IS NOT NULL
)
GROUP BY message_id
"""


def _least(col: str) -> str:
    return f"coalesce(min({col}, excluded.{col}), {col}, excluded.{col})"


def _greatest(col: str) -> str:
    return f"coalesce(max({col}, excluded.{col}), {col}, excluded.{col})"


_FOLD = f"""
INSERT INTO messages (message_id, k, kr, ke, enqueued, sent, delivered, opened, clicked,
                      recipient, recipient_id, events, first_received, last_received)
SELECT * FROM ({_AGGREGATE}) WHERE true
ON CONFLICT (message_id) DO UPDATE SET
    k = max(k, excluded.k),
    kr = max(kr, excluded.kr),
    ke = max(ke, excluded.ke),
    enqueued = {_least("enqueued")},
    sent = {_least("sent")},
    delivered = {_least("delivered")},
    opened = {_least("opened")},
    clicked = {_least("clicked")},
    recipient = {_greatest("recipient")},
    recipient_id = {_greatest("recipient_id")},
    events = events + excluded.events,
    first_received = min(first_received, excluded.first_received),
    last_received = max(last_received, excluded.last_received)
"""

_OUTCOMES_SQL = """
SELECT message_id, substr(k, 4), delivered, opened, clicked,
       nullif(substr(kr, length(k) + 2), ''), nullif(substr(ke, length(k) + 2), ''),
       enqueued, sent, recipient, recipient_id, events, first_received, last_received
FROM messages
"""

_EVENTS_SQL = """
SELECT seq, received_at, type, message_id, status, event, notification, recipient,
       recipient_id, enqueued, sent, delivered, opened, clicked, reason, error, signed_at
FROM events ORDER BY seq
"""


def _connect(path: str | os.PathLike[str], *, readonly: bool) -> sqlite3.Connection:
    target = pathlib.Path(path)
    try:
        if readonly:
            if not target.is_file():
                raise WebhookStoreError(f"no webhook store at {target}")
            uri = "file:" + urllib.parse.quote(str(target.resolve())) + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(target, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    except sqlite3.Error as exc:
        raise WebhookStoreError(f"cannot open the webhook store {target}: {exc}") from exc
    return conn


class WebhookStore:
    """Read-write access to a webhook store; creates the file and schema if needed.

    Every connection uses WAL (readers never block the writer). ``durability="fsync"`` (the
    default, ``synchronous=FULL``): a committed transaction survives a crash of the process
    or of the machine, which is what lets the receiver acknowledge an event only after its
    commit. ``"process"`` (``synchronous=NORMAL``) survives the process being killed but
    may lose the last commits if the machine itself crashes; never corrupts the store. Many processes may open the
    same store; writers take turns (``busy_timeout`` 30 s).

    Not thread-safe: use one instance per thread (the receiver's writer thread owns one).
    """

    def __init__(self, path: str | os.PathLike[str], *, durability: str = "fsync") -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}")
        self.path = pathlib.Path(path)
        self.durability = durability
        self._conn = _connect(self.path, readonly=False)
        try:
            self._init_schema()
        except sqlite3.Error as exc:
            self._conn.close()
            raise WebhookStoreError(f"cannot initialise the webhook store {path}: {exc}") from exc
        except WebhookStoreError:
            self._conn.close()
            raise

    def _init_schema(self) -> None:
        conn = self._conn
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise WebhookStoreError(
                f"the webhook store {self.path} cannot use WAL mode (got {mode}); "
                "put it on a local file system"
            )
        conn.execute(f"PRAGMA synchronous = {DURABILITY[self.durability]}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise WebhookStoreError(
                f"the webhook store {self.path} has schema version {version}; this bulkbatch "
                f"reads up to {SCHEMA_VERSION}. Upgrade bulkbatch."
            )
        conn.execute("BEGIN IMMEDIATE")
        for statement in _DDL.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")

    def __repr__(self) -> str:
        return f"WebhookStore({str(self.path)!r})"

    def insert(self, events: Iterable[WebhookEvent]) -> int:
        """Insert ``events`` in one transaction; return how many. Durable once it returns."""
        rows = [e.as_row() for e in events]
        if not rows:
            return 0
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                last = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
                conn.executemany(_INSERT, rows)
                conn.execute(_FOLD, (last,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise WebhookStoreError(
                f"cannot write to the webhook store {self.path}: {exc}"
            ) from exc
        return len(rows)

    def rebuild_messages(self) -> int:
        """Recompute table ``messages`` from every stored event; return how many messages.

        Never needed in normal use (each commit folds its events in); for a store written by
        other tools, or after the precedence changes.
        """
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM messages")
                conn.execute(_FOLD, (0,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
        except sqlite3.Error as exc:
            raise WebhookStoreError(f"cannot rebuild {self.path}: {exc}") from exc

    def count(self) -> int:
        """How many events are stored."""
        return int(self._conn.execute("SELECT count(*) FROM events").fetchone()[0])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _column(values: tuple[Any, ...], field: pa.Field) -> pa.Array:
    """One column of a batch, built without ``pa.array`` (:mod:`bulkbatch.columns`: given a
    Python list it imports pandas). The schemas hold strings, integers and epoch-ms times."""
    if pa.types.is_timestamp(field.type):
        return int64s(values).cast(field.type)
    if pa.types.is_int64(field.type):
        return int64s(values)
    if pa.types.is_string(field.type):
        return strings(values)
    raise TypeError(f"no column builder for {field.name} ({field.type})")


def _batches(
    conn: sqlite3.Connection, sql: str, schema: pa.Schema, batch_size: int
) -> Iterator[pa.RecordBatch]:
    try:
        cursor = conn.execute(sql)
        while True:
            rows = cursor.fetchmany(batch_size)
            if not rows:
                return
            columns = list(zip(*rows, strict=True))
            arrays = [_column(col, field) for col, field in zip(columns, schema, strict=True)]
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)
    except sqlite3.Error as exc:
        raise WebhookStoreError(f"cannot read the webhook store: {exc}") from exc
    finally:
        conn.close()


def _reader(
    store_path: str | os.PathLike[str], sql: str, schema: pa.Schema, batch_size: int
) -> pa.RecordBatchReader:
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    conn = _connect(store_path, readonly=True)
    return pa.RecordBatchReader.from_batches(schema, _batches(conn, sql, schema, batch_size))


def delivery_outcomes(
    store_path: str | os.PathLike[str], *, batch_size: int = 65_536
) -> pa.RecordBatchReader:
    """One row per message id: its outcome from every ``message:updated`` event received.

    Columns (:data:`OUTCOMES_SCHEMA`): ``message_id``, ``delivery_status``, ``delivered_at``,
    ``opened_at``, ``clicked_at``, ``reason``, ``error``, ``enqueued_at``, ``sent_at``,
    ``recipient``, ``recipient_id``, ``events`` (how many were received), ``first_received_at``,
    ``last_received_at``; timestamps are ``timestamp[ms, tz=UTC]``.

    Computed by one ``GROUP BY`` inside SQLite on a read-only snapshot (the receiver may keep
    writing) and streamed ``batch_size`` rows at a time, so memory stays bounded. The reader
    can be consumed once; register it in DuckDB (``con.register("outcomes", reader)``) or call
    ``.read_all()``.
    """
    return _reader(store_path, _OUTCOMES_SQL, OUTCOMES_SCHEMA, batch_size)


def events_reader(
    store_path: str | os.PathLike[str], *, batch_size: int = 65_536
) -> pa.RecordBatchReader:
    """Every stored event in arrival order (:data:`EVENTS_SCHEMA`; raw bodies left out)."""
    return _reader(store_path, _EVENTS_SQL, EVENTS_SCHEMA, batch_size)


def _write_parquet(reader: pa.RecordBatchReader, out_path: str | os.PathLike[str]) -> int:
    out = pathlib.Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    rows = 0
    try:
        with pq.ParquetWriter(tmp, reader.schema, compression="zstd") as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def export_events(store_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> int:
    """Write every stored event to a Parquet file (atomically); return the row count."""
    return _write_parquet(events_reader(store_path), out_path)


def export_outcomes(store_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> int:
    """Write :func:`delivery_outcomes` to a Parquet file (atomically); return the row count."""
    return _write_parquet(delivery_outcomes(store_path), out_path)
