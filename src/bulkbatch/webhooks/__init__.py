"""Receive Courier's outbound webhooks at scale (issue #17, receiver side).

* :mod:`~bulkbatch.webhooks.signature` - ``courier-signature`` parsing and verification
* :mod:`~bulkbatch.webhooks.events` - body parsing and the status precedence
* :mod:`~bulkbatch.webhooks.store` - the SQLite (WAL) event store, :func:`delivery_outcomes`
  and Parquet export
* :mod:`~bulkbatch.webhooks.writer` - group commit (2xx only after the commit)
* :mod:`~bulkbatch.webhooks.receiver` - the Starlette app
* :mod:`~bulkbatch.webhooks.server` - uvicorn in a thread or blocking
* :mod:`~bulkbatch.webhooks.cli` - ``bulkbatch webhooks serve|export``

Importing this package is light: starlette and uvicorn load only with the receiver.
"""

from __future__ import annotations

from bulkbatch.webhooks.errors import (
    PayloadError,
    SignatureError,
    WebhookConfigError,
    WebhookStoreError,
)
from bulkbatch.webhooks.events import STATUS_RANK, WebhookEvent, parse_event, status_rank
from bulkbatch.webhooks.signature import (
    SIGNATURE_HEADER,
    SignatureVerifier,
    parse_signature_header,
    sign,
    verify_signature,
)
from bulkbatch.webhooks.store import (
    OUTCOMES_SCHEMA,
    WebhookStore,
    delivery_outcomes,
    events_reader,
    export_events,
    export_outcomes,
)

__all__ = [
    "OUTCOMES_SCHEMA",
    "SIGNATURE_HEADER",
    "STATUS_RANK",
    "PayloadError",
    "SignatureError",
    "SignatureVerifier",
    "WebhookConfigError",
    "WebhookEvent",
    "WebhookStore",
    "WebhookStoreError",
    "delivery_outcomes",
    "events_reader",
    "export_events",
    "export_outcomes",
    "parse_event",
    "parse_signature_header",
    "sign",
    "status_rank",
    "verify_signature",
]
