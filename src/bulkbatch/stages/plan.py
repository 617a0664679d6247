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
``preferences``, or ``data.<name>`` / ``profile.<name>`` / ``to.<name>``. Other columns are not
sent. An explicitly named column (``profile.email``) wins over a short one (``email``).

The user object
---------------
``{"recipient", "profile": {"email", "phone_number", …}, "to": {"user_id", "locale",
"tenant_id", "list_id", …}, "data": {…}, "preferences": {…}}``, built by DuckDB. Text is trimmed
and empty text counts as missing; NULL members and empty objects are left out (``recipient`` is
always there). Non-text ids (an integer ``user_id``) become strings. The e-mail is sent trimmed
and lower-cased (the form it is compared in). The phone number is sent trimmed, as given.

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
  (input = to send + duplicates + rejected) holds.
* ``no_address`` - "no address: user_id, email, phone_number and list_id are all empty"
* ``bad_email``  - the e-mail does not match ``^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$``
* ``bad_phone``  - the phone number has fewer than 7 or more than 15 digits
* ``bad_json``   - the ``data`` or ``preferences`` column is not a JSON object (names the column)
* ``too_large``  - the user's JSON is longer than ``max_user_bytes``

Validation comes first, deduplication second, among valid rows only (an invalid first row
never shadows a valid later one). Duplicates share a recipient; ``first`` keeps the lowest
``row_number``, ``last`` the highest, ``fail`` raises :class:`~bulkbatch.errors.PlanError`.

Batches and jobs
----------------
``plan`` is stored in ``batch_no, row_number`` order. With one job, users are cut in
``row_number`` order into batches of ``batch_size``; ``batch_no`` counts from 0. With
``max_job_size``, users are ordered by ``md5(recipient)`` (stable across versions) and cut
into jobs of at most ``max_job_size``; within each job, batches follow ``row_number``; only the
last batch of a job may be short.

Pre-flight warnings (never reject): an e-mail job with users that have ``to.email`` but no
``profile.email`` (Courier does not route them), an e-mail job with users without any
``profile.email``, and inline content ``{{var}}`` names missing from users' merged data.

``build_plan`` sets ``preserve_insertion_order`` and caps ``memory_limit`` (see
:func:`bulkbatch.load.configure_connection`) on the connection it is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb
import orjson

from bulkbatch.config import MAX_BATCH_SIZE
from bulkbatch.errors import AccountingError, InputError, PlanError, UsageError
from bulkbatch.stages.load import configure_connection, fetch_one, quote_ident

__all__ = [
    "CHANNELS",
    "REASONS",
    "PlanInfo",
    "PlanOptions",
    "build_plan",
    "content_variables",
    "job_message",
    "parse_data_option",
    "parse_map_option",
    "resolve_mapping",
]

CHANNELS = ("email", "sms", "push", "inbox")

REASONS: dict[str, str] = {
    "filtered": "excluded by --where (or --sql)",
    "no_address": "no address: user_id, email, phone_number and list_id are all empty",
    "bad_email": "does not look like an e-mail address",
    "bad_phone": "phone number has fewer than 7 or more than 15 digits",
    "bad_json": "the data/preferences column is not a JSON object",
    "too_large": "the user's JSON is over the size limit (max_user_bytes)",
    "bad_row": "a CSV line that could not be parsed (too many or too few fields, a stray quote)",
}
"""The stable reason codes and what they mean (the per-row ``reason`` adds the value)."""

EMAIL_REGEX = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"

_SHORT_TARGETS: dict[str, str] = {
    "user_id": "to.user_id",
    "email": "profile.email",
    "phone_number": "profile.phone_number",
    "phone": "profile.phone_number",
    "locale": "to.locale",
    "tenant_id": "to.tenant_id",
    "list_id": "to.list_id",
    "data": "data",
    "preferences": "preferences",
}
_ADDRESS_TARGETS = ("to.user_id", "profile.email", "profile.phone_number", "to.list_id")
_PREFIXES = ("data.", "profile.", "to.")
_SAMPLE_USERS = 3
_DUP_GROUPS = 5


@dataclass(frozen=True)
class PlanOptions:
    """What to send and how to cut it; see the module docstring for the rules."""

    event: str | None = None
    template: str | None = None
    content: Mapping[str, Any] | None = None
    brand: str | None = None
    locale: str | None = None
    channel: str | None = "email"
    data: Mapping[str, Any] = field(default_factory=dict)
    mapping: Mapping[str, str] = field(default_factory=dict)
    where: str | None = None
    sql: str | None = None
    dedupe: Literal["first", "last", "fail"] = "first"
    batch_size: int = 1000
    max_job_size: int | None = None
    max_user_bytes: int = 100_000


# --------------------------------------------------------------------------- option parsing


def parse_data_option(text: str) -> dict[str, Any]:
    """The ``--data`` value: JSON object text, or ``@path/to/file.json``.

    :raises UsageError: the file is missing, or the text is not a JSON object
    """
    where = "--data"
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise UsageError(f"--data file not found: {path}. Check the path after '@'.") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(
                f"--data file {path} cannot be read: {exc}. Pass a UTF-8 JSON file."
            ) from None
        where = f"--data file {path}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. "
            """Pass a JSON object, e.g. --data '{"promo": "SPRING"}', or --data @file.json."""
        ) from None
    if not isinstance(value, dict):
        raise UsageError(
            f"{where} must be a JSON object, not {type(value).__name__}. "
            """Wrap the values in an object, e.g. --data '{"promo": "SPRING"}'."""
        )
    return value


def _normalise_target(target: str) -> str | None:
    t = target.strip()
    low = t.lower()
    if low in _SHORT_TARGETS:
        return _SHORT_TARGETS[low]
    for prefix in _PREFIXES:
        if low.startswith(prefix) and len(t) > len(prefix):
            rest = t[len(prefix) :]
            if all(part for part in rest.split(".")):
                return prefix + rest
    return None


