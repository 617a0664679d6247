"""``recut_plan``: after rows leave ``plan``, the rest is renumbered in place, in order, as a
fresh cut of the same rows would number it; a failure leaves ``plan`` as it was."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkbatch.stages.plan.recut import recut_plan


def _plan(con: duckdb.DuckDBPyConnection, jobs: list[int], batch_size: int) -> None:
    """``plan`` with ``jobs[j]`` users in job j, cut in batches of ``batch_size``."""
    rows, job_nos, batch_nos, batch = [], [], [], 0
    for job, n in enumerate(jobs):
        for i in range(n):
            rows.append(len(rows) + 1)
            job_nos.append(job)
            batch_nos.append(batch + i // batch_size)
        batch += -(-n // batch_size)
    table = pa.table(
        {
            "row_number": pa.array(rows, pa.int64()),
            "recipient": pa.array([f"r{r}" for r in rows], pa.string()),
            "job_no": pa.array(job_nos, pa.int32()),
            "batch_no": pa.array(batch_nos, pa.int32()),
            "user_json": pa.array([f'{{"recipient":"r{r}"}}' for r in rows], pa.string()),
        }
    )
    con.register("t", table)
    con.execute("CREATE OR REPLACE TABLE plan AS SELECT * FROM t ORDER BY batch_no, row_number")
    con.unregister("t")


def _reference(stored: list[tuple[int, int, int]], batch_size: int) -> list[tuple[int, int, int]]:
    """(row_number, job_no, batch_no) of the kept rows, cut afresh in Python."""
    out, batch, new_job, last_job, pos = [], -1, -1, None, 0
    for row, job, _ in stored:
        if job != last_job:
            new_job, last_job, pos = new_job + 1, job, 0
        if pos % batch_size == 0:
            batch += 1
        out.append((row, new_job, batch))
        pos += 1
    return out


@settings(max_examples=60, deadline=None)
@given(
    jobs=st.lists(st.integers(1, 30), min_size=1, max_size=5),
    batch_size=st.integers(1, 7),
    data=st.data(),
)
def test_recut_numbers_in_place_in_order_like_a_fresh_cut(jobs, batch_size, data) -> None:
    con = duckdb.connect()
    _plan(con, jobs, batch_size)
    total = sum(jobs)
    gone = data.draw(st.sets(st.integers(1, total), max_size=total))
    con.register("g", pa.table({"row_number": pa.array(sorted(gone), pa.int64())}))
    con.execute("CREATE TABLE skipped AS SELECT * FROM g")
    before = con.execute("SELECT row_number, job_no, batch_no FROM plan").fetchall()
    recut_plan(con.cursor(), batch_size)
    kept = [r for r in before if r[0] not in gone]
    stored = con.execute("SELECT row_number, job_no, batch_no FROM plan").fetchall()
    assert stored == _reference(kept, batch_size)  # the table's own order, no ORDER BY
    users = con.execute("SELECT row_number, user_json FROM plan ORDER BY row_number").fetchall()
    assert users == [(r, f'{{"recipient":"r{r}"}}') for r, _, _ in kept]


def test_a_recut_that_fails_leaves_the_plan_as_it_was() -> None:
    con = duckdb.connect()
    _plan(con, [5, 4], 2)
    before = con.execute("SELECT * FROM plan").fetchall()
    with pytest.raises(duckdb.Error):  # no skipped table: the first statement fails
        recut_plan(con.cursor(), 2)
    assert con.execute("SELECT * FROM plan").fetchall() == before
    con.execute("CREATE TABLE skipped AS SELECT 3::BIGINT AS row_number")
    recut_plan(con.cursor(), 2)  # no transaction was left open
    assert con.execute("SELECT count(*) FROM plan").fetchall() == [(8,)]
