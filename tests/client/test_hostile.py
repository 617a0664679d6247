"""Hostile servers, over real HTTP on 127.0.0.1: every case ends in bounded time with one
clear error line (no traceback text, no "please report").

Retry and poll waits run on a fake clock, so nothing here sleeps for real; only the
``hang`` case waits, for its (short) HTTP timeout.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulkbatch.client.courier import CourierClient, RetryEvent
from bulkbatch.client.paging import default_max_wait
from bulkbatch.client.ratelimit import AdaptiveLimiter
from bulkbatch.config import Settings
from bulkbatch.errors import (
    ApiUnavailable,
    BadResponse,
    BulkBatchError,
    Interrupted,
    InvalidHeader,
    PagingError,
    RateLimited,
)
from bulkbatch.stages.track import wait_for_job
from bulkbatch.state import JobState, RunState
from bulkbatch.testing.misbehaving import JOB_ID, MODES, MisbehavingServer, serve
from tests.client.support import SECRET, ManualClock, assert_one_clear_line

BOUND = 10.0
"""Seconds any one case may take (the suite's timeout is 300)."""


class Harness:
    def __init__(self, server: MisbehavingServer, **settings: object) -> None:
        self.server = server
        self.clock = ManualClock()
        self.events: list[RetryEvent] = []
        base = {"base_url": server.url, "api_key": SECRET, "max_attempts": 3, **settings}
        self.client = CourierClient(
            Settings(**base),  # type: ignore[arg-type]
            limiter=AdaptiveLimiter(1000.0, clock=self.clock),
            clock=self.clock,
            on_retry=self.events.append,
        )


@pytest.fixture
def started() -> Iterator[float]:
    began = time.monotonic()
    yield began
    assert time.monotonic() - began < BOUND


def check(exc: BaseException, *expected: str) -> str:
    assert isinstance(exc, BulkBatchError)
    text = assert_one_clear_line(exc)
    for part in expected:
        assert part in text, text
    assert SECRET not in text
    return text


async def page_all(h: Harness) -> None:
    job = await h.client.retrieve_job(JOB_ID)
    async for _ in h.client.iter_users(JOB_ID, received=job.received):
        pass


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("endless-cursor", "more than 5 pages"),
        ("repeat-cursor", "the next cursor 'c-same' was already used"),
        ("repeat-items", "315 users listed so far, more than the 300 it received"),
    ],
)
async def test_paging_that_would_not_end(mode: str, expected: str, started: float) -> None:
    with serve(mode) as server:
        h = Harness(server)
        async with h.client:
            with pytest.raises(PagingError) as info:
                await page_all(h)
    check(info.value, f"bulk job {JOB_ID}", expected)
    # the job, then at most max_pages + 1 pages (the one that broke the bound)
    assert len(server.requests) <= 1 + 5 + 1


@pytest.mark.anyio
async def test_wrong_types(started: float) -> None:
    with serve("wrong-types") as server:
        h = Harness(server)
        async with h.client:
            with pytest.raises(BadResponse) as job_info:
                await h.client.retrieve_job(JOB_ID)
            with pytest.raises(BadResponse) as page_info:
                await h.client.list_users(JOB_ID)
            with pytest.raises(BadResponse) as lean_info:  # what tracking calls
                await h.client.list_user_statuses(JOB_ID)
    check(job_info.value, f"GET /bulk/{JOB_ID} got HTTP 200", "job.received is 'x', not an integer")
    check(page_info.value, "items[0] is 'u1', not an object")
    assert str(lean_info.value) == str(page_info.value)
    assert len(server.requests) == 3  # not retried


