"""The load stage: formats, sources, order, and the exact error messages."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import duckdb
import orjson
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bulkbatch.db import configure_connection
from bulkbatch.errors import InputError, UsageError
from bulkbatch.stages.load import LoadOptions, load_frame, load_inputs


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    yield c
    c.close()


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def rows(con: duckdb.DuckDBPyConnection, sql: str = "SELECT * FROM inputs ORDER BY row_number"):
    return con.execute(sql).fetchall()


def test_csv_keeps_text_ids_and_sniffs_delimiter(con, tmp_path):
    f = write(tmp_path / "a.csv", "user_id;email;phone_number\n00123;A@x.com;+15551234567\n")
    info = load_inputs(con, LoadOptions((str(f),)))
    assert info.rows == 1
    assert info.columns == ("user_id", "email", "phone_number")
    assert info.files == (str(f.resolve()),)
    assert rows(con) == [(1, str(f.resolve()), "00123", "A@x.com", "+15551234567")]
    cols = [r[0] for r in con.execute("DESCRIBE inputs").fetchall()]
    assert cols[:2] == ["row_number", "source"]


def test_csv_overrides_and_latin1(con, tmp_path):
    f = write(tmp_path / "l.csv", "name|user_id\nJos\xe9|u1\n".encode("latin-1"))
    with pytest.raises(InputError) as e:
        load_inputs(con, LoadOptions((str(f),)))
    assert str(e.value) == (
        f"Cannot read {f.resolve()} (line 2): Invalid unicode (byte sequence mismatch) detected. "
        "This file is not utf-8 encoded. Pass --encoding with the file's encoding "
        "(e.g. --encoding latin-1), or save it as UTF-8."
    )
    load_inputs(con, LoadOptions((str(f),), encoding="latin-1", delimiter="|", header=True))
    assert rows(con, "SELECT name, user_id FROM inputs") == [("José", "u1")]


def test_unknown_encoding(con, tmp_path):
    f = write(tmp_path / "a.csv", "user_id\nu1\n")
    with pytest.raises(UsageError) as e:
        load_inputs(con, LoadOptions((str(f),), encoding="klingon"))
    assert str(e.value) == (
        "Unsupported --encoding klingon: use utf-8, utf-16, latin-1, cp1252 or another "
        "encoding Python knows (or convert the file to UTF-8 first)."
    )


def test_bom_is_tolerated(con, tmp_path):
    f = write(tmp_path / "b.csv", b"\xef\xbb\xbfuser_id,email\nu1,a@x.com\n")
    info = load_inputs(con, LoadOptions((str(f),)))
    assert info.columns == ("user_id", "email")


def test_gzip_csv(con, tmp_path):
    f = tmp_path / "a.csv.gz"
    f.write_bytes(gzip.compress(b"user_id\nu1\nu2\n"))
    assert load_inputs(con, LoadOptions((str(f),))).rows == 2


def test_ndjson_keeps_types(con, tmp_path):
    f = write(tmp_path / "a.ndjson", '{"user_id": "u1", "data": {"x": 1}}\n{"user_id": "u2"}\n')
    info = load_inputs(con, LoadOptions((str(f),)))
    assert info.rows == 2
    assert rows(con, "SELECT row_number, data.x FROM inputs") == [(1, 1), (2, None)]


def test_ndjson_with_many_optional_keys_keeps_its_columns(con, tmp_path):
    """Past 200 distinct keys, most in few records, DuckDB reads each record as one
    MAP column named ``json``: the address columns vanished ("No address column ...
    found json"), although every record has an e-mail."""
    lines = [orjson.dumps({"email": f"p{r}@x.com", f"trait_{r}": r}).decode() for r in range(300)]
    f = write(tmp_path / "profiles.ndjson", "\n".join(lines) + "\n")
    info = load_inputs(con, LoadOptions((str(f),)))
    assert info.rows == 300
    assert info.columns[:2] == ("email", "trait_0")
    assert len(info.columns) == 301
    assert rows(con, "SELECT email ->> '$', trait_7::INTEGER FROM inputs WHERE row_number = 8") == [
        ("p7@x.com", 7)
    ]


def test_parquet_struct_column(con, tmp_path):
    f = tmp_path / "a.parquet"
    con.execute(
        f"COPY (SELECT 'u' || i AS user_id, {{'n': i}} AS data FROM range(3) r(i)) TO '{f}'"
    )
    info = load_inputs(con, LoadOptions((str(f),)))
    assert info.columns == ("user_id", "data")
    assert rows(con, "SELECT row_number, user_id, data.n FROM inputs") == [
        (1, "u0", 0),
        (2, "u1", 1),
        (3, "u2", 2),
    ]


def test_parquet_text_stored_as_binary_is_read_as_text(con, tmp_path):
    """Hive, Impala and older Spark write strings as BINARY without the UTF8 annotation, and
    DuckDB reads them as BLOB: a name went out as "Jos\\xC3\\xA9". A binary column whose
    every value is UTF-8 is text; one with other bytes stays binary."""
    f = tmp_path / "a.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([b"u1", b"u2", None], pa.binary()),
                "data.name": pa.array(["José".encode(), "Zoë".encode(), b""], pa.binary()),
                "digest": pa.array([b"\xff\x00", b"ok", None], pa.binary()),
            }
        ),
        f,
    )
    load_inputs(con, LoadOptions((str(f),)))
    types = dict(rows(con, "SELECT column_name, column_type FROM (DESCRIBE inputs)"))
    assert (types["user_id"], types["data.name"], types["digest"]) == ("VARCHAR", "VARCHAR", "BLOB")
    assert rows(con, 'SELECT user_id, "data.name" FROM inputs ORDER BY row_number') == [
        ("u1", "José"),
        ("u2", "Zoë"),
        (None, ""),
    ]


