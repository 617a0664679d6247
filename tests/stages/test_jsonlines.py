"""Naming the bad line of NDJSON that DuckDB refuses (the load tests cover DuckDB's errors)."""

from __future__ import annotations

import gzip
from pathlib import Path

from bulkbatch.stages.jsonlines import malformed_line

LINES = '{"a": 1}\n{"a": 2,, }\n{"a": 3}\n'


def _error(line: int) -> str:
    return f'Malformed JSON in file "x", at byte 9 in line {line}: unexpected character'


def test_the_line_after_the_bad_one_names_the_bad_one(tmp_path: Path) -> None:
    f = tmp_path / "a.ndjson"
    f.write_text(LINES)
    said = malformed_line(str(f), _error(3))
    assert said == '(line 2): not valid JSON (unexpected character): {"a": 2,, }'


def test_a_reader_that_counts_right_is_named_right(tmp_path: Path) -> None:
    f = tmp_path / "a.ndjson"
    f.write_text(LINES)
    assert malformed_line(str(f), _error(2)) == malformed_line(str(f), _error(3))


def test_gzip_is_read_through(tmp_path: Path) -> None:
    f = tmp_path / "a.ndjson.gz"
    f.write_bytes(gzip.compress(LINES.encode()))
    assert (malformed_line(str(f), _error(3)) or "").startswith("(line 2): ")


def test_no_single_line_to_blame_keeps_duckdbs_words(tmp_path: Path) -> None:
    f = tmp_path / "a.ndjson"
    f.write_text('{"a": 1}\n{"a": 2}\n{"a": 3}\n')  # both candidates parse
    assert malformed_line(str(f), _error(3)) is None
    f.write_text("{oops\n{oops\n")  # both fail
    assert malformed_line(str(f), _error(2)) is None
    assert malformed_line(str(f), "IO Error: something else") is None
    assert malformed_line(str(tmp_path / "gone.ndjson"), _error(2)) is None