@pytest.mark.anyio
async def test_non_json(started: float) -> None:
    with serve("non-json") as server:
        h = Harness(server)
        async with h.client:
            with pytest.raises(BadResponse) as info:
                await h.client.create_job({"event": "e"})
    check(info.value, "the body is not JSON (text/html)", "Gateway says hi")
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_huge_retry_after_is_capped_and_reported(started: float) -> None:
    with serve("huge-retry") as server:
        h = Harness(server, max_backoff=30.0)
        async with h.client:
            with pytest.raises(RateLimited) as info:
                await h.client.run_job(JOB_ID)
    check(info.value, "HTTP 429", "gave up after 3 attempts")
    assert len(server.requests) == 3
    assert h.clock.sleeps and max(h.clock.sleeps) <= 30.0
    assert sum(h.clock.sleeps) <= 3 * 30.0 + 1
    assert [e.attempt for e in h.events] == [1, 2, 3]
    assert [e.will_retry for e in h.events] == [True, True, False]
    for event in h.events:
        assert event.reason == (
            "HTTP 429 rate limited; Retry-After 86400 s capped at 30 s (--max-backoff (max_backoff=))"
        )
        assert event.status == 429 and event.max_attempts == 3


@pytest.mark.anyio
async def test_never_completing_job(tmp_path: Path, started: float) -> None:
    with serve("never-completes") as server:
        h = Harness(server)
        job = JobState(job_no=0, users=300, job_id=JOB_ID)
        state = RunState(run_dir=tmp_path, run_id="t", jobs=[job])
        async with h.client:
            with pytest.raises(Interrupted) as info:
                await wait_for_job(h.client, state, job, poll_interval=60.0, clock=h.clock)
    check(info.value, "still PROCESSING", "--timeout", "bulkbatch resume")
    assert sum(h.clock.sleeps) <= default_max_wait(300)


@pytest.mark.anyio
async def test_redirect_to_another_host_is_not_followed(started: float) -> None:
    with serve("redirect") as server:
        h = Harness(server)
        async with h.client:
            with pytest.raises(BadResponse) as info:
                await h.client.create_job({"event": "e"})
    check(info.value, "HTTP 307", "redirect to http://elsewhere.invalid", "does not follow")
    # One request, to the server we were given; the key went nowhere else.
    assert [(m, p) for m, p, _ in server.requests] == [("POST", "/bulk")]
    assert h.events == []


@pytest.mark.anyio
async def test_hang_is_bounded_by_the_http_timeout(started: float) -> None:
    with serve("hang") as server:
        h = Harness(server, timeout=0.3, max_attempts=2)
        async with h.client:
            with pytest.raises(ApiUnavailable) as info:
                await h.client.retrieve_job(JOB_ID)
    text = check(info.value, "timed out", "raise --http-timeout (http_timeout=)", "now 0.3 s")
    assert "after 2 attempts" in text
    # One retry, reported; the last failure is the error itself.
    (event,) = h.events
    assert event.reason == "ReadTimeout (no answer in 0.3 s)"
    assert (event.status, event.attempt, event.will_retry) == (None, 1, True)


@pytest.mark.anyio
async def test_the_ok_mode_is_a_working_courier(started: float) -> None:
    with serve("ok", received=250) as server:
        h = Harness(server)
        async with h.client:
            job_id = await h.client.create_job({"event": "e"})
            assert (await h.client.add_users(job_id, [{"recipient": "a"}])).status == 204
            await h.client.run_job(job_id)
            job = await h.client.retrieve_job(job_id)
            pages = [p async for p in h.client.iter_users(job_id, received=job.received)]
    assert sum(len(p.items) for p in pages) == 250
    assert server.requests[0][2]["authorization"] == f"Bearer {SECRET}"


@pytest.mark.anyio
async def test_a_header_h11_refuses_never_shows_its_value(started: float) -> None:
    """A key that got past the checks (as a bug would let it) with a newline in it: h11
    refuses to send it; the error says so without the value and nothing is retried."""
    with serve("ok") as server:
        h = Harness(server)
        async with h.client:
            h.client._http.headers["Authorization"] = f"Bearer {SECRET}\r\nX-Injected: 1"
            with pytest.raises(InvalidHeader) as info:
                await h.client.create_job({"event": "e"})
            stats = h.client.stats
    text = check(info.value, "was not sent", "not shown")
    assert "network" not in text
    assert SECRET not in "".join(traceback.format_exception(info.value))
    assert server.requests == [] and h.events == [] and stats.transport_errors == 0


def test_every_mode_is_covered() -> None:
    assert set(MODES) == {
        "ok",
        "endless-cursor",
        "repeat-cursor",
        "repeat-items",
        "wrong-types",
        "non-json",
        "huge-retry",
        "never-completes",
        "redirect",
        "hang",
    }
