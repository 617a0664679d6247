"""Errors of the webhook receiver, as subclasses of the :mod:`bulkbatch.errors` tree.

* ``WebhookConfigError(UsageError)`` - the receiver was asked to run without a secret, or
  with a bad option [exit 2]
* ``WebhookStoreError(StateError)`` - the event store cannot be opened, is of a newer
  schema, or a write failed [exit 1]
* ``SignatureError(BulkBatchError, Terminal)`` - a ``courier-signature`` header is missing,
  malformed, wrong, or its timestamp is outside the tolerance (``reason`` says which)
* ``PayloadError(BulkBatchError, Terminal)`` - a body is not JSON or not a Courier event

No message ever contains a secret or a header value.
"""

from __future__ import annotations

from bulkbatch.errors import BulkBatchError, StateError, Terminal, UsageError

__all__ = ["PayloadError", "SignatureError", "WebhookConfigError", "WebhookStoreError"]


class WebhookConfigError(UsageError):
    """The receiver cannot start as configured (for example: no secret given)."""


class WebhookStoreError(StateError):
    """The webhook event store cannot be opened or written."""


class SignatureError(BulkBatchError, Terminal):
    """A request's ``courier-signature`` does not prove it came from Courier.

    ``reason`` is one of ``missing``, ``malformed``, ``mismatch``, ``expired``, ``future``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PayloadError(BulkBatchError, Terminal):
    """A request body is not JSON, or not shaped like a Courier webhook event."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
