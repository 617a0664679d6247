"""NDJSON that does not parse, named by the line a person can open.

DuckDB's malformed-JSON error counts one line past the bad one (duckdb 1.x-2.0: a bad line 4
is "line 5", a bad first line "record/value 2"), and its text names the file twice. So the
line is found in the file: of the line DuckDB names and the one before it, the one DuckDB's
own ``json_valid`` refuses while the other passes (either way round, so a DuckDB that counts
right is named right too). When that is not clear-cut, DuckDB's words stand.
"""

from __future__ import annotations

import gzip
import itertools
import re

import duckdb

from bulkbatch.storage import is_remote

__all__ = ["malformed_line"]

_REPORTED = re.compile(r"at byte \d+ in (?:line|record/value) (\d+): ([^.\n]+)")
_SHOWN = 60
"""Characters of the bad line shown: enough to find it, never a wall of text."""


def _lines(path: str, first: int, count: int) -> list[str | None]:
    """Lines ``first`` .. ``first + count - 1`` (1-based; None past the end), streamed."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        wanted = list(itertools.islice(f, first - 1, first - 1 + count))
    found: list[str | None] = [b.decode("utf-8", "replace").rstrip("\r\n") for b in wanted]
    return found + [None] * (count - len(found))


def _valid(con: duckdb.DuckDBPyConnection, line: str | None) -> bool:
    if line is None or not line.strip():
        return True  # the end of the file, or a blank line the reader skips
    return bool(con.execute("SELECT json_valid(?)", [line]).fetchall()[0][0])


def malformed_line(path: str, error: str) -> str | None:
    """``(line N): not valid JSON (why): <the line's start>`` for DuckDB's malformed-JSON
    ``error`` about local NDJSON file ``path``, or None to keep DuckDB's words (not that
    error, a remote or unreadable file, or no single line to blame)."""
    m = _REPORTED.search(error)
    if m is None or is_remote(path) or path.lower().endswith(".zst"):
        return None
    reported, why = int(m.group(1)), m.group(2).strip()
    first = max(reported - 1, 1)
    try:
        lines = _lines(path, first, reported - first + 1)
    except (OSError, EOFError):
        return None
    with duckdb.connect() as con:
        bad = [n for n, line in enumerate(lines, first) if not _valid(con, line)]
    if len(bad) != 1:
        return None
    line = lines[bad[0] - first] or ""
    shown = line if len(line) <= _SHOWN else line[:_SHOWN] + "…"
    return f"(line {bad[0]}): not valid JSON ({why}): {shown}"
