"""Adaptive concurrency for reads: widen while the server keeps up, narrow when it does not.

A run's writes (ingest ``POST``\\ s) are bounded by the caller's workers (``--concurrency``).
Reads (``GET``: result pages, job polls, messages) are the latency-bound part of a run: each
job's pages come one after the other, so with 150 ms per request a run is as fast as the
number of reads in flight. :class:`ReadGate` lets them run wider than writes when the server
shows no sign of strain.

**The policy** (constants are class attributes):

* Start at ``start`` reads in flight (``--concurrency``), never go above ``limit`` (the read
  limit, ``READ_FACTOR`` × ``--concurrency`` by default) nor below ``floor``.
* Keep the lowest latency seen (the *base*: what the network costs with no queueing) and a
  moving average of recent reads (``SMOOTHING``).
* **Grow** after every *round* (as many completed reads as the current width) in which no
  read was throttled and the recent latency stayed within ``TOLERANCE`` × base (plus
  ``SLACK`` seconds for jitter): one more slot per ``GROWTH`` of the width, at least one.
* **Back off** at once on a 429 — the width becomes ``BETA`` × itself — and after a round whose latency rose above the tolerance (queueing at the
  server: more width would only add waiting).
* A new round starts after each change, so one burst of 429s from reads already in flight
  cuts the width once.

The request *rate* stays the :class:`~bulkbatch.client.ratelimit.AdaptiveLimiter`'s job: every
read still takes a token, so a given ``--rate`` is never exceeded however wide reads run.
"""

from __future__ import annotations

import math

import anyio

__all__ = ["READ_FACTOR", "ReadGate"]

READ_FACTOR = 4
"""The default read limit is this many times ``--concurrency``."""


class ReadGate:
    """How many reads may be in flight now; adapts as described in the module docstring.

    :param start: the width to begin with (``--concurrency``)
    :param limit: the most reads in flight ever
    :param floor: the fewest the width is cut to (default 1)

    Use ``async with gate.slot(): ...`` around one read attempt and tell the gate how it
    went with :meth:`record` (latency in seconds, whether it was throttled).
    """

    SMOOTHING = 0.2
    """Weight of the newest latency in the moving average."""
    TOLERANCE = 1.5
    """Recent latency up to this many times the base counts as "holding"."""
    SLACK = 0.005
    """Seconds of jitter forgiven on top of the tolerance (loopback latencies are tiny)."""
    GROWTH = 0.25
    """Slots added per round that held, as a share of the width (at least one)."""
    BETA = 0.75
    """The width is multiplied by this on a throttle or a latency rise."""

    def __init__(self, start: int, limit: int, *, floor: int = 1) -> None:
        if not 1 <= floor <= start <= limit:
            raise ValueError(f"need 1 <= floor <= start <= limit, got {floor}, {start}, {limit}")
        self.limit = limit
        self.floor = floor
        self._width = start
        self._in_flight = 0
        self._changed = anyio.Event()
        self._base = math.inf
        self._recent: float | None = None
        self._round = 0
        self._round_throttled = False
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

    async def acquire(self) -> None:
        """Wait for a free slot and take it."""
        while self._in_flight >= self._width:
            await self._changed.wait()
        self._in_flight += 1

    def release(self) -> None:
        """Give a slot back."""
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def slot(self) -> _Slot:
        """``async with gate.slot():`` — one read in flight."""
        return _Slot(self)

    def record(self, latency: float | None, *, throttled: bool = False) -> None:
        """One read finished: ``latency`` seconds (``None``: no answer), throttled or not."""
        if throttled:
            self._cut()
            return
        if latency is None:
            return
        self._base = min(self._base, latency)
        recent = self._recent
        self._recent = latency if recent is None else recent + self.SMOOTHING * (latency - recent)
        self._round += 1
        if self._round < self._width:
            return
        if self._round_throttled:
            self._new_round()
        elif self._recent <= self.TOLERANCE * self._base + self.SLACK:
            self._grow()
        else:
            self._cut()

    def _grow(self) -> None:
        step = max(1, int(self._width * self.GROWTH))
        self._width = min(self.limit, self._width + step)
        self.peak = max(self.peak, self._width)
        self._new_round()
        self._wake()

    def _cut(self) -> None:
        if self._round_throttled:
            return  # this round was cut already: the same congestion event
        self._width = max(self.floor, int(self._width * self.BETA))
        self.cuts += 1
        self._new_round()
        self._round_throttled = True

    def _new_round(self) -> None:
        self._round = 0
        self._round_throttled = False

    def __repr__(self) -> str:
        return f"ReadGate(width={self._width}, limit={self.limit}, in_flight={self._in_flight})"


class _Slot:
    __slots__ = ("_gate",)

    def __init__(self, gate: ReadGate) -> None:
        self._gate = gate

    async def __aenter__(self) -> None:
        await self._gate.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._gate.release()
