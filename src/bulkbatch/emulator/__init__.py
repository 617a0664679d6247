"""A local Courier-compatible Bulk + Messages API emulator.

Run it as a process (``bulkbatch emulator`` / ``python -m bulkbatch.emulator``) or in-process::

    with bulkbatch.emulator.Emulator() as emu:
        client = Courier(api_key="x", base_url=emu.url)

It imports nothing from the rest of bulkbatch, so client and server bugs cannot cancel out.
The wire contract is ``shared/reference/courier-bulk-api.md``.

Coverage (sources and decisions: ``docs/emulator.md``)
========================================================

The contract is the vendored ``courier-openapi.yaml`` (package data, a verbatim copy of
``shared/reference/courier-openapi.yaml``). ``--flavor current`` (default) answers as it
does; ``--flavor tutorial`` answers as Courier's bulk tutorial / backend snapshot.

=========================================== ===== =============================================
endpoint                                     done  notes
=========================================== ===== =============================================
``POST /bulk``                               [X]   current: 200 ``{jobId}``, ``message.event``
                                                   required, no fields beyond the spec's;
                                                   tutorial: 201, nested ``message.message``
``POST /bulk/{job_id}``                      [X]   current: 204, no body, users validated;
                                                   tutorial: 200 ``{total, errors}`` (cumulative
                                                   total, "Duplicate user" per repeat)
``POST /bulk/{job_id}/run``                  [X]   current 204 / tutorial 202; 400
                                                   ``BulkJobDuplicateInvocationError``
``GET /bulk/{job_id}``                       [X]   ``{job: {definition, enqueued, failures,
                                                   received, status}}``
``GET /bulk/{job_id}/users``                 [X]   100 a page, opaque ``cursor``, insertion order
``GET /messages/{id}``                       [X]   MessageDetails + ``providers``
``GET /messages``                            [X]   newest first, 10 a page, no ``providers``;
                                                   every documented filter (see docs)
``GET /messages/{id}/output``                [X]   renders ``{{var}}`` of inline content
``GET /messages/{id}/history``               [X]   ENQUEUED, SENT, DELIVERED / UNDELIVERABLE /
                                                   UNROUTABLE items, ``ts`` in ms; ``type=``
``POST /messages/{id}/cancel``               [X]   200 + ``canceledAt`` before SENT, else 409
``POST /messages/{id}/resend``               [ ]   not in the vendored spec
outbound webhook ``message:updated``         [X]   ``--webhook-url``: one signed POST per status
                                                   change (ENQUEUED, SENT, DELIVERED,
                                                   UNDELIVERABLE, UNROUTABLE, CANCELED); retries
                                                   on Courier's schedule (time-scaled); outbox
                                                   in the database
OPENED / CLICKED (engagement)                [ ]   no message reaches them, so no such events
other webhook types (``notification:*``,     [ ]   only ``message:updated``
``audiences:*``)
scopes / API versions (``BulkJobScope...``)  [ ]   one workspace, one scope
=========================================== ===== =============================================

Errors use ``{"message", "type"}`` everywhere: 400 ``invalid_request_error`` (spec
validation naming the field, e.g. ``message.locale must be an object (or null), not a
string.``; ``BulkJobAlreadySubmittedError``; ``BulkJobDuplicateInvocationError``), 401
``authentication_error``, 404 ``{"message":"Not Found","type":"invalid_request_error"}``
(unknown job/message/path), 413 (body over 10 MiB), 429 ``rate_limit_error``, 500/502
``api_error``.

Rules
=====

* **Recipient**: the duplicate key within a job. A user without one gets a generated id (never
  a duplicate). Tutorial flavor only: a user that is not a JSON object → ``"Error occurred
  during ingestion"``; one whose ``profile``, ``data`` or ``to`` is not an object ends
  ``ERROR`` (the current flavor refuses both with a 400).
* **Channels**: ``--route EVENT=CHANNEL[,CHANNEL]`` (by the job's template, else its event;
  default ``email``), as Courier routes by notification; the tutorial flavor also honours a
  nested ``message.message.routing.channels``. The first routable one is used: ``email``
  needs ``profile.email`` (``to.email`` does not count), ``sms`` needs
  ``profile.phone_number``, the others need a recipient (always there). None routable →
  message ``UNROUTABLE`` (reason ``NO_CHANNELS``).
* **Delivery**: an email whose domain is, or ends in, ``.invalid`` → ``UNDELIVERABLE`` (reason
  ``BOUNCED``). Everything else → ``DELIVERED``. The paths are one state machine
  (:mod:`bulkbatch.emulator.states`); timestamps are epoch ms.
* **Message ids**: ``1-<8 hex epoch seconds of fan-out>-<16 hex of the job id><8 hex row>``,
  assigned in one SQL ``UPDATE`` at completion.
* **Data merge** (``/output``): ``{...message.data, ...message.message.data, ...user.data,
  ...user.to.data}``, shallow; ``{{a.b}}`` looks up nested keys, missing → empty string.

Progression (``--progression``, default ``polls:2``)
===================================================

* ``immediate``: run completes at once: job COMPLETED, users ENQUEUED/ERROR, messages at their
  final status.
* ``polls:N``: after run the job is PROCESSING and users PENDING; the N-th ``GET /bulk/{id}``
  after run completes it (that response says COMPLETED) and fans out (messageId + ENQUEUED).
  Each message then advances one step per N reads: the N-th ``GET /messages/{id}`` returns
  SENT, the 2N-th DELIVERED. A ``GET /messages`` page counts as one read of each message on it
  and shows the statuses from before that read.
* ``seconds:T``: the job completes T seconds after run (messages enqueued at run + T); each
  message advances one step every T seconds after that. ``seconds:0`` is ``immediate``.

Faults (``--faults``) and the order of checks
=============================================

Keys: ``rate_limit``, ``error_rate``, ``drop_rate``, ``latency_ms``, ``max_users_per_call``
(default 1000, always on), ``seed``, and for the webhooks ``webhook_dup_rate``,
``webhook_reorder_rate``, ``webhook_drop_rate`` (see :mod:`bulkbatch.emulator.faults`). For
every API request: auth (401, before the body is read or a rate-limit token is spent) →
``Content-Length`` (413) → latency → rate limit (429 + ``Retry-After``) → drop-before →
error (500) → Idempotency-Key replay → query/JSON/size (502)/spec validation (400) → the
operation → drop-after (response committed, connection closed). ``/_emulator/*`` never sees
faults, but needs the key when ``--api-key`` is set.

Idempotency
===========

``Idempotency-Key`` on any API POST, scoped by a salted hash of the Bearer token (the token
is never stored). The first result of an operation that started executing (including its
4xx) is replayed for 24 h with ``Idempotent-Replayed: true`` *whatever the new request is*,
as Courier documents; a different method, path or body counts ``idempotency_mismatches``.
``x-idempotency-expiration`` (epoch ms, epoch s, ISO-8601, or "N days") sets the expiry,
clamped to 24 h … 1 year. 401, faults, validation 400s and 502s are not saved.

Stats (``GET /_emulator/stats``)
================================

``jobs_created``, ``runs``, ``requests`` (API requests that reached the app, drops included),
``requests_by_status`` (status code string → count; drops excluded), ``ingest_attempts``
(every ``POST /bulk/{id}``, faulted ones included), ``users_accepted``, ``duplicate_users``,
``dropped_connections``, ``max_accepted_per_recipient`` (the most times one ``recipient``
string was accepted, across all jobs since the last reset; 0 when none),
``idempotent_replays``, ``idempotency_mismatches``, ``most_ingests_in_flight`` (the most
``POST /bulk/{id}`` open at once, from arrival to answer, in this process since its start or
the last reset: what a client's ``--concurrency`` actually reached); with ``--check-contract`` (or
``BULKBATCH_EMULATOR_CHECK_CONTRACT=1``) also ``contract_checked``, ``contract_skipped``
(sampled out), ``contract_violations``, ``contract_violation_details`` and
``contract_flavor_deviations`` (the tutorial's 201/200/202; :mod:`.contract`). Counters
persist with ``--db``. ``POST /_emulator/reset`` clears everything.

With ``--webhook-url`` also: ``webhooks_events`` (status changes), ``webhooks_duplicated`` /
``webhooks_reordered`` (deliveries added / held back by the faults), ``webhooks_sent`` (POST
attempts), ``webhooks_delivered`` (2xx answers), ``webhooks_retried`` (failed attempts
rescheduled), ``webhooks_dropped`` (given up: ``webhook_drop_rate``, a non-retryable 4xx, or
104 failed attempts) and ``webhooks_pending`` (outbox rows). Always ``webhooks_events +
webhooks_duplicated == webhooks_delivered + webhooks_dropped + webhooks_pending``; wait for
``webhooks_pending == 0``. ``POST /_emulator/webhooks/flush`` makes every waiting delivery due now.

Webhooks (``--webhook-url``, :mod:`bulkbatch.emulator.webhooks`)
===============================================================

One ``{"type": "message:updated", "data": ...}`` POST per message status change; ``data`` is
``GET /messages/{id}`` as it stood at that status plus ``recipientId`` (and ``canceledAt`` for
CANCELED). Signed with ``--webhook-secret`` (``courier-signature: t=<ms>,signature=<hex
HMAC-SHA256 of "<t>.<body>">``), unsigned without one. Sent by a background thread from an
``outbox`` table written in the same transaction as the status change (a restart with
``--db`` still delivers). 2xx = delivered; network errors, timeouts (``--webhook-timeout``,
10 s), 3xx, 408, 429 and 5xx are retried after 5, 10, 20, 40, 60, 120, 240, 480, 720, 900 s
then every 900 s (× ``--webhook-time-scale``, default 0.001), 104 attempts at most; other 4xx
are given up at once. The secret is never logged, shown or stored.
"""

from bulkbatch.emulator.app import create_app
from bulkbatch.emulator.cli import emulator_command
from bulkbatch.emulator.faults import EmulatorConfigError, FaultSpec
from bulkbatch.emulator.server import Emulator, serve

__all__ = [
    "Emulator",
    "EmulatorConfigError",
    "FaultSpec",
    "create_app",
    "emulator_command",
    "serve",
]
