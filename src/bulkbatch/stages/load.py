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
  ``s3://`` objects, prefixes and globs are read the same way (:mod:`bulkbatch.stages.remote`),
  with the URL as ``source``.
* **Format** is taken from the extension unless ``format`` says otherwise. Several inputs are
  read "by name": a column missing from one file is NULL for its rows.
* **Order**: ``row_number`` follows the sources in the order given, the files of a glob or folder
  in path order, and the rows of a file in file order. It is assigned during the read, with
  ``preserve_insertion_order`` on (this function sets it), so there is no extra copy of the table
  and the order holds with several threads: for Parquet from each row's file and its position in
  the file (DuckDB's ``file_index`` and ``file_row_number``, plus the row counts of the files'
  footers), otherwise by DuckDB's streaming ``row_number() OVER ()``, which runs on one thread
  (10M Parquet rows: 20-29 s against 12-15 s).
* **CSV** (:mod:`bulkbatch.stages.csvread`): delimiter, quote and header are sniffed by DuckDB
  unless given; a UTF-8 BOM is tolerated; ``encoding`` may be any encoding Python knows
  (``cp1252`` too). Columns are read as text, then a column whose every value is a number, a
  boolean, a date or a timestamp gets that type (``infer_types``), except id-like columns
  (``*id``, zip/postal/phone names, values with a leading zero or ``+``), which stay text.
  Lines that do not fit the header's shape (ragged rows, a report's footer) become empty input
  rows recorded in ``load_rejects``. JSON text columns (``data``, ``preferences``) are parsed by
  the plan stage. Parquet and NDJSON keep their types.
* Input columns named ``row_number`` or ``source`` are renamed ``input_row_number`` /
  ``input_source``.
* Errors are :class:`~bulkbatch.errors.InputError` (or :class:`~bulkbatch.errors.UsageError`
  for a bad option), one line naming the file and, when DuckDB says so, the line, and the fix.
  No raw ``duckdb.Error`` escapes.
* Memory: the function sets ``preserve_insertion_order = true`` on the connection it is given
  and caps ``memory_limit`` (:func:`bulkbatch.db.configure_connection`), so DuckDB spills to
  disk instead of growing with the input.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import duckdb

from bulkbatch.db import (
    BUILD_SHARE,
    configure_connection,
    fetch_one,
    memory_share,
    quote_ident,
    quote_literal,
)
from bulkbatch.errors import InputError
from bulkbatch.options import option
from bulkbatch.stages.csvread import SOURCE_COL, CsvFile, csv_rejects, infer_types, open_csv
from bulkbatch.stages.jsonlines import malformed_line
from bulkbatch.stages.remote import GroupRead, group_read
from bulkbatch.stages.sources import (
    INPUT_EXTENSIONS,
    check_contents,
    fingerprint_files,
    format_of,
    resolve_sources,
)
from bulkbatch.storage import is_remote

__all__ = [
    "INPUT_EXTENSIONS",
    "LoadInfo",
    "LoadOptions",
    "fingerprint_files",
    "load_frame",
    "load_inputs",
    "resolve_sources",
]

_RESERVED = {"row_number": "input_row_number", "source": "input_source"}


@dataclass(frozen=True)
class LoadOptions:
    """What to load and how to read it.

    :param sources: paths, globs, folders and ``s3://`` URLs, loaded in this order
    :param format: ``auto`` (by extension), ``csv``, ``parquet`` or ``ndjson``
    :param delimiter: CSV delimiter; ``None`` = sniffed
    :param quote: CSV quote character; ``None`` = sniffed
    :param encoding: CSV encoding (``utf-8``, ``utf-16``, ``latin-1``, ``cp1252``, or any
        other Python codec name); ``None`` = UTF-8
    :param header: whether CSV files have a header row; ``None`` = sniffed
    :param infer_types: give CSV columns the type all their values share (id-like columns
        stay text); ``False`` keeps every CSV column text
    """

    sources: tuple[str, ...]
    format: Literal["auto", "csv", "parquet", "ndjson"] = "auto"
    delimiter: str | None = None
    quote: str | None = None
    encoding: str | None = None
    header: bool | None = None
    infer_types: bool = True


