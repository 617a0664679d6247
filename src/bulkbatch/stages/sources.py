"""Which files an input names: paths, globs, folders and object-store URLs, in load order;
the format of each file; and a fingerprint that changes when any of them does."""

from __future__ import annotations

import glob
import hashlib
import os
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from bulkbatch.errors import InputError, UsageError
from bulkbatch.options import option
from bulkbatch.storage import expand, fingerprint, is_remote

__all__ = [
    "INPUT_EXTENSIONS",
    "check_contents",
    "fingerprint_files",
    "format_of",
    "resolve_sources",
]

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
    ".csv.zst",
    ".ndjson.zst",
    ".jsonl.zst",
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
    (".csv.zst", "csv"),
    (".tsv.zst", "csv"),
    (".ndjson.zst", "ndjson"),
    (".jsonl.zst", "ndjson"),
    (".json.zst", "ndjson"),
)


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _is_input_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and any(name.endswith(ext) for ext in INPUT_EXTENSIONS)


def _folder_files(source: str, path: Path) -> list[str]:
    found = sorted(p for p in path.rglob("*") if _is_input_file(p))
    if not found:
        raise InputError(
            f"No input files in folder {source}: expected *.parquet, *.csv, *.tsv, *.ndjson, "
            "*.jsonl or *.json files (*.csv, *.ndjson and *.jsonl also .gz or .zst). Check the "
            "folder, or name the files."
        )
    return [str(p.resolve()) for p in found]


def _glob_files(source: str) -> list[str]:
    matches = sorted(
        m for m in glob.glob(os.path.expanduser(source), recursive=True) if Path(m).is_file()
    )
    if not matches:
        raise InputError(f"No files match {source}. Check the pattern and the folder it points at.")
    return [str(Path(m).resolve()) for m in matches]


def resolve_sources(sources: Sequence[str]) -> list[str]:
    """The files ``sources`` stand for, in load order (absolute, resolved paths)."""
    if not sources:
        raise UsageError("No input given: pass one or more files, globs or folders.")
    files: list[str] = []
    for source in sources:
        if is_remote(source):  # s3://bucket/key, a prefix or a glob
            files.extend(expand(source, INPUT_EXTENSIONS))
            continue
        path = Path(source).expanduser()
        if path.is_dir():
            files.extend(_folder_files(source, path))
        elif path.is_file():
            files.append(str(path.resolve()))
        elif _has_glob(source):
            files.extend(_glob_files(source))
        elif path.exists():  # a FIFO, <(process substitution), a device
            raise InputError(
                f"{source} is not a regular file (a pipe, socket or device). Write its data "
                "to a file and pass that: a resumed run must be able to load the input again."
            )
        else:
            raise InputError(
                f"Input not found: {source}. "
                "Check the path, or quote a glob so the shell does not expand it."
            )
    return files


def format_of(file: str, fmt: str) -> str:
    """``fmt``, or the format ``file``'s name says; a local file whose name says none is
    named for what its first bytes show when that is something else (a workbook, an archive)."""
    if fmt != "auto":
        return fmt
    name = file.lower()
    for ext, kind in sorted(_FORMAT_BY_EXT, key=lambda e: -len(e[0])):
        if name.endswith(ext):
            return kind
    check_contents(file, None)
    f = option("format").flag
    raise UsageError(
        f"Cannot tell the format of {file} from its extension: "
        f"pass {f} csv, {f} parquet or {f} ndjson."
    )


def fingerprint_files(files: Iterable[str]) -> str:
    """sha256 over (path, size, mtime_ns) of each file, in order: changes when an input does."""
    h = hashlib.sha256()
    for f in files:
        if is_remote(f):
            h.update(f"{f}\0{fingerprint(f)}\n".encode())
            continue
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# ------------------------------------------------------------------ what the first bytes say
#
# A reader given a workbook, an archive or a compression it lacks fails in its own terms: "not
# UTF-8, pass --encoding", "no address column: found PK...", "Input is empty". The first bytes
# name the file for what it is, and the fix.

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "zip"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "ole"),  # Excel 97-2003 (.xls)
    (b"PAR1", "parquet"),
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"),
)
_NAMED_BY = {"gzip": ".gz", "zstd": ".zst"}
"""Compressions DuckDB reads, and the name ending it decides them by."""
_SPREADSHEET_NAMES = (".xlsx", ".xlsm", ".xlsb", ".xls", ".ods", ".numbers")


_MARKUP = (b"<!doctype", b"<html", b"<?xml", b"<!--")
"""How an HTML or XML page starts: what ``curl -o`` saves when it gets a sign-in or an error
page (S3's ``<Error><Code>AccessDenied``) instead of the export."""


def _magic(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None  # reading it will say why
    if head.removeprefix(b"\xef\xbb\xbf").lstrip().lower().startswith(_MARKUP):
        return "markup"
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def _is_workbook(path: str) -> bool:
    if path.lower().endswith(_SPREADSHEET_NAMES):
        return True
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.startswith("xl/") or n == "content.xml" for n in names)


def _refusal(path: str, magic: str, kind: str | None) -> str | None:
    """What is wrong with reading ``path`` (first bytes ``magic``) as ``kind``, and the fix."""
    if magic == "ole" or (magic == "zip" and _is_workbook(path)):
        return (
            "it is a spreadsheet (an Excel or OpenDocument workbook), not CSV. Save it as "
            "CSV UTF-8 (or export it as Parquet) and pass that file"
        )
    if magic == "zip":
        return "it is a zip archive. Extract it and pass the files inside, or their folder"
    if magic == "markup":
        return (
            "it is an HTML or XML page, not data: perhaps a sign-in or error page saved in "
            "place of the export. Download the export again and check the file"
        )
    if magic in _NAMED_BY:
        if path.lower().endswith(_NAMED_BY[magic]) or kind == "parquet":
            return None
        ext = _NAMED_BY[magic]
        return (
            f"it is {magic}-compressed but its name does not end in {ext}. Rename it to end "
            f"in {ext}: the reader decompresses by the name"
        )
    if magic == "parquet":
        if kind == "parquet":
            return None
        return f"it is a Parquet file. Name it *.parquet, or pass {option('format').flag} parquet"
    return (
        f"it is {magic}-compressed, which the reader cannot decompress. Decompress it, or "
        "compress it with gzip (.gz) or zstd (.zst) instead"
    )


def check_contents(path: str, kind: str | None) -> None:
    """Refuse a local file that cannot be read as ``kind`` (None: no format known) for what
    its first bytes show it is: a workbook, an archive, a compression the reader lacks or that
    its name does not say, Parquet named as text.

    :raises InputError: one line naming the file, what it is and what to do
    """
    if is_remote(path):
        return
    magic = _magic(path)
    said = None if magic is None else _refusal(path, magic, kind)
    if said is not None:
        raise InputError(f"Cannot read {path}: {said}.")
