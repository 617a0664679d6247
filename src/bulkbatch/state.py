"""The run directory: ``state.json`` (small, atomic) and the run database (DuckDB).

``state.json`` is the cross-process view of a run: its id, fingerprints, the job ids,
which stages finished, and a progress snapshot that ``bulkbatch status`` can read while a
send is still running (the run database is locked by the process that writes it).
Every write to it is atomic: a temporary file, ``fsync``, then ``os.replace``.

The run database is the truth for rows: the inputs, the plan, the batch ledger and the
result pages (see ``docs/internals.md``). A side effect is recorded there only after the
API acknowledged it. DuckDB's file lock makes a run directory single-writer: a second
process gets a :class:`~bulkbatch.errors.StateError` that names the fix.

The API key is never written here.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson

from bulkbatch.errors import StateError

__all__ = [
    "MEMORY_LIMIT",
    "MEMORY_LIMIT_ENV",
    "STATE_FILE",
    "JobState",
    "RunState",
    "atomic_write_bytes",
    "ensure_ledger",
    "memory_limit",
    "open_run_db",
]

MEMORY_LIMIT = "320MB"
"""DuckDB's memory cap for a run database (it spills to ``<run dir>/.spill`` beyond it);
``BULKBATCH_MEMORY_LIMIT`` (e.g. ``1GB``) overrides it."""
MEMORY_LIMIT_ENV = "BULKBATCH_MEMORY_LIMIT"


def memory_limit() -> str:
    """The DuckDB memory cap in force: ``BULKBATCH_MEMORY_LIMIT`` or :data:`MEMORY_LIMIT`."""
    return os.environ.get(MEMORY_LIMIT_ENV, "").strip() or MEMORY_LIMIT


STATE_FILE = "state.json"
DB_FILE = "run.duckdb"
STATE_VERSION = 1

LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS batches (
    batch_no INTEGER PRIMARY KEY,
    job_no INTEGER NOT NULL,
    job_id VARCHAR NOT NULL,
    users INTEGER NOT NULL,
    total BIGINT,
    duplicate_errors INTEGER NOT NULL,
    other_errors INTEGER NOT NULL,
    acked_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS ingest_errors (
    batch_no INTEGER NOT NULL,
    recipient VARCHAR,
    error VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS user_pages (
    job_no INTEGER NOT NULL,
    page_no INTEGER NOT NULL,
    recipient VARCHAR,
    message_id VARCHAR,
    status VARCHAR
);
CREATE TABLE IF NOT EXISTS paging (
    job_no INTEGER PRIMARY KEY,
    pages INTEGER NOT NULL,
    cursor VARCHAR,
    done BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    message_id VARCHAR PRIMARY KEY,
    delivery_status VARCHAR,
    enqueued BIGINT,
    sent BIGINT,
    delivered BIGINT,
    opened BIGINT,
    clicked BIGINT,
    error VARCHAR,
    fetched_at TIMESTAMP
);
"""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old or the new file, never half."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise StateError(
            f"Could not write {path}: {exc.strerror or exc}. Free disk space or fix the "
            f"permissions of {path.parent}, then run 'bulkbatch resume {path.parent}'."
        ) from exc


@dataclass
class JobState:
    """One bulk job of a run (a run has several when ``max_job_size`` splits it)."""

    job_no: int
    users: int = 0
    first_batch: int = 0
    last_batch: int = -1
    job_id: str | None = None
    ingested: bool = False
    """Every batch acknowledged and the job's ``received`` checked against the plan."""
    run: bool = False
    status: str | None = None
    received: int | None = None
    enqueued: int | None = None
    failures: int | None = None
    paged: bool = False
    recorded: bool = False
    """Its users are in the ``--once-per`` ledger."""

    @property
    def batches(self) -> int:
        return self.last_batch - self.first_batch + 1