@dataclass(frozen=True)
class LoadInfo:
    """What was loaded.

    :param rows: rows in ``inputs``
    :param files: the resolved file paths, in load order
    :param columns: the input columns (without ``row_number`` / ``source``)
    :param fingerprint: sha256 over (path, size, mtime_ns) of each file, or over the content of
        an in-memory frame; changes when the data changes
    :param seconds: wall time of the load
    :param bad_lines: CSV lines that did not parse (kept as empty rows; plan rejects them)
    :param inferred_types: CSV columns given a type other than text, e.g. ``{"age": "BIGINT"}``
    """

    rows: int
    files: tuple[str, ...]
    columns: tuple[str, ...]
    fingerprint: str
    seconds: float
    bad_lines: int = 0
    inferred_types: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------- reading


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


def _error_text(text: str, kind: str) -> str:
    """The first meaningful sentence of a DuckDB read error."""
    first = text.strip().splitlines()[0] if text.strip() else "unknown error"
    first = re.sub(r"^[A-Za-z ]*Error: ", "", first).strip()
    first = re.sub(r"^CSV Error on Line: \d+\s*", "", first).strip()
    if kind == "csv" and (not first or first.startswith("Original Line")):
        details = [ln.strip() for ln in text.splitlines()[1:] if ln.strip()]
        first = next(
            (ln for ln in details if not ln.startswith(("Original Line", "Possible"))), first
        )
    return first.rstrip(". ")


def _read_fix(text: str, kind: str) -> str:
    enc = option("encoding").flag
    if "unicode" in text.lower() or "not utf-8" in text.lower():
        return f"Pass {enc} with the file's encoding (e.g. {enc} latin-1), or save it as UTF-8."
    if kind == "csv":
        d, q = option("delimiter").flag, option("quote").flag
        return f"Check the file, or set {d} / {q} to match it."
    if kind == "parquet":
        return (
            "Check that it is a complete Parquet file (re-export it), or pass the right "
            f"{option('format').flag}."
        )
    return (
        "Check that each line is one JSON object (NDJSON), or pass the right "
        f"{option('format').flag}."
    )


def _read_error(
    exc: duckdb.Error, kind: str, files: Sequence[str], read_path: str | None = None
) -> InputError:
    """One line for a DuckDB read failure: the file, the line when known, and the fix
    (``read_path``, a transcoded copy DuckDB read, is named as the original file)."""
    text = str(exc)
    if read_path is not None and files:
        text = text.replace(read_path, files[0])
    file = next((m.group(1) for p in _FILE_PATTERNS if (m := p.search(text))), None)
    if kind == "csv" and len(files) == 1:
        file = files[0]  # DuckDB may name a transcoded copy
    where = file or _describe_files(files)
    said = malformed_line(file, text) if kind == "ndjson" and file else None
    if said is not None:
        return InputError(f"Cannot read {where} {said}. {_read_fix(text, kind)}")
    line_m = re.search(r"CSV Error on Line: (\d+)", text) or re.search(r"in line (\d+)", text)
    line = f" (line {line_m.group(1)})" if line_m else ""
    return InputError(
        f"Cannot read {where}{line}: {_error_text(text, kind)}. {_read_fix(text, kind)}"
    )


def _describe(con: duckdb.DuckDBPyConnection, query: str) -> list[tuple[str, str]]:
    rows = con.execute(f"DESCRIBE SELECT * FROM {query}").fetchall()
    return [(str(r[0]), str(r[1])) for r in rows if r[0] != SOURCE_COL]


_STREAM_NUMBER = "row_number() OVER ()"
_VIRTUAL_COLUMNS = ("file_row_number", "file_index")


def _parquet_numbering(con: duckdb.DuckDBPyConnection, files: Sequence[str]) -> str:
    """SQL numbering the rows of ``read_parquet(files)`` from 1, in file then row order, on
    every thread: the file's first number (from the row counts in the files' footers) plus
    the row's position in its file. ``row_number() OVER ()`` if a footer cannot be matched."""
    try:
        counts = dict(
            con.execute(
                f"SELECT file_name, num_rows FROM parquet_file_metadata({_file_list(files)})"
            ).fetchall()
        )
    except duckdb.Error:
        return _STREAM_NUMBER  # the read itself reports what is wrong with the file
    if any(f not in counts for f in files):
        return _STREAM_NUMBER
    starts, total = [], 0
    for f in files:
        starts.append(total)
        total += int(counts[f])
    first = "0" if len(files) == 1 else f"[{', '.join(map(str, starts))}][file_index::BIGINT + 1]"
    return f"({first} + file_row_number + 1)"


