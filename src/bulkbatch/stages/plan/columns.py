"""SQL expressions over one audience column, by its DuckDB type: text, JSON values, JSON
objects (with the nesting-depth check), object building and phone numbers.

Every function returns SQL text; nothing here touches a connection.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import orjson

from bulkbatch.db import quote_ident, quote_literal
from bulkbatch.spec import MAX_JSON_DEPTH

__all__ = [
    "Cols",
    "blank_sql",
    "finite_sql",
    "json_depth_sql",
    "json_key",
    "lenient_json_sql",
    "object_sql",
    "phone_sql",
    "static_depth",
    "too_deep_sql",
]


def blank_sql(text: str) -> str:
    """SQL: ``trim(text) = ''`` (NULL for NULL), without trimming text that cannot be blank.

    DuckDB's ``trim`` copies the whole string, and a ``data`` column holds long ones: at 10M
    objects of about 110 bytes, 3.0-3.3 s, against 0.38 s for this. Text that starts with a
    printable ASCII character keeps it after any trim, so it is not blank; the rest is
    trimmed as before (``trim`` takes Unicode spaces, but not tabs or newlines)."""
    return f"CASE WHEN ascii({text}) BETWEEN 33 AND 126 THEN false ELSE trim({text}) = '' END"


def json_key(key: str) -> str:
    """A SQL string literal holding ``"key":`` (JSON-escaped)."""
    return quote_literal(orjson.dumps(key).decode() + ":")


# ------------------------------------------------------------------------- nesting depth

_STRINGS = r'"(?:[^"\\]|\\.)*"'
_NOT_BRACKET = r"[^\[\]{}]"


_TOKEN = r'[^\[\]{}"]|"(?:[^"\\]|\\.)*"'
"""Anything in JSON text but a bracket outside a string: one character or a whole string."""


@functools.lru_cache(maxsize=8)
def _depth_pattern(limit: int) -> str:
    """A regular expression matching JSON text nested at most ``limit`` deep: bounded nesting
    is a regular language, so one RE2 pass over the text decides it (strings are skipped
    whole, so their brackets do not count)."""
    pattern = f"(?:{_TOKEN})*"
    for _ in range(limit):
        pattern = rf"(?:{_TOKEN}|[\[{{]{pattern}[\]}}])*"
    return pattern


def _brackets(text: str) -> str:
    """The brackets of JSON text ``text`` outside its strings, in order."""
    stripped = f"regexp_replace({text}, {quote_literal(_STRINGS)}, '', 'g')"
    return f"regexp_replace({stripped}, {quote_literal(_NOT_BRACKET)}, '', 'g')"


def too_deep_sql(text: str, limit: int = MAX_JSON_DEPTH) -> str:
    """SQL: whether valid JSON text ``text`` nests deeper than ``limit``.

    Cheap tests first (length, then the count of opening brackets), so the usual small
    object costs a length check; only text with more opening brackets than the limit gets the
    one-pass depth match (CASE evaluates a branch only for the rows that reach it): about
    2.5 s per million rows when every row has that many brackets."""
    openers = f"(strlen({text}) - strlen(replace(replace({text}, '{{', ''), '[', '')))"
    return (
        f"CASE WHEN strlen({text}) <= {2 * limit} THEN false "
        f"WHEN {openers} <= {limit} THEN false "
        f"ELSE NOT regexp_full_match({text}, {quote_literal(_depth_pattern(limit))}) END"
    )


def json_depth_sql(text: str) -> str:
    """SQL: the exact nesting depth of valid JSON text ``text`` (an object is 1). Costly per
    byte; used only to name the depth of rows already found too deep."""
    step = "CASE WHEN x IN ('[', '{') THEN 1 ELSE -1 END"
    return (
        f"list_reduce(string_split({_brackets(text)}, ''), "
        f"lambda acc, x: {{'c': acc.c + {step}, 'm': greatest(acc.m, acc.c + {step})}}, "
        "{'c': 0, 'm': 0}).m"
    )


def static_depth(duck_type: str) -> int:
    """An upper bound of the JSON nesting depth of any value of a DuckDB type
    (``STRUCT(a STRUCT(b INTEGER[]))`` -> 3); a type with a JSON part has no bound (DuckDB's
    NDJSON reader types what it nests too deep to detect as JSON)."""
    if re.search(r"\bJSON\b", duck_type):
        return sys.maxsize
    depth = deepest = 0
    for i, ch in enumerate(duck_type):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "[" and duck_type[i + 1 : i + 2] == "]":
            depth += 1
            deepest = max(deepest, depth)
            depth -= 1
        deepest = max(deepest, depth)
    return deepest


# -------------------------------------------------- JSON that DuckDB reads and Courier refuses
#
# DuckDB reads JSON leniently (yyjson with NaN, Infinity and trailing commas allowed), and its
# to_json writes a float's NaN and infinities bare (``NaN``, ``Infinity``). Courier's parser,
# like every strict one, refuses the whole request body for one of them: one user's NaN failed
# a batch of 1,000 with a 400 on every try.

_TRAILING_COMMA = r",\s*[\]}]"
_LENIENT = rf"(?i)nan|inf|{_TRAILING_COMMA}"
"""Outside strings, strict JSON has only brackets, separators, numbers (whose letters are e/E)
and true/false/null, none of which holds "nan" or "inf": so what is left of valid JSON text with
its strings blanked matches this only for a NaN or infinity literal or a trailing comma."""


def lenient_json_sql(text: str) -> str:
    """SQL: JSON text ``text`` that DuckDB accepts but strict JSON does not (a NaN or infinity
    literal in any case, or a trailing comma). A cheap test first: only text that holds "nan",
    "inf" or a comma before a closing bracket anywhere (strings included) has its strings
    blanked and is matched exactly (about 0.11 s per million typical ``data`` objects)."""
    gate = (
        f"(contains(lower({text}), 'nan') OR contains(lower({text}), 'inf') "
        f"OR regexp_matches({text}, {quote_literal(_TRAILING_COMMA)}))"
    )
    blanked = f"regexp_replace({text}, {quote_literal(_STRINGS)}, '\"\"', 'g')"
    return (
        f"CASE WHEN {gate} THEN regexp_matches({blanked}, {quote_literal(_LENIENT)}) ELSE false END"
    )


_FLOATS = re.compile(r"\b(?:DOUBLE|FLOAT|REAL)\b", re.IGNORECASE)


def finite_sql(expr: str, duck_type: str) -> str:
    """``expr`` (of DuckDB type ``duck_type``) with every float's NaN and infinities inside it
    turned to NULL, at any depth of structs, lists, arrays and map values (DuckDB has no
    deep-map function over a value, so the expression follows the type). Unchanged when the
    type holds no float, or is one DuckDB's parser does not take."""
    if not _FLOATS.search(duck_type):
        return expr
    try:
        parsed = duckdb.sqltype(duck_type)
    except (duckdb.Error, ValueError):
        return expr
    return _finite(expr, parsed, 0) or expr


