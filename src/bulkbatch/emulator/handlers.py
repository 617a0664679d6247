"""HTTP glue: one raw-ASGI endpoint per Courier operation, wrapped in auth, faults and
idempotency, calling the :class:`~bulkbatch.emulator.backend.Backend`.

The order every API request goes through (documented in the package docstring too):

1. count the request (and, for ``POST /bulk/{id}``, the ingest attempt);
2. Bearer auth → 401, *before* the body is read and before any fault or rate-limit token
   is spent (an unauthenticated client cannot make the emulator read 1 GB or starve the
   authenticated ones);
3. ``Content-Length`` over :data:`MAX_BODY_BYTES` → 413 (a body without a length is read
   only up to the limit);
4. ``latency_ms`` sleep; fault draw: rate limit → 429, drop-before → connection closed,
   error → 500;
5. ``Idempotency-Key`` (POST only): a saved result for the key is replayed with
   ``Idempotent-Replayed: true`` whatever the request (Courier's documented behaviour); a
   different method, path or body only counts ``idempotency_mismatches`` in the stats;
6. query parameters (spec types) → 400; JSON parsing → 400; ingest size over
   ``max_users_per_call`` → 502; spec validation → 400; a bad ``x-idempotency-expiration``
   → 400 (none of these is saved);
7. the operation runs; its response (2xx or a 4xx such as 404 / ``BulkJob...Error``) is saved
   under the Idempotency-Key;
8. drop-after (if drawn): the connection is closed without a complete response, although the
   operation above was committed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs

import orjson
from starlette.types import Receive, Scope, Send

from bulkbatch.emulator import spec
from bulkbatch.emulator.backend import ApiError, Backend, ValidationError, parse_expiration
from bulkbatch.emulator.faults import Decision, FaultInjector
from bulkbatch.emulator.webhooks import WebhookSender

__all__ = [
    "DROP_LOG_MESSAGE",
    "MAX_BODY_BYTES",
    "ApiEndpoint",
    "EmulatorState",
    "Operation",
    "authorized",
    "operations",
]

log = logging.getLogger(__name__)

# uvicorn logs this when an app returns mid-response; that is exactly how a drop is made.
DROP_LOG_MESSAGE = "ASGI callable returned without completing response."
# API Gateway's payload cap, the likely real limit in front of Courier (courier-bulk-api.md §4).
MAX_BODY_BYTES = 10 * 1024 * 1024

Headers = list[tuple[bytes, bytes]]
_T = TypeVar("_T")


class Turns:
    """Requests are handled one per event-loop turn, in the order they became ready.

    Why: asyncio runs every callback that is ready in a turn before it polls the sockets
    again, and a handler is synchronous. When a wave of requests wakes together (their
    ``latency_ms`` sleeps end in the same turn), they were handled back to back, which hid
    every follow-up request from the loop until the whole wave was done; the next wave then
    slept in step and the loop idled through it. Measured with 16 ingests of 1,000 users in
    flight at 150 ms: the loop read no socket for 290 ms at a time and idled 155 ms per
    wave, 34-37 batches/s. Taking a lock and then yielding once makes the next request
    wait for a wake-up, which comes a turn later, after the sockets were polled, as on a
    server whose network overlaps its work.

    One lock per running loop: an app may be served by more than one loop in its life
    (a test client's portal), and a lock belongs to the loop that first waits on it.
    """

    def __init__(self) -> None:
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    async def run(self, work: Callable[[], _T]) -> _T:
        """``work()`` in its own turn, after the requests that became ready before it."""
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        async with lock:
            await asyncio.sleep(0)  # the others queue on the lock; the sockets get a turn
            return work()


class InFlight:
    """Requests open now and the most at once since the last reset (this process only)."""

    def __init__(self) -> None:
        self.now = self.most = 0

    def enter(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)

    def leave(self) -> None:
        self.now -= 1

    def reset(self) -> None:
        self.most = self.now


@dataclass
class EmulatorState:
    """Everything the endpoints share."""

    backend: Backend
    faults: FaultInjector
    api_key: str | None = None
    contract: Any = None  # a contract.ContractChecker when the contract check is on
    webhooks: WebhookSender | None = None  # with --webhook-url
    turns: Turns = field(default_factory=Turns)
    ingests: InFlight = field(default_factory=InFlight)  # POST /bulk/{id}, arrival to answer

    def start(self) -> None:
        """Start the background work (the webhook sender) once the app is served."""
        if self.webhooks is not None:
            self.webhooks.start()

    def close(self) -> None:
        """Stop the background work, then write the counters and close the database."""
        if self.webhooks is not None:
            self.webhooks.stop()
        self.backend.close()

    def stats(self) -> dict[str, Any]:
        """``GET /_emulator/stats``: the backend's counters (+ the contract check's)."""
        out = self.backend.stats()
        out["most_ingests_in_flight"] = self.ingests.most
        if self.contract is not None:
            out.update(self.contract.stats())
        return out

    def reset(self) -> None:
        self.backend.reset()
        self.faults.reset()
        self.ingests.reset()
        if self.contract is not None:
            self.contract.reset()


def bearer_token(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            return credentials.strip() if scheme.lower() == "bearer" else ""
    return ""


def authorized(state: EmulatorState, scope: Scope) -> bool:
    """True when no key is configured or the request carries ``Bearer <key>``."""
    if state.api_key is None:
        return True
    return hmac.compare_digest(bearer_token(scope).encode(), state.api_key.encode())


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
    validate: Callable[[Backend, Any, bytes], Any] | None = None
    idempotent: bool = False
    ingest: bool = False
    spec_path: str = ""


def _envelope(status: int, message: str, type_: str, headers: Headers | None = None) -> Reply:
    body = orjson.dumps({"message": message, "type": type_})
    return Reply(status, body, headers or [])


@dataclass
class Reply:
    status: int
    body: bytes
    headers: Headers
    # The saved answer of *another* request (an Idempotency-Key reused for a different
    # method, path or body): replayed as Courier documents, but not this operation's answer,
    # so the contract check does not hold it to this operation's schema (it was checked when
    # it was first given).
    foreign: bool = False


class _Disconnected(Exception):
    pass


class _TooLarge(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(size: int | None) -> Reply:
    shown = f"{size} bytes" if size is not None else "the request body"
    return _envelope(
        413,
        f"Request body too large: {shown} is over the limit of {MAX_BODY_BYTES} bytes; "
        "send fewer users per call.",
        "invalid_request_error",
    )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _check_query(op: Operation, method: str, query: dict[str, list[str]]) -> None:
    """Query parameters typed ``boolean`` in the spec must be ``true`` or ``false``."""
    if not op.spec_path:
        return
    for name, type_ in spec.query_types(method, op.spec_path).items():
        for value in query.get(name, []):
            if type_ == "boolean" and value not in ("true", "false"):
                raise ValidationError(f"{name} must be true or false, not {value!r}.")


class ApiEndpoint:
    """A raw ASGI app for one operation (Starlette routes to it by path and method)."""

    def __init__(self, state: EmulatorState, operation: Operation) -> None:
        self.state = state
        self.op = operation
        # Starlette treats non-function endpoints as ASGI apps; give it a readable name.
        self.__name__ = operation.name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.op.ingest:
            await self._serve(scope, receive, send)
            return
        self.state.backend.count("ingest_attempts")
        self.state.ingests.enter()
        try:
            await self._serve(scope, receive, send)
        finally:
            self.state.ingests.leave()

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        backend = self.state.backend
        backend.count("requests")
        if not authorized(self.state, scope):
            await self._send(send, _envelope(401, "Unauthorized", "authentication_error"))
            return
        length = _content_length(scope)
        if length is not None and length > MAX_BODY_BYTES:
            await self._send(send, _too_large(length))
            return
        try:
            raw = await _read_body(receive, MAX_BODY_BYTES)
        except _Disconnected:
            return
        except _TooLarge:
            await self._send(send, _too_large(None))
            return
        spec_ = self.state.faults.spec
        if spec_.latency_ms > 0:
            await asyncio.sleep(spec_.latency_ms / 1000)
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
                reply = await self.state.turns.run(lambda: self._handle(scope, raw))
            except Exception:
                log.exception("emulator bug while handling %s", self.op.name)
                reply = _envelope(500, "Internal Server Error", "api_error")
            if decision is Decision.DROP_AFTER:
                await self._drop(send, reply.status)
                return
        if self.state.contract is not None:
            if reply.foreign:
                self.state.contract.skip()
            else:
                self.state.contract.check(scope, raw, reply.status, reply.body, self.op.spec_path)
        await self._send(send, reply)

    def _replay(self, scope: Scope, raw: bytes) -> tuple[Reply | None, str, str, str]:
        """``(saved reply or None, scope hash, key, request hash)`` for an idempotent POST."""
        backend = self.state.backend
        headers: dict[bytes, bytes] = dict(scope["headers"])
        idem_key = headers.get(b"idempotency-key", b"").decode("latin-1").strip()
        if not (self.op.idempotent and idem_key):
            return None, "", "", ""
        request_hash = backend.request_hash(scope["method"], scope["path"], raw)
        owner = backend.scope(bearer_token(scope))
        saved = backend.idempotency_lookup(owner, idem_key)
        if saved is None:
            return None, owner, idem_key, request_hash
        status, body, first_hash = saved
        backend.count("idempotent_replays")
        foreign = first_hash != request_hash
        if foreign:
            backend.count("idempotency_mismatches")
        reply = Reply(status, body, [(b"idempotent-replayed", b"true")], foreign)
        return reply, owner, idem_key, ""

    def _handle(self, scope: Scope, raw: bytes) -> Reply:
        backend, op = self.state.backend, self.op
        replay, owner, idem_key, request_hash = self._replay(scope, raw)
        if replay is not None:
            return replay
        headers: dict[bytes, bytes] = dict(scope["headers"])
        call = Call(
            path_params=dict(scope.get("path_params", {})),
            query=parse_qs(scope.get("query_string", b"").decode("latin-1")),
        )
        try:
            _check_query(op, scope["method"], call.query)
            if op.validate is not None:
                try:
                    parsed = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError as exc:
                    raise ValidationError(f"The request body is not valid JSON: {exc}.") from None
                if op.ingest:
                    users = parsed.get("users") if isinstance(parsed, dict) else None
                    limit = self.state.faults.spec.max_users_per_call
                    if isinstance(users, list) and len(users) > limit:
                        return _envelope(
                            502,
                            f"Bad Gateway: {len(users)} users in one call is more than "
                            f"the limit of {limit} (max_users_per_call).",
                            "api_error",
                        )
                call.input = op.validate(backend, parsed, raw)
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
            backend.idempotency_save(owner, idem_key, request_hash, status, body_bytes, expires_ms)
        extra: Headers = [(b"x-should-retry", b"false")] if status == 409 else []
        return Reply(status, body_bytes, extra)

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
# Status codes by flavor: ``current`` follows the OpenAPI file / SDK (200, 204, 204),
# ``tutorial`` the bulk tutorial and the backend snapshot (201, 200 + body, 202).


def _create_job(backend: Backend, call: Call) -> tuple[int, object]:
    status = 201 if backend.flavor == "tutorial" else 200
    return status, {"jobId": backend.create_job(call.input)}


def _ingest(backend: Backend, call: Call) -> tuple[int, object]:
    result = backend.ingest(call.path_params["job_id"], call.input)
    return (200, result) if backend.flavor == "tutorial" else (204, None)


def _run(backend: Backend, call: Call) -> tuple[int, object]:
    backend.run_job(call.path_params["job_id"])
    return (202 if backend.flavor == "tutorial" else 204), None


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


def _cancel_message(backend: Backend, call: Call) -> tuple[int, object]:
    return backend.cancel_message(call.path_params["message_id"])


def _message_history(backend: Backend, call: Call) -> tuple[int, object]:
    type_ = call.query.get("type", [""])[0] or None
    return 200, backend.message_history(call.path_params["message_id"], type_)


def operations() -> list[tuple[str, str, Operation]]:
    """``(method, path, operation)`` for every emulated Courier endpoint."""
    table: list[tuple[str, str, Operation]] = [
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
        (
            "POST",
            "/messages/{message_id}/cancel",
            Operation("cancel_message", _cancel_message, idempotent=True),
        ),
        ("GET", "/messages/{message_id}/history", Operation("history", _message_history)),
    ]
    # Every operation is one the spec documents; its query parameters are checked against it.
    return [
        (method, path, Operation(**{**op.__dict__, "spec_path": path}))
        for method, path, op in table
    ]
