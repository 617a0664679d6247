"""Object storage: audiences read from, and results written to, ``s3://`` URLs.

Amazon S3 and S3-compatible servers (MinIO, Ceph, R2, moto ...) through
:class:`pyarrow.fs.S3FileSystem`. Why pyarrow: it is already a dependency and its wheels carry
the AWS C++ SDK (the standard credential chain, retries, multipart uploads), so nothing is
added, and Parquet objects are read as Arrow record batches by ranged reads, never whole.
DuckDB's ``httpfs`` extension is downloaded on first use, which offline hosts cannot do.

**URLs.** ``s3://bucket/key`` is one object; ``s3://bucket/prefix/`` (a prefix that is no
object, or ``s3://bucket``) every input file below it; ``s3://bucket/aud/*.parquet`` a glob
(``*`` and ``?`` stop at ``/``, ``**`` crosses folders, ``[...]`` a class). As for local
files, a glob's matches are sorted by key and a prefix's files folder by folder.

**Credentials.** The AWS SDK's chain: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, then ``AWS_PROFILE`` (``~/.aws/credentials``, ``~/.aws/config``), then
the instance's role. Region: ``AWS_REGION`` or ``AWS_DEFAULT_REGION``, else the bucket's. The
SDK in pyarrow ignores ``AWS_ENDPOINT_URL``, so this module reads ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` itself (``http://127.0.0.1:9000`` for MinIO; ``http`` means plain HTTP),
and ``AWS_CA_BUNDLE``. No credential is ever logged, printed, stored or put in a message;
errors (``UsageError`` for a bad URL, ``InputError`` reading, ``StateError`` writing) say what
failed, on which URL, and what to do.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bulkbatch.errors import BulkBatchError, InputError, StateError, UsageError

__all__ = [
    "ObjectUrl",
    "ParquetStream",
    "destination",
    "download",
    "expand",
    "filesystem_for",
    "fingerprint",
    "is_remote",
    "local_copies",
    "parse_url",
    "upload",
    "write_parquet",
]

_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):/(?P<rest>.*)$", re.DOTALL)
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$")
_GLOB = re.compile(r"[*?\[]")
_CHUNK = 8 << 20
"""Bytes per read or write when copying an object: few calls, bounded memory."""
BATCH_ROWS = 32_768
"""Rows per Arrow record batch read from a Parquet object. Loading 10M rows (6 columns) from
S3 peaked at ~610 MiB RSS with this, ~150 MiB above ``read_parquet`` of the same local file;
smaller batches saved little memory and cost half the speed."""
_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
# What pyarrow's errors say, in the SDK's spelling or the server's.
_NO_KEY = re.compile(r"NO_SUCH_KEY|NoSuchKey")
_NO_BUCKET = re.compile(r"NO_SUCH_BUCKET|NoSuchBucket")
_DENIED = re.compile(
    r"ACCESS_DENIED|AccessDenied|INVALID_ACCESS_KEY_ID|InvalidAccessKeyId|SIGNATURE_DOES_NOT_"
    r"MATCH|SignatureDoesNotMatch|EXPIRED_TOKEN|ExpiredToken|InvalidToken|code: 403|Forbidden"
)
_UNREACHABLE = re.compile(r"NETWORK_CONNECTION|curlCode|Could not resolve|Connection refused")
_CREDENTIAL_SOURCES = [
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
]


@dataclass(frozen=True)
class ObjectUrl:
    """An ``s3://bucket/key`` URL taken apart (``key`` may be empty, a prefix or a glob)."""

    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def path(self) -> str:
        """The ``bucket/key`` path pyarrow's file system takes."""
        return f"{self.bucket}/{self.key}".rstrip("/")


def _text(path: str | os.PathLike[str]) -> str:
    """``path`` as text, with the slash ``pathlib.Path`` drops from ``s3://`` put back."""
    text = os.fspath(path)
    m = _URL.match(text)
    if m and not m["rest"].startswith("/"):
        return f"{m['scheme']}://{m['rest']}"
    return text


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a URL (``s3://...``, or another scheme this module refuses with
    a clear error) rather than a local path; ``file://`` and ``C:\\`` are local."""
    m = _URL.match(_text(path))
    return m is not None and m["scheme"].lower() != "file"


