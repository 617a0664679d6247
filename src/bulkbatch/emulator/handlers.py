"""HTTP glue: one raw-ASGI endpoint per Courier operation, wrapped in faults, auth and
idempotency, calling the :class:`~bulkbatch.emulator.backend.Backend`.

The order every API request goes through (documented in the package docstring too):

1. count the request (and, for ``POST /bulk/{id}``, the ingest attempt);
2. ``latency_ms`` sleep;
3. fault draw: rate limit → 429, drop-before → connection closed, error → 500;
4. Bearer auth → 401;
5. ``Idempotency-Key`` (POST only): a saved result for the same key and request is replayed
   with ``Idempotent-Replayed: true``; for a different request → 409 ``idempotency_error``;
6. JSON parsing → 400; ingest size over ``max_users_per_call`` → 502; validation → 400;
   a bad ``x-idempotency-expiration`` → 400 (none of these is saved);
7. the operation runs; its response (2xx or a 4xx such as 404 / ``BulkJob...Error``) is saved
   under the Idempotency-Key;
8. drop-after (if drawn): the connection is closed without a complete response, although the
   operation above was committed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.types import Receive, Scope, Send

from bulkbatch.emulator.backend import ApiError, Backend, ValidationError, parse_expiration
from bulkbatch.emulator.faults import Decision, FaultInjector

__all__ = ["DROP_LOG_MESSAGE", "ApiEndpoint", "EmulatorState", "Operation", "operations"]

log = logging.getLogger(__name__)

# uvicorn logs this when an app returns mid-response; that is exactly how a drop is made.
DROP_LOG_MESSAGE = "ASGI callable returned without completing response."

Headers = list[tuple[bytes, bytes]]


@dataclass
class EmulatorState:
    """Everything the endpoints share."""

    backend: Backend
    faults: FaultInjector
    api_key: str | None = None


@dataclass
class Call:
    """One parsed request as an operation sees it."""

    path_params: dict[str, str]
    query: dict[str, list[str]]
    input: Any = None


@dataclass(frozen=True)
class Operation:
    """A Courier API operation: how to validate its input and what it does."""

    name: str
    execute: Callable[[Backend, Call], tuple[int, object]]
    validate: Callable[[Any], Any] | None = None
    idempotent: bool = False
    ingest: bool = False


def _envelope(status: int, message: str, type_: str, headers: Headers | None = None) -> Reply:
    body = orjson.dumps({"message": message, "type": type_})
    return Reply(status, body, headers or [])


@dataclass
class Reply:
    status: int
    body: bytes
    headers: Headers


class _Disconnected(Exception):
    pass


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class ApiEndpoint:
    """A raw ASGI app for one operation (Starlette routes to it by path and method)."""

    def __init__(self, state: EmulatorState, operation: Operation) -> None:
        self.state = state
        self.op = operation
        # Starlette treats non-function endpoints as ASGI apps; give it a readable name.
        self.__name__ = operation.name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        backend = self.state.backend
        backend.count("requests")
        if self.op.ingest:
            backend.count("ingest_attempts")
        try:
            raw = await _read_body(receive)
        except _Disconnected:
            return
        spec = self.state.faults.spec
        if spec.latency_ms > 0:
            await asyncio.sleep(spec.latency_ms / 1000)
        decision, retry_after = self.state.faults.decide()
        if decision is Decision.RATE_LIMITED:
            reply = _envelope(
                429,
                "Too Many Requests",
                "rate_limit_error",
                [(b"retry-after", str(retry_after).encode())],
            )
        elif decision is Decision.DROP_BEFORE:
            await self._drop(send, 502)
            return
        elif decision is Decision.ERROR:
            reply = _envelope(500, "Internal Server Error (emulated fault)", "api_error")
        else:
            try:
                reply = self._handle(scope, raw)
            except Exception:
                log.exception("emulator bug while handling %s", self.op.name)
                reply = _envelope(500, "Internal Server Error", "api_error")
            if decision is Decision.DROP_AFTER:
                await self._drop(send, reply.status)
                return
        await self._send(send, reply)

    def _handle(self, scope: Scope, raw: bytes) -> Reply:
        state, backend, op = self.state, self.state.backend, self.op
        headers: dict[bytes, bytes] = dict(scope["headers"])
        token = ""
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, credentials = auth.partition(" ")
        if scheme.lower() == "bearer":
            token = credentials.strip()
        if state.api_key is not None and not hmac.compare_digest(
            token.encode(), state.api_key.encode()
        ):
            return _envelope(401, "Unauthorized", "authentication_error")

        idem_key = headers.get(b"idempotency-key", b"").decode("latin-1").strip()
        request_hash = ""
        if op.idempotent and idem_key:
            request_hash = backend.request_hash(scope["method"], scope["path"], raw)
            saved = backend.idempotency_lookup(token, idem_key, request_hash)
            if saved == "mismatch":
                return _envelope(
                    409,
                    f"Idempotency-Key {idem_key!r} was used with a different request "
                    "(method, path or body); use a new key for a new request.",
                    "idempotency_error",
                    [(b"x-should-retry", b"false")],
                )
            if saved is not None:
                backend.count("idempotent_replays")
                status, body = saved
                return Reply(status, body, [(b"idempotent-replayed", b"true")])

        call = Call(
            path_params=dict(scope.get("path_params", {})),
            query=parse_qs(scope.get("query_string", b"").decode("latin-1")),
        )
        try:
            if op.validate is not None:
                try:
                    parsed = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError as exc:
                    raise ValidationError(f"The request body is not valid JSON: {exc}.") from None
                if op.ingest:
                    users = parsed.get("users") if isinstance(parsed, dict) else None
                    limit = state.faults.spec.max_users_per_call
                    if isinstance(users, list) and len(users) > limit:
                        return _envelope(
                            502,
                            f"Bad Gateway: {len(users)} users in one call is more than "
                            f"the limit of {limit} (max_users_per_call).",
                            "api_error",
                        )
                call.input = op.validate(parsed)
            expires_ms = 0
            if request_hash:
                now = backend.now_ms()
                expiration = headers.get(b"x-idempotency-expiration")
                expires_ms = (
                    parse_expiration(expiration.decode("latin-1"), now)
                    if expiration
                    else now + 24 * 3600 * 1000
                )
        except ValidationError as exc:
            return Reply(exc.status, orjson.dumps(exc.envelope()), [])

        try:
            status, payload = op.execute(backend, call)
            body_bytes = b"" if payload is None else orjson.dumps(payload)
        except ApiError as exc:
            status, body_bytes = exc.status, orjson.dumps(exc.envelope())
        if request_hash:
            backend.idempotency_save(token, idem_key, request_hash, status, body_bytes, expires_ms)
        return Reply(status, body_bytes, [])

    async def _send(self, send: Send, reply: Reply) -> None:
        backend = self.state.backend
        backend.count_status(reply.status)
        backend.flush_counters()
        headers: Headers = [(b"content-length", str(len(reply.body)).encode())]
        if reply.body:
            headers.append((b"content-type", b"application/json"))
        headers.extend(reply.headers)
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def _drop(self, send: Send, status: int) -> None:
        """Close the connection without a complete response.

        Headers promising a body are sent and the app returns without it; uvicorn then
        closes the transport, so the client sees a protocol/read error, never a response.
        """
        backend = self.state.backend
        backend.count("dropped_connections")
        backend.flush_counters()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"65536"),
                ],
            }
        )


# -- operations ---------------------------------------------------------------------------


def _create_job(backend: Backend, call: Call) -> tuple[int, object]:
    return 201, {"jobId": backend.create_job(call.input)}


def _ingest(backend: Backend, call: Call) -> tuple[int, object]:
    return 200, backend.ingest(call.path_params["job_id"], call.input)


def _run(backend: Backend, call: Call) -> tuple[int, object]:
    backend.run_job(call.path_params["job_id"])
    return 202, None


def _retrieve_job(backend: Backend, call: Call) -> tuple[int, object]:
    return 200, backend.retrieve_job(call.path_params["job_id"])


def _list_users(backend: Backend, call: Call) -> tuple[int, object]:
    cursor = call.query.get("cursor", [""])[0] or None
    return 200, backend.list_users(call.path_params["job_id"], cursor)


def _retrieve_message(backend: Backend, call: Call) -> tuple[int, object]:
    return 200, backend.retrieve_message(call.path_params["message_id"])


def _list_messages(backend: Backend, call: Call) -> tuple[int, object]:
    return 200, backend.list_messages(call.query)


def _message_output(backend: Backend, call: Call) -> tuple[int, object]:
    return 200, backend.message_output(call.path_params["message_id"])


def operations() -> list[tuple[str, str, Operation]]:
    """``(method, path, operation)`` for every emulated Courier endpoint."""
    return [
        (
            "POST",
            "/bulk",
            Operation("create_job", _create_job, Backend.validate_create, idempotent=True),
        ),
        (
            "POST",
            "/bulk/{job_id}",
            Operation("add_users", _ingest, Backend.validate_ingest, idempotent=True, ingest=True),
        ),
        ("POST", "/bulk/{job_id}/run", Operation("run_job", _run, idempotent=True)),
        ("GET", "/bulk/{job_id}", Operation("retrieve_job", _retrieve_job)),
        ("GET", "/bulk/{job_id}/users", Operation("list_users", _list_users)),
        ("GET", "/messages", Operation("list_messages", _list_messages)),
        ("GET", "/messages/{message_id}", Operation("retrieve_message", _retrieve_message)),
        ("GET", "/messages/{message_id}/output", Operation("message_output", _message_output)),
    ]