@dataclass
class RunState:
    """What ``state.json`` holds. Load with :meth:`load`, change, then :meth:`save`."""

    run_dir: Path
    run_id: str
    created_at: float = field(default_factory=time.time)
    base_url: str = ""
    emulator: bool = False
    inputs: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    message: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    jobs: list[JobState] = field(default_factory=list)
    progress: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    version: int = STATE_VERSION

    # -- persistence -------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.run_dir / STATE_FILE

    @classmethod
    def exists(cls, run_dir: Path) -> bool:
        return (run_dir / STATE_FILE).is_file()

    @classmethod
    def load(cls, run_dir: Path) -> RunState:
        """Read ``run_dir/state.json``; a clear :class:`StateError` when it is missing or bad."""
        path = run_dir / STATE_FILE
        if not run_dir.is_dir():
            raise StateError(
                f"Run directory not found: {run_dir}. Pass the directory a 'bulkbatch send' "
                "created (it holds state.json and run.duckdb), e.g. runs/<run-id>."
            )
        try:
            raw = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise StateError(
                f"{run_dir} is not a bulkbatch run directory: it has no {STATE_FILE}. "
                "Pass the directory a 'bulkbatch send' created, e.g. runs/<run-id>; if that "
                "send was stopped before it started, nothing was sent: run it again."
            ) from None
        except orjson.JSONDecodeError as exc:
            raise StateError(
                f"{path} is corrupt ({exc}). Restore it from a backup, or start a new run "
                "with a different --run-dir."
            ) from None
        if raw.get("version") != STATE_VERSION:
            raise StateError(
                f"{path} was written by another bulkbatch version (state version "
                f"{raw.get('version')!r}, this one reads {STATE_VERSION})."
            )
        jobs = [JobState(**j) for j in raw.pop("jobs", [])]
        raw.pop("run_dir", None)
        return cls(run_dir=run_dir, jobs=jobs, **raw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("run_dir")
        return d

    def save(self) -> None:
        atomic_write_bytes(self.path, orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2))

    # -- helpers -----------------------------------------------------------------------
    def done(self, stage: str) -> bool:
        return stage in self.stages

    def mark(self, stage: str, seconds: float | None = None) -> None:
        self.stages[stage] = time.time()
        if seconds is not None:
            self.timings[stage] = round(seconds, 3)
        self.save()

    def job(self, job_no: int) -> JobState:
        for j in self.jobs:
            if j.job_no == job_no:
                return j
        raise StateError(f"Run {self.run_id} has no job number {job_no}.")


_PID = re.compile(r"PID (\d+)")


def open_run_db(run_dir: Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open ``run_dir/run.duckdb``; one process at a time (DuckDB's file lock)."""
    path = run_dir / DB_FILE
    if read_only and not path.exists():
        raise StateError(
            f"{run_dir} has no {DB_FILE}: the run never got past its start. "
            f"Start it again with 'bulkbatch send ... --run-dir {run_dir}'."
        )
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" in text.lower():
            m = _PID.search(text)
            who = f" (pid {m.group(1)})" if m else ""
            raise StateError(
                f"Run directory {run_dir} is in use by another bulkbatch process{who}. "
                f"Wait for it to finish or stop it, then run 'bulkbatch resume {run_dir}'."
            ) from None
        raise StateError(f"Cannot open the run database {path}: {text}") from None
    except duckdb.Error as exc:
        raise StateError(
            f"The run database {path} cannot be opened ({exc}). If the disk filled up, free "
            f"space and retry; otherwise start a new run with a different --run-dir."
        ) from None
    if not read_only:
        # Bounded memory whatever the audience size: DuckDB spills to the run directory
        # beyond this, so a 10M-row run stays within a few hundred MiB.
        limit = memory_limit()
        try:
            con.execute(f"SET memory_limit='{limit.replace(chr(39), '')}'")
        except duckdb.Error:
            con.close()
            raise StateError(
                f"{MEMORY_LIMIT_ENV}={limit!r} is not a memory size DuckDB understands; "
                f"use a size such as 512MB or 2GB, or unset it for the default {MEMORY_LIMIT}."
            ) from None
        con.execute(f"SET temp_directory='{str(run_dir / '.spill').replace(chr(39), chr(39) * 2)}'")
        con.execute("SET preserve_insertion_order=true")
    return con


def ensure_ledger(con: duckdb.DuckDBPyConnection) -> None:
    """Create the send/track tables if this run database does not have them yet."""
    con.execute(LEDGER_DDL)
