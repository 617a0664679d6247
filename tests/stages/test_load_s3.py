"""Audiences on S3 (#20): ``s3://`` inputs load exactly as the same files do from disk, a run
sent from S3 writes its results back to S3, and a replaced object is refused by name.

Against a real S3-compatible server (moto's server mode on 127.0.0.1, ``tests/s3server.py``).
"""

from __future__ import annotations

import datetime
import decimal
import gzip
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import bulkbatch
from bulkbatch.cli import cli
from bulkbatch.errors import InputError
from bulkbatch.stages.load import LoadOptions, load_inputs
from bulkbatch.state import RunState

if TYPE_CHECKING:
    from tests.s3server import S3

pytest_plugins = ["tests.s3server"]  # the s3 fixture: a bucket on a local S3 server
EXPORTS = Path(__file__).parents[1] / "data" / "exports"


@pytest.fixture
def con() -> Any:
    c = duckdb.connect()
    yield c
    c.close()


def _load(con: duckdb.DuckDBPyConnection, *sources: str, **kw: Any) -> list[tuple[Any, ...]]:
    load_inputs(con, LoadOptions(tuple(sources), **kw))
    return con.execute("SELECT * FROM inputs ORDER BY row_number").fetchall()


def _types(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    return [(str(r[0]), str(r[1])) for r in con.execute("DESCRIBE inputs").fetchall()]


def _same_as_local(
    con: duckdb.DuckDBPyConnection, local: list[Path], remote: list[str], **kw: Any
) -> list[tuple[Any, ...]]:
    """Load ``local`` then ``remote`` (the same files): equal rows, types and rejects, with
    each local path replaced by its URL in ``source``; the remote rows."""
    want = _load(con, *[str(p) for p in local], **kw)
    want_types = _types(con)
    want_rejects = con.execute("SELECT * FROM load_rejects ORDER BY row_number").fetchall()
    got = _load(con, *remote, **kw)
    assert _types(con) == want_types
    named = dict(zip([str(p.resolve()) for p in local], remote, strict=True))
    assert got == [(r[0], named[r[1]], *r[2:]) for r in want]
    rejects = con.execute("SELECT * FROM load_rejects ORDER BY row_number").fetchall()
    assert rejects == [(r[0], named[r[1]], *r[2:]) for r in want_rejects]
    return got


def test_parquet_from_s3_is_streamed_in_order_by_name(con, s3: S3, tmp_path):
    # several row groups, two files whose columns differ (one widened int32 -> int64)
    a, b = tmp_path / "part-0.parquet", tmp_path / "part-1.parquet"
    n = 70_000
    first = {"user_id": [f"u{i}" for i in range(n)], "n": pa.array(range(n), pa.int32())}
    pq.write_table(pa.table(first), a, row_group_size=9_000)
    pq.write_table(pa.table({"n": pa.array([7, 8], pa.int64()), "email": ["x@e.com", None]}), b)
    urls = [s3.put(f"aud/{p.name}", p) for p in (a, b)]
    got = _same_as_local(con, [a, b], urls)
    assert len(got) == n + 2 and got[n] == (n + 1, urls[1], None, 7, "x@e.com")
    # the glob, the prefix and the bucket name the same two objects
    for source in (s3.url("aud/*.parquet"), s3.url("aud/"), s3.url("aud"), f"s3://{s3.bucket}"):
        info = load_inputs(con, LoadOptions((source,)))
        assert info.files == tuple(urls) and info.rows == n + 2


def test_segment_parquet_with_structs(con, s3: S3):
    f = EXPORTS / "segment_users.parquet"
    _same_as_local(con, [f], [s3.put("exports/segment_users.parquet", f)])


def test_parquet_types_are_those_of_read_parquet(con, s3: S3, tmp_path):
    day = datetime.datetime(2026, 1, 2, 3, 4, 5)
    f = tmp_path / "types.parquet"
    table = {
        "ts_s": pa.array([day], pa.timestamp("s")),
        "ts_ms": pa.array([day], pa.timestamp("ms")),
        "ts_ns": pa.array([day], pa.timestamp("ns")),
        "ts_tz": pa.array([day], pa.timestamp("ms", tz="UTC")),
        "seen": pa.array([[day]], pa.list_(pa.timestamp("ms"))),
        "nested": pa.array(
            [{"at": day, "n": 1}], pa.struct({"at": pa.timestamp("ms"), "n": pa.int8()})
        ),
        "wait": pa.array([5], pa.duration("s")),
        "price": pa.array([decimal.Decimal("1.25")], pa.decimal128(10, 2)),
        "tags": pa.array(["a"]).dictionary_encode(),
        "blob": pa.array([b"\x00"], pa.binary()),
    }
    pq.write_table(pa.table(table), f)
    _same_as_local(con, [f], [s3.put("types.parquet", f)])


def test_a_corrupt_parquet_object_is_named(con, s3: S3, tmp_path):
    f = tmp_path / "c.parquet"
    pq.write_table(pa.table({"user_id": [f"u{i}" for i in range(50_000)]}), f)
    body = bytearray(f.read_bytes())
    body[1000:20_000] = bytes((b * 7 + 3) % 256 for b in body[1000:20_000])
    url = s3.put("c.parquet", bytes(body))
    with pytest.raises(InputError) as e:
        load_inputs(con, LoadOptions((url,)))
    assert str(e.value).startswith(f"Cannot read {url}: ")
    assert str(e.value).endswith(
        "Check that it is a complete Parquet file (re-export it), or pass the right --format."
    )


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("salesforce_report.csv", {}),  # a report footer: bad lines kept as rejects
        ("mailchimp_members.csv", {}),  # inferred types, id-like text columns
        ("excel_cp1252.csv", {"encoding": "cp1252"}),  # transcoded first
        ("excel_utf16.csv", {"encoding": "utf-16"}),
    ],
)
def test_csv_from_s3_is_read_as_the_local_file(con, s3: S3, name, kw):
    f = EXPORTS / name
    got = _same_as_local(con, [f], [s3.put(f"exports/{name}", f)], **kw)
    assert got


