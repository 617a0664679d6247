"""``plan.parquet`` of a send is written while the send runs (``report.plan_file_meanwhile``).

The send reads the ``plan`` table, and the file is for people, so a send's plan leaves it out
(``build_plan(..., plan_file=False)``) and takes the campaign's fingerprint in DuckDB's own
pass; a thread writes the file while the first jobs are created and ingested. It must be the
file ``bulkbatch plan`` writes, byte for byte, for the same campaign id; it must appear on a
resume when a stopped send left none; and a body that fails or is stopped must leave neither
a partial file nor a thread behind; and a run left without it gets it from its results.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import duckdb
import polars as pl
import pytest

import bulkbatch
from bulkbatch.errors import PlanError
from bulkbatch.progress import ProgressEvent
from bulkbatch.stages.plan import report
from bulkbatch.stages.plan.report import _write_plan_file, plan_file_meanwhile

FAST = bulkbatch.Settings(poll_interval=0.02, start_rate=2000)


def _frame(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "email": [f"u{i}@example.com" for i in range(n)],
            "data.first_name": [f"First {i}" for i in range(n)],
        }
    )


def _send(frame: pl.DataFrame, run_dir: Path, **layout: int) -> tuple[bulkbatch.Run, bool]:
    """A send against an emulator; whether ``plan.parquet`` was there when its plan ended."""
    seen: list[bool] = []

    def progress(event: ProgressEvent) -> None:
        if event.stage == "plan" and event.message.endswith("to send"):  # the plan is done
            seen.append((run_dir / "plan.parquet").exists())

    with bulkbatch.Emulator(progression="immediate") as emu:
        run = bulkbatch.send(
            frame,
            event="welcome",
            settings=FAST.with_(base_url=emu.url),
            run_dir=run_dir,
            progress=progress,
            **layout,
        )
    assert len(seen) == 1
    return run, seen[0]


def test_a_send_writes_the_plans_file_and_keeps_the_campaign(tmp_path: Path) -> None:
    frame = _frame(300)
    layout = {"batch_size": 50, "max_job_size": 100}
    planned = bulkbatch.plan(frame, event="welcome", run_dir=tmp_path / "p", **layout)
    sent, file_when_planned = _send(frame, tmp_path / "s", **layout)
    assert sent.summary()["accounting_ok"] is True
    assert file_when_planned is False  # left for the send
    # the same campaign: the fingerprint taken without the file is the one taken with it
    assert sent.campaign == planned.campaign
    assert (tmp_path / "s" / "plan.parquet").read_bytes() == (
        tmp_path / "p" / "plan.parquet"
    ).read_bytes()
    assert sent.read_plan().height == 300
    assert not list((tmp_path / "s").glob("*.partial"))


def test_the_writer_gives_the_heap_back_before_it_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer runs beside the network stages at any size: on its own thread it first
    returns glibc's free heap (at 10M the send's peak RSS went over its bound without it).
    The DuckDB share it writes under: ``tests/pipeline/test_memory.py``."""
    calls: list[tuple[str, str]] = []

    def give_back() -> bool:
        calls.append(("give_back", threading.current_thread().name))
        return True

    def write(*args: Any, **kwargs: Any) -> str | None:
        calls.append(("write", threading.current_thread().name))
        return _write_plan_file(*args, **kwargs)

    monkeypatch.setattr(report, "give_back", give_back)
    monkeypatch.setattr(report, "_write_plan_file", write)
    run, file_when_planned = _send(_frame(150), tmp_path / "s", batch_size=50)
    assert run.summary()["accounting_ok"] is True
    assert file_when_planned is False
    assert calls[:2] == [("give_back", "bulkbatch-plan-file"), ("write", "bulkbatch-plan-file")]
    assert run.read_plan().height == 150


def test_a_resume_writes_the_file_a_stopped_send_left_out(tmp_path: Path) -> None:
    frame = _frame(120)
    bulkbatch.plan(frame, event="welcome", run_dir=tmp_path / "p", batch_size=40)
    with bulkbatch.Emulator(progression="immediate") as emu:
        settings = FAST.with_(base_url=emu.url)
        run = bulkbatch.send(
            frame,
            event="welcome",
            settings=settings,
            run_dir=tmp_path / "s",
            batch_size=40,
            wait=False,
        )
        (tmp_path / "s" / "plan.parquet").unlink()  # as a send stopped mid-write leaves it
        run = bulkbatch.resume(tmp_path / "s", settings=settings)
    assert run.summary()["accounting_ok"] is True
    assert (tmp_path / "s" / "plan.parquet").read_bytes() == (
        tmp_path / "p" / "plan.parquet"
    ).read_bytes()


