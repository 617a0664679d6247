"""An async client for Courier's Bulk and Messages APIs, paced, retried and safe to log.

Method names are the official SDK's (``client.bulk.create_job`` -> :meth:`CourierClient.create_job`),
so code can be checked against Courier's docs line by line. Unlike the SDK, the client

* sends an ``Idempotency-Key`` on every POST (the caller's, or a fresh one per call) and keeps
  it across retries, so a retried POST cannot create a second job;
* keeps the ``{total, errors}`` body of an ingest call (:class:`IngestResult`);
* accepts any 2xx (Courier's docs, spec and backend disagree on 200/201/202/204);
* maps every failure to one exception tree (:mod:`bulkbatch.errors`): ``Retryable`` errors
  (429, 5xx, timeouts, dropped connections) are retried with capped, jittered exponential
  backoff that honours ``Retry-After``; ``Terminal`` ones are raised at once;
* takes one token from the shared :class:`~bulkbatch.client.ratelimit.AdaptiveLimiter` per attempt,
  and tells it about every 2xx and 429.

The API key goes into the ``Authorization`` header and nowhere else: not into an
exception, a ``repr`` or a log line.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from types import TracebackType
from typing import Any, NoReturn, Self
from urllib.parse import quote

import httpx
import orjson

from bulkbatch.client.ratelimit import AdaptiveLimiter, AnyioClock, Clock
from bulkbatch.client.retry import RetryPolicy
from bulkbatch.config import Settings
from bulkbatch.errors import (
    ApiError,
    ApiUnavailable,
    AuthenticationError,
    ClientError,
    JobAlreadyRun,
    JobAlreadySubmitted,
    NotFound,
    RateLimited,
    ServerError,
)

__all__ = [
    "ClientStats",
    "CourierClient",
    "IngestResult",
    "Job",
    "MessagesPage",
    "UsersPage",
]

AUTH_HINT = (
    "Check COURIER_API_KEY (or --api-key) and that the key belongs to the workspace of "
    "COURIER_BASE_URL."
)
_BODY_SNIPPET = 200
_REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid", "x-courier-request-id")

RetryCallback = Callable[[str, int, BaseException, float], None]
"""``on_retry(operation, attempt, error, delay)``: ``operation`` is ``"POST /bulk/<id>"``,
``attempt`` the number of the try that failed (1 = the first), ``delay`` the wait in seconds."""


def _version() -> str:
    try:
        return metadata.version("bulkbatch")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


USER_AGENT = f"bulkbatch/{_version()}"


@dataclass(frozen=True)
class IngestResult:
    """The answer to one ``add_users`` call.

    :param status: the HTTP status (any 2xx)
    :param total: users in the job so far (cumulative), when the server sent a body
    :param errors: per-user errors as returned, e.g.
        ``[{"user": {...}, "error": "Duplicate user"}]``; empty when there is no body
    """

    status: int
    total: int | None
    errors: list[dict[str, Any]]


@dataclass(frozen=True)
class Job:
    """``GET /bulk/{job_id}``: status is ``CREATED``, ``PROCESSING``, ``COMPLETED`` or ``ERROR``."""

    status: str
    enqueued: int
    failures: int
    received: int
    definition: dict[str, Any]


@dataclass(frozen=True)
class UsersPage:
    """One page (100 users) of ``GET /bulk/{job_id}/users``; ``cursor`` fetches the next."""

    items: list[dict[str, Any]]
    cursor: str | None
    more: bool


@dataclass(frozen=True)
class MessagesPage:
    """One page of ``GET /messages``."""

    results: list[dict[str, Any]]
    cursor: str | None
    more: bool


@dataclass
class ClientStats:
    """Counters over the client's life (attempts, not calls).

    :param requests: HTTP attempts made (each retry counts)
    :param retries: attempts that were retries
    :param throttled: 429 answers
    :param status_counts: answers per HTTP status
    :param transport_errors: attempts that got no answer (timeout, dropped connection)
    """

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0


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


def _orjson_default(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_orjson_default)


def _path_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"Expected a non-empty {what}, got {value!r}")
    return quote(value, safe="")


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(_query_value(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class _Call:
    """One logical API call: what to send and how to explain failures."""

    operation: str  # SDK method name, e.g. "add_users"
    method: str
    path: str
    content: bytes | None = None
    params: Mapping[str, str] | None = None
    idempotency_key: str | None = None
    rotate_key_after_5xx: bool = False
    not_found_hint: str = ""


class CourierClient:
    """Courier's bulk and message endpoints over one :class:`httpx.AsyncClient`.

    :param settings: base URL, key, timeout, attempts, backoff cap, rate
    :param transport: an httpx transport (``httpx.MockTransport``, ``ASGITransport``) for tests
    :param limiter: the pacing shared by every request of a run; default
        ``AdaptiveLimiter(settings.rate, start_rate=settings.start_rate)``
    :param policy: retries; default from ``settings.max_attempts`` and ``settings.max_backoff``
    :param clock: time for retry waits and the default limiter (tests pass a fake one)
    :param on_retry: called before each retry wait as ``on_retry(operation, attempt, exc, delay)``

    Use it as an async context manager, or call :meth:`aclose`.
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
    ) -> None:
        self._settings = settings
        self._clock: Clock = clock if clock is not None else AnyioClock()
        self.limiter = (
            limiter
            if limiter is not None
            else AdaptiveLimiter(settings.rate, start_rate=settings.start_rate, clock=self._clock)
        )
        self.policy = policy if policy is not None else RetryPolicy.from_settings(settings)
        self._on_retry = on_retry
        self.stats = ClientStats()
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key}"
        self._host = httpx.URL(settings.base_url).host or settings.base_url
        # Room for every worker plus the odd poll running beside them.
        limits = httpx.Limits(
            max_connections=settings.concurrency + 4,
            max_keepalive_connections=settings.concurrency + 4,
        )
        self._http = httpx.AsyncClient(
            base_url=settings.base_url,
            timeout=settings.timeout,
            limits=limits,
            headers=headers,
            transport=transport,
        )

    def __repr__(self) -> str:
        key = "set" if self._settings.api_key else "not set"
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
        await self._http.aclose()

    # -- bulk -----------------------------------------------------------------------------

    async def create_job(
        self, message: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> str:
        """``POST /bulk``: create a bulk job for ``message``; returns the ``jobId``.

        The same ``idempotency_key`` is sent on every try (never rotated: a new key could
        create a second job). Pass one derived from the run so a resumed run cannot create
        a second job either.
        """
        call = _Call(
            "create_job",
            "POST",
            "/bulk",
            content=_dumps({"message": message}),
            idempotency_key=idempotency_key or _new_key(),
            not_found_hint="Check COURIER_BASE_URL: it should be the API root, e.g. "
            "https://api.courier.com.",
        )
        response = await self._request(call)
        body = self._json(call, response)
        job_id = body.get("jobId") if isinstance(body, dict) else None
        if not isinstance(job_id, str) or not job_id:
            raise ApiError(
                call.method,
                call.path,
                response.status_code,
                f"the answer has no jobId: {_snippet(response.text)}",
                hint="Is COURIER_BASE_URL a Courier API?",
            )
        return job_id

    async def add_users(
        self,
        job_id: str,
        users: Sequence[Mapping[str, Any]] | bytes,
        *,
        idempotency_key: str | None = None,
    ) -> IngestResult:
        """``POST /bulk/{job_id}``: add up to 1000 users to a job that has not run.

        :param users: the users, or a pre-encoded body ``b'{"users":[...]}'`` sent as is
            (the fast path)
        :raises JobAlreadySubmitted: the job has run; users can no longer be added

        Retries send the same ``Idempotency-Key`` while the failure was a timeout, a dropped
        connection or a 429. After a **5xx answer** the later tries use
        ``<key>:retry-<n>`` (n = the number of 5xx answers so far), because Courier saves
        the first answer for a key, a 500 included, and replays it for as long as the key
        lives: the same key would fail forever. Sending the batch again under a fresh key is
        safe because every user carries a stable ``recipient``, Courier's only dedupe key:
        users already in the job come back as ``"Duplicate user"`` errors, not twice.
        (Users *without* ``recipient`` would be added twice; bulkbatch always sets it.)
        """
        jid = _path_id(job_id, "job id")
        content = users if isinstance(users, bytes) else _dumps({"users": users})
        call = _Call(
            "add_users",
            "POST",
            f"/bulk/{jid}",
            content=content,
            idempotency_key=idempotency_key or _new_key(),
            rotate_key_after_5xx=True,
            not_found_hint=_job_hint(job_id),
        )
        response = await self._request(call)
        total: int | None = None
        errors: list[dict[str, Any]] = []
        if response.content:
            try:
                body = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                body = None
            if isinstance(body, dict):
                raw_total = body.get("total")
                if isinstance(raw_total, int) and not isinstance(raw_total, bool):
                    total = raw_total
                raw_errors = body.get("errors")
                if isinstance(raw_errors, list):
                    errors = [e if isinstance(e, dict) else {"error": e} for e in raw_errors]
        return IngestResult(status=response.status_code, total=total, errors=errors)

    async def run_job(self, job_id: str, *, idempotency_key: str | None = None) -> None:
        """``POST /bulk/{job_id}/run``: start the job (it runs once).

        :raises JobAlreadyRun: the job was run before (400 BulkJobDuplicateInvocationError)
        """
        jid = _path_id(job_id, "job id")
        call = _Call(
            "run_job",
            "POST",
            f"/bulk/{jid}/run",
            content=b"",
            idempotency_key=idempotency_key or _new_key(),
            not_found_hint=_job_hint(job_id),
        )
        await self._request(call)

    async def retrieve_job(self, job_id: str) -> Job:
        """``GET /bulk/{job_id}``: the job's status and counters."""
        jid = _path_id(job_id, "job id")
        call = _Call("retrieve_job", "GET", f"/bulk/{jid}", not_found_hint=_job_hint(job_id))
        response = await self._request(call)
        body = self._json(call, response)
        job = body.get("job") if isinstance(body, dict) else None
        if not isinstance(job, dict):
            raise ApiError(
                call.method,
                call.path,
                response.status_code,
                f"the answer has no job: {_snippet(response.text)}",
            )
        definition = job.get("definition")
        return Job(
            status=str(job.get("status", "")),
            enqueued=_int(job.get("enqueued")),
            failures=_int(job.get("failures")),
            received=_int(job.get("received")),
            definition=definition if isinstance(definition, dict) else {},
        )

    async def list_users(self, job_id: str, cursor: str | None = None) -> UsersPage:
        """``GET /bulk/{job_id}/users``: one page of users with their status and messageId."""
        jid = _path_id(job_id, "job id")
        call = _Call(
            "list_users",
            "GET",
            f"/bulk/{jid}/users",
            params={"cursor": cursor} if cursor else None,
            not_found_hint=_job_hint(job_id),
        )
        response = await self._request(call)
        body = self._json(call, response)
        items, next_cursor, more = _page(body, "items")
        return UsersPage(items=items, cursor=next_cursor, more=more)

    # -- messages -------------------------------------------------------------------------

    async def retrieve_message(self, message_id: str) -> dict[str, Any]:
        """``GET /messages/{message_id}``: the message's details (status, timestamps, ...)."""
        mid = _path_id(message_id, "message id")
        call = _Call(
            "retrieve_message",
            "GET",
            f"/messages/{mid}",
            not_found_hint=f"No message {message_id} is visible with this API key; check "
            "the id and that COURIER_API_KEY is for the workspace that sent it.",
        )
        response = await self._request(call)
        body = self._json(call, response)
        if not isinstance(body, dict):
            raise ApiError(
                call.method,
                call.path,
                response.status_code,
                f"the answer is not an object: {_snippet(response.text)}",
            )
        return body

    async def list_messages(self, **params: Any) -> MessagesPage:
        """``GET /messages``: one page of messages; list values are comma-joined like the SDK.

        ``None`` values are left out, booleans are sent as ``true``/``false``.
        """
        query = {k: _query_value(v) for k, v in params.items() if v is not None}
        call = _Call("list_messages", "GET", "/messages", params=query or None)
        response = await self._request(call)
        body = self._json(call, response)
        results, cursor, more = _page(body, "results")
        return MessagesPage(results=results, cursor=cursor, more=more)

    # -- machinery ------------------------------------------------------------------------

    async def _request(self, call: _Call) -> httpx.Response:
        """Send ``call``, retrying ``Retryable`` failures; returns the 2xx response."""
        attempt = 0
        server_errors = 0
        while True:
            attempt += 1
            key = call.idempotency_key
            if key is not None and call.rotate_key_after_5xx and server_errors:
                key = f"{key}:retry-{server_errors}"
            try:
                return await self._attempt(call, key, retry=attempt > 1)
            except (RateLimited, ServerError, ApiUnavailable) as exc:
                if isinstance(exc, ServerError):
                    server_errors += 1
                if not self.policy.should_retry(attempt, exc):
                    if attempt > 1:
                        note = f"gave up after {attempt} attempts"
                        exc.message = f"{exc.message} ({note})"
                        exc.args = (exc.message,)
                        exc.add_note(note)
                    raise
                delay = self.policy.delay(attempt - 1, exc)
                if self._on_retry is not None:
                    self._on_retry(f"{call.method} {call.path}", attempt, exc, delay)
                if delay > 0:
                    await self._clock.sleep(delay)

    async def _attempt(self, call: _Call, key: str | None, *, retry: bool) -> httpx.Response:
        await self.limiter.acquire()
        sent_at = self._clock.now()
        headers: dict[str, str] = {}
        if call.content is not None:
            headers["Content-Type"] = "application/json"
        if key is not None:
            headers["Idempotency-Key"] = key
        self.stats.requests += 1
        if retry:
            self.stats.retries += 1
        try:
            response = await self._http.request(
                call.method,
                call.path,
                content=call.content,
                params=call.params,
                headers=headers,
            )
        except httpx.TransportError as exc:  # timeouts are TransportErrors too
            self.stats.transport_errors += 1
            kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "got no answer"
            detail = self._scrub(str(exc)) or type(exc).__name__
            raise ApiUnavailable(
                f"{call.method} {call.path} to {self._host} {kind} "
                f"({type(exc).__name__}: {detail}). Check the network and COURIER_BASE_URL, "
                f"or raise --timeout (now {self._settings.timeout:g} s)."
            ) from exc
        status = response.status_code
        self.stats.status_counts[status] = self.stats.status_counts.get(status, 0) + 1
        if 200 <= status < 300:
            self.limiter.on_success()
            return response
        self._raise_for(call, response, sent_at)

    def _raise_for(self, call: _Call, response: httpx.Response, sent_at: float) -> NoReturn:
        status = response.status_code
        api_message, api_type = self._error_body(response)
        request_id = next(
            (response.headers[h] for h in _REQUEST_ID_HEADERS if h in response.headers), None
        )
        common: dict[str, Any] = {"api_type": api_type, "request_id": request_id}
        args = (call.method, call.path, status, api_message)
        if status == 429:
            retry_after = parse_retry_after(response.headers)
            if retry_after is not None:
                retry_after = min(retry_after, self.policy.max_retry_after)
            self.stats.throttled += 1
            self.limiter.on_throttled(retry_after, sent_at=sent_at)
            raise RateLimited(
                *args,
                retry_after=retry_after,
                hint="Courier is rate limiting; lower --rate or leave it unset to adapt.",
                **common,
            )
        if status >= 500:
            raise ServerError(*args, retry_after=parse_retry_after(response.headers), **common)
        if status in (401, 403):
            raise AuthenticationError(*args, hint=AUTH_HINT, **common)
        if status == 404:
            raise NotFound(*args, hint=call.not_found_hint, **common)
        if status == 400 and api_message == "BulkJobAlreadySubmittedError":
            raise JobAlreadySubmitted(
                *args,
                hint="The job has already run, so users can no longer be added to it.",
                **common,
            )
        if status == 400 and api_message == "BulkJobDuplicateInvocationError":
            raise JobAlreadyRun(
                *args, hint="The job was already run; a bulk job runs only once.", **common
            )
        if 400 <= status < 500:
            raise ClientError(*args, **common)
        # 1xx/3xx: httpx follows no redirects here, so the base URL is probably wrong.
        raise ClientError(
            *args,
            hint="Unexpected status; check that COURIER_BASE_URL is the API root.",
            **common,
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
                self._scrub(str(body["message"])),
                self._scrub(str(api_type)) if api_type is not None else None,
            )
        return self._scrub(_snippet(response.text)), None

    def _scrub(self, text: str) -> str:
        key = self._settings.api_key
        if key and key in text:
            text = text.replace(key, "***")
        return text

    def _json(self, call: _Call, response: httpx.Response) -> Any:
        if not response.content:
            return None
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise ApiError(
                call.method,
                call.path,
                response.status_code,
                f"the answer is not JSON: {self._scrub(_snippet(response.text))}",
            ) from None


def _new_key() -> str:
    return f"bulkbatch-{uuid.uuid4()}"


def _job_hint(job_id: str) -> str:
    return (
        f"No bulk job {job_id} is visible with this API key; check the job id and that "
        "COURIER_BASE_URL and COURIER_API_KEY are the ones it was created with."
    )


def _snippet(text: str) -> str:
    text = text.strip()
    return text[:_BODY_SNIPPET]


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _page(body: Any, name: str) -> tuple[list[dict[str, Any]], str | None, bool]:
    if not isinstance(body, dict):
        return [], None, False
    raw = body.get(name)
    items = [i for i in raw if isinstance(i, dict)] if isinstance(raw, list) else []
    paging = body.get("paging")
    paging = paging if isinstance(paging, dict) else {}
    cursor = paging.get("cursor")
    return items, cursor if isinstance(cursor, str) and cursor else None, bool(paging.get("more"))
