"""Paging and polling are bounded: cursors must advance, listings fit ``received``, and a
job that never completes is given up on (resumably) after a bounded wait."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from bulkbatch.client.paging import (
    FIRST_POLL,
    MIN_DEFAULT_WAIT,
    PollSchedule,
    UsersPaging,
    default_max_wait,
)
from bulkbatch.errors import PagingError, Terminal
from tests.client.support import JOB, assert_one_clear_line, make_client


def users(start: int, n: int) -> list[dict[str, Any]]:
    return [{"recipient": f"u{i}", "status": "ENQUEUED"} for i in range(start, start + n)]


def test_a_normal_listing_passes() -> None:
    paging = UsersPaging(JOB, received=250)
    assert paging.check(users(0, 100), "c1", True)
    assert paging.cursor == "c1"
    assert paging.check(users(100, 100), "c2", True)
    assert not paging.check(users(200, 50), None, False)
    assert (paging.pages, paging.listed) == (3, 250)


def test_a_repeated_cursor_names_the_job_and_the_cursor() -> None:
    paging = UsersPaging(JOB, received=1000)
    paging.check(users(0, 100), "c1", True)
    with pytest.raises(PagingError) as info:
        paging.check(users(100, 100), "c1", True)
    text = assert_one_clear_line(info.value)
    assert JOB in text and "'c1'" in text and "already used" in text
    assert isinstance(info.value, Terminal)


def test_the_cursor_given_when_resuming_counts_as_used() -> None:
    paging = UsersPaging(JOB, received=1000, pages=3, listed=300, cursor="c3")
    with pytest.raises(PagingError, match="'c3' was already used"):
        paging.check(users(300, 100), "c3", True)


def test_more_users_than_received_is_one_clear_error() -> None:
    """315 rows for 300 inputs."""
    paging = UsersPaging(JOB, received=300)
    paging.check(users(0, 105), "c1", True)
    paging.check(users(105, 105), "c2", True)
    with pytest.raises(PagingError) as info:
        paging.check(users(210, 105), "c3", True)
    text = assert_one_clear_line(info.value)
    assert "315 users listed so far, more than the 300 it received" in text
    assert JOB in text


def test_a_recipient_twice_on_one_page_is_an_error() -> None:
    with pytest.raises(PagingError, match="'u1' is listed twice"):
        UsersPaging(JOB, received=300).check(users(0, 2) + users(1, 1), None, False)


def test_pages_are_bounded_by_received() -> None:
    paging = UsersPaging(JOB, received=250)
    assert paging.max_pages == 4
    for n in range(4):
        paging.check([], f"c{n + 1}", True)
    with pytest.raises(PagingError, match="more than 4 pages"):
        paging.check([], "c5", True)


def test_more_without_a_cursor_is_an_error() -> None:
    with pytest.raises(PagingError, match="gives no cursor"):
        UsersPaging(JOB, received=300).check(users(0, 100), None, True)


@pytest.mark.anyio
async def test_iter_users_stops_an_endless_cursor() -> None:
    calls = 0

    def endless(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(
            200, json={"items": [], "paging": {"cursor": f"c{calls}", "more": True}}
        )

    async with make_client(endless) as client:
        with pytest.raises(PagingError, match="more than 3 pages"):
            _ = [p async for p in client.iter_users(JOB, received=100)]
    assert calls == 4


# -- polling --------------------------------------------------------------------------------


def test_poll_waits_start_early_and_double_to_the_interval() -> None:
    schedule = PollSchedule(2.0)
    waits = [schedule.next_wait() for _ in range(8)]
    assert waits == [FIRST_POLL, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    fast = PollSchedule(0.02)
    assert [fast.next_wait() for _ in range(3)] == [0.02, 0.02, 0.02]


def test_default_wait_grows_with_the_job() -> None:
    assert default_max_wait(0) == MIN_DEFAULT_WAIT
    assert default_max_wait(1_000_000) > default_max_wait(10_000) > MIN_DEFAULT_WAIT
    assert PollSchedule(1.0, users=1_000_000).limit == default_max_wait(1_000_000)
    assert PollSchedule(1.0, max_wait=5.0, users=1_000_000).limit == 5.0
