"""Which rows are the audience: ``--where`` (one checked expression) and ``--sql`` (the
operator's own query over ``inputs``)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import duckdb
import orjson

from bulkbatch.errors import UsageError
from bulkbatch.options import option
from bulkbatch.stages.plan.mapping import some_of

__all__ = ["audience_of", "check_where", "first_line"]

_ALIAS = "__bb_where"
_EMPTY_CLAUSES = ("where_clause", "having", "sample", "qualify")


def first_line(exc: BaseException) -> str:
    """The first line of a DuckDB error, without its ``... Error:`` prefix."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return re.sub(r"^[A-Za-z ]*Error: ", "", line).strip().rstrip(".")


def _where_error(where: str, why: str, columns: Sequence[str]) -> UsageError:
    flag = option("where").flag
    return UsageError(
        f"Bad {flag} {where!r}: {why}. Write a SQL boolean over the input columns "
        f"({some_of(columns)}); quote names with dots, "
        'e.g. "data.plan".'
    )


def _walk(node: Any) -> Iterator[Mapping[str, Any]]:
    """Every JSON object inside ``node`` (without recursion: a deep expression is fine)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _one_item(con: duckdb.DuckDBPyConnection, statement: str) -> Mapping[str, Any] | str:
    """The parse tree of ``SELECT <item> AS __bb_where`` when it is exactly that (one plain
    SELECT of one item, nothing else), else why not. Parses only; runs nothing."""
    try:
        statements = duckdb.extract_statements(statement)
    except duckdb.Error as exc:
        return first_line(exc)
    if len(statements) != 1:
        return f"it holds {len(statements)} SQL statements, not one expression; nothing was run"
    if statements[0].type != duckdb.StatementType.SELECT:
        return "it is not an expression; nothing was run"
    rows = con.execute("SELECT json_serialize_sql(?)", [statement]).fetchall()
    tree = orjson.loads(str(rows[0][0]))
    if tree.get("error"):
        return str(tree.get("error_message", "it does not parse"))
    node = tree["statements"][0]["node"]
    items = node.get("select_list") or []
    plain = (
        node.get("type") == "SELECT_NODE"
        and len(items) == 1
        and items[0].get("alias") == _ALIAS
        and (node.get("from_table") or {}).get("type") == "EMPTY"
        and not node.get("modifiers")
        and not (node.get("cte_map") or {}).get("map")
        and not node.get("group_expressions")
        and all(node.get(k) is None for k in _EMPTY_CLAUSES)
    )
    if not plain:
        return "it is more than one expression; nothing was run"
    return dict(items[0])


def check_where(
    con: duckdb.DuckDBPyConnection, where: str, audience: str, columns: Sequence[str]
) -> tuple[str, frozenset[str]]:
    """``--where`` as a select-list item to embed, and the column names it refers to.

    The text is parsed, never run, as ``SELECT (\\n<where>\\n) AS __bb_where``: it must be one
    statement holding one plain select item (no second statement, no FROM, no subquery), so
    it cannot close the query it is embedded in; newlines around it end any ``--`` comment.
    Then it is bound (``DESCRIBE``, which runs nothing) against the audience as a boolean.

    :raises UsageError: it is not exactly one boolean expression over the audience's columns
    """
    item = f"(\n{where}\n)"
    tree = _one_item(con, f"SELECT {item} AS {_ALIAS}")
    if isinstance(tree, str):
        raise _where_error(where, tree, columns)
    if any(n.get("class") == "SUBQUERY" for n in _walk(tree)):
        raise _where_error(
            where,
            f"it holds a subquery; select rows with a query of your own with "
            f"{option('sql').flag} instead",
            columns,
        )
    try:
        con.execute(f"DESCRIBE SELECT CAST({item} AS BOOLEAN) FROM {audience}").fetchall()
    except duckdb.Error as exc:
        raise _where_error(where, first_line(exc), columns) from None
    names = {
        str(n["column_names"][-1])
        for n in _walk(tree)
        if n.get("class") == "COLUMN_REF" and n.get("column_names")
    }
    return item, frozenset(names)


def audience_of(
    con: duckdb.DuckDBPyConnection, sql: str | None, input_types: Mapping[str, str]
) -> tuple[str, dict[str, str], str]:
    """(FROM clause, column types of the audience, label for filtered rows)."""
    where_flag, sql_flag = option("where").flag, option("sql").flag
    if not sql:
        return "inputs", dict(input_types), where_flag
    body = f"({sql.strip().rstrip(';')})"
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {body} AS q").fetchall()
    except duckdb.Error as exc:
        raise UsageError(
            f"Bad {sql_flag}: {first_line(exc)}. Fix the query; it runs over table inputs "
            f"(columns: {', '.join(input_types)})."
        ) from None
    types = {str(r[0]): str(r[1]) for r in described}
    if "row_number" not in types:
        raise UsageError(
            f"{sql_flag} must return the row_number column of inputs (e.g. SELECT * FROM "
            "inputs WHERE ...) so that every input row can be accounted for."
        )
    try:
        bad = con.execute(
            f"SELECT row_number, count(*) FROM {body} AS q GROUP BY 1 "
            "HAVING count(*) > 1 OR row_number NOT IN (SELECT row_number FROM inputs) LIMIT 1"
        ).fetchall()
    except duckdb.Error as exc:
        raise UsageError(f"Bad {sql_flag}: {first_line(exc)}. Fix the query.") from None
    if bad:
        raise UsageError(
            f"{sql_flag} returned row_number {bad[0][0]} {bad[0][1]} time(s) or one not in "
            "inputs; each input row may appear at most once. Select from inputs without "
            "fanning out rows (no joins that repeat them)."
        )
    return f"{body} AS q", types, sql_flag
