"""Opt-in, seeded fault injection for the emulator's API paths.

A fault spec is a comma-separated list of ``key=value`` pairs::

    rate_limit=50,error_rate=0.05,drop_rate=0.01,latency_ms=20,max_users_per_call=1000,seed=7

==================== ======= ============================================================
key                  default meaning
==================== ======= ============================================================
rate_limit           off     requests/second over all API requests (token bucket, burst =
                             max(1, rate_limit) tokens); over it → 429 + ``Retry-After``
error_rate           0       probability of a 500 before the handler runs
drop_rate            0       probability the connection is closed with no complete response;
                             about half of the drops happen *after* the request was executed
                             and committed (the case a client must survive with an
                             Idempotency-Key), the other half before
latency_ms           0       milliseconds added to every API request
max_users_per_call   1000    more users than this in one ``POST /bulk/{id}`` → 502 (always on)
seed                 0       seed of the random draws; same seed + same request order → same faults
webhook_dup_rate     0       probability a webhook event is delivered twice (two POSTs)
webhook_reorder_rate 0       probability a webhook delivery is held back
                             (:data:`~bulkbatch.emulator.webhooks.REORDER_HOLD_S`, time-scaled)
                             so later events overtake it
webhook_drop_rate    0       probability a webhook event is lost: never POSTed, counted in
                             ``webhooks_dropped`` as if every retry had failed
==================== ======= ============================================================

The API faults touch the Courier API paths only, never ``/_emulator/*``; the webhook faults
touch only the outbound webhooks (``--webhook-url``). Both are drawn from their own seeded
generators, so turning webhooks on does not change which API requests fail.
"""

from __future__ import annotations

import enum
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

__all__ = [
    "Decision",
    "EmulatorConfigError",
    "FaultInjector",
    "FaultSpec",
    "TokenBucket",
    "WebhookDraw",
]

FAULTS_FORM = (
    "comma-separated key=value pairs from rate_limit (req/s > 0), error_rate (0..1), "
    "drop_rate (0..1), latency_ms (>= 0), max_users_per_call (int >= 1), seed (int), "
    "webhook_dup_rate, webhook_reorder_rate, webhook_drop_rate (0..1); "
    "e.g. 'rate_limit=50,error_rate=0.05,seed=7'"
)


class EmulatorConfigError(ValueError):
    """A bad ``--faults`` or ``--progression`` value; the message names it and the valid form."""


@dataclass(frozen=True)
class FaultSpec:
    """Parsed fault settings. ``FaultSpec()`` means no faults except the size limit."""

    rate_limit: float | None = None
    error_rate: float = 0.0
    drop_rate: float = 0.0
    latency_ms: float = 0.0
    max_users_per_call: int = 1000
    seed: int = 0
    webhook_dup_rate: float = 0.0
    webhook_reorder_rate: float = 0.0
    webhook_drop_rate: float = 0.0

    @classmethod
    def parse(cls, spec: str | FaultSpec | None) -> FaultSpec:
        """Parse ``"key=value,..."``; ``None`` or ``""`` gives the defaults.

        >>> FaultSpec.parse("error_rate=0.5,seed=3")
        FaultSpec(rate_limit=None, error_rate=0.5, drop_rate=0.0, latency_ms=0.0, max_users_per_call=1000, seed=3, webhook_dup_rate=0.0, webhook_reorder_rate=0.0, webhook_drop_rate=0.0)
        """
        if isinstance(spec, FaultSpec):
            return spec
        if spec is None or not spec.strip():
            return cls()
        known = {f.name for f in fields(cls)}
        values: dict[str, float | int | None] = {}
        for raw in spec.split(","):
            part = raw.strip()
            if not part:
                continue
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not value:
                raise EmulatorConfigError(f"bad fault {part!r} in {spec!r}: expected {FAULTS_FORM}")
            if key not in known:
                raise EmulatorConfigError(
                    f"unknown fault key {key!r} in {spec!r}: expected {FAULTS_FORM}"
                )
            try:
                number: float | int = (
                    int(value) if key in ("max_users_per_call", "seed") else float(value)
                )
            except ValueError:
                raise EmulatorConfigError(
                    f"bad value {value!r} for {key!r} in {spec!r}: expected {FAULTS_FORM}"
                ) from None
            if not _in_range(key, number):
                raise EmulatorConfigError(
                    f"value {value!r} for {key!r} is out of range in {spec!r}: expected {FAULTS_FORM}"
                )
            values[key] = number
        return cls(**values)  # type: ignore[arg-type]  # keys and types checked above

    def __str__(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)]
        return ",".join(p for p in parts if not p.startswith("rate_limit=None"))


def _in_range(key: str, number: float) -> bool:
    if not math.isfinite(number):
        return False
    if key == "rate_limit":
        return number > 0
    if key in ("error_rate", "drop_rate") or key.startswith("webhook_"):
        return 0.0 <= number <= 1.0
    if key == "latency_ms":
        return number >= 0
    if key == "max_users_per_call":
        return number >= 1
    return True  # seed


class TokenBucket:
    """A token bucket refilled at ``rate`` tokens/s holding at most ``burst`` tokens."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()

    def try_acquire(self) -> float | None:
        """Take one token; return ``None`` on success or the seconds until one is available."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return (1.0 - self._tokens) / self.rate


@dataclass(frozen=True)
class WebhookDraw:
    """The webhook faults drawn for one event: lost, or one hold-back flag per copy to POST."""

    dropped: bool
    held: tuple[bool, ...]


class Decision(enum.Enum):
    """What the fault injector decided for one request."""

    PASS = "pass"
    RATE_LIMITED = "rate_limited"
    DROP_BEFORE = "drop_before"
    ERROR = "error"
    DROP_AFTER = "drop_after"


class FaultInjector:
    """Seeded decisions, in this order: rate limit → drop → error.

    Latency (applied by the caller) comes before all three; the size limit, after auth.
    """

    def __init__(self, spec: FaultSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self._clock = clock
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._rng = random.Random(self.spec.seed)
            self._webhook_rng = random.Random(f"webhooks:{self.spec.seed}")
            rate = self.spec.rate_limit
            self._bucket = (
                TokenBucket(rate, max(1.0, rate), self._clock) if rate is not None else None
            )

    def decide(self) -> tuple[Decision, int]:
        """Return the decision and, for ``RATE_LIMITED``, the Retry-After seconds (≥ 1)."""
        spec = self.spec
        with self._lock:
            if self._bucket is not None:
                wait = self._bucket.try_acquire()
                if wait is not None:
                    return Decision.RATE_LIMITED, max(1, math.ceil(wait))
            if spec.drop_rate > 0 and self._rng.random() < spec.drop_rate:
                after = self._rng.random() < 0.5
                return (Decision.DROP_AFTER if after else Decision.DROP_BEFORE), 0
            if spec.error_rate > 0 and self._rng.random() < spec.error_rate:
                return Decision.ERROR, 0
        return Decision.PASS, 0

    def draw_webhook(self) -> WebhookDraw:
        """Webhook faults for one event, in this order: drop → duplicate → hold back (per copy)."""
        spec = self.spec
        with self._lock:
            rng = self._webhook_rng
            if spec.webhook_drop_rate > 0 and rng.random() < spec.webhook_drop_rate:
                return WebhookDraw(True, ())
            dup = spec.webhook_dup_rate > 0 and rng.random() < spec.webhook_dup_rate
            rate = spec.webhook_reorder_rate
            held = tuple(rate > 0 and rng.random() < rate for _ in range(2 if dup else 1))
            return WebhookDraw(False, held)
