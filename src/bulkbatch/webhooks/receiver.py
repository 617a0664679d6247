"""The receiver: a Starlette app taking Courier's outbound webhooks into a :class:`WebhookStore`.

``POST /webhooks/courier`` checks, in this order, answering with the first failure:

=====  =============================================================================
415    the content type is not JSON (``application/json`` or ``application/*+json``)
413    ``Content-Length`` is over ``max_body_bytes`` (checked before reading), or the body
       grows past it while streaming (chunked requests)
400    ``Content-Length`` is not a number
408    the body did not arrive within ``body_timeout`` seconds of the headers (the
       connection is closed: a client that stops sending cannot hold it)
401    the ``courier-signature`` header is missing, malformed, does not match the raw body,
       or its timestamp is outside the tolerance. Nothing of the request is stored.
400    the body is not JSON, or not ``{"type": str, "data": {...}}`` (``message:updated``
       also needs ``data.id`` and ``data.status``)
503    the store could not commit the event (Courier retries 5xx)
200    the event's transaction committed (group commit, ``synchronous=FULL``)
=====  =============================================================================

Every rejected request is logged as one JSON line on the ``bulkbatch.webhooks`` logger
(status, reason, peer address, declared length); never a header value or the secret.
``GET /healthz`` answers 200 while the store writer runs, 503 otherwise.

The POST handler is a plain ASGI callable (no Request/Response objects): it is the hot path
of a receiver that has to take millions of events on one core.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import anyio
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bulkbatch.webhooks.errors import (
    PayloadError,
    SignatureError,
    WebhookConfigError,
    WebhookStoreError,
)
from bulkbatch.webhooks.events import parse_event
from bulkbatch.webhooks.signature import (
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_FUTURE,
    SignatureVerifier,
)
from bulkbatch.webhooks.store import DURABILITY
from bulkbatch.webhooks.writer import GroupCommitWriter

__all__ = ["DEFAULT_MAX_BODY_BYTES", "WEBHOOK_PATH", "CourierWebhookEndpoint", "create_app"]

log = logging.getLogger("bulkbatch.webhooks")

WEBHOOK_PATH = "/webhooks/courier"
DEFAULT_MAX_BODY_BYTES = 256 * 1024
DEFAULT_BODY_TIMEOUT = 30.0
"""Seconds a request's body may take after its headers: Courier sends a few kilobytes at
once; a client dripping bytes, or stopping, is cut off rather than holding a connection."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]
_OK = b'{"ok":true}'


class _Reject(Exception):
    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


