"""The results stage's accounting check catches every way the partition can break.

A finished run on the sample is tampered with in its run database, then
``bulkbatch.results`` rewrites results.parquet: the file is still written, and
:class:`AccountingError` names how many rows are misplaced.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest

import bulkbatch
from bulkbatch.errors import AccountingError, ServerError, StateError
from bulkbatch.stages import results, row_order
from bulkbatch.state import open_run_db
from tests.support import SAMPLE


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    run_dir = tmp_path_factory.mktemp("results") / "run"
    with bulkbatch.Emulator() as emu:
        bulkbatch.send(
            SAMPLE,
            event="welcome",
            settings=bulkbatch.Settings(base_url=emu.url, poll_interval=0.02),
            run_dir=run_dir,
        )
    yield run_dir


@pytest.fixture
def run_dir(finished: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def _sql(run_dir: Path, *statements: str) -> None:
    con = open_run_db(run_dir)
    try:
        for sql in statements:
            con.execute(sql)
    finally:
        con.close()


def _results_tables(run_dir: Path) -> set[str]:
    """The results stage's scratch tables (``_results*``) left in the run database."""
    con = open_run_db(run_dir, read_only=True)
    try:
        tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    finally:
        con.close()
    return {t for t in tables if t.startswith("_results")}


def test_an_untouched_run_adds_up_and_leaves_no_work_tables(run_dir: Path) -> None:
    info = bulkbatch.results(run_dir)
    assert info.accounting_ok and not info.problems
    assert info.input_rows == info.ingested + info.duplicates + info.rejected == 2_000
    assert pq.read_metadata(run_dir / "results.parquet").num_rows == 2_000
    assert _results_tables(run_dir) == set()


@pytest.mark.parametrize(
    ("tamper", "misplaced"),
    [
        # a planned row is also a reject: placed twice
        ("INSERT INTO rejects SELECT row_number, 'bad_email', 'x' FROM plan LIMIT 3", 3),
        # a row is in no table at all: no outcome
        ("DELETE FROM rejects WHERE row_number IN (SELECT row_number FROM rejects LIMIT 2)", 2),
        # a duplicate that names a row that is not an input row
        ("INSERT INTO duplicates VALUES (999999, 'nobody', 1)", 1),
    ],
)
def test_a_broken_partition_is_reported_with_its_count(
    run_dir: Path, tamper: str, misplaced: int
) -> None:
    _sql(run_dir, tamper)
    with pytest.raises(AccountingError, match=f"{misplaced} input rows are not in exactly one"):
        bulkbatch.results(run_dir)
    # The file is still written for inspection.
    assert pq.read_metadata(run_dir / "results.parquet").num_rows == 2_000


def test_ingested_rows_must_match_what_courier_received(run_dir: Path) -> None:
    # One planned user lost its place in the plan: 1 row unplaced, and ingested != received.
    _sql(run_dir, "DELETE FROM plan WHERE row_number = (SELECT min(row_number) FROM plan)")
    with pytest.raises(AccountingError) as info:
        bulkbatch.results(run_dir)
    text = str(info.value)
    assert "1 input rows are not in exactly one" in text
    assert "Courier reports" in text and "users received" in text


