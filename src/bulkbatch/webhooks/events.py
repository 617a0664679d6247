"""Courier webhook events: parsing a body into a row, and the status precedence.

A body is ``{"type": "...", "data": {...}}``. For ``message:updated`` the ``data`` is the
``GET /messages/{id}`` record: ``id``, ``status``, ``event``, ``notification``,
``recipient``, ``recipientId``, epoch-millisecond ``enqueued``/``sent``/``delivered``/
``opened``/``clicked`` as reached, and ``reason``/``error`` on failures. Other event types
(``notification:*``, ``audiences:*``, types added later) are kept with their raw body and
play no part in delivery outcomes.

Status precedence (:data:`STATUS_RANK`): a message's current status is the received status
with the highest rank, never the last one to arrive, since Courier retries, duplicates and
reorders deliveries (OPENED may come before DELIVERED, or without it).

* progress: ENQUEUED < DELAYED < DIGESTED < ROUTED
* pre-send endings (CANCELED, FILTERED, THROTTLED, UNMAPPED, UNROUTABLE) beat that progress
  but lose to SENT: a cancel is only a soft guarantee, the message may have been sent anyway
* SENT < SIMULATED < DELIVERED
* UNDELIVERABLE beats SENT and DELIVERED (a late bounce after the provider accepted it)
* OPENED < CLICKED beat everything: engagement proves the message arrived
* a status not in the table (Courier's enum is open) ranks below all known ones
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from bulkbatch.models import DELIVERY_PRECEDENCE
from bulkbatch.webhooks.errors import PayloadError

__all__ = [
    "MESSAGE_UPDATED",
    "STATUS_RANK",
    "TERMINAL_FAILURES",
    "TIMESTAMP_FIELDS",
    "UNKNOWN_STATUS_RANK",
    "WebhookEvent",
    "parse_event",
    "status_rank",
]

MESSAGE_UPDATED = "message:updated"
TIMESTAMP_FIELDS = ("enqueued", "sent", "delivered", "opened", "clicked")

STATUS_RANK: Mapping[str, int] = DELIVERY_PRECEDENCE
"""The one status order, defined in :mod:`bulkbatch.models`."""
UNKNOWN_STATUS_RANK = 0
TERMINAL_FAILURES = frozenset(
    {"CANCELED", "FILTERED", "THROTTLED", "UNDELIVERABLE", "UNMAPPED", "UNROUTABLE"}
)
_MAX_TEXT = 4096


def status_rank(status: str | None) -> int:
    """The precedence of ``status``; unknown or missing statuses rank lowest."""
    if status is None:
        return UNKNOWN_STATUS_RANK
    return STATUS_RANK.get(status, UNKNOWN_STATUS_RANK)


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One received webhook, as stored (one row of the ``events`` table).

    Timestamps are epoch milliseconds as Courier gave them; ``signed_at`` is the signature's
    ``t`` and ``received_at`` this receiver's clock. ``body`` is the raw body when kept: always
    for non-message events and for message events whose fields could not be stored as typed.
    """

    type: str
    message_id: str | None
    status: str | None
    event: str | None
    notification: str | None
    recipient: str | None
    recipient_id: str | None
    enqueued: int | None
    sent: int | None
    delivered: int | None
    opened: int | None
    clicked: int | None
    reason: str | None
    error: str | None
    signed_at: int | None
    received_at: int
    body: bytes | None

    def as_row(self) -> tuple[Any, ...]:
        """The values in the ``events`` table's insert order."""
        return (
            self.type,
            self.message_id,
            self.status,
            self.event,
            self.notification,
            self.recipient,
            self.recipient_id,
            self.enqueued,
            self.sent,
            self.delivered,
            self.opened,
            self.clicked,
            self.reason,
            self.error,
            self.signed_at,
            self.received_at,
            self.body,
        )


class _Lossy:
    """Set when a field had to be dropped or reshaped, so the raw body is kept."""

    __slots__ = ("hit",)

    def __init__(self) -> None:
        self.hit = False


def _text(value: Any, lossy: _Lossy) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        if len(value) > _MAX_TEXT:
            lossy.hit = True
            return value[:_MAX_TEXT]
        return value
    lossy.hit = True
    return orjson.dumps(value).decode()[:_MAX_TEXT]


def _millis(value: Any, lossy: _Lossy) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        lossy.hit = True
        return None
    if isinstance(value, int):
        if -(2**62) < value < 2**62:
            return value
        lossy.hit = True
        return None
    if isinstance(value, float) and math.isfinite(value) and abs(value) < 2**62:
        return int(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        lossy.hit = True
        return int(value)
    lossy.hit = True
    return None


def _envelope(body: bytes) -> tuple[str, dict[str, Any]]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PayloadError("invalid_json", "the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise PayloadError("invalid_shape", "the body is not a JSON object")
    kind = doc.get("type")
    data = doc.get("data")
    if not isinstance(kind, str) or not kind or len(kind) > 200:
        raise PayloadError("invalid_shape", "the event has no 'type' string")
    if not isinstance(data, dict):
        raise PayloadError("invalid_shape", "the event has no 'data' object")
    return kind, data


def parse_event(
    body: bytes,
    *,
    received_at: int,
    signed_at: int | None = None,
    keep_body: bool = False,
) -> WebhookEvent:
    """Parse a raw webhook body into a :class:`WebhookEvent`.

    Raises :class:`PayloadError` for a body that is not a JSON object with a ``type`` string
    and a ``data`` object, or a ``message:updated`` event without string ``data.id`` and
    ``data.status``. Odd field types are not rejected (a 4xx is never retried, so the event
    would be lost): they are stored as best they can be and the raw body is kept.
    """
    kind, data = _envelope(body)
    lossy = _Lossy()
    if kind != MESSAGE_UPDATED:
        return WebhookEvent(
            kind, None, None, None, None, None, None, None, None, None, None, None, None,
            None, signed_at, received_at, body,
        )  # fmt: skip
    message_id = data.get("id")
    status = data.get("status")
    if not isinstance(message_id, str) or not message_id or len(message_id) > 512:
        raise PayloadError("invalid_shape", "a message:updated event has no 'data.id' string")
    if not isinstance(status, str) or not status or len(status) > 64:
        raise PayloadError("invalid_shape", "a message:updated event has no 'data.status' string")
    event = WebhookEvent(
        type=kind,
        message_id=message_id,
        status=status.upper(),
        event=_text(data.get("event"), lossy),
        notification=_text(data.get("notification"), lossy),
        recipient=_text(data.get("recipient"), lossy),
        recipient_id=_text(data.get("recipientId"), lossy),
        enqueued=_millis(data.get("enqueued"), lossy),
        sent=_millis(data.get("sent"), lossy),
        delivered=_millis(data.get("delivered"), lossy),
        opened=_millis(data.get("opened"), lossy),
        clicked=_millis(data.get("clicked"), lossy),
        reason=_text(data.get("reason"), lossy),
        error=_text(data.get("error"), lossy),
        signed_at=signed_at,
        received_at=received_at,
        body=body if keep_body or lossy.hit else None,
    )
    return event