def test_results_write_the_file_when_a_run_has_none(tmp_path: Path) -> None:
    """A send stopped while it wrote the file, or one that could not write it, left none:
    its results (the resume's last step) write it."""
    frame = _frame(90)
    bulkbatch.plan(frame, event="welcome", run_dir=tmp_path / "p", batch_size=30)
    with bulkbatch.Emulator(progression="immediate") as emu:
        bulkbatch.send(
            frame,
            event="welcome",
            settings=FAST.with_(base_url=emu.url),
            run_dir=tmp_path / "s",
            batch_size=30,
        )
    (tmp_path / "s" / "plan.parquet").unlink()
    bulkbatch.results(tmp_path / "s")
    assert (tmp_path / "s" / "plan.parquet").read_bytes() == (
        tmp_path / "p" / "plan.parquet"
    ).read_bytes()


def _planned_db(path: Path, users: int) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE plan AS SELECT i::BIGINT AS row_number, (i // 1000)::INTEGER AS job_no, "
        "(i // 100)::INTEGER AS batch_no, 'u' || i AS recipient, "
        "'{\"recipient\":\"u' || i || '\"}' AS user_json FROM range(?) t(i)",
        [users],
    )
    return con


def test_the_file_written_meanwhile_is_the_plans_own(tmp_path: Path) -> None:
    con = _planned_db(tmp_path / "run.duckdb", 100_000)
    _write_plan_file(con, tmp_path / "own.parquet")

    async def main() -> None:
        async with plan_file_meanwhile(con, tmp_path):
            await anyio.lowlevel.checkpoint()

    anyio.run(main)
    assert (tmp_path / "plan.parquet").read_bytes() == (tmp_path / "own.parquet").read_bytes()
    # a run directory that has the file already keeps it
    (tmp_path / "plan.parquet").write_bytes(b"kept")
    anyio.run(main)
    assert (tmp_path / "plan.parquet").read_bytes() == b"kept"


def test_a_failing_body_stops_the_write_and_leaves_no_partial_file(tmp_path: Path) -> None:
    con = _planned_db(tmp_path / "run.duckdb", 3_000_000)

    async def main() -> None:
        async with plan_file_meanwhile(con, tmp_path) as begin:
            begin()
            with anyio.fail_after(30):  # until the writer has begun (a file, not an event)
                while not (tmp_path / "plan.parquet.partial").exists():  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            raise RuntimeError("the send failed")

    with pytest.raises(RuntimeError, match="the send failed"):
        anyio.run(main)
    assert not (tmp_path / "plan.parquet").exists()
    assert not list(tmp_path.glob("*.partial"))
    assert not any(t.name == "bulkbatch-plan-file" for t in threading.enumerate())


def test_a_file_that_cannot_be_written_is_one_clear_error_after_the_body(tmp_path: Path) -> None:
    con = _planned_db(tmp_path / "run.duckdb", 1_000)
    (tmp_path / "plan.parquet.partial").mkdir()  # where the writer must write
    body_done = []

    async def main() -> None:
        async with plan_file_meanwhile(con, tmp_path):
            body_done.append(True)

    with pytest.raises(PlanError, match=r"Cannot write .*plan\.parquet.*resume"):
        anyio.run(main)
    assert body_done == [True]


def test_a_writer_out_of_memory_says_how_to_give_it_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer runs under half the network phase's share: if DuckDB runs out there, the
    error says so and how to give it more, not to check the disk."""
    con = _planned_db(tmp_path / "run.duckdb", 1_000)

    def out_of_memory(*args: Any, **kwargs: Any) -> None:
        raise duckdb.OutOfMemoryException(
            "Out of Memory Error: could not allocate block of size 256.0 KiB (40.0 MiB/40.0 MiB used)"
        )

    monkeypatch.setattr(report, "_write_plan_file", out_of_memory)

    async def main() -> None:
        async with plan_file_meanwhile(con, tmp_path):
            pass

    with pytest.raises(PlanError) as caught:
        anyio.run(main)
    message = str(caught.value)
    assert "memory budget" in message and "BULKBATCH_MEMORY_LIMIT=" in message
    assert f"'bulkbatch resume {tmp_path}'" in message
    assert "disk" not in message