def parse_map_option(values: Iterable[str]) -> dict[str, str]:
    """``--map TARGET=COLUMN`` items as ``{target: column}`` (short targets normalised,
    e.g. ``user_id`` -> ``to.user_id``).

    :raises UsageError: an item is not ``TARGET=COLUMN``, names an unknown target, or a target
        is given twice
    """
    out: dict[str, str] = {}
    for item in values:
        target, sep, column = item.partition("=")
        if not sep or not target.strip() or not column.strip():
            raise UsageError(
                f"Bad --map {item!r}: use TARGET=COLUMN, e.g. --map to.user_id=customer_id."
            )
        norm = _normalise_target(target)
        if norm is None:
            raise UsageError(
                f"Unknown --map target {target.strip()!r}: use user_id, email, phone_number, "
                "locale, tenant_id, list_id, data, preferences, or data.NAME, profile.NAME "
                "or to.NAME."
            )
        if norm in out:
            raise UsageError(
                f"--map {norm} is given twice ({out[norm]} and {column.strip()}); keep one."
            )
        out[norm] = column.strip()
    return out


def _validate_options(options: PlanOptions) -> None:
    if not 1 <= options.batch_size <= MAX_BATCH_SIZE:
        raise UsageError(
            f"--batch-size {options.batch_size} is out of range; "
            f"use a value from 1 to {MAX_BATCH_SIZE} (Courier fails larger ingest calls)."
        )
    if options.dedupe not in ("first", "last", "fail"):
        raise UsageError(f"Unknown --dedupe {options.dedupe!r}: use first, last or fail.")
    if options.max_job_size is not None and options.max_job_size < 1:
        raise UsageError(f"--max-job-size {options.max_job_size} must be at least 1.")
    if options.max_user_bytes < 1:
        raise UsageError(f"--max-user-bytes {options.max_user_bytes} must be at least 1.")
    if options.channel is not None and options.channel not in CHANNELS:
        raise UsageError(
            f"Unknown channel {options.channel!r}: use email, sms, push or inbox "
            "(or none to let the notification route)."
        )


def job_message(options: PlanOptions) -> dict[str, Any]:
    """The ``message`` object of ``POST /bulk`` for these options.

    :raises UsageError: none of event, template or content is given
    """
    if not (options.event or options.template or options.content):
        raise UsageError(
            "No message to send: pass --event EVENT (a Courier event or notification id), "
            "--template ID, or --content."
        )
    _validate_options(options)
    msg: dict[str, Any] = {}
    if options.event:
        msg["event"] = options.event
    if options.brand:
        msg["brand"] = options.brand
    if options.data:
        msg["data"] = dict(options.data)
    if options.locale:
        msg["locale"] = options.locale
    if options.template:
        msg["template"] = options.template
    if options.content:
        msg["content"] = dict(options.content)
    if options.channel:
        msg["message"] = {"routing": {"method": "single", "channels": [options.channel]}}
    return msg


_VAR = re.compile(r"\{\{\s*([A-Za-z_][\w\-]*(?:\.[A-Za-z_][\w\-]*)*)\s*\}\}")


def content_variables(content: Any) -> list[str]:
    """The ``{{var}}`` names used anywhere in inline content, in first-use order."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            for name in _VAR.findall(value):
                if name not in found and name != "else":
                    found.append(name)
        elif isinstance(value, Mapping):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(content)
    return found


# -------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class PlanInfo:
    """The plan report: counts, the first duplicate groups, rejects by reason, warnings, a
    sample of users as sent, and the batch/job layout."""

    rows_read: int
    to_send: int
    duplicates: int
    rejected: int
    rejected_by_reason: dict[str, int]
    duplicate_groups: list[dict[str, Any]]
    warnings: list[str]
    sample_users: list[dict[str, Any]]
    batches: int
    jobs: int
    batch_size: int
    key_columns: tuple[str, ...]
    fingerprint: str
    seconds: float

    def estimated_seconds(self, rate: float | None) -> float | None:
        """Seconds the send needs at ``rate`` requests/s: batches plus create+run per job."""
        if rate is None or rate <= 0:
            return None
        return (self.batches + self.jobs * 2) / rate

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["key_columns"] = list(self.key_columns)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlanInfo:
        values = dict(d)
        values["key_columns"] = tuple(values.get("key_columns", ()))
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in names})

    def render(self, rate: float | None = None) -> str:
        """The report as plain text lines (the CLI may style it)."""
        lines = [
            f"rows read     {self.rows_read:>12,}",
            f"to send       {self.to_send:>12,}",
            f"duplicates    {self.duplicates:>12,}",
            f"rejected      {self.rejected:>12,}",
        ]
        for code, n in sorted(self.rejected_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {code:<12}{n:>12,}")
        if self.duplicate_groups:
            lines.append("duplicate groups (first few):")
            for g in self.duplicate_groups:
                rows = ", ".join(str(r) for r in g["rows"])
                lines.append(f"  {g['recipient']}: rows {rows}; kept row {g['kept']}")
        lines.append(
            f"batches       {self.batches:>12,}  (up to {self.batch_size} users each, "
            f"{self.jobs} job{'s' if self.jobs != 1 else ''})"
        )
        est = self.estimated_seconds(rate)
        if est is not None:
            lines.append(f"estimated     {est:>11,.1f}s  at {rate:g} requests/s")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        if self.sample_users:
            lines.append("sample users:")
            lines.extend(f"  {orjson.dumps(u).decode()}" for u in self.sample_users)
        return "\n".join(lines)


# ------------------------------------------------------------------------------- mapping


def resolve_mapping(
    columns: Sequence[str], mapping: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``{target: input column}`` from the conventions and ``mapping`` (which wins).

    :raises UsageError: ``mapping`` names a column the input does not have
    """
    resolved: dict[str, str] = {}
    phone_alias: str | None = None
    for col in columns:
        low = col.lower()
        if low == "phone":
            phone_alias = phone_alias or col
        elif low in _SHORT_TARGETS:
            resolved.setdefault(_SHORT_TARGETS[low], col)
    if phone_alias is not None:
        resolved.setdefault("profile.phone_number", phone_alias)
    for col in columns:  # explicitly named targets win over the short names
        low = col.lower()
        for prefix in _PREFIXES:
            if low.startswith(prefix) and len(col) > len(prefix):
                rest = col[len(prefix) :]
                if all(rest.split(".")):
                    resolved[prefix + rest] = col
    for target, column in (mapping or {}).items():
        norm = _normalise_target(target)
        if norm is None:
            raise UsageError(
                f"Unknown --map target {target!r}: use user_id, email, phone_number, locale, "
                "tenant_id, list_id, data, preferences, or data.NAME, profile.NAME or to.NAME."
            )
        if column in columns:
            resolved[norm] = column
            continue
        matches = [c for c in columns if c.lower() == column.lower()]
        if len(matches) != 1:
            raise UsageError(
                f"Unknown column in --map {target}={column}: the input has "
                f"{', '.join(columns)}. Use one of these names."
            )
        resolved[norm] = matches[0]
    return resolved


