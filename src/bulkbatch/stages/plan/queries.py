"""The SQL of one plan: per-row address, validation and reason, the user JSON, and the narrow
key, user and order queries built from them (rules: :mod:`bulkbatch.stages.plan`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from bulkbatch.db import quote_ident, quote_literal
from bulkbatch.spec import MAX_JSON_DEPTH
from bulkbatch.stages.plan.columns import (
    E164,
    Cols,
    json_depth_sql,
    json_key,
    object_sql,
    phone_sql,
)
from bulkbatch.stages.plan.model import (
    ADDRESS_TARGETS,
    EMAIL_REGEX,
    REASONS,
    SCIENTIFIC_REGEX,
    PlanOptions,
)

__all__ = ["Queries", "build_queries", "keys_sql", "order_sql", "users_sql"]

# Every output byte comes from an input byte at most this many times over: a value can appear
# twice (the recipient and its own member), JSON escaping turns one byte into at most six
# (\u00XX), lower() grows UTF-8 by at most half, re-serialised JSON numbers by under 5x.
BOUND_FACTOR = 16
_BOUND_SLACK = 4096
_NESTED_TARGETS = ("data", "preferences")
_TEXT_TARGETS = ("to.locale", "to.tenant_id", "to.email")
_CHANNEL_ADDRESS = {"email": "_email", "sms": "_phone", "push": "_uid", "inbox": "_uid"}


@dataclass(frozen=True)
class Queries:
    """SQL pieces over one audience row. ``address``, ``keep``, ``validity``, ``extras`` and
    ``payload`` are the first projection (``a``), over the audience; ``recipient`` is over
    ``a``; ``reason``/``reason_text``/``user`` are over ``a`` plus ``recipient``
    (``reason_text`` also needs ``_code``); ``flags`` are over ``a``."""

    address: list[str]
    keep: str
    validity: list[str]
    extras: list[str]
    payload: list[str]
    recipient: str
    reason: str
    reason_text: str
    user: str
    user_parts: list[str]
    """Columns ``user`` reads, computed over ``a`` beside ``recipient`` (``expr AS _name``)."""
    flags: list[str]
    flag_inputs: list[str]
    bound: str


@dataclass
class _Members:
    """The user object's members, as (key, JSON-text expression) pairs, plus the extra
    per-target columns (``_x<n>``) they refer to."""

    extras: list[str] = field(default_factory=list)
    profile: list[tuple[str, str]] = field(default_factory=list)
    to: list[tuple[str, str]] = field(default_factory=list)
    data: list[tuple[str, str]] = field(default_factory=list)
    data_nested: bool = False
    data_verbatim: bool = True
    """Every ``data.<name>`` member is flat and of a :data:`_VERBATIM_TYPES` type."""
    to_email: str | None = None
    deep: list[tuple[str, str, str]] = field(default_factory=list)
    """(label, too-deep condition, depth expression) of nested ``data.<name>`` columns."""
    lenient: list[tuple[str, str]] = field(default_factory=list)
    """(column, condition) of member columns whose JSON text may not be strict JSON."""


def _text_or_null(cols: Cols, targets: Mapping[str, str], target: str) -> str:
    return cols.text(targets[target]) if target in targets else "NULL::VARCHAR"


def _address(cols: Cols, targets: Mapping[str, str]) -> list[str]:
    uid = _text_or_null(cols, targets, "to.user_id")
    email = _text_or_null(cols, targets, "profile.email")
    email = f"lower({email})" if "profile.email" in targets else email
    list_id = _text_or_null(cols, targets, "to.list_id")
    phone = "NULL::VARCHAR"
    if "profile.phone_number" in targets:
        phone = phone_sql(cols.text(targets["profile.phone_number"]))
    return [
        "row_number",
        f"{uid} AS _uid",
        f"{email} AS _email",
        f"{phone}::VARCHAR AS _phone",
        f"{list_id} AS _list",
    ]


def _member_value(cols: Cols, target: str, col: str, locale: str | None) -> str:
    if target == "to.locale" and locale:
        return f"to_json(coalesce({cols.text(col)}, {quote_literal(locale)}))::VARCHAR"
    if target in _TEXT_TARGETS:
        return f"to_json({cols.text(col)})::VARCHAR"
    return cols.value(col)


def _members(cols: Cols, targets: Mapping[str, str], locale: str | None) -> _Members:
    m = _Members(
        profile=[
            ("email", "to_json(_email)::VARCHAR"),
            ("phone_number", "to_json(_phone)::VARCHAR"),
        ],
        to=[("user_id", "to_json(_uid)::VARCHAR")],
    )
    for target, col in sorted(targets.items()):
        if target in ADDRESS_TARGETS or target in _NESTED_TARGETS:
            continue
        name = f"_x{len(m.extras)}"
        expr = _member_value(cols, target, col, locale)
        lenient = None if target in _TEXT_TARGETS else cols.lenient(col, as_object=False)
        if lenient is not None and (col, lenient) not in m.lenient:
            m.lenient.append((col, lenient))
        m.extras.append(f"{expr} AS {name}")
        if target == "to.email":
            m.to_email = f"{expr} AS {name}"
        prefix, _, key = target.partition(".")
        if prefix == "profile":
            m.profile.append((key, name))
        elif prefix == "to":
            m.to.append((key, name))
        else:
            m.data.append((key, name))
            m.data_verbatim = m.data_verbatim and _verbatim(cols, key, col)
            if cols.nested(col):
                m.data_nested = True
                _deep_member(m, cols, target, col)
    if locale and "to.locale" not in targets:
        m.to.append(("locale", quote_literal(orjson.dumps(locale).decode())))
    if "to.list_id" in targets:
        m.to.append(("list_id", "to_json(_list)::VARCHAR"))
    return m


def _deep_member(m: _Members, cols: Cols, target: str, col: str) -> None:
    """Record the depth check of a nested ``data.<name>`` column: its keys count too."""
    keys = target.count(".")
    limit = MAX_JSON_DEPTH - keys
    check = cols.too_deep(col, limit)
    text = cols.json_text(col, limit)
    if check != "false" and text is not None:
        m.deep.append((col, check, f"{keys} + {json_depth_sql(text)}"))


_LENIENT_SAID = " holds NaN, Infinity or a trailing comma, which JSON does not allow"


def _validity(cols: Cols, targets: Mapping[str, str], m: _Members) -> tuple[list[str], list[str]]:
    """(validity columns ``_dbad``, ``_pbad`` and ``_jbad``, the other JSON problem in words;
    payload columns ``_dcol``, ``_pcol``)."""
    validity: list[str] = []
    payload: list[str] = []
    deep = list(m.deep)
    lenient = list(m.lenient)
    for target, short in (("data", "d"), ("preferences", "p")):
        if target not in targets:
            validity.append(f"false AS _{short}bad")
            payload.append(f"NULL::VARCHAR AS _{short}col")
            continue
        col = targets[target]
        _, bad = cols.obj(col)
        validity.append(f"{bad} AS _{short}bad")
        payload.append(f"{cols.valid_obj(col)} AS _{short}col")
        check = cols.too_deep(col)
        text = cols.json_text(col)
        if check != "false" and text is not None:
            deep.insert(len(deep) if short == "p" else 0, (col, check, json_depth_sql(text)))
        strict = cols.lenient(col, as_object=True)
        if strict is not None:
            lenient.insert(len(lenient) if short == "p" else 0, (col, strict))
    said = f"' levels deep; the most Courier takes is {MAX_JSON_DEPTH}'"
    cases = [
        f"WHEN {check} THEN {quote_literal('column ' + quote_ident(col) + ' nests ')} "
        f"|| ({depth}) || {said}"
        for col, check, depth in deep
    ] + [
        f"WHEN {check} THEN {quote_literal('column ' + quote_ident(col) + _LENIENT_SAID)}"
        for col, check in lenient
    ]
    validity.append(f"CASE {' '.join(cases)} END AS _jbad" if cases else "NULL::VARCHAR AS _jbad")
    return validity, payload


def _null_free_data(as_is: str) -> str:
    """SQL: the per-user ``data`` object (``_dcol``) without its nulls, ``as_is`` when its
    text holds no "null" (so it has none to strip), ``{}`` when there is none."""
    return (
        f"CASE WHEN _dcol IS NULL THEN '{{}}' WHEN strpos(_dcol, 'null') = 0 THEN {as_is} "
        "ELSE json_merge_patch('{}', _dcol)::VARCHAR END"
    )


# The per-user ``data`` object as a merge patch, its nulls stripped (a null must not delete a
# global key). Stripping is itself a merge onto ``{}``: a parse, a copy and a write for every
# user. An object whose text has no "null" in it has no null to strip, so it is the patch as
# it is: the merge over it parses it anyway. At 10M users this merge was the plan's most
# expensive expression; the shortcut takes it from 1.42 to 0.97 s per 2M users.
_USER_DATA = _null_free_data("_dcol")

# The same object as the merge writes it (yyjson, minified): ``json()`` is one parse and one
# write, where a merge onto ``{}`` also copies the object. Merged with nothing else, an object
# without nulls comes out of the merge as this text, byte for byte.
_DATA_TEXT = _null_free_data("json(_dcol)::VARCHAR")

# Types whose ``to_json`` text is what yyjson writes again after reading it, as a merge does:
# such a member can be copied into ``data`` as it is. Not DECIMAL (a wide one is written
# 12.5000000000, the merge writes 12.5), JSON (its spacing is the input's), nor nested types
# (a merge drops the nulls inside them).
_VERBATIM_TYPES = frozenset(
    (
        *("VARCHAR", "BOOLEAN", "FLOAT", "DOUBLE", "DATE", "TIMESTAMP"),
        *("TINYINT", "SMALLINT", "INTEGER", "BIGINT"),
        *("UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"),
    )
)


def _verbatim(cols: Cols, key: str, col: str) -> bool:
    """Whether member ``data.<key>`` (from ``col``) is written as a merge would write it: a
    type of :data:`_VERBATIM_TYPES` and a flat key that JSON writes without escapes."""
    plain = key.isascii() and key.isprintable() and not any(c in key for c in '."\\')
    return plain and cols.types[col] in _VERBATIM_TYPES


def _key_tail(key: str) -> str:
    """A SQL string literal holding ``key":`` (JSON-escaped): :func:`json_key` without its
    opening quote. What the splice looks for in the object's text: every row that holds the
    quoted key holds this too, so none of them takes the splice. DuckDB's ``strpos`` compares
    the needle wherever its first character occurs, and a quote opens every string of the
    object (about twenty a user): for two keys, 0.54 s of CPU per 2M users, 0.16 without it.
    A row whose text holds the tail but not the key (a key ``xplan`` for ``plan``) merges,
    which writes the same object."""
    return quote_literal(orjson.dumps(key).decode()[1:] + ":")


def _spliced_data(m: _Members, merged: str) -> tuple[str, list[str]]:
    """``data`` without a merge for most users, and ``merged`` for the others: (expression,
    the ``user_parts`` it reads). For a per-user object and :func:`_verbatim` members, with no
    global data. The merge would write the object's members in its order, then the
    ``data.<name>`` members in theirs, unless the object holds one of their keys: only then
    (the key anywhere in its text) does the merge run. At 10M users, the passes that write
    ``plan`` took 44.6-45.5 s of CPU instead of 48.6-49.1 (bench/RESULTS.md, round 22)."""
    parts = [f"{_DATA_TEXT} AS _dj"]
    if not m.data:
        return "nullif(_dj, '{}')", parts
    members = ", ".join(f"{json_key(k)} || ({v})" for k, v in m.data)
    apart = " AND ".join(f"strpos(_dj, {_key_tail(k)}) = 0" for k, _ in m.data)
    # The object without its closing brace: ``substr`` to ``length`` - 1 rather than
    # ``left(_dj, -1)``, the same characters; DuckDB's ``left`` with a negative count decoded
    # every object character by character (0.28 against 0.11 s of CPU per 2M users).
    expr = (
        "CASE WHEN _dw = '' THEN nullif(_dj, '{}') WHEN _dj = '{}' THEN '{' || _dw || '}' "
        f"WHEN {apart} THEN concat(substr(_dj, 1, length(_dj) - 1), ',', _dw, '}}') "
        f"ELSE {merged} END"
    )
    return expr, [*parts, f"concat_ws(',', {members}) AS _dw"]


def _data_expr(
    options: PlanOptions, targets: Mapping[str, str], m: _Members
) -> tuple[str, list[str]]:
    """The merged ``data`` (global under per-user, ``data.<name>`` columns over ``data``), and
    the ``user_parts`` it reads."""
    global_data = orjson.dumps(dict(options.data)).decode() if options.data else None
    cols_obj = object_sql(m.data) if m.data else None
    if cols_obj is not None and m.data_nested:
        cols_obj = f"json_merge_patch('{{}}', {cols_obj})::VARCHAR"
    parts: list[str] = []
    if global_data is not None:
        parts.append(quote_literal(global_data))
    if "data" in targets:
        parts.append(_USER_DATA)
    if cols_obj is not None:
        parts.append(f"coalesce({cols_obj}, '{{}}')")
    if not parts:
        return "NULL", []
    if len(parts) == 1 and cols_obj is not None:
        return cols_obj, []
    merged = f"nullif(json_merge_patch('{{}}', {', '.join(parts)})::VARCHAR, '{{}}')"
    if global_data is None and m.data_verbatim and not m.data_nested:
        return _spliced_data(m, merged)
    return merged, []


def _user_expr(
    options: PlanOptions, targets: Mapping[str, str], m: _Members
) -> tuple[str, list[str]]:
    pref = (
        "nullif(json_merge_patch('{}', _pcol)::VARCHAR, '{}')"
        if "preferences" in targets
        else "NULL"
    )
    data, parts = _data_expr(options, targets, m)
    members = (
        ("profile", object_sql(m.profile)),
        ("to", object_sql(m.to)),
        ("data", data),
        ("preferences", pref),
    )
    body = ", ".join(f"',' || {json_key(k)} || ({v})" for k, v in members)
    return f"'{{\"recipient\":' || to_json(recipient)::VARCHAR || concat({body}) || '}}'", parts


def _phone_digits(expr: str) -> str:
    return f"length(regexp_replace({expr}, '[^0-9]', '', 'g'))"


def _scientific(expr: str) -> str:
    """SQL: ``expr`` is a number in scientific notation (behind a cheap ``contains`` gate)."""
    gate = f"(contains({expr}, 'E+') OR contains({expr}, 'e+'))"
    return f"({gate} AND regexp_full_match({expr}, {quote_literal(SCIENTIFIC_REGEX)}))"


_EXCEL = (
    "is in scientific notation, so its last digits are lost (Excel saves long numbers this "
    "way from a General column): format the column as Text and export it again"
)

# A phone number in E.164 (most, once normalised) has 8 to 15 digits and no "E+": it is never
# ``bad_phone``, and the regex that strips its other characters to count the digits runs only
# for the rest (measured: 0.41 s of CPU per 2M numbers for the count, 0.14 for the match).
_REASON = f"""
        CASE
          WHEN NOT _keep THEN 'filtered'
          WHEN recipient IS NULL THEN 'no_address'
          WHEN _uid IS NOT NULL AND {_scientific("_uid")} THEN 'bad_user_id'
          WHEN _email IS NOT NULL AND NOT regexp_full_match(_email, {quote_literal(EMAIL_REGEX)})
            THEN 'bad_email'
          WHEN _phone IS NOT NULL AND NOT regexp_full_match(_phone, {quote_literal(E164)})
               AND (NOT {_phone_digits("_phone")} BETWEEN 7 AND 15 OR {_scientific("_phone")})
            THEN 'bad_phone'
          WHEN _dbad OR _pbad OR _jbad IS NOT NULL THEN 'bad_json'
        END"""

_RECIPIENT = """
            CASE WHEN _uid IS NOT NULL THEN _uid
                 WHEN _email IS NOT NULL THEN 'email:' || _email
                 WHEN _phone IS NOT NULL THEN 'phone:'
                      || CASE WHEN starts_with(_phone, '+') THEN '+' ELSE '' END
                      || regexp_replace(_phone, '[^0-9]', '', 'g')
                 WHEN _list IS NOT NULL THEN 'list:' || _list
            END"""


def _reason_text(targets: Mapping[str, str], where_label: str) -> str:
    data_col = quote_ident(targets.get("data", "data"))
    pref_col = quote_ident(targets.get("preferences", "preferences"))
    return f"""
        CASE _code
          WHEN 'filtered' THEN {quote_literal("excluded by " + where_label)}
          WHEN 'no_address' THEN {quote_literal(REASONS["no_address"])}
          WHEN 'bad_email' THEN 'e-mail ' || to_json(_email)::VARCHAR
                                 || ' does not look like an e-mail address'
          WHEN 'bad_user_id' THEN 'user_id ' || to_json(_uid)::VARCHAR || {quote_literal(" " + _EXCEL)}
          WHEN 'bad_phone' THEN CASE
              WHEN {_scientific("_phone")}
                THEN 'phone number ' || to_json(_phone)::VARCHAR || {quote_literal(" " + _EXCEL)}
              ELSE 'phone number ' || to_json(_phone)::VARCHAR || ' has '
                   || {_phone_digits("_phone")} || ' digits; expected 7 to 15' END
          WHEN 'bad_json' THEN CASE
              WHEN _dbad THEN {quote_literal("column " + data_col + " is not a JSON object")}
              WHEN _pbad THEN {quote_literal("column " + pref_col + " is not a JSON object")}
              ELSE _jbad END
        END"""


def _bound(cols: Cols, targets: Mapping[str, str], options: PlanOptions) -> str:
    """SQL: an upper bound of the user JSON's length (``too_large`` measures only rows whose
    bound is over the limit)."""
    used = sorted(set(targets.values()))
    fixed = len(orjson.dumps(dict(options.data))) + len(options.locale or "")
    constant = fixed + sum(len(json_key(k)) for k in targets) + 64 * (len(targets) + 8)
    lengths = " + ".join(cols.bound(c) for c in used) or "0"
    return f"({BOUND_FACTOR} * ({lengths} + {constant}) + {_BOUND_SLACK})"


def _flags(options: PlanOptions, m: _Members) -> tuple[list[str], list[str]]:
    """(the pre-flight flag columns of the key table, the ``a`` columns they need)."""
    to_email_only = "false"
    inputs: list[str] = []
    if m.to_email is not None:
        name = m.to_email.rsplit(" AS ", 1)[1]
        to_email_only = f"{name} IS NOT NULL AND _email IS NULL"
        inputs.append(m.to_email)
    channel = _CHANNEL_ADDRESS.get(options.channel or "")
    missing = f"{channel} IS NULL" if channel else "false"
    return [
        f"{missing} AS _no_channel_address",
        f"{to_email_only} AS _to_email_only",
        (
            f"_phone IS NOT NULL AND NOT regexp_full_match(_phone, {quote_literal(E164)}) "
            "AS _phone_as_given"
        ),
    ], inputs


def build_queries(
    options: PlanOptions, cols: Cols, targets: Mapping[str, str], where: str | None, label: str
) -> Queries:
    """The expressions for one row: address columns, validation and reason, and the user JSON
    (only meaningful for valid rows). ``where`` is the checked ``--where`` item, or None."""
    m = _members(cols, targets, options.locale)
    validity, payload = _validity(cols, targets, m)
    flags, flag_inputs = _flags(options, m)
    keep = f"coalesce(CAST({where} AS BOOLEAN), false)" if where else "true"
    user, user_parts = _user_expr(options, targets, m)
    return Queries(
        address=_address(cols, targets),
        keep=f"{keep} AS _keep",
        validity=validity,
        extras=m.extras,
        payload=payload,
        recipient=_RECIPIENT,
        reason=_REASON,
        reason_text=_reason_text(targets, label),
        user=user,
        user_parts=user_parts,
        flags=flags,
        flag_inputs=flag_inputs,
        bound=_bound(cols, targets, options),
    )


def keys_sql(q: Queries, options: PlanOptions, audience: str) -> str:
    """One narrow row per audience row, in the audience's order: row_number, recipient,
    reason_code, reason, the pre-flight flags, and whether the row's user JSON must be measured
    (``_check``: valid, and its size bound is over ``max_user_bytes``). No user JSON is built."""
    first = [*q.address, q.keep, *q.validity, f"{q.bound} AS _bound", *q.flag_inputs]
    return f"""
    WITH a AS (
        SELECT {", ".join(first)} FROM {audience}
    ), b AS (
        SELECT *, {q.recipient} AS recipient FROM a
    ), c AS (
        SELECT *, {q.reason} AS _code FROM b
    )
    SELECT row_number, recipient, _code AS reason_code, {q.reason_text} AS reason,
           {", ".join(q.flags)},
           _code IS NULL AND _bound > {int(options.max_user_bytes)} AS _check
    FROM c
    """


def users_sql(q: Queries, source: str, where: str, carry: Sequence[str]) -> str:
    """``row_number, recipient, user_json`` (plus the ``carry`` columns of ``source``) for the
    rows of ``source`` (the audience, possibly joined) that pass ``where``; keeps their order."""
    first = [*q.address, *q.extras, *q.payload, *carry]
    kept = ", ".join(carry)
    return f"""
    WITH a AS (
        SELECT {", ".join(first)} FROM {source} WHERE {where}
    ), b AS (
        SELECT *, {", ".join([f"{q.recipient} AS recipient", *q.user_parts])} FROM a
    )
    SELECT row_number, recipient, {q.user} AS user_json{", " + kept if kept else ""} FROM b
    """


_LOW_64 = (1 << 64) - 1


def _byte_swapped(word: str) -> str:
    """SQL: UBIGINT ``word`` with its 8 bytes in reverse order. Every term is parenthesised:
    DuckDB gives ``<<``, ``>>``, ``&`` and ``|`` one precedence, left to right."""
    terms = " | ".join(f"((({word} >> {8 * i}) & 255) << {8 * (7 - i)})" for i in range(8))
    return f"({terms})::UBIGINT"


def order_sql(options: PlanOptions) -> str:
    """``row_number, job_no, batch_no`` of every user to send (narrow; any order)."""
    bs = int(options.batch_size)
    source = (
        "SELECT row_number, recipient FROM _bb_keys WHERE reason_code IS NULL "
        "AND row_number NOT IN (SELECT row_number FROM duplicates)"
    )
    if not options.max_job_size:
        return f"""
        SELECT row_number, 0 AS job_no,
               (row_number() OVER (ORDER BY row_number) - 1) // {bs} AS batch_no
        FROM ({source})
        """
    mjs = int(options.max_job_size)
    # md5(recipient) order, as two unsigned 64-bit halves of the digest (the same order as its
    # hex text): the sort compares 16 fixed-width bytes instead of 32-character strings
    # (10M: 9.4-10.7 -> 5.7-6.7 s; the text spilled 4.3 GB under the 320MB cap). The halves
    # come from one md5_number, whose 64-bit words are the digest's bytes little-endian, so
    # each is byte-swapped into the text's order (10M: 2.6-2.8 -> 1.5 s, the same values).
    # Every job but the last holds exactly max_job_size users, so job k's batches start at
    # k * ceil(max_job_size / batch_size): no count per job and no join back to it, which
    # also let DuckDB inline ``j`` rather than materialise it (10M: 6.0-6.1 -> 3.5-3.7 s).
    # The md5 rank is a plain ORDER BY numbered by ``row_number() OVER ()``, which keeps the
    # order of the sorted subquery (DuckDB's documented order preservation; pinned over many
    # vectors and threads by test_plan_perf_equivalence): a sort instead of a window over all
    # users (10M: 3.5-3.6 s against 3.8-4.1 for the whole cut, the same rows; 1M: 0.29-0.32
    # either way).
    per_job = -(-mjs // bs)
    m = "md5_number(recipient)"
    h1 = _byte_swapped(f"({m} & {_LOW_64}::UHUGEINT)::UBIGINT")
    h2 = _byte_swapped(f"({m} >> 64)::UBIGINT")
    return f"""
    WITH p AS (
        SELECT row_number, {h1} AS h1, {h2} AS h2 FROM ({source})
    ),
    s AS (
        SELECT row_number FROM p ORDER BY h1, h2, row_number
    ),
    j AS (
        SELECT row_number, (row_number() OVER () - 1) // {mjs} AS job_no FROM s
    ),
    k AS (
        SELECT *, row_number() OVER (PARTITION BY job_no ORDER BY row_number) - 1 AS pos FROM j
    )
    SELECT row_number, job_no, job_no * {per_job} + pos // {bs} AS batch_no FROM k
    """