def _select_list(
    columns: Sequence[tuple[str, str]], offset: int, source: str, numbering: str = _STREAM_NUMBER
) -> str:
    parts = [f"{offset} + {numbering} AS row_number", f"{source} AS source"]
    for name, _ in columns:
        parts.append(f"{quote_ident(name)} AS {quote_ident(_RESERVED.get(name, name))}")
    return ", ".join(parts)


def _widen(con: duckdb.DuckDBPyConnection, described: Sequence[tuple[str, str]]) -> None:
    """Make ``inputs`` accept another group of files: add its new columns, and turn a column
    whose type differs between groups into text (JSON strings lose their quotes)."""
    have = {str(r[0]): str(r[1]) for r in con.execute("DESCRIBE inputs").fetchall()}
    for raw, typ in described:
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


def _groups(files: Sequence[str], fmt: str) -> list[tuple[str, list[str]]]:
    """Consecutive files of one format, read in one call. CSV files are read one at a time:
    DuckDB records unparseable lines (store_rejects) only without union_by_name; different
    columns are still unioned by name when appended."""
    groups: list[tuple[str, list[str]]] = []
    for f in files:
        kind = format_of(f, fmt)
        same = groups and is_remote(groups[-1][1][0]) == is_remote(f)
        if same and groups[-1][0] == kind and kind != "csv":
            groups[-1][1].append(f)
        else:
            groups.append((kind, [f]))
    return groups


def _file_list(files: Sequence[str]) -> str:
    return "[" + ", ".join(quote_literal(f) for f in files) + "]"


def _reader(kind: str, files: Sequence[str]) -> str:
    common = f"filename = {quote_literal(SOURCE_COL)}, union_by_name = true"
    if kind == "parquet":
        return f"read_parquet({_file_list(files)}, {common})"
    return f"read_json({_file_list(files)}, format = 'auto', {common})"


def _one_map(con: duckdb.DuckDBPyConnection, reader: str) -> bool:
    """Whether DuckDB reads each record as one ``MAP`` column (``json``): it does past 200
    distinct keys most records lack (``map_inference_threshold``), e.g. profiles with their
    own traits, and the address columns would vanish into it."""
    described = _describe(con, reader)
    return len(described) == 1 and described[0][0] == "json" and described[0][1].startswith("MAP(")


def _deep_ndjson_reader(con: duckdb.DuckDBPyConnection, files: Sequence[str]) -> str:
    """A ``read_json`` that reads every top-level key as JSON, for NDJSON whose nesting is too
    deep for DuckDB's type detection (128 levels), or whose records DuckDB would read as one
    MAP (:func:`_one_map`): the plan rejects the deep values as ``bad_json`` and sends the
    rest, and reads JSON columns as it reads typed ones."""
    keys = con.execute(  # in order of first appearance: by record, then within it
        "SELECT k FROM (SELECT i, unnest(ks) AS k, unnest(range(len(ks))) AS p FROM "
        "(SELECT json_keys(json) AS ks, row_number() OVER () AS i "
        f"FROM read_ndjson_objects({_file_list(files)}))) GROUP BY k ORDER BY min((i, p))"
    ).fetchall()
    columns = ", ".join(f"{quote_literal(str(k[0]))}: 'JSON'" for k in keys)
    return (
        f"read_json({_file_list(files)}, format = 'newline_delimited', "
        f"columns = {{{columns}}}, filename = {quote_literal(SOURCE_COL)})"
    )


@dataclass
class _Loaded:
    """What the groups read so far added up to."""

    created: bool = False
    rows: int = 0
    columns: list[str] = field(default_factory=list)
    csv_columns: set[str] = field(default_factory=set)
    typed_columns: set[str] = field(default_factory=set)
    bad_lines: list[tuple[str, int, str]] = field(default_factory=list)


