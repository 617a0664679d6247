"""The request loop under :class:`~bulkbatch.client.courier.CourierClient`.

One call = up to ``max_attempts`` HTTP attempts. Each attempt takes a limiter token, is
sent, and ends in a 2xx answer (returned), a retryable failure (429, 5xx, no answer: waited
on and tried again) or a terminal one (raised). Whether to retry is decided by the
exception's class only (:class:`~bulkbatch.errors.Retryable`). Every retryable failure is
reported to ``on_retry`` as a :class:`~bulkbatch.client.models.RetryEvent`.

Header values never reach a message: the key is checked before any request is built
(:mod:`bulkbatch.client.security`), and an h11 "Illegal header value b'...'" error (whose
text is the value) is replaced by :class:`~bulkbatch.errors.InvalidHeader` without it,
raised outside the ``except`` block so the original is not even its ``__context__``.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from types import TracebackType
from typing import Any, Self

import httpx
import orjson

from bulkbatch.client.answer import ANSWER_PHASE, AnswerTooLarge, read_streamed
from bulkbatch.client.concurrency import READ_FACTOR, TRACKED_PER_READ_SLOT, ReadGate
from bulkbatch.client.exchange import AiohttpExchange
from bulkbatch.client.models import ClientStats, RetryEvent, Where
from bulkbatch.client.ratelimit import AdaptiveLimiter, AnyioClock, Clock
from bulkbatch.client.retry import RetryPolicy
from bulkbatch.client.security import clean_api_key, insecure_transport
from bulkbatch.client.transport import speed_up
from bulkbatch.config import Settings
from bulkbatch.errors import (
    ApiUnavailable,
    AuthenticationError,
    BadResponse,
    BulkBatchError,
    ClientError,
    InvalidHeader,
    JobAlreadyRun,
    JobAlreadySubmitted,
    NotFound,
    RateLimited,
    ServerError,
    UsageError,
)

__all__ = ["AUTH_HINT", "USER_AGENT", "Call", "HttpCore", "RetryCallback", "parse_retry_after"]

AUTH_HINT = (
    "Check COURIER_API_KEY (or --api-key) and that the key belongs to the workspace of "
    "COURIER_BASE_URL."
)
HTTP_TIMEOUT_SETTING = "--http-timeout (http_timeout=)"
BACKOFF_SETTING = "--max-backoff (max_backoff=)"
ATTEMPTS_SETTING = "--max-attempts (max_attempts=)"
_BODY_SNIPPET = 200
_REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid", "x-courier-request-id")

RetryCallback = Callable[[RetryEvent], None]
"""``on_retry(event)``: called for every retryable failure; see :class:`RetryEvent`."""


def _version() -> str:
    try:
        return metadata.version("bulkbatch")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


USER_AGENT = f"bulkbatch/{_version()}"


def http_timeout(settings: Settings) -> float:
    """Seconds to wait for one HTTP answer (``Settings.timeout``; the ``--http-timeout``
    option)."""
    return float(settings.timeout)


def parse_retry_after(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """The wait a response asks for, in seconds, or ``None``.

    Reads ``retry-after-ms`` (milliseconds) first, then ``Retry-After`` as seconds or as an
    HTTP date. A date is measured from the response's ``Date`` header when present (so clock
    skew does not matter), else from ``now`` (default: the wall clock). Past dates give 0.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            ms = float(raw_ms)
        except ValueError:
            pass
        else:
            if math.isfinite(ms):
                return max(0.0, ms / 1000.0)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    reference = now if now is not None else time.time()
    date_header = headers.get("date")
    if date_header is not None:
        with contextlib.suppress(TypeError, ValueError, IndexError):
            reference = email.utils.parsedate_to_datetime(date_header).timestamp()
    return max(0.0, when.timestamp() - reference)


