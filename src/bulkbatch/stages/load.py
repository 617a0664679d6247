"""The load stage: read the audience files into the run database's ``inputs`` table.

DuckDB reads every input straight from disk (``read_parquet`` / ``read_csv`` / ``read_json``)
into table ``inputs``; no row passes through Python or pandas.

``inputs`` columns: ``row_number BIGINT`` (1-based), ``source VARCHAR`` (the resolved path of
the file the row came from), then the input's own columns.

Rules
-----
* **Sources** are paths, globs (``data/part-*.parquet``, ``**`` allowed) or folders. A glob's
  matches are sorted by path; a folder means every ``*.parquet``, ``*.csv``, ``*.csv.gz``,
  ``*.tsv``, ``*.ndjson``, ``*.jsonl`` and ``*.json`` file below it, sorted by path.
* **Format** is taken from the extension unless ``format`` says otherwise. Several inputs are
  read "by name": a column missing from one file is NULL for its rows.
* **Order**: ``row_number`` follows the sources in the order given, the files of a glob or folder
  in path order, and the rows of a file in file order. It is assigned during the read by DuckDB's
  streaming ``row_number() OVER ()`` with ``preserve_insertion_order`` on (this function sets it),
  so there is no extra copy of the table and the order holds with several threads.
* **CSV**: delimiter, quote, header and encoding are sniffed by DuckDB unless given; a UTF-8 BOM
  is tolerated. Every CSV column is read as text (``all_varchar``) so ids keep their leading
  zeros and phone numbers their ``+``; JSON text columns (``data``, ``preferences``) are parsed
  by the plan stage. Parquet and NDJSON keep their types.
* Input columns named ``row_number`` or ``source`` are renamed ``input_row_number`` /
  ``input_source``.
* Errors are :class:`~bulkbatch.errors.InputError` (or :class:`~bulkbatch.errors.UsageError`
  for a bad option), one line naming the file and, when DuckDB says so, the line, and the fix.
  No raw ``duckdb.Error`` escapes.
* Memory: the function sets ``preserve_insertion_order = true`` on the connection it is given
  and lowers ``memory_limit`` to :data:`MEMORY_LIMIT` when the connection's limit is higher, so
  DuckDB spills to disk instead of growing with the input.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb

from bulkbatch.errors import InputError, UsageError
from bulkbatch.state import MEMORY_LIMIT_ENV

__all__ = [
    "INPUT_EXTENSIONS",
    "MEMORY_LIMIT",
    "LoadInfo",
    "LoadOptions",
    "configure_connection",
    "fetch_one",
    "load_frame",
    "load_inputs",
    "quote_ident",
]

MEMORY_LIMIT = "1GB"
"""DuckDB memory limit set by load and plan (DuckDB spills to disk above it)."""

INPUT_EXTENSIONS: tuple[str, ...] = (
    ".parquet",
    ".pq",
    ".csv",
    ".csv.gz",
    ".tsv",
    ".ndjson",
    ".jsonl",
    ".json",
    ".ndjson.gz",
    ".jsonl.gz",
)
_FORMAT_BY_EXT: tuple[tuple[str, str], ...] = (
    (".parquet", "parquet"),
    (".pq", "parquet"),
    (".csv", "csv"),
    (".csv.gz", "csv"),
    (".tsv", "csv"),
    (".tsv.gz", "csv"),
    (".txt", "csv"),
    (".ndjson", "ndjson"),
    (".jsonl", "ndjson"),
    (".json", "ndjson"),
    (".ndjson.gz", "ndjson"),
    (".jsonl.gz", "ndjson"),
    (".json.gz", "ndjson"),
)
_ENCODINGS = {
    "utf-8": "utf-8",
    "utf8": "utf-8",
    "utf-8-sig": "utf-8",
    "utf-16": "utf-16",
    "utf16": "utf-16",
    "latin-1": "latin-1",
    "latin1": "latin-1",
    "iso-8859-1": "latin-1",
    "iso8859-1": "latin-1",
}
_SOURCE_COL = "__bb_source"
_REJECTS = "_bb_csv_rejects"
_REJECT_SCANS = "_bb_csv_reject_scans"
_LINE_PROBLEMS = {
    "TOO MANY COLUMNS": "has more fields than the header",
    "MISSING COLUMNS": "has fewer fields than the header",
    "UNQUOTED VALUE": "has a quote in the wrong place",
    "LINE SIZE OVER MAXIMUM": "is longer than the CSV reader allows",
}
_RESERVED = {"row_number": "input_row_number", "source": "input_source"}


@dataclass(frozen=True)
class LoadOptions:
    """What to load and how to read it.

    :param sources: paths, globs and folders, loaded in this order
    :param format: ``auto`` (by extension), ``csv``, ``parquet`` or ``ndjson``
    :param delimiter: CSV delimiter; ``None`` = sniffed
    :param quote: CSV quote character; ``None`` = sniffed
    :param encoding: CSV encoding (``utf-8``, ``utf-16``, ``latin-1``); ``None`` = UTF-8
    :param header: whether CSV files have a header row; ``None`` = sniffed
    """

    sources: tuple[str, ...]
    format: Literal["auto", "csv", "parquet", "ndjson"] = "auto"
    delimiter: str | None = None
    quote: str | None = None
    encoding: str | None = None
    header: bool | None = None


@dataclass(frozen=True)
class LoadInfo:
    """What was loaded.

    :param rows: rows in ``inputs``
    :param files: the resolved file paths, in load order
    :param columns: the input columns (without ``row_number`` / ``source``)
    :param fingerprint: sha256 over (path, size, mtime_ns) of each file, or over the content of
        an in-memory frame; changes when the data changes
    :param seconds: wall time of the load
    """

    rows: int
    files: tuple[str, ...]
    columns: tuple[str, ...]
    fingerprint: str
    seconds: float


def quote_ident(name: str) -> str:
    """``name`` as a double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def fetch_one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    """The first row of ``sql``, fetching the whole result.

    DuckDB 2.0 refuses other work (``register``, ...) on a connection whose last result was
    not fetched to the end, so never use ``fetchone()`` on the pipeline's connection.
    """
    rows = con.execute(sql).fetchall()
    return tuple(rows[0]) if rows else ()


