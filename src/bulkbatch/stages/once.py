"""``--once-per KEY``: a claim ledger, so no two campaigns under one key message a person twice.

A nightly job that sends "welcome" to everyone in today's export must not welcome yesterday's
people again, and two runs under one key that overlap in time must not both send to the
people they share. Every recipient a run intends to send to is *claimed* under the key before
anything is sent:

1. after planning, :func:`claim_plan` claims, in one atomic ledger transaction, every
   recipient of the run's ``plan`` that no other campaign holds under the key. Recipients
   another campaign holds (sent, or claimed and still in progress) move from ``plan`` to
   ``skipped`` with a reason naming that campaign, and the batches are re-cut;
2. after each job has run, :func:`mark_sent` turns that job's claims into ``sent`` and
   releases the users Courier refused (``ingest_errors``);
3. :func:`release` gives up a campaign's unsent claims (a canceled campaign, refused rows).

A *campaign* id is what makes a claim "ours": a resumed run, a scheduler's retry or the same
command started from another directory carry the same campaign id, so claiming again is
idempotent and keeps every user the campaign already holds.

Why SQLite (the default backend): the ledger is shared by separate processes that may run at
the same time. DuckDB allows one writing process per file, so a second run could not even
open the ledger while the first held it, and attaching it only briefly makes claims
check-then-write races. SQLite gives exactly what a claim needs: ``BEGIN IMMEDIATE`` takes the
single write lock up front, so a claim's check and insert are one serialisable step across
processes; ``busy_timeout`` makes a second run wait (boundedly) instead of failing; WAL lets
readers (``lookup``, status) proceed while a claim is written; ``synchronous=FULL`` keeps a
committed claim through a power cut. It is in the standard library and a single file. It
needs a local file system (WAL's shared memory does not work over NFS/SMB) and an SQLite with
the JSON functions (3.38+, or any build with JSON1), which every supported Python ships.

The backend sits behind :class:`Ledger`: ``postgresql://...`` selects the PostgreSQL one
(:mod:`bulkbatch.stages.once_pg`) for runs on different machines.

Recipients travel from DuckDB to the ledger in Arrow batches of :data:`CHUNK_ROWS`, each one
JSON array expanded by SQLite's ``json_each``: memory stays bounded and 1M recipients claim in
about two seconds.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Literal, NamedTuple, Protocol

import duckdb
import orjson
import pyarrow as pa

from bulkbatch.columns import strings
from bulkbatch.db import arrow_batches
from bulkbatch.errors import StateError, UsageError
from bulkbatch.identity import DATA_DIR_ENV, data_dir
from bulkbatch.stages.plan.recut import recut_plan

__all__ = [
    "CHUNK_ROWS",
    "DATA_DIR_ENV",
    "DEFAULT_LOCK_TIMEOUT",
    "LEDGER_FILE_NAME",
    "Claim",
    "ClaimResult",
    "Held",
    "Ledger",
    "MarkResult",
    "SqliteLedger",
    "claim_plan",
    "default_ledger_path",
    "mark_sent",
    "open_ledger",
    "release",
]

LEDGER_FILE_NAME = "once-per.sqlite"
DEFAULT_LOCK_TIMEOUT = 60.0
CHUNK_ROWS = 50_000

_APPLICATION_ID = 0x424B4F50  # "BKOP" in the SQLite header: this file is a bulkbatch ledger
_SCHEMA_VERSION = 1
_COLUMNS = ("key", "recipient", "campaign", "state", "run_dir", "job_id", "claimed_at", "sent_at")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    key TEXT NOT NULL, recipient TEXT NOT NULL, campaign TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('claimed', 'sent')), run_dir TEXT, job_id TEXT,
    claimed_at TEXT NOT NULL, sent_at TEXT, PRIMARY KEY (key, recipient)
) WITHOUT ROWID
"""
_HELD_TABLE = "_once_held"  # run-database staging table for recipients other campaigns hold
_HELD_CHUNK = "_once_held_chunk"

State = Literal["claimed", "sent"]


class Held(NamedTuple):
    """Recipients of a claim that another campaign holds, in one state and run directory."""

    campaign: str
    state: State
    run_dir: str | None
    recipients: list[str]


