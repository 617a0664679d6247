"""The plan stage: turn table ``inputs`` into the users to send, in SQL.

``build_plan`` reads ``inputs`` and (re)creates ``plan``, ``rejects`` and ``duplicates`` as
described in ``docs/internals.md``. Everything runs inside DuckDB; no row passes through Python.

Column conventions
------------------
Input column names are matched case-insensitively; ``--map TARGET=COLUMN`` overrides any of them.

==========================================  ==============================================
input column                                becomes
==========================================  ==============================================
``user_id``                                 ``to.user_id`` and the recipient
``email``                                   ``profile.email``
``phone_number`` (or ``phone``)             ``profile.phone_number``
``locale``, ``tenant_id``, ``list_id``      ``to.locale``, ``to.tenant_id``, ``to.list_id``
``data`` (JSON text or struct)              per-user ``data``
``data.<name>`` columns                     ``data.<name>`` (``data.a.b`` nests: ``{"a": {"b": …}}``)
``profile.<name>`` / ``to.<name>`` columns  extra ``profile`` / ``to`` fields
``preferences`` (JSON text or struct)       ``preferences``
==========================================  ==============================================

A ``--map`` target is one of the short names above (``user_id``, ``email``, ...), ``data``,
``preferences``, or ``data.<name>`` / ``profile.<name>`` / ``to.<name>``. An explicitly named
column (``profile.email``) wins over a short one (``email``). A ``--map`` column may be a dotted
path into a struct column or a JSON column (JSON text too): ``--map email=traits.email --map
data.city=traits.address.city``; the longest column name that prefixes the path is the column.
Other columns are not sent; ``PlanInfo.unused_columns`` lists them (minus those ``--where``
reads) and a note says how to map one.

The user object
---------------
``{"recipient", "profile": {"email", "phone_number", …}, "to": {"user_id", "locale",
"tenant_id", "list_id", …}, "data": {…}, "preferences": {…}}``, built by DuckDB. Text is trimmed
and empty text counts as missing; so do a float's NaN and infinities, which JSON cannot carry
(inside structs, lists and map values too, where they become null).
NULL members and empty objects are left out (``recipient`` is always there). Non-text ids (an
integer ``user_id``) become strings; a whole float (pandas stores integers with a gap as
float64) is written as the integer, ``12345`` not ``12345.0``. The e-mail is sent trimmed and
lower-cased (the form it is compared in). The phone number is sent in E.164 when that is
unambiguous: a leading ``+`` or ``00``, then only digits and separators (space, ``()``, ``-``,
``.``, ``/``), 8 to 15 digits after the prefix and no ``(0)``: ``+1 (555) 010-0000`` ->
``+15550100000``. Any other number is sent trimmed, as given, and counted in a plan note.
``PlanOptions.locale`` is each user's ``to.locale`` when the row has none (never a job field).

The recipient (``docs/internals.md``): the trimmed ``user_id``; else ``email:`` + the lower-cased
e-mail; else ``phone:`` + the phone's digits (with a leading ``+`` kept); else ``list:`` + list id.

The merge rule
--------------
Each user's ``data`` is the job's global data (``--data``) merged with the user's own data, per
user winning, as a JSON merge patch (RFC 7386): nested objects merge key by key, anything else
(strings, numbers, arrays) is replaced whole. A per-user JSON ``null`` (or a missing column value)
does **not** delete a global key: nulls are stripped from the per-user side first. Within one
user, ``data.<name>`` columns win over the same key in the ``data`` column. The merged object is
sent in every user's ``data``, so precedence does not depend on Courier's own merge; the global
data is also sent as the job's ``message.data``.

Validation, filtering and reason codes
--------------------------------------
Every input row ends in exactly one of ``plan``, ``rejects`` or ``duplicates``. A row gets the
first reason that applies, in this order:

* ``bad_row``    - "line N has more fields than the header: …": a CSV line the reader could
  not parse; load keeps it as an (empty) input row so the accounting holds, and the reason
  quotes the line so it can be fixed.
* ``filtered``   - "excluded by --where" / "excluded by --sql": the row was removed by the
  ``--where`` filter or is not in the ``--sql`` result. Recorded as a reject so the accounting
  (input = to send + duplicates + rejected) holds. ``--where`` must be exactly one expression
  over the audience's columns: it is parsed (never run) as ``SELECT (<where>) AS x`` and
  refused unless that is one SELECT statement of one item without FROM or subquery, so it can
  neither end the plan's query nor start another (``--sql`` is the operator's own query).
* ``no_address`` - "no address: user_id, email, phone_number and list_id are all empty"
* ``bad_user_id`` - the user_id is a number in scientific notation (``1.23457E+11``, as Excel
  saves a long number from a General column, or ``1e+16``, a float past 2**53): its last
  digits are lost, and distinct people would collapse into one recipient
* ``bad_email``  - the e-mail does not match ``^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$``
* ``bad_phone``  - the phone number has fewer than 7 or more than 15 digits, or is in
  scientific notation (as ``bad_user_id``)
* ``bad_json``   - the ``data`` or ``preferences`` column is not a JSON object (names the column),
  or it (or a JSON ``data.<name>`` column, counting its keys) nests deeper than
  :data:`bulkbatch.spec.MAX_JSON_DEPTH` levels: "column "data" nests 10000 levels deep; the
  most Courier takes is 64". The depth is decided in SQL (one regular-expression pass over the
  brackets outside strings, only for text with more opening brackets than the limit). Also
  when JSON text in one of them (or in any JSON-typed column sent) holds what DuckDB's reader
  takes and a strict parser refuses, a ``NaN`` or ``Infinity`` literal or a trailing comma:
  "column "data" holds NaN, Infinity or a trailing comma, which JSON does not allow".
* ``too_large``  - the user's JSON is longer than ``max_user_bytes``

Validation comes first, deduplication second, among valid rows only (an invalid first row
never shadows a valid later one). Duplicates share a recipient; ``first`` keeps the lowest
``row_number``, ``last`` the highest, ``fail`` raises :class:`~bulkbatch.errors.PlanError`.

Batches and jobs
----------------
``plan`` is stored in ``batch_no, row_number`` order within each pass that wrote it (one up
to 2M users; beyond, one per range of input rows: read it ``ORDER BY batch_no, row_number``).
With one job, users are cut in
``row_number`` order into batches of ``batch_size``; ``batch_no`` counts from 0. With
``max_job_size``, users are ordered by ``md5(recipient)`` (stable across versions) and cut
into jobs of at most ``max_job_size``; within each job, batches follow ``row_number``; only the
last batch of a job may be short.

Pre-flight warnings (never reject), by the expected ``channel``: e-mail, users that have
``to.email`` but no ``profile.email`` (Courier does not route them) and users without any
``profile.email``; sms, users without a phone number ("240 of 990 users have no phone number;
Courier cannot text them ..."); push and inbox, users without a ``user_id``. Also inline content
``{{var}}`` names missing from users' merged data.

Files: with a run directory, ``plan.parquet``, ``rejects.parquet`` (reason plus the input
columns) and ``duplicates.parquet`` (``row_number, recipient, kept_row_number`` plus the input
columns; ``PlanInfo.duplicates_file``).

``build_plan`` sets ``preserve_insertion_order`` and caps ``memory_limit`` (see
:func:`bulkbatch.db.configure_connection`) on the connection it is given.
"""

from __future__ import annotations

from bulkbatch.stages.plan.build import build_plan
from bulkbatch.stages.plan.mapping import resolve_mapping
from bulkbatch.stages.plan.model import EMAIL_REGEX, REASONS, PlanOptions, content_variables
from bulkbatch.stages.plan.report import PlanInfo

__all__ = [
    "EMAIL_REGEX",
    "REASONS",
    "PlanInfo",
    "PlanOptions",
    "build_plan",
    "content_variables",
    "resolve_mapping",
]