def _append(
    con: duckdb.DuckDBPyConnection,
    loaded: _Loaded,
    reader: str,
    source: str,
    numbering: str = _STREAM_NUMBER,
) -> list[tuple[str, str]]:
    """Read one group into ``inputs`` (creating it for the first); its columns.
    ``numbering`` numbers the group's rows from 1, in order."""
    described = _describe(con, reader)
    if any(n.lower() in _VIRTUAL_COLUMNS for n, _ in described):
        numbering = _STREAM_NUMBER  # the file's own column would shadow DuckDB's
    select = _select_list(described, loaded.rows, source, numbering)
    if not loaded.created:
        con.execute(f"CREATE OR REPLACE TABLE inputs AS SELECT {select} FROM {reader}")
        loaded.created = True
    else:
        _widen(con, described)
        con.execute(f"INSERT INTO inputs BY NAME SELECT {select} FROM {reader}")
    loaded.rows = int(fetch_one(con, "SELECT count(*) FROM inputs")[0])
    names = [_RESERVED.get(n, n) for n, _ in described]
    loaded.columns.extend(n for n in names if n not in loaded.columns)
    return described


def _load_group(
    con: duckdb.DuckDBPyConnection,
    loaded: _Loaded,
    kind: str,
    read: GroupRead,
    options: LoadOptions,
) -> None:
    group = read.files
    for f in group:
        try:
            check_contents(f, kind)
        except InputError as exc:  # a downloaded object is named by its URL
            raise InputError(str(exc).replace(f, read.names.get(f, f))) from None
    if kind != "csv":
        try:
            try:
                reader = read.reader or _reader(kind, group)
                if kind == "ndjson" and read.reader is None and _one_map(con, reader):
                    reader = _deep_ndjson_reader(con, group)
                numbering = _STREAM_NUMBER
                if kind == "parquet" and read.reader is None:
                    numbering = _parquet_numbering(con, group)
                described = _append(con, loaded, reader, read.source, numbering)
            except duckdb.InvalidInputException as exc:
                if kind != "ndjson" or "maximum recursion depth" not in str(exc):
                    raise
                reader = _deep_ndjson_reader(con, group)
                described = _append(con, loaded, reader, read.source)
        except duckdb.OutOfMemoryException:
            raise  # not a bad file: the pipeline reports the memory budget
        except duckdb.Error as exc:
            raise _read_error(exc, kind, group) from None
        loaded.typed_columns.update(_RESERVED.get(n, n) for n, _ in described)
        return
    csv: CsvFile = open_csv(con, group[0], options)
    if read.names:  # a downloaded object: named by its URL
        csv = replace(csv, path=read.names[group[0]], source=read.source)
    try:
        described = _append(con, loaded, csv.reader, csv.source)
        loaded.bad_lines.extend(csv_rejects(con, csv))
    except duckdb.OutOfMemoryException:
        raise
    except duckdb.Error as exc:
        raise _read_error(exc, kind, group, csv.read_path) from None
    finally:
        csv.close()
    loaded.csv_columns.update(_RESERVED.get(n, n) for n, _ in described)


def _append_bad_lines(con: duckdb.DuckDBPyConnection, loaded: _Loaded) -> None:
    """Unparseable lines are input rows too (the accounting must add up): they follow the
    readable rows, in file and line order, with nothing but their source filled in."""
    bad = loaded.bad_lines
    if not bad:
        return
    first = loaded.rows + 1
    con.execute(
        "INSERT INTO inputs (row_number, source) SELECT * FROM (VALUES "
        + ", ".join("(?, ?)" for _ in bad)
        + ")",
        [v for n, (src, _, _) in enumerate(bad, first) for v in (n, src)],
    )
    con.execute(
        "INSERT INTO load_rejects VALUES " + ", ".join("(?, ?, ?, ?)" for _ in bad),
        [v for n, (src, line, reason) in enumerate(bad, first) for v in (n, src, line, reason)],
    )
    loaded.rows += len(bad)