def configure_connection(con: duckdb.DuckDBPyConnection) -> None:
    """Keep insertion order, turn DuckDB's progress bar off (it writes to stdout), and cap
    DuckDB's memory (only ever lowered) on ``con``."""
    try:
        con.execute("SET preserve_insertion_order = true")
        con.execute("SET enable_progress_bar = false")  # library code never prints
        row = fetch_one(con, "SELECT current_setting('memory_limit')")
        current = _parse_bytes(str(row[0]))
        # The user's BULKBATCH_MEMORY_LIMIT wins over this module's default cap.
        limit = os.environ.get(MEMORY_LIMIT_ENV, "").strip() or MEMORY_LIMIT
        cap = _parse_bytes(limit) or _parse_bytes(MEMORY_LIMIT) or 0
        if current is None or current > cap:
            con.execute(f"SET memory_limit = '{cap}B'")
    except duckdb.Error:  # pragma: no cover - settings are best effort
        pass


def _parse_bytes(text: str) -> int | None:
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B)?\s*", text, re.IGNORECASE)
    if not m:
        return None
    unit = (m.group(2) or "B").upper().replace("I", "")
    scale = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}[unit]
    return int(float(m.group(1)) * scale)


# ---------------------------------------------------------------------------- resolving files


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _is_input_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and any(name.endswith(ext) for ext in INPUT_EXTENSIONS)


def resolve_sources(sources: Sequence[str]) -> list[str]:
    """The files ``sources`` stand for, in load order (absolute, resolved paths)."""
    if not sources:
        raise UsageError("No input given: pass one or more files, globs or folders.")
    files: list[str] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if _is_input_file(p))
            if not found:
                raise InputError(
                    f"No input files in folder {source}: expected *.parquet, *.csv, *.csv.gz, "
                    "*.ndjson, *.jsonl or *.json files. Check the folder, or name the files."
                )
            files.extend(str(p.resolve()) for p in found)
        elif path.is_file():
            files.append(str(path.resolve()))
        elif _has_glob(source):
            matches = sorted(
                m
                for m in glob.glob(os.path.expanduser(source), recursive=True)
                if Path(m).is_file()
            )
            if not matches:
                raise InputError(
                    f"No files match {source}. Check the pattern and the folder it points at."
                )
            files.extend(str(Path(m).resolve()) for m in matches)
        else:
            raise InputError(
                f"Input not found: {source}. "
                "Check the path, or quote a glob so the shell does not expand it."
            )
    return files


