"""The results stage at scale, on a run database built directly in SQL (no send).

At 10M rows with the default 320MB budget, the final join + sort + COPY ran out of memory on
two threads after the whole send had succeeded (found by the 10M benchmark). The same ratio
of rows to budget is reproduced here with 1M synthetic rows and a 112MB budget, so the test
takes seconds. The same builder at 10M is how the results stage is timed (bench/RESULTS.md).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bulkbatch.db import MEMORY_LIMIT_ENV
from bulkbatch.stages import results
from bulkbatch.stages.results import write_results
from bulkbatch.state import JobState, RunState, ensure_ledger, open_run_db

ROWS = 1_000_000
JOBS = 64
DUPLICATE_EVERY = 50  # 2 % duplicates, as in the benchmark audiences


def _build(run_dir: Path, rows: int = ROWS) -> RunState:
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
            FROM range(1, {rows + 1}) t(i)
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
    # A finished send: with it unfinished, rows of unacknowledged batches would be 'unsent'.
    state.stages = dict.fromkeys(("load", "plan", "send", "track"), 0.0)
    return state


@pytest.mark.parametrize("cap", ["64MB", "112MB"])
def test_results_of_1m_rows_fit_a_small_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cap: str
) -> None:
    """DuckDB's part of the cap while the ranges are written is a fixed part plus a share
    (``results.RESULTS_FIXED``, ``RESULTS_SHARE``): a share alone small enough for 10M under
    the default cap runs out under small caps (0.4 of 64MB did, before any share was cut)."""
    run_dir = tmp_path / "run"
    state = _build(run_dir)
    monkeypatch.setenv(MEMORY_LIMIT_ENV, cap)
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


def _tight_share(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Under 112MB on one thread, a share of the cap that the default ranges (87,500 rows)
    run out of and ranges half as large fit. Measured: 0.17 needed two halvings, 0.18-0.21
    one, 0.22 none. On two threads the need moves from run to run (the threads race for the
    share), and 0.28 needed one halving or none. Returns the range sizes written, in order."""
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "112MB")
    monkeypatch.setattr(results, "RESULTS_FIXED", 0)
    monkeypatch.setattr(results, "RESULTS_SHARE", 0.195)
    tried: list[int] = []
    real = results._write_ranges

    def spy(cur, shape, tmp, rows):  # type: ignore[no-untyped-def]
        tried.append(rows)
        return real(cur, shape, tmp, rows)

    monkeypatch.setattr(results, "_write_ranges", spy)
    return tried


def test_ranges_that_run_out_of_their_share_are_written_again_in_halves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a small cap the share's fixed part is tight, and a range could run out at random:
    the chaos benchmark's 1M run directory under 96MB did in six results runs of 24. The
    ranges are then written again, each half as large, into a file started afresh: every
    input row once, the accounting whole. (The error reached the stage as pyarrow's
    ``OSError`` when the join ran out while its Arrow stream was read, so nothing retried.)"""
    state = _build(tmp_path / "run")
    tried = _tight_share(monkeypatch)
    con = open_run_db(state.run_dir)
    con.execute("SET threads = 1")  # see _tight_share
    try:
        info = write_results(con, state, strict=True)
    finally:
        con.close()
    assert len(tried) >= 2, tried
    assert all(smaller == larger // 2 for larger, smaller in itertools.pairwise(tried)), tried
    assert info.accounting_ok and info.input_rows == ROWS
    rows = pq.read_table(info.path, columns=["row_number"])["row_number"]
    assert len(rows) == ROWS and pc.count_distinct(rows).as_py() == ROWS


def test_ranges_that_never_fit_end_in_duckdb_s_memory_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no halvings left the error is DuckDB's ``OutOfMemoryException`` (which the
    pipeline turns into its one line naming ``BULKBATCH_MEMORY_LIMIT``), not the ``OSError``
    pyarrow's stream reader raised it as, and no partial file is left as the results."""
    state = _build(tmp_path / "run")
    tried = _tight_share(monkeypatch)
    monkeypatch.setattr(results, "RANGE_HALVINGS", 0)
    con = open_run_db(state.run_dir)
    con.execute("SET threads = 1")  # see _tight_share
    try:
        with pytest.raises(duckdb.OutOfMemoryException, match="Out of Memory Error"):
            write_results(con, state, strict=True)
    finally:
        con.close()
    assert len(tried) == 1
    assert not (state.run_dir / "results.parquet").exists()


def _write(state: RunState) -> pq.ParquetFile:
    con = open_run_db(state.run_dir)
    try:
        info = write_results(con, state, strict=True)
    finally:
        con.close()
    return pq.ParquetFile(info.path)


def test_results_have_the_same_columns_with_delivery_data_or_without(tmp_path: Path) -> None:
    """Without delivery data the keys table is not copied to add NULL columns (at 10M that
    copy took 7.6 of 55 s); the file's schema must not notice."""
    state = _build(tmp_path / "run", rows=1_000)
    without = _write(state)
    assert without.read(columns=["delivery_status"]).column(0).null_count == 1_000
    con = open_run_db(state.run_dir)
    try:
        message_id = con.execute("SELECT min(message_id) FROM user_pages").fetchall()[0][0]
        con.execute(
            "INSERT INTO messages (message_id, delivery_status, enqueued, delivered) "
            "VALUES (?, 'DELIVERED', 1700000000000, 1700000005000)",
            [message_id],
        )
    finally:
        con.close()
    with_delivery = _write(state)
    assert with_delivery.schema_arrow == without.schema_arrow
    table = with_delivery.read(columns=["message_id", "delivery_status", "delivered_at"])
    delivered = table.filter(pc.equal(table["delivery_status"], "DELIVERED"))
    assert delivered["message_id"].to_pylist() == [message_id]
    assert delivered["delivered_at"].to_pylist()[0] is not None
