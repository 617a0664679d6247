"""RetryPolicy: full-jitter bounds, Retry-After honoured and capped, retryable by class."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkbatch.client.retry import RetryPolicy
from bulkbatch.config import Settings
from bulkbatch.errors import (
    ApiUnavailable,
    AuthenticationError,
    ClientError,
    JobAlreadyRun,
    RateLimited,
    ServerError,
)


def rate_limited(retry_after: float | None) -> RateLimited:
    return RateLimited("POST", "/bulk/x", 429, "slow down", retry_after=retry_after)


class MaxRandom(random.Random):
    """Always draws the top of the range (to check the bound is reachable and respected)."""

    def uniform(self, a: float, b: float) -> float:
        return b


class MinRandom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


@given(
    attempt=st.integers(min_value=0, max_value=5000),
    base=st.floats(min_value=0.0, max_value=10.0),
    cap=st.floats(min_value=0.0, max_value=600.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_full_jitter_stays_in_range(attempt: int, base: float, cap: float, seed: int) -> None:
    policy = RetryPolicy(base=base, cap=cap)
    window = min(cap, base * 2.0 ** min(attempt, 64))
    delay = policy.delay(attempt, ApiUnavailable("timeout"), random.Random(seed))
    assert 0.0 <= delay <= window
    assert policy.delay(attempt, ServerError("GET", "/x", 500), MaxRandom()) == window


def test_windows_double_then_cap() -> None:
    policy = RetryPolicy(base=0.5, cap=30.0)
    assert [policy.window(a) for a in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert policy.window(10_000) == 30.0


def test_full_jitter_covers_the_whole_range() -> None:
    policy = RetryPolicy(base=1.0, cap=8.0)
    rng = random.Random(7)
    draws = [policy.delay(3, ApiUnavailable("x"), rng) for _ in range(2000)]
    assert min(draws) < 0.1
    assert max(draws) > 7.9
    assert 3.6 < sum(draws) / len(draws) < 4.4  # uniform(0, 8) has mean 4


@given(
    retry_after=st.floats(min_value=0.001, max_value=10_000.0),
    attempt=st.integers(min_value=0, max_value=20),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_retry_after_is_a_floor_and_max_retry_after_a_ceiling(
    retry_after: float, attempt: int, seed: int
) -> None:
    policy = RetryPolicy(max_retry_after=300.0)
    delay = policy.delay(attempt, rate_limited(retry_after), random.Random(seed))
    assert delay >= min(retry_after, 300.0)
    assert delay <= 300.0
    assert delay <= max(retry_after, policy.window(attempt))


def test_retry_after_wins_over_a_shorter_draw_and_loses_to_a_longer_one() -> None:
    policy = RetryPolicy(base=0.5, cap=30.0)
    assert policy.delay(0, rate_limited(5.0), MaxRandom()) == 5.0
    assert policy.delay(6, rate_limited(5.0), MaxRandom()) == 30.0
    assert policy.delay(6, rate_limited(5.0), MinRandom()) == 5.0
    assert policy.delay(0, rate_limited(None), MaxRandom()) == 0.5
    # A Retry-After above the cap waits the cap (max_retry_after defaults to it).
    assert policy.delay(0, rate_limited(1e9), MinRandom()) == 30.0
    assert RetryPolicy(max_retry_after=300.0).delay(0, rate_limited(1e9), MinRandom()) == 300.0
    server = ServerError("GET", "/x", 503, retry_after=4.0)
    assert policy.delay(0, server, MinRandom()) == 4.0


def test_only_retryable_errors_are_retried_and_attempts_are_capped() -> None:
    policy = RetryPolicy(max_attempts=3)
    for exc in (rate_limited(1.0), ServerError("GET", "/x", 500), ApiUnavailable("t")):
        assert policy.should_retry(1, exc)
        assert policy.should_retry(2, exc)
        assert not policy.should_retry(3, exc)
    for exc2 in (
        ClientError("GET", "/x", 400),
        AuthenticationError("GET", "/x", 401),
        JobAlreadyRun("POST", "/x", 400),
        ValueError("x"),
    ):
        assert not policy.should_retry(1, exc2)


def test_from_settings_and_validation() -> None:
    policy = RetryPolicy.from_settings(Settings(max_attempts=5, max_backoff=12.0))
    assert (policy.max_attempts, policy.cap) == (5, 12.0)
    assert RetryPolicy().max_attempts == 8
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(cap=-1)