# ---------------------------------------------------------------------------- SQL building


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _json_key(key: str) -> str:
    """A SQL string literal holding ``"key":`` (JSON-escaped)."""
    return _lit(orjson.dumps(key).decode() + ":")


class _Cols:
    """Expressions over the audience's columns, by DuckDB type."""

    def __init__(self, types: Mapping[str, str]) -> None:
        self.types = dict(types)

    def text(self, col: str) -> str:
        c = quote_ident(col)
        t = self.types[col]
        if t == "VARCHAR":
            return f"nullif(trim({c}), '')"
        if t == "JSON":
            return (
                f"nullif(trim(CASE json_type({c}) WHEN 'VARCHAR' THEN {c} ->> '$' "
                f"WHEN 'NULL' THEN NULL ELSE {c}::VARCHAR END), '')"
            )
        return f"nullif(trim({c}::VARCHAR), '')"

    def value(self, col: str) -> str:
        """The column as JSON text (NULL stays NULL)."""
        c = quote_ident(col)
        t = self.types[col]
        if t == "JSON":
            return f"CASE WHEN json_type({c}) = 'NULL' THEN NULL ELSE {c}::VARCHAR END"
        return f"to_json({c})::VARCHAR"

    def nested(self, col: str) -> bool:
        t = self.types[col]
        return t == "JSON" or t.startswith(("STRUCT", "MAP")) or t.endswith("]")

    def valid_obj(self, col: str) -> str:
        """:meth:`obj`'s object text for a row already known not to be ``bad_json``."""
        c = quote_ident(col)
        if self.types[col] == "VARCHAR":
            return f"CASE WHEN {c} IS NOT NULL AND trim({c}) <> '' THEN {c} END"
        return self.obj(col)[0]

    def obj(self, col: str) -> tuple[str, str]:
        """(JSON object text or NULL, bad-JSON boolean) for a data/preferences column."""
        c = quote_ident(col)
        t = self.types[col]
        if t.startswith(("STRUCT", "MAP")):
            return f"to_json({c})::VARCHAR", "false"
        if t == "JSON":
            kind = f"json_type({c})"
            return (
                f"CASE WHEN {kind} = 'OBJECT' THEN {c}::VARCHAR END",
                f"coalesce({kind} NOT IN ('OBJECT', 'NULL'), false)",
            )
        if t == "VARCHAR":
            ok = f"CASE WHEN json_valid({c}) THEN json_type({c}) = 'OBJECT' ELSE false END"
            empty = f"({c} IS NULL OR trim({c}) = '')"
            return (
                f"CASE WHEN NOT {empty} AND {ok} THEN {c} END",
                f"(NOT {empty} AND NOT {ok})",
            )
        return "NULL", f"({c} IS NOT NULL)"


def _object_sql(members: Sequence[tuple[str, str]]) -> str:
    """A JSON object text from (dotted key, JSON-text expression) pairs; NULL members are left
    out, nested keys become nested objects, and an empty object is NULL."""
    tree: dict[str, Any] = {}
    for key, expr in members:
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = expr

    def build(node: Mapping[str, Any]) -> str:
        items = []
        for k, v in node.items():
            inner = build(v) if isinstance(v, dict) else v
            items.append(f"{_json_key(k)} || ({inner})")
        if not items:
            return "NULL"
        return f"nullif('{{' || concat_ws(',', {', '.join(items)}) || '}}', '{{}}')"

    return build(tree)


def _phone_digits(expr: str) -> str:
    return f"length(regexp_replace({expr}, '[^0-9]', '', 'g'))"


def _length_bound(cols: _Cols, col: str) -> str:
    """SQL for an upper bound of the bytes ``col`` can contribute to the user JSON (before the
    escaping factor applied in :func:`_queries`)."""
    c = quote_ident(col)
    t = cols.types[col]
    if t == "VARCHAR":
        return f"coalesce(strlen({c}), 0)"
    if t == "JSON":
        return f"coalesce(strlen({c}::VARCHAR), 0)"
    return f"(coalesce(strlen(to_json({c})::VARCHAR), 0) + coalesce(strlen({c}::VARCHAR), 0))"


# Every output byte comes from an input byte at most this many times over: a value can appear
# twice (the recipient and its own member), JSON escaping turns one byte into at most six
# (\u00XX), lower() grows UTF-8 by at most half, re-serialised JSON numbers by under 5x.
_BOUND_FACTOR = 16
_BOUND_SLACK = 4096