def test_folder_glob_and_several_inputs_keep_order(con, tmp_path):
    write(tmp_path / "d" / "b.csv", "user_id\nb1\nb2\n")
    write(tmp_path / "d" / "a.csv", "user_id\na1\n")
    write(tmp_path / "d" / "notes.md", "ignored")
    write(tmp_path / "z.ndjson", '{"user_id": "z1", "extra": 5}\n')
    info = load_inputs(con, LoadOptions((str(tmp_path / "z.ndjson"), str(tmp_path / "d"))))
    assert [Path(f).name for f in info.files] == ["z.ndjson", "a.csv", "b.csv"]
    assert rows(con, "SELECT row_number, user_id, extra FROM inputs") == [
        (1, "z1", 5),
        (2, "a1", None),
        (3, "b1", None),
        (4, "b2", None),
    ]
    info = load_inputs(con, LoadOptions((str(tmp_path / "d" / "*.csv"),)))
    assert rows(con, "SELECT user_id FROM inputs ORDER BY row_number") == [
        ("a1",),
        ("b1",),
        ("b2",),
    ]


def test_order_kept_on_multi_file_multi_thread_load(con, tmp_path):
    con.execute("SET threads = 2")
    for k in range(3):
        con.execute(
            f"COPY (SELECT i AS v FROM range({k * 100_000}, {(k + 1) * 100_000}) r(i)) "
            f"TO '{tmp_path / f'p{k}.parquet'}' (ROW_GROUP_SIZE 10000)"
        )
        con.execute(
            f"COPY (SELECT i AS v FROM range({k * 100_000}, {(k + 1) * 100_000}) r(i)) "
            f"TO '{tmp_path / f'c{k}.csv'}'"
        )
    for pattern in ("p*.parquet", "c*.csv"):
        info = load_inputs(con, LoadOptions((str(tmp_path / pattern),)))
        assert info.rows == 300_000
        bad = con.execute(
            "SELECT count(*) FROM inputs WHERE v::BIGINT + 1 <> row_number "
            "OR rowid + 1 <> row_number"
        ).fetchall()
        assert bad == [(0,)], pattern


