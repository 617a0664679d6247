"""Track and results over real HTTP (in-process emulator on a loopback port).

Covers: several jobs paged concurrently, paging interrupted and resumed at the stored
cursor, users that end in ERROR, and delivery statuses from the Messages API.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import httpx
import pytest

import bulkbatch
from bulkbatch.client.courier import CourierClient
from bulkbatch.client.paging import default_max_wait
from bulkbatch.config import Settings
from bulkbatch.errors import Interrupted, PagingError
from bulkbatch.ledger import LedgerWriter
from bulkbatch.progress import ProgressEvent, RecordingProgress
from bulkbatch.stages.track import page_users, tracked_at_once, wait_for_job
from bulkbatch.state import JobState, RunState, ensure_ledger, open_run_db
from bulkbatch.synth import generate
from tests.client.support import JOB, ManualClock, Recorder, assert_one_clear_line, make_client
from tests.support import SAMPLE

FAST = bulkbatch.Settings(poll_interval=0.02, start_rate=2000)


@pytest.fixture
def emu() -> Any:
    with bulkbatch.Emulator(progression="polls:2") as e:
        yield e


def settings_for(emu: bulkbatch.Emulator) -> bulkbatch.Settings:
    return FAST.with_(base_url=emu.url)


@pytest.fixture(scope="module")
def audience(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("aud") / "audience.parquet"
    generate(path, 6_000, fmt="parquet", duplicate_rate=0.02, seed=9)
    return path


def test_max_job_size_splits_into_jobs_that_are_all_tracked(
    emu: bulkbatch.Emulator, audience: Path, tmp_path: Path
) -> None:
    run = bulkbatch.send(
        audience,
        event="welcome",
        max_job_size=1_500,
        settings=settings_for(emu),
        run_dir=tmp_path / "r",
    )
    summary = run.summary()
    ingested = summary["counts"]["ingested"]
    jobs = summary["jobs"]
    assert len(jobs) == -(-ingested // 1_500)
    assert len({j["job_id"] for j in jobs}) == len(jobs)
    assert all(j["status"] == "COMPLETED" and j["users"] <= 1_500 for j in jobs)
    assert sum(j["received"] for j in jobs) == ingested
    stats = emu.stats()
    assert stats["jobs_created"] == len(jobs) and stats["runs"] == len(jobs)
    assert stats["max_accepted_per_recipient"] == 1
    df = run.read_results()
    ingested_rows = df.filter(df["outcome"] == "ingested")
    assert ingested_rows["status"].unique().to_list() == ["ENQUEUED"]
    assert ingested_rows["message_id"].null_count() == 0
    assert ingested_rows["job_id"].n_unique() == len(jobs)


class Crash(Exception):
    """Stands in for the process dying mid-paging."""


class StopAfterPages:
    """A progress callback that crashes the run after ``n`` pages."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage == "page" and event.extra.get("pages", 0) >= self.n:
            raise Crash


