"""The run directory: atomic state.json, the single-writer lock, the group-committed ledger."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkbatch.errors import StateError, leaf_errors
from bulkbatch.ledger import BatchAck, LedgerWriter, PageRecord
from bulkbatch.state import (
    JobState,
    RunState,
    Started,
    atomic_write_bytes,
    ensure_ledger,
    open_run_db,
)

jobs = st.builds(
    JobState,
    job_no=st.integers(0, 50),
    users=st.integers(0, 10**8),
    first_batch=st.integers(0, 10**5),
    last_batch=st.integers(-1, 10**5),
    job_id=st.none() | st.text(min_size=1, max_size=40),
    ingested=st.booleans(),
    run=st.booleans(),
    status=st.none() | st.sampled_from(["CREATED", "PROCESSING", "COMPLETED", "ERROR"]),
    received=st.none() | st.integers(0, 10**8),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=60, deadline=None)
@given(
    run_id=st.text(min_size=1, max_size=30),
    jobs=st.lists(jobs, max_size=4),
    plan=st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    emulator=st.booleans(),
)
def test_state_round_trips(
    tmp_path_factory: pytest.TempPathFactory,
    run_id: str,
    jobs: list[JobState],
    plan: dict[str, object],
    emulator: bool,
) -> None:
    run_dir = tmp_path_factory.mktemp("run")
    state = RunState(run_dir=run_dir, run_id=run_id, jobs=jobs, plan=plan, emulator=emulator)
    state.save()
    assert RunState.load(run_dir) == state


def test_a_stage_records_its_wall_time_and_the_processs_cpu_time(tmp_path: Path) -> None:
    state = RunState(run_dir=tmp_path, run_id="r")
    started = Started()
    burn = time.process_time() + 0.05
    while time.process_time() < burn:
        pass
    time.sleep(0.05)  # waiting costs wall time, not CPU time
    state.mark("plan", started)
    assert state.done("plan")
    assert state.timings["plan"] >= 0.1
    assert 0.05 <= state.cpu["plan"] < state.timings["plan"]
    assert RunState.load(tmp_path).cpu == state.cpu

    state.mark("send")  # no timing: only that it finished
    assert state.done("send") and "send" not in state.timings and "send" not in state.cpu


def test_a_stage_counts_the_cpu_of_every_thread_of_the_process(tmp_path: Path) -> None:
    """DuckDB plans on threads of its own: their CPU is the stage's too."""
    import threading

    def burn() -> None:
        end = time.thread_time() + 0.1
        while time.thread_time() < end:
            pass

    state = RunState(run_dir=tmp_path, run_id="r")
    started = Started()
    worker = threading.Thread(target=burn)
    worker.start()
    worker.join()
    state.mark("plan", started)
    assert state.cpu["plan"] >= 0.1
    assert state.cpu["plan"] <= state.timings["plan"] * (os.cpu_count() or 1) + 0.02


def test_a_state_written_before_cpu_times_were_kept_still_loads(tmp_path: Path) -> None:
    state = RunState(run_dir=tmp_path, run_id="r", timings={"load": 1.5})
    old = state.to_dict()
    del old["cpu"]
    (tmp_path / "state.json").write_bytes(orjson.dumps(old))
    loaded = RunState.load(tmp_path)
    assert loaded.timings == {"load": 1.5} and loaded.cpu == {}


def test_missing_and_foreign_run_dirs_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(StateError) as e:
        RunState.load(tmp_path / "nope")
    assert str(e.value) == (
        f"Run directory not found: {tmp_path / 'nope'}. Pass the directory a 'bulkbatch send' "
        "created (it holds state.json and run.duckdb), e.g. runs/<run-id>."
    )
    with pytest.raises(StateError) as e:
        RunState.load(tmp_path)
    assert "has no state.json" in str(e.value)
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(StateError, match="is corrupt"):
        RunState.load(tmp_path)


