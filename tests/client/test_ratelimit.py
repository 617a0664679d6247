"""Token bucket and AIMD limiter on a virtual clock.

``VirtualTimeLoop`` is an asyncio loop whose clock only moves when every task is waiting:
its selector jumps time to the next timer instead of sleeping. ``AnyioClock`` (and so the
limiter, the retry waits and ``anyio.sleep`` in a mock server) runs on it unchanged, so
minutes of concurrent traffic simulate in well under a second, deterministically.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import selectors
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkbatch.client.courier import CourierClient
from bulkbatch.client.ratelimit import AdaptiveLimiter, AnyioClock, TokenBucket
from bulkbatch.config import DEFAULT_START_RATE, Settings
from bulkbatch.options import option

# -- a virtual clock for asyncio ---------------------------------------------------------------


class _VirtualSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    loop: VirtualTimeLoop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            # Nothing scheduled: only another thread can wake us; wait for it for real.
            return super().select(1.0)  # type: ignore[no-any-return]
        if timeout > 0:
            self.loop.virtual_now += timeout
        return super().select(0)  # type: ignore[no-any-return]


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.virtual_now = 0.0
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self.virtual_now


def run_virtual(fn: Callable[[], Awaitable[Any]]) -> Any:
    return anyio.run(fn, backend="asyncio", backend_options={"loop_factory": VirtualTimeLoop})


def test_virtual_loop_jumps_time() -> None:
    async def main() -> tuple[float, float]:
        start = anyio.current_time()
        await anyio.sleep(3600)
        return start, anyio.current_time()

    start, end = run_virtual(main)
    assert end - start == pytest.approx(3600)


class ManualClock:
    """For sequential code: sleeping moves time on."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await anyio.lowlevel.checkpoint()


# -- the window bound --------------------------------------------------------------------------

EPS = 1e-7  # float rounding of the clock, seconds


def max_in_window(times: list[float], width: float) -> int:
    """The most grants in any half-open window [t, t + width)."""
    times = sorted(times)
    best = 0
    j = 0
    for i, start in enumerate(times):
        j = max(j, i)
        while j < len(times) and times[j] < start + width - EPS:
            j += 1
        best = max(best, j - i)
    return best


def bound(rate: float, burst: float, width: float) -> int:
    """What the module docstring promises: ceil(rate * width + burst) - 1."""
    return math.ceil(rate * width + burst - 1e-9) - 1


def test_max_in_window_helper() -> None:
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.5], 1.0) == 3
    assert max_in_window([], 1.0) == 0
    assert bound(10, 1, 1) == 10
    assert bound(2.5, 1, 1) == 3
    assert bound(10, 3, 1) == 12


async def _drive(acquire: Callable[[], Awaitable[None]], gaps: list[list[float]]) -> list[float]:
    grants: list[float] = []

    async def worker(my_gaps: list[float]) -> None:
        for gap in my_gaps:
            if gap:
                await anyio.sleep(gap)
            await acquire()
            grants.append(anyio.current_time())

    async with anyio.create_task_group() as tg:
        for g in gaps:
            tg.start_soon(worker, g)
    return grants


gaps_strategy = st.lists(
    st.lists(
        st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=3.0)), min_size=1, max_size=40
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(
    rate=st.one_of(st.integers(1, 300).map(float), st.floats(min_value=0.2, max_value=300.0)),
    burst=st.one_of(st.just(1.0), st.floats(min_value=1.0, max_value=20.0)),
    width=st.one_of(st.just(1.0), st.floats(min_value=0.05, max_value=5.0)),
    gaps=gaps_strategy,
)
def test_bucket_never_exceeds_its_bound_in_any_window(
    rate: float, burst: float, width: float, gaps: list[list[float]]
) -> None:
    async def main() -> list[float]:
        bucket = TokenBucket(rate, burst=burst)
        return await _drive(bucket.acquire, gaps)

    grants = run_virtual(main)
    assert len(grants) == sum(len(g) for g in gaps)
    assert max_in_window(grants, width) <= bound(rate, burst, width)


