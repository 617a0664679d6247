"""Pacing: a token bucket for a known rate, and AIMD on top of it for an unknown one.

One :class:`AdaptiveLimiter` is shared by every request of a run. Each attempt of each
request takes one token first (:meth:`AdaptiveLimiter.acquire`), so the *request* rate,
retries included, never goes above the limiter's rate.

**The bound the bucket keeps.** :class:`TokenBucket` is GCRA ("virtual scheduling") with a
tolerance of ``burst - 1`` tokens. Every grant moves the theoretical arrival time on by
``1 / rate``, so *n* grants inside any half-open window ``[t, t + w)`` satisfy
``(n - 1) / rate - (burst - 1) / rate < w``, that is::

    grants in any window [t, t + w)  <=  ceil(rate * w + burst) - 1

With the default ``burst=1`` this is ``ceil(rate * w)``: for an integer ``--rate R`` no window
of one second ever holds more than ``R`` requests, and for a fractional rate no more than
``ceil(R)`` (which any steady pacing at a fractional rate must reach). The bound holds while
the rate is not raised; lowering the rate keeps it. ``tests/client/test_ratelimit.py`` checks it with
Hypothesis on a virtual clock.

**AIMD** (used when the rate is unknown, and below the ceiling when Courier throttles a
known rate): see :class:`AdaptiveLimiter`.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Protocol

import anyio

from bulkbatch.config import DEFAULT_START_RATE

__all__ = ["AdaptiveLimiter", "AnyioClock", "Clock", "TokenBucket"]


class Clock(Protocol):
    """Where the limiter and the retry loop get the time and sleep; tests pass a fake one."""

    def now(self) -> float:
        """A monotonic time in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class AnyioClock:
    """The event loop's clock: :func:`anyio.current_time` and :func:`anyio.sleep`.

    On asyncio :meth:`now` reads the running loop's ``time()`` directly (the value
    :func:`anyio.current_time` returns, without its per-call backend lookup: the limiter
    and the request loop read the clock several times per request).
    """

    def now(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:  # trio, or no loop running
            return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    def __repr__(self) -> str:
        return "AnyioClock()"


class TokenBucket:
    """Grant at most ``rate`` tokens per second, with at most ``burst`` at once.

    :param rate: tokens per second (> 0)
    :param burst: how many tokens may be taken back to back after an idle spell; the
        default ``1`` spaces every grant ``1 / rate`` apart, which keeps every window of
        ``w`` seconds at ``ceil(rate * w)`` grants or fewer (see the module docstring)
    :param clock: where time comes from; :class:`AnyioClock` by default

    A caller that has to wait reserves its slot first and then sleeps, so waiters are
    served in order and a late wake-up does not shift the schedule of the others.
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Clock | None = None) -> None:
        if burst is None:
            burst = 1.0
        if burst < 1:
            raise ValueError(f"burst {burst} must be at least 1")
        self._burst = float(burst)
        self._clock: Clock = clock if clock is not None else AnyioClock()
        self._rate = 1.0
        self.set_rate(rate)
        # The theoretical arrival time of the next token; -inf: the bucket starts full.
        self._tat = -math.inf
        # Actual grant times within the last second (see acquire).
        self._log: deque[float] = deque()

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    def set_rate(self, rate: float) -> None:
        """Change the rate; slots already reserved keep their time."""
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"rate {rate} must be a finite number above 0")
        self._rate = float(rate)

    def reserve(self) -> float:
        """Take the next token and return the time at which it may be used."""
        now = self._clock.now()
        interval = 1.0 / self._rate
        tolerance = (self._burst - 1.0) * interval
        slot = max(now, self._tat - tolerance)
        self._tat = max(self._tat, slot) + interval
        return slot

    def defer(self, until: float) -> None:
        """Make the bucket empty at ``until``: no token accumulates before then."""
        tolerance = (self._burst - 1.0) / self._rate
        self._tat = max(self._tat, until + tolerance)

    def window_limit(self) -> int:
        """The most grants allowed in any one second: ``ceil(rate + burst) - 1``."""
        return max(1, math.ceil(self._rate + self._burst - 1e-9) - 1)

    async def acquire(self) -> None:
        """Wait until a token is available and take it.

        The GCRA slot alone keeps the bound on an exact clock. On a real event loop a stall
        (CPU, GC) can wake several waiters whose slots have passed at once, so the grant is
        also checked against a log of the last second's actual grant times.
        """
        clock = self._clock
        slot = self.reserve()
        delay = slot - clock.now()
        if delay > 0:
            await clock.sleep(delay)
        log = self._log
        while True:
            now = clock.now()
            while log and log[0] <= now - 1.0:
                log.popleft()
            if len(log) < self.window_limit():
                log.append(now)
                return
            await clock.sleep(max(1e-6, log[0] + 1.0 - now))

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self._rate:g}, burst={self._burst:g})"


class AdaptiveLimiter:
    """The one pacing object shared by every request of a run.

    :param rate: the most requests per second (``--rate``). Given, it is a ceiling: the
        bucket starts there (less ``HEADROOM``) and never goes above it. ``None``: the limit is unknown; start
        at ``start_rate`` and find it (below).
    :param start_rate: the first rate when ``rate`` is ``None``
    :param clock: where time comes from; :class:`AnyioClock` by default

    The algorithm (constants are class attributes):

    * **Slow start** (unknown rate only): every second in which the limiter was the
      bottleneck (at least ``BOUND_SHARE`` of the rate's tokens were taken) and no 429 came
      back, the rate doubles, until the first 429.
    * **Multiplicative decrease**, once per congestion event: the new rate is ``BETA`` times
      the rate Courier actually *accepted* (2xx answers) over the last second of sending, or
      the nominal rate if that is lower. All 429s for requests *sent before* the decrease
      belong to the event that caused it and do not cut the rate again (the client passes
      ``sent_at``; without it a 429 within ``HOLDOFF`` seconds of the last cut is the same
      event).
    * **Additive increase**: afterwards, every second in which the limiter was the
      bottleneck and nothing was throttled, the rate grows by ``ALPHA`` times itself (capped
      at ``rate`` when one was given), so it probes back up slowly.
    * **Retry-After**: a 429 that names a wait pauses *every* request sharing the limiter
      until it passes, and the bucket starts empty after the pause (no burst).

    The limiter-bound check keeps the rate from climbing while the real bottleneck is
    elsewhere (concurrency, latency), so it stays within ``1 / BOUND_SHARE`` of what is
    really being sent.
    """

    BETA = 0.85
    """Multiplicative decrease factor."""
    ALPHA = 0.03
    """Additive increase per second, as a share of the current rate."""
    BOUND_SHARE = 0.8
    """A second counts as "limiter-bound" when at least this share of its tokens was used."""
    HOLDOFF = 1.0
    """Without ``sent_at``, 429s this many seconds after a cut belong to the same event."""
    HEADROOM = 0.98
    """A given rate R is paced at ``HEADROOM * R``: R grants then span 1.02 s, so up to 20 ms
    of scheduling jitter between a grant and the wire cannot put R + 1 requests into one
    second. It costs 2 % of R."""
    MIN_RATE = 0.1
    """The rate never goes below this many requests per second."""
    MAX_RATE = 1_000_000.0
    """Nor above this one when no rate was given."""

    def __init__(
        self,
        rate: float | None,
        *,
        start_rate: float = DEFAULT_START_RATE,
        clock: Clock | None = None,
    ) -> None:
        if rate is not None and not rate > 0:
            raise ValueError(f"rate {rate} must be above 0")
        if not start_rate > 0:
            raise ValueError(f"start_rate {start_rate} must be above 0")
        self._clock: Clock = clock if clock is not None else AnyioClock()
        self._given = float(rate) if rate is not None else None
        self._ceiling = float(rate) * self.HEADROOM if rate is not None else self.MAX_RATE
        initial = self._ceiling if rate is not None else min(float(start_rate), self.MAX_RATE)
        self._bucket = TokenBucket(initial, clock=self._clock)
        self._slow_start = rate is None
        self._pause_until = -math.inf
        self._last_cut = -math.inf
        self._active_since: float | None = None
        self._epoch_start: float | None = None
        self._epoch_grants = 0
        self._epoch_throttled = False
        self._successes: deque[float] = deque()
        self.congestion_events = 0
        """How many times the rate was cut."""

    @property
    def current_rate(self) -> float:
        """The rate, in requests per second, that the bucket paces to now."""
        return self._bucket.rate

    @property
    def ceiling(self) -> float | None:
        """The rate given by the user, or ``None`` when it is being found."""
        return self._given

    @property
    def in_slow_start(self) -> bool:
        return self._slow_start

    @property
    def paused_until(self) -> float:
        """Clock time before which no request is sent (``-inf``: no pause)."""
        return self._pause_until

    async def acquire(self) -> None:
        """Wait for a token, and for any pause a Retry-After asked for."""
        clock = self._clock
        while True:
            now = clock.now()
            if now < self._pause_until:
                await clock.sleep(self._pause_until - now)
                continue
            await self._bucket.acquire()
            if clock.now() >= self._pause_until:
                break
            # A 429 paused everything while this task waited: its token is void.
        self._on_grant(clock.now())

    def _on_grant(self, now: float) -> None:
        if self._active_since is None:
            self._active_since = now
        if self._epoch_start is None:
            self._epoch_start = now
        elapsed = now - self._epoch_start
        if elapsed >= 1.0:
            rate = self._bucket.rate
            bound = self._epoch_grants >= self.BOUND_SHARE * rate * elapsed
            if bound and not self._epoch_throttled:
                if self._slow_start:
                    new = rate * 2.0
                else:
                    new = rate * (1.0 + self.ALPHA * min(elapsed, 2.0))
                self._bucket.set_rate(min(new, self._ceiling))
            self._epoch_start = now
            self._epoch_grants = 0
            self._epoch_throttled = False
        self._epoch_grants += 1

    def on_success(self) -> None:
        """Record a 2xx answer (the rate Courier accepts is measured from these)."""
        now = self._clock.now()
        self._successes.append(now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        successes = self._successes
        while successes and successes[0] <= now - 1.0:
            successes.popleft()

    def _accepted_rate(self, now: float) -> float | None:
        """2xx answers per second over the last second of sending, if long enough to judge."""
        self._trim(now)
        since = self._active_since if self._active_since is not None else now
        window = min(1.0, now - max(since, self._pause_end_before(now)))
        if window < 0.25:
            return None
        return sum(1 for t in self._successes if t > now - window) / window

    def _pause_end_before(self, now: float) -> float:
        return self._pause_until if self._pause_until <= now else -math.inf

    def on_throttled(self, retry_after: float | None, *, sent_at: float | None = None) -> None:
        """A 429 came back: cut the rate once per congestion event, honour ``retry_after``.

        :param retry_after: seconds the server asked to wait; pauses every request
        :param sent_at: clock time at which the throttled request was sent; a request
            sent before the last cut is part of the event that caused that cut
        """
        now = self._clock.now()
        if sent_at is not None:
            new_event = sent_at >= self._last_cut
        else:
            new_event = now >= self._last_cut + self.HOLDOFF
        accepted = self._accepted_rate(now) if new_event else None
        if self._epoch_start is not None and now >= self._epoch_start:
            self._epoch_throttled = True
        if retry_after is not None and retry_after > 0:
            self._pause_until = max(self._pause_until, now + retry_after)
            self._bucket.defer(self._pause_until)
        if not new_event:
            return
        self.congestion_events += 1
        self._slow_start = False
        rate = self._bucket.rate
        base = rate if accepted is None else min(rate, accepted)
        self._bucket.set_rate(min(self._ceiling, max(self.MIN_RATE, self.BETA * base)))
        self._last_cut = now
        # The next increase waits for a full second of sending after the cut (and pause).
        self._epoch_start = max(now, self._pause_until)
        self._epoch_grants = 0
        self._epoch_throttled = False

    def __repr__(self) -> str:
        mode = f"ceiling={self._given:g}" if self._given is not None else "unknown limit"
        return f"AdaptiveLimiter(rate={self.current_rate:.4g}, {mode})"
