"""Settings: where Courier is, how fast to talk to it, and the key.

This is the only module that reads ``os.environ``. The key comes from
``COURIER_API_KEY`` (or is passed in) and is never part of ``repr``, ``str``,
a log line, or anything written to a run directory.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from bulkbatch.errors import UsageError
from bulkbatch.options import option

__all__ = [
    "CUT_PAGERS",
    "DEFAULT_BASE_URL",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_START_RATE",
    "MAX_BATCH_SIZE",
    "MIN_AUTO_JOB_SIZE",
    "Settings",
    "auto_job_size",
]

DEFAULT_BASE_URL = "https://api.courier.com"
MAX_BATCH_SIZE = 1000
"""Courier answers 502 above roughly this many users in one ingest call."""
DEFAULT_CONCURRENCY = 32
"""Writes in flight (ingest calls and job creates), and the reads a run starts with (they
widen to ``READ_FACTOR`` × this while the server keeps up: :mod:`bulkbatch.client.concurrency`).
Over the internet each request costs a round trip: against the emulator with 50 ms latency,
1M users took 101 s at 8 and 68 s at 16 (an early round). It was 16 until round 33 of #19,
which measured 1M people at 150 ms per request in 42.2-42.7 s at 32 (42.2-43.4 at 24)
against 44.3 and 45.3 s at 16 (the emulator's one core became the bound of the ingest;
against Courier, 32 halves the ingest's round trips), 10M people at no latency in 259.8 and
267.4 s (414-415 MiB) at 32 against 251.0 and 292.7 s (412-417 MiB) at 16, and 200k people
at 20 ms with 3.5 s of client CPU in send and track at 32 against 4.0-4.1 s at 16. The
default job cut does not follow it (:data:`CUT_PAGERS`)."""
DEFAULT_START_RATE = 800.0
"""Requests per second a run starts at when no ``--rate`` is given; the limiter doubles it
each second the limiter is what holds the run back, until the first 429 (then AIMD). It was
50: a 200k send at 20 ms per request spent its first ~3 s waiting on its own limiter
(13.0-13.3 s against 10.9-11.5 s from 800, three runs each, round 12 of #19), and every
test started at 2,000 to avoid it. Courier documents no rate limit for these endpoints, the
requests in flight are bounded by ``--concurrency`` whatever the rate, and a 429 cuts the
rate at once (to what Courier accepted once a quarter second of answers is in)."""
MIN_AUTO_JOB_SIZE = 10_000
"""With no ``max_job_size`` given, a run is cut into about ``JOBS_PER_PAGER * CUT_PAGERS``
(64) jobs of at least this many users. Per-user results are paged 100 at a time, strictly
one page after the next within a job, so one job of 1M users is 10,000 sequential round
trips (minutes over the internet); jobs page side by side (``stages.track.tracked_at_once``)."""
JOBS_PER_PAGER = 4
"""Jobs are ingested a few at a time (``stages.send.ingest_lanes``) and each is paged once it
has run, one page after the next, so the last job to finish ingesting is paged alone after
all ingesting is done: the smaller the jobs, the shorter that tail. With 50 ms per request,
1M users in 16 jobs spent ~38 s paging after the last ingest (625 sequential pages); in 64
jobs the tail is ~156 pages. Frozen: the job size is part of the campaign id, so a retry
after an upgrade must cut the same jobs (more jobs than read slots page faster against a
distant API: README, *More jobs than read slots*)."""
CUT_PAGERS = 16
"""The pagers the default cut is sized for: the ``--concurrency`` default when the cut was
chosen. Frozen with :data:`JOBS_PER_PAGER` (the campaign id), whatever ``--concurrency`` a
run has or defaults to."""


def auto_job_size(rows: int) -> int:
    """The job size used when none is given: ``rows`` over about 64 jobs, at least
    :data:`MIN_AUTO_JOB_SIZE`. The same for every ``--concurrency``: a retry with other tuning
    (or after an upgrade that changed the default) must cut the same jobs and send the same
    keys."""
    return max(MIN_AUTO_JOB_SIZE, -(-rows // (JOBS_PER_PAGER * CUT_PAGERS)))


def check_base_url(url: str) -> None:
    """Refuse an API root no request could use, before anything is stored or sent: not
    http(s), no host, or credentials in it (``user:password@``), which would otherwise be
    written to state.json and the campaign registry; such a URL is never repeated.

    :raises UsageError: naming ``COURIER_BASE_URL`` and its flag
    """
    opt = option("base_url")
    name = f"{opt.envvar} ({opt.flag})"
    shown = re.sub(r"[^/@]*@", "***@", str(url))  # whatever precedes an @ may be a secret
    try:
        parts = urlsplit(str(url))
    except ValueError:
        parts = None
    if parts is not None and "@" in parts.netloc:
        raise UsageError(
            f"{name} holds a user name or password ({parts.scheme}://***@...): Courier takes "
            f"the API key as a bearer token, from {option('api_key').envvar}. Remove them "
            "from the URL."
        )
    if parts is None or parts.scheme.lower() not in ("http", "https"):
        raise UsageError(
            f"{name} {shown!r} must start with https:// (or http:// for a local emulator)."
        )
    if not parts.hostname:
        raise UsageError(f"{name} {shown!r} has no host; use e.g. {DEFAULT_BASE_URL}.")


@dataclass(frozen=True)
class Settings:
    """How bulkbatch talks to Courier.

    :param base_url: the API root; ``COURIER_BASE_URL`` or ``https://api.courier.com``
    :param api_key: the bearer token; ``COURIER_API_KEY``. Never shown in ``repr``
    :param rate: the most requests per second to send (token bucket); ``None`` means
        unknown: start at ``start_rate`` and adapt to 429s (AIMD)
    :param concurrency: the most requests in flight at once
    :param timeout: seconds to wait for one HTTP response
    :param max_attempts: tries per request before giving up (retryable errors only)
    :param max_backoff: the cap, in seconds, of one wait between tries
    :param poll_interval: seconds between job status polls
    """

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    rate: float | None = None
    start_rate: float = DEFAULT_START_RATE
    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float = 30.0
    max_attempts: int = 8
    max_backoff: float = 30.0
    poll_interval: float = 1.0

    def __post_init__(self) -> None:
        check_base_url(self.base_url)
        # The options shared with the command line are checked by their one definition
        # (bulkbatch.options), so the wording names the real flag.
        option("rate").check(self.rate)
        option("concurrency").check(self.concurrency)
        option("http_timeout").check(self.timeout)
        option("poll_interval").check(self.poll_interval)
        option("max_attempts").check(self.max_attempts)
        option("max_backoff").check(self.max_backoff)
        value = self.start_rate
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise UsageError(f"Settings(start_rate={value!r}): use a number above 0.")

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings from ``COURIER_BASE_URL`` / ``COURIER_API_KEY``; ``overrides`` win when not None."""
        values: dict[str, Any] = {
            "base_url": os.environ.get("COURIER_BASE_URL") or DEFAULT_BASE_URL,
            "api_key": os.environ.get("COURIER_API_KEY") or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