@settings(max_examples=100, deadline=None)
@given(rate=st.integers(1, 500), gaps=gaps_strategy)
def test_default_bucket_keeps_every_second_at_or_below_an_integer_rate(
    rate: int, gaps: list[list[float]]
) -> None:
    async def main() -> list[float]:
        return await _drive(TokenBucket(rate).acquire, gaps)

    assert max_in_window(run_virtual(main), 1.0) <= rate


class LaggyClock:
    """Virtual time, but every sleep oversleeps by a random lag, like a stalled event loop."""

    def __init__(self, seed: int, max_lag: float) -> None:
        self.rng = random.Random(seed)
        self.max_lag = max_lag

    def now(self) -> float:
        return anyio.current_time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds + self.rng.uniform(0.0, self.max_lag))


@settings(max_examples=60, deadline=None)
@given(
    rate=st.integers(1, 200),
    seed=st.integers(0, 2**16),
    max_lag=st.floats(min_value=0.0, max_value=0.3),
    gaps=gaps_strategy,
)
def test_late_wake_ups_do_not_bunch_grants_into_one_second(
    rate: int, seed: int, max_lag: float, gaps: list[list[float]]
) -> None:
    """Measured against the emulator under load: without the grant log, 54 grants at --rate 50."""

    async def main() -> list[float]:
        bucket = TokenBucket(rate, clock=LaggyClock(seed, max_lag))
        return await _drive(bucket.acquire, [[0.0] * 30 + g for g in gaps])

    assert max_in_window(run_virtual(main), 1.0) <= rate


def test_bound_is_tight_so_the_property_can_fail() -> None:
    # Back-to-back callers reach the bound exactly; a bigger burst goes over the rate.
    async def main(burst: float) -> list[float]:
        return await _drive(TokenBucket(10, burst=burst).acquire, [[0.0] * 30] * 2)

    assert max_in_window(run_virtual(lambda: main(1.0)), 1.0) == 10
    assert max_in_window(run_virtual(lambda: main(5.0)), 1.0) == 14


@pytest.mark.parametrize("rate", [7.0, 50.0, 333.0])
def test_bucket_keeps_up_with_its_rate(rate: float) -> None:
    """With callers always waiting, n grants take (n - 1) / rate: 100 % of the rate."""

    async def main() -> list[float]:
        return await _drive(TokenBucket(rate).acquire, [[0.0] * 100] * 8)

    grants = sorted(run_virtual(main))
    assert grants[-1] - grants[0] == pytest.approx(799 / rate, rel=1e-6)


def test_bucket_validation_and_repr() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)
    with pytest.raises(ValueError):
        TokenBucket(1, burst=0.5)
    assert repr(TokenBucket(5, burst=2)) == "TokenBucket(rate=5, burst=2)"


# -- the adaptive limiter, unit by unit --------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    rate=st.integers(1, 200),
    gaps=gaps_strategy,
    events=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=20.0),
            st.one_of(st.none(), st.floats(min_value=0.01, max_value=3.0)),
        ),
        max_size=6,
    ),
)
def test_known_rate_is_a_ceiling_in_every_window_even_with_429s(
    rate: int, gaps: list[list[float]], events: list[tuple[float, float | None]]
) -> None:
    pauses: list[tuple[float, float]] = []

    async def main() -> list[float]:
        limiter = AdaptiveLimiter(float(rate))

        async def acquire() -> None:
            await limiter.acquire()
            limiter.on_success()

        async def throttle() -> None:
            for at, retry_after in sorted(events, key=lambda e: e[0]):
                await anyio.sleep(max(0.0, at - anyio.current_time()))
                limiter.on_throttled(retry_after)
                if retry_after:
                    pauses.append((anyio.current_time(), anyio.current_time() + retry_after))
                assert limiter.current_rate <= rate

        async with anyio.create_task_group() as tg:
            tg.start_soon(throttle)
            grants = await _drive(acquire, gaps)
        assert limiter.current_rate <= rate
        return grants

    grants = run_virtual(main)
    assert max_in_window(grants, 1.0) <= rate
    for start, end in pauses:
        assert not [g for g in grants if start + EPS < g < end - EPS]


def test_unknown_rate_slow_start_doubles_while_limiter_bound() -> None:
    async def main() -> list[float]:
        limiter = AdaptiveLimiter(None, start_rate=10.0)
        rates = []
        for _ in range(300):
            await limiter.acquire()
            limiter.on_success()
            rates.append(limiter.current_rate)
        return rates

    rates = run_virtual(main)
    assert rates[0] == 10.0
    assert sorted(set(rates)) == [10.0, 20.0, 40.0, 80.0, 160.0]


