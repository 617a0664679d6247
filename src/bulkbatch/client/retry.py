"""When and how long to wait before trying a request again.

Only ``Retryable`` errors are retried (``RateLimited``, ``ServerError``, ``ApiUnavailable``),
decided by class, never by message text. The wait is capped exponential backoff with full
jitter (``uniform(0, min(cap, base * 2**attempt))``), raised to the server's ``Retry-After``
when it sent one, and never above ``max_retry_after`` (by default the same cap,
``--max-backoff``, 30 s: a server asking for a day is not waited a day on).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bulkbatch.config import Settings
from bulkbatch.errors import Retryable

__all__ = ["RetryPolicy"]

_MAX_EXPONENT = 64  # 2**64 * base is far above any cap; keeps the float finite


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to try a request, and how long to wait between tries.

    :param max_attempts: tries in all, the first included (1 = never retry)
    :param base: the first backoff window, in seconds
    :param cap: the largest backoff window, in seconds (``--max-backoff``)
    :param max_retry_after: the longest wait a server's ``Retry-After`` may impose;
        ``None`` (the default): ``cap``
    """

    max_attempts: int = 8
    base: float = 0.5
    cap: float = 30.0
    max_retry_after: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts {self.max_attempts} must be at least 1")
        if self.base < 0 or self.cap < 0 or self.retry_after_cap < 0:
            raise ValueError("base, cap and max_retry_after must not be negative")

    @property
    def retry_after_cap(self) -> float:
        """The longest wait a ``Retry-After`` may impose (``max_retry_after``, else ``cap``)."""
        return self.cap if self.max_retry_after is None else self.max_retry_after

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The policy for ``Settings(max_attempts=..., max_backoff=...)``."""
        return cls(max_attempts=settings.max_attempts, cap=settings.max_backoff)

    def should_retry(self, attempts_made: int, exc: BaseException) -> bool:
        """Whether to try again after ``attempts_made`` tries, the last failing with ``exc``."""
        return isinstance(exc, Retryable) and attempts_made < self.max_attempts

    def window(self, attempt: int) -> float:
        """The backoff window before retry number ``attempt`` (0 = the first retry)."""
        exponent = min(max(attempt, 0), _MAX_EXPONENT)
        return min(self.cap, self.base * 2.0**exponent)

    def delay(self, attempt: int, exc: BaseException, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0 = the first retry).

        Full jitter: a uniform draw from ``[0, min(cap, base * 2**attempt)]``. When ``exc``
        carries a ``retry_after`` (429 or 5xx with ``Retry-After``), the wait is at least
        that, but never more than :attr:`retry_after_cap`.
        """
        draw = (rng if rng is not None else random).uniform(0.0, self.window(attempt))
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after > 0:
            return min(max(float(retry_after), draw), self.retry_after_cap)
        return draw
