"""The file someone exported wrongly: every case ends in a clear one-line error (exit 1 or 2,
no traceback) or in reject rows with reasons, and the accounting still adds up.

The corpus is built by these tests under ``tests/data/bad/`` (git-ignored), so it is always
what the tests say it is.
"""

from __future__ import annotations

import bz2
import gzip
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from bulkbatch.cli import cli


def zstd_compress(data: bytes) -> bytes:
    """zstd bytes (the standard library has none before Python 3.14)."""
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    return bytes(sink.getvalue())


BAD = Path(__file__).resolve().parents[1] / "data" / "bad"


def _csv(name: str, text: str, encoding: str = "utf-8") -> Path:
    path = BAD / name
    path.write_bytes(text.encode(encoding))
    return path


def truncated_parquet() -> Path:
    good = BAD / "_good.parquet"
    pq.write_table(pa.table({"user_id": [f"u{i}" for i in range(5000)]}), good)
    data = good.read_bytes()
    path = BAD / "truncated.parquet"
    path.write_bytes(data[: len(data) // 2])
    good.unlink()
    return path


def mixed_schema_folder() -> Path:
    folder = BAD / "mixed"
    folder.mkdir()
    pq.write_table(
        pa.table({"user_id": ["a1", "a2"], "email": ["a1@x.com", "a2@x.com"]}), folder / "a.parquet"
    )
    pq.write_table(
        pa.table({"user_id": ["b1"], "phone_number": ["+15550001111"]}), folder / "b.parquet"
    )
    (folder / "c.csv").write_text("email,locale\nc1@x.com,de\n")
    return folder


def _bytes(name: str, data: bytes) -> Path:
    path = BAD / name
    path.write_bytes(data)
    return path


def _zipped(name: str, members: dict[str, str]) -> Path:
    path = BAD / name
    with zipfile.ZipFile(path, "w") as z:
        for member, text in members.items():
            z.writestr(member, text)
    return path


def _parquet_named(name: str) -> Path:
    path = BAD / name
    pq.write_table(pa.table({"user_id": ["u1"]}), path)
    return path


TWO = "user_id,email\nu1,u1@x.com\nu2,u2@x.com\n"
BIG_JSON = json.dumps({"blob": "x" * 100_000})

# name -> (build the input, expected[, words the error line must hold]) where expected is
#   ("error", exit_code, start of the one-line message), or
#   ("ok", {reason_code: count, ...} of rejects, extra checks on the plan report)
CASES: dict[str, tuple[Any, ...]] = {
    "truncated_parquet": (
        truncated_parquet,
        ("error", 1, "Error: Cannot read "),
    ),
    "ragged_csv": (
        lambda: _csv("ragged.csv", "user_id,email\nu1,u1@x.com\nu2,u2@x.com,EXTRA,MORE\nu3\n"),
        ("ok", {"bad_row": 2}, {"to_send": 1}),
    ),
    "latin1_without_flag": (
        lambda: _csv("latin1.csv", "user_id,email,data.name\nu1,u1@x.com,José Müller\n", "latin-1"),
        ("error", 1, "Error: Cannot read "),
    ),
    "utf8_bom": (
        lambda: _csv("bom.csv", "\ufeffuser_id,email\nu1,u1@x.com\nu2,u2@x.com\n"),
        ("ok", {}, {"to_send": 2}),
    ),
    "embedded_newlines_and_quotes": (
        lambda: _csv(
            "quotes.csv",
            'user_id,email,data.note\nu1,u1@x.com,"line one\nline two"\nu2,u2@x.com,"she said ""hi"""\n',
        ),
        ("ok", {}, {"to_send": 2}),
    ),
    "null_only_address_columns": (
        lambda: _csv("nulls.csv", "user_id,email,locale\n,,de\n,,fr\n"),
        ("ok", {"no_address": 2}, {"to_send": 0}),
    ),
    "duplicate_headers": (
        lambda: _csv("dupheaders.csv", "user_id,email,email\nu1,a@x.com,b@x.com\n"),
        ("ok", {}, {"to_send": 1}),
    ),
    "100kB_json_in_data": (
        lambda: _csv(
            "bigjson.csv",
            "user_id,email,data\nu1,u1@x.com," + json.dumps(BIG_JSON) + "\nu2,u2@x.com,{}\n",
        ),
        ("ok", {"too_large": 1}, {"to_send": 1}),
    ),
    "invalid_json_in_data": (
        lambda: _csv(
            "badjson.csv", 'user_id,email,data\nu1,u1@x.com,"{not json"\nu2,u2@x.com,"{""a"": 1}"\n'
        ),
        ("ok", {"bad_json": 1}, {"to_send": 1}),
    ),
    "nan_and_trailing_commas_in_data": (
        lambda: _csv(
            "lenient.csv",
            'user_id,data\nu1,"{""a"": 1}"\nu2,"{""a"": NaN}"\nu3,"{""a"": [1,]}"\n',
        ),
        ("ok", {"bad_json": 2}, {"to_send": 1}),
    ),
    "nan_inside_a_struct": (
        lambda: (
            pq.write_table(
                pa.table(
                    {
                        "user_id": ["u1", "u2"],
                        "data": [{"score": float("nan"), "tags": [float("inf")]}, None],
                    }
                ),
                BAD / "nanstruct.parquet",
            ),
            BAD / "nanstruct.parquet",
        )[1],
        ("ok", {}, {"to_send": 2}),
    ),
    # Excel's "Unicode Text" and Windows PowerShell write UTF-16 with a BOM; DuckDB read it as
    # UTF-8 (columns " u 1 , a 1 @ ...") and read big-endian as nothing at all.
    "utf16_le_with_bom": (
        lambda: _csv("u16le.csv", "\ufeff" + TWO.replace(",", "\t"), "utf-16-le"),
        ("ok", {}, {"to_send": 2}),
    ),
    "utf16_be_with_bom": (
        lambda: _csv("u16be.csv", "\ufeff" + TWO, "utf-16-be"),
        ("ok", {}, {"to_send": 2}),
    ),
    "utf16_le_without_bom": (
        lambda: _csv("u16nobom.csv", TWO, "utf-16-le"),
        ("ok", {}, {"to_send": 2}),
    ),
    # Excel's "sep=;" hint line, and a header with empty trailing names (which made DuckDB's
    # sniffer read the header as data: "No address column: found column0, column1, ...").
    "excel_sep_line": (
        lambda: _csv("sep.csv", "sep=;\nuser_id;email\nu1;u1@x.com\nu2;u2@x.com\n"),
        ("ok", {}, {"to_send": 2}),
    ),
    "empty_trailing_header_names": (
        lambda: _csv("trail.csv", "user_id,email,,,\nu1,u1@x.com,,,\nu2,u2@x.com,,,\n"),
        ("ok", {}, {"to_send": 2}),
    ),
    # Excel's General column saves a 12-digit id or phone as "1.23457E+11": the digits are
    # gone, and two such people were one recipient (one dropped as the other's duplicate).
    "excel_scientific_ids": (
        lambda: _csv(
            "sci.csv",
            "user_id,email,phone_number\n1.23457E+11,a@x.com,\n1.23457E+11,b@x.com,\n"
            "u3,c@x.com,1.55516E+10\nu4,d@x.com,+15551234567\n",
        ),
        ("ok", {"bad_user_id": 2, "bad_phone": 1}, {"to_send": 1}),
    ),
    "zstd_csv": (
        lambda: _bytes("z.csv.zst", zstd_compress(TWO.encode())),
        ("ok", {}, {"to_send": 2}),
    ),
    # What the first bytes show a reader cannot read: said as such, not as a wrong encoding,
    # "no address column", "empty" or a format flag that would not help.
    "excel_workbook": (
        lambda: _zipped("book.xlsx", {"[Content_Types].xml": "<x/>", "xl/workbook.xml": "<x/>"}),
        ("error", 1, "Error: Cannot read "),
        "is a spreadsheet",
    ),
    "excel_workbook_named_csv": (
        lambda: _zipped("book.csv", {"[Content_Types].xml": "<x/>", "xl/workbook.xml": "<x/>"}),
        ("error", 1, "Error: Cannot read "),
        "is a spreadsheet",
    ),
    "zip_archive": (
        lambda: _zipped("export.zip", {"a.csv": TWO}),
        ("error", 1, "Error: Cannot read "),
        "is a zip archive",
    ),
    "bzip2_csv": (
        lambda: _bytes("a.csv.bz2", bz2.compress(TWO.encode())),
        ("error", 1, "Error: Cannot read "),
        "bzip2",
    ),
    "gzip_named_csv": (
        lambda: _bytes("gz.csv", gzip.compress(TWO.encode())),
        ("error", 1, "Error: Cannot read "),
        "gzip-compressed but its name does not end in .gz",
    ),
    # `curl -o audience.csv URL` that saved a login or error page instead of the export.
    "html_page_named_csv": (
        lambda: _csv("page.csv", "\n  <!DOCTYPE html>\n<html><body>Sign in</body></html>\n"),
        ("error", 1, "Error: Cannot read "),
        "is an HTML or XML page",
    ),
    "s3_error_xml_named_ndjson": (
        lambda: _csv(
            "denied.ndjson",
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code></Error>',
        ),
        ("error", 1, "Error: Cannot read "),
        "is an HTML or XML page",
    ),
    "parquet_named_csv": (
        lambda: _parquet_named("pq.csv"),
        ("error", 1, "Error: Cannot read "),
        "is a Parquet file",
    ),
    "non_string_ids": (
        lambda: (
            pq.write_table(
                pa.table(
                    {
                        "user_id": pa.array([1, 2, 3], pa.int64()),
                        "email": ["a@x.com", "b@x.com", "c@x.com"],
                    }
                ),
                BAD / "intids.parquet",
            ),
            BAD / "intids.parquet",
        )[1],
        ("ok", {}, {"to_send": 3, "recipient": "1"}),
    ),
    "unicode_and_emoji_names": (
        lambda: _csv(
            "emoji.csv", "user_id,email,data.name\nu1,u1@x.com,Zoë 🚀\nu2,u2@x.com,李小龍\n"
        ),
        ("ok", {}, {"to_send": 2}),
    ),
    "empty_file": (
        lambda: _csv("empty.csv", ""),
        ("error", 1, "Error: Input is empty: "),
    ),
    "header_only": (
        lambda: _csv("header.csv", "user_id,email\n"),
        ("error", 1, "Error: Input is empty: "),
    ),
    "no_address_column": (
        lambda: _csv("noaddr.csv", "name,city\nAda,London\n"),
        ("error", 1, "Error: No address column in "),
    ),
    "mixed_schema_folder": (
        mixed_schema_folder,
        ("ok", {}, {"to_send": 4}),
    ),
    "bad_emails_and_phones": (
        lambda: _csv(
            "badaddr.csv",
            "user_id,email,phone_number\nu1,nope,\nu2,,12\nu3,ok@x.com,+15550001111\n",
        ),
        ("ok", {"bad_email": 1, "bad_phone": 1}, {"to_send": 1}),
    ),
}


def plan_json(source: Path, run_dir: Path) -> Result:
    """``bulkbatch --quiet plan SOURCE --event welcome --run-dir RUN_DIR --json``."""
    return CliRunner().invoke(
        cli,
        ["--quiet", "plan", str(source), "--event", "welcome", "--run-dir", str(run_dir), "--json"],
    )


@pytest.fixture(scope="module", autouse=True)
def corpus() -> None:
    shutil.rmtree(BAD, ignore_errors=True)
    BAD.mkdir(parents=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case: str, tmp_path: Path) -> None:
    build, expected, *said = CASES[case]
    source = build()
    result = plan_json(source, tmp_path / "r")
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    if expected[0] == "error":
        _, code, start = expected
        assert result.exit_code == code, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        assert lines[0].startswith(str(start)), lines[0]
        assert str(source.name) in lines[0] or str(source) in lines[0]
        assert all(str(part) in lines[0] for part in said), lines[0]
        return
    _, reasons, checks = expected
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    assert report["rows_read"] == report["to_send"] + report["duplicates"] + report["rejected"]
    assert report["rejected_by_reason"] == reasons
    assert report["to_send"] == checks["to_send"]  # type: ignore[index]
    if "recipient" in checks:  # type: ignore[operator]
        plan = pq.read_table(tmp_path / "r" / "plan.parquet").column("recipient").to_pylist()
        assert checks["recipient"] in plan  # type: ignore[index]
    for user in pq.read_table(tmp_path / "r" / "plan.parquet").column("user_json").to_pylist():
        orjson.loads(user)  # strict JSON, as Courier parses it: no NaN, no trailing comma
    rejects = pq.read_table(tmp_path / "r" / "rejects.parquet")
    assert rejects.num_rows == report["rejected"]
    assert all(rejects.column("reason").to_pylist())


def test_wrong_encoding_names_the_fix(tmp_path: Path) -> None:
    source = _csv("latin1b.csv", "user_id,email,data.name\nu1,u1@x.com,José\n", "latin-1")
    result = CliRunner().invoke(
        cli, ["plan", str(source), "--event", "welcome", "--run-dir", str(tmp_path / "r")]
    )
    assert result.exit_code == 1
    assert "--encoding" in result.output
    fixed = CliRunner().invoke(
        cli,
        ["--quiet", "plan", str(source), "--event", "welcome", "--encoding", "latin-1",
         "--run-dir", str(tmp_path / "r2"), "--json"],
    )  # fmt: skip
    assert fixed.exit_code == 0, fixed.output
    assert orjson.loads(fixed.output)["to_send"] == 1


def test_ragged_lines_are_rejected_with_their_line(tmp_path: Path) -> None:
    source = _csv("ragged2.csv", "user_id,email\nu1,u1@x.com\nu2,u2@x.com,EXTRA\nu3\nu4,u4@x.com\n")
    result = plan_json(source, tmp_path / "r")
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    assert (report["rows_read"], report["to_send"], report["rejected"]) == (4, 2, 2)
    rejects = pq.read_table(
        tmp_path / "r" / "rejects.parquet", columns=["row_number", "reason_code", "reason"]
    )
    assert rejects.to_pylist() == [
        {
            "row_number": 3,
            "reason_code": "bad_row",
            "reason": "line 3 has more fields than the header: u2,u2@x.com,EXTRA",
        },
        {
            "row_number": 4,
            "reason_code": "bad_row",
            "reason": "line 4 has fewer fields than the header: u3",
        },
    ]
