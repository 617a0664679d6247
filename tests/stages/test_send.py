"""Send: jobs created ahead of their ingest, and every write within the shared write slots.

Several jobs ingest side by side and the next jobs are created while they do; each POST
(create or batch) takes one of the run's write slots, so writes in flight never exceed them,
and every batch is still sent exactly once.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import anyio
import duckdb
import httpx
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkbatch.client.courier import CourierClient
from bulkbatch.config import Settings
from bulkbatch.errors import StateError
from bulkbatch.ledger import LedgerWriter
from bulkbatch.stages.send import _read_bodies, create_ahead, ingest_job, plan_jobs
from bulkbatch.state import JobState, RunState, ensure_ledger, open_run_db

pytestmark = pytest.mark.anyio

JOBS, BATCHES_PER_JOB, USERS_PER_BATCH = 6, 5, 3


class Courier:
    """A MockTransport handler: creates jobs, accepts batches, counts writes in flight."""

    def __init__(self) -> None:
        self.in_flight = self.most = 0
        self.jobs = 0
        self.batches: list[tuple[str, int]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":  # the check after a create
            job = {"definition": {}, "status": "CREATED", "received": 0}
            return httpx.Response(200, json={"job": {**job, "enqueued": 0, "failures": 0}})
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await anyio.sleep(0.002)
            if request.url.path == "/bulk":
                self.jobs += 1
                return httpx.Response(200, json={"jobId": f"job-{self.jobs}"})
            users = json.loads(request.content)["users"]
            self.batches.append((request.url.path, len(users)))
            return httpx.Response(204)
        finally:
            self.in_flight -= 1


def _planned(tmp_path: Path) -> tuple[RunState, duckdb.DuckDBPyConnection]:
    con = open_run_db(tmp_path)
    ensure_ledger(con)
    con.execute(
        f"""
        CREATE TABLE plan AS
        SELECT i AS row_number, 'u' || i AS recipient,
               i // {BATCHES_PER_JOB * USERS_PER_BATCH} AS job_no,
               i // {USERS_PER_BATCH} AS batch_no,
               '{{"recipient":"u' || i || '"}}' AS user_json
        FROM range({JOBS * BATCHES_PER_JOB * USERS_PER_BATCH}) t(i)
        """
    )
    jobs = [
        JobState(job_no=j, users=n, first_batch=lo, last_batch=hi)
        for j, n, lo, hi in plan_jobs(con)
    ]
    state = RunState(run_dir=tmp_path, run_id="t", jobs=jobs)
    state.campaign, state.message = "c0ffee", {"event": "welcome"}
    return state, con


async def test_creates_ahead_and_batches_share_the_write_slots(tmp_path: Path) -> None:
    state, con = _planned(tmp_path)
    courier = Courier()
    settings = Settings(base_url="https://api.courier.test", api_key="k", rate=1e5)
    client = CourierClient(settings, transport=httpx.MockTransport(courier))
    writes, lanes, creating = (anyio.CapacityLimiter(n) for n in (3, 2, 2))

    async def send(job: JobState) -> None:
        await create_ahead(client, state, job, creating, writes)
        async with lanes:
            await ingest_job(con, client, state, job, ledger, concurrency=3, slots=writes)

    async with client, LedgerWriter(con) as ledger, anyio.create_task_group() as tg:
        for job in state.jobs:
            tg.start_soon(send, job)
    assert courier.jobs == JOBS and [j.job_id for j in state.jobs] == [
        f"job-{n}" for n in range(1, JOBS + 1)
    ]  # created once each, in order
    assert 1 < courier.most <= 3  # never more writes in flight than slots
    assert len(courier.batches) == JOBS * BATCHES_PER_JOB  # every batch once
    acked = con.execute("SELECT count(*), sum(users) FROM batches").fetchone()
    assert acked == (JOBS * BATCHES_PER_JOB, JOBS * BATCHES_PER_JOB * USERS_PER_BATCH)
    con.close()


async def test_a_job_created_before_is_not_created_again(tmp_path: Path) -> None:
    state, con = _planned(tmp_path)
    courier = Courier()
    settings = Settings(base_url="https://api.courier.test", api_key="k", rate=1e5)
    state.jobs[0].job_id = "job-from-before"
    async with CourierClient(settings, transport=httpx.MockTransport(courier)) as client:
        creating, writes = anyio.CapacityLimiter(1), anyio.CapacityLimiter(1)
        await create_ahead(client, state, state.jobs[0], creating, writes)
        await create_ahead(client, state, state.jobs[1], creating, writes)
    assert state.jobs[0].job_id == "job-from-before" and state.jobs[1].job_id == "job-1"
    assert courier.jobs == 1
    con.close()


_USER = st.dictionaries(st.sampled_from(["recipient", "to", "data"]), st.text(max_size=8))


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(st.lists(_USER, min_size=1, max_size=5), min_size=1, max_size=6),
    skip=st.sets(st.integers(0, 5)),
    window=st.tuples(st.integers(0, 5), st.integers(0, 5)),
    large=st.booleans(),
    order=st.randoms(use_true_random=False),
)
def test_bodies_are_the_batches_users_in_order(
    batches: list[list[dict[str, str]]],
    skip: set[int],
    window: tuple[int, int],
    large: bool,
    order: random.Random,
) -> None:
    """Each body is ``{"users":[...]}`` with the batch's users in row order, whatever the
    users' text holds (commas, brackets, quotes, non-ASCII) and however Arrow lays it out."""
    rows = [
        (b, n, orjson.dumps(u).decode())
        for b, users in enumerate(batches)
        for n, u in enumerate(users)
    ]
    order.shuffle(rows)
    con = duckdb.connect()
    con.execute("SET arrow_large_buffer_size = ?", [large])
    plan_rows = pa.table(
        {
            "batch_no": [r[0] for r in rows],
            "row_number": [r[1] for r in rows],
            "user_json": [r[2] for r in rows],
        }
    )
    con.register("plan_rows", plan_rows)
    con.execute("CREATE TABLE plan AS SELECT * FROM plan_rows")
    lo, hi = min(window), max(window)
    got = _read_bodies(con, lo, hi, skip)
    expected = [
        (b, len(users), users) for b, users in enumerate(batches) if lo <= b <= hi and b not in skip
    ]
    assert [(x.batch_no, x.users, orjson.loads(x.body)["users"]) for x in got] == expected
    con.close()


def test_a_user_without_json_stops_the_send_rather_than_shrink_a_body() -> None:
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE plan AS SELECT * FROM (VALUES (0, 1, '{\"a\":1}'), (0, 2, NULL)) "
        "t(batch_no, row_number, user_json)"
    )
    with pytest.raises(StateError, match=r"users without JSON \(1 in batches 0-0\)"):
        _read_bodies(con, 0, 0, set())
    con.close()