def test_gzipped_csv_and_ndjson_groups(con, s3: S3, tmp_path):
    csv = tmp_path / "a.csv.gz"
    csv.write_bytes(gzip.compress(b"user_id,age\n007,41\nu2,x\n"))
    one, two = tmp_path / "b.ndjson", tmp_path / "c.jsonl"
    one.write_text('{"user_id": "u3", "age": 3, "data": {"k": 1}}\n{"user_id": "u4"}\n')
    two.write_text('{"user_id": "u5", "age": 2.5, "email": "e@x.com"}\n')
    local = [csv, one, two]
    remote = [s3.put(f"mix/{p.name}", p) for p in local]
    got = _same_as_local(con, local, remote)
    assert [r[1] for r in got] == [remote[0]] * 2 + [remote[1]] * 2 + [remote[2]]
    # read as one NDJSON group, as local files are: age is a DOUBLE for both files
    load_inputs(con, LoadOptions(tuple(remote[1:])))
    assert ("age", "DOUBLE") in _types(con)


def test_local_and_s3_inputs_mix_in_order(con, s3: S3, tmp_path):
    local = tmp_path / "l.parquet"
    pq.write_table(pa.table({"user_id": ["a", "b"]}), local)
    url = s3.put("r.parquet", local)
    got = _load(con, str(local), url, str(local))
    assert [(r[0], r[1]) for r in got] == [
        (1, str(local.resolve())),
        (2, str(local.resolve())),
        (3, url),
        (4, url),
        (5, str(local.resolve())),
        (6, str(local.resolve())),
    ]


def test_missing_objects_and_buckets_are_named(con, s3: S3):
    s3.put("aud/a.parquet", b"not parquet at all")
    cases = {
        s3.url("aud/none.parquet"): f"Input not found: {s3.url('aud/none.parquet')}.",
        s3.url("aud/*.csv"): f"No objects match {s3.url('aud/*.csv')}.",
        "s3://no-such-bucket-x/a.parquet": "bucket 'no-such-bucket-x' does not exist at http",
        s3.url("aud/a.parquet"): f"Cannot read {s3.url('aud/a.parquet')}: ",
    }
    for source, expected in cases.items():
        with pytest.raises(InputError) as e:
            load_inputs(con, LoadOptions((source,)))
        message = str(e.value)
        assert expected in message, message
        assert "\n" not in message and s3.secret not in message and s3.key_id not in message


def test_bad_csv_lines_and_errors_name_the_url_not_the_copy(con, s3: S3):
    url = s3.put("bad.csv", "name\nJos\xe9\n".encode("latin-1"))
    with pytest.raises(InputError) as e:
        load_inputs(con, LoadOptions((url,)))
    assert str(e.value).startswith(f"Cannot read {url} (line 2): ")
    with pytest.raises(InputError) as e:
        load_inputs(con, LoadOptions((url,), encoding="shift_jis"))
    assert str(e.value).startswith(f"Cannot read {url}: byte ")