def _finite(expr: str, t: duckdb.sqltypes.DuckDBPyType, depth: int) -> str | None:
    """:func:`finite_sql` for a parsed type; None when nothing in it needs changing."""
    kind = t.id
    if kind in ("double", "float"):
        return f"CASE WHEN isfinite({expr}) THEN {expr} END"
    if kind not in ("list", "array", "map", "struct"):
        return None
    # An array's children also hold its size; only the types are walked.
    kids = [(name, c) for name, c in t.children if isinstance(c, duckdb.sqltypes.DuckDBPyType)]
    var = f"_bb_v{depth}"
    if kind in ("list", "array"):
        inner = _finite(var, kids[0][1], depth + 1)
        return None if inner is None else f"list_transform({expr}, lambda {var}: {inner})"
    if kind == "map":
        inner = _finite(f"{var}.value", kids[1][1], depth + 1)
        if inner is None:
            return None
        entry = f"{{'key': {var}.key, 'value': {inner}}}"
        return f"map_from_entries(list_transform(map_entries({expr}), lambda {var}: {entry}))"
    fields = [(name, f"struct_extract({expr}, {quote_literal(name)})", c) for name, c in kids]
    changed = [_finite(field, child, depth) for _, field, child in fields]
    if all(c is None for c in changed):
        return None
    members = ", ".join(
        f"{quote_ident(name)} := {new or field}"
        for (name, field, _), new in zip(fields, changed, strict=True)
    )
    return f"CASE WHEN {expr} IS NULL THEN NULL ELSE struct_pack({members}) END"


