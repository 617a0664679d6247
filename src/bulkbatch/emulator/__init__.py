"""A local Courier-compatible Bulk + Messages API emulator.

Run it as a process (``bulkbatch emulator`` / ``python -m bulkbatch.emulator``) or in-process::

    with bulkbatch.emulator.Emulator() as emu:
        client = Courier(api_key="x", base_url=emu.url)

It imports nothing from the rest of bulkbatch, so client and server bugs cannot cancel out.
The wire contract is ``shared/reference/courier-bulk-api.md``.

Coverage
========

=========================================== ===== =============================================
endpoint                                     done  notes
=========================================== ===== =============================================
``POST /bulk``                               [X]   201 ``{jobId}``; ``message.event`` or nested
                                                   ``message.message{template|content}``
``POST /bulk/{job_id}``                      [X]   200 ``{total, errors}``; cumulative total;
                                                   "Duplicate user" per repeated recipient
``POST /bulk/{job_id}/run``                  [X]   202; 400 ``BulkJobDuplicateInvocationError``
``GET /bulk/{job_id}``                       [X]   ``{job: {definition, enqueued, failures,
                                                   received, status}}``
``GET /bulk/{job_id}/users``                 [X]   100 a page, opaque ``cursor``, insertion order
``GET /messages/{id}``                       [X]   MessageDetails + ``providers``
``GET /messages``                            [X]   newest first, 100 a page; filters ``status``
                                                   (comma-joined or repeated), ``recipient``,
                                                   ``event``, ``notification``, ``messageId``,
                                                   ``enqueued_after``, ``cursor``; others ignored
``GET /messages/{id}/output``                [X]   renders ``{{var}}`` of inline content
``GET /messages/{id}/history``               [ ]
``POST /messages/{id}/cancel``, ``/resend``  [ ]
scopes / API versions (``BulkJobScope...``)  [ ]   one workspace, one scope
=========================================== ===== =============================================

Errors use ``{"message", "type"}`` everywhere: 400 ``invalid_request_error`` (validation,
``BulkJobAlreadySubmittedError`` on ingest after run, ``BulkJobDuplicateInvocationError``),
401 ``authentication_error``, 404 ``{"message":"Not Found","type":"invalid_request_error"}``
(unknown job/message/path), 409 ``idempotency_error``, 429 ``rate_limit_error``, 500/502
``api_error``.

Rules
=====

* **Recipient**: the duplicate key within a job. A user without one gets a generated id (never
  a duplicate). A user that is not a JSON object → ``"Error occurred during ingestion"``.
* **ERROR users**: a user whose ``profile``, ``data`` or ``to`` is present, not null and not a
  JSON object is accepted (counted in ``total``) but ends with bulk status ``ERROR`` and no
  ``messageId``. ``job.failures`` stays 0, as in Courier's backend.
* **Channels**: ``message.message.routing.channels``, else ``message.routing.channels``, else
  ``["email"]``. The first routable one is used: ``email`` needs ``profile.email`` (``to.email``
  does not count), ``sms`` needs ``profile.phone_number``, ``push``/``inbox`` need a recipient
  (always there). None routable → message ``UNROUTABLE`` (reason ``NO_CHANNELS``).
* **Delivery**: an email whose domain is, or ends in, ``.invalid`` → ``UNDELIVERABLE`` (reason
  ``BOUNCED``) at the step where it would be delivered. Everything else, ``example.com``
  included → ``DELIVERED``. Paths: ENQUEUED → SENT → DELIVERED | UNDELIVERABLE, and
  ENQUEUED → UNROUTABLE. Timestamps (``enqueued``, ``sent``, ``delivered``) are epoch ms.
* **Message ids**: ``1-<8 hex epoch seconds of fan-out>-<16 hex of the job id><8 hex row>``,
  assigned in one SQL ``UPDATE`` at completion.
* **Data merge** (``/output``): ``{...message.data, ...message.message.data, ...user.data,
  ...user.to.data}``, shallow; ``{{a.b}}`` looks up nested keys, missing → empty string.
  Content is ``message.content`` or ``message.message.content`` (``{title, body}`` or
  elemental ``{elements}``); template/event-only jobs render empty strings.

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
(default 1000, always on), ``seed`` (see :mod:`bulkbatch.emulator.faults`). For every API
request: latency → rate limit (429 + ``Retry-After``) → drop-before → error (500) → auth
(401) → Idempotency-Key replay/mismatch → JSON/size (502)/validation (400) → the operation →
drop-after (response committed, connection closed). ``/_emulator/*`` never sees faults.

Idempotency
===========

``Idempotency-Key`` on any API POST, scoped by the Bearer key. The first result of an
operation that started executing (including its 4xx, e.g. 404 or ``BulkJob...Error``) is
replayed for 24 h with ``Idempotent-Replayed: true``; ``x-idempotency-expiration`` (epoch ms,
epoch s, ISO-8601, or "N days") sets the expiry, clamped to 24 h … 1 year. 401, faults,
validation 400s and 502s are not saved. The same key with a different method, path or body →
**409** ``{"message": "Idempotency-Key ... was used with a different request ...",
"type": "idempotency_error"}`` with ``x-should-retry: false`` (so the SDK does not retry it).

Stats (``GET /_emulator/stats``)
================================

``jobs_created``, ``runs``, ``requests`` (API requests that reached the app, drops included),
``requests_by_status`` (status code string → count; drops excluded), ``ingest_attempts``
(every ``POST /bulk/{id}``, faulted ones included), ``users_accepted``, ``duplicate_users``,
``dropped_connections``, ``max_accepted_per_recipient`` (the most times one ``recipient``
string was accepted, across all jobs since the last reset; 0 when none), ``idempotent_replays``.
Counters persist with ``--db``. ``POST /_emulator/reset`` clears everything.
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