def parse_url(url: str | os.PathLike[str]) -> ObjectUrl:
    """``s3://bucket/key`` taken apart.

    :raises UsageError: not an ``s3://`` URL, or no valid bucket name
    """
    text = _text(url)
    m = _URL.match(text)
    if not m or m["scheme"].lower() != "s3":
        raise UsageError(
            f"Unsupported URL {text}: only s3:// URLs are read and written (Amazon S3, or an "
            "S3-compatible server through AWS_ENDPOINT_URL). Use s3://BUCKET/KEY or a local path."
        )
    bucket, _, key = m["rest"][1:].partition("/")  # _text made it start with "/"
    if not _BUCKET.match(bucket):
        raise UsageError(
            f"Bad S3 URL {text}: {bucket!r} is not a bucket name. Write it as s3://BUCKET/KEY "
            "(3 to 255 letters, digits, dots, hyphens or underscores)."
        )
    return ObjectUrl(bucket, key)


# -------------------------------------------------------------------------- the file system


def _endpoint() -> tuple[str, str] | None:
    """``(host[:port][/path], scheme)`` from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``."""
    name = next((n for n in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") if os.environ.get(n)), "")
    if not name:
        return None
    parts = urlsplit(os.environ[name].strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"{name} is not an http:// or https:// URL. Set it to the S3 server's address, "
            "e.g. http://127.0.0.1:9000, or unset it for Amazon S3."
        )
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    return host + parts.path.rstrip("/"), parts.scheme


def _endpoint_name() -> str:
    """Where requests go, for messages (never a user or password in the URL)."""
    found = _endpoint()
    return f"{found[1]}://{found[0]}" if found else "Amazon S3"


@functools.lru_cache(maxsize=64)
def _bucket_region(bucket: str) -> str | None:
    """Where Amazon keeps ``bucket`` (it tells anyone): a wrong region fails every request."""
    with contextlib.suppress(OSError):
        return str(pafs.resolve_s3_region(bucket))
    return None


@functools.lru_cache(maxsize=16)
def _filesystem(options: tuple[tuple[str, Any], ...], credentials: str) -> pafs.S3FileSystem:
    # The SDK reads the credentials when a file system is made, so a change of them (or of
    # the profile) needs a new one: ``credentials`` is their hash, never a credential.
    return pafs.S3FileSystem(**dict(options))


def filesystem_for(url: str | os.PathLike[str]) -> pafs.S3FileSystem:
    """The :class:`pyarrow.fs.S3FileSystem` for ``url``'s bucket, configured from the
    environment (see the module docstring); one per configuration, reused.

    :raises UsageError: a bad URL or a bad ``AWS_ENDPOINT_URL``
    """
    bucket = parse_url(url).bucket
    endpoint = _endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    kwargs: dict[str, Any] = {"region": region or (None if endpoint else _bucket_region(bucket))}
    if endpoint:
        kwargs["endpoint_override"], kwargs["scheme"] = endpoint
    if os.environ.get("AWS_CA_BUNDLE"):
        kwargs["tls_ca_file_path"] = os.environ["AWS_CA_BUNDLE"]
    creds = "\0".join(os.environ.get(n, "") for n in (*_SECRETS, "AWS_PROFILE"))
    return _filesystem(tuple(sorted(kwargs.items())), hashlib.sha256(creds.encode()).hexdigest())


# ------------------------------------------------------------------------------- errors


def _scrub(text: str) -> str:
    """``text`` without any credential from the environment, and without request ids."""
    for name in _SECRETS:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    text = re.sub(r"\s*\(Request ID: [^)]*\)", "", text)
    return " ".join(text.split()).rstrip(". ")


def _credentials_visible() -> bool:
    """Whether any source of credentials the SDK reads is set (an instance role aside)."""
    if any(os.environ.get(n) for n in _CREDENTIAL_SOURCES):
        return True
    files = (
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials",
        os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config",
    )
    return any(Path(f).expanduser().is_file() for f in files)


def _error(exc: BaseException, url: str, *, writing: bool) -> BulkBatchError:
    """One line for a failed S3 call: what, which URL, what to do (never a credential)."""
    kind: type[BulkBatchError] = StateError if writing else InputError
    verb = "write" if writing else "read"
    text = str(exc)
    bucket = parse_url(url).bucket
    if isinstance(exc, FileNotFoundError) or _NO_KEY.search(text):
        return kind(f"Object not found: {url}. Check the bucket and key (keys are case-sensitive).")
    if _NO_BUCKET.search(text):
        return kind(
            f"Cannot {verb} {url}: bucket {bucket!r} does not exist at {_endpoint_name()}. "
            "Check the bucket name (and AWS_ENDPOINT_URL for an S3-compatible server)."
        )
    if _DENIED.search(text):
        fix = (
            f"Check that the credentials in use (AWS_ACCESS_KEY_ID or AWS_PROFILE) are valid "
            f"and may {verb} objects in bucket {bucket!r}."
            if _credentials_visible()
            else "No AWS credentials were found: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or AWS_PROFILE."
        )
        return kind(f"Cannot {verb} {url}: access denied. {fix}")
    if _UNREACHABLE.search(text):
        return kind(
            f"Cannot {verb} {url}: {_endpoint_name()} cannot be reached. Check the network, "
            "AWS_ENDPOINT_URL and AWS_REGION, then run the same command again."
        )
    return kind(
        f"Cannot {verb} {url}: {_scrub(text) or type(exc).__name__}. Check the URL, the "
        "credentials and AWS_ENDPOINT_URL, then run the same command again."
    )


# ----------------------------------------------------------------------------- listing


_GLOB_TOKENS = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A key glob as a regex: ``*``/``?`` within one folder, ``**`` across folders."""
    out = []
    for n, part in enumerate(re.split(r"(\*\*/|\*\*|\*|\?|\[!?[^]]+\])", pattern)):
        if n % 2 == 0:
            out.append(re.escape(part))
        elif part.startswith("["):
            out.append("[^" + part[2:] if part.startswith("[!") else part)
        else:
            out.append(_GLOB_TOKENS[part])
    return re.compile("".join(out), re.DOTALL)


def _list(fs: pafs.S3FileSystem, obj: ObjectUrl, base: str, recursive: bool) -> list[str]:
    """Keys of the objects below ``base`` (a folder of ``obj.bucket``)."""
    selector = pafs.FileSelector(
        f"{obj.bucket}/{base}".rstrip("/"), recursive=recursive, allow_not_found=True
    )
    try:
        infos = fs.get_file_info(selector)
    except OSError as exc:
        raise _error(exc, obj.url, writing=False) from None
    return [i.path.partition("/")[2] for i in infos if i.type == pafs.FileType.File]


def _missing(fs: pafs.S3FileSystem, obj: ObjectUrl, message: str) -> InputError:
    """The error for finding nothing at ``obj``: a missing bucket says so, else ``message``."""
    with contextlib.suppress(OSError):
        if fs.get_file_info(obj.bucket).type == pafs.FileType.NotFound:
            return InputError(
                f"Input not found: {obj.url}: bucket {obj.bucket!r} does not exist at "
                f"{_endpoint_name()}. Check the bucket name (and AWS_ENDPOINT_URL)."
            )
    return InputError(message)


def expand(url: str, extensions: Sequence[str]) -> list[str]:
    """The ``s3://`` URLs of the objects ``url`` stands for, in load order.

    One object as it is; a glob's matches; for a prefix (``s3://b/aud/``, ``s3://b``), every
    object below it whose name ends in one of ``extensions``.

    :raises UsageError: a bad URL
    :raises InputError: nothing there, a missing bucket, access denied, no connection
    """
    obj = parse_url(url)
    fs = filesystem_for(obj.url)
    if _GLOB.search(obj.key):
        literal = _GLOB.split(obj.key, maxsplit=1)[0]
        base = literal.rpartition("/")[0]
        rest = obj.key[len(base) :].lstrip("/")
        regex = _glob_regex(obj.key)
        keys = sorted(k for k in _list(fs, obj, base, "/" in rest) if regex.fullmatch(k))
        if not keys:
            raise _missing(fs, obj, f"No objects match {obj.url}. Check the pattern and prefix.")
        return [f"s3://{obj.bucket}/{k}" for k in keys]
    try:
        info = fs.get_file_info(obj.path) if obj.key.strip("/") else None
    except OSError as exc:
        raise _error(exc, obj.url, writing=False) from None
    if info is not None and info.type == pafs.FileType.File and not obj.key.endswith("/"):
        return [obj.url]
    if info is not None and info.type == pafs.FileType.NotFound:
        raise _missing(fs, obj, f"Input not found: {obj.url}. Check the bucket and key.")
    ends = tuple(e.lower() for e in extensions)
    found = _list(fs, obj, obj.key.strip("/"), True)
    keys = sorted((k for k in found if k.lower().endswith(ends)), key=lambda k: k.split("/"))
    if not keys:
        raise _missing(
            fs,
            obj,
            f"No input files under {obj.url}: expected {', '.join(extensions[:4])} ... "
            "objects. Check the prefix, or name the objects.",
        )
    return [f"s3://{obj.bucket}/{k}" for k in keys]


@overload
def fingerprint(url: str) -> str: ...
@overload
def fingerprint(url: str, *, missing_ok: bool) -> str | None: ...
def fingerprint(url: str, *, missing_ok: bool = False) -> str | None:
    """``"size:ETag"`` of one object (one HEAD request): changes when the object is replaced
    by other content, even within the same second (S3 times are whole seconds).

    :param missing_ok: return None, rather than raise, when there is no such object
    :raises InputError: the object is missing or cannot be read (no bucket, access denied)
    """
    obj = parse_url(url)
    fs = filesystem_for(obj.url)
    try:
        with fs.open_input_file(obj.path) as f:
            meta = f.metadata()
            size = f.size()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise _missing(fs, obj, f"Input not found: {obj.url}. Check the bucket and key.") from None
    except OSError as exc:
        raise _error(exc, obj.url, writing=False) from None
    found = {(k.decode() if isinstance(k, bytes) else str(k)).lower(): v for k, v in meta.items()}
    stamp = found.get("etag") or found.get("last-modified") or b""
    text = stamp.decode(errors="replace") if isinstance(stamp, bytes) else str(stamp)
    return f"{size}:{text.strip(chr(34))}"


# ---------------------------------------------------------------------- reading, writing


def download(src: str, local: Path) -> Path:
    """Copy the object ``src`` to the file ``local`` (created ``0600``; the bytes as stored,
    a ``.gz`` stays compressed), streamed in 8 MiB chunks; returns ``local``.

    :raises InputError: the object cannot be read (the partial file is removed)
    :raises StateError: ``local`` cannot be written
    """
    obj = parse_url(src)
    fs = filesystem_for(obj.url)
    try:
        with fs.open_input_stream(obj.path, compression=None) as stream:
            _copy(stream, local, obj.url)
    except BaseException as exc:
        local.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _error(exc, obj.url, writing=False) from None
        raise
    return local


def _copy(stream: Any, local: Path, url: str) -> None:
    """``stream``'s bytes into a new ``0600`` file ``local``. A read error propagates as
    pyarrow raised it; a write error (a full disk) is a StateError."""

    def failed(exc: OSError) -> StateError:
        return StateError(
            f"Cannot write {local} while downloading {url}: {exc.strerror or exc}. "
            "Free disk space or fix the folder's permissions, then run the same command again."
        )

    try:
        f = os.fdopen(os.open(local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
    except OSError as exc:
        raise failed(exc) from None
    with f:
        while chunk := stream.read(_CHUNK):
            try:
                f.write(chunk)
            except OSError as exc:
                raise failed(exc) from None


@contextlib.contextmanager
def local_copies(urls: Sequence[str], folder: str | Path | None) -> Iterator[dict[str, str]]:
    """Download ``urls`` into a new private temporary folder inside ``folder`` (the system's
    when None) for readers that need a local file; yields ``{local path: url}`` in the order
    of ``urls``. The folder is removed afterwards, whatever happens."""
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="bulkbatch-s3-", dir=folder)  # mode 0700
    try:
        names: dict[str, str] = {}
        for n, url in enumerate(urls):
            # The object's own name ends the file's, so readers see .csv.gz, .jsonl ...
            base = re.sub(r"[^A-Za-z0-9._-]", "_", url.rpartition("/")[2])[-120:]
            names[str(download(url, Path(tmp) / f"{n:06d}-{base}"))] = url
        yield names
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def destination(url: str | os.PathLike[str]) -> ObjectUrl:
    """``url`` checked as a place to write one object (``s3://bucket/key``), before any work.

    :raises UsageError: not an ``s3://`` URL, or no key (``s3://bucket/`` names no object)
    """
    obj = parse_url(url)
    if not obj.key or obj.key.endswith("/") or _GLOB.search(obj.key):
        raise UsageError(
            f"Bad destination {obj.url}: name one object, e.g. s3://{obj.bucket}/results.parquet."
        )
    return obj


@contextlib.contextmanager
def _writing(obj: ObjectUrl) -> Iterator[pafs.S3FileSystem]:
    """The file system to write ``obj`` with. After a failure no object is left: pyarrow
    completes an S3 upload when its stream closes, even after an error."""
    fs = filesystem_for(obj.url)
    try:
        yield fs
    except BaseException as exc:
        with contextlib.suppress(OSError):
            fs.delete_file(obj.path)
        if isinstance(exc, OSError):
            raise _error(exc, obj.url, writing=True) from None
        raise


def upload(local: str | os.PathLike[str], dest: str) -> None:
    """Copy the local file ``local`` to the object ``dest`` (replacing it), streamed.

    The object appears only once complete (a multipart upload); after a failure no object
    is left under ``dest``.

    :raises UsageError: ``dest`` is not an ``s3://bucket/key`` URL
    :raises StateError: ``local`` cannot be read, or the upload fails (bucket, access ...)
    """
    obj = destination(dest)
    try:
        src = open(local, "rb")  # noqa: SIM115 - closed below, after the upload's own close
    except OSError as exc:
        raise StateError(
            f"Cannot upload {os.fspath(local)} to {obj.url}: {exc.strerror or exc}. "
            "Check that the file exists."
        ) from None
    with src, _writing(obj) as fs, fs.open_output_stream(obj.path, compression=None) as out:
        while chunk := src.read(_CHUNK):
            out.write(chunk)


def write_parquet(
    data: pa.Table | pa.RecordBatchReader, dest: str, *, compression: str = "zstd"
) -> int:
    """Write an Arrow table, or a record batch reader batch by batch (bounded memory), as
    one Parquet object at ``dest``; the rows written.

    :raises UsageError: ``dest`` is not an ``s3://bucket/key`` URL
    :raises StateError: the write fails (bucket, access ...); no object is left behind
    """
    obj = destination(dest)
    rows = 0
    with (
        _writing(obj) as fs,
        fs.open_output_stream(obj.path, compression=None) as out,  # no "folder" marker objects
        pq.ParquetWriter(out, data.schema, compression=compression) as w,
    ):
        for batch in data.to_batches() if isinstance(data, pa.Table) else data:
            w.write_batch(batch)
            rows += batch.num_rows
    return rows


# ------------------------------------------------------------------ Parquet as a stream


def _unify(schemas: Sequence[pa.Schema]) -> pa.Schema:
    """The schema of several files read by name, in order of first appearance: numbers
    widen (int32 + int64 -> int64) and a column whose types cannot be reconciled becomes
    text, as DuckDB's ``union_by_name`` does for local files."""
    with contextlib.suppress(pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.unify_schemas(list(schemas), promote_options="permissive")
    fields: dict[str, pa.Field] = {}
    for f in (f for schema in schemas for f in schema):
        old = fields.setdefault(f.name, f)
        try:
            pair = [pa.schema([old]), pa.schema([f])]
            fields[f.name] = pa.unify_schemas(pair, promote_options="permissive").field(0)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            fields[f.name] = pa.field(f.name, pa.string())
    return pa.schema(list(fields.values()))


class ParquetStream:
    """Parquet objects as one Arrow stream, each file in order and each file's rows in
    order, with a ``source_column`` holding each row's URL. DuckDB reads it through the Arrow
    PyCapsule interface: describing it reads only the schema, and every scan starts a new
    pass, so it can be described and then scanned. Memory stays at a few record batches
    (:data:`BATCH_ROWS` rows) whatever the size of the objects.

    :param types: maps each column's Arrow type to the one to read it as (cast on the fly)
    """

    def __init__(
        self,
        urls: Sequence[str],
        source_column: str,
        types: Callable[[pa.DataType], pa.DataType] = lambda t: t,
    ) -> None:
        self.error: BulkBatchError | None = None
        self.urls = list(urls)
        self._fs = filesystem_for(self.urls[0])
        self._paths = [parse_url(u).path for u in self.urls]
        schemas = []
        for url, path in zip(self.urls, self._paths, strict=True):
            try:
                schemas.append(pq.read_schema(path, filesystem=self._fs))
            except (OSError, pa.ArrowException) as exc:
                raise self._read_error(exc, url) from None
        self.input_schema = pa.schema([f.with_type(types(f.type)) for f in _unify(schemas)])
        self.schema = self.input_schema.append(pa.field(source_column, pa.string()))

    def _read_error(self, exc: BaseException, url: str) -> BulkBatchError:
        """The error for ``url``, kept in :attr:`error`: a scan that failed inside DuckDB
        is reported with it, not with DuckDB's wrapping of it."""
        text = str(exc)
        if isinstance(exc, FileNotFoundError) or "AWS Error" in text or _UNREACHABLE.search(text):
            self.error = _error(exc, url, writing=False)
        else:
            first = _scrub(text.strip().splitlines()[0] if text.strip() else type(exc).__name__)
            self.error = InputError(
                f"Cannot read {url}: {first}. Check that it is a complete Parquet file "
                "(re-export it), or pass the right --format."
            )
        return self.error

    def _batches(self) -> Iterator[pa.RecordBatch]:
        # One row group at a time, its column chunks fetched in a few coalesced ranged
        # reads (pre_buffer): measured at a tenth of the Arrow memory of a dataset scanner,
        # which decodes whole row groups ahead.
        for url, path in zip(self.urls, self._paths, strict=True):
            source = pa.scalar(url, pa.string())
            try:
                with self._fs.open_input_file(path) as f:
                    parquet = pq.ParquetFile(f, pre_buffer=True)
                    for group in range(parquet.num_row_groups):
                        for batch in parquet.iter_batches(BATCH_ROWS, row_groups=[group]):
                            columns = [*self._conform(batch), pa.repeat(source, batch.num_rows)]
                            yield pa.RecordBatch.from_arrays(columns, schema=self.schema)
            except (OSError, pa.ArrowException) as exc:
                raise self._read_error(exc, url) from None

    def _conform(self, batch: pa.RecordBatch) -> list[pa.Array]:
        """``batch``'s columns in :attr:`input_schema`'s order and types (NULL if absent)."""
        out = []
        for field in self.input_schema:
            i = batch.schema.get_field_index(field.name)
            column = batch.column(i) if i >= 0 else pa.nulls(batch.num_rows, field.type)
            out.append(column if column.type == field.type else column.cast(field.type))
        return out

    def __arrow_c_schema__(self) -> object:
        return self.schema.__arrow_c_schema__()

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        reader = pa.RecordBatchReader.from_batches(self.schema, self._batches())
        return reader.__arrow_c_stream__(requested_schema)