# ------------------------------------------------------------------------------ columns


class Cols:
    """Expressions over the audience's columns, by DuckDB type."""

    def __init__(self, types: Mapping[str, str]) -> None:
        self.types = dict(types)

    def text(self, col: str) -> str:
        """The column as trimmed text, NULL when missing or empty; a whole float as an
        integer."""
        c = quote_ident(col)
        t = self.types[col]
        if t == "VARCHAR":
            return f"nullif(trim({c}), '')"
        if t == "JSON":
            return (
                f"nullif(trim(CASE json_type({c}) WHEN 'VARCHAR' THEN {c} ->> '$' "
                f"WHEN 'NULL' THEN NULL ELSE {c}::VARCHAR END), '')"
            )
        if t in ("DOUBLE", "FLOAT"):
            # pandas stores an integer column with a gap as float64: 12345.0 is the id 12345
            # (exactly, below 2**53), not "12345.0"; NaN and infinities are missing, not text.
            return (
                f"CASE WHEN NOT isfinite({c}) THEN NULL "
                f"WHEN {c} = trunc({c}) AND abs({c}) < {2**53} THEN {c}::BIGINT::VARCHAR "
                f"ELSE {c}::VARCHAR END"
            )
        return f"nullif(trim({c}::VARCHAR), '')"

    def value(self, col: str) -> str:
        """The column as JSON text (NULL stays NULL; so do NaN and infinities, which JSON
        cannot carry: DuckDB's ``to_json`` writes them bare, which Courier would refuse)."""
        c = quote_ident(col)
        t = self.types[col]
        if t == "JSON":
            return f"CASE WHEN json_type({c}) = 'NULL' THEN NULL ELSE {c}::VARCHAR END"
        return f"to_json({finite_sql(c, t)})::VARCHAR"  # to_json(NULL) is NULL

    def nested(self, col: str) -> bool:
        """Whether the column's values can be JSON objects or arrays."""
        t = self.types[col]
        return t == "JSON" or t.startswith(("STRUCT", "MAP")) or t.endswith("]")

    def valid_obj(self, col: str) -> str:
        """:meth:`obj`'s object text for a row already known not to be ``bad_json``."""
        c = quote_ident(col)
        if self.types[col] == "VARCHAR":
            return f"CASE WHEN NOT {blank_sql(c)} THEN {c} END"
        return self.obj(col)[0]

    def obj(self, col: str) -> tuple[str, str]:
        """(JSON object text or NULL, not-an-object boolean) for a data/preferences column."""
        c = quote_ident(col)
        t = self.types[col]
        if t.startswith(("STRUCT", "MAP")):
            return f"to_json({finite_sql(c, t)})::VARCHAR", "false"
        if t == "JSON":
            kind = f"json_type({c})"
            return (
                f"CASE WHEN {kind} = 'OBJECT' THEN {c}::VARCHAR END",
                f"coalesce({kind} NOT IN ('OBJECT', 'NULL'), false)",
            )
        if t == "VARCHAR":
            # Valid JSON that starts with "{" is an object: one parse, not two, for most.
            ok = (
                f"CASE WHEN ascii({c}) = 123 THEN json_valid({c}) "
                f"WHEN json_valid({c}) THEN json_type({c}) = 'OBJECT' ELSE false END"
            )
            empty = f"({c} IS NULL OR {blank_sql(c)})"
            return (
                f"CASE WHEN NOT {empty} AND {ok} THEN {c} END",
                f"(NOT {empty} AND NOT {ok})",
            )
        return "NULL", f"({c} IS NOT NULL)"

    def lenient(self, col: str, as_object: bool) -> str | None:
        """SQL: the column's JSON text holds what strict JSON does not allow (see
        :func:`lenient_json_sql`), or None when its type cannot: text is JSON only where an
        object is expected (``as_object``: data, preferences); a JSON value, or a nested type
        with a JSON member, always is (DuckDB's NDJSON reader keeps such members as text)."""
        c = quote_ident(col)
        t = self.types[col]
        if t == "VARCHAR":
            return lenient_json_sql(c) if as_object else None
        if t == "JSON":
            return lenient_json_sql(f"{c}::VARCHAR")
        if re.search(r"\bJSON\b", t):
            return lenient_json_sql(f"to_json({finite_sql(c, t)})::VARCHAR")
        return None

    def json_text(self, col: str, limit: int = MAX_JSON_DEPTH) -> str | None:
        """The column's JSON text when its values may nest deeper than ``limit``, else None
        (a struct type's depth is known from the type)."""
        c = quote_ident(col)
        t = self.types[col]
        if t in ("VARCHAR", "JSON"):
            return f"{c}::VARCHAR"
        if static_depth(t) > limit:
            return f"to_json({c})::VARCHAR"
        return None

    def too_deep(self, col: str, limit: int = MAX_JSON_DEPTH) -> str:
        """SQL: the column's JSON nests over ``limit`` (NULL or false otherwise; text that is
        not JSON may test either way, and is ``bad_json`` already)."""
        text = self.json_text(col, limit)
        return "false" if text is None else too_deep_sql(text, limit)

    def bound(self, col: str) -> str:
        """An upper bound of the bytes the column can contribute to the user JSON (before the
        escaping factor of :data:`bulkbatch.stages.plan.queries.BOUND_FACTOR`)."""
        c = quote_ident(col)
        t = self.types[col]
        if t == "VARCHAR":
            return f"coalesce(strlen({c}), 0)"
        if t == "JSON":
            return f"coalesce(strlen({c}::VARCHAR), 0)"
        return f"(coalesce(strlen(to_json({c})::VARCHAR), 0) + coalesce(strlen({c}::VARCHAR), 0))"


