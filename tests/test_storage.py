"""bulkbatch.storage (#20): s3:// URLs, listing and globs, fingerprints, copies both ways,
Parquet writes, and errors that say what to do without ever showing a credential.

Against a real S3-compatible server (moto's server mode on 127.0.0.1, ``tests/s3server.py``).
"""

from __future__ import annotations

import gzip
import io
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bulkbatch import storage
from bulkbatch.errors import BulkBatchError, InputError, StateError, UsageError

if TYPE_CHECKING:
    from tests.s3server import S3

pytest_plugins = ["tests.s3server"]  # the s3 fixture: a bucket on a local S3 server
EXTS = (".parquet", ".csv", ".csv.gz", ".ndjson")


def _clean(message: str, s3: S3) -> str:
    """``message``, checked to be one line holding no credential."""
    for secret in (s3.secret, s3.key_id, s3.token):
        assert secret not in message
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------ URLs


@pytest.mark.parametrize(
    ("path", "remote"),
    [
        ("s3://bkt/aud/a.parquet", True),
        (Path("s3://bkt/aud/a.parquet"), True),  # pathlib drops a slash: still a URL
        ("S3://bkt/a.csv", True),
        ("gs://bkt/a.csv", True),  # a URL, refused by parse_url with a clear message
        ("file:///tmp/a.csv", False),
        ("/tmp/a.csv", False),
        ("data/a.csv", False),
        ("C:/exports/a.csv", False),
    ],
)
def test_is_remote(path: str | Path, remote: bool) -> None:
    assert storage.is_remote(path) is remote


def test_parse_url() -> None:
    assert storage.parse_url("s3://bkt/aud/a.parquet") == storage.ObjectUrl("bkt", "aud/a.parquet")
    assert storage.parse_url(Path("s3://bkt/a")).url == "s3://bkt/a"
    assert storage.parse_url("s3://bkt").path == "bkt"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "gs://bkt/a.csv",
            (
                "Unsupported URL gs://bkt/a.csv: only s3:// URLs are read and written (Amazon S3, or "
                "an S3-compatible server through AWS_ENDPOINT_URL). Use s3://BUCKET/KEY or a local "
                "path."
            ),
        ),
        (
            "s3:///a.csv",
            (
                "Bad S3 URL s3:///a.csv: '' is not a bucket name. Write it as s3://BUCKET/KEY "
                "(3 to 255 letters, digits, dots, hyphens or underscores)."
            ),
        ),
        ("s3://", "Bad S3 URL s3://: '' is not a bucket name."),
        ("s3://b/a.csv", "Bad S3 URL s3://b/a.csv: 'b' is not a bucket name."),
    ],
)
def test_bad_urls_are_usage_errors(url: str, message: str) -> None:
    with pytest.raises(UsageError) as e:
        storage.parse_url(url)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("url", ["s3://bkt", "s3://bkt/", "s3://bkt/out/", "s3://bkt/*.parquet"])
def test_a_destination_names_one_object(url: str) -> None:
    with pytest.raises(UsageError) as e:
        storage.destination(url)
    assert str(e.value).endswith("name one object, e.g. s3://bkt/results.parquet.")


def test_bad_endpoint_url(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "ftp://user:hunter2@127.0.0.1:9000")
    with pytest.raises(UsageError) as e:
        storage.filesystem_for(s3.url("a"))
    assert str(e.value) == (
        "AWS_ENDPOINT_URL is not an http:// or https:// URL. Set it to the S3 server's address, "
        "e.g. http://127.0.0.1:9000, or unset it for Amazon S3."
    )


# --------------------------------------------------------------------------- listing


@pytest.fixture
def tree(s3: S3) -> S3:
    for key in (
        "aud/b.parquet",
        "aud/a.parquet",
        "aud/sub/c.parquet",
        "aud/notes.txt",
        "aud-2/d.csv",
        "aud/x.csv.gz",
        "other/e.ndjson",
        "docs/readme.txt",
    ):
        s3.put(key, b"x")
    return s3