def test_a_run_with_no_rate_starts_where_the_help_says() -> None:
    """One start rate: the Settings default, the limiter's own default, and --rate's help."""
    assert Settings().start_rate == DEFAULT_START_RATE == 800.0
    assert AdaptiveLimiter(None).current_rate == DEFAULT_START_RATE
    assert f"start at {DEFAULT_START_RATE:g}/s" in option("rate").help
    client = CourierClient(Settings(base_url="http://127.0.0.1:9"))
    assert client.limiter.current_rate == DEFAULT_START_RATE and client.limiter.in_slow_start


def test_no_increase_when_the_limiter_is_not_the_bottleneck() -> None:
    async def main() -> float:
        limiter = AdaptiveLimiter(None, start_rate=10.0)
        for _ in range(50):
            await anyio.sleep(0.5)  # the caller, not the limiter, sets the pace (2/s)
            await limiter.acquire()
        return limiter.current_rate

    assert run_virtual(main) == 10.0


def test_known_rate_starts_at_the_ceiling_and_never_passes_it() -> None:
    async def main() -> list[float]:
        limiter = AdaptiveLimiter(40.0, start_rate=5.0)
        seen = [limiter.current_rate]
        for _ in range(400):
            await limiter.acquire()
            limiter.on_success()
            seen.append(limiter.current_rate)
        return seen

    assert set(run_virtual(main)) == {40.0 * AdaptiveLimiter.HEADROOM}


def test_one_cut_per_congestion_event_based_on_accepted_rate() -> None:
    clock = ManualClock(100.0)
    limiter = AdaptiveLimiter(None, start_rate=100.0, clock=clock)
    assert limiter.in_slow_start
    for _ in range(60):  # 60 accepted requests over the last 0.6 s of a 1 s+ history
        anyio.run(limiter.acquire)
        limiter.on_success()
    clock.t += 0.4
    sent_before_cut = clock.now() - 0.01
    limiter.on_throttled(1.0, sent_at=sent_before_cut)
    cut = limiter.current_rate
    # 60 accepted in the last second (the sending started 1.0 s ago): 0.85 * 60.
    assert cut == pytest.approx(AdaptiveLimiter.BETA * 60, rel=0.05)
    assert not limiter.in_slow_start
    assert limiter.paused_until == pytest.approx(clock.now() + 1.0)
    # More 429s for requests sent before the cut: the same event, no further cut...
    for _ in range(5):
        limiter.on_throttled(1.0, sent_at=sent_before_cut)
    assert limiter.current_rate == cut
    assert limiter.congestion_events == 1
    # ...but each still extends the pause the server asked for.
    clock.t += 0.5
    limiter.on_throttled(1.0, sent_at=sent_before_cut)
    assert limiter.paused_until == pytest.approx(clock.now() + 1.0)
    # A 429 for a request sent after the cut is a new event.
    limiter.on_throttled(None, sent_at=clock.now())
    assert limiter.current_rate < cut
    assert limiter.congestion_events == 2


def test_without_sent_at_a_holdoff_groups_429s() -> None:
    clock = ManualClock(10.0)
    limiter = AdaptiveLimiter(100.0, clock=clock)
    limiter.on_throttled(None)
    first = limiter.current_rate
    # No accepted history: BETA * nominal (the given rate less the headroom).
    assert first == pytest.approx(100.0 * AdaptiveLimiter.HEADROOM * AdaptiveLimiter.BETA)
    clock.t += AdaptiveLimiter.HOLDOFF / 2
    limiter.on_throttled(None)
    assert limiter.current_rate == first
    clock.t += AdaptiveLimiter.HOLDOFF
    limiter.on_throttled(None)
    assert limiter.current_rate == pytest.approx(first * 0.85)