def test_atomic_write_failures_are_state_errors_and_keep_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"old")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(StateError, match=r"^Could not write .*not-a-dir/state.json"):
        atomic_write_bytes(blocker / "state.json", b"new")
    target_dir = tmp_path / "is-a-dir"
    (target_dir / "inner").mkdir(parents=True)
    with pytest.raises(StateError, match="Could not write"):
        atomic_write_bytes(target_dir, b"new")
    assert (target_dir / "inner").is_dir()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_second_process_gets_a_clear_lock_error(tmp_path: Path) -> None:
    con = open_run_db(tmp_path)
    try:
        code = (
            "import sys; from pathlib import Path\n"
            "from bulkbatch.state import open_run_db\n"
            "from bulkbatch.errors import StateError\n"
            "try:\n    open_run_db(Path(sys.argv[1]))\n"
            "except StateError as e:\n    print(e); sys.exit(3)\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        con.close()
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.startswith(
        f"Run directory {tmp_path} is in use by another bulkbatch process"
    )
    assert proc.stdout.strip().endswith(f"then run 'bulkbatch resume {tmp_path}'.")


def test_ledger_commits_acks_and_pages_in_order(tmp_path: Path) -> None:
    con = open_run_db(tmp_path)
    ensure_ledger(con)

    async def main() -> None:
        async with LedgerWriter(con) as ledger:
            for b in range(300):
                await ledger.put(
                    BatchAck(b, 0, "job", 10, None, 1, [("r", "bad")] if b == 7 else [])
                )
            await ledger.flush()
            row = con.cursor().execute("SELECT count(*) FROM batches").fetchone()
            assert row == (300,)
            for p in range(5):
                await ledger.put(
                    PageRecord.of(
                        0,
                        p,
                        [f"u{p}-{i}" for i in range(3)],
                        ["m"] * 3,
                        ["ENQUEUED"] * 3,
                        next_cursor=None if p == 4 else f"c{p + 1}",
                        done=p == 4,
                    )
                )

    anyio.run(main)
    cur = con.cursor()
    assert cur.execute("SELECT count(*), sum(duplicate_errors) FROM batches").fetchone() == (
        300,
        300,
    )
    assert cur.execute("SELECT * FROM ingest_errors").fetchall() == [(7, "r", "bad")]
    assert cur.execute("SELECT count(*) FROM user_pages").fetchone() == (15,)
    assert cur.execute("SELECT pages, cursor, done FROM paging").fetchone() == (5, None, True)
    con.close()


def test_ledger_stores_each_users_columns_as_paged(tmp_path: Path) -> None:
    con = open_run_db(tmp_path)
    ensure_ledger(con)
    pages = [
        (0, 0, ["a", None], ["m1", None], ["SENT", "ERROR"]),
        (1, 0, [], [], []),
        (0, 1, ["é😀"], ["m3"], ["ENQUEUED"]),
    ]

    async def main() -> None:
        async with LedgerWriter(con) as ledger:
            for job_no, page_no, recipients, ids, statuses in pages:
                await ledger.put(
                    PageRecord.of(
                        job_no, page_no, recipients, ids, statuses, next_cursor=None, done=True
                    )
                )

    anyio.run(main)
    order = "ORDER BY job_no, page_no, recipient NULLS LAST"
    rows = con.cursor().execute(f"SELECT * FROM user_pages {order}").fetchall()
    assert rows == [
        (0, 0, "a", "m1", "SENT"),
        (0, 0, None, None, "ERROR"),
        (0, 1, "é😀", "m3", "ENQUEUED"),
    ]
    con.close()


def test_a_queued_page_holds_no_python_object_per_user() -> None:
    """Pages wait for their commit by the thousand; as lists of str they were the run's most
    numerous Python objects, and the arenas they filled stayed with the process."""
    users, count = 100, 200
    gc.collect()
    before = sys.getallocatedblocks()
    queued = [
        PageRecord.of(
            3,
            p,
            [f"user-{p}-{i}" for i in range(users)],
            [f"message-{p}-{i}" for i in range(users)],
            ["SENT"] * users,
            next_cursor=f"cursor-{p}",
            done=False,
        )
        for p in range(count)
    ]
    gc.collect()
    per_page = (sys.getallocatedblocks() - before) / count
    assert len(queued) == count
    assert per_page < 20, f"{per_page:.0f} Python objects held per page of {users} users"


def test_ledger_records_what_was_queued_when_the_caller_fails(tmp_path: Path) -> None:
    con = open_run_db(tmp_path)
    ensure_ledger(con)

    async def main() -> None:
        async with LedgerWriter(con) as ledger:
            for b in range(20):
                await ledger.put(BatchAck(b, 0, "job", 1, b + 1, 0))
            raise RuntimeError("a worker failed")

    with pytest.raises(BaseExceptionGroup) as e:
        anyio.run(main)
    assert [str(x) for x in leaf_errors(e.value)] == ["a worker failed"]
    assert con.cursor().execute("SELECT count(*) FROM batches").fetchone() == (20,)
    con.close()


_TEXT = st.text(max_size=12)
_JOBS = st.builds(
    JobState,
    job_no=st.integers(0, 10_000),
    users=st.integers(0, 10**8),
    job_id=st.none() | _TEXT,
    ingested=st.booleans(),
    status=st.none() | st.sampled_from(["CREATED", "PROCESSING", "COMPLETED", "ERROR"]),
    received=st.none() | st.integers(0, 10**8),
)
_JSONISH = st.dictionaries(
    _TEXT, st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _TEXT | st.lists(_TEXT)
)


@settings(max_examples=60, deadline=None)
@given(jobs=st.lists(_JOBS, max_size=8), inputs=_JSONISH, plan=_JSONISH, campaign=_TEXT)
def test_state_json_is_the_deep_copy_written_without_copying(
    tmp_path_factory: pytest.TempPathFactory,
    jobs: list[JobState],
    inputs: dict[str, object],
    plan: dict[str, object],
    campaign: str,
) -> None:
    """``save`` writes the fields straight through orjson; the bytes are those of the deep
    copy (``asdict``) it replaced, and they load back to the same state."""

    run_dir = tmp_path_factory.mktemp("state")
    state = RunState(run_dir, "r", campaign=campaign, inputs=inputs, plan=plan, jobs=jobs)
    assert state.to_json() == orjson.dumps(state.to_dict(), option=orjson.OPT_INDENT_2)
    state.save()
    again = RunState.load(run_dir)
    assert (again.jobs, again.inputs, again.plan) == (jobs, inputs, plan)
    assert again.campaign == campaign