@dataclass(frozen=True)
class Claim:
    """One row of the ledger: who holds ``recipient`` under ``key``, and whether it was sent."""

    key: str
    recipient: str
    campaign: str
    state: State
    run_dir: str | None
    job_id: str | None
    claimed_at: str
    sent_at: str | None


@dataclass(frozen=True)
class ClaimResult:
    """What :func:`claim_plan` did with the plan's recipients."""

    claimed: int  # newly claimed by this campaign
    already_own: int  # this campaign held them already (a resume): still in the plan
    skipped_sent: int  # another campaign sent them: moved to ``skipped``
    skipped_in_progress: int  # another campaign holds them, not yet sent: moved to ``skipped``

    @property
    def skipped(self) -> int:
        return self.skipped_sent + self.skipped_in_progress

    @property
    def to_send(self) -> int:
        return self.claimed + self.already_own


@dataclass(frozen=True)
class MarkResult:
    """What :func:`mark_sent` did: claims turned ``sent``, and refused users released."""

    marked: int
    released: int


class Ledger(Protocol):
    """A claim ledger backend. Every method is one atomic transaction.

    ``chunks`` arguments are recipients in bounded lists; the backend consumes them inside
    its transaction, so a failure part-way (including one raised by ``on_held``) leaves the
    ledger as it was.
    """

    location: str

    def claim(
        self,
        key: str,
        campaign: str,
        run_dir: str,
        chunks: Iterable[Sequence[str]],
        on_held: Callable[[Held], None],
    ) -> ClaimResult:
        """Claim each recipient under ``key`` for ``campaign`` unless another campaign holds
        it; pass those others hold to ``on_held`` (chunk by chunk). Recipients are unique."""

    def mark_sent(
        self,
        key: str,
        campaign: str,
        job_id: str,
        sent: Iterable[Sequence[str]],
        refused: Iterable[Sequence[str]] = (),
        *,
        run_dir: str | None = None,
    ) -> MarkResult:
        """Turn ``campaign``'s claims on ``sent`` into ``sent`` (recording unclaimed ones as
        sent by it too, never touching another campaign's), and release ``refused``."""

    def release(
        self, key: str, campaign: str, chunks: Iterable[Sequence[str]] | None = None
    ) -> int:
        """Delete ``campaign``'s unsent claims (all of them, or those in ``chunks``)."""

    def lookup(self, key: str, recipients: Iterable[str]) -> dict[str, Claim]:
        """The claims held on ``recipients`` under ``key``, by recipient."""


def default_ledger_path() -> Path:
    """The per-user ledger: ``once-per.sqlite`` in bulkbatch's data directory
    (:func:`bulkbatch.identity.data_dir`: ``$BULKBATCH_DATA_DIR``, else the platform's)."""
    return data_dir() / LEDGER_FILE_NAME