def test_parquet_rows_are_numbered_by_file_and_position(con, tmp_path):
    # Parquet rows are numbered from each row's file and its place in it (no one-thread
    # window): files of unequal sizes, an empty one, a column only one file has, several
    # row groups, two threads, and a CSV between two Parquet groups.
    con.execute("SET threads = 2")
    sizes = {"p0": 25_000, "p1": 0, "p2": 3, "p3": 40_001}
    (tmp_path / "d").mkdir()
    start = 0
    for name, n in sizes.items():
        extra = ", i * 2 AS twice" if name == "p3" else ""
        con.execute(
            f"COPY (SELECT i AS v{extra} FROM range({start}, {start + n}) r(i)) "
            f"TO '{tmp_path / 'd' / f'{name}.parquet'}' (ROW_GROUP_SIZE 7000)"
        )
        start += n
    total = start
    write(tmp_path / "m.csv", f"v\n{total}\n{total + 1}\n")
    con.execute(f"COPY (SELECT {total + 2} AS v) TO '{tmp_path / 'z.parquet'}'")
    sources = (str(tmp_path / "d"), str(tmp_path / "m.csv"), str(tmp_path / "z.parquet"))
    info = load_inputs(con, LoadOptions(sources))
    assert info.rows == total + 3
    bad = con.execute(
        "SELECT count(*) FROM inputs WHERE v::BIGINT + 1 <> row_number OR rowid + 1 <> row_number "
        "OR (twice IS NOT NULL AND twice::BIGINT <> 2 * v::BIGINT)"
    ).fetchall()
    assert bad == [(0,)]
    assert rows(con, "SELECT count(twice) FROM inputs") == [(40_001,)]


def test_parquet_columns_named_like_the_virtual_ones_do_not_number_the_rows(con, tmp_path):
    # A file's own column shadows DuckDB's virtual file_row_number / file_index: such a file
    # is numbered in read order instead.
    f = tmp_path / "a.parquet"
    con.execute(
        f"COPY (SELECT i * 10 AS file_row_number, 7 AS File_Index FROM range(3) t(i)) TO '{f}'"
    )
    load_inputs(con, LoadOptions((str(f), str(f))))
    assert rows(con, "SELECT row_number, file_row_number, File_Index FROM inputs") == [
        (1, 0, 7),
        (2, 10, 7),
        (3, 20, 7),
        (4, 0, 7),
        (5, 10, 7),
        (6, 20, 7),
    ]


def test_parquet_numbering_falls_back_to_the_stream_order(con, tmp_path):
    from bulkbatch.stages.load import _parquet_numbering

    f = tmp_path / "a.parquet"
    con.execute(f"COPY (SELECT 1 AS v) TO '{f}'")
    assert _parquet_numbering(con, [str(f)]) == "(0 + file_row_number + 1)"
    # a footer that cannot be matched or read: number in the read's order instead
    assert _parquet_numbering(con, [str(tmp_path / "missing.parquet")]) == "row_number() OVER ()"


def test_reserved_column_names_are_renamed(con, tmp_path):
    f = write(tmp_path / "a.csv", "user_id,source,row_number\nu1,ads,7\n")
    info = load_inputs(con, LoadOptions((str(f),)))
    assert info.columns == ("user_id", "input_source", "input_row_number")


def test_fingerprint_changes_with_the_file(con, tmp_path):
    f = write(tmp_path / "a.csv", "user_id\nu1\n")
    first = load_inputs(con, LoadOptions((str(f),))).fingerprint
    assert load_inputs(con, LoadOptions((str(f),))).fingerprint == first
    write(f, "user_id\nu1\nu2\n")
    assert load_inputs(con, LoadOptions((str(f),))).fingerprint != first


def test_missing_file(con):
    with pytest.raises(InputError) as e:
        load_inputs(con, LoadOptions(("data/nope.csv",)))
    assert str(e.value) == (
        "Input not found: data/nope.csv. "
        "Check the path, or quote a glob so the shell does not expand it."
    )


def test_a_pipe_is_named_as_one_not_as_missing(con, tmp_path):
    """``bulkbatch send <(psql ...)`` or a FIFO: it exists, so "not found" would mislead."""
    fifo = tmp_path / "audience.csv"
    os.mkfifo(fifo)
    with pytest.raises(InputError) as e:
        load_inputs(con, LoadOptions((str(fifo),)))
    assert str(e.value) == (
        f"{fifo} is not a regular file (a pipe, socket or device). Write its data to a file "
        "and pass that: a resumed run must be able to load the input again."
    )


