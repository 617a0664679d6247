"""Retry-After as Courier may send it (seconds, milliseconds, an HTTP date against the
server's clock), and the retry policy's cap on what it may make the client wait."""

from __future__ import annotations

import email.utils

import httpx
import pytest

from bulkbatch.client.courier import parse_retry_after
from bulkbatch.client.retry import RetryPolicy
from bulkbatch.errors import RateLimited
from tests.client.support import JOB, ManualClock, Recorder, err, make_client


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after(httpx.Headers({"Retry-After": "3"})) == 3.0
    assert parse_retry_after(httpx.Headers({"Retry-After": "1.5"})) == 1.5
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "1500", "Retry-After": "9"})) == 1.5
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "x", "Retry-After": "9"})) == 9.0
    assert parse_retry_after(httpx.Headers({})) is None
    assert parse_retry_after(httpx.Headers({"Retry-After": "soon"})) is None
    assert parse_retry_after(httpx.Headers({"Retry-After": "-4"})) == 0.0
    date = email.utils.formatdate(1_700_000_030, usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": date}), now=1_700_000_000) == 30.0
    # The server's Date header is the reference when present.
    server_now = email.utils.formatdate(1_700_000_020, usegmt=True)
    headers = httpx.Headers({"Retry-After": date, "Date": server_now})
    assert parse_retry_after(headers, now=0.0) == 10.0
    past = email.utils.formatdate(1_600_000_000, usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": past}), now=1_700_000_000) == 0.0


@pytest.mark.anyio
async def test_http_date_retry_after_reaches_the_error() -> None:
    when = email.utils.formatdate(1_700_000_005, usegmt=True)
    now = email.utils.formatdate(1_700_000_000, usegmt=True)
    rec = Recorder(err(429, headers={"Retry-After": when, "Date": now}))
    async with make_client(rec, max_attempts=1) as client:
        with pytest.raises(RateLimited) as info:
            await client.run_job(JOB)
    assert info.value.retry_after == 5.0


@pytest.mark.anyio
async def test_huge_retry_after_is_capped_by_the_policy() -> None:
    rec = Recorder(err(429, headers={"Retry-After": "86400"}), httpx.Response(202))
    clock = ManualClock()
    policy = RetryPolicy(max_attempts=3, max_retry_after=60.0)
    async with make_client(rec, clock=clock, policy=policy) as client:
        await client.run_job(JOB)
    assert max(clock.sleeps) <= 60.0
    assert sum(clock.sleeps) <= 120.0