def test_interrupted_paging_resumes_at_the_stored_cursor(
    emu: bulkbatch.Emulator, audience: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "r"
    with pytest.raises(Crash):
        bulkbatch.send(
            audience,
            event="welcome",
            settings=settings_for(emu),
            run_dir=run_dir,
            progress=StopAfterPages(17),
        )
    con = open_run_db(run_dir, read_only=True)
    pages_before = con.execute("SELECT pages, done FROM paging").fetchall()
    rows_before = con.execute("SELECT count(*) FROM user_pages").fetchall()[0][0]
    con.close()
    assert len(pages_before) == 1 and pages_before[0][1] is False
    stored = pages_before[0][0]
    assert stored >= 17 and rows_before == stored * 100

    progress = RecordingProgress()
    run = bulkbatch.resume(run_dir, settings=settings_for(emu), progress=progress)
    page_events = [e for e in progress.events if e.stage == "page"]
    # the resumed run asked only for the pages it did not have
    assert page_events[0].extra["pages"] == stored + 1
    total_pages = page_events[-1].extra["pages"]
    ingested = run.summary()["counts"]["ingested"]
    assert total_pages == -(-ingested // 100)
    con = open_run_db(run_dir, read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT recipient) FROM user_pages").fetchall() == [
        (ingested, ingested)
    ]
    con.close()
    assert run.summary()["accounting_ok"] is True
    assert emu.stats()["runs"] == 1


def test_users_that_end_in_error_are_reported(emu: bulkbatch.Emulator, tmp_path: Path) -> None:
    """Courier marks a user ERROR when processing it fails. The emulator does that for a user
    whose ``data`` is not an object; the plan never produces one, so the test plans normally
    and then breaks three users' JSON before sending, as a stand-in for a server-side failure."""
    run_dir = tmp_path / "r"
    bulkbatch.plan(SAMPLE, event="welcome", run_dir=run_dir)
    con = open_run_db(run_dir)
    broken = [
        r[0]
        for r in con.execute("SELECT recipient FROM plan ORDER BY row_number LIMIT 3").fetchall()
    ]
    con.execute(
        "UPDATE plan SET user_json = json_object('recipient', recipient, 'data', [1, 2]) "
        "WHERE recipient IN (SELECT unnest(?))",
        [broken],
    )
    con.close()
    # send takes the planned run over (a resume of a run plan started would only plan)
    run = bulkbatch.send(SAMPLE, event="welcome", run_dir=run_dir, settings=settings_for(emu))
    df = run.read_results()
    errors = df.filter(df["status"] == "ERROR")
    assert sorted(errors["recipient"].to_list()) == sorted(broken)
    assert errors["outcome"].unique().to_list() == ["ingested"]
    assert errors["message_id"].null_count() == 3
    assert run.summary()["statuses"]["ERROR"] == 3


def test_delivery_statuses_from_the_messages_api(tmp_path: Path) -> None:
    with bulkbatch.Emulator(progression="immediate") as emu:
        run = bulkbatch.send(
            SAMPLE,
            event="welcome",
            settings=settings_for(emu),
            run_dir=tmp_path / "r",
        )
        # a stable schema: the column is there, empty, before any delivery is known (#18)
        assert run.read_results()["delivery_status"].null_count() == 2000
        # delivery moves on after the job completes: fetch it later, as a user would with
        # 'bulkbatch results RUN_DIR --messages'
        info = run.results(messages=True, settings=settings_for(emu))
    df = run.read_results()
    with SAMPLE.open(newline="", encoding="utf-8") as f:
        emails = {n: (r["email"] or "").strip().lower() for n, r in enumerate(csv.DictReader(f), 1)}
    ingested = df.filter(df["outcome"] == "ingested")
    for row in ingested.iter_rows(named=True):
        email = emails[row["row_number"]]
        if not email:
            assert row["delivery_status"] == "UNROUTABLE", row
        elif email.endswith(".invalid"):
            assert row["delivery_status"] == "UNDELIVERABLE", row
        else:
            assert row["delivery_status"] == "DELIVERED", row
            assert row["enqueued_at"] <= row["sent_at"] <= row["delivered_at"]
            assert row["delivered_at"].year >= 2020  # timestamps, not epoch numbers
    assert sum(info.delivery.values()) == len(ingested)
    assert set(info.delivery) == {"DELIVERED", "UNDELIVERABLE", "UNROUTABLE"}


# -- bounded waiting and paging, on a fake clock and a MockTransport ----------------------


def _job_answer(status: str, received: int = 300) -> dict[str, Any]:
    enqueued = received if status == "COMPLETED" else 0
    job = {"definition": {}, "enqueued": enqueued, "failures": 0, "received": received}
    return {"job": {**job, "status": status}}


def _run(tmp_path: Path) -> tuple[RunState, JobState]:
    job = JobState(job_no=0, users=300, job_id=JOB)
    return RunState(run_dir=tmp_path, run_id="t", jobs=[job]), job


@pytest.mark.anyio
async def test_the_first_poll_comes_early_then_waits_double(tmp_path: Path) -> None:
    answers = iter(["PROCESSING"] * 7 + ["COMPLETED"])
    rec = Recorder(lambda r: httpx.Response(200, json=_job_answer(next(answers))))
    clock = ManualClock()
    state, job = _run(tmp_path)
    async with make_client(rec, clock=clock) as client:
        remote = await wait_for_job(client, state, job, poll_interval=1.0, clock=clock)
    assert remote.status == "COMPLETED" and job.status == "COMPLETED"
    assert clock.sleeps == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


@pytest.mark.anyio
async def test_a_job_that_never_completes_is_given_up_on_by_default(tmp_path: Path) -> None:
    rec = Recorder(httpx.Response(200, json=_job_answer("PROCESSING")))
    clock = ManualClock()
    state, job = _run(tmp_path)
    async with make_client(rec, clock=clock) as client:
        with pytest.raises(Interrupted) as info:
            await wait_for_job(client, state, job, poll_interval=5.0, clock=clock)
    text = assert_one_clear_line(info.value)
    limit = default_max_wait(300)
    assert f"still PROCESSING after {limit:g} s, the default wait for a job of 300 users" in text
    assert "--timeout SECONDS (Python: timeout=)" in text
    assert f"bulkbatch resume {tmp_path}" in text
    assert sum(clock.sleeps) <= limit
    assert len(rec.requests) <= limit / 5.0 + 10


@pytest.mark.anyio
async def test_an_explicit_timeout_names_the_setting(tmp_path: Path) -> None:
    rec = Recorder(httpx.Response(200, json=_job_answer("PROCESSING")))
    clock = ManualClock()
    state, job = _run(tmp_path)
    async with make_client(rec, clock=clock) as client:
        with pytest.raises(Interrupted, match=r"after 3 s \(--timeout, Python timeout=\)"):
            await wait_for_job(client, state, job, poll_interval=1.0, max_wait=3.0, clock=clock)
    assert sum(clock.sleeps) <= 3.0


@pytest.mark.anyio
async def test_paging_a_repeated_cursor_stops_with_the_pages_kept(tmp_path: Path) -> None:
    def repeat(request: httpx.Request) -> httpx.Response:
        first = "cursor" not in request.url.params
        items = [{"recipient": "a" if first else "b", "status": "ENQUEUED", "messageId": "m"}]
        return httpx.Response(200, json={"items": items, "paging": {"cursor": "c", "more": True}})

    state, job = _run(tmp_path)
    job.received = 300
    con = open_run_db(tmp_path)
    ensure_ledger(con)
    async with make_client(Recorder(repeat)) as client, LedgerWriter(con) as ledger:
        with pytest.raises(PagingError) as info:
            await page_users(con, client, state, job, ledger)
    text = assert_one_clear_line(info.value)
    assert f"bulk job {JOB}" in text and "'c' was already used" in text
    assert con.execute("SELECT pages, cursor, done FROM paging").fetchall() == [(1, "c", False)]
    assert not job.paged
    con.close()


@pytest.mark.anyio
async def test_paging_resumed_counts_the_users_already_stored(tmp_path: Path) -> None:
    """Resuming at page 3 of a 300-user job: 105 more users are more than it received."""
    state, job = _run(tmp_path)
    job.received = 300
    con = open_run_db(tmp_path)
    ensure_ledger(con)
    con.execute("INSERT INTO paging VALUES (0, 2, 'c2', false)")
    con.execute(
        "INSERT INTO user_pages SELECT 0, i // 100, 'u' || i, NULL, 'ENQUEUED' FROM range(200) t(i)"
    )
    rows = [{"recipient": f"v{i}", "status": "ENQUEUED"} for i in range(105)]
    page = {"items": rows, "paging": {"cursor": None, "more": False}}
    rec = Recorder(httpx.Response(200, json=page))
    async with make_client(rec) as client, LedgerWriter(con) as ledger:
        with pytest.raises(PagingError, match="305 users listed so far, more than the 300"):
            await page_users(con, client, state, job, ledger)
    assert rec.requests[0].url.params["cursor"] == "c2"
    con.close()


@pytest.mark.anyio
async def test_every_job_tracked_at_once_and_every_writer_has_a_connection() -> None:
    """A tracked job has one request in flight at a time (a poll or a page), so the pool holds
    one for each of them and each write slot: no request waits for a connection (a long wait
    would end in a pool timeout, and be retried as if the server had failed)."""
    settings = Settings(base_url="https://api.example.com", api_key="k", concurrency=16)
    async with CourierClient(settings) as client:
        assert client.connections >= settings.concurrency + tracked_at_once(client)
