"""The Python front door: every kind of source, sync calls inside a running event loop
(as in Jupyter), ``await bulkbatch.asend``, and the Run object a notebook works with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bulkbatch
from tests.support import SAMPLE

FAST = bulkbatch.Settings(poll_interval=0.02, start_rate=2000)
ROWS = {"user_id": ["a", "b", "b", "", "c"], "email": ["a@x.com", "b@x.com", "B@x.com", "", "c@x"]}


def sources(tmp_path: Path) -> dict[str, Any]:
    frame = pl.DataFrame(ROWS)
    parquet = tmp_path / "part-1.parquet"
    frame.head(2).write_parquet(parquet)
    frame.tail(3).write_parquet(tmp_path / "part-2.parquet")
    con = duckdb.connect()
    return {
        "polars": frame,
        "pandas": frame.to_pandas(),
        "arrow": frame.to_arrow(),
        "duckdb": con.sql("SELECT * FROM (VALUES ('a','a@x.com'),('b','b@x.com'),('b','B@x.com'),"
                          "('',''),('c','c@x')) t(user_id, email)"),
        "glob": str(tmp_path / "part-*.parquet"),
        "list": [tmp_path / "part-1.parquet", tmp_path / "part-2.parquet"],
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["polars", "pandas", "arrow", "duckdb", "glob", "list"])
def test_every_source_kind_plans_the_same(kind: str, tmp_path: Path) -> None:
    source = sources(tmp_path)[kind]
    run = bulkbatch.plan(source, event="welcome", run_dir=tmp_path / "run")
    info = run.plan_info
    assert (info.rows_read, info.to_send, info.duplicates, info.rejected) == (5, 2, 1, 2)
    assert info.rejected_by_reason == {"no_address": 1, "bad_email": 1}
    assert sorted(run.read_plan()["recipient"].to_list()) == ["a", "b"]


def test_python_objects_and_repr(tmp_path: Path) -> None:
    with bulkbatch.Emulator(progression="immediate") as emu:
        run = bulkbatch.send(
            SAMPLE, event="welcome", settings=FAST.with_(base_url=emu.url), run_dir=tmp_path / "r"
        )
    assert repr(run) == f"<Run r finished at {tmp_path / 'r'}>"
    assert isinstance(run.read_results(), pl.DataFrame)
    assert isinstance(run.to_arrow(), pa.Table)
    assert run.to_arrow().num_rows == run.read_results().height == 2000
    assert run.read_rejects().height == run.summary()["counts"]["rejected"]
    status = run.status()
    assert status.finished and status.stage == "finished"
    assert bulkbatch.Run(tmp_path / "r").job_ids == run.job_ids
    # pandas reads the same file directly
    assert len(pd.read_parquet(tmp_path / "r" / "results.parquet")) == 2000


@pytest.mark.anyio
async def test_sync_calls_work_inside_a_running_loop(tmp_path: Path) -> None:
    """Jupyter runs an event loop; the plain calls must still work there."""
    run = bulkbatch.plan(SAMPLE, event="welcome", run_dir=tmp_path / "p")
    assert run.plan_info.rows_read == 2000
    with bulkbatch.Emulator(progression="immediate") as emu:
        sent = bulkbatch.send(
            SAMPLE, event="welcome", settings=FAST.with_(base_url=emu.url), run_dir=tmp_path / "s"
        )
    assert sent.summary()["accounting_ok"] is True


@pytest.mark.anyio
async def test_await_asend_and_aresume(tmp_path: Path) -> None:
    with bulkbatch.Emulator(progression="immediate") as emu:
        settings = FAST.with_(base_url=emu.url)
        run = await bulkbatch.asend(
            SAMPLE,
            event="welcome",
            settings=settings,
            run_dir=tmp_path / "r",
            wait=False,
        )
        assert run.status().stage == "next: track"
        await run.aresume(settings=settings)
        assert run.status().finished
        assert emu.stats()["runs"] == 1
    assert run.summary()["statuses"] == {"ENQUEUED": run.summary()["counts"]["ingested"]}


def test_results_parquet_schema(tmp_path: Path) -> None:
    with bulkbatch.Emulator(progression="immediate") as emu:
        run = bulkbatch.send(
            SAMPLE, event="welcome", settings=FAST.with_(base_url=emu.url), run_dir=tmp_path / "r"
        )
    schema = pq.read_schema(tmp_path / "r" / "results.parquet")
    assert schema.names == [
        "row_number", "user_id", "email", "phone_number", "outcome", "reason", "reason_code",
        "recipient", "job_id", "message_id", "status", "delivery_status", "enqueued_at",
        "sent_at", "delivered_at", "opened_at", "clicked_at", "delivery_reason", "cancel",
    ]  # fmt: skip
    # a stable schema: the delivery columns are there (null) before any delivery is known
    assert str(schema.field("delivered_at").type) == "timestamp[us]"
    assert str(schema.field("row_number").type) == "int64"
    assert run.read_results()["row_number"].to_list() == list(range(1, 2001))


def test_jobs_are_sized_for_concurrent_paging_by_default(tmp_path: Path) -> None:
    frame = pl.DataFrame({"user_id": [f"u{i}" for i in range(30_000)]})
    auto = bulkbatch.plan(frame, event="welcome", run_dir=tmp_path / "auto")
    # 30k rows over 16 pagers would be 1,875 a job; jobs are at least 10,000 users
    assert auto.plan_info.jobs == 3
    assert auto.read_plan()["job_no"].value_counts()["count"].max() <= 10_000
    one = bulkbatch.plan(frame, event="welcome", run_dir=tmp_path / "one", max_job_size=0)
    assert one.plan_info.jobs == 1
    big = pl.DataFrame({"user_id": [f"u{i}" for i in range(100_000)]})
    # 100k over 16 pagers: 6,250 a job, raised to the 10,000 floor
    assert bulkbatch.plan(big, event="welcome", run_dir=tmp_path / "big").plan_info.jobs == 10


def test_the_plan_warnings_and_notes_reach_the_progress_callback_once(tmp_path: Path) -> None:
    """What the plan found before sending (a user this e-mail job cannot reach, a column
    nothing sends, a phone sent as given) is told through ``progress`` as notices, so
    ``bulkbatch send`` shows it, not only ``bulkbatch plan --json``; a resume does not repeat
    it."""
    from bulkbatch.progress import RecordingProgress

    audience = tmp_path / "people.csv"
    audience.write_text(
        "user_id,email,first_name,phone_number\nu1,a@x.com,Ann,5550100\nu2,,Bob,\n",
        encoding="utf-8",
    )
    seen = RecordingProgress()
    run = bulkbatch.plan(
        str(audience), event="welcome", channel="email", run_dir=tmp_path / "r", progress=seen
    )
    notices = [e.message for e in seen.events if e.stage == "notice"]
    info = run.plan_info
    assert info.warnings and len(info.notes) == 2
    assert notices == [*info.warnings, *info.notes]
    assert any("first_name" in n for n in notices)
    assert any("no profile.email" in n for n in notices)
    again = RecordingProgress()
    bulkbatch.resume(run.path, progress=again)
    assert not [e for e in again.events if e.stage == "notice"]
