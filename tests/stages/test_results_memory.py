"""The results stage stays within DuckDB's memory budget at scale.

At 10M rows with the default 320MB budget, the final join + sort + COPY ran out of memory on
two threads after the whole send had succeeded (found by the 10M benchmark). The same ratio
of rows to budget is reproduced here with 1M synthetic rows and a 112MB budget: the run
database is built directly in SQL (no send), so the test takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bulkbatch.db import MEMORY_LIMIT_ENV
from bulkbatch.stages.results import write_results
from bulkbatch.state import JobState, RunState, ensure_ledger, open_run_db

ROWS = 1_000_000
JOBS = 64
DUPLICATE_EVERY = 50  # 2 % duplicates, as in the benchmark audiences


def _build(run_dir: Path) -> RunState:
    run_dir.mkdir()
    con = open_run_db(run_dir)
    try:
        ensure_ledger(con)
        con.execute(
            f"""
            CREATE TABLE inputs AS SELECT i AS row_number, 'audience.parquet' AS source,
                'u' || lpad(i::VARCHAR, 9, '0') AS user_id,
                'person.' || i || '@example.com' AS email,
                '+1555' || lpad(i::VARCHAR, 7, '0') AS phone_number
            FROM range(1, {ROWS + 1}) t(i)
            """
        )
        con.execute(
            f"""
            CREATE TABLE duplicates AS SELECT row_number, user_id AS recipient,
                row_number - 1 AS kept_row_number
            FROM inputs WHERE row_number % {DUPLICATE_EVERY} = 0
            """
        )
        con.execute("CREATE TABLE rejects (row_number BIGINT, reason_code VARCHAR, reason VARCHAR)")
        con.execute(
            f"""
            CREATE TABLE plan AS SELECT row_number, user_id AS recipient,
                (hash(user_id) % {JOBS})::INTEGER AS job_no, 0 AS batch_no,
                '{{"recipient":"' || user_id || '"}}' AS user_json
            FROM inputs WHERE row_number % {DUPLICATE_EVERY} <> 0
            """
        )
        con.execute(
            """
            INSERT INTO user_pages SELECT job_no, 0, recipient,
                '1-' || md5(recipient) AS message_id, 'ENQUEUED'
            FROM plan
            """
        )
    finally:
        con.close()
    state = RunState(run_dir=run_dir, run_id="scaled")
    state.plan = {"key_columns": ["user_id", "email"]}
    state.jobs = [
        JobState(job_no=n, job_id=f"1-job-{n}", run=True, paged=True) for n in range(JOBS)
    ]
    return state


def test_results_of_1m_rows_fit_a_112mb_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    state = _build(run_dir)
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "112MB")
    con = open_run_db(run_dir)
    try:
        info = write_results(con, state, strict=False)
    finally:
        con.close()
    assert info.input_rows == ROWS
    assert info.duplicates == ROWS // DUPLICATE_EVERY
    assert info.ingested == ROWS - ROWS // DUPLICATE_EVERY
    assert info.statuses == {"ENQUEUED": info.ingested}
    assert pq.read_metadata(info.path).num_rows == ROWS