@dataclass(frozen=True)
class Call:
    """One logical API call: what to send and how to explain failures.

    :param answer_statuses: non-2xx statuses whose body is the answer (cancel's 409)
    :param status_read: a job status read (``GET /bulk/{job}``): it takes no read slot, so
        verify, run and the polls never queue behind result pages
    :param priority: a read's place when reads queue for a slot, the largest first (a job's
        result pages: the pages it has left; see :class:`~bulkbatch.client.concurrency.ReadGate`)
    """

    operation: str  # SDK method name, e.g. "add_users"
    method: str
    path: str
    content: bytes | None = None
    params: Mapping[str, str] | None = None
    idempotency_key: str | None = None
    rotate_key_after_5xx: bool = False
    not_found_hint: str = ""
    answer_statuses: tuple[int, ...] = ()
    status_read: bool = False
    priority: int = 0

    def where(self, status: int) -> Where:
        return Where(self.method, self.path, status)


@dataclass(frozen=True)
class _Failure:
    """A failed attempt: the error to raise (or retry on) and a one-line reason."""

    error: BulkBatchError
    reason: str
    status: int | None


def new_key() -> str:
    return f"bulkbatch-{uuid.uuid4()}"


def snippet(text: str) -> str:
    return text.strip()[:_BODY_SNIPPET]


def _origin(url: httpx.URL) -> str:
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}"


