"""Shared helpers for the client tests: a fake clock and a scripted MockTransport handler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx

from bulkbatch.client.courier import CourierClient
from bulkbatch.client.ratelimit import AdaptiveLimiter
from bulkbatch.config import Settings

SECRET = "sk_live_TOPSECRET_0123456789"
JOB = "1-61e9dd53-b5bb6c863b7ffbe83ad4b28d"
ONE_LINE_BANNED = ("Traceback", "please report", "report this", "bug")


class ManualClock:
    """A fake clock for sequential code: sleeping just moves time on and records the wait."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await anyio.lowlevel.checkpoint()


Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler answering from a script and recording every request."""

    def __init__(self, *responses: httpx.Response | Exception | Handler) -> None:
        self.script = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        if callable(item) and not isinstance(item, httpx.Response):
            return item(request)
        return item

    @property
    def keys(self) -> list[str | None]:
        return [r.headers.get("idempotency-key") for r in self.requests]


def make_client(
    handler: Handler,
    *,
    clock: ManualClock | None = None,
    max_attempts: int = 4,
    api_key: str | None = SECRET,
    base_url: str = "https://api.courier.test",
    **kw: Any,
) -> CourierClient:
    clock = clock or ManualClock()
    settings = Settings(base_url=base_url, api_key=api_key, max_attempts=max_attempts)
    limiter = AdaptiveLimiter(1000.0, clock=clock)
    return CourierClient(
        settings, transport=httpx.MockTransport(handler), limiter=limiter, clock=clock, **kw
    )


def assert_one_clear_line(exc: BaseException) -> str:
    """``str(exc)`` is one line, with no traceback text and no "please report"."""
    text = str(exc)
    assert text and "\n" not in text, text
    for banned in ONE_LINE_BANNED:
        assert banned.lower() not in text.lower(), text
    return text


def err(
    status: int, message: str = "boom", headers: dict[str, str] | None = None
) -> httpx.Response:
    """An error answer shaped like Courier's: ``{"message", "type"}``."""
    body = {"message": message, "type": "invalid_request_error"}
    return httpx.Response(status, json=body, headers=headers)