@dataclass(frozen=True)
class _Queries:
    """SQL pieces over one audience row. ``columns`` is the first projection (``a``), over the
    audience; ``recipient`` is over ``a``; ``reason``/``reason_text``/``user``/``flags`` are
    over ``a`` plus ``recipient`` (``reason_text`` also needs ``_code``)."""

    address: list[str]
    keep: str
    validity: list[str]
    extras: list[str]
    payload: list[str]
    recipient: str
    reason: str
    reason_text: str
    user: str
    to_email_only: str
    to_email_extra: str | None
    bound: str


def _queries(
    options: PlanOptions,
    cols: _Cols,
    targets: Mapping[str, str],
    where_label: str,
) -> _Queries:
    """The expressions for one row: address columns, validation and reason, and the user JSON
    (only meaningful for valid rows)."""
    t = targets
    uid = cols.text(t["to.user_id"]) if "to.user_id" in t else "NULL::VARCHAR"
    email = f"lower({cols.text(t['profile.email'])})" if "profile.email" in t else "NULL::VARCHAR"
    phone = cols.text(t["profile.phone_number"]) if "profile.phone_number" in t else "NULL"
    list_id = cols.text(t["to.list_id"]) if "to.list_id" in t else "NULL::VARCHAR"
    where = f"coalesce(({options.where})::BOOLEAN, false)" if options.where else "true"

    address = [
        "row_number",
        f"{uid} AS _uid",
        f"{email} AS _email",
        f"{phone}::VARCHAR AS _phone",
        f"{list_id} AS _list",
    ]
    extras: list[str] = []  # per-target JSON text columns, referenced later as _x<n>
    to_email_extra: str | None = None
    profile_members: list[tuple[str, str]] = [
        ("email", "to_json(_email)::VARCHAR"),
        ("phone_number", "to_json(_phone)::VARCHAR"),
    ]
    to_members: list[tuple[str, str]] = [("user_id", "to_json(_uid)::VARCHAR")]
    data_members: list[tuple[str, str]] = []
    data_nested = False
    for target, col in sorted(t.items()):
        if target in _ADDRESS_TARGETS or target in ("data", "preferences"):
            continue
        name = f"_x{len(extras)}"
        if target in ("to.locale", "to.tenant_id", "to.email"):
            expr = f"to_json({cols.text(col)})::VARCHAR"
        else:
            expr = cols.value(col)
        extras.append(f"{expr} AS {name}")
        if target == "to.email":
            to_email_extra = f"{expr} AS {name}"
        prefix, _, key = target.partition(".")
        if prefix == "profile":
            profile_members.append((key, name))
        elif prefix == "to":
            to_members.append((key, name))
        else:
            data_members.append((key, name))
            data_nested = data_nested or cols.nested(col)
    if "to.list_id" in t:
        to_members.append(("list_id", "to_json(_list)::VARCHAR"))
    validity: list[str] = []
    payload: list[str] = []
    if "data" in t:
        _, d_bad = cols.obj(t["data"])
        validity.append(f"{d_bad} AS _dbad")
        payload.append(f"{cols.valid_obj(t['data'])} AS _dcol")
    else:
        validity.append("false AS _dbad")
        payload.append("NULL::VARCHAR AS _dcol")
    if "preferences" in t:
        _, p_bad = cols.obj(t["preferences"])
        validity.append(f"{p_bad} AS _pbad")
        payload.append(f"{cols.valid_obj(t['preferences'])} AS _pcol")
    else:
        validity.append("false AS _pbad")
        payload.append("NULL::VARCHAR AS _pcol")

    # the per-user data and the merge with the global data
    global_data = orjson.dumps(dict(options.data)).decode() if options.data else None
    cols_obj = _object_sql(data_members) if data_members else None
    if cols_obj is not None and data_nested:
        cols_obj = f"json_merge_patch('{{}}', {cols_obj})::VARCHAR"
    parts: list[str] = []
    if global_data is not None:
        parts.append(f"{_lit(global_data)}")
    if "data" in t:
        parts.append("json_merge_patch('{}', coalesce(_dcol, '{}'))")
    if cols_obj is not None:
        parts.append(f"coalesce({cols_obj}, '{{}}')")
    if not parts:
        data_expr = "NULL"
    elif len(parts) == 1 and cols_obj is not None:
        data_expr = cols_obj
    else:
        data_expr = f"nullif(json_merge_patch('{{}}', {', '.join(parts)})::VARCHAR, '{{}}')"
    pref_expr = (
        "nullif(json_merge_patch('{}', _pcol)::VARCHAR, '{}')" if "preferences" in t else "NULL"
    )

    user = (
        "'{\"recipient\":' || to_json(recipient)::VARCHAR || concat("
        + ", ".join(
            f"',' || {_json_key(k)} || ({v})"
            for k, v in (
                ("profile", _object_sql(profile_members)),
                ("to", _object_sql(to_members)),
                ("data", data_expr),
                ("preferences", pref_expr),
            )
        )
        + ") || '}'"
    )
    data_col = quote_ident(t["data"]) if "data" in t else "data"
    pref_col = quote_ident(t["preferences"]) if "preferences" in t else "preferences"
    reason = f"""
        CASE
          WHEN NOT _keep THEN 'filtered'
          WHEN recipient IS NULL THEN 'no_address'
          WHEN _email IS NOT NULL AND NOT regexp_full_match(_email, {_lit(EMAIL_REGEX)})
            THEN 'bad_email'
          WHEN _phone IS NOT NULL AND NOT {_phone_digits("_phone")} BETWEEN 7 AND 15
            THEN 'bad_phone'
          WHEN _dbad OR _pbad THEN 'bad_json'
        END"""
    reason_text = f"""
        CASE _code
          WHEN 'filtered' THEN {_lit("excluded by " + where_label)}
          WHEN 'no_address' THEN {_lit(REASONS["no_address"])}
          WHEN 'bad_email' THEN 'e-mail ' || to_json(_email)::VARCHAR
                                 || ' does not look like an e-mail address'
          WHEN 'bad_phone' THEN 'phone number ' || to_json(_phone)::VARCHAR || ' has '
                                 || {_phone_digits("_phone")} || ' digits; expected 7 to 15'
          WHEN 'bad_json' THEN CASE WHEN _dbad
              THEN {_lit("column " + data_col + " is not a JSON object")}
              ELSE {_lit("column " + pref_col + " is not a JSON object")} END
        END"""
    recipient = """
            CASE WHEN _uid IS NOT NULL THEN _uid
                 WHEN _email IS NOT NULL THEN 'email:' || _email
                 WHEN _phone IS NOT NULL THEN 'phone:'
                      || CASE WHEN starts_with(_phone, '+') THEN '+' ELSE '' END
                      || regexp_replace(_phone, '[^0-9]', '', 'g')
                 WHEN _list IS NOT NULL THEN 'list:' || _list
            END"""
    to_email_only = (
        f"_x{_index_of(t, 'to.email')} IS NOT NULL AND _email IS NULL"
        if "to.email" in t
        else "false"
    )
    used = sorted(set(t.values()))
    constant = len(global_data or "") + sum(len(_json_key(k)) for k in t) + 64 * (len(t) + 8)
    bound = (
        f"({_BOUND_FACTOR} * ({' + '.join(_length_bound(cols, c) for c in used) or '0'} "
        f"+ {constant}) + {_BOUND_SLACK})"
    )
    return _Queries(
        address=address,
        keep=f"{where} AS _keep",
        validity=validity,
        extras=extras,
        payload=payload,
        recipient=recipient,
        reason=reason,
        reason_text=reason_text,
        user=user,
        to_email_only=to_email_only,
        to_email_extra=to_email_extra,
        bound=bound,
    )