def object_sql(members: Sequence[tuple[str, str]]) -> str:
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
            items.append(f"{json_key(k)} || ({inner})")
        if not items:
            return "NULL"
        return f"nullif('{{' || concat_ws(',', {', '.join(items)}) || '}}', '{{}}')"

    return build(tree)


# ------------------------------------------------------------------------------ phones

_SEP = r"[ ()./\-]*"
_E164_SHAPE = rf"(\+|00){_SEP}([0-9]{_SEP}){{8,15}}"
E164 = r"\+[0-9]{8,15}"
"""A phone number as sent after normalising: ``+`` and 8 to 15 digits."""


def phone_sql(raw: str) -> str:
    """SQL: the phone number to send, for trimmed text ``raw``.

    Unambiguous international numbers become E.164: a leading ``+`` or ``00``, then 8 to 15
    digits with only the usual separators (space, ``()``, ``-``, ``.``, ``/``) between them, and
    no ``(0)`` trunk digit. Anything else is sent as given (it does not match :data:`E164`)."""
    ok = f"(regexp_full_match({raw}, {quote_literal(_E164_SHAPE)}) AND NOT contains({raw}, '(0)'))"
    return (
        f"CASE WHEN regexp_full_match({raw}, {quote_literal(E164)}) THEN {raw} "  # the usual case
        f"WHEN {ok} THEN '+' || regexp_replace({raw}, '^00|[^0-9]', '', 'g') ELSE {raw} END"
    )