@pytest.mark.parametrize("include_profile", [False, True], ids=["keys", "profile"])
def test_results_written_in_many_ranges_match_one_range(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, include_profile: bool
) -> None:
    """The file is written one row-number range at a time, and the pages join runs over
    ranges of whole jobs: tiny ranges (and a range boundary inside every job) must give the
    same rows, in the same order, with the same schema as one range of each."""
    one = bulkbatch.results(run_dir, tmp_path / "one.parquet", include_profile=include_profile)
    monkeypatch.setattr(results, "RESULT_ROWS", 7)
    monkeypatch.setattr(results, "PAGES_JOIN_ROWS", 1)
    queries: list[int] = []
    real = results.prefetched_queries

    def counted(con, sqls, *args, **kwargs):  # type: ignore[no-untyped-def]
        queries.append(len(sqls))
        return real(con, sqls, *args, **kwargs)

    monkeypatch.setattr(results, "prefetched_queries", counted)
    many = bulkbatch.results(run_dir, tmp_path / "many.parquet", include_profile=include_profile)
    assert (one.ingested, one.duplicates, one.rejected) == (
        many.ingested,
        many.duplicates,
        many.rejected,
    )
    assert one.duplicates and one.rejected and one.ingested  # every kind of row is there
    whole, ranged = pq.read_table(one.path), pq.read_table(many.path)
    assert ranged.schema == whole.schema
    assert ranged.equals(whole)
    assert ranged["row_number"].to_pylist() == list(range(1, 2_001))
    assert queries == [-(-2_000 // 7)]  # really written in ranges


def test_a_real_runs_ranges_reach_the_writer_in_scan_order(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The joins of a range probe with the scan of ``inputs`` (its row order), so no range of
    a real run needs the sort of ``row_order.in_row_order`` (tests/stages/test_row_order.py): with
    DuckDB's build-side optimizer on, the keys were the probe side and the rows came out in
    job order."""
    _sql(
        run_dir,  # the pages in another order than the input's rows
        "CREATE OR REPLACE TABLE user_pages AS SELECT * FROM user_pages ORDER BY md5(recipient)",
    )

    def never_sorted(batches: list[object]) -> list[object]:
        assert not batches, f"a range needed the sort ({len(batches)} batches held)"
        return []

    monkeypatch.setattr(row_order, "_sorted", never_sorted)
    monkeypatch.setattr(results, "RESULT_ROWS", 300)
    info = bulkbatch.results(run_dir)
    assert info.accounting_ok
    assert pq.read_table(info.path)["row_number"].to_pylist() == list(range(1, 2_001))


def test_the_scratch_tables_stay_out_of_the_run_database(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pages join and the keys table are scratch work: they live in a database file of
    their own while the ranges run (not the run database, where compressing them cost ~0.8 s
    of each 1.7 s pages-join range at 10M; not TEMP tables, whose blocks DuckDB compressed
    again each time the ranges evicted them), written with ZSTD (uncompressed, at 10M inside a
    send, writing the 783 MiB took 3-5 s more), and the file is gone after.

    The setting is what is checked: a table this small stays in memory until a checkpoint,
    where ``pragma_storage_info`` calls every string segment ``Uncompressed`` whatever the
    setting."""
    seen: list[tuple[str, str, bool]] = []
    written_with: list[str] = []
    real, real_join = results.prefetched_queries, results._join_pages

    def spy(con, queries, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.extend(
            con.execute(
                "SELECT database_name, table_name, temporary FROM duckdb_tables() "
                "WHERE starts_with(table_name, '_results') OR database_name = ?",
                [results.SCRATCH_DB],
            ).fetchall()
        )
        assert (run_dir / results.SCRATCH_FILE).exists()
        return real(con, queries, *args, **kwargs)

    def join_spy(cur, ranges):  # type: ignore[no-untyped-def]
        written_with.append(
            cur.execute("SELECT current_setting('force_compression')").fetchone()[0]
        )
        return real_join(cur, ranges)

    monkeypatch.setattr(results, "prefetched_queries", spy)
    monkeypatch.setattr(results, "_join_pages", join_spy)
    assert bulkbatch.results(run_dir).accounting_ok
    assert seen == [(results.SCRATCH_DB, "keys", False)]
    assert [w.lower() for w in written_with] == ["zstd"]
    assert not (run_dir / results.SCRATCH_FILE).exists()
    assert not list(run_dir.glob(results.SCRATCH_FILE + "*"))


def test_a_scratch_file_a_killed_run_left_is_replaced(run_dir: Path) -> None:
    """A results run killed midway leaves its scratch database behind; the next one starts
    from a fresh file (never from the old tables) and deletes it after."""
    left = duckdb.connect(str(run_dir / results.SCRATCH_FILE))
    left.execute("CREATE TABLE keys AS SELECT 1 AS row_number")
    left.close()
    (run_dir / (results.SCRATCH_FILE + ".wal")).write_bytes(b"not a wal")
    assert bulkbatch.results(run_dir).accounting_ok
    assert not list(run_dir.glob(results.SCRATCH_FILE + "*"))


def test_a_failing_stage_deletes_its_scratch_file(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(batches: object, starts: object) -> object:
        raise OSError("disk full")

    monkeypatch.setattr(results, "in_row_order", broken)
    with pytest.raises(OSError, match="disk full"):
        bulkbatch.results(run_dir)
    assert not list(run_dir.glob(results.SCRATCH_FILE + "*"))
    assert _results_tables(run_dir) == set()


def test_a_scratch_file_that_cannot_be_made_is_one_clear_error(run_dir: Path) -> None:
    """Something else where the scratch database goes: one StateError naming it (it was an
    unexpected IsADirectoryError), and results.parquet left as it was."""
    before = (run_dir / "results.parquet").read_bytes()
    (run_dir / results.SCRATCH_FILE).mkdir()
    with pytest.raises(StateError, match=r"scratch database .*\.results-scratch\.duckdb"):
        bulkbatch.results(run_dir)
    assert (run_dir / "results.parquet").read_bytes() == before


def test_statistics_are_kept_only_where_they_can_prune(run_dir: Path) -> None:
    """Min/max statistics of unique strings (e-mails, recipients, message ids) prune nothing
    and cost about a quarter of the writer's CPU; the row number and the outcome columns
    keep theirs, so readers can still skip row groups by them."""
    info = bulkbatch.results(run_dir)
    meta = pq.read_metadata(info.path)
    names = meta.schema.names
    group = meta.row_group(0)
    has_stats = {names[i]: group.column(i).is_stats_set for i in range(meta.num_columns)}
    for kept in ("row_number", "outcome", "status", "reason_code", "job_id"):
        assert has_stats[kept], kept
    for dropped in ("email", "recipient", "message_id"):
        assert not has_stats[dropped], dropped


def test_scratch_tables_left_in_the_run_database_are_dropped(run_dir: Path) -> None:
    """Older versions wrote the scratch tables into the run database; one killed midway left
    them there. The next results run drops them."""
    _sql(
        run_dir,
        "CREATE TABLE _results_keys AS SELECT 1 AS row_number",
        "CREATE TABLE _results_pages AS SELECT 1 AS row_number",
    )
    assert bulkbatch.results(run_dir).accounting_ok
    assert _results_tables(run_dir) == set()


def test_a_stopped_runs_unacknowledged_rows_are_unsent_not_ingested(tmp_path: Path) -> None:
    """Results written for a run that stopped mid-send labelled every planned row
    'ingested', those in batches Courier never acknowledged too. They are 'unsent' now, and
    the accounting adds up with them."""
    run_dir = tmp_path / "run"
    with (
        bulkbatch.Emulator(faults="error_rate=0.2,seed=5") as emu,
        pytest.raises(ServerError),  # the fifth ingest fails, and one try is allowed
    ):
        bulkbatch.send(
            SAMPLE,
            event="welcome",
            batch_size=100,
            concurrency=1,
            max_attempts=1,
            settings=bulkbatch.Settings(base_url=emu.url, poll_interval=0.02),
            run_dir=run_dir,
        )
    info = bulkbatch.results(run_dir)
    assert info.accounting_ok, info.problems
    assert (info.ingested, info.unsent) == (
        400,
        info.input_rows - 400 - info.duplicates - info.rejected,
    )
    table = pq.read_table(run_dir / "results.parquet").to_pylist()
    unsent = [r for r in table if r["outcome"] == "unsent"]
    assert len(unsent) == info.unsent and all(r["status"] is None for r in unsent)
    assert {r["reason_code"] for r in unsent} == {"unsent"}
    assert unsent[0]["reason"].startswith("not sent: the run stopped before")
    assert orjson.loads((run_dir / "summary.json").read_bytes())["counts"]["unsent"] == info.unsent


def test_the_stage_gives_freed_memory_back_before_its_first_query(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows stream through Arrow buffers that DuckDB gets from malloc: glibc's heaps are
    trimmed and large blocks mapped on their own before the first of them (bulkbatch.heap)."""
    order: list[str] = []
    real_keys = results._build_keys
    monkeypatch.setattr(results, "give_back", lambda: order.append("give back") or True)

    def keys(cur):  # type: ignore[no-untyped-def]
        order.append("pages join")
        return real_keys(cur)

    monkeypatch.setattr(results, "_build_keys", keys)
    assert bulkbatch.results(run_dir).accounting_ok
    assert order == ["give back", "pages join"]