def _mark_bad_rows(con: duckdb.DuckDBPyConnection) -> None:
    """Lines the CSV reader could not parse (table ``load_rejects``, written by load) are
    input rows with nothing in them; reject them as ``bad_row`` with the line and why."""
    exists = fetch_one(
        con,
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'load_rejects' AND NOT temporary",
    )
    if exists and exists[0]:
        con.execute(
            "UPDATE _bb_keys SET reason_code = 'bad_row', reason = lr.reason, recipient = NULL "
            "FROM load_rejects lr WHERE _bb_keys.row_number = lr.row_number"
        )


def _keys_sql(q: _Queries, options: PlanOptions, audience: str) -> str:
    """One narrow row per audience row, in the audience's order: row_number, recipient,
    reason_code, reason, the warning flags, and whether the row's user JSON must be measured
    (``_check``: valid, and its size bound is over ``max_user_bytes``). No user JSON is built."""
    first = [*q.address, q.keep, *q.validity, f"{q.bound} AS _bound"]
    if q.to_email_extra is not None:
        first.append(q.to_email_extra)
    return f"""
    WITH a AS (
        SELECT {", ".join(first)} FROM {audience}
    ), b AS (
        SELECT *, {q.recipient} AS recipient FROM a
    ), c AS (
        SELECT *, {q.reason} AS _code FROM b
    )
    SELECT row_number, recipient, _code AS reason_code, {q.reason_text} AS reason,
           _email IS NULL AS _no_profile_email, {q.to_email_only} AS _to_email_only,
           _code IS NULL AND _bound > {int(options.max_user_bytes)} AS _check
    FROM c
    """


def _users_sql(q: _Queries, source: str, where: str, carry: Sequence[str]) -> str:
    """``row_number, recipient, user_json`` (plus the ``carry`` columns of ``source``) for the
    rows of ``source`` (the audience, possibly joined) that pass ``where``; keeps their order."""
    first = [*q.address, *q.extras, *q.payload, *carry]
    kept = ", ".join(carry)
    return f"""
    WITH a AS (
        SELECT {", ".join(first)} FROM {source} WHERE {where}
    ), b AS (
        SELECT *, {q.recipient} AS recipient FROM a
    )
    SELECT row_number, recipient, {q.user} AS user_json{", " + kept if kept else ""} FROM b
    """


def _index_of(targets: Mapping[str, str], target: str) -> int:
    """The ``_x<n>`` index of an extra target (same order as in ``_staged_sql``)."""
    extra = [
        k for k in sorted(targets) if k not in _ADDRESS_TARGETS and k not in ("data", "preferences")
    ]
    return extra.index(target)


# ---------------------------------------------------------------------------- build_plan