class HttpCore:
    """The transport half of the client: settings, pacing, retries, error mapping.

    :param settings: base URL, key, timeouts, attempts, backoff cap, rate
    :param transport: an httpx transport (``httpx.MockTransport``, ``ASGITransport``) for tests
    :param limiter: the pacing shared by every request of a run; default
        ``AdaptiveLimiter(settings.rate, start_rate=settings.start_rate)``
    :param policy: retries; default from ``settings.max_attempts`` and ``settings.max_backoff``
    :param clock: time for retry waits and the default limiter (tests pass a fake one)
    :param on_retry: called with a :class:`RetryEvent` for every retryable failure
    :param read_limit: the most reads (``GET``) in flight; default ``READ_FACTOR`` (4) ×
        ``settings.concurrency``. Reads start at ``settings.concurrency`` and widen while
        latency holds and nothing is throttled (:class:`~bulkbatch.client.concurrency.ReadGate`)
    :raises InvalidApiKey: the key has a control or non-ASCII character inside it
    """

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: AdaptiveLimiter | None = None,
        policy: RetryPolicy | None = None,
        clock: Clock | None = None,
        on_retry: RetryCallback | None = None,
        read_limit: int | None = None,
    ) -> None:
        self._settings = settings
        self._raw_key = settings.api_key
        self._api_key = clean_api_key(settings.api_key)
        self._clock: Clock = clock if clock is not None else AnyioClock()
        self.limiter = (
            limiter
            if limiter is not None
            else AdaptiveLimiter(settings.rate, start_rate=settings.start_rate, clock=self._clock)
        )
        self.policy = policy if policy is not None else RetryPolicy.from_settings(settings)
        self.on_retry = on_retry
        self.stats = ClientStats()
        self._timeout = http_timeout(settings)
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            base = httpx.URL(settings.base_url)
        except httpx.InvalidURL:
            raise UsageError(
                f"COURIER_BASE_URL {settings.base_url!r} is not a URL; use e.g. "
                "https://api.courier.com."
            ) from None
        self._host = base.host or settings.base_url
        width = settings.concurrency
        self.reads = ReadGate(width, max(width, read_limit or READ_FACTOR * width))
        """How many reads may be in flight (:mod:`bulkbatch.client.concurrency`)."""
        # Every writer, every job a run tracks at once (a poll or a page each) and a spare few
        # (create checks, verifies): no request waits for a connection.
        self.connections = room = width + TRACKED_PER_READ_SLOT * self.reads.limit + 4
        """The most connections open at once."""
        limits = httpx.Limits(max_connections=room, max_keepalive_connections=room)
        self._http = httpx.AsyncClient(
            base_url=settings.base_url,
            timeout=self._timeout,
            limits=limits,
            headers=headers,
            transport=transport,
            follow_redirects=False,  # never: the Authorization header would go along
        )
        speed_up(self._http)
        self._root = str(base).rstrip("/")
        self._timeouts = {"timeout": httpx.Timeout(self._timeout).as_dict()}
        self._exchange: AiohttpExchange | None = None
        direct = self._transport_for(httpx.Request("GET", base)) is getattr(
            self._http, "_transport", None
        )  # no proxy for this URL
        if transport is None and direct and base.scheme in ("http", "https"):
            self._exchange = AiohttpExchange(
                limit=room, timeout=self._timeout, tls=base.scheme == "https"
            )

    @property
    def base_url(self) -> str:
        """The API root this client talks to."""
        return self._settings.base_url

    @property
    def insecure_transport(self) -> bool:
        """True when the API key is sent over plain ``http://`` to a non-loopback host."""
        return insecure_transport(self._settings.base_url, self._api_key)

    def __repr__(self) -> str:
        key = "set" if self._api_key else "not set"
        return f"<CourierClient {self._host} key {key} {self.limiter!r}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        try:
            if self._exchange is not None:
                await self._exchange.aclose()
        finally:
            await self._http.aclose()

    # -- the loop -------------------------------------------------------------------------

    async def _request(self, call: Call) -> httpx.Response:
        """Send ``call``, retrying ``Retryable`` failures; returns the answer."""
        attempt = 0
        server_errors = 0
        while True:
            attempt += 1
            key = call.idempotency_key
            if key is not None and call.rotate_key_after_5xx and server_errors:
                key = f"{key}:retry-{server_errors}"
            outcome = await self._attempt(call, key, retry=attempt > 1)
            if isinstance(outcome, httpx.Response):
                return outcome
            error = outcome.error
            if isinstance(error, ServerError):
                server_errors += 1
            retry = self.policy.should_retry(attempt, error)
            wait = self.policy.delay(attempt - 1, error) if retry else 0.0
            if retry or outcome.status == 429:
                self._notify(call, attempt, wait, outcome, retry)
            if not retry:
                if attempt > 1:
                    note = f"gave up after {attempt} attempts; allow more with {ATTEMPTS_SETTING}"
                    error.message = f"{error.message} ({note})"
                    error.args = (error.message,)
                    error.add_note(note)
                raise error
            if wait > 0:
                await self._clock.sleep(wait)

    def _notify(
        self, call: Call, attempt: int, wait: float, failure: _Failure, retry: bool
    ) -> None:
        if self.on_retry is None:
            return
        self.on_retry(
            RetryEvent(
                method=call.method,
                path=call.path,
                attempt=attempt,
                max_attempts=self.policy.max_attempts,
                wait=wait,
                reason=failure.reason,
                status=failure.status,
                will_retry=retry,
            )
        )

    async def _attempt(
        self, call: Call, key: str | None, *, retry: bool
    ) -> httpx.Response | _Failure:
        """One attempt; a read (``GET``) holds a :attr:`reads` slot while it waits for its
        token and its answer, and tells the gate how long the answer took. Job status reads
        take no slot (:attr:`Call.status_read`)."""
        if call.method != "GET" or call.status_read:
            return await self._attempt_once(call, key, retry, None)
        gate = self.reads
        await gate.acquire(call.priority)
        try:
            return await self._attempt_once(call, key, retry, gate)
        finally:
            gate.release()

    async def _attempt_once(
        self, call: Call, key: str | None, retry: bool, gate: ReadGate | None
    ) -> httpx.Response | _Failure:
        await self.limiter.acquire()
        sent_at = self._clock.now()
        self.stats.requests += 1
        if retry:
            self.stats.retries += 1
        refused: str | None = None
        try:
            response = await self._send(call, key)
        except httpx.LocalProtocolError:
            refused = "a request header value has a character HTTP does not allow"
        except UnicodeEncodeError:
            refused = "a request header value could not be encoded as ASCII"
        except httpx.UnsupportedProtocol:
            raise UsageError(
                f"COURIER_BASE_URL {self._settings.base_url!r} must start with https:// "
                "(or http:// for a local emulator)."
            ) from None
        except httpx.TransportError as exc:  # timeouts are TransportErrors too
            return self._no_answer(call, exc)
        except httpx.DecodingError:
            return _Failure(
                BadResponse(call.method, call.path, None, "the body could not be decoded"),
                "undecodable body",
                None,
            )
        except AnswerTooLarge as exc:
            return _Failure(BadResponse(call.method, call.path, None, str(exc)), str(exc), None)
        if refused is not None:
            # Raised here, outside the except block: the original (whose text is the header
            # value) is neither the cause nor the context of this error.
            raise InvalidHeader(
                f"{call.method} {call.path} was not sent: {refused} (the value is not shown). "
                "Check COURIER_API_KEY and any Idempotency-Key for stray characters."
            )
        status = response.status_code
        self.stats.status_counts[status] = self.stats.status_counts.get(status, 0) + 1
        if gate is not None:
            gate.record(self._clock.now() - sent_at, throttled=status == 429)
        if 200 <= status < 300 or status in call.answer_statuses:
            self.limiter.on_success()
            return response
        return self._failure(call, response, sent_at)

    async def _send(self, call: Call, key: str | None) -> httpx.Response:
        """One HTTP exchange, body read: over aiohttp for a direct connection
        (:mod:`bulkbatch.client.exchange`), else straight through the client's transport.

        ``AsyncClient.request`` adds layers bulkbatch does not use (auth flows, a redirect
        loop it never follows, cookies, event hooks), each costing allocations per request;
        the request built here carries the same headers (the client's, read now, plus
        Content-Type and Idempotency-Key), the same timeout and goes to the same transport,
        whose errors are the same ``httpx`` exceptions.
        """
        http = self._http
        headers = http.headers.raw
        if call.content:
            headers.append((b"Content-Type", b"application/json"))
        if key is not None:
            headers.append((b"Idempotency-Key", key.encode("ascii")))
        url = self._root + call.path
        exchange = self._exchange
        if exchange is not None and exchange.works_here():
            response = await exchange.send(
                call.method, url, params=call.params, headers=headers, content=call.content
            )
            if 300 <= response.status_code < 400:  # what a redirect's message reads
                response.request = httpx.Request(call.method, url, params=call.params)
            return response
        request = httpx.Request(
            call.method,
            url,
            params=call.params,
            headers=headers,
            content=call.content,
            extensions=self._timeouts,
        )
        streamed = await self._transport_for(request).handle_async_request(request)
        response = await read_streamed(streamed, ANSWER_PHASE * self._timeout)
        response.request = request
        return response

    def _transport_for(self, request: httpx.Request) -> httpx.AsyncBaseTransport:
        """The transport ``AsyncClient`` would pick (a proxy's, when the environment names
        one for this URL)."""
        pick = getattr(self._http, "_transport_for_url", None)
        if pick is None:  # pragma: no cover - another httpx layout
            return self._http._transport
        transport: httpx.AsyncBaseTransport = pick(request.url)
        return transport

    def _no_answer(self, call: Call, exc: httpx.TransportError) -> _Failure:
        self.stats.transport_errors += 1
        name = type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            kind = "timed out"
            reason = f"{name} (no answer in {self._timeout:g} s)"
            advice = f"or raise {HTTP_TIMEOUT_SETTING}; now {self._timeout:g} s"
        else:
            kind, reason, advice = "got no answer", name, "and that the server is up"
        detail = self.scrub(str(exc)) or name
        error = ApiUnavailable(
            f"{call.method} {call.path} to {self._host} {kind} ({name}: {detail}). "
            f"Check the network and COURIER_BASE_URL, {advice}."
        )
        error.__cause__ = exc
        return _Failure(error, reason, None)

    def _retry_after(self, response: httpx.Response) -> tuple[float | None, str]:
        """The server's Retry-After, capped, and how to describe it in a reason."""
        asked = parse_retry_after(response.headers)
        if asked is None:
            return None, ""
        cap = self.policy.retry_after_cap
        if asked > cap:
            return cap, f"; Retry-After {asked:g} s capped at {cap:g} s ({BACKOFF_SETTING})"
        return asked, f"; Retry-After {asked:g} s"

    def _failure(self, call: Call, response: httpx.Response, sent_at: float) -> _Failure:
        status = response.status_code
        if 300 <= status < 400:
            return _Failure(self._redirect(call, response), f"HTTP {status} redirect", status)
        api_message, api_type = self._error_body(response)
        request_id = next(
            (response.headers[h] for h in _REQUEST_ID_HEADERS if h in response.headers), None
        )
        common: dict[str, Any] = {"api_type": api_type, "request_id": request_id}
        args = (call.method, call.path, status, api_message)
        if status == 429:
            retry_after, said = self._retry_after(response)
            self.stats.throttled += 1
            self.limiter.on_throttled(retry_after, sent_at=sent_at)
            hint = "Courier is rate limiting; lower --rate or leave it unset to adapt."
            error: BulkBatchError = RateLimited(*args, retry_after=retry_after, hint=hint, **common)
            return _Failure(error, f"HTTP 429 rate limited{said}", status)
        if status >= 500:
            retry_after, said = self._retry_after(response)
            error = ServerError(*args, retry_after=retry_after, **common)
            return _Failure(error, f"HTTP {status}{said}", status)
        return _Failure(self._client_error(call, args, common), f"HTTP {status}", status)

    @staticmethod
    def _client_error(
        call: Call, args: tuple[str, str, int, str], common: dict[str, Any]
    ) -> ClientError:
        status, api_message = args[2], args[3]
        if status in (401, 403):
            return AuthenticationError(*args, hint=AUTH_HINT, **common)
        if status == 404:
            return NotFound(*args, hint=call.not_found_hint, **common)
        if status == 400 and api_message == "BulkJobAlreadySubmittedError":
            hint = "The job has already run, so users can no longer be added to it."
            return JobAlreadySubmitted(*args, hint=hint, **common)
        if status == 400 and api_message == "BulkJobDuplicateInvocationError":
            hint = "The job was already run; a bulk job runs only once."
            return JobAlreadyRun(*args, hint=hint, **common)
        if 400 <= status < 500:
            return ClientError(*args, **common)
        return ClientError(
            *args, hint="Unexpected status; check that COURIER_BASE_URL is the API root.", **common
        )

    def _redirect(self, call: Call, response: httpx.Response) -> BadResponse:
        location = response.headers.get("location", "")
        try:
            target = response.request.url.join(location) if location else None
        except httpx.InvalidURL:
            target = None
        here = response.request.url
        if target is None:
            where = "somewhere it did not say"
            fix = "Set COURIER_BASE_URL to the API root itself."
        elif (target.scheme, target.host, target.port) == (here.scheme, here.host, here.port):
            where = f"{target.path} on the same host"
            fix = "Set COURIER_BASE_URL to the API root itself."
        else:
            where = _origin(target)
            fix = (
                f"If {where} is really Courier's API, set COURIER_BASE_URL to it; "
                "otherwise something between here and Courier is redirecting."
            )
        return BadResponse(
            call.method,
            call.path,
            response.status_code,
            f"a redirect to {self.scrub(where)}, which bulkbatch does not follow "
            "(the API key would go along)",
            hint=fix,
        )

    def _error_body(self, response: httpx.Response) -> tuple[str, str | None]:
        """``(message, type)`` from the error envelope, or the body's first 200 characters."""
        content = response.content
        if not content:
            return "", None
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict) and body.get("message") is not None:
            api_type = body.get("type")
            return (
                self.scrub(snippet(str(body["message"]))),
                self.scrub(snippet(str(api_type))) if api_type is not None else None,
            )
        return self.scrub(snippet(response.text)), None

    def scrub(self, text: str) -> str:
        """``text`` with the API key (as given and as cleaned) replaced by ``***``."""
        for key in (self._raw_key, self._api_key):
            if key and key in text:
                text = text.replace(key, "***")
        return text

    def json(self, call: Call, response: httpx.Response) -> Any:
        """The decoded body, ``None`` when empty; :class:`BadResponse` when it is not JSON."""
        if not response.content:
            return None
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            kind = response.headers.get("content-type", "no content type").split(";")[0]
            raise BadResponse(
                call.method,
                call.path,
                response.status_code,
                f"the body is not JSON ({kind}): {self.scrub(snippet(response.text))!r}",
                hint="Is COURIER_BASE_URL a Courier API?",
            ) from None