def test_glob_matching_nothing(con, tmp_path):
    with pytest.raises(InputError) as e:
        load_inputs(con, LoadOptions((f"{tmp_path}/*.parquet",)))
    assert str(e.value) == (
        f"No files match {tmp_path}/*.parquet. Check the pattern and the folder it points at."
    )


def test_empty_folder(con, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as e:
        load_inputs(con, LoadOptions((str(tmp_path / "empty"),)))
    assert str(e.value) == (
        f"No input files in folder {tmp_path / 'empty'}: expected *.parquet, *.csv, *.tsv, "
        "*.ndjson, *.jsonl or *.json files (*.csv, *.ndjson and *.jsonl also .gz or .zst). "
        "Check the folder, or name the files."
    )


@pytest.mark.parametrize("content", ["", "user_id,email\n"])
def test_empty_file(con, tmp_path, content):
    f = write(tmp_path / "e.csv", content)
    with pytest.raises(InputError) as e:
        load_inputs(con, LoadOptions((str(f),)))
    assert str(e.value) == (
        f"Input is empty: {f.resolve()} has no data rows. "
        "Check that the export finished, or point at the right file."
    )


def test_corrupt_parquet(con, tmp_path):
    f = write(tmp_path / "bad.parquet", b"PAR1garbage")
    with pytest.raises(InputError) as e:
        load_inputs(con, LoadOptions((str(f),)))
    assert str(e.value) == (
        f"Cannot read {f.resolve()}: File '{f.resolve()}' too small to be a Parquet file. "
        "Check that it is a complete Parquet file (re-export it), or pass the right --format."
    )


@pytest.mark.parametrize(
    ("text", "line", "why", "shown"),
    [
        ('{"user_id": "u1"}\n{"user_id": 2\n', 2, "unexpected end of data", '{"user_id": 2'),
        (
            '{"user_id": "u1"}\n' * 3 + '{"user_id": "u2", bad\n{"user_id": "u3"}\n',
            4,
            "unexpected character",
            '{"user_id": "u2", bad',
        ),
        ('{"user_id": oops}\n{"user_id": "u3"}\n', 1, "unexpected character", '{"user_id": oops}'),
        ('{"user_id": "u1"}\n{"user_id": "u2"', 2, "unexpected end of data", '{"user_id": "u2"'),
    ],
)
def test_malformed_ndjson_names_the_line(con, tmp_path, text, line, why, shown):
    """DuckDB names the line after the bad one ("line 3" for a bad line 2, "record/value 2"
    for a bad first line); the message names the bad line and shows its start."""
    f = write(tmp_path / "bad.ndjson", text)
    with pytest.raises(InputError) as e:
        load_inputs(con, LoadOptions((str(f),)))
    assert str(e.value) == (
        f"Cannot read {f.resolve()} (line {line}): not valid JSON ({why}): {shown}. "
        "Check that each line is one JSON object (NDJSON), or pass the right --format."
    )


def test_malformed_ndjson_line_is_shown_short(con, tmp_path):
    f = write(tmp_path / "bad.ndjson", '{"user_id": "u1", "blob": "' + "x" * 500 + "\n")
    with pytest.raises(InputError) as e:
        load_inputs(con, LoadOptions((str(f),)))
    msg = str(e.value)
    assert "(line 1): not valid JSON (" in msg and len(msg) < 400 and "\n" not in msg
    assert '{"user_id": "u1", "blob": "xxx' in msg and "…" in msg


def test_unknown_extension(con, tmp_path):
    f = write(tmp_path / "a.xlsx", "x")
    with pytest.raises(UsageError) as e:
        load_inputs(con, LoadOptions((str(f),)))
    assert str(e.value) == (
        f"Cannot tell the format of {f.resolve()} from its extension: "
        "pass --format csv, --format parquet or --format ndjson."
    )
    write(tmp_path / "b.dat", "user_id\nu1\n")
    assert load_inputs(con, LoadOptions((str(tmp_path / "b.dat"),), format="csv")).rows == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: pl.DataFrame({"user_id": ["a", "b", "c"]}),
        lambda: pd.DataFrame({"user_id": ["a", "b", "c"]}),
        lambda: pa.table({"user_id": ["a", "b", "c"]}),
        lambda: pa.table({"user_id": ["a", "b", "c"]}).to_reader(),
    ],
)
def test_load_frame_keeps_order(con, make):
    info = load_frame(con, make())
    assert info.rows == 3
    assert info.files == ()
    assert rows(con, "SELECT row_number, user_id FROM inputs") == [
        (1, "a"),
        (2, "b"),
        (3, "c"),
    ]


