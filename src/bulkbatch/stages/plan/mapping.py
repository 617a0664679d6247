"""Which input column becomes which user field: the naming conventions, ``--map`` (which
wins), dotted paths into struct and JSON columns, and the columns left unused."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence

import orjson

from bulkbatch.db import quote_ident, quote_literal
from bulkbatch.errors import UsageError
from bulkbatch.options import option
from bulkbatch.spec import MAP_PREFIXES, SHORT_TARGETS, normalise_target

__all__ = ["path_columns", "resolve_mapping", "unused_columns", "unused_note"]

_SHOWN_UNUSED = 8


def _find(columns: Sequence[str], name: str) -> str | None:
    """``name`` as one of ``columns`` (exact, else the one case-insensitive match)."""
    if name in columns:
        return name
    matches = [c for c in columns if c.lower() == name.lower()]
    return matches[0] if len(matches) == 1 else None


def _by_convention(columns: Sequence[str]) -> dict[str, str]:
    resolved: dict[str, str] = {}
    phone_alias: str | None = None
    for col in columns:
        low = col.lower()
        if low == "phone":
            phone_alias = phone_alias or col
        elif low in SHORT_TARGETS:
            resolved.setdefault(SHORT_TARGETS[low], col)
    if phone_alias is not None:
        resolved.setdefault("profile.phone_number", phone_alias)
    for col in columns:  # explicitly named targets win over the short names
        low = col.lower()
        for prefix in MAP_PREFIXES:
            if low.startswith(prefix) and len(col) > len(prefix):
                rest = col[len(prefix) :]
                if all(rest.split(".")):
                    resolved[prefix + rest] = col
    return resolved


def resolve_mapping(
    columns: Sequence[str], mapping: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``{target: input column}`` from the conventions and ``mapping`` (which wins).

    A mapped column may be a dotted path into a struct or JSON column once
    :func:`path_columns` has added it to ``columns``.

    :raises UsageError: ``mapping`` names an unknown target or a column the input lacks
    """
    flag = option("mapping").flag
    resolved = _by_convention(columns)
    for target, column in (mapping or {}).items():
        norm = normalise_target(target)
        if norm is None:
            raise UsageError(
                f"Unknown {flag} target {target!r}: use user_id, email, phone_number, locale, "
                "tenant_id, list_id, data, preferences, or data.NAME, profile.NAME or to.NAME."
            )
        found = _find(columns, column)
        if found is None:
            raise UsageError(
                f"Unknown column in {flag} {target}={column}: the input has "
                f"{some_of(columns)}. Use one of these names."
            )
        resolved[norm] = found
    return resolved


def _split_path(columns: Sequence[str], path: str) -> tuple[str, list[str]] | None:
    """(root column, keys) when ``path`` is ``<column>.<key>[.<key>...]``; the longest
    matching column wins (column names may hold dots themselves)."""
    low = path.lower()
    for col in sorted(columns, key=len, reverse=True):
        if low.startswith(col.lower() + ".") and len(path) > len(col) + 1:
            keys = path[len(col) + 1 :].split(".")
            if all(keys):
                return col, keys
    return None


def _path_expr(root: str, duck_type: str, keys: Sequence[str]) -> str | None:
    c = quote_ident(root)
    if duck_type.startswith("STRUCT"):
        return c + "".join(f"[{quote_literal(k)}]" for k in keys)
    json_path = "$" + "".join("." + orjson.dumps(k).decode() for k in keys)
    if duck_type == "JSON":
        return f"json_extract({c}, {quote_literal(json_path)})"
    if duck_type == "VARCHAR":
        return f"CASE WHEN json_valid({c}) THEN json_extract({c}, {quote_literal(json_path)}) END"
    return None


def path_columns(
    types: Mapping[str, str], mapping: Mapping[str, str] | None
) -> dict[str, tuple[str, str]]:
    """``{path: (root column, SQL expression)}`` for each ``--map`` column that is not a
    column but a dotted path into a struct (``traits.address.city``) or a JSON column
    (JSON text in a text column too). The plan selects them as extra audience columns named
    by the path, so they map like any column."""
    columns = [c for c in types if c not in ("row_number", "source")]
    out: dict[str, tuple[str, str]] = {}
    for column in (mapping or {}).values():
        if _find(columns, column) is not None or column in out:
            continue
        split = _split_path(columns, column)
        if split is None:
            continue
        root, keys = split
        expr = _path_expr(root, types[root], keys)
        if expr is not None:
            out[column] = (root, expr)
    return out


def unused_columns(
    columns: Sequence[str],
    targets: Mapping[str, str],
    paths: Mapping[str, tuple[str, str]],
    referenced: Collection[str],
) -> list[str]:
    """The audience columns nothing sends, maps or filters on, in input order."""
    used = {paths[c][0] if c in paths else c for c in targets.values()}
    used_low = {c.lower() for c in used} | {c.lower() for c in referenced}
    return [c for c in columns if c not in paths and c.lower() not in used_low]


def _suggested_target(column: str) -> str:
    name = re.sub(r"[^0-9A-Za-z]+", "_", column).strip("_").lower() or "value"
    return f"data.{name}"


def some_of(columns: Sequence[str]) -> str:
    """The first few of ``columns`` and how many more (an input can have thousands)."""
    shown = ", ".join(columns[:_SHOWN_UNUSED])
    more = len(columns) - _SHOWN_UNUSED
    return f"{shown} and {more} more" if more > 0 else shown


def unused_note(unused: Sequence[str]) -> str | None:
    """One line naming the unused columns and how to send one."""
    if not unused:
        return None
    first = unused[0]
    quoted = f'"{first}"' if not re.fullmatch(r"[\w.\-]+", first) else first
    return (
        f"{len(unused)} input column(s) are not sent: {some_of(unused)}. To send one, map it, e.g. "
        f"{option('mapping').flag} {_suggested_target(first)}={quoted}"
    )