def _is_json(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


class CourierWebhookEndpoint:
    """The ASGI callable behind ``POST /webhooks/courier`` (see the module docstring)."""

    def __init__(
        self,
        writer: GroupCommitWriter,
        verifier: SignatureVerifier | None,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        keep_bodies: bool = False,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
    ) -> None:
        self.writer = writer
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.keep_bodies = keep_bodies
        self.accepted = 0
        self.rejected: dict[int, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared: int | None = None
        try:
            declared, signature = self._headers(scope)
            with anyio.move_on_after(self.body_timeout) as deadline:
                body = await self._read_body(receive, declared)
            if deadline.cancelled_caught:
                raise _Reject(
                    408, "body_timeout", f"the body took over {self.body_timeout:g} s to arrive"
                )
            if body is None:  # the client went away
                return
            signed_at = None
            if self.verifier is not None:
                signed_at = self.verifier.verify(signature, body)
            event = parse_event(
                body,
                received_at=int(time.time() * 1000),
                signed_at=signed_at,
                keep_body=self.keep_bodies,
            )
            await self.writer.write(event)
        except _Reject as exc:
            await self._reject(scope, send, exc.status, exc.reason, exc.detail, declared)
            return
        except SignatureError as exc:
            await self._reject(scope, send, 401, f"signature_{exc.reason}", str(exc), declared)
            return
        except PayloadError as exc:
            await self._reject(scope, send, 400, exc.reason, str(exc), declared)
            return
        except WebhookStoreError as exc:
            await self._reject(scope, send, 503, "store_unavailable", str(exc), declared)
            return
        self.accepted += 1
        await _respond(send, 200, _OK)

    def _headers(self, scope: Scope) -> tuple[int | None, str | None]:
        content_type: bytes | None = None
        length: bytes | None = None
        signature: str | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = value
            elif name == b"courier-signature":
                signature = value.decode("latin-1")
        if not _is_json(content_type):
            raise _Reject(415, "unsupported_media_type", "the content type must be JSON")
        declared: int | None = None
        if length is not None:
            if not length.strip().isdigit():
                raise _Reject(400, "bad_content_length", "Content-Length is not a number")
            declared = int(length)
            if declared > self.max_body_bytes:
                raise _Reject(
                    413, "body_too_large", f"the body is over {self.max_body_bytes} bytes"
                )
        return declared, signature

    async def _read_body(self, receive: Receive, declared: int | None) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise _Reject(
                        413, "body_too_large", f"the body is over {self.max_body_bytes} bytes"
                    )
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _reject(
        self,
        scope: Scope,
        send: Send,
        status: int,
        reason: str,
        detail: str,
        declared: int | None,
    ) -> None:
        self.rejected[status] = self.rejected.get(status, 0) + 1
        client = scope.get("client")
        record = {
            "event": "webhook_rejected",
            "status": status,
            "reason": reason,
            "detail": detail,
            "path": scope.get("path"),
            "client": client[0] if client else None,
            "content_length": declared,
        }
        log.warning(orjson.dumps(record).decode())
        headers = None
        if status in (408, 413):
            headers = [*_JSON_HEADERS, (b"connection", b"close")]
        await _respond(send, status, orjson.dumps({"error": reason}), headers)


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *(headers or _JSON_HEADERS),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _verifier(
    secrets: str | Sequence[str] | None,
    insecure_no_signature: bool,
    max_age: float | None,
    max_future: float,
) -> SignatureVerifier | None:
    keys = [secrets] if isinstance(secrets, str) else list(secrets or [])
    keys = [k for k in keys if k]
    if keys and insecure_no_signature:
        raise WebhookConfigError(
            "a webhook secret and insecure_no_signature were both given; pick one"
        )
    if not keys:
        if insecure_no_signature:
            return None
        raise WebhookConfigError(
            "no webhook secret: set COURIER_WEBHOOK_SECRET (or pass --secret) to the signing "
            "secret of the webhook in Courier's settings. To accept unsigned events anyway "
            "(a local test only), use --insecure-no-signature."
        )
    try:
        return SignatureVerifier(keys, max_age=max_age, max_future=max_future)
    except ValueError as exc:
        raise WebhookConfigError(str(exc)) from None


def create_app(
    store_path: str | os.PathLike[str],
    *,
    secrets: str | Sequence[str] | None = None,
    insecure_no_signature: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_age: float | None = DEFAULT_MAX_AGE,
    max_future: float = DEFAULT_MAX_FUTURE,
    keep_bodies: bool = False,
    max_batch: int = 2000,
    linger: float = 0.0,
    durability: str = "fsync",
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
) -> Starlette:
    """The receiver app: ``POST /webhooks/courier`` and ``GET /healthz``.

    Raises :class:`WebhookConfigError` without ``secrets`` unless ``insecure_no_signature``.
    ``durability`` is ``fsync`` (a 2xx survives a power loss) or ``process`` (it survives the
    receiver being killed); see :class:`~bulkbatch.webhooks.store.WebhookStore`.
    The store is opened (and created) when the app starts (ASGI lifespan) and closed, after
    committing everything queued, when it stops. ``app.state.webhooks`` is the endpoint
    (counters) and ``app.state.writer`` the :class:`GroupCommitWriter`.
    """
    verifier = _verifier(secrets, insecure_no_signature, max_age, max_future)
    if max_body_bytes < 1:
        raise WebhookConfigError("max_body_bytes must be at least 1")
    if not body_timeout > 0:
        raise WebhookConfigError("body_timeout must be a positive number of seconds")
    if durability not in DURABILITY:
        raise WebhookConfigError(f"durability must be one of {', '.join(DURABILITY)}")
    writer = GroupCommitWriter(
        store_path, max_batch=max_batch, linger=linger, durability=durability
    )
    endpoint = CourierWebhookEndpoint(
        writer,
        verifier,
        max_body_bytes=max_body_bytes,
        keep_bodies=keep_bodies,
        body_timeout=body_timeout,
    )

    async def healthz(request: Request) -> JSONResponse:
        stats = writer.stats()
        body = {
            "status": "ok" if stats.alive else "store writer stopped",
            "accepted": endpoint.accepted,
            "committed": stats.committed,
            "pending": stats.pending,
            "signatures": verifier is not None,
        }
        return JSONResponse(body, status_code=200 if stats.alive else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        writer.start()
        try:
            yield
        finally:
            writer.close()

    app = Starlette(
        routes=[
            Route(WEBHOOK_PATH, endpoint, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.webhooks = endpoint
    app.state.writer = writer
    return app