def test_load_frame_relation_and_fingerprint(con):
    a = load_frame(con, con.sql("SELECT 'u' || i AS user_id FROM range(5) r(i)"))
    b = load_frame(con, duckdb.sql("SELECT 'u' || i AS user_id FROM range(5) r(i)"))
    assert a.rows == b.rows == 5
    assert a.fingerprint == b.fingerprint
    c = load_frame(con, pl.DataFrame({"user_id": ["u0", "u1", "u2", "u3", "u9"]}))
    assert c.fingerprint != a.fingerprint


def test_load_frame_empty(con):
    with pytest.raises(InputError) as e:
        load_frame(con, pl.DataFrame({"user_id": []}, schema={"user_id": pl.String}))
    assert str(e.value) == (
        "Input is empty: the polars.DataFrame has no rows. Pass a frame with at least one row."
    )


def test_csv_types_hold_for_every_row_not_just_the_first(con, tmp_path):
    lines = ["user_id,late,broken,code,phone_nr"]
    lines += [f"u{i},,{i},{i + 100},{i}" for i in range(5000)]  # 'late' is empty at first
    lines += ["u5000,7,x,0042,5"]  # 'broken' turns text; 'code' has a leading zero
    f = write(tmp_path / "big.csv", "\n".join(lines) + "\n")
    info = load_inputs(con, LoadOptions((str(f),)))
    assert info.inferred_types == {"late": "BIGINT"}  # phone_nr: id-like name, stays text
    last = rows(con, "SELECT late, broken, code FROM inputs WHERE user_id = 'u5000'")
    assert last == [(7, "x", "0042")]


@pytest.mark.timeout(120)  # a guard: it takes about 2 s; before, over ten minutes
def test_a_csv_thousands_of_columns_wide_loads_under_the_memory_cap(tmp_path):
    """Type inference planned one statement with five checks per column: 2,000 columns took
    over ten minutes (and a SIGTERM could not stop it: DuckDB does not interrupt planning),
    5,000 ran out of the 320MB cap planning it. Wider than about 3,000 columns, reading the
    CSV itself needs more than the default cap (the error says so, and how to give more)."""
    con = duckdb.connect()
    configure_connection(con)
    width = 2000
    typed = ["n_int", "n_dec", "flag", "day", "late"]
    header = ["email", *typed, *(f"t{i}" for i in range(width - 6))]
    lines = [",".join(header)]
    for r in range(200):
        values = [str(r), f"{r}.5", "true" if r % 2 else "false", f"2026-12-{r % 28 + 1:02d}"]
        values.append(str(r) if r > 150 else "")  # empty in most rows
        lines.append(",".join([f"p{r}@x.com", *values, *(f"x{r}" for _ in range(width - 6))]))
    f = write(tmp_path / "wide.csv", "\n".join(lines) + "\n")
    info = load_inputs(con, LoadOptions((str(f),)))
    assert len(info.columns) == width
    assert info.inferred_types == {
        "n_int": "BIGINT",
        "n_dec": "DOUBLE",
        "flag": "BOOLEAN",
        "day": "DATE",
        "late": "BIGINT",
    }
    assert rows(con, "SELECT n_int, late, t1993 FROM inputs WHERE email = 'p199@x.com'") == [
        (199, 199, "x199")
    ]


def test_a_frames_utf8_binary_column_is_text(con):
    frame = pa.table({"user_id": ["u1"], "name": pa.array(["José".encode()], pa.binary())})
    load_frame(con, frame)
    assert rows(con, "SELECT name FROM inputs") == [("José",)]