def open_ledger(location: str | Path, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> Ledger:
    """Open (creating if needed) the claim ledger at ``location``: a file path, or a
    ``postgresql://`` (``postgres://``) URL, whose password is never shown nor recorded
    (``Ledger.location`` drops it). Waits at most ``lock_timeout`` seconds for a lock."""
    text = str(location)
    if text.lower().startswith(("postgresql://", "postgres://")):
        from bulkbatch.stages.once_pg import PgLedger  # psycopg only when it is used

        return PgLedger(text, lock_timeout=lock_timeout)
    if not text:
        raise UsageError("The --once-per ledger location is empty; give a file path.")
    return SqliteLedger(Path(text).expanduser(), lock_timeout=lock_timeout)


# --------------------------------------------------------------------------- pipeline side


def claim_plan(
    con: duckdb.DuckDBPyConnection,
    ledger: Ledger,
    key: str,
    campaign: str,
    run_dir: str,
    batch_size: int,
) -> ClaimResult:
    """Claim the run's ``plan`` under ``key`` for ``campaign``, atomically.

    Recipients another campaign holds go to ``skipped`` (replaced, created even when empty)
    with a reason naming it, leave ``plan``, and the batches are re-cut (contiguous from 0,
    never spanning jobs, at most ``batch_size`` each). This campaign's own claims, ``sent``
    or not, stay in the plan. Safe to call again: a second call claims nothing new.
    """
    _check_ids(key, campaign)
    stage = con.cursor()
    stage.execute(
        f"CREATE OR REPLACE TABLE {_HELD_TABLE} "
        "(recipient VARCHAR, campaign VARCHAR, state VARCHAR, run_dir VARCHAR)"
    )

    def on_held(held: Held) -> None:
        stage.register(_HELD_CHUNK, pa.table({"recipient": strings(held.recipients)}))
        try:
            stage.execute(
                f"INSERT INTO {_HELD_TABLE} SELECT recipient, ?, ?, ? FROM {_HELD_CHUNK}",
                [held.campaign, held.state, held.run_dir],
            )
        finally:
            stage.unregister(_HELD_CHUNK)

    try:
        chunks = _chunks(con, "SELECT recipient FROM plan WHERE recipient IS NOT NULL", [])
        result = ledger.claim(key, campaign, run_dir, chunks, on_held)
        stage.execute(
            f"""
            CREATE OR REPLACE TABLE skipped AS
            SELECT p.row_number::BIGINT AS row_number, p.recipient::VARCHAR AS recipient,
                   (CASE WHEN h.state = 'sent' THEN 'sent' ELSE 'claimed' END
                    || ' under --once-per ' || ?::VARCHAR || ' by campaign ' || h.campaign
                    || coalesce(' (' || h.run_dir || ')', '')
                    || CASE WHEN h.state = 'sent' THEN '' ELSE ', still in progress' END
                   )::VARCHAR AS reason
            FROM plan p JOIN {_HELD_TABLE} h ON h.recipient = p.recipient
            ORDER BY p.row_number
            """,
            [key],
        )
        if result.skipped:
            recut_plan(stage, batch_size)
    finally:
        stage.execute(f"DROP TABLE IF EXISTS {_HELD_TABLE}")
    return result


def mark_sent(
    con: duckdb.DuckDBPyConnection,
    ledger: Ledger,
    key: str,
    campaign: str,
    job_no: int,
    job_id: str,
    *,
    run_dir: str | None = None,
) -> MarkResult:
    """After job ``job_no`` (Courier id ``job_id``) has run: mark its users ``sent`` under
    ``key`` for ``campaign`` and release those in ``ingest_errors`` (if that table exists).

    Idempotent: calling it again marks and releases nobody twice. A user of the job that the
    campaign does not hold (a claim released by mistake) is recorded as sent by it, with
    ``run_dir``, because it was sent; a claim of another campaign is never changed.
    """
    _check_ids(key, campaign)
    job = "SELECT recipient FROM plan WHERE job_no = ? AND recipient IS NOT NULL"
    refused = "recipient IN (SELECT recipient FROM ingest_errors WHERE recipient IS NOT NULL)"
    errors = _has_table(con, "ingest_errors")
    sent = _chunks(con, f"{job} AND NOT ({refused})" if errors else job, [job_no])
    bad = _chunks(con, f"{job} AND {refused}", [job_no]) if errors else iter(())
    return ledger.mark_sent(key, campaign, job_id, sent, bad, run_dir=run_dir)


def release(
    ledger: Ledger, key: str, campaign: str, recipients: Iterable[str] | None = None
) -> int:
    """Release ``campaign``'s unsent claims under ``key`` (all, or just ``recipients``), so
    another campaign may claim them. Claims already ``sent`` stay. Returns how many went."""
    _check_ids(key, campaign)
    if recipients is None:
        return ledger.release(key, campaign)
    return ledger.release(key, campaign, _batched(recipients))


def _check_ids(key: str, campaign: str) -> None:
    if not key or not campaign:
        raise UsageError(f"--once-per needs a KEY and a campaign id; got {key!r}, {campaign!r}.")


def _chunks(con: duckdb.DuckDBPyConnection, sql: str, params: list[object]) -> Iterator[list[str]]:
    """Stream the single VARCHAR column of ``sql`` in lists of at most CHUNK_ROWS."""
    for batch in arrow_batches(con.cursor().sql(sql, params=params), CHUNK_ROWS):
        if batch.num_rows:
            yield batch.column(0).to_pylist()


def _batched(items: Iterable[str]) -> Iterator[list[str]]:
    it = iter(items)
    while chunk := list(islice(it, CHUNK_ROWS)):
        yield chunk


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    sql = (
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name = ?"
    )
    return bool(con.cursor().execute(sql, [name]).fetchall()[0][0])


# --------------------------------------------------------------------------- SQLite backend


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class SqliteLedger:
    """The claim ledger in one SQLite file (see the module docstring for why).

    Each operation opens its own short connection, so one ledger object may be used from any
    thread (the pipeline calls :func:`mark_sent` from a worker thread).
    """

    def __init__(self, path: Path, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        self.path = path
        self.location = str(path)
        self.lock_timeout = lock_timeout
        self._create()

    def _create(self) -> None:
        if self.path.is_dir():
            raise StateError(
                f"The --once-per ledger {self.path} is a directory; give a file path such as "
                f"{self.path / LEDGER_FILE_NAME}."
            )
        with self._errors():
            _make_private_dirs(self.path.parent)
            with suppress(FileExistsError):
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            with closing(self._connect()) as db:
                db.execute("PRAGMA journal_mode = WAL")
                self._init_schema(db)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.lock_timeout, isolation_level=None)
        db.execute("PRAGMA synchronous = FULL")
        return db

    def _init_schema(self, db: sqlite3.Connection) -> None:
        with _immediate(db):
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                r[0] for r in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
            }
            if app_id not in (0, _APPLICATION_ID) or (app_id == 0 and tables - {"claims"}):
                raise self._not_a_ledger("it is an SQLite database of something else")
            if version > _SCHEMA_VERSION:
                raise StateError(
                    f"The --once-per ledger {self.path} was written by a newer bulkbatch "
                    f"(schema {version}); upgrade bulkbatch to use it."
                )
            db.execute(_SCHEMA)
            columns = tuple(r[1] for r in db.execute("PRAGMA table_info(claims)"))
            if columns != _COLUMNS:
                raise self._not_a_ledger(f"its claims table has columns {', '.join(columns)}")
            db.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            db.execute("SELECT json_array_length('[]')")

    def _not_a_ledger(self, why: str) -> StateError:
        return StateError(
            f"{self.path} is not a bulkbatch --once-per ledger ({why}); move it away or "
            "give another ledger path."
        )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn SQLite and OS errors into one-line StateErrors naming the file."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self._translate(exc) from None
        except OSError as exc:
            raise self._unwritable(exc.strerror or str(exc)) from None

    def _unwritable(self, why: object) -> StateError:
        return StateError(
            f"Cannot write the --once-per ledger {self.path}: {why}. Make the file and its "
            f"directory writable, or set {DATA_DIR_ENV} (or the ledger path) to a writable "
            "place on a local disk."
        )

    def _translate(self, exc: sqlite3.Error) -> StateError:
        name = getattr(exc, "sqlite_errorname", "") or ""
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return StateError(
                f"The --once-per ledger {self.path} is locked: another bulkbatch run has held "
                f"it for more than {self.lock_timeout:g}s. Retry when that run has claimed "
                "its audience."
            )
        if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            return self._not_a_ledger(f"SQLite says: {exc}")
        if name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_IOERR")):
            return self._unwritable(exc)
        if "json" in str(exc).lower():
            return StateError(
                f"The SQLite library of this Python ({sqlite3.sqlite_version}) lacks the JSON "
                f"functions the --once-per ledger {self.path} needs; use a Python whose SQLite "
                "is 3.38 or newer."
            )
        return StateError(f"The --once-per ledger {self.path} failed: {exc}.")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the ledger's write lock from its start."""
        with self._errors(), closing(self._connect()) as db, _immediate(db):
            yield db

    def claim(
        self,
        key: str,
        campaign: str,
        run_dir: str,
        chunks: Iterable[Sequence[str]],
        on_held: Callable[[Held], None],
    ) -> ClaimResult:
        now = _now()
        claimed = own = 0
        held_in = {"sent": 0, "claimed": 0}
        with self._write() as db:
            for chunk in chunks:
                doc = orjson.dumps(list(chunk)).decode()
                claimed_now = db.execute(
                    "INSERT INTO claims (key, recipient, campaign, state, run_dir, claimed_at) "
                    "SELECT ?, value, ?, 'claimed', ?, ? FROM json_each(?) WHERE true "
                    "ON CONFLICT (key, recipient) DO NOTHING",
                    (key, campaign, run_dir, now, doc),
                ).rowcount
                groups = db.execute(  # one row per holder: few rows, one JSON array each
                    "SELECT c.campaign, c.state, c.run_dir, json_group_array(c.recipient) "
                    "FROM json_each(?) j CROSS JOIN claims c "
                    "ON c.key = ? AND c.recipient = j.value WHERE c.campaign <> ? "
                    "GROUP BY c.campaign, c.state, c.run_dir",
                    (doc, key, campaign),
                ).fetchall()
                claimed += claimed_now
                own += len(chunk) - claimed_now
                for holder, state, holder_dir, recipients in groups:
                    held = Held(holder, state, holder_dir, orjson.loads(recipients))
                    own -= len(held.recipients)
                    held_in[state] += len(held.recipients)
                    on_held(held)
        return ClaimResult(claimed, own, held_in["sent"], held_in["claimed"])

    def mark_sent(
        self,
        key: str,
        campaign: str,
        job_id: str,
        sent: Iterable[Sequence[str]],
        refused: Iterable[Sequence[str]] = (),
        *,
        run_dir: str | None = None,
    ) -> MarkResult:
        now = _now()
        marked = released = 0
        with self._write() as db:
            for chunk in sent:
                marked += db.execute(
                    "INSERT INTO claims AS c (key, recipient, campaign, state, run_dir, job_id, "
                    "claimed_at, sent_at) "
                    "SELECT ?, value, ?, 'sent', ?, ?, ?, ? FROM json_each(?) WHERE true "
                    "ON CONFLICT (key, recipient) DO UPDATE "
                    "SET state = 'sent', job_id = excluded.job_id, sent_at = excluded.sent_at "
                    "WHERE c.campaign = excluded.campaign AND c.state = 'claimed'",
                    (key, campaign, run_dir, job_id, now, now, orjson.dumps(list(chunk)).decode()),
                ).rowcount
            released = self._delete_claimed(db, key, campaign, refused)
        return MarkResult(marked, released)

    def release(
        self, key: str, campaign: str, chunks: Iterable[Sequence[str]] | None = None
    ) -> int:
        with self._write() as db:
            if chunks is None:
                return db.execute(
                    "DELETE FROM claims WHERE key = ? AND campaign = ? AND state = 'claimed'",
                    (key, campaign),
                ).rowcount
            return self._delete_claimed(db, key, campaign, chunks)

    @staticmethod
    def _delete_claimed(
        db: sqlite3.Connection, key: str, campaign: str, chunks: Iterable[Sequence[str]]
    ) -> int:
        deleted = 0
        for chunk in chunks:
            deleted += db.execute(
                "DELETE FROM claims WHERE key = ? AND campaign = ? AND state = 'claimed' "
                "AND recipient IN (SELECT value FROM json_each(?))",
                (key, campaign, orjson.dumps(list(chunk)).decode()),
            ).rowcount
        return deleted

    def lookup(self, key: str, recipients: Iterable[str]) -> dict[str, Claim]:
        found: dict[str, Claim] = {}
        with self._errors(), closing(self._connect()) as db:
            for chunk in _batched(recipients):
                rows = db.execute(
                    f"SELECT {', '.join('c.' + c for c in _COLUMNS)} "
                    "FROM json_each(?) j CROSS JOIN claims c "
                    "ON c.key = ? AND c.recipient = j.value",
                    (orjson.dumps(chunk).decode(), key),
                ).fetchall()
                found.update((row[1], Claim(*row)) for row in rows)
        return found


@contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """A transaction that takes the write lock at its start (waiting up to busy_timeout)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents with mode 0700 (existing ones untouched)."""
    for parent in reversed([p for p in (directory, *directory.parents) if not p.exists()]):
        parent.mkdir(mode=0o700, exist_ok=True)
        os.chmod(parent, 0o700)  # mkdir's mode is filtered by the umask
