"""Stage 5, results: one row per input row, in Parquet, with an accounting that adds up.

``results.parquet`` columns, in order:

| column | meaning |
|---|---|
| ``row_number`` | the input row (1-based, input order) |
| key columns | the input columns that identify the person (mapped to user id / e-mail / phone / list), or every input column with ``include_profile`` |
| ``outcome`` | ``ingested``, ``duplicate``, ``rejected``, ``filtered`` (left out on purpose by ``--where``/``--sql``: never a failure), ``skipped`` (sent or claimed by another campaign under the same ``--once-per`` key), ``canceled``, or ``unsent`` (results of a run that stopped before Courier acknowledged the row's batch) |
| ``reason`` | why the row was not ingested (the reject reason, ``duplicate of row N``, ``ingest error: …``) |
| ``reason_code`` | a stable code for ``reason`` (``no_address``, ``bad_email``, ``duplicate``, ``ingest_error`` …) |
| ``recipient`` | the Courier ``recipient`` the row was sent as (or would have been) |
| ``job_id`` | the bulk job the row went to |
| ``message_id`` | Courier's message id, once the job enqueued it |
| ``status`` | the bulk user status ``PENDING`` / ``ENQUEUED`` / ``ERROR`` (null until tracked) |
| ``delivery_status``, ``enqueued_at`` … ``clicked_at``, ``delivery_reason`` | what happened to the message after Courier enqueued it (:mod:`bulkbatch.stages.delivery`: webhooks and/or ``GET /messages``); always there, null until known |
| ``cancel`` | after ``bulkbatch cancel``: ``canceled``, ``too late``, ``job never run`` |

The accounting ``input rows = ingested + duplicates + rejected + filtered + skipped`` holds by
construction only if plan, rejects and duplicates partition the input; this module checks
that, and checks ``ingested`` against each job's ``received`` (the counting and the checks
live in :mod:`bulkbatch.stages.accounting`). When a check fails the file is still written
(the user needs it) and :class:`~bulkbatch.errors.AccountingError` is raised.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from bulkbatch.db import (
    ARROW_PARQUET,
    compressed_with,
    key_ranges,
    memory_share,
    optimizer_disabled,
    prefetched_queries,
    quote_ident,
    quote_literal,
    scaled_to_cap,
    scratch_database,
)
from bulkbatch.errors import AccountingError
from bulkbatch.files import atomic_write_bytes
from bulkbatch.heap import give_back
from bulkbatch.stages import accounting
from bulkbatch.stages.delivery import DELIVERY_COLUMNS, DELIVERY_TABLE, build_delivery
from bulkbatch.stages.row_order import in_row_order
from bulkbatch.state import RunState

__all__ = ["RESULT_COLUMNS", "ResultsInfo", "write_results"]

RESULT_COLUMNS = (
    "outcome",
    "reason",
    "reason_code",
    "recipient",
    "job_id",
    "message_id",
    "status",
    "cancel",
)


@dataclass(frozen=True)
class ResultsInfo:
    """The counts of ``results.parquet`` and where it is."""

    path: Path
    summary_path: Path
    input_rows: int
    ingested: int
    duplicates: int
    rejected: int
    skipped: int
    filtered: int = 0
    canceled: int = 0
    unsent: int = 0
    """Rows of batches Courier never acknowledged, in results of a run that stopped."""
    statuses: dict[str, int] = field(default_factory=dict)
    delivery: dict[str, int] = field(default_factory=dict)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    accounting_ok: bool = True
    problems: tuple[str, ...] = ()
    seconds: float = 0.0

    def __repr__(self) -> str:
        return (
            f"<ResultsInfo {self.input_rows} rows: ingested={self.ingested} duplicates="
            f"{self.duplicates} rejected={self.rejected} skipped={self.skipped} "
            f"statuses={self.statuses}>"
        )


# The pages join and the keys table live in a database file of their own in the run directory
# while the stage runs (db.scratch_database: as TEMP tables, DuckDB re-compressed their blocks
# each time the ranges evicted them).
SCRATCH_DB = "_bb_results_scratch"
SCRATCH_FILE = ".results-scratch.duckdb"
_KEYS = "keys"
KEYS_TABLE = f"{SCRATCH_DB}.{_KEYS}"
PAGES_TABLE = f"{SCRATCH_DB}.pages"
# How the scratch tables are stored. Round 32 of #19, 10M sends in process: written
# uncompressed (783 MiB), the pages join took 9.0-11.5 s of the stage's 19.4-22.9 s, with
# 15.5-20.3 s of system CPU (perf: copying into the page cache, and the second thread spinning
# on the file's lock meanwhile); with ZSTD (~200 MiB) 5.6-6.2 s of 17.4-18.7, system CPU
# 6.5-8.0 s. Run alone, where those writes were cheap, ZSTD cost 0.5-1.1 s more (16.2 and
# 17.3 s against 15.7 and 16.2), in compressing and reading the blocks back.
SCRATCH_COMPRESSION = "zstd"
# The scratch tables of older versions (TEMP, or in the run database before that).
_OLD_SCRATCH = ("_results_keys", "_results_pages")
# How many planned users one pages join takes (a range of whole jobs) under the default cap,
# scaled with the cap in force. At 10M in one join it took 11-13 s and spilled; in ranges of
# 8 of 64 jobs, 7.2-9.4 s within the cap.
PAGES_JOIN_ROWS = 1_500_000
# Input rows per results range under the default memory cap (scaled with the cap in force):
# joined and written as Arrow. At 10M the one COPY (joins, a 10M-row sort and the writer, all
# on one thread) took 34.8 s; ranges of 250,000 rows, 9.5 s. Smaller ranges pay for more
# scans of the keys table (125,000: 14 s). Round 23: each range reads about half of the keys
# table's row groups (the keys are in job order, jobs in md5 order), so 125,000 rows under a
# fifth of the cap took 17.4 s against 13.9 (peak 307 against 390 MiB); sorting the keys by
# row number first took 4.4-4.7 s of its own.
RESULT_ROWS = 250_000
# When a range runs out of DuckDB's share (RESULTS_SHARE, below) anyway, the ranges are
# written again, each half as large, up to this many times. Under small caps the fixed part
# is tight: on the chaos benchmark's 1M run directory (batches of 250) under 96MB, six results
# runs in 24 ran out at random (DuckDB's two threads race for the share); with ranges at 0.4
# of their size none of six did, and with the halvings none of eight. At the default cap no
# 10M run has needed it.
RANGE_HALVINGS = 3
# DuckDB's share of its cap while the ranges are written: outside it live a few Arrow batches
# on their way and the runs held until the rows before them come (up to a range's rows, see
# row_order.in_row_order). Inside it, the keys table: the less of it DuckDB keeps, the more
# each range reads back from the spill. At 10M (rows put in order in Arrow), standalone: 2/3 took
# 13.4-13.9 s at 491-498 MiB of peak RSS, half 15.2-15.9 s at 453 MiB, 0.4 16.0-16.9 s at
# 400-415 MiB; with the sort in DuckDB, 2/3 had taken 19.4-20.4 s at 441-443 MiB.
# Round 21, standalone on a 10M run directory: what the share holds beyond the ranges' hash
# tables (36-58 MB) is the keys table's cached blocks, read back from the spill (the OS's page
# cache) as fast: 0.4 14.5-15.0 s at 386-410 MiB, 0.28 14.6-15.0 s at 350-371, 0.25 14.5-15.2 s
# at 342-353; 0.2 ran out of memory. In 10M sends 0.3 peaked at 459-460 MiB against 472-483.
# Round 23: the need is a fixed part plus a share (the ranges, and so their hash tables, scale
# with the cap). 1M synthetic rows (tests/stages/test_results_memory.py) ran out at 0.4 of
# 64MB (25.6 MB) and passed at 0.5, ran out at 0.3 of 112MB and passed at 0.32, ran out at
# 0.2 of 200MB and passed at 0.22; the real 10M run directory ran out at 0.2 of 320MB (64 MB)
# and passed at 0.25. So 24 MB and a fifth of the cap: 37, 46, 64 and 88 MB at those caps.
# In 10M sends: peaks of 438-452 MiB (four) against 510-523 at 0.4 (two, the same hour).
RESULTS_SHARE = 0.2
RESULTS_FIXED = 24 * 2**20
# DuckDB's share of its cap for the pages join (ranges sized from the whole cap). At 10M:
# 7.0-8.0 s and +330 MiB of RSS under the whole cap, 7.5-8.2 s and +174 MiB under half; a
# third spilled (14.4 s). Run after a send, that join had made the run's peak RSS. Round 23,
# standalone on the 10M run directory: 2.6-2.7 s and +186-192 MiB; ranges of 750,000 users
# under a quarter and 24 MB, 3.3-3.4 s and +122. In three 10M sends that took the results
# stage to 20.1-21.9 s (15.9-16.9 without) for peaks of 419-460 MiB (438-452): not taken.
PAGES_SHARE = 1 / 2
# Low-cardinality columns, dictionary-encoded; the writer's default (a dictionary for every
# column, dropped once it overflows) cost 1.29 s per 2M rows against 0.88 s on the unique
# row numbers, e-mails and message ids, and made the file larger.
_DICTIONARY_COLUMNS = frozenset(
    {
        "outcome",
        "reason",
        "reason_code",
        "job_id",
        "status",
        "cancel",
        "delivery_status",
        "delivery_reason",
    }
)


def _build_keys(cur: duckdb.DuckDBPyConnection) -> bool:
    """Materialise, per planned row, what Courier said of it: ``KEYS_TABLE``.

    The plan and ``user_pages`` join on (recipient, job), a range of whole jobs per statement
    (:data:`PAGES_JOIN_ROWS`): a user appears in the pages of its own job only, so each hash
    join builds on one range. Returns whether the table has the delivery columns: with no
    delivery data (no webhooks, no Messages API rows) it is the pages join alone, renamed,
    not copied (at 10M the copy took 7.6 of 55 s).
    """
    ranges = key_ranges(cur, "plan", "job_no", scaled_to_cap(cur, PAGES_JOIN_ROWS))
    with memory_share(cur, PAGES_SHARE), compressed_with(cur, SCRATCH_COMPRESSION):
        _join_pages(cur, ranges)
    if not build_delivery(cur):
        cur.execute(f"ALTER TABLE {PAGES_TABLE} RENAME TO {_KEYS}")
        return False
    delivery = ", ".join(f"d.{c}" for c in DELIVERY_COLUMNS)
    with compressed_with(cur, SCRATCH_COMPRESSION):
        cur.execute(
            f"CREATE TABLE {KEYS_TABLE} AS SELECT k.*, {delivery} FROM {PAGES_TABLE} k "
            f"LEFT JOIN {DELIVERY_TABLE} d ON d.message_id = k.message_id"
        )
    cur.execute(f"DROP TABLE {PAGES_TABLE}")
    return True


def _drop_old_scratch(cur: duckdb.DuckDBPyConnection) -> None:
    """Drop the scratch tables an older version's results run left in the run database when
    it was killed (before they were TEMP tables, which die with their connection)."""
    rows = cur.execute(
        "SELECT database_name, schema_name, table_name FROM duckdb_tables() "
        f"WHERE table_name IN ({', '.join(map(quote_literal, _OLD_SCRATCH))})"
    ).fetchall()
    for database, schema, table in rows:
        cur.execute(f"DROP TABLE IF EXISTS {'.'.join(map(quote_ident, (database, schema, table)))}")


def _join_pages(cur: duckdb.DuckDBPyConnection, ranges: list[tuple[int, int]]) -> None:
    """``PAGES_TABLE``: the plan ⋈ ``user_pages``, one statement per range of job numbers.

    In the scratch database (as is ``KEYS_TABLE``), not the run database: scratch work that
    only this stage reads. Compressed into the run database, at 10M that write was about
    0.8 s of each 1.7 s range, and a run killed midway left the table behind.
    """
    for i, (lo, hi) in enumerate(ranges):
        jobs = f"job_no >= {lo} AND job_no < {hi}"
        into = (
            f"CREATE OR REPLACE TABLE {PAGES_TABLE} AS" if i == 0 else f"INSERT INTO {PAGES_TABLE}"
        )
        cur.execute(
            f"""
            {into}
            SELECT p.row_number, p.recipient, p.job_no, p.batch_no, pg.message_id, pg.status
            FROM (SELECT * FROM plan WHERE {jobs}) p
            -- A page is committed with its cursor, so a user appears in user_pages once; were
            -- it not so, the extra rows would fail the row-count check of write_results.
            LEFT JOIN (SELECT * FROM user_pages WHERE {jobs}) pg
                ON pg.recipient = p.recipient AND pg.job_no = p.job_no
            """
        )


def _delivery_columns(delivery: bool) -> str:
    """The delivery columns of the results rows: from ``KEYS_TABLE``, or typed NULLs."""
    if delivery:
        return ", ".join(f"k.{c}" for c in DELIVERY_COLUMNS)
    return ", ".join(
        f"NULL::{'TIMESTAMP' if c.endswith('_at') else 'VARCHAR'} AS {c}" for c in DELIVERY_COLUMNS
    )


@dataclass(frozen=True)
class _Shape:
    """What the results query selects and joins, looked up once for all its ranges."""

    inputs: str  # the input columns selected, as SQL
    jobs: str  # VALUES rows (job_no, job_id, ran)
    skips: bool  # the run has a ``skipped`` table (--once-per)
    cancels: bool  # the run has a ``cancels`` table
    canceled: bool  # ``bulkbatch cancel`` ran
    delivery: bool  # KEYS_TABLE has the delivery columns
    stopped: bool = False  # the send stopped before it finished: unacknowledged rows unsent
    acked: bool = False  # the run database has the ``batches`` table (acknowledged batches)


def _shape(
    cur: duckdb.DuckDBPyConnection, state: RunState, include_profile: bool, delivery: bool
) -> _Shape:
    input_cols = [
        r[0]
        for r in cur.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'inputs' "
            "ORDER BY ordinal_position"
        ).fetchall()
        if r[0] not in ("row_number", "source")
    ]
    key_cols = list(state.plan.get("key_columns", ()))
    chosen = input_cols if include_profile else [c for c in key_cols if c in input_cols]
    taken = {"row_number", *RESULT_COLUMNS, *DELIVERY_COLUMNS, "job_no"}
    jobs = ", ".join(
        f"({j.job_no}, {quote_literal(j.job_id or '')}, {'true' if j.run else 'false'})"
        for j in state.jobs
    )
    return _Shape(
        inputs=", ".join(
            f"i.{quote_ident(c)} AS {quote_ident('input_' + c if c in taken else c)}"
            for c in chosen
        ),
        jobs=jobs or "(NULL, NULL, NULL)",
        skips=accounting.table_exists(cur, "skipped"),
        cancels=accounting.table_exists(cur, "cancels"),
        canceled=state.canceled is not None,
        delivery=delivery,
        stopped=not state.done("send") and state.canceled is None,
        acked=accounting.table_exists(cur, "batches"),
    )


def _select_sql(shape: _Shape, rows: str) -> str:
    """The results rows whose row numbers meet ``rows``: the input rows joined (by row
    number) to their outcome. ``rows`` filters every table keyed by row number, so each
    join builds on the range only."""

    def ranged(table: str) -> str:
        return f"(SELECT * FROM {table} WHERE {rows})"

    skipped_join = f"LEFT JOIN {ranged('skipped')} s ON s.row_number = i.row_number"
    skipped_flag = "s.row_number IS NOT NULL" if shape.skips else "false"
    skipped_reason = "s.reason" if shape.skips else "NULL"
    cancel_outcome = "c.outcome" if shape.cancels else "NULL"
    never_sent = (
        f"(NOT coalesce(jobs.ran, false) OR {cancel_outcome} = 'canceled')"
        if shape.canceled
        else "false"
    )
    join_acked = shape.stopped and shape.acked
    unacked = ("b.batch_no IS NULL" if join_acked else "true") if shape.stopped else "false"
    acked_join = "LEFT JOIN batches b ON b.job_no = k.job_no AND b.batch_no = k.batch_no"
    return f"""
    WITH jobs(job_no, job_id, ran) AS (VALUES {shape.jobs}),
    ie AS (SELECT recipient, min(error) AS error FROM ingest_errors GROUP BY recipient)
    SELECT
        i.row_number,
        {shape.inputs + "," if shape.inputs else ""}
        CASE
            WHEN {skipped_flag} THEN 'skipped'
            WHEN k.row_number IS NOT NULL AND ie.recipient IS NULL AND {never_sent}
                THEN 'canceled'
            WHEN k.row_number IS NOT NULL AND {unacked} THEN 'unsent'
            WHEN k.row_number IS NOT NULL AND ie.recipient IS NULL THEN 'ingested'
            WHEN d.row_number IS NOT NULL THEN 'duplicate'
            WHEN r.reason_code = 'filtered' THEN 'filtered'
            WHEN r.row_number IS NOT NULL OR ie.recipient IS NOT NULL THEN 'rejected'
            ELSE NULL
        END AS outcome,
        CASE
            WHEN {skipped_flag} THEN {skipped_reason}
            WHEN k.row_number IS NOT NULL AND ie.recipient IS NULL AND {never_sent}
                THEN 'canceled before it was sent'
            WHEN k.row_number IS NOT NULL AND {unacked}
                THEN 'not sent: the run stopped before Courier acknowledged its batch'
            WHEN r.row_number IS NOT NULL THEN r.reason
            WHEN d.row_number IS NOT NULL THEN 'duplicate of row ' || d.kept_row_number
            WHEN ie.recipient IS NOT NULL THEN 'ingest error: ' || ie.error
        END AS reason,
        CASE
            WHEN {skipped_flag} THEN 'once_per'
            WHEN r.row_number IS NOT NULL THEN r.reason_code
            WHEN d.row_number IS NOT NULL THEN 'duplicate'
            WHEN k.row_number IS NOT NULL AND {unacked} THEN 'unsent'
            WHEN ie.recipient IS NOT NULL THEN 'ingest_error'
        END AS reason_code,
        coalesce(k.recipient, d.recipient{", s.recipient" if shape.skips else ""}) AS recipient,
        CASE WHEN k.row_number IS NOT NULL THEN jobs.job_id END AS job_id,
        k.message_id,
        CASE WHEN k.row_number IS NOT NULL AND ie.recipient IS NULL AND NOT {unacked}
            THEN k.status END AS status,
        {_delivery_columns(shape.delivery)},
        CASE
            WHEN k.row_number IS NULL OR ie.recipient IS NOT NULL OR NOT {shape.canceled}
                THEN NULL
            WHEN NOT coalesce(jobs.ran, false) THEN 'job never run'
            ELSE {cancel_outcome}
        END AS cancel
    FROM {ranged("inputs")} i
    LEFT JOIN {ranged(KEYS_TABLE)} k ON k.row_number = i.row_number
    LEFT JOIN {ranged("rejects")} r ON r.row_number = i.row_number
    LEFT JOIN {ranged("duplicates")} d ON d.row_number = i.row_number
    {skipped_join if shape.skips else ""}
    LEFT JOIN jobs ON jobs.job_no = k.job_no
    {acked_join if join_acked else ""}
    LEFT JOIN ie ON ie.recipient = k.recipient
    {"LEFT JOIN cancels c ON c.message_id = k.message_id" if shape.cancels else ""}
    """


def _statistics_columns(schema: pa.Schema) -> list[str]:
    """The columns whose min/max statistics are written: the row number, the low-cardinality
    columns and every non-string one (the timestamps). Statistics of unique strings (e-mails,
    recipients, message ids) let a reader skip no row group, and cost about a quarter of the
    writer's CPU (10M rows: ~11 s against ~8 s)."""
    return [
        f.name
        for f in schema
        if f.name in _DICTIONARY_COLUMNS
        or not (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
    ]


def _copy(
    cur: duckdb.DuckDBPyConnection, state: RunState, out: Path, include_profile: bool
) -> None:
    """Write the results rows to ``out``, one row-number range at a time, through one Parquet
    writer (atomically: tmp, then rename).

    Why not one ``COPY … ORDER BY``: the joins of every input row and the 10M-row sort under
    them pinned enough memory per thread that it had to run on one thread (34.8 s at 10M).
    Per range the joins build on the range only, on every thread. DuckDB's ``COPY`` cannot
    append to a file, so pyarrow's writer writes the ranges. The rows are put in order in
    Arrow (:func:`~bulkbatch.stages.row_order.in_row_order`), which needs the joins to probe
    with the scan of ``inputs``: with DuckDB's build-side optimizer on, it built the hash table on ``inputs``
    and probed with the keys (in job order), as their estimates were alike.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    _drop_old_scratch(cur)
    with scratch_database(cur, state.run_dir / SCRATCH_FILE, SCRATCH_DB):
        shape = _shape(cur, state, include_profile, _build_keys(cur))
        rows = scaled_to_cap(cur, RESULT_ROWS)
        for halving in range(RANGE_HALVINGS + 1):
            try:
                _write_ranges(cur, shape, tmp, rows)
                break
            except duckdb.OutOfMemoryException:
                if halving == RANGE_HALVINGS or rows < 2:
                    raise
                rows //= 2  # the writer starts tmp again from its first row
    tmp.replace(out)


def _write_ranges(cur: duckdb.DuckDBPyConnection, shape: _Shape, tmp: Path, rows: int) -> None:
    """The results rows written to ``tmp``, ``rows`` input rows at a time (see :func:`_copy`);
    ``KEYS_TABLE`` is built."""
    ranges = key_ranges(cur, "inputs", "row_number", rows)
    queries = [_select_sql(shape, f"row_number >= {lo} AND row_number < {hi}") for lo, hi in ranges]
    schema = cur.sql(f"SELECT * FROM ({_select_sql(shape, 'false')})").to_arrow_table().schema
    dictionary = [c for c in schema.names if c in _DICTIONARY_COLUMNS]
    with (
        memory_share(cur, RESULTS_SHARE, RESULTS_FIXED),
        optimizer_disabled(cur, "build_side_probe_side"),
        pq.ParquetWriter(
            tmp,
            schema,
            use_dictionary=dictionary,
            write_statistics=_statistics_columns(schema),
            **ARROW_PARQUET,
        ) as writer,
        # Closed here, not when collected: a write that fails stops the query at once.
        contextlib.closing(prefetched_queries(cur, queries)) as batches,
    ):
        for table in in_row_order(batches, [lo for lo, _ in ranges]):
            writer.write_table(table)


def write_results(
    con: duckdb.DuckDBPyConnection,
    state: RunState,
    out: Path | None = None,
    *,
    include_profile: bool = False,
    strict: bool = True,
) -> ResultsInfo:
    """Write ``results.parquet`` and ``summary.json`` for the run; check the accounting.

    :param out: where to write the Parquet file (default ``<run dir>/results.parquet``)
    :param include_profile: keep every input column, not only the key columns
    :param strict: raise :class:`AccountingError` when the counts do not add up
    """
    started = time.monotonic()
    # The stage streams every row through Arrow buffers DuckDB gets from malloc: give back
    # what the stages before it left free, and keep large blocks out of glibc's heaps (at
    # 10M inside a send, 139-212 MiB free there at the stage's peak; see bulkbatch.heap).
    give_back()
    # The caller's connection itself (not a cursor), so that interrupting it stops the COPY.
    cur = con
    out = out or state.run_dir / "results.parquet"
    _copy(cur, state, out, include_profile)
    tally = accounting.tally(cur, out)
    outcome, statuses, delivery = tally.outcomes, tally.statuses, tally.delivery
    unaccounted = tally.unaccounted
    counts = {
        "input_rows": int(cur.execute("SELECT count(*) FROM inputs").fetchall()[0][0]),
        "ingested": outcome.get("ingested", 0),
        "duplicates": outcome.get("duplicate", 0),
        "rejected": outcome.get("rejected", 0),
        "skipped": outcome.get("skipped", 0),
        "filtered": outcome.get("filtered", 0),
        "canceled": outcome.get("canceled", 0),
        "unsent": outcome.get("unsent", 0),
    }
    problems = accounting.problems(cur, state, counts, unaccounted, statuses)
    info = ResultsInfo(
        path=out,
        summary_path=state.run_dir / "summary.json",
        statuses=statuses,
        delivery=delivery,
        rejected_by_reason=tally.rejected_by_reason,
        accounting_ok=not problems,
        problems=tuple(problems),
        seconds=time.monotonic() - started,
        **counts,
    )
    write_summary(state, info)
    if problems and strict:
        raise AccountingError(
            "The accounting of run "
            f"{state.run_id} does not add up: {'; '.join(problems)}. results.parquet was "
            f"written to {out} for inspection, but do not trust it; report this as a bug."
        )
    return info


def summary_dict(state: RunState, info: ResultsInfo) -> dict[str, Any]:
    """The content of ``summary.json``."""
    elapsed = sum(state.timings.values())
    return {
        "run_id": state.run_id,
        "run_dir": str(state.run_dir.resolve()),
        "campaign": state.campaign,
        "shard": state.plan.get("shard"),
        "replayed": state.replayed,
        "already_sent": state.replayed or state.repeats > 0,
        "canceled": state.canceled is not None,
        "results": str(info.path.resolve()),
        "counts": {
            "input_rows": info.input_rows,
            "ingested": info.ingested,
            "duplicates": info.duplicates,
            "rejected": info.rejected,
            "skipped": info.skipped,
            "filtered": info.filtered,
            "canceled": info.canceled,
            "unsent": info.unsent,
        },
        "accounting_ok": info.accounting_ok,
        "problems": list(info.problems),
        "statuses": info.statuses,
        "delivery": info.delivery,
        "rejected_by_reason": info.rejected_by_reason,
        "jobs": [
            {
                "job_id": j.job_id,
                "status": j.status,
                "users": j.users,
                "received": j.received,
                "enqueued": j.enqueued,
                "failures": j.failures,
            }
            for j in state.jobs
        ],
        "timings": state.timings,
        "cpu_seconds": state.cpu,
        "elapsed_seconds": round(elapsed, 3),
        "client": state.progress.get("client", {}),
    }


def write_summary(state: RunState, info: ResultsInfo) -> None:
    atomic_write_bytes(
        info.summary_path, orjson.dumps(summary_dict(state, info), option=orjson.OPT_INDENT_2)
    )