# ------------------------------------------------------------------------- end to end


def test_send_from_s3_then_results_to_s3(s3: S3, tmp_path):
    n = 300
    people = pl.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "email": [f"u{i}@example.com" if i % 50 else None for i in range(n)],
        }
    )
    for part in range(3):
        local = tmp_path / f"part-{part}.parquet"
        people[part * 100 : (part + 1) * 100].write_parquet(local)
        s3.put(f"aud/part-{part}.parquet", local)
    run_dir = tmp_path / "run"
    run = bulkbatch.send(
        s3.url("aud/*.parquet"), event="welcome", emulator=True, run_dir=run_dir, poll_interval=0.02
    )
    counts = run.summary()["counts"]
    assert counts["input_rows"] == n and counts["ingested"] == n
    state = RunState.load(run_dir)
    assert sorted(state.inputs["file_fingerprints"]) == [
        s3.url(f"aud/part-{i}.parquet") for i in range(3)
    ]
    assert state.spec["sources"] == [s3.url("aud/*.parquet")]  # as given: resumable anywhere

    out = s3.url("out/results.parquet")
    result = CliRunner().invoke(cli, ["results", str(run_dir), "--out", out])
    assert result.exit_code == 0, result.output
    assert f"uploaded  {out}" in result.output
    got = pl.read_parquet(s3.get("out/results.parquet"))
    assert got.height == n and got["row_number"].to_list() == list(range(1, n + 1))
    assert set(got["outcome"]) == {"ingested"}
    assert got.equals(run.read_results())

    # a bad destination fails before anything is written, and says what to do
    bad = CliRunner().invoke(cli, ["results", str(run_dir), "--out", s3.url("out/r.csv")])
    assert bad.exit_code == 2 and "does not end in .parquet" in bad.output
    # a folder (ending in /) gets the results and the summary: a shard published for merge
    folder = CliRunner().invoke(cli, ["results", str(run_dir), "--out", s3.url("shard-0/")])
    assert folder.exit_code == 0, folder.output
    assert {"shard-0/results.parquet", "shard-0/summary.json"} <= set(s3.listing())
    missing = CliRunner().invoke(
        cli, ["results", str(run_dir), "--out", "s3://no-such-bucket-y/r.parquet", "--json"]
    )
    assert missing.exit_code == 1
    assert "Cannot write s3://no-such-bucket-y/r.parquet: bucket 'no-such-bucket-y'" in (
        missing.output
    )
    assert s3.secret not in missing.output and s3.key_id not in missing.output


def test_the_same_command_finds_its_run_and_a_replaced_object_is_refused(s3: S3, tmp_path):
    body = pl.DataFrame({"user_id": [f"u{i}" for i in range(40)]})
    local = tmp_path / "a.parquet"
    body.write_parquet(local)
    url = s3.put("aud/a.parquet", local)
    runs = tmp_path / "runs"
    first = bulkbatch.plan(url, event="welcome", runs_root=runs)
    again = bulkbatch.plan(url, event="welcome", runs_root=runs)
    assert again.path == first.path  # named from the URL and the object's size and ETag
    # simulate a crash during load: the run exists, its rows were never stored
    state = RunState.load(first.path)
    state.stages.clear()
    state.save()
    (first.path / "run.duckdb").unlink()
    body[:39].write_parquet(local)  # the export was replaced in the meantime
    s3.put("aud/a.parquet", local)
    with pytest.raises(InputError) as e:
        bulkbatch.Run(first.path).resume()
    assert str(e.value).startswith(f"Input {url} changed (size or ETag) since run ")
    s3.client.delete_object(Bucket=s3.bucket, Key="aud/a.parquet")
    with pytest.raises(InputError) as e:
        bulkbatch.Run(first.path).resume()
    assert str(e.value).startswith(f"Input {url} is gone since run ")


def test_run_file_inputs_may_be_urls(s3: S3, tmp_path):
    local = tmp_path / "a.parquet"
    pl.DataFrame({"user_id": ["a", "b", "c"]}).write_parquet(local)
    url = s3.put("aud/a.parquet", local)
    runfile = tmp_path / "campaign.toml"
    runfile.write_text(f'inputs = ["{url}"]\nevent = "welcome"\n')
    args = ["--quiet", "plan", "--config", str(runfile), "--run-dir", str(tmp_path / "r")]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output)["rows_read"] == 3
