"""The ``--once-per`` claim ledger in PostgreSQL: one ledger for workers on many machines.

Data teams run shards of one audience on many workers (Airflow, Dagster) with one API key;
a SQLite file cannot be shared between machines, a PostgreSQL database can. ``open_ledger``
returns a :class:`PgLedger` for ``--once-per-ledger postgresql://...`` (or ``postgres://``);
it has the same semantics as the SQLite ledger (:mod:`bulkbatch.stages.once`): claimed / sent
/ released, claims of another campaign reported as held, re-claims by the same campaign
idempotent.

Why it is safe with N processes on N machines: a claim is one ``INSERT ... SELECT ... ON
CONFLICT (key, recipient) DO NOTHING``; the primary key makes PostgreSQL decide each
recipient atomically. A transaction inserting a recipient that another one has inserted but
not committed waits for it, then does nothing, so two claims never both get a person (the
``NOT EXISTS`` in front only skips, cheaply, rows already committed, as in a resume; the
conflict clause decides the races). Rows go in one global order (``ORDER BY recipient``;
the columns are ``COLLATE "C"``, byte order whatever the database's locale, which also keeps
the index fast), so two overlapping claims wait for each other in the same order: they
cannot deadlock, and the whole overlap goes to whichever reached it first (a deadlock from an
unusual mix of statements is retried from a savepoint). Unlike SQLite, claims of different
recipients under one key do not wait for each other: shards claim side by side.

Why COPY into a temporary table: recipients arrive in bounded chunks (Arrow batches from the
run database); COPY moves them at wire speed into a per-transaction temporary table (not
WAL-logged, dropped at commit), and one set-based statement claims them all. Memory stays
bounded on both sides; the holders of recipients another campaign has come back through a
server-side cursor in bounded lists.

Measured (``claim_plan`` of 1M new recipients, PostgreSQL 15 on this project's 2-core machine
while other work kept its load average near 6): 6.8 s with the test server's settings, a
median of 9.0 s over 3 runs with ``fsync``/``full_page_writes`` on; COPY is about 0.5 s of
it, the rest is the conflict-checked insert. Claiming the same 1M again (a resume) takes
1.8 s; 1M of which half another campaign holds, 6.0 s.

The schema (``bulkbatch_claims``, ``bulkbatch_campaigns`` for :mod:`bulkbatch.registry_pg`,
and ``bulkbatch_schema`` holding the schema version) is created on first use, under a
transaction-level advisory lock so two first users do not race; later opens only read the
version. Connections follow libpq: the URL, then ``PGPASSWORD``, ``PGSSLMODE``, ``~/.pgpass``
and the other ``PG*`` variables, exactly as psycopg does.

The password is never printed, logged, stored or put in an error message: messages show the
URL through :func:`redact_url` (``postgresql://user:***@host/db``), and the ``location`` a run
records in ``state.json`` has no password at all (a later process gets it from
``PGPASSWORD`` or ``~/.pgpass``; within this process it is remembered in memory only).
psycopg is optional (``pip install 'bulkbatch[postgres]'``) and imported only when a
PostgreSQL URL is used.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from bulkbatch.dburl import (
    URL_SCHEMES,
    is_postgres_url,
    location_of,
    redact_url,
    scrub,
)
from bulkbatch.errors import StateError, UsageError
from bulkbatch.stages import once as _once
from bulkbatch.stages.once import DEFAULT_LOCK_TIMEOUT, Claim, ClaimResult, Held, MarkResult

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "CONNECT_TIMEOUT",
    "KEEPALIVE",
    "SCHEMA_VERSION",
    "URL_SCHEMES",
    "PgDatabase",
    "PgLedger",
    "is_postgres_url",
    "location_of",
    "redact_url",
]

CONNECT_TIMEOUT = 10  # seconds, unless the URL or PGCONNECT_TIMEOUT says otherwise


class Keepalive(NamedTuple):
    """TCP keepalive probing, on both ends of every connection (see :data:`KEEPALIVE`)."""

    idle: int  # seconds of silence before the first probe
    interval: int  # seconds between unanswered probes
    probes: int  # unanswered probes before the connection is dead
    user_timeout_ms: int  # how long sent data may stay unacknowledged (client side)


# A server that vanishes (a failover, a lost host, a NAT or load balancer dropping a flow
# that looked idle during a long claim) sends nothing, not even a reset. Without probes a
# client waiting for its answer waits for the OS's keepalive, two hours and more; and a
# server keeps a vanished worker's transaction, with its row locks on the recipients it was
# claiming, as long, so every other worker's claim of them fails its lock timeout meanwhile.
# With these, either end knows within 30 s: a reset answers the first probe after 15 s
# idle, or no answer comes by 30 s (the client's user timeout, which Linux then applies in
# place of the probe count, is set to the same 30 s). A URL's own keepalives_* or
# tcp_user_timeout win on the client side. A busy server's kernel answers the probes, so a
# long claim is never cut short.
KEEPALIVE = Keepalive(idle=15, interval=5, probes=3, user_timeout_ms=30_000)
SCHEMA_VERSION = 1

_SCHEMA_LOCK = 0x424B4F50  # pg_advisory_xact_lock key: "BKOP", bulkbatch's schema
_CLAIM_COLUMNS = ("key", "recipient", "campaign", "state", "run_dir", "job_id", "claimed_at")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS bulkbatch_schema (name text PRIMARY KEY, version integer NOT NULL)",
    """CREATE TABLE IF NOT EXISTS bulkbatch_claims (
        key text COLLATE "C" NOT NULL, recipient text COLLATE "C" NOT NULL,
        campaign text NOT NULL, state text NOT NULL CHECK (state IN ('claimed', 'sent')), run_dir text, job_id text,
        claimed_at timestamptz NOT NULL, sent_at timestamptz, PRIMARY KEY (key, recipient))""",
    """CREATE TABLE IF NOT EXISTS bulkbatch_campaigns (
        campaign text NOT NULL, base_url_hash text NOT NULL, event text NOT NULL,
        host text NOT NULL, run_dir text NOT NULL, state jsonb NOT NULL DEFAULT '{}',
        lease_holder text, lease_until timestamptz, updated_at timestamptz NOT NULL,
        PRIMARY KEY (campaign, base_url_hash))""",
    "INSERT INTO bulkbatch_schema VALUES ('bulkbatch', %s) ON CONFLICT (name) DO NOTHING",
)
_RETRIES = 3  # attempts of a statement that PostgreSQL aborted as a deadlock

_T = TypeVar("_T")

# Full URLs (with their password) by password-free location, in this process's memory only:
# the pipeline records ``ledger.location`` and opens the ledger again by it.
_urls: dict[str, str] = {}
_ready: set[str] = set()  # locations whose schema this process has seen current
_lock = threading.Lock()


# --------------------------------------------------------------------------- URLs


# --------------------------------------------------------------------------- connections


def _psycopg(display: str) -> ModuleType:
    try:
        import psycopg
    except ImportError:
        raise UsageError(
            f"{display} is a PostgreSQL URL, and PostgreSQL support is not installed: "
            "pip install 'bulkbatch[postgres]' (it adds psycopg 3)."
        ) from None
    return psycopg


class PgDatabase:
    """One bulkbatch database at a URL: connections, the schema, and errors turned into
    one-line :class:`StateError`s that name the database (password redacted).

    Every operation opens its own short connection, so one object may be used from any
    thread (the pipeline marks jobs sent from a worker thread).

    :param url: ``postgresql://`` or ``postgres://`` URL (a password in it stays in memory)
    :param what: how messages name it, e.g. ``"--once-per ledger"``
    :param lock_timeout: seconds a statement may wait for another transaction's row lock
    """

    def __init__(self, url: str, what: str, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT):
        if not is_postgres_url(url):
            raise UsageError(
                f"{redact_url(url)} is not a PostgreSQL URL; give postgresql://USER@HOST/DB."
            )
        self.location = location_of(url)
        with _lock:
            if url != self.location:
                _urls[self.location] = url
            self._url = _urls.get(self.location, url)
        self.display = redact_url(self._url)
        self.what = what
        self.lock_timeout = lock_timeout
        self.pg = _psycopg(self.display)

    def __repr__(self) -> str:
        return f"PgDatabase({self.display!r})"

    def _target(self) -> str:
        """``host H, database D`` as libpq will resolve them (URL, then PG* variables)."""
        try:
            info = self.pg.conninfo.conninfo_to_dict(self._url)
        except self.pg.Error:
            info = {}
        host = info.get("host") or os.environ.get("PGHOST") or "localhost (Unix socket)"
        user = info.get("user") or os.environ.get("PGUSER") or "the login user"
        database = info.get("dbname") or os.environ.get("PGDATABASE") or user
        return f"host {host}, database {database}"

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        """An autocommit connection (use ``with conn.transaction()``), or a StateError."""
        options: dict[str, Any] = {"autocommit": True}
        try:
            given = self.pg.conninfo.conninfo_to_dict(self._url)
        except self.pg.Error as exc:
            raise StateError(
                f"The {self.what} URL {self.display} is malformed: "
                f"{scrub(str(exc), self._url)}. Write it as postgresql://USER@HOST:PORT/DB."
            ) from None
        if "connect_timeout" not in given and not os.environ.get("PGCONNECT_TIMEOUT"):
            options["connect_timeout"] = CONNECT_TIMEOUT
        if "application_name" not in given and not os.environ.get("PGAPPNAME"):
            options["application_name"] = "bulkbatch"
        probes = {
            "keepalives": 1,
            "keepalives_idle": KEEPALIVE.idle,
            "keepalives_interval": KEEPALIVE.interval,
            "keepalives_count": KEEPALIVE.probes,
            "tcp_user_timeout": KEEPALIVE.user_timeout_ms,
        }
        options.update((k, v) for k, v in probes.items() if k not in given)
        try:
            conn: psycopg.Connection[tuple[Any, ...]] = self.pg.connect(self._url, **options)
        except self.pg.Error as exc:
            raise self._cannot_connect(exc) from None
        return conn

    def _cannot_connect(self, exc: Exception) -> StateError:
        reason = scrub(str(exc), self._url).removeprefix("connection failed: ")
        if "does not exist" in reason and "database" in reason:
            todo = "Create that database (createdb) or name an existing one in the URL."
        elif "password" in reason or "authentication" in reason:
            todo = (
                "Check the user and password (in the URL, PGPASSWORD or ~/.pgpass; a run "
                "never stores the password, so a resumed run needs PGPASSWORD or ~/.pgpass)."
            )
        else:
            todo = (
                "Check that PostgreSQL is running there and accepts connections from this "
                "machine, then retry."
            )
        stop = "" if reason.endswith((".", "?", "!")) else "."
        return StateError(
            f"Cannot connect to the {self.what} {self.display} ({self._target()}): "
            f"{reason}{stop} {todo}"
        )

    def translate(self, exc: Exception) -> StateError:
        """A one-line StateError for a failed operation (never the password)."""
        pg = self.pg
        reason = scrub(str(exc), self._url)
        if isinstance(exc, pg.errors.LockNotAvailable):
            return StateError(
                f"The {self.what} {self.display} is locked: another bulkbatch run has held "
                f"rows this one needs for more than {self.lock_timeout:g}s. Retry when that "
                "run has claimed its audience."
            )
        if isinstance(exc, pg.errors.InsufficientPrivilege):
            return StateError(
                f"The {self.what} {self.display} refused: {reason}. Grant this user CREATE on "
                "the schema (for the first use) and SELECT, INSERT, UPDATE, DELETE on the "
                "bulkbatch_* tables."
            )
        if isinstance(exc, pg.OperationalError | pg.InterfaceError):
            return StateError(
                f"The connection to the {self.what} {self.display} failed: {reason}. Retry "
                "(the transaction was rolled back, or had committed: a retry is idempotent)."
            )
        return StateError(f"The {self.what} {self.display} failed: {reason}.")

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """One transaction on a fresh connection, schema ensured, lock waits bounded;
        any database error becomes a StateError (and rolls everything back)."""
        conn = self.connect()
        try:
            with conn.transaction():
                self.set_limits(conn)
                self._ensure_schema(conn)
                yield conn
        except self.pg.Error as exc:
            raise self.translate(exc) from None
        finally:
            conn.close()

    def set_limits(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        """For the open transaction only: bounded lock waits, a 1M-row sort in memory, and
        the server probing this client (:data:`KEEPALIVE`), so that if this process's host
        vanishes the server rolls its transaction back and frees its rows in seconds."""
        conn.execute(
            "SELECT set_config('lock_timeout', %s, true), set_config('work_mem', '64MB', true), "
            "set_config('tcp_keepalives_idle', %s, true), "
            "set_config('tcp_keepalives_interval', %s, true), "
            "set_config('tcp_keepalives_count', %s, true)",
            [f"{max(1, round(self.lock_timeout * 1000))}ms", *map(str, KEEPALIVE[:3])],
        )

    def retry(self, conn: psycopg.Connection[tuple[Any, ...]], step: Callable[[], _T]) -> _T:
        """Run ``step`` in a savepoint, again (up to 3 times) if it was aborted as a deadlock."""
        for attempt in range(_RETRIES):
            try:
                with conn.transaction():
                    return step()
            except self.pg.errors.DeadlockDetected:
                if attempt == _RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _ensure_schema(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        """Create the tables on first use (under an advisory lock), check the version."""
        if self.location in _ready:
            return
        version = self._version(conn)
        if version != SCHEMA_VERSION:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_SCHEMA_LOCK])
            version = self._version(conn)
            if version is None:
                for statement in _SCHEMA:
                    conn.execute(statement, [SCHEMA_VERSION] if "%s" in statement else None)
                version = self._version(conn)
        if version is not None and version > SCHEMA_VERSION:
            raise StateError(
                f"The {self.what} {self.display} was written by a newer bulkbatch (schema "
                f"{version}); upgrade bulkbatch to use it."
            )
        columns = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = "
                "'bulkbatch_claims' AND table_schema = current_schema() ORDER BY ordinal_position"
            )
        ]
        if tuple(columns[: len(_CLAIM_COLUMNS)]) != _CLAIM_COLUMNS:
            raise StateError(
                f"{self.display} has a bulkbatch_claims table that is not a bulkbatch ledger's "
                f"(columns {', '.join(columns)}); drop it or point at another database/schema."
            )
        with _lock:
            _ready.add(self.location)

    @staticmethod
    def _version(conn: psycopg.Connection[tuple[Any, ...]]) -> int | None:
        exists = conn.execute("SELECT to_regclass('bulkbatch_schema') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return None
        row = conn.execute(
            "SELECT version FROM bulkbatch_schema WHERE name = 'bulkbatch'"
        ).fetchone()
        return int(row[0]) if row else None


# --------------------------------------------------------------------------- the ledger


def _stage(
    conn: psycopg.Connection[tuple[Any, ...]], table: str, chunks: Iterable[Sequence[str]]
) -> int:
    """COPY ``chunks`` into a new temporary table ``table(recipient)`` dropped at commit;
    returns how many rows went in."""
    conn.execute(
        f'CREATE TEMPORARY TABLE {table} (recipient text COLLATE "C" NOT NULL) ON COMMIT DROP'
    )
    rows = 0
    with conn.cursor() as cur, cur.copy(f"COPY {table} (recipient) FROM STDIN") as copy:
        for chunk in chunks:
            if chunk:
                copy.write(_copy_text(chunk))
                rows += len(chunk)
    if rows:
        conn.execute(f"ANALYZE {table}")
    return rows


def _copy_text(chunk: Sequence[str]) -> str:
    """``chunk`` as COPY text rows: one join, escaping only when a recipient needs it (a
    backslash, tab, newline or carriage return; about twice as fast as ``write_row``)."""
    body = "\n".join(chunk)
    if body.count("\n") != len(chunk) - 1 or any(c in body for c in "\\\t\r"):
        body = "\n".join(r.translate(_COPY_ESCAPES) for r in chunk)
    return body + "\n"


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="milliseconds")


class PgLedger:
    """The claim ledger in a PostgreSQL database (see the module docstring for why it is
    safe across machines). Satisfies :class:`bulkbatch.stages.once.Ledger`.

    ``location`` is the URL without its password: safe to record, and enough to open the
    ledger again (this process remembers the password; another one reads PGPASSWORD or
    ~/.pgpass).
    """

    def __init__(self, url: str, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        self.db = PgDatabase(url, "--once-per ledger", lock_timeout=lock_timeout)
        self.location = self.db.location
        with self.db.transaction():  # connect and create the schema now: fail early
            pass

    def __repr__(self) -> str:
        return f"PgLedger({self.db.display!r})"

    def claim(
        self,
        key: str,
        campaign: str,
        run_dir: str,
        chunks: Iterable[Sequence[str]],
        on_held: Callable[[Held], None],
    ) -> ClaimResult:
        held_in = {"sent": 0, "claimed": 0}
        with self.db.transaction() as conn:
            total = _stage(conn, "_bb_claim", chunks)
            claimed = self.db.retry(
                conn,
                lambda: (
                    conn.execute(
                        "INSERT INTO bulkbatch_claims (key, recipient, campaign, state, run_dir, "
                        "claimed_at) SELECT %(key)s, s.recipient, %(campaign)s, 'claimed', "
                        "%(run_dir)s, now() FROM _bb_claim s WHERE NOT EXISTS (SELECT FROM "
                        "bulkbatch_claims c WHERE c.key = %(key)s AND c.recipient = s.recipient) "
                        "ORDER BY s.recipient ON CONFLICT (key, recipient) DO NOTHING",
                        {"key": key, "campaign": campaign, "run_dir": run_dir},
                    ).rowcount
                ),
            )
            for held in self._holders(conn, key, campaign):
                held_in[held.state] += len(held.recipients)
                on_held(held)
        own = total - claimed - held_in["sent"] - held_in["claimed"]
        return ClaimResult(claimed, own, held_in["sent"], held_in["claimed"])

    @staticmethod
    def _holders(
        conn: psycopg.Connection[tuple[Any, ...]], key: str, campaign: str
    ) -> Iterator[Held]:
        """The staged recipients another campaign holds, grouped by holder, in lists of at
        most CHUNK_ROWS (a server-side cursor: memory stays bounded)."""
        size = _once.CHUNK_ROWS
        group: tuple[str, str, str | None] | None = None
        recipients: list[str] = []
        with conn.cursor(name="bulkbatch_holders") as cur:
            cur.itersize = size
            cur.execute(
                "SELECT c.campaign, c.state, c.run_dir, c.recipient FROM _bb_claim s "
                "JOIN bulkbatch_claims c ON c.key = %s AND c.recipient = s.recipient "
                "WHERE c.campaign <> %s ORDER BY 1, 2, 3",
                [key, campaign],
            )
            for holder, state, holder_dir, recipient in cur:
                if recipients and (group != (holder, state, holder_dir) or len(recipients) >= size):
                    assert group is not None
                    yield Held(group[0], group[1], group[2], recipients)  # type: ignore[arg-type]
                    recipients = []
                group = (holder, state, holder_dir)
                recipients.append(recipient)
        if recipients and group is not None:
            yield Held(group[0], group[1], group[2], recipients)  # type: ignore[arg-type]

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
        with self.db.transaction() as conn:
            _stage(conn, "_bb_sent", sent)
            marked = self.db.retry(
                conn,
                lambda: (
                    conn.execute(
                        "INSERT INTO bulkbatch_claims AS c (key, recipient, campaign, state, run_dir, "
                        "job_id, claimed_at, sent_at) "
                        "SELECT %s, recipient, %s, 'sent', %s, %s, now(), now() FROM _bb_sent "
                        "ORDER BY recipient ON CONFLICT (key, recipient) DO UPDATE "
                        "SET state = 'sent', job_id = excluded.job_id, sent_at = excluded.sent_at "
                        "WHERE c.campaign = excluded.campaign AND c.state = 'claimed'",
                        [key, campaign, run_dir, job_id],
                    ).rowcount
                ),
            )
            released = self._delete_claimed(conn, key, campaign, refused, "_bb_refused")
        return MarkResult(marked, released)

    def release(
        self, key: str, campaign: str, chunks: Iterable[Sequence[str]] | None = None
    ) -> int:
        with self.db.transaction() as conn:
            if chunks is None:
                return conn.execute(
                    "DELETE FROM bulkbatch_claims WHERE key = %s AND campaign = %s "
                    "AND state = 'claimed'",
                    [key, campaign],
                ).rowcount
            return self._delete_claimed(conn, key, campaign, chunks, "_bb_release")

    def _delete_claimed(
        self,
        conn: psycopg.Connection[tuple[Any, ...]],
        key: str,
        campaign: str,
        chunks: Iterable[Sequence[str]],
        table: str,
    ) -> int:
        if not _stage(conn, table, chunks):
            return 0
        return self.db.retry(
            conn,
            lambda: (
                conn.execute(
                    f"DELETE FROM bulkbatch_claims c USING {table} s WHERE c.key = %s "
                    "AND c.campaign = %s AND c.state = 'claimed' AND c.recipient = s.recipient",
                    [key, campaign],
                ).rowcount
            ),
        )

    def lookup(self, key: str, recipients: Iterable[str]) -> dict[str, Claim]:
        found: dict[str, Claim] = {}
        with self.db.transaction() as conn:
            for chunk in _once._batched(recipients):
                rows = conn.execute(
                    "SELECT key, recipient, campaign, state, run_dir, job_id, claimed_at, "
                    "sent_at FROM bulkbatch_claims WHERE key = %s AND recipient = ANY(%s)",
                    [key, chunk],
                ).fetchall()
                for k, r, c, s, d, j, claimed_at, sent_at in rows:
                    found[r] = Claim(k, r, c, s, d, j, _iso(claimed_at) or "", _iso(sent_at))
        return found
