"""``bulkbatch.db``: the key ranges that split big joins and writes, and DuckDB work in a
worker thread that a stop interrupts."""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkbatch.db import (
    DUCKDB_FLOOR,
    check_duckdb,
    compressed_with,
    configure_connection,
    in_thread,
    key_ranges,
    memory_share,
    optimizer_disabled,
    parse_bytes,
    prefetched_batches,
    prefetched_queries,
    scratch_database,
)
from bulkbatch.errors import StateError, UsageError
from tests.support import OUT_OF_MEMORY_MID_STREAM, out_of_memory_mid_stream


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.integers(min_value=-50, max_value=10_000), max_size=300),
    rows=st.integers(min_value=1, max_value=400),
)
def test_key_ranges_cover_every_key_once_in_order(keys: list[int], rows: int) -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE t (k BIGINT)")
    if keys:
        con.executemany("INSERT INTO t VALUES (?)", [[k] for k in keys])
    ranges = key_ranges(con, "t", "k", rows)
    assert ranges and all(lo < hi for lo, hi in ranges)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # contiguous
    # every key falls in exactly one range, and no range lies past the largest key
    for k in keys:
        assert sum(lo <= k < hi for lo, hi in ranges) == 1
    if keys:
        assert ranges[0][0] == min(keys) and ranges[-1][0] <= max(keys)
        # evenly spread keys give about ``rows`` keys a range: never more ranges than needed
        assert len(ranges) <= -(-len(keys) // rows)


def _arrow_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "bulkbatch-arrow"]


def test_prefetched_batches_are_every_querys_rows_in_order() -> None:
    con = duckdb.connect()
    queries = [
        f"SELECT range AS n FROM range({lo}, {lo + 70_000}) ORDER BY n" for lo in (0, 70_000)
    ]
    got = [n for b in prefetched_batches(con, queries) for n in b.column("n").to_pylist()]
    assert got == list(range(140_000))
    assert not _arrow_threads()


def test_prefetched_queries_name_the_query_of_each_batch() -> None:
    con = duckdb.connect()
    queries = ["SELECT range AS n FROM range(70_000)", "SELECT 1 AS n WHERE false", "SELECT 7 AS n"]
    got = [(i, b.num_rows) for i, b in prefetched_queries(con, queries)]
    assert {i for i, _ in got} == {0, 2}  # an empty result yields no batch
    assert sum(rows for i, rows in got if i == 0) == 70_000
    assert got[-1] == (2, 1)
    assert not _arrow_threads()


def test_a_query_out_of_memory_while_streamed_raises_duckdb_s_own_error() -> None:
    """A query that runs out of memory once its Arrow stream is being read fails in pyarrow's
    reader, which raises a plain ``OSError``; callers catch DuckDB's ``OutOfMemoryException``
    (the results stage to retry with smaller ranges, ``in_thread`` for its one line)."""

    def read(con: duckdb.DuckDBPyConnection) -> Iterator[int]:
        for _, batch in prefetched_queries(con, [OUT_OF_MEMORY_MID_STREAM]):
            yield batch.num_rows

    out_of_memory_mid_stream(read)
    assert not _arrow_threads()


def test_an_optimizer_is_off_only_meanwhile() -> None:
    con = duckdb.connect()
    con.execute("SET disabled_optimizers = 'join_order'")
    setting = "SELECT current_setting('disabled_optimizers')"
    with optimizer_disabled(con, "build_side_probe_side"):
        assert con.execute(setting).fetchall() == [("join_order,build_side_probe_side",)]
    assert con.execute(setting).fetchall() == [("join_order",)]
    with pytest.raises(duckdb.Error, match="boom"), optimizer_disabled(con, "join_filter_pushdown"):
        con.execute("SELECT error('boom')")
    assert con.execute(setting).fetchall() == [("join_order",)]


