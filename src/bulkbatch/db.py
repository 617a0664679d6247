"""DuckDB, in one place: opening a run database, its memory cap, SQL quoting, and running
blocking queries from async code (worker thread, interrupt on cancel, out-of-memory as a clear
error).

Every stage gets its connection from :func:`open_run_db` and quotes with :func:`quote_ident`
and :func:`quote_literal`; nothing else in bulkbatch sets DuckDB options or spells quoting.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import duckdb
import pyarrow as pa

from bulkbatch.errors import StateError, UsageError

__all__ = [
    "ARROW_BATCH_ROWS",
    "ARROW_PARQUET",
    "BUILD_SHARE",
    "DB_FILE",
    "DUCKDB_FLOOR",
    "MEMORY_LIMIT",
    "MEMORY_LIMIT_ENV",
    "PARQUET_OPTIONS",
    "SCAN_SHARE",
    "check_duckdb",
    "configure_connection",
    "fetch_one",
    "in_thread",
    "key_ranges",
    "memory_limit",
    "memory_share",
    "open_run_db",
    "optimizer_disabled",
    "prefetched_batches",
    "prefetched_queries",
    "quote_ident",
    "quote_literal",
    "scaled_to_cap",
    "scratch_database",
    "searched_too",
]

T = TypeVar("T")

DB_FILE = "run.duckdb"
MEMORY_LIMIT = "320MB"
"""DuckDB's memory cap for any connection bulkbatch opens (it spills to ``<run dir>/.spill``
beyond it): measured to keep a 10M-row run within a few hundred MiB.
``BULKBATCH_MEMORY_LIMIT`` (e.g. ``1GB``) overrides it."""
MEMORY_LIMIT_ENV = "BULKBATCH_MEMORY_LIMIT"
BUILD_SHARE = 0.7
"""DuckDB's share of its cap while the audience is loaded and planned (:func:`memory_share`).
The process holds about 185 MiB besides DuckDB's (the interpreter and its libraries, ~130
MiB, DuckDB's own allocations outside its cap, Arrow), and DuckDB fills its cap, if only with
the blocks it read. Under the whole 320MB cap the 10M load + plan peaked at 537-551 MiB
(RSS); under 0.8 at 465-470, under 0.7 at 433-438, 4-7 s slower (interleaved: 75.7 and
77.6 s against 71.7 and 71.0; in a faster hour 68.6 and 69.0 against 64.9 twice; the passes
that write ``plan`` are sized from the whole cap; bench/RESULTS.md, round 19)."""
SCAN_SHARE = 1 / 2
"""DuckDB's share of its cap for a statement that scans a table and keeps little: the
audience fingerprint, ``rejects.parquet`` and ``duplicates.parquet``. Under the whole cap
DuckDB kept every block they read cached until the cap was full (10M: RSS sampled at
523-547 MiB during them, against 363-381 under half, as fast)."""
PARQUET_OPTIONS = "FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1"
"""How DuckDB writes bulkbatch's Parquet (rejects, duplicates, merged results). zstd's
level 1 rather than DuckDB's default 3: writing 10M results rows on one thread took
9.9-10.7 s against 11.9-14.5 s, and the file is smaller (192 MB against 211 MB)."""
ARROW_PARQUET: dict[str, Any] = {"compression": "zstd", "compression_level": 1}
"""The same codec and level for Parquet that bulkbatch writes with pyarrow's writer: files
that DuckDB's ordered ``COPY`` wrote on about one thread (``plan.parquet``: 20-22 s at 10M
against 9.3 s streamed through pyarrow) or that are written one range at a time (results)."""
ARROW_BATCH_ROWS = 30_720
"""Rows per Arrow batch streamed out of DuckDB: at 10M, batches of 122,880 rows raised the
peak RSS of writing ``plan.parquet`` from 366 to 508 MiB, for no speed."""
INTERRUPT_EVERY = 0.05
"""Seconds between the interrupts a stopped :func:`in_thread` sends until its work ends."""

_PID = re.compile(r"PID (\d+)")

DUCKDB_FLOOR = (2, 0)
"""The oldest DuckDB bulkbatch runs on; pyproject.toml's ``duckdb>=`` says the same (a test
keeps the two one). DuckDB 1.3 to 1.5 fail the plan inside a query ("The initial value type
must be the same as the list child type"), and the campaign identity is pinned on 2.0."""


def check_duckdb(version: str | None = None) -> None:
    """Refuse a DuckDB older than :data:`DUCKDB_FLOOR` (``version``: the installed one) in
    one line that says what to do, rather than let a query fail halfway through a plan.
    pip holds to the floor; an environment pinned by other tools or installed without
    dependencies may not."""
    found = version or duckdb.__version__
    # Leading numbers only, by hand: ``packaging`` is not a dependency, and a floor of two
    # numbers needs no full version grammar (a pre-release of the floor counts as the floor).
    parts = [int(p) for p in re.findall(r"\d+", found)[: len(DUCKDB_FLOOR)]]
    parts += [0] * (len(DUCKDB_FLOOR) - len(parts))  # "2" is 2.0
    if tuple(parts) >= DUCKDB_FLOOR:
        return
    floor = ".".join(map(str, DUCKDB_FLOOR))
    raise UsageError(
        f"bulkbatch needs DuckDB {floor} or newer, and this Python has DuckDB {found}. "
        f"Upgrade it with: pip install 'duckdb>={floor}'"
    )


def memory_limit() -> str:
    """The DuckDB memory cap in force: ``BULKBATCH_MEMORY_LIMIT`` or :data:`MEMORY_LIMIT`."""
    return os.environ.get(MEMORY_LIMIT_ENV, "").strip() or MEMORY_LIMIT


def quote_ident(name: str) -> str:
    """``name`` as a double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """``text`` as a single-quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def fetch_one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    """The first row of ``sql``, fetching the whole result.

    DuckDB refuses other work (``register``, ...) on a connection whose last result was not
    fetched to the end, so never use ``fetchone()`` on the pipeline's connection.
    """
    rows = con.execute(sql).fetchall()
    return tuple(rows[0]) if rows else ()


def _cap_in_force(con: duckdb.DuckDBPyConnection) -> int | None:
    """``con``'s DuckDB memory cap in bytes (None if DuckDB spells it in a way we cannot read)."""
    return parse_bytes(str(fetch_one(con, "SELECT current_setting('memory_limit')")[0]))


def key_ranges(
    con: duckdb.DuckDBPyConnection, table: str, column: str, rows: int
) -> list[tuple[int, int]]:
    """``[lo, hi)`` ranges of the integer ``column`` that cover ``table`` in order, about
    ``rows`` rows each when its values are spread evenly (row numbers, job numbers).

    How bulkbatch keeps a join of two 10M-row tables within its memory cap: one statement per
    range, with the range's filter on both sides, so each hash join builds on one range only.
    There is always one range at least, so a table created by the first statement exists even
    when ``table`` is empty.
    """
    n, lo, hi = fetch_one(con, f"SELECT count(*), min({column}), max({column}) FROM {table}")
    if not n:
        return [(0, 1)]
    first, last = int(lo), int(hi)
    step = -(-(last - first + 1) // -(-int(n) // max(1, rows)))
    return [(start, start + step) for start in range(first, last + 1, step)]


@contextlib.contextmanager
def memory_share(con: duckdb.DuckDBPyConnection, share: float, fixed: int = 0) -> Iterator[None]:
    """``share`` of ``con``'s memory cap, plus ``fixed`` bytes (never more than the cap), for
    DuckDB while the rest of the process needs the memory, the cap restored after.

    Two uses: rows DuckDB produces live outside it as Arrow data on their way to a Parquet
    writer (the plan file, the results), and the network phase, whose DuckDB work is small
    but which would otherwise leave every plan block it read cached up to the whole cap.
    Lowering the cap evicts those blocks at once; DuckDB hands their memory back.
    """
    cap = _cap_in_force(con)
    if cap:
        con.execute(f"SET memory_limit = '{min(cap, int(cap * share) + fixed)}B'")
    try:
        yield
    finally:
        # Never mask the error that got us here (an interrupt, a full disk).
        if cap:
            with contextlib.suppress(duckdb.Error):
                con.execute(f"SET memory_limit = '{cap}B'")


@contextlib.contextmanager
def _meanwhile(
    con: duckdb.DuckDBPyConnection, setting: str, value: Callable[[str], str]
) -> Iterator[None]:
    """DuckDB's ``setting`` is ``value(its current value)`` meanwhile, then what it was. A
    DuckDB that refuses the value (an older one, without that storage method or optimizer)
    runs as it is: every use is a choice of speed or size, never of correctness."""
    previous: str | None = str(
        fetch_one(con, f"SELECT current_setting({quote_literal(setting)})")[0]
    )
    try:
        con.execute(f"SET {setting} = {quote_literal(value(previous or ''))}")
    except duckdb.Error:  # pragma: no cover - a DuckDB without that method or optimizer
        previous = None  # nothing was changed, so nothing to restore
    try:
        yield
    finally:
        if previous is not None:
            with contextlib.suppress(duckdb.Error):  # never mask the error that got us here
                con.execute(f"SET {setting} = {quote_literal(previous)}")


def compressed_with(
    con: duckdb.DuckDBPyConnection, method: str
) -> contextlib.AbstractContextManager[None]:
    """Tables written meanwhile are stored with ``method`` (e.g. ``zstd``), the setting
    restored after. The plan stores its users' JSON so: faster to write than DuckDB's
    automatic choice (which analyses every column of every row group first) and half the
    size. Not ``inputs``: with zstd the 10M load took 8.4-8.7 s instead of 10.4-12.3 s, but
    each of the plan's passes, which reads a fifth of the audience's rows, got 0.5 s slower
    and the whole plan 3-5 s (likely because a zstd block is decompressed whole, where
    DuckDB's own encodings let a selective scan skip most strings)."""
    return _meanwhile(con, "force_compression", lambda _: method)


@contextlib.contextmanager
def scratch_database(con: duckdb.DuckDBPyConnection, path: Path, name: str) -> Iterator[str]:
    """A throwaway database file at ``path``, attached as ``name`` meanwhile (its tables are
    ``name.table``), then detached and deleted; one a killed run left there is deleted first.

    For scratch tables larger than DuckDB's share of the cap that many statements read back:
    the results stage's keys (10M rows, about half of them read by each of 40 ranges). As
    TEMP tables they churned: DuckDB compresses (ZSTD) a temporary block each time it evicts
    it, and a block read back is written again when next evicted. In a standalone results
    stage at 10M (round 24 of #19), ~2.6 s of CPU went to those ZSTD calls. The blocks of a
    database file are written once, then dropped and read back (from the OS's cache) with no
    work: 12.6-12.8 s against 15.5-15.9. How its tables are stored is the caller's choice
    (:func:`compressed_with`): DuckDB's own choice of encodings, analysed per row group, made
    the results stage's pages join 5.7 s against 3.7 uncompressed; that stage now writes ZSTD
    (``results.SCRATCH_COMPRESSION``), ~200 MB at 10M, where uncompressed was 830 MB.

    :raises StateError: the file cannot be made there (the directory is not writable, the
        disk is full, something else sits at ``path``)
    """
    files = (path, path.with_name(path.name + ".wal"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for f in files:
            f.unlink(missing_ok=True)
        con.execute(f"ATTACH {quote_literal(str(path))} AS {quote_ident(name)}")
    except (OSError, duckdb.Error) as exc:
        raise StateError(
            f"Cannot create the scratch database {path} ({_first_line(str(exc))}). Check that "
            f"{path.parent} is writable and the disk has space, and that nothing else is at "
            "that path; then run the same command again."
        ) from None
    try:
        yield name
    finally:
        with contextlib.suppress(duckdb.Error):  # never mask the error that got us here
            con.execute(f"DETACH {quote_ident(name)}")
        for f in files:
            with contextlib.suppress(OSError):
                f.unlink(missing_ok=True)


def searched_too(
    con: duckdb.DuckDBPyConnection, database: str
) -> contextlib.AbstractContextManager[None]:
    """Tables of the attached ``database`` are found by their bare names on ``con`` meanwhile
    (after the current database's and TEMP ones), the search path restored after. It is
    ``con``'s own setting: its cursors do not see it."""
    current = str(fetch_one(con, "SELECT current_database()")[0])
    return _meanwhile(
        con,
        "search_path",
        lambda previous: ",".join(
            [previous or f"{quote_ident(current)}.main", f"{quote_ident(database)}.main"]
        ),
    )


def optimizer_disabled(
    con: duckdb.DuckDBPyConnection, name: str
) -> contextlib.AbstractContextManager[None]:
    """DuckDB's optimizer ``name`` (one of ``disabled_optimizers``) is off meanwhile, the
    setting restored after: a hint for speed (see :func:`_meanwhile`)."""
    return _meanwhile(
        con, "disabled_optimizers", lambda previous: ",".join(n for n in (previous, name) if n)
    )


_DONE = object()


def prefetched_batches(
    con: duckdb.DuckDBPyConnection, queries: Sequence[str], queued: int = 4
) -> Iterator[pa.RecordBatch]:
    """The Arrow batches of each query in turn (:data:`ARROW_BATCH_ROWS` rows each), read by a
    worker thread up to ``queued`` batches ahead (:func:`prefetched_queries`)."""
    for _, batch in prefetched_queries(con, queries, queued):
        yield batch


_OUT_OF_MEMORY = "Out of Memory Error"


def arrow_batches(relation: duckdb.DuckDBPyRelation, rows: int) -> Iterator[pa.RecordBatch]:
    """The Arrow batches of ``relation``, ``rows`` at most each.

    A query that runs out of memory once its Arrow stream is being read (a join's hash table
    built for a later batch) fails in pyarrow's reader, which raises a plain ``OSError`` with
    DuckDB's text ("Out of Memory Error: failed to pin block …"). That one is raised again as
    ``duckdb.OutOfMemoryException``, which callers catch: the results stage to retry with
    smaller ranges, :func:`in_thread` to say which setting to raise (the ``OSError`` ended as
    "Unexpected OSError … please report it"). Only that class is mapped: it is the one with a
    remedy of its own; any other error is raised as it came.
    """
    try:
        yield from relation.to_arrow_reader(rows)
    except OSError as exc:
        if not str(exc).startswith(_OUT_OF_MEMORY):
            raise
        raise duckdb.OutOfMemoryException(str(exc)) from exc


def prefetched_queries(
    con: duckdb.DuckDBPyConnection, queries: Sequence[str], queued: int = 4
) -> Generator[tuple[int, pa.RecordBatch]]:
    """``(i, batch)``: the Arrow batches of each query in turn (:data:`ARROW_BATCH_ROWS` rows
    each) with the index of the query they belong to, read by a worker thread up to
    ``queued`` batches ahead, so that DuckDB computes while the caller writes. When the caller
    stops early (an error, an interrupt), the running query is interrupted and the worker
    waited for: the connection is free again when this returns.

    A thread and a queue rather than anyio: the caller is itself blocking code in a worker
    thread (:func:`in_thread`), and DuckDB and pyarrow both release the GIL.
    """
    box: queue.Queue[object] = queue.Queue(maxsize=queued)
    stop = threading.Event()

    def produce() -> None:
        try:
            for i, sql in enumerate(queries):
                for batch in arrow_batches(con.sql(sql), ARROW_BATCH_ROWS):
                    if stop.is_set():
                        return
                    box.put((i, batch))
            box.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            box.put(exc)

    worker = threading.Thread(target=produce, name="bulkbatch-arrow", daemon=True)
    worker.start()
    try:
        while (item := box.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield cast(tuple[int, pa.RecordBatch], item)
    finally:
        stop.set()
        con.interrupt()  # the query still running, if any (idle, it does nothing)
        while worker.is_alive():  # a worker blocked on a full queue gets room to see stop
            with contextlib.suppress(queue.Empty):
                box.get(timeout=0.05)
        worker.join()


def scaled_to_cap(con: duckdb.DuckDBPyConnection, rows: int) -> int:
    """``rows`` (a range size measured under the default cap) scaled to ``con``'s memory cap."""
    default = parse_bytes(MEMORY_LIMIT) or 1
    return max(1, rows * (_cap_in_force(con) or default) // default)


def parse_bytes(text: str) -> int | None:
    """``512MB`` / ``2GiB`` / ``1000`` as a number of bytes; None when it is not a size."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B)?\s*", text, re.IGNORECASE)
    if not m:
        return None
    unit = (m.group(2) or "B").upper().replace("I", "")
    scale = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}[unit]
    return int(float(m.group(1)) * scale)


def _check_limit() -> int:
    limit = memory_limit()
    size = parse_bytes(limit)
    if not size:
        raise StateError(
            f"{MEMORY_LIMIT_ENV}={limit!r} is not a memory size DuckDB understands; use a size "
            f"such as 512MB or 2GB, or unset it for the default {MEMORY_LIMIT}."
        )
    return size


def configure_connection(con: duckdb.DuckDBPyConnection) -> None:
    """Keep insertion order, turn DuckDB's progress bar off (it writes to stdout), and cap its
    memory at :func:`memory_limit` (only ever lowered) on ``con``; refuse a DuckDB older than
    :data:`DUCKDB_FLOOR`."""
    check_duckdb()
    cap = _check_limit()
    con.execute("SET preserve_insertion_order = true")
    with contextlib.suppress(duckdb.Error):
        # Library code never prints. Inside Jupyter, DuckDB refuses to change this setting
        # when ipywidgets is missing; its bar is then off anyway.
        con.execute("SET enable_progress_bar = false")
    current = _cap_in_force(con)
    if current is None or current > cap:
        con.execute(f"SET memory_limit = '{cap}B'")


def open_run_db(run_dir: Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open ``run_dir/run.duckdb``: one process at a time (DuckDB's file lock), capped in
    memory, spilling to ``run_dir/.spill``."""
    path = run_dir / DB_FILE
    if read_only and not path.exists():
        raise StateError(
            f"{run_dir} has no {DB_FILE}: the run never got past its start, so nothing was "
            f"sent. Run the same 'bulkbatch send' command again."
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
        raise StateError(f"Cannot open the run database {path}: {_first_line(text)}") from None
    except duckdb.Error as exc:
        raise StateError(
            f"The run database {path} cannot be opened ({_first_line(str(exc))}). If the disk "
            "filled up, free space and retry; otherwise start the campaign again in a new "
            "run directory (nothing acknowledged is sent twice)."
        ) from None
    if not read_only:
        try:
            configure_connection(con)
        except (StateError, UsageError):
            con.close()
            raise
        con.execute(f"SET temp_directory = {quote_literal(str(run_dir / '.spill'))}")
    return con


def unreadable(exc: duckdb.IOException, run_dir: Path) -> StateError:
    """DuckDB could not read the run database (a truncated copy, a failing disk) mid-query."""
    return StateError(
        f"The run database {run_dir / DB_FILE} cannot be read ({_first_line(str(exc))}); it is "
        "damaged. Restore it from a backup, or move the run directory aside and run the same "
        "'bulkbatch send' command again: nobody acknowledged is sent twice."
    )


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else text


async def in_thread(con: duckdb.DuckDBPyConnection, fn: Callable[[], T], run_dir: Path) -> T:
    """Run blocking DuckDB work in a worker thread, interrupting it on cancellation.

    A thread cannot be cancelled, so on Ctrl-C (or any cancellation) the query running on
    ``con`` is interrupted and the thread is waited for before the cancellation goes on; that
    way the connection is free to close and the run stops within a moment, not after a
    ten-minute plan finishes. DuckDB running out of its budget becomes a clear
    :class:`StateError` naming the setting.
    """
    finished = threading.Event()
    lock = threading.Lock()
    began = abandoned = False

    def work() -> T:
        nonlocal began
        with lock:
            if abandoned:  # the stop came first: the caller has gone, run nothing
                raise anyio.get_cancelled_exc_class()
            began = True
        try:
            return fn()
        finally:
            finished.set()

    try:
        return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
    except duckdb.OutOfMemoryException as exc:
        detail = _first_line(str(exc)).removeprefix("Out of Memory Error: ")
        raise StateError(
            f"DuckDB ran out of its {memory_limit()} memory budget ({detail}). Nothing is "
            f"lost and nobody was sent twice; give it more with {MEMORY_LIMIT_ENV}=2GB, then "
            f"run 'bulkbatch resume {run_dir}'."
        ) from None
    except duckdb.IOException as exc:
        if DB_FILE not in str(exc):
            raise  # an input file, say: the stage's own error says which
        raise unreadable(exc, run_dir) from None
    except anyio.get_cancelled_exc_class():
        with lock:
            abandoned = True
            running = began
        # anyio drops a call that no worker took before the cancellation: then there is
        # nothing to wait for (waiting for it hung forever). Otherwise interrupt until the
        # work ends: DuckDB drops an interrupt that lands between two statements of a stage.
        with anyio.CancelScope(shield=True):
            while running and not finished.is_set():
                con.interrupt()
                await anyio.to_thread.run_sync(finished.wait, INTERRUPT_EVERY)
        raise