@pytest.mark.parametrize(
    ("pattern", "keys"),
    [
        ("aud/a.parquet", ["aud/a.parquet"]),
        ("aud/*.parquet", ["aud/a.parquet", "aud/b.parquet"]),
        ("aud/**/*.parquet", ["aud/a.parquet", "aud/b.parquet", "aud/sub/c.parquet"]),
        ("aud*/*.csv*", ["aud-2/d.csv", "aud/x.csv.gz"]),  # by key, as glob.glob sorts
        ("a?d/[ab].parquet", ["aud/a.parquet", "aud/b.parquet"]),
        ("aud/[!a].parquet", ["aud/b.parquet"]),
        # a prefix: every input file below it, folder by folder as a local folder's are
        # sorted (notes.txt is not an input file)
        ("aud", ["aud/a.parquet", "aud/b.parquet", "aud/sub/c.parquet", "aud/x.csv.gz"]),
        ("aud/", ["aud/a.parquet", "aud/b.parquet", "aud/sub/c.parquet", "aud/x.csv.gz"]),
        (
            "",
            [
                "aud/a.parquet",
                "aud/b.parquet",
                "aud/sub/c.parquet",
                "aud/x.csv.gz",
                "aud-2/d.csv",
                "other/e.ndjson",
            ],
        ),
    ],
)
def test_expand(tree: S3, pattern: str, keys: list[str]) -> None:
    assert storage.expand(tree.url(pattern), EXTS) == [tree.url(k) for k in keys]


def test_nothing_there_is_named(tree: S3) -> None:
    cases = {
        tree.url("aud/none.parquet"): (
            f"Input not found: {tree.url('aud/none.parquet')}. Check the bucket and key."
        ),
        tree.url("aud/*.json"): (
            f"No objects match {tree.url('aud/*.json')}. Check the pattern and prefix."
        ),
        tree.url("empty/"): f"Input not found: {tree.url('empty/')}. Check the bucket and key.",
        tree.url("docs/"): (
            f"No input files under {tree.url('docs/')}: expected .parquet, .csv, .csv.gz, "
            ".ndjson ... objects. Check the prefix, or name the objects."
        ),
    }
    for bucket_url in ("s3://no-such-bucket-z/a.parquet", "s3://no-such-bucket-z/*.parquet"):
        cases[bucket_url] = (
            f"Input not found: {bucket_url}: bucket 'no-such-bucket-z' does not exist at "
            f"{tree.endpoint}. Check the bucket name (and AWS_ENDPOINT_URL)."
        )
    for url, message in cases.items():
        with pytest.raises(InputError) as e:
            storage.expand(url, EXTS)
        assert _clean(str(e.value), tree) == message


# ----------------------------------------------------------------------- fingerprints


def test_fingerprint_changes_when_the_object_is_replaced(s3: S3) -> None:
    url = s3.put("a.csv", b"user_id\nu1\n")
    first = storage.fingerprint(url)
    assert first.startswith("11:") and storage.fingerprint(url) == first
    s3.put("a.csv", b"user_id\nu2\n")  # same size, same second: the ETag tells
    assert storage.fingerprint(url) not in (first, None)
    assert storage.fingerprint(s3.url("none.csv"), missing_ok=True) is None
    with pytest.raises(InputError) as e:
        storage.fingerprint(s3.url("none.csv"))
    assert str(e.value) == f"Input not found: {s3.url('none.csv')}. Check the bucket and key."


# ------------------------------------------------------------------ copies both ways


def test_upload_and_download_keep_the_bytes(s3: S3, tmp_path: Path) -> None:
    body = gzip.compress(b"user_id\n" + b"u\n" * 300_000)  # a .gz stays compressed
    local = tmp_path / "a.csv.gz"
    local.write_bytes(body)
    storage.upload(local, s3.url("in/a.csv.gz"))
    assert s3.get("in/a.csv.gz") == body
    back = storage.download(s3.url("in/a.csv.gz"), tmp_path / "back.csv.gz")
    assert back.read_bytes() == body
    assert stat.S_IMODE(back.stat().st_mode) == 0o600  # audiences are personal data


def test_local_copies_are_removed_afterwards(s3: S3, tmp_path: Path) -> None:
    urls = [s3.put("x/a.csv", b"a\n1\n"), s3.put("y/a.csv", b"a\n2\n")]
    with storage.local_copies(urls, tmp_path / "spill") as names:
        assert list(names.values()) == urls
        assert [Path(p).read_bytes() for p in names] == [b"a\n1\n", b"a\n2\n"]
        assert all(p.endswith("-a.csv") for p in names)
    assert list((tmp_path / "spill").iterdir()) == []


