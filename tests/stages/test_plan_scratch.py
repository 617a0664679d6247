"""Where the plan's two 10M-row scratch tables live: a database file in the run directory
while the plan runs (TEMP tables, whose blocks DuckDB compressed again each time a later
statement read them back, without a run directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from bulkbatch.errors import StateError
from bulkbatch.stages.load import LoadOptions, load_inputs
from bulkbatch.stages.plan import PlanOptions, build_plan
from bulkbatch.stages.plan import build as build_module

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "recipients_sample.csv"
OPTIONS = PlanOptions(batch_size=97, max_job_size=500)


def _planned(run_dir: Path | None, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any]]:
    """The plan of the sample (row by row), and what the scratch tables were mid-plan."""
    seen: list[Any] = []
    dedupe = build_module._dedupe

    def spy(con: duckdb.DuckDBPyConnection, options: PlanOptions) -> None:
        dedupe(con, options)
        for database, table, temporary in con.execute(
            "SELECT database_name, table_name, temporary FROM duckdb_tables() "
            "WHERE table_name = '_bb_keys'"
        ).fetchall():
            methods = {
                r[0]
                for r in con.execute(
                    "SELECT DISTINCT compression FROM "
                    f"pragma_storage_info('{database}.{table}') WHERE segment_type <> 'VALIDITY'"
                ).fetchall()
            }
            seen.append((database, temporary, methods))

    monkeypatch.setattr(build_module, "_dedupe", spy)
    con = duckdb.connect()
    try:
        load_inputs(con, LoadOptions((str(SAMPLE),)))
        build_plan(con, OPTIONS, run_dir)
        rows = con.execute(
            "SELECT row_number, job_no, batch_no, user_json FROM plan ORDER BY row_number"
        ).fetchall()
        leftover = con.execute(
            "SELECT database_name FROM duckdb_databases() WHERE database_name = ?",
            [build_module.SCRATCH_DB],
        ).fetchall()
    finally:
        con.close()
    assert not leftover
    return rows, seen


def test_the_scratch_tables_live_in_a_file_that_is_gone_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    rows, seen = _planned(run_dir, monkeypatch)
    assert [s[:2] for s in seen] == [(build_module.SCRATCH_DB, False)]
    assert seen[0][2] <= {"Uncompressed", "Constant"}, seen[0][2]
    assert not list(run_dir.glob(build_module.SCRATCH_FILE + "*"))
    # the same plan as with TEMP tables, row by row
    temp_rows, temp_seen = _planned(None, monkeypatch)
    assert [s[:2] for s in temp_seen] == [("temp", True)]
    assert rows == temp_rows and len(rows) > 1_000


def test_a_scratch_file_a_killed_plan_left_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    left = duckdb.connect(str(run_dir / build_module.SCRATCH_FILE))
    left.execute("CREATE TABLE _bb_keys AS SELECT 1 AS row_number")
    left.close()
    rows, _ = _planned(run_dir, monkeypatch)
    assert len(rows) > 1_000
    assert not list(run_dir.glob(build_module.SCRATCH_FILE + "*"))


def test_a_failing_plan_deletes_its_scratch_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> None:
        raise duckdb.IOException("disk full")

    monkeypatch.setattr(build_module, "_write_plan", broken)
    con = duckdb.connect()
    try:
        load_inputs(con, LoadOptions((str(SAMPLE),)))
        with pytest.raises(Exception, match="disk full"):
            build_plan(con, OPTIONS, tmp_path / "run")
        # the search path is back: a table of the scratch database no longer resolves
        assert con.execute("SELECT current_setting('search_path')").fetchall() == [("",)]
    finally:
        con.close()
    assert not list((tmp_path / "run").glob(build_module.SCRATCH_FILE + "*"))


def test_a_scratch_file_that_cannot_be_made_is_one_clear_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / build_module.SCRATCH_FILE).mkdir(parents=True)
    con = duckdb.connect()
    try:
        load_inputs(con, LoadOptions((str(SAMPLE),)))
        with pytest.raises(StateError, match=r"scratch database .*\.plan-scratch\.duckdb"):
            build_plan(con, OPTIONS, run_dir)
    finally:
        con.close()


def test_the_review_files_leave_no_table_behind(tmp_path: Path) -> None:
    """rejects.parquet and duplicates.parquet take their input columns from one TEMP table:
    each row is the table's row joined with its input row, and the TEMP table is gone."""
    con = duckdb.connect()
    try:
        load_inputs(con, LoadOptions((str(SAMPLE),)))
        build_plan(con, OPTIONS, tmp_path / "run")
        left = con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE table_name LIKE '\\_bb%' ESCAPE '\\'"
        ).fetchall()
        for table, keys in (("rejects", "reason"), ("duplicates", "kept_row_number")):
            path = str(tmp_path / "run" / f"{table}.parquet")
            written = con.execute(
                f"SELECT row_number, {keys}, email FROM read_parquet(?) ORDER BY row_number",
                [path],
            ).fetchall()
            expected = con.execute(
                f"SELECT t.row_number, t.{keys}, i.email FROM {table} t "
                "JOIN inputs i USING (row_number) ORDER BY t.row_number"
            ).fetchall()
            assert written == expected and written, table
    finally:
        con.close()
    assert left == []
