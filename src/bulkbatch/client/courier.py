"""An async client for Courier's Bulk and Messages APIs, paced, retried and safe to log.

Method names are the official SDK's (``client.bulk.create_job`` -> :meth:`CourierClient.create_job`,
``client.messages.cancel`` -> :meth:`CourierClient.cancel_message`), so code can be checked
against Courier's docs line by line. Unlike the SDK, the client

* sends an ``Idempotency-Key`` on every POST (the caller's, or a fresh one per call) and keeps
  it across retries, so a retried POST cannot create a second job;
* speaks both flavours of the contract the same way: the current one (``POST /bulk`` 200,
  ingest 204 with no body, run 204) and the tutorial's (201, 200 ``{total, errors}``, 202);
  any 2xx is accepted and an ingest body is read when there is one (:class:`IngestResult`);
* checks every answer against the contract (:mod:`bulkbatch.client.models`): a body that is
  not JSON or a field of the wrong type is one :class:`~bulkbatch.errors.BadResponse`;
* maps every failure to one exception tree (:mod:`bulkbatch.errors`): ``Retryable`` errors
  (429, 5xx, timeouts, dropped connections) are retried with capped, jittered exponential
  backoff that honours ``Retry-After`` up to ``max_backoff``; ``Terminal`` ones are raised at
  once; every retry is reported to ``on_retry``;
* takes one token from the shared :class:`~bulkbatch.client.ratelimit.AdaptiveLimiter` per attempt,
  and tells it about every 2xx and 429;
* lets reads run wider than writes when the server shows no strain: every ``GET`` attempt
  holds a slot of :attr:`reads` (:class:`~bulkbatch.client.concurrency.ReadGate`), which
  starts at ``concurrency``, grows by a quarter each round of reads in which latency held
  (within 2× the lowest of recent rounds) and nothing was throttled, and shrinks to 3/4 on
  a 429 (to 9/10 on a latency rise, but not below ``concurrency``); never above ``read_limit``
  (4 × ``concurrency`` by default). Job status reads (``retrieve_job``) take no slot: they
  never queue behind result pages. Writes are bounded by the caller's workers. The request
  *rate* stays the limiter's;
* never follows a redirect (the ``Authorization`` header would go along).

The API key goes into the ``Authorization`` header and nowhere else: not into an
exception, a ``repr`` or a log line (:mod:`bulkbatch.client.security`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import orjson

from bulkbatch.client._http import (
    AUTH_HINT,
    USER_AGENT,
    Call,
    HttpCore,
    RetryCallback,
    new_key,
    parse_retry_after,
)
from bulkbatch.client.models import (
    ClientStats,
    HistoryEvent,
    IngestResult,
    Job,
    MessageContent,
    MessageDetails,
    MessageHistory,
    MessagesPage,
    RetryEvent,
    UsersPage,
    UserStatuses,
    bad,
    obj,
    parse_content,
    parse_history,
    parse_ingest,
    parse_job,
    parse_message,
    parse_messages_page,
    parse_user_statuses,
    parse_users_page,
    req,
)
from bulkbatch.client.paging import UsersPaging
from bulkbatch.client.security import check_idempotency_key

__all__ = [
    "AUTH_HINT",
    "USER_AGENT",
    "ClientStats",
    "CourierClient",
    "HistoryEvent",
    "IngestResult",
    "Job",
    "MessageContent",
    "MessageDetails",
    "MessageHistory",
    "MessagesPage",
    "RetryCallback",
    "RetryEvent",
    "UserStatuses",
    "UsersPage",
    "parse_retry_after",
]

_BASE_URL_HINT = "Check COURIER_BASE_URL: it should be the API root, e.g. https://api.courier.com."


def _dumps(obj_: Any) -> bytes:
    def default(value: Any) -> Any:
        if isinstance(value, Mapping):
            return dict(value)
        if isinstance(value, Sequence) and not isinstance(value, str | bytes):
            return list(value)
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")

    return orjson.dumps(obj_, default=default)


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


def _key(idempotency_key: str | None) -> str:
    return check_idempotency_key(idempotency_key) if idempotency_key is not None else new_key()


def _job_hint(job_id: str) -> str:
    return (
        f"No bulk job {job_id} is visible with this API key; check the job id and that "
        "COURIER_BASE_URL and COURIER_API_KEY are the ones it was created with."
    )


def _message_hint(message_id: str) -> str:
    return (
        f"No message {message_id} is visible with this API key; check the id and that "
        "COURIER_API_KEY is for the workspace that sent it."
    )


class CourierClient(HttpCore):
    """Courier's bulk and message endpoints over one :class:`httpx.AsyncClient`.

    :param settings: base URL, key, timeouts, attempts, backoff cap, rate
    :param transport: an httpx transport (``httpx.MockTransport``, ``ASGITransport``) for tests
    :param limiter: the pacing shared by every request of a run; default
        ``AdaptiveLimiter(settings.rate, start_rate=settings.start_rate)``
    :param policy: retries; default from ``settings.max_attempts`` and ``settings.max_backoff``
    :param clock: time for retry waits and the default limiter (tests pass a fake one)
    :param on_retry: called as ``on_retry(event)`` with a :class:`RetryEvent` for every
        retryable failure (429, 5xx, no answer): before each retry wait, and for a last 429
    :param read_limit: the most ``GET`` requests in flight (default 4 × ``concurrency``);
        :attr:`reads` adapts below it
    :raises InvalidApiKey: the key has a control or non-ASCII character inside it
        (surrounding whitespace and CR/LF are stripped)

    :attr:`insecure_transport` says whether the key goes over plain ``http://`` to a host
    that is not this machine. Use the client as an async context manager, or call
    :meth:`aclose`.
    """

    # -- bulk -----------------------------------------------------------------------------

    async def create_job(
        self, message: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> str:
        """``POST /bulk``: create a bulk job for ``message``; returns the ``jobId``.

        Accepts 200 (the current contract) and 201 (the tutorial's). The same
        ``idempotency_key`` is sent on every try (never rotated: a new key could create a
        second job). Pass one derived from the run so a resumed run cannot create a second
        job either.
        """
        call = Call(
            "create_job",
            "POST",
            "/bulk",
            content=_dumps({"message": message}),
            idempotency_key=_key(idempotency_key),
            not_found_hint=_BASE_URL_HINT,
        )
        response = await self._request(call)
        where = call.where(response.status_code)
        body = obj(where, self.json(call, response))
        job_id: str = req(where, body, "jobId", str)
        if not job_id:
            raise bad(where, "jobId is empty", hint="Is COURIER_BASE_URL a Courier API?")
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
        :returns: 204 (no body: every user was accepted) gives ``total=None, errors=[]``;
            200 ``{total, errors}`` gives both
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
        call = Call(
            "add_users",
            "POST",
            f"/bulk/{jid}",
            content=content,
            idempotency_key=_key(idempotency_key),
            rotate_key_after_5xx=True,
            not_found_hint=_job_hint(job_id),
        )
        response = await self._request(call)
        return parse_ingest(call.where(response.status_code), self.json(call, response))

    async def run_job(self, job_id: str, *, idempotency_key: str | None = None) -> None:
        """``POST /bulk/{job_id}/run``: start the job (it runs once). 204 or 202; no body is
        sent (and no ``Content-Type``).

        :raises JobAlreadyRun: the job was run before (400 BulkJobDuplicateInvocationError)
        """
        jid = _path_id(job_id, "job id")
        call = Call(
            "run_job",
            "POST",
            f"/bulk/{jid}/run",
            idempotency_key=_key(idempotency_key),
            not_found_hint=_job_hint(job_id),
        )
        await self._request(call)

    async def retrieve_job(self, job_id: str) -> Job:
        """``GET /bulk/{job_id}``: the job's status and counters."""
        jid = _path_id(job_id, "job id")
        call = Call(
            "retrieve_job",
            "GET",
            f"/bulk/{jid}",
            not_found_hint=_job_hint(job_id),
            status_read=True,  # never queued behind result pages (see ReadGate)
        )
        response = await self._request(call)
        return parse_job(call.where(response.status_code), self.json(call, response))

    @staticmethod
    def _users_call(job_id: str, cursor: str | None, pages_left: int) -> Call:
        jid = _path_id(job_id, "job id")
        return Call(
            "list_users",
            "GET",
            f"/bulk/{jid}/users",
            params={"cursor": cursor} if cursor else None,
            not_found_hint=_job_hint(job_id),
            priority=pages_left,
        )

    async def list_users(
        self, job_id: str, cursor: str | None = None, *, pages_left: int = 0
    ) -> UsersPage:
        """``GET /bulk/{job_id}/users``: one page of users with their status and messageId.

        :param pages_left: the job's pages still to fetch (:attr:`UsersPaging.pages_left`):
            while reads queue for a slot, the job with the most left goes first
        """
        call = self._users_call(job_id, cursor, pages_left)
        response = await self._request(call)
        return parse_users_page(call.where(response.status_code), self.json(call, response))

    async def list_user_statuses(
        self, job_id: str, cursor: str | None = None, *, pages_left: int = 0
    ) -> UserStatuses:
        """:meth:`list_users` reduced to each user's recipient, status and messageId: what
        tracking keeps, decoded without building the rest of every user (same checks, same
        errors, the same ``pages_left``)."""
        call = self._users_call(job_id, cursor, pages_left)
        response = await self._request(call)
        where = call.where(response.status_code)
        return parse_user_statuses(where, response.content, lambda: self.json(call, response))

    async def iter_users(
        self, job_id: str, *, received: int, cursor: str | None = None
    ) -> AsyncIterator[UsersPage]:
        """Every page of ``GET /bulk/{job_id}/users``, checked by :class:`UsersPaging`.

        :param received: the job's ``received`` (from :meth:`retrieve_job` once it completed)
        :raises PagingError: a cursor repeats, or the listing outgrows ``received``
        """
        paging = UsersPaging(job_id, received, cursor=cursor)
        more = True
        while more:
            page = await self.list_users(job_id, cursor=paging.cursor, pages_left=paging.pages_left)
            more = paging.check(page.items, page.cursor, page.more)
            yield page

    # -- messages -------------------------------------------------------------------------

    async def retrieve_message(self, message_id: str) -> MessageDetails:
        """``GET /messages/{message_id}``: status, timestamps (ms), providers."""
        mid = _path_id(message_id, "message id")
        call = Call(
            "retrieve_message", "GET", f"/messages/{mid}", not_found_hint=_message_hint(message_id)
        )
        response = await self._request(call)
        return parse_message(call.where(response.status_code), self.json(call, response))

    async def list_messages(
        self,
        *,
        archived: bool | None = None,
        cursor: str | None = None,
        enqueued_after: str | None = None,
        event: str | None = None,
        list_id: str | None = None,
        message_id: str | None = None,
        notification: str | None = None,
        provider: Sequence[str] | str | None = None,
        recipient: str | None = None,
        status: Sequence[str] | str | None = None,
        tag: Sequence[str] | str | None = None,
        tags: str | None = None,
        tenant_id: str | None = None,
        trace_id: str | None = None,
        **extra: Any,
    ) -> MessagesPage:
        """``GET /messages``: one page of messages, most recent first.

        The filters are the SDK's (``list_id`` is its ``list``; ``message_id`` and
        ``trace_id`` go out as ``messageId`` and ``traceId``). Lists are comma-joined like
        the SDK's, booleans sent as ``true``/``false``, ``None`` left out; ``extra`` query
        parameters are passed on as they are.
        """
        named = {
            "archived": archived,
            "cursor": cursor,
            "enqueued_after": enqueued_after,
            "event": event,
            "list": list_id,
            "messageId": message_id,
            "notification": notification,
            "provider": provider,
            "recipient": recipient,
            "status": status,
            "tag": tag,
            "tags": tags,
            "tenant_id": tenant_id,
            "traceId": trace_id,
        }
        query = {k: _query_value(v) for k, v in {**extra, **named}.items() if v is not None}
        call = Call("list_messages", "GET", "/messages", params=query or None)
        response = await self._request(call)
        return parse_messages_page(call.where(response.status_code), self.json(call, response))

    async def message_content(self, message_id: str) -> MessageContent:
        """``GET /messages/{message_id}/output`` (the SDK's ``messages.content``): what was
        rendered for each channel."""
        mid = _path_id(message_id, "message id")
        call = Call(
            "message_content",
            "GET",
            f"/messages/{mid}/output",
            not_found_hint=_message_hint(message_id),
        )
        response = await self._request(call)
        return parse_content(call.where(response.status_code), self.json(call, response))

    async def message_history(self, message_id: str, *, type: str | None = None) -> MessageHistory:
        """``GET /messages/{message_id}/history`` (the SDK's ``messages.history``), optionally
        only the events of one ``type`` (``ENQUEUED``, ``ROUTED``, ``DELIVERED``, ...)."""
        mid = _path_id(message_id, "message id")
        call = Call(
            "message_history",
            "GET",
            f"/messages/{mid}/history",
            params={"type": type} if type else None,
            not_found_hint=_message_hint(message_id),
        )
        response = await self._request(call)
        return parse_history(call.where(response.status_code), self.json(call, response))

    async def cancel_message(
        self, message_id: str, *, idempotency_key: str | None = None
    ) -> MessageDetails:
        """``POST /messages/{message_id}/cancel`` (the SDK's ``messages.cancel``).

        Courier answers 200 when it cancelled the message and 409 when it could not (already
        delivered, say); both carry the message record, which is returned: its ``status``
        says which (``CANCELED`` or not).
        """
        mid = _path_id(message_id, "message id")
        call = Call(
            "cancel_message",
            "POST",
            f"/messages/{mid}/cancel",
            idempotency_key=_key(idempotency_key),
            not_found_hint=_message_hint(message_id),
            answer_statuses=(409,),
        )
        response = await self._request(call)
        return parse_message(call.where(response.status_code), self.json(call, response))

    async def resend_message(self, message_id: str, *, idempotency_key: str | None = None) -> str:
        """``POST /messages/{message_id}/resend`` (the SDK's ``messages.resend``): send the
        message again to the same recipient; returns the new ``messageId``."""
        mid = _path_id(message_id, "message id")
        call = Call(
            "resend_message",
            "POST",
            f"/messages/{mid}/resend",
            idempotency_key=_key(idempotency_key),
            not_found_hint=_message_hint(message_id),
        )
        response = await self._request(call)
        where = call.where(response.status_code)
        new_id: str = req(where, obj(where, self.json(call, response)), "messageId", str)
        return new_id
