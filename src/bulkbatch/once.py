"""A sent-once ledger across runs, for scheduled sends: ``--once-per KEY``.

A nightly job that sends "welcome" to everyone in today's export must not welcome
yesterday's people again. With ``--once-per welcome-2026``, each run:

1. after planning, moves every user whose recipient the ledger already holds under that key
   into the ``skipped`` table (outcome ``skipped`` in the results) and re-cuts the batches;
2. after each job has run, records its users in the ledger (idempotently: a resumed run
   records nobody twice).

The ledger is a small DuckDB file, by default ``once-per.duckdb`` next to the run
directories (``runs/once-per.duckdb``), shared by every run that uses a key. It is attached
only for the moment it is read or written, so concurrent runs take turns.
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb

from bulkbatch.errors import StateError

__all__ = ["DEFAULT_LEDGER_NAME", "exclude_sent", "record_sent"]

DEFAULT_LEDGER_NAME = "once-per.duckdb"
_ALIAS = "once_ledger"


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _attach(cur: duckdb.DuckDBPyConnection, ledger: Path, *, read_only: bool) -> None:
    mode = " (READ_ONLY)" if read_only else ""
    deadline = time.monotonic() + 30
    while True:
        try:
            cur.execute(f"ATTACH {_lit(str(ledger))} AS {_ALIAS}{mode}")
            return
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise StateError(
                    f"Cannot open the --once-per ledger {ledger}: {exc}. Another bulkbatch run "
                    "may hold it; retry when it is done."
                ) from None
            time.sleep(0.2)


def exclude_sent(con: duckdb.DuckDBPyConnection, ledger: Path, key: str, batch_size: int) -> int:
    """Move users already sent under ``key`` from ``plan`` to ``skipped``; re-cut batches.

    Returns how many were skipped.
    """
    cur = con.cursor()
    cur.execute(
        "CREATE OR REPLACE TABLE skipped (row_number BIGINT, recipient VARCHAR, reason VARCHAR)"
    )
    if not ledger.exists():
        return 0
    _attach(cur, ledger, read_only=True)
    try:
        has_table = cur.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND table_name = 'sent'",
            [_ALIAS],
        ).fetchall()[0][0]
        if has_table:
            cur.execute(
                f"""
                INSERT INTO skipped
                SELECT p.row_number, p.recipient,
                       'sent earlier under --once-per ' || s.key || ' by run ' || s.run_id
                FROM plan p JOIN {_ALIAS}.sent s ON s.recipient = p.recipient AND s.key = ?
                """,
                [key],
            )
    finally:
        cur.execute(f"DETACH {_ALIAS}")
    skipped = int(cur.execute("SELECT count(*) FROM skipped").fetchall()[0][0])
    if skipped:
        _recut(cur, batch_size)
    return skipped


def _recut(cur: duckdb.DuckDBPyConnection, batch_size: int) -> None:
    """Renumber jobs and batches after rows left the plan, keeping the documented layout:
    batches contiguous from 0, never spanning jobs, at most ``batch_size`` users each."""
    cur.execute(
        f"""
        CREATE OR REPLACE TABLE plan AS
        WITH kept AS (
            SELECT * FROM plan WHERE row_number NOT IN (SELECT row_number FROM skipped)
        ),
        numbered AS (
            SELECT *,
                   dense_rank() OVER (ORDER BY job_no) - 1 AS new_job,
                   (row_number() OVER (PARTITION BY job_no ORDER BY batch_no, row_number) - 1)
                       // {int(batch_size)} AS local_batch
            FROM kept
        ),
        per_job AS (
            SELECT new_job, max(local_batch) + 1 AS n FROM numbered GROUP BY new_job
        ),
        offsets AS (
            SELECT new_job,
                   coalesce(sum(n) OVER (ORDER BY new_job ROWS BETWEEN UNBOUNDED PRECEDING
                                         AND 1 PRECEDING), 0) AS first_batch
            FROM per_job
        )
        SELECT numbered.row_number, numbered.recipient, numbered.new_job::INTEGER AS job_no,
               (offsets.first_batch + numbered.local_batch)::INTEGER AS batch_no,
               numbered.user_json
        FROM numbered JOIN offsets USING (new_job)
        ORDER BY batch_no, row_number
        """
    )


def record_sent(
    con: duckdb.DuckDBPyConnection,
    ledger: Path,
    key: str,
    run_id: str,
    job_no: int,
    job_id: str,
) -> int:
    """Record the users of one job that has run (idempotent). Returns how many were new."""
    cur = con.cursor()
    ledger.parent.mkdir(parents=True, exist_ok=True)
    _attach(cur, ledger, read_only=False)
    try:
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {_ALIAS}.sent (key VARCHAR, recipient VARCHAR, "
            "run_id VARCHAR, job_id VARCHAR, sent_at TIMESTAMP)"
        )
        cur.execute(
            f"""
            INSERT INTO {_ALIAS}.sent
            SELECT ?, p.recipient, ?, ?, current_timestamp
            FROM plan p
            WHERE p.job_no = ?
              AND p.recipient NOT IN (
                  SELECT recipient FROM ingest_errors WHERE recipient IS NOT NULL)
              AND p.recipient NOT IN (SELECT recipient FROM {_ALIAS}.sent WHERE key = ?)
            """,
            [key, run_id, job_id, job_no, key],
        )
        added = cur.execute(
            f"SELECT count(*) FROM {_ALIAS}.sent WHERE key = ? AND run_id = ? AND job_id = ?",
            [key, run_id, job_id],
        ).fetchall()[0][0]
    finally:
        cur.execute(f"DETACH {_ALIAS}")
    return int(added)
