"""Outbound webhooks like Courier's: signed ``message:updated`` POSTs from a background thread.

Turned on by ``--webhook-url`` (``Emulator(webhook_url=...)``); off, nothing here runs and
the API pays one ``is None`` check per status change. Sources are ``courier-tracking.md`` §2
(**T**); decisions are marked as such.

* **What**: one event per message status change (:mod:`.outbox`), body
  ``{"type": "message:updated", "data": {...}}`` where ``data`` is ``GET /messages/{id}`` as
  the message stood at that status (timestamps build up: a DELIVERED event carries
  ``enqueued``, ``sent`` and ``delivered``) plus the webhook-only ``recipientId`` [T §2.4].
  The body is compact JSON (``orjson``), the bytes that are signed.
* **Signature** (only with a secret [T §2.1]): header ``courier-signature:
  t=<epoch ms>,signature=<lowercase hex HMAC-SHA256(secret, "<t>.<raw body>")>`` [T §2.6].
  Decision: every attempt is signed afresh with a new ``t`` (undocumented [T §2.6]), so a
  receiver's staleness window does not turn retries into permanent losses.
* **Success / retry** [T §2.7]: any 2xx is delivered. Network errors, no answer within
  ``timeout`` (Courier: 10 s), 408, 429 and 5xx are retried; other 4xx are given up at once
  (the skill's rule). Decision: a 3xx (never followed) is retried like a failure.
* **Schedule** [T §2.7]: 5, 10, 20, 40, 60, 120, 240, 480, 720, 900 s, then every 900 s, at
  most :data:`MAX_ATTEMPTS` = 104 attempts (the "104 attempts over at most 24 h" of the
  current docs: 2,595 s + 93 × 900 s ≤ 24 h), every delay multiplied by ``time_scale``
  (default :data:`DEFAULT_TIME_SCALE` = 0.001: 5 ms, 10 ms, … a whole schedule in 86 s; pass
  1 for Courier's real timing). A delivery out of attempts counts in ``webhooks_dropped``.
* **Order**: :data:`WORKERS` concurrent POSTs; the events of one message go through one
  worker, in status order, unless a retry or ``webhook_reorder_rate`` moves one back (Courier
  guarantees no order [T §2.7]; the faults make the disorder deterministic).
* **Faults** (``--faults``): ``webhook_dup_rate`` (two POSTs of one event),
  ``webhook_reorder_rate`` (a delivery held back :data:`REORDER_HOLD_S` × ``time_scale`` so
  later events overtake it), ``webhook_drop_rate`` (never POSTed, counted dropped as if every
  retry had failed); seeded (:meth:`.FaultInjector.draw_webhook`).
* **Secret**: kept in memory only; never logged, printed, shown in ``/_emulator/config``
  or ``repr``, nor written to ``--db`` (the outbox holds ``(message row, step)`` only).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import orjson

from bulkbatch.emulator.faults import EmulatorConfigError
from bulkbatch.emulator.outbox import Delivery, Outbox

__all__ = [
    "DEFAULT_TIME_SCALE",
    "MAX_ATTEMPTS",
    "REORDER_HOLD_S",
    "RETRY_DELAYS_S",
    "TIMEOUT_S",
    "WebhookConfig",
    "WebhookSender",
    "retry_delay_s",
    "retryable",
    "signature_header",
]

log = logging.getLogger(__name__)

RETRY_DELAYS_S = (5, 10, 20, 40, 60, 120, 240, 480, 720, 900)  # then every 900 s [T §2.7]
MAX_ATTEMPTS = 104
TIMEOUT_S = 10.0
REORDER_HOLD_S = 60.0
DEFAULT_TIME_SCALE = 0.001
WORKERS = 8
PER_WORKER = 32  # the bounded in-memory queue: at most WORKERS × PER_WORKER rows leased
IDLE_WAIT_S = 0.5  # the longest the feeder sleeps with nothing due (new events wake it)
SECONDS_TICK_S = 0.02  # how often seconds:T transitions are looked for
FLUSH_EVERY_S = 0.5  # how often the counters are written to --db
USER_AGENT = "bulkbatch-emulator-webhooks"


def signature_header(secret: str, body: bytes, t_ms: int) -> str:
    """``t=<t_ms>,signature=<hex HMAC-SHA256(secret, "<t_ms>." + body)>``."""
    t = str(t_ms)
    mac = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},signature={mac}"


def retry_delay_s(failed_attempts: int) -> float:
    """Courier's delay after the ``failed_attempts``-th failed attempt (1-based), unscaled."""
    return float(RETRY_DELAYS_S[min(failed_attempts, len(RETRY_DELAYS_S)) - 1])


def retryable(status: int | None) -> bool:
    """``None`` = network error or timeout. 2xx is success, not a retry."""
    return status is None or status in (408, 429) or status >= 500 or 300 <= status < 400