def test_prefetched_batches_raise_a_querys_error_in_the_callers_thread() -> None:
    con = duckdb.connect()
    queries = ["SELECT 1 AS n", "SELECT error('boom') AS n"]
    with pytest.raises(duckdb.Error, match="boom"):
        list(prefetched_batches(con, queries))
    assert not _arrow_threads()
    assert con.execute("SELECT 42").fetchall() == [(42,)]  # the connection is free


def test_a_caller_that_stops_early_leaves_no_query_running() -> None:
    """A caller that fails while the worker is blocked on a full queue in the middle of a big
    query: the query is interrupted and the worker gone before the error goes on."""
    con = duckdb.connect()
    batches = prefetched_batches(con, ["SELECT range AS n FROM range(100_000_000)"], queued=1)
    assert next(batches).num_rows > 0
    batches.close()  # what a ``for`` loop does when its body raises
    assert not _arrow_threads()
    assert con.execute("SELECT 42").fetchall() == [(42,)]


def _within(seconds: float, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run ``scenario`` in its own thread and loop; fail if it has not ended in ``seconds``
    (a shielded wait ignores the test's own cancel scopes)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            anyio.run(scenario)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    if errors:
        raise errors[0]


def test_in_thread_cancelled_before_its_worker_starts_ends_and_never_runs(
    tmp_path: Path,
) -> None:
    # A stop that lands before the worker thread took the call (a SIGTERM one moment into
    # the load): anyio drops the call, so waiting for it to finish waited forever (the
    # no-traceback sweep's hang, every time when the stop came right after "[start]").
    con = duckdb.connect()
    ran: list[str] = []

    async def scenario() -> None:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await in_thread(con, lambda: ran.append("ran"), tmp_path)
        assert scope.cancelled_caught

    _within(10, scenario)
    assert ran == []
    assert con.execute("SELECT 1").fetchall() == [(1,)]  # the connection is free


def test_in_thread_cancelled_between_statements_stops_the_next_one(tmp_path: Path) -> None:
    # A stage is several statements; an interrupt that lands between two is dropped by
    # DuckDB, so the wait keeps interrupting until the work has ended.
    con = duckdb.connect()
    first_done = threading.Event()
    went_on = threading.Event()
    steps: list[str] = []

    def stage() -> None:
        con.execute("SELECT 1").fetchall()
        first_done.set()
        went_on.wait(5)  # the cancellation and its first interrupt happen here
        steps.append("second")
        con.execute("SELECT count(*) FROM range(20000000000)").fetchall()
        steps.append("finished")

    async def scenario() -> None:
        async with anyio.create_task_group() as tg:

            async def stop_soon() -> None:
                await anyio.to_thread.run_sync(first_done.wait, 5)
                tg.cancel_scope.cancel()
                await anyio.sleep(0.3)
                went_on.set()

            tg.start_soon(stop_soon)
            await in_thread(con, stage, tmp_path)
            steps.append("not cancelled")

    _within(30, scenario)
    assert steps == ["second"]


# ------------------------------------------------------------------ the DuckDB floor


def test_the_duckdb_floor_is_the_one_pyproject_declares() -> None:
    """One floor: the version ``check_duckdb`` holds to is the one pip installs against."""
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    floor = re.search(r'"duckdb>=([\d.]+)"', text)
    assert floor, "pyproject.toml declares duckdb without a floor"
    assert tuple(int(p) for p in floor.group(1).split(".")) == DUCKDB_FLOOR


@pytest.mark.parametrize("old", ["1.3.2", "1.4.5", "1.5.6", "1.5.6.dev42"])
def test_an_older_duckdb_is_refused_in_one_line_that_says_what_to_do(old: str) -> None:
    # DuckDB 1.x fails the plan deep inside a query ("The initial value type must be the same
    # as the list child type..."): found by running the plan on 1.3.2, 1.4.5 and 1.5.6.
    with pytest.raises(UsageError) as err:
        check_duckdb(old)
    text = str(err.value)
    assert "\n" not in text
    assert old in text and "pip install" in text
    assert ".".join(map(str, DUCKDB_FLOOR)) in text


@pytest.mark.parametrize("new", ["2.0.0", "2.0.1", "2.1.0.dev7", "10.0.0", "2"])
def test_the_floor_and_newer_are_accepted(new: str) -> None:
    check_duckdb(new)


def test_every_connection_bulkbatch_configures_checks_the_installed_duckdb(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    check_duckdb()  # the installed one meets the floor
    monkeypatch.setattr(duckdb, "__version__", "1.4.5")
    with pytest.raises(UsageError, match=re.escape("DuckDB 1.4.5")):
        configure_connection(duckdb.connect())


def test_compressed_with_stores_text_so_and_restores_the_setting(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "x.duckdb"))
    con.execute("SET force_compression = 'dictionary'")
    with compressed_with(con, "zstd"):
        con.execute("CREATE TABLE t AS SELECT 'user-' || i::VARCHAR AS s FROM range(300000) r(i)")
        con.execute("CHECKPOINT")
    kinds = {
        r[0] for r in con.execute("SELECT compression FROM pragma_storage_info('t')").fetchall()
    }
    assert "ZSTD" in kinds
    setting = "SELECT current_setting('force_compression')"
    assert con.execute(setting).fetchall() == [("dictionary",)]
    with pytest.raises(duckdb.Error), compressed_with(con, "zstd"):
        con.execute("SELECT * FROM missing_table")
    assert con.execute(setting).fetchall() == [("dictionary",)]


def test_a_memory_share_adds_its_fixed_part_within_the_cap_and_restores_the_cap() -> None:
    con = duckdb.connect()
    mib = 2**20
    con.execute(f"SET memory_limit = '{100 * mib}B'")

    def limit() -> int | None:
        return parse_bytes(
            str(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])
        )

    with memory_share(con, 0.2, 24 * mib):
        assert limit() == 44 * mib  # a fifth of 100 MiB, and 24
    with memory_share(con, 0.9, 24 * mib):
        assert limit() == 100 * mib  # never more than the cap
    assert limit() == 100 * mib


def test_a_scratch_database_is_attached_meanwhile_and_deleted_after(tmp_path: Path) -> None:
    """Attached under its name while the block runs; detached and deleted after, also when
    the block fails; a file (and WAL) left at the path by a killed run never reaches it."""
    path = tmp_path / "scratch.duckdb"
    old = duckdb.connect(str(path))
    old.execute("CREATE TABLE left_behind AS SELECT 1 AS x")
    old.close()
    con = duckdb.connect()
    with scratch_database(con, path, "s") as name:
        assert name == "s"
        assert con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = 's'"
        ).fetchall() == [(0,)]
        con.execute("CREATE TABLE s.t AS SELECT range AS x FROM range(10)")
    assert not path.exists() and not path.with_name(path.name + ".wal").exists()
    assert "s" not in {
        r[0] for r in con.execute("SELECT database_name FROM duckdb_databases()").fetchall()
    }
    with pytest.raises(RuntimeError), scratch_database(con, path, "s"):
        con.execute("CREATE TABLE s.t AS SELECT 1 AS x")
        raise RuntimeError("stop")
    assert not list(tmp_path.iterdir())
    assert "s" not in {
        r[0] for r in con.execute("SELECT database_name FROM duckdb_databases()").fetchall()
    }


def test_a_scratch_database_that_cannot_be_made_is_one_clear_error(tmp_path: Path) -> None:
    """Something else at the path (here a directory) ends in a StateError that names the path
    and what to check, not an unexpected IsADirectoryError; nothing is left attached."""
    path = tmp_path / "scratch.duckdb"
    path.mkdir()
    con = duckdb.connect()
    with (
        pytest.raises(StateError, match=r"Cannot create the scratch database .*scratch\.duckdb"),
        scratch_database(con, path, "s"),
    ):
        pass  # pragma: no cover - never reached
    assert "s" not in {
        r[0] for r in con.execute("SELECT database_name FROM duckdb_databases()").fetchall()
    }