def test_failed_copies_leave_nothing(s3: S3, tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        storage.download(s3.url("none.csv"), tmp_path / "x.csv")
    assert str(e.value).startswith(f"Object not found: {s3.url('none.csv')}.")
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(StateError) as e:
        storage.upload(tmp_path / "none.parquet", s3.url("out/r.parquet"))
    assert str(e.value).startswith(f"Cannot upload {tmp_path / 'none.parquet'} to ")
    local = tmp_path / "r.parquet"
    local.write_bytes(b"PAR1")
    with pytest.raises(StateError) as e:
        storage.upload(local, "s3://no-such-bucket-z/r.parquet")
    assert _clean(str(e.value), s3) == (
        "Cannot write s3://no-such-bucket-z/r.parquet: bucket 'no-such-bucket-z' does not exist "
        f"at {s3.endpoint}. Check the bucket name (and AWS_ENDPOINT_URL for an S3-compatible "
        "server)."
    )


def test_write_parquet_streams_a_reader(s3: S3) -> None:
    table = pa.table({"row_number": list(range(10_000)), "outcome": ["ingested"] * 10_000})
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=999))
    assert storage.write_parquet(reader, s3.url("out/r.parquet")) == 10_000
    assert pq.read_table(io.BytesIO(s3.get("out/r.parquet"))).equals(table)
    assert storage.write_parquet(table.slice(0, 5), s3.url("out/t.parquet")) == 5
    assert s3.listing() == ["out/r.parquet", "out/t.parquet"]  # and no "out/" marker


def test_a_write_that_fails_midway_leaves_no_object(s3: S3) -> None:
    schema = pa.schema([("n", pa.int64())])

    def batches() -> Iterator[pa.RecordBatch]:
        yield pa.record_batch([pa.array(range(100_000))], schema=schema)
        raise KeyboardInterrupt  # Ctrl-C halfway

    with pytest.raises(KeyboardInterrupt):
        storage.write_parquet(
            pa.RecordBatchReader.from_batches(schema, batches()), s3.url("out/r.parquet")
        )
    assert [k for k in s3.listing() if not k.endswith("/")] == []  # pyarrow keeps a "folder"


# ---------------------------------------------------------------------------- errors


def test_access_denied_says_which_credentials_to_check(s3: S3, tmp_path: Path) -> None:
    url = s3.put("a.csv", b"user_id\nu1\n")
    local = tmp_path / "r.parquet"
    local.write_bytes(b"PAR1")
    with s3.denying():
        reads = [
            lambda: storage.expand(url, EXTS),
            lambda: storage.expand(s3.url("*.csv"), EXTS),
            lambda: storage.fingerprint(url),
            lambda: storage.download(url, tmp_path / "a.csv"),
        ]
        for read in reads:
            with pytest.raises(InputError) as e:
                read()
            assert _clean(str(e.value), s3).startswith(f"Cannot read {s3.url()}") and str(
                e.value
            ).endswith(
                ": access denied. Check that the credentials in use (AWS_ACCESS_KEY_ID or "
                f"AWS_PROFILE) are valid and may read objects in bucket '{s3.bucket}'."
            )
        with pytest.raises(StateError) as w:
            storage.upload(local, s3.url("out/r.parquet"))
    assert _clean(str(w.value), s3) == (
        f"Cannot write {s3.url('out/r.parquet')}: access denied. Check that the credentials in "
        f"use (AWS_ACCESS_KEY_ID or AWS_PROFILE) are valid and may write objects in bucket "
        f"'{s3.bucket}'."
    )


def test_no_credentials_at_all(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    url = s3.put("a.csv", b"user_id\nu1\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    with s3.denying(), pytest.raises(InputError) as e:
        storage.fingerprint(url)
    assert str(e.value) == (
        f"Cannot read {url}: access denied. No AWS credentials were found: set "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or AWS_PROFILE."
    )


def test_an_unreachable_endpoint(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://user:hunter2@127.0.0.1:{port}")
    with pytest.raises(InputError) as e:
        storage.expand(s3.url("a.csv"), EXTS)
    assert _clean(str(e.value), s3) == (
        f"Cannot read {s3.url('a.csv')}: http://127.0.0.1:{port} cannot be reached. Check the "
        "network, AWS_ENDPOINT_URL and AWS_REGION, then run the same command again."
    )


def test_other_errors_never_carry_a_credential(s3: S3) -> None:
    raw = OSError(f"AWS Error UNKNOWN: bad request for {s3.key_id} {s3.secret} (Request ID: 12)")
    error: BulkBatchError = storage._error(raw, s3.url("a.csv"), writing=True)
    assert isinstance(error, StateError)
    assert _clean(str(error), s3) == (
        f"Cannot write {s3.url('a.csv')}: AWS Error UNKNOWN: bad request for *** ***. Check the "
        "URL, the credentials and AWS_ENDPOINT_URL, then run the same command again."
    )
