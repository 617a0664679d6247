"""Adaptive concurrency for reads: widen while the server keeps up, narrow when it does not.

A run's writes (every ``POST``: creates and ingest batches) share ``--concurrency`` slots.
Reads (``GET``: result pages, messages) are the latency-bound part of a run: each job's pages
come one after the other, so with 150 ms per request a run is as fast as the number of reads
in flight. :class:`ReadGate` lets them run wider than writes when the server shows no sign of
strain, up to the *read limit*: ``READ_FACTOR`` (4) × ``--concurrency``, so 128 reads in flight
with the default 32 (``CourierClient(read_limit=...)`` sets another). A default run has
about 64 jobs, each with one read in flight at a time, so it uses at most 64 of them.

**The policy** (constants are class attributes):

* Start at ``start`` reads in flight (``--concurrency``), never go above ``limit`` (the read
  limit, ``READ_FACTOR`` × ``--concurrency`` by default).
* A *round* is as many completed reads as the current width; its latency is the round's
  median. The *base* is the lowest round latency of the last ``ROUNDS_REMEMBERED`` rounds:
  what reads cost lately with the least queueing. A windowed base, not the lowest latency
  ever seen, because a busy host (or a busy event loop) delays every answer alike for a
  while; that is the new normal, not a sign the server is queueing.
* **Grow** after every round in which no read was throttled and the round's latency stayed
  within ``TOLERANCE`` × base (plus ``SLACK`` seconds for jitter): one more slot per
  ``GROWTH`` of the width, at least one.
* **Back off** at once on a 429 — the width becomes ``BETA`` × itself, down to ``floor`` —
  and, more gently (``BETA_LATENCY``), after a round whose latency rose above the tolerance
  (queueing at the server: more width would only add waiting), down to ``start`` and no
  lower: below ``--concurrency`` only the server's own signal, a 429, takes reads.
* The round after a cut only observes, so one burst of 429s from reads already in flight
  cuts the width once (a 429 after a latency cut still cuts).

**Who gets a freed slot**: while reads queue, the one with the largest *priority*, then the
earliest. A job's result pages ask with the pages the job has left (``Call.priority``): pages
are chains, each behind the previous one's cursor, and the run ends when the longest chain
does, so the longest goes first (Hu's rule: highest level first, optimal for unit-time
chains on identical slots when all are ready at once). Measured with every job that has run
paged at once (``stages.track.tracked_at_once``): 1M people at 150 ms in 98 jobs for 64
slots (``--max-job-size 10000``) took 38.5 and 38.7 s, and 41.1 and 40.6 s with slots handed
out first come, first served, which left the jobs that finished ingesting last with the
longest chains at the end. With no more jobs than
slots (the default cut) nothing queues and the order changes nothing.

Job status reads (``GET /bulk/{job}``: creation checks, verification, polls) do not take a
slot: there is one at a time per job, and they must never queue behind the result pages
(a job waiting to be verified and run behind 10,000 pages stalls the whole send).

The request *rate* stays the :class:`~bulkbatch.client.ratelimit.AdaptiveLimiter`'s job: every
read still takes a token, so a given ``--rate`` is never exceeded however wide reads run.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

import anyio

__all__ = ["READ_FACTOR", "TRACKED_PER_READ_SLOT", "ReadGate"]

READ_FACTOR = 4
"""The default read limit is this many times ``--concurrency``."""

TRACKED_PER_READ_SLOT = 2
"""Jobs a run waits on and pages at once, per read slot (``stages.track.tracked_at_once``).
Each has one request in flight at a time, a poll or a page, so the client's connection pool
holds one for each of them (:attr:`~bulkbatch.client.courier.CourierClient.connections`)."""


class ReadGate:
    """How many reads may be in flight now; adapts as described in the module docstring.

    :param start: the width to begin with (``--concurrency``)
    :param limit: the most reads in flight ever
    :param floor: the fewest the width is cut to (default 1)

    Use ``async with gate.slot(): ...`` around one read attempt and tell the gate how it
    went with :meth:`record` (latency in seconds, whether it was throttled).
    """

    ROUNDS_REMEMBERED = 8
    """How many recent rounds the base latency is the lowest of."""
    TOLERANCE = 2.0
    """A round's latency up to this many times the base counts as "holding"."""
    SLACK = 0.005
    """Seconds of jitter forgiven on top of the tolerance (loopback latencies are tiny)."""
    GROWTH = 0.25
    """Slots added per round that held, as a share of the width (at least one)."""
    BETA = 0.75
    """The width is multiplied by this on a throttle (a 429)."""
    BETA_LATENCY = 0.9
    """And by this after a round whose latency rose: gently, since a host busy for a moment
    looks the same from here (a 1M-person run against a local emulator halved its read
    throughput when rises cut as hard as 429s)."""

    def __init__(self, start: int, limit: int, *, floor: int = 1) -> None:
        if not 1 <= floor <= start <= limit:
            raise ValueError(f"need 1 <= floor <= start <= limit, got {floor}, {start}, {limit}")
        self.start = start
        self.limit = limit
        self.floor = floor
        self._width = start
        self._in_flight = 0
        self._queue: list[_Waiter] = []
        self._arrivals = 0
        self._samples: list[float] = []
        self._rounds: deque[float] = deque(maxlen=self.ROUNDS_REMEMBERED)
        self._observing: str | None = None
        """Why the last cut was made ("throttle", "latency"), until a round has passed."""
        self.peak = start
        """The widest the gate has been."""
        self.cuts = 0
        """How often the width was cut."""

    @property
    def width(self) -> int:
        """Reads allowed in flight now."""
        return self._width

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def acquire(self, priority: int = 0) -> None:
        """Wait for a free slot and take it. While reads queue, a freed slot goes to the
        largest ``priority``, then to the earliest (the module docstring says why)."""
        if self._in_flight < self._width and not self._queue:
            self._in_flight += 1
            return
        self._arrivals += 1
        waiter = _Waiter(-priority, self._arrivals)
        heapq.heappush(self._queue, waiter)
        try:
            await waiter.granted.wait()
        except BaseException:  # cancelled: give back a slot handed over, or leave the queue
            if waiter.granted.is_set():
                self.release()
            else:
                self._queue.remove(waiter)
                heapq.heapify(self._queue)
            raise

    def release(self) -> None:
        """Give a slot back (to the first queued read, if any)."""
        self._in_flight -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        while self._queue and self._in_flight < self._width:
            self._in_flight += 1
            heapq.heappop(self._queue).granted.set()

    def slot(self) -> _Slot:
        """``async with gate.slot():`` — one read in flight."""
        return _Slot(self)

    def record(self, latency: float | None, *, throttled: bool = False) -> None:
        """One read finished: ``latency`` seconds (``None``: no answer), throttled or not."""
        if throttled:
            if self._observing != "throttle":  # else: the burst that caused the last cut
                self._cut(self.floor, self.BETA, "throttle")
            return
        if latency is None:
            return
        samples = self._samples
        samples.append(latency)
        if len(samples) < self._width:
            return
        samples.sort()
        median = samples[len(samples) // 2]
        samples.clear()
        base = min(self._rounds, default=median)
        self._rounds.append(median)
        if self._observing:
            self._observing = None
        elif median <= self.TOLERANCE * base + self.SLACK:
            self._grow()
        else:
            self._cut(self.start, self.BETA_LATENCY, "latency")

    def _grow(self) -> None:
        step = max(1, int(self._width * self.GROWTH))
        self._width = min(self.limit, self._width + step)
        self.peak = max(self.peak, self._width)
        self._hand_over()

    def _cut(self, lowest: int, beta: float, why: str) -> None:
        width = max(min(lowest, self._width), int(self._width * beta))
        if width == self._width:
            return  # at the bound already
        self._width = width
        self.cuts += 1
        self._samples.clear()
        self._observing = why  # the next round only observes

    def __repr__(self) -> str:
        return f"ReadGate(width={self._width}, limit={self.limit}, in_flight={self._in_flight})"


@dataclass(order=True)
class _Waiter:
    """A queued read: ordered by ``-priority``, then arrival."""

    rank: int
    arrival: int
    granted: anyio.Event = field(default_factory=anyio.Event, compare=False)


class _Slot:
    __slots__ = ("_gate",)

    def __init__(self, gate: ReadGate) -> None:
        self._gate = gate

    async def __aenter__(self) -> None:
        await self._gate.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._gate.release()