@dataclass(frozen=True)
class WebhookConfig:
    """Where and how to POST. ``secret`` is left out of ``repr``."""

    url: str
    secret: str | None = field(default=None, repr=False)
    time_scale: float = DEFAULT_TIME_SCALE
    timeout: float = TIMEOUT_S
    max_attempts: int = MAX_ATTEMPTS

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EmulatorConfigError(
                f"bad webhook URL {self.url!r}: expected http(s)://HOST[:PORT]/PATH"
            )
        if self.secret is not None and not self.secret:
            raise EmulatorConfigError(
                "the webhook secret is empty; pass a non-empty secret, or none to send "
                "unsigned events (Courier sends no courier-signature without a secret)"
            )
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise EmulatorConfigError(
                f"bad webhook time scale {self.time_scale!r}: expected a number > 0 "
                "(1 = Courier's real retry schedule, 0.001 = a thousand times faster)"
            )
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise EmulatorConfigError(
                f"bad webhook timeout {self.timeout!r}: expected seconds > 0 (Courier: 10)"
            )
        if self.max_attempts < 1:
            raise EmulatorConfigError(f"bad webhook max_attempts {self.max_attempts!r}: >= 1")

    @property
    def hold_ms(self) -> int:
        return round(REORDER_HOLD_S * self.time_scale * 1000)

    def public(self) -> dict[str, object]:
        """For ``/_emulator/config``: everything but the secret."""
        return {
            "url": self.url,
            "signed": self.secret is not None,
            "time_scale": self.time_scale,
            "timeout": self.timeout,
            "max_attempts": self.max_attempts,
        }


class WebhookSender:
    """A daemon thread running its own event loop: a feeder leases due outbox rows into
    :data:`WORKERS` bounded queues (one per worker, by message), the workers POST them."""

    def __init__(self, outbox: Outbox, config: WebhookConfig) -> None:
        self.outbox = outbox
        self.config = config
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._started = threading.Event()
        self._stopping = False
        self._inflight = 0
        outbox.notify = self.notify

    def __repr__(self) -> str:
        return f"WebhookSender({self.config!r})"

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name="bulkbatch-emulator-webhooks", daemon=True
        )
        self._thread.start()
        self._started.wait(timeout=15)

    def stop(self) -> None:
        """Stop POSTing; rows in flight stay in the outbox and are due again at the next start."""
        self._stopping = True
        self.notify()
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._thread = None

    def notify(self) -> None:
        """Thread-safe: new or due work (called by the outbox under the backend lock)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(wake.set)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            log.exception("the webhook sender stopped on an error")
        finally:
            self._loop = None

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._started.set()
        queues: list[asyncio.Queue[Delivery]] = [
            asyncio.Queue(maxsize=PER_WORKER) for _ in range(WORKERS)
        ]
        limits = httpx.Limits(max_connections=WORKERS, max_keepalive_connections=WORKERS)
        async with httpx.AsyncClient(
            timeout=self.config.timeout, limits=limits, follow_redirects=False, trust_env=False
        ) as client:
            workers = [asyncio.create_task(self._work(client, q)) for q in queues]
            try:
                await self._feed(queues, self._wake)
            finally:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                self.outbox.backend.flush_counters()

    async def _feed(self, queues: list[asyncio.Queue[Delivery]], wake: asyncio.Event) -> None:
        capacity = WORKERS * PER_WORKER
        seconds = self.outbox.backend.progression.mode == "seconds"
        flushed = time.monotonic()
        while not self._stopping:
            wake.clear()
            try:
                self.outbox.emit_due()
                batch = self.outbox.lease(capacity - self._inflight)
            except Exception:
                log.exception("webhook outbox error")
                batch = []
            for delivery in batch:
                self._inflight += 1
                await queues[delivery.user_id % WORKERS].put(delivery)
            if time.monotonic() - flushed > FLUSH_EVERY_S:
                self.outbox.backend.flush_counters()
                flushed = time.monotonic()
            timeout = self._idle_wait(seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)

    def _idle_wait(self, seconds: bool) -> float:
        wait = SECONDS_TICK_S if seconds else IDLE_WAIT_S
        due = self.outbox.next_due_ms()
        if due is not None:
            wait = min(wait, max(0.0, (due - self.outbox.wall_ms()) / 1000))
        return wait

    async def _work(self, client: httpx.AsyncClient, queue: asyncio.Queue[Delivery]) -> None:
        while True:
            delivery = await queue.get()
            try:
                await self._deliver(client, delivery)
            except Exception:
                log.exception("webhook delivery error; retrying it")
                self._failed(delivery, None)
            finally:
                self._inflight -= 1
                if self._wake is not None:
                    self._wake.set()

    async def _deliver(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        payload = self.outbox.backend.webhook_payload(delivery.user_id, delivery.step)
        if payload is None:  # the message is gone (a reset while the row was in flight)
            self.outbox.give_up(delivery)
            return
        body = orjson.dumps(payload)
        headers = {"content-type": "application/json", "user-agent": USER_AGENT}
        if self.config.secret is not None:
            headers["courier-signature"] = signature_header(
                self.config.secret, body, self.outbox.wall_ms()
            )
        self.outbox.count_attempt()
        status: int | None
        try:
            response = await client.post(self.config.url, content=body, headers=headers)
            status = response.status_code
        except httpx.HTTPError:  # timeouts, refused connections, protocol errors
            status = None
        if status is not None and 200 <= status < 300:
            self.outbox.delivered(delivery)
        else:
            self._failed(delivery, status)

    def _failed(self, delivery: Delivery, status: int | None) -> None:
        failed = delivery.attempts + 1
        if not retryable(status) or failed >= self.config.max_attempts:
            log.debug("webhook delivery given up after %d attempt(s), last %s", failed, status)
            self.outbox.give_up(delivery)
            return
        delay_ms = retry_delay_s(failed) * self.config.time_scale * 1000
        self.outbox.retry(delivery, self.outbox.wall_ms() + math.ceil(delay_ms))