def test_retry_after_pauses_every_waiter_and_then_no_burst() -> None:
    async def main() -> list[float]:
        limiter = AdaptiveLimiter(100.0)
        grants: list[float] = []

        async def worker() -> None:
            for _ in range(20):
                await limiter.acquire()
                grants.append(anyio.current_time())

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(worker)
            await anyio.sleep(0.3)
            limiter.on_throttled(2.0)
        return grants

    grants = run_virtual(main)
    assert not [g for g in grants if 0.3 + EPS < g < 2.3 - EPS]
    after = sorted(g for g in grants if g >= 2.3 - EPS)
    assert after, "work resumes after the pause"
    gaps = [b - a for a, b in itertools.pairwise(after)]
    # Spaced at the (cut) rate, not released all at once.
    assert min(gaps) >= 1 / 100.0 - EPS


def test_repr_and_validation() -> None:
    assert "unknown limit" in repr(AdaptiveLimiter(None, clock=ManualClock()))
    assert "ceiling=5" in repr(AdaptiveLimiter(5.0, clock=ManualClock()))
    assert AdaptiveLimiter(5.0, clock=ManualClock()).ceiling == 5.0
    with pytest.raises(ValueError):
        AdaptiveLimiter(0.0)
    with pytest.raises(ValueError):
        AdaptiveLimiter(None, start_rate=0)
    assert repr(AnyioClock()) == "AnyioClock()"


# -- AIMD against a throttling server, through the real client --------------------------------


class ServerBucket:
    """Like the emulator's ``rate_limit=R``: R tokens/s, burst R, 429 with Retry-After: 1."""

    def __init__(self, rate: float, seed: int = 0) -> None:
        self.rate = rate
        self.tokens = rate
        self.last = 0.0
        self.ok = 0
        self.throttled = 0
        self.arrivals: list[float] = []
        self.rng = random.Random(seed)

    def take(self, now: float) -> bool:
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.arrivals.append(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.ok += 1
            return True
        self.throttled += 1
        return False

    async def handler(self, request: httpx.Request) -> httpx.Response:
        await anyio.sleep(self.rng.uniform(0.002, 0.008))
        ok = self.take(anyio.current_time())
        await anyio.sleep(self.rng.uniform(0.002, 0.008))
        if ok:
            return httpx.Response(200, json={"total": 1, "errors": []})
        return httpx.Response(
            429,
            headers={"Retry-After": "1"},
            json={"message": "Too Many Requests", "type": "rate_limit_error"},
        )


def simulate(
    server_rate: float, client_rate: float | None, *, seconds: float = 60.0, concurrency: int = 8
) -> tuple[float, float, ServerBucket]:
    """Send empty ingest calls for ``seconds``; returns (share of R achieved, 429 share)."""
    server = ServerBucket(server_rate)

    async def main() -> None:
        settings_ = Settings(
            base_url="http://emulator.test", api_key="k", rate=client_rate, concurrency=concurrency
        )
        transport = httpx.MockTransport(server.handler)
        async with CourierClient(settings_, transport=transport) as client:
            end = anyio.current_time() + seconds

            async def worker(n: int) -> None:
                i = 0
                while anyio.current_time() < end:
                    i += 1
                    await client.add_users("job", b'{"users":[]}', idempotency_key=f"{n}:{i}")

            async with anyio.create_task_group() as tg:
                for n in range(concurrency):
                    tg.start_soon(worker, n)

    run_virtual(main)
    total = server.ok + server.throttled
    return server.ok / (seconds * server_rate), server.throttled / total, server


@pytest.mark.parametrize("server_rate", [50.0, 200.0])
def test_aimd_finds_an_unknown_limit(server_rate: float) -> None:
    share, throttled, _ = simulate(server_rate, None)
    assert share >= 0.85, f"achieved {share:.1%} of R"
    assert throttled <= 0.02, f"{throttled:.2%} of requests got 429"


@pytest.mark.parametrize("server_rate", [20.0, 200.0])
def test_told_rate_is_reached_without_429s(server_rate: float) -> None:
    share, throttled, server = simulate(server_rate, server_rate)
    assert share >= 0.95
    assert throttled == 0
    # The limiter paces at 0.98 R, so the 6 ms by which the one-way latency varies cannot
    # put more than R requests into any second at the server either.
    assert max_in_window(server.arrivals, 1.0) <= server_rate


def test_aimd_backs_off_when_told_too_high_a_rate() -> None:
    share, throttled, _ = simulate(50.0, 400.0)
    assert share >= 0.85
    assert throttled <= 0.02