def load_inputs(con: duckdb.DuckDBPyConnection, options: LoadOptions) -> LoadInfo:
    """Read ``options.sources`` into table ``inputs`` (replacing it), streamed by DuckDB.

    :raises InputError: a source is missing, matches nothing, is empty or cannot be read
    :raises UsageError: an option is wrong (unknown encoding, unknown extension)
    """
    started = time.perf_counter()
    files = resolve_sources(options.sources)
    groups = _groups(files, options.format)
    configure_connection(con)
    with memory_share(con, _load_share(groups)):
        loaded, inferred = _load_files(con, options, files, groups)
    return LoadInfo(
        rows=loaded.rows,
        files=tuple(files),
        columns=tuple(loaded.columns),
        fingerprint=fingerprint_files(files),
        seconds=time.perf_counter() - started,
        bad_lines=len(loaded.bad_lines),
        inferred_types=inferred,
    )


def _load_share(groups: Sequence[tuple[str, list[str]]]) -> float:
    """DuckDB's share of its cap for the load: :data:`BUILD_SHARE` for Parquet, which needs
    little (10M rows: 466-474 MiB peak RSS under the whole cap, 366-373 under 0.7, as fast);
    the whole cap when any file is text. DuckDB's CSV reader holds buffers for every column:
    1,250 columns x 10,000 rows load under the whole 320MB cap and run out of memory under
    0.7 of it. JSON is read by a reader of the same kind and keeps the whole cap too (not
    measured)."""
    return BUILD_SHARE if all(kind == "parquet" for kind, _ in groups) else 1.0


def _load_files(
    con: duckdb.DuckDBPyConnection,
    options: LoadOptions,
    files: list[str],
    groups: list[tuple[str, list[str]]],
) -> tuple[_Loaded, dict[str, str]]:
    """Read the files into ``inputs``; what was loaded and the types inferred for CSV text."""
    con.execute(
        "CREATE OR REPLACE TABLE load_rejects "
        "(row_number BIGINT, source VARCHAR, line BIGINT, reason VARCHAR)"
    )
    loaded = _Loaded()
    for kind, group in groups:
        with group_read(con, kind, group) as read:
            _load_group(con, loaded, kind, read, options)
    _append_bad_lines(con, loaded)
    if loaded.rows == 0:
        raise InputError(
            f"Input is empty: {_describe_files(files)} has no data rows. "
            "Check that the export finished, or point at the right file."
        )
    _decode_text_blobs(con)
    inferred: dict[str, str] = {}
    if options.infer_types:
        text_columns = _text_columns(con, loaded.csv_columns - loaded.typed_columns)
        try:
            inferred = infer_types(con, text_columns)
        except duckdb.OutOfMemoryException:
            raise
        except duckdb.Error as exc:
            raise _read_error(exc, "csv", files) from None
    return loaded, inferred


def _decode_text_blobs(con: duckdb.DuckDBPyConnection) -> None:
    """Binary columns whose every value is UTF-8 become text. Hive, Impala and older Spark
    write strings as Parquet BINARY without the UTF8 annotation; DuckDB reads those as BLOB,
    whose text is escaped bytes ("Jos\\xC3\\xA9"). Other binary columns stay as they are.
    (``binary_as_string`` would fail the whole read on one column of real bytes.)"""
    described = con.execute("DESCRIBE inputs").fetchall()
    blobs = [quote_ident(str(r[0])) for r in described if str(r[1]) == "BLOB"]
    if not blobs:
        return
    counts = fetch_one(
        con,
        "SELECT "
        + ", ".join(
            f"count(*) FILTER (WHERE {c} IS NOT NULL AND try(decode({c})) IS NULL)" for c in blobs
        )
        + " FROM inputs",
    )
    for column, bad in zip(blobs, counts, strict=True):
        if not bad:
            con.execute(
                f"ALTER TABLE inputs ALTER COLUMN {column} TYPE VARCHAR USING decode({column})"
            )


def _text_columns(con: duckdb.DuckDBPyConnection, names: set[str]) -> list[str]:
    """The ``inputs`` columns among ``names`` that are text, in table order."""
    described = con.execute("DESCRIBE inputs").fetchall()
    return [str(r[0]) for r in described if str(r[0]) in names and str(r[1]) == "VARCHAR"]


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
        described = _describe(con, body)
        parts = ["row_number() OVER () AS row_number", f"{quote_literal(name)} AS source"]
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
    _decode_text_blobs(con)
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