def _format_of(file: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    name = file.lower()
    for ext, kind in sorted(_FORMAT_BY_EXT, key=lambda e: -len(e[0])):
        if name.endswith(ext):
            return kind
    raise UsageError(
        f"Cannot tell the format of {file} from its extension: "
        "pass --format csv, --format parquet or --format ndjson."
    )


def fingerprint_files(files: Iterable[str]) -> str:
    """sha256 over (path, size, mtime_ns) of each file, in order: changes when an input does."""
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------- reading


def _reader(kind: str, files: Sequence[str], options: LoadOptions) -> str:
    file_list = "[" + ", ".join(_lit(f) for f in files) + "]"
    common = f"filename = {_lit(_SOURCE_COL)}, union_by_name = true"
    if kind == "parquet":
        return f"read_parquet({file_list}, {common})"
    if kind == "ndjson":
        return f"read_json({file_list}, format = 'auto', {common})"
    # Lines that do not parse (ragged rows, stray quotes) are recorded instead of failing the
    # whole file or derailing the dialect sniffer; they become ``bad_row`` rejects.
    args = [
        file_list,
        f"filename = {_lit(_SOURCE_COL)}",
        "all_varchar = true",
        f"store_rejects = true, rejects_table = '{_REJECTS}', rejects_scan = '{_REJECT_SCANS}'",
    ]
    if options.delimiter is not None:
        args.append(f"delim = {_lit(options.delimiter)}")
    if options.quote is not None:
        args.append(f"quote = {_lit(options.quote)}")
    if options.header is not None:
        args.append(f"header = {'true' if options.header else 'false'}")
    if options.encoding is not None:
        enc = _ENCODINGS.get(options.encoding.strip().lower())
        if enc is None:
            raise UsageError(
                f"Unsupported --encoding {options.encoding}: use utf-8, utf-16 or latin-1 "
                "(or convert the file to UTF-8 first)."
            )
        args.append(f"encoding = {_lit(enc)}")
    return f"read_csv({', '.join(args)})"


_FILE_PATTERNS = (
    re.compile(r"file\s*=\s*(\S+)"),
    re.compile(r'file "([^"]+)"'),
    re.compile(r"[Ff]ile '([^']+)'"),
    re.compile(r'[Ff]ile "([^"]+)"'),
)


def _describe_files(files: Sequence[str]) -> str:
    if len(files) == 1:
        return files[0]
    return f"{files[0]} (and {len(files) - 1} more)"


def _read_error(exc: duckdb.Error, kind: str, files: Sequence[str]) -> InputError:
    """One line for a DuckDB read failure: the file, the line when known, and the fix."""
    text = str(exc)
    file = next((m.group(1) for p in _FILE_PATTERNS if (m := p.search(text))), None)
    where = file or _describe_files(files)
    line_m = re.search(r"CSV Error on Line: (\d+)", text) or re.search(r"in line (\d+)", text)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    first = re.sub(r"^[A-Za-z ]*Error: ", "", first).strip()
    first = re.sub(r"^CSV Error on Line: \d+\s*", "", first).strip()
    if kind == "csv":
        details = [ln.strip() for ln in text.splitlines()[1:] if ln.strip()]
        if not first or first.startswith("Original Line"):
            first = next(
                (ln for ln in details if not ln.startswith(("Original Line", "Possible"))),
                first,
            )
    first = first.rstrip(". ")
    line = f" (line {line_m.group(1)})" if line_m else ""
    if "unicode" in text.lower() or "not utf-8" in text.lower():
        fix = "Pass --encoding with the file's encoding (e.g. --encoding latin-1), or save it as UTF-8."
    elif kind == "csv":
        fix = "Check the file, or set --delimiter / --quote / --header to match it."
    elif kind == "parquet":
        fix = "Check that it is a complete Parquet file (re-export it), or pass the right --format."
    else:
        fix = "Check that each line is one JSON object (NDJSON), or pass the right --format."
    return InputError(f"Cannot read {where}{line}: {first}. {fix}")


def _describe(con: duckdb.DuckDBPyConnection, query: str) -> list[tuple[str, str]]:
    rows = con.execute(f"DESCRIBE SELECT * FROM {query}").fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def _select_list(columns: Sequence[tuple[str, str]], offset: int) -> str:
    parts = [
        f"{offset} + row_number() OVER () AS row_number",
        f"{quote_ident(_SOURCE_COL)} AS source",
    ]
    for name, _ in columns:
        if name == _SOURCE_COL:
            continue
        parts.append(f"{quote_ident(name)} AS {quote_ident(_RESERVED.get(name, name))}")
    return ", ".join(parts)


def _widen(con: duckdb.DuckDBPyConnection, described: Sequence[tuple[str, str]]) -> None:
    """Make ``inputs`` accept another group of files: add its new columns, and turn a column
    whose type differs between groups into text (JSON strings lose their quotes)."""
    have = {str(r[0]): str(r[1]) for r in con.execute("DESCRIBE inputs").fetchall()}
    for raw, typ in described:
        if raw == _SOURCE_COL:
            continue
        name = quote_ident(_RESERVED.get(raw, raw))
        old = have.get(_RESERVED.get(raw, raw))
        if old is None:
            con.execute(f"ALTER TABLE inputs ADD COLUMN {name} {typ}")
        elif old != typ and old != "VARCHAR":
            using = (
                f"CASE WHEN json_type({name}) = 'VARCHAR' THEN {name} ->> '$' "
                f"ELSE {name}::VARCHAR END"
                if old == "JSON"
                else f"{name}::VARCHAR"
            )
            con.execute(f"ALTER TABLE inputs ALTER COLUMN {name} TYPE VARCHAR USING ({using})")


def load_inputs(con: duckdb.DuckDBPyConnection, options: LoadOptions) -> LoadInfo:
    """Read ``options.sources`` into table ``inputs`` (replacing it), streamed by DuckDB.

    :raises InputError: a source is missing, matches nothing, is empty or cannot be read
    :raises UsageError: an option is wrong (unknown encoding, unknown extension)
    """
    started = time.perf_counter()
    files = resolve_sources(options.sources)
    kinds = [_format_of(f, options.format) for f in files]
    groups: list[tuple[str, list[str]]] = []
    for f, kind in zip(files, kinds, strict=True):
        # CSV files are read one at a time: DuckDB records unparseable lines (store_rejects)
        # only without union_by_name; different columns are still unioned by name below.
        if groups and groups[-1][0] == kind and kind != "csv":
            groups[-1][1].append(f)
        else:
            groups.append((kind, [f]))
    configure_connection(con)
    con.execute(
        "CREATE OR REPLACE TABLE load_rejects "
        "(row_number BIGINT, source VARCHAR, line BIGINT, reason VARCHAR)"
    )
    columns: list[str] = []
    rows = 0
    bad_lines: list[tuple[str, int, str]] = []
    for index, (kind, group) in enumerate(groups):
        reader = _reader(kind, group, options)
        try:
            described = _describe(con, reader)
            names = [_RESERVED.get(n, n) for n, _ in described if n != _SOURCE_COL]
            select = _select_list(described, rows)
            if index == 0:
                con.execute(f"CREATE OR REPLACE TABLE inputs AS SELECT {select} FROM {reader}")
            else:
                _widen(con, described)
                con.execute(f"INSERT INTO inputs BY NAME SELECT {select} FROM {reader}")
            count = fetch_one(con, "SELECT count(*) FROM inputs")
        except duckdb.OutOfMemoryException:
            raise  # not a bad file: the pipeline reports the memory budget
        except duckdb.Error as exc:
            raise _read_error(exc, kind, group) from None
        columns.extend(n for n in names if n not in columns)
        rows = int(count[0])
        if kind == "csv":
            bad_lines.extend(_csv_rejects(con, group))
    if bad_lines:
        # Unparseable lines are input rows too (the accounting must add up): they follow the
        # readable rows, in file and line order, with nothing but their source filled in.
        con.execute(
            "INSERT INTO inputs (row_number, source) SELECT * FROM (VALUES "
            + ", ".join("(?, ?)" for _ in bad_lines)
            + ")",
            [v for n, (src, _, _) in enumerate(bad_lines, rows + 1) for v in (n, src)],
        )
        con.execute(
            "INSERT INTO load_rejects VALUES " + ", ".join("(?, ?, ?, ?)" for _ in bad_lines),
            [
                v
                for n, (src, line, reason) in enumerate(bad_lines, rows + 1)
                for v in (n, src, line, reason)
            ],
        )
        rows += len(bad_lines)
    if rows == 0:
        raise InputError(
            f"Input is empty: {_describe_files(files)} has no data rows. "
            "Check that the export finished, or point at the right file."
        )
    return LoadInfo(
        rows=rows,
        files=tuple(files),
        columns=tuple(columns),
        fingerprint=fingerprint_files(files),
        seconds=time.perf_counter() - started,
    )


def _first_sentences(message: str) -> str:
    text = " ".join(str(message).split())
    return text if text.endswith(".") else text + "."


def _csv_rejects(
    con: duckdb.DuckDBPyConnection, files: Sequence[str]
) -> list[tuple[str, int, str]]:
    """The lines DuckDB could not parse in ``files``: (file, line, reason), in order.

    A file that is not valid UTF-8 is a whole-file problem with one fix (``--encoding``),
    so it stays an error rather than a reject per accented line.
    """
    found = con.execute(
        f"""
        SELECT s.file_path, e.line, list(DISTINCT e.error_type), any_value(e.csv_line),
               min(e.error_message)
        FROM {_REJECTS} e JOIN {_REJECT_SCANS} s USING (scan_id, file_id)
        GROUP BY ALL ORDER BY s.file_path, e.line
        """
    ).fetchall()
    con.execute(f"DROP TABLE IF EXISTS {_REJECTS}")
    con.execute(f"DROP TABLE IF EXISTS {_REJECT_SCANS}")
    order = {f: i for i, f in enumerate(files)}
    out: list[tuple[int, str, int, str]] = []
    for path, line, types, text, message in found:
        if "INVALID UNICODE" in types or "INVALID ENCODING" in types:
            raise InputError(
                f"Cannot read {path} (line {line}): {_first_sentences(message)} Pass "
                "--encoding with the file's encoding (e.g. --encoding latin-1), or save it "
                "as UTF-8."
            )
        problem = "; ".join(_LINE_PROBLEMS.get(t, f"{t.lower()}: {message}") for t in types)
        snippet = (text or "").strip()
        snippet = snippet if len(snippet) <= 120 else snippet[:117] + "..."
        out.append(
            (order.get(path, len(order)), path, int(line), f"line {line} {problem}: {snippet}")
        )
    out.sort()
    return [(path, line, reason) for _, path, line, reason in out]


def _frame_source(frame: object) -> tuple[str, object]:
    """A name for ``frame`` and an object DuckDB can scan (Arrow where possible)."""
    module = type(frame).__module__.split(".")[0]
    name = f"{module}.{type(frame).__name__}"
    if module == "polars":
        to_arrow = getattr(frame, "to_arrow", None)
        if to_arrow is not None:
            return name, to_arrow()
    return name, frame


def load_frame(con: duckdb.DuckDBPyConnection, frame: object) -> LoadInfo:
    """Load an in-memory table into ``inputs``: a polars or pandas DataFrame, a pyarrow Table or
    RecordBatchReader, or a DuckDB relation. Row order is kept.

    A DuckDB relation made on ``con`` is read as a subquery (streamed); one made elsewhere is
    read through Arrow. The ``source`` column holds the frame's type, e.g. ``polars.DataFrame``.
    """
    started = time.perf_counter()
    configure_connection(con)
    name, scannable = _frame_source(frame)
    view = "__bb_frame"
    try:
        if isinstance(frame, duckdb.DuckDBPyRelation):
            body: str | None = None
            try:
                sql = frame.sql_query()
                con.execute(f"DESCRIBE SELECT * FROM ({sql})")
                body = f"({sql})"
            except duckdb.Error:
                body = None
            if body is None:
                con.register(view, frame.to_arrow_table())
                body = quote_ident(view)
        else:
            con.register(view, scannable)
            body = quote_ident(view)
        described = [(n, t) for n, t in _describe(con, body) if n != _SOURCE_COL]
        parts = ["row_number() OVER () AS row_number", f"{_lit(name)} AS source"]
        parts += [f"{quote_ident(n)} AS {quote_ident(_RESERVED.get(n, n))}" for n, _ in described]
        con.execute(f"CREATE OR REPLACE TABLE inputs AS SELECT {', '.join(parts)} FROM {body}")
        row = fetch_one(
            con, "SELECT count(*), coalesce(bit_xor(hash(inputs)), 0)::VARCHAR FROM inputs"
        )
    except duckdb.OutOfMemoryException:
        raise  # not a bad frame: the pipeline reports the memory budget
    except duckdb.Error as exc:
        raise InputError(
            f"Cannot read the {name} given to load_frame: {str(exc).splitlines()[0]}. "
            "Pass a polars or pandas DataFrame, a pyarrow Table or RecordBatchReader, "
            "or a DuckDB relation."
        ) from None
    finally:
        with contextlib.suppress(duckdb.Error):
            con.unregister(view)
    rows = int(row[0])
    columns = tuple(_RESERVED.get(n, n) for n, _ in described)
    if rows == 0:
        raise InputError(
            f"Input is empty: the {name} has no rows. Pass a frame with at least one row."
        )
    h = hashlib.sha256()
    h.update(repr([(n, t) for n, t in described]).encode())
    h.update(f"\0{rows}\0{row[1]}".encode())
    return LoadInfo(
        rows=rows,
        files=(),
        columns=columns,
        fingerprint=h.hexdigest(),
        seconds=time.perf_counter() - started,
    )
