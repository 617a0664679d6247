"""Which files an input names: paths, globs, folders and object-store URLs, in load order;
the format of each file; and a fingerprint that changes when any of them does."""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from bulkbatch.errors import InputError, UsageError
from bulkbatch.options import option
from bulkbatch.storage import expand, fingerprint, is_remote

__all__ = ["INPUT_EXTENSIONS", "fingerprint_files", "format_of", "resolve_sources"]

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


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _is_input_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and any(name.endswith(ext) for ext in INPUT_EXTENSIONS)


def _folder_files(source: str, path: Path) -> list[str]:
    found = sorted(p for p in path.rglob("*") if _is_input_file(p))
    if not found:
        raise InputError(
            f"No input files in folder {source}: expected *.parquet, *.csv, *.csv.gz, "
            "*.ndjson, *.jsonl or *.json files. Check the folder, or name the files."
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
    if fmt != "auto":
        return fmt
    name = file.lower()
    for ext, kind in sorted(_FORMAT_BY_EXT, key=lambda e: -len(e[0])):
        if name.endswith(ext):
            return kind
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