def _fingerprint(options: PlanOptions, message: Mapping[str, Any]) -> str:
    shape = {
        "message": message,
        "mapping": dict(sorted(options.mapping.items())),
        "where": options.where,
        "sql": options.sql,
        "dedupe": options.dedupe,
        "batch_size": options.batch_size,
        "max_job_size": options.max_job_size,
        "max_user_bytes": options.max_user_bytes,
    }
    return hashlib.sha256(orjson.dumps(shape, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return re.sub(r"^[A-Za-z ]*Error: ", "", line).strip().rstrip(".")


def _sources(con: duckdb.DuckDBPyConnection) -> str:
    rows = con.execute("SELECT DISTINCT source FROM inputs ORDER BY 1 LIMIT 4").fetchall()
    names = [str(r[0]) for r in rows]
    if not names:
        return "the input"
    if len(names) > 3:
        return ", ".join(names[:3]) + " and more"
    return ", ".join(names)


def _audience(
    con: duckdb.DuckDBPyConnection, options: PlanOptions, input_types: Mapping[str, str]
) -> tuple[str, dict[str, str], str]:
    """(FROM clause, column types of the audience, label for filtered rows)."""
    if not options.sql:
        return "inputs", dict(input_types), "--where"
    body = f"({options.sql.strip().rstrip(';')})"
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {body} AS q").fetchall()
    except duckdb.Error as exc:
        raise UsageError(
            f"Bad --sql: {_first_line(exc)}. Fix the query; it runs over table inputs "
            f"(columns: {', '.join(input_types)})."
        ) from None
    types = {str(r[0]): str(r[1]) for r in described}
    if "row_number" not in types:
        raise UsageError(
            "--sql must return the row_number column of inputs (e.g. SELECT * FROM inputs "
            "WHERE ...) so that every input row can be accounted for."
        )
    try:
        bad = con.execute(
            f"SELECT row_number, count(*) FROM {body} AS q GROUP BY 1 "
            "HAVING count(*) > 1 OR row_number NOT IN (SELECT row_number FROM inputs) LIMIT 1"
        ).fetchall()
    except duckdb.Error as exc:
        raise UsageError(f"Bad --sql: {_first_line(exc)}. Fix the query.") from None
    if bad:
        raise UsageError(
            f"--sql returned row_number {bad[0][0]} {bad[0][1]} time(s) or one not in inputs; "
            "each input row may appear at most once. Select from inputs without fanning out "
            "rows (no joins that repeat them)."
        )
    return f"{body} AS q", types, "--sql"


def build_plan(
    con: duckdb.DuckDBPyConnection, options: PlanOptions, run_dir: Path | None = None
) -> PlanInfo:
    """Plan the send from table ``inputs``; see the module docstring for every rule.

    Creates ``plan``, ``rejects`` and ``duplicates``; writes ``plan.parquet`` and
    ``rejects.parquet`` into ``run_dir`` when given.

    How (for speed and flat memory): validation, deduplication and the batch/job numbering
    run on a narrow key table (``row_number``, ``recipient``, reason); the user JSON is built
    once, only for the users to send, in the pass that writes ``plan``.

    :raises UsageError: bad options, an unknown ``--map`` column, bad ``--where``/``--sql``
    :raises InputError: the input has no address column at all
    :raises PlanError: ``--dedupe fail`` met duplicates, or DuckDB failed
    """
    started = time.perf_counter()
    message = job_message(options)
    _validate_options(options)
    configure_connection(con)
    try:
        described = con.execute("DESCRIBE inputs").fetchall()
    except duckdb.Error:
        raise PlanError(
            "There is no inputs table in the run database: run the load stage first."
        ) from None
    input_types = {str(r[0]): str(r[1]) for r in described}
    audience, types, label = _audience(con, options, input_types)
    audience_columns = [c for c in types if c not in ("row_number", "source")]
    targets = resolve_mapping(audience_columns, options.mapping)
    if not any(t in targets for t in _ADDRESS_TARGETS):
        raise InputError(
            f"No address column in {_sources(con)}: found {', '.join(audience_columns)}. "
            "Name a column user_id, email, phone_number or list_id, or map one with "
            "--map to.user_id=COLUMN or --map profile.email=COLUMN."
        )
    if options.where:
        try:
            con.execute(f"DESCRIBE SELECT ({options.where})::BOOLEAN FROM {audience}").fetchall()
        except duckdb.Error as exc:
            raise UsageError(
                f"Bad --where {options.where!r}: {_first_line(exc)}. Write a SQL boolean over "
                f"the input columns ({', '.join(audience_columns)}); quote names with dots, "
                'e.g. "data.plan".'
            ) from None
    q = _queries(options, _Cols(types), targets, label)
    kept = "first_row" if options.dedupe in ("first", "fail") else "last_row"
    try:
        con.execute("DROP TABLE IF EXISTS plan")
        con.execute("DROP TABLE IF EXISTS rejects")
        con.execute("DROP TABLE IF EXISTS duplicates")
        con.execute(f"CREATE OR REPLACE TEMP TABLE _bb_keys AS {_keys_sql(q, options, audience)}")
        _mark_too_large(con, q, options, audience)
        _mark_bad_rows(con)
        filtered_sql = ""
        if options.sql:
            filtered_sql = (
                "UNION ALL SELECT row_number, 'filtered', 'excluded by --sql' FROM inputs "
                f"WHERE row_number NOT IN (SELECT row_number FROM {audience})"
            )
        con.execute(
            "CREATE TABLE rejects AS SELECT row_number::BIGINT AS row_number, "
            "reason_code::VARCHAR AS reason_code, reason::VARCHAR AS reason FROM ("
            "SELECT row_number, reason_code, reason FROM _bb_keys "
            f"WHERE reason_code IS NOT NULL {filtered_sql}) ORDER BY row_number"
        )
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _bb_groups AS SELECT recipient, "
            "min(row_number) AS first_row, max(row_number) AS last_row, count(*) AS n "
            "FROM _bb_keys WHERE reason_code IS NULL GROUP BY recipient HAVING count(*) > 1"
        )
        groups = fetch_one(con, "SELECT count(*), coalesce(sum(n - 1), 0) FROM _bb_groups")
        if options.dedupe == "fail" and groups[0]:
            first = con.execute(
                "SELECT g.recipient, list(s.row_number ORDER BY s.row_number) FROM "
                "(SELECT * FROM _bb_groups ORDER BY first_row LIMIT 1) g JOIN _bb_keys s "
                "ON s.recipient = g.recipient AND s.reason_code IS NULL GROUP BY g.recipient"
            ).fetchall()[0]
            rows = ", ".join(str(r) for r in first[1])
            raise PlanError(
                f"--dedupe fail: {groups[1]} duplicate row(s) in {groups[0]} recipient "
                f"group(s), e.g. {first[0]!r} on rows {rows}. Remove them from the input, "
                "or pass --dedupe first or --dedupe last to keep one row per recipient."
            )
        con.execute(
            "CREATE TABLE duplicates AS SELECT s.row_number::BIGINT AS row_number, "
            "s.recipient::VARCHAR AS recipient, "
            f"g.{kept}::BIGINT AS kept_row_number FROM _bb_keys s JOIN _bb_groups g "
            f"ON s.recipient = g.recipient WHERE s.reason_code IS NULL "
            f"AND s.row_number <> g.{kept} ORDER BY s.row_number"
        )
        con.execute(f"CREATE OR REPLACE TEMP TABLE _bb_order AS {_order_sql(options)}")
        _write_plan(con, q, audience)
        info = _report(con, options, targets, message, started)
    except duckdb.OutOfMemoryException:
        raise  # not a bad query: the pipeline reports the memory budget
    except duckdb.Error as exc:
        if options.where or options.sql:
            raise UsageError(
                f"The plan query failed: {_first_line(exc)}. "
                "Check --where / --sql (the error may come from a value they meet)."
            ) from None
        raise PlanError(f"The plan query failed: {_first_line(exc)}.") from None
    finally:
        with contextlib.suppress(duckdb.Error):
            for table in ("_bb_keys", "_bb_groups", "_bb_order"):
                con.execute(f"DROP TABLE IF EXISTS {table}")
    if run_dir is not None:
        _write_parquet(con, Path(run_dir))
    return info


def _mark_too_large(
    con: duckdb.DuckDBPyConnection, q: _Queries, options: PlanOptions, audience: str
) -> None:
    """Reject as ``too_large`` the valid rows whose user JSON is over ``max_user_bytes``.

    Only rows whose size bound (``_check``) is over the limit can be; their JSON is built and
    measured here. The update keeps ``_bb_keys`` in its physical order."""
    if not fetch_one(con, "SELECT count(*) FROM _bb_keys WHERE _check")[0]:
        return
    limit = int(options.max_user_bytes)
    users = _users_sql(
        q, audience, "row_number IN (SELECT row_number FROM _bb_keys WHERE _check)", ()
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _bb_large AS SELECT row_number, strlen(user_json) AS n "
        f"FROM ({users}) WHERE strlen(user_json) > {limit}"
    )
    con.execute(
        "UPDATE _bb_keys SET reason_code = 'too_large', reason = 'user JSON is ' || l.n || "
        f"' bytes, over the {limit}-byte limit (--max-user-bytes)' "
        "FROM _bb_large l WHERE _bb_keys.row_number = l.row_number"
    )
    con.execute("DROP TABLE IF EXISTS _bb_large")


def _order_sql(options: PlanOptions) -> str:
    """``row_number, job_no, batch_no`` of every user to send (narrow; any order)."""
    bs = int(options.batch_size)
    source = (
        "SELECT row_number, recipient FROM _bb_keys WHERE reason_code IS NULL "
        "AND row_number NOT IN (SELECT row_number FROM duplicates)"
    )
    if options.max_job_size is None:
        return f"""
        SELECT row_number, 0 AS job_no,
               (row_number() OVER (ORDER BY row_number) - 1) // {bs} AS batch_no
        FROM ({source})
        """
    mjs = int(options.max_job_size)
    return f"""
    WITH p AS ({source}),
    j AS (
        SELECT row_number, (row_number() OVER (ORDER BY md5(recipient), row_number) - 1)
               // {mjs} AS job_no
        FROM p
    ),
    k AS (
        SELECT *, row_number() OVER (PARTITION BY job_no ORDER BY row_number) - 1 AS pos FROM j
    ),
    c AS (SELECT job_no, (count(*) + {bs} - 1) // {bs} AS nb FROM j GROUP BY job_no),
    o AS (
        SELECT job_no, coalesce(sum(nb) OVER (ORDER BY job_no ROWS BETWEEN UNBOUNDED
               PRECEDING AND 1 PRECEDING), 0) AS first_batch
        FROM c
    )
    SELECT row_number, job_no, first_batch + pos // {bs} AS batch_no FROM k JOIN o USING (job_no)
    """


_PLAN_COLUMNS = (
    "row_number::BIGINT AS row_number, recipient::VARCHAR AS recipient, "
    "__bb_job::INTEGER AS job_no, __bb_batch::INTEGER AS batch_no, "
    "user_json::VARCHAR AS user_json"
)


def _write_plan(con: duckdb.DuckDBPyConnection, q: _Queries, audience: str) -> None:
    """Create ``plan`` in ``batch_no, row_number`` order, building each user's JSON once,
    only for the users to send (a hash join with the narrow ``_bb_order``, then one sort on
    the two integer keys)."""
    source = (
        f"(SELECT * FROM {audience} JOIN (SELECT row_number AS __bb_row, job_no AS __bb_job, "
        "batch_no AS __bb_batch FROM _bb_order) o ON o.__bb_row = row_number)"
    )
    users = _users_sql(q, source, "true", ("__bb_job", "__bb_batch"))
    # zstd for the stored user JSON: faster to write than DuckDB's automatic choice (which
    # analyses every column; the sorted insert compresses on one thread) and half the size.
    previous = str(fetch_one(con, "SELECT current_setting('force_compression')")[0])
    try:
        con.execute("SET force_compression = 'zstd'")
    except duckdb.Error:  # pragma: no cover - a DuckDB without zstd storage
        previous = ""
    # One thread for this sort: it orders every user's JSON (gigabytes at 10M) under the
    # run's memory cap, and each sorting thread pins its own blocks; with 64 jobs at 10M,
    # two threads ran out of the 320MB budget.
    threads = int(fetch_one(con, "SELECT current_setting('threads')")[0])
    con.execute("SET threads = 1")
    try:
        con.execute(
            f"CREATE TABLE plan AS SELECT {_PLAN_COLUMNS} FROM ({users}) "
            "ORDER BY batch_no, row_number"
        )
    finally:
        con.execute(f"SET threads = {threads}")
        if previous:
            con.execute(f"SET force_compression = {_lit(previous)}")


def _report(
    con: duckdb.DuckDBPyConnection,
    options: PlanOptions,
    targets: Mapping[str, str],
    message: Mapping[str, Any],
    started: float,
) -> PlanInfo:
    rows_read = int(fetch_one(con, "SELECT count(*) FROM inputs")[0])
    to_send, batches, jobs = fetch_one(
        con,
        "SELECT count(*), coalesce(max(batch_no) + 1, 0), coalesce(max(job_no) + 1, 0) FROM plan",
    )
    dups = int(fetch_one(con, "SELECT count(*) FROM duplicates")[0])
    by_reason = {
        str(code): int(n)
        for code, n in con.execute(
            "SELECT reason_code, count(*) FROM rejects GROUP BY 1 ORDER BY 2 DESC, 1"
        ).fetchall()
    }
    rejected = sum(by_reason.values())
    if rows_read != int(to_send) + dups + rejected:
        raise AccountingError(
            f"The plan does not add up: {rows_read} rows read, but {to_send} to send + {dups} "
            f"duplicates + {rejected} rejected. This is a bug in bulkbatch; please report it."
        )
    group_rows = con.execute(
        "SELECT g.recipient, list(s.row_number ORDER BY s.row_number), any_value(d.kept) FROM "
        f"(SELECT * FROM _bb_groups ORDER BY first_row LIMIT {_DUP_GROUPS}) g "
        "JOIN _bb_keys s ON s.recipient = g.recipient AND s.reason_code IS NULL "
        "JOIN (SELECT recipient, any_value(kept_row_number) AS kept FROM duplicates "
        "GROUP BY 1) d ON d.recipient = g.recipient "
        "GROUP BY g.recipient ORDER BY min(s.row_number)"
    ).fetchall()
    duplicate_groups = [
        {"recipient": str(r), "rows": [int(x) for x in rows], "kept": int(k)}
        for r, rows, k in group_rows
    ]
    sample = [
        orjson.loads(str(r[0]))
        for r in con.execute(
            f"SELECT user_json FROM plan ORDER BY batch_no, row_number LIMIT {_SAMPLE_USERS}"
        ).fetchall()
    ]
    warnings = _warnings(con, options, targets)
    key_columns = tuple(dict.fromkeys(targets[t] for t in _ADDRESS_TARGETS if t in targets))
    return PlanInfo(
        rows_read=rows_read,
        to_send=int(to_send),
        duplicates=dups,
        rejected=rejected,
        rejected_by_reason=by_reason,
        duplicate_groups=duplicate_groups,
        warnings=warnings,
        sample_users=sample,
        batches=int(batches),
        jobs=int(jobs),
        batch_size=options.batch_size,
        key_columns=key_columns,
        fingerprint=_fingerprint(options, message),
        seconds=time.perf_counter() - started,
    )


def _var_path(name: str) -> str:
    return "$.data" + "".join("." + orjson.dumps(p).decode() for p in name.split("."))


def _warnings(
    con: duckdb.DuckDBPyConnection, options: PlanOptions, targets: Mapping[str, str]
) -> list[str]:
    warnings: list[str] = []
    sent = (
        "FROM _bb_keys s WHERE s.reason_code IS NULL "
        "AND s.row_number NOT IN (SELECT row_number FROM duplicates)"
    )
    if options.channel == "email":
        to_only, no_email = fetch_one(
            con,
            "SELECT count(*) FILTER (WHERE _to_email_only), "
            f"count(*) FILTER (WHERE _no_profile_email) {sent}",
        )
        if to_only:
            warnings.append(
                f"{to_only} user(s) have to.email but no profile.email: Courier does not route "
                "e-mail jobs by to.email, so they will get nothing. Map the address to "
                f"profile.email (--map profile.email={targets.get('to.email', 'COLUMN')})."
            )
        if no_email and no_email != to_only:
            warnings.append(
                f"{no_email} user(s) to send have no profile.email, so this e-mail job cannot "
                "reach them (Courier reports them UNROUTABLE). Add an e-mail column, or use "
                "--where to leave them out."
            )
    variables = content_variables(options.content) if options.content else []
    if variables:
        checks = ", ".join(
            f"count(*) FILTER (WHERE NOT json_exists(user_json, {_lit(_var_path(v))}))"
            for v in variables
        )
        missing_any = " OR ".join(
            f"NOT json_exists(user_json, {_lit(_var_path(v))})" for v in variables
        )
        row = fetch_one(con, f"SELECT count(*) FILTER (WHERE {missing_any}), {checks} FROM plan")
        if row[0]:
            detail = ", ".join(
                f"{{{{{v}}}}} ({n})" for v, n in zip(variables, row[1:], strict=True) if n
            )
            warnings.append(
                f"{row[0]} user(s) lack data for the content's variables: {detail}. Add the "
                "values to the input (data.NAME columns) or to --data, or they render empty."
            )
    return warnings


def _write_parquet(con: duckdb.DuckDBPyConnection, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    plan_path = _lit(str(run_dir / "plan.parquet"))
    rejects_path = _lit(str(run_dir / "rejects.parquet"))
    try:
        con.execute(
            "COPY (SELECT row_number, job_no, batch_no, recipient, user_json FROM plan) "
            f"TO {plan_path} (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1)"
        )
        input_cols = [
            str(r[0]) for r in con.execute("DESCRIBE inputs").fetchall() if r[0] != "row_number"
        ]
        picked = ", ".join(
            f"i.{quote_ident(c)} AS {quote_ident(c if c not in ('reason', 'reason_code') else 'input_' + c)}"
            for c in input_cols
        )
        con.execute(
            f"COPY (SELECT r.row_number, r.reason_code, r.reason, {picked} FROM rejects r "
            "JOIN inputs i USING (row_number) ORDER BY r.row_number) "
            f"TO {rejects_path} (FORMAT parquet, COMPRESSION zstd)"
        )
    except duckdb.OutOfMemoryException:
        raise  # not an unwritable directory: the pipeline reports the memory budget
    except duckdb.Error as exc:
        raise PlanError(
            f"Cannot write the plan files to {run_dir}: {_first_line(exc)}. "
            "Check that the run directory is writable and the disk has space."
        ) from None
