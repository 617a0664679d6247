"""``s3://`` inputs for the load stage: how DuckDB reads a group of objects.

* **Parquet** is streamed: :class:`bulkbatch.storage.ParquetStream` gives one Arrow stream
  over the group's objects (read by column name, each row carrying its URL), registered on
  the connection as a view. DuckDB pulls record batches from it, so memory stays at a few
  batches whatever the audience's size, and nothing is written to disk.
* **CSV and NDJSON** are downloaded, streamed, into a private folder in the run's spill
  directory and read by the local readers (:mod:`bulkbatch.stages.csvread`, ``read_json``):
  their encodings, bad lines and typed columns behave exactly as for local files. The
  folder is removed as soon as the group is loaded.

Either way the ``source`` column and every error name the ``s3://`` URL, never a local copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from bulkbatch.db import quote_ident, quote_literal
from bulkbatch.errors import InputError
from bulkbatch.stages.csvread import SOURCE_COL, _temp_dir
from bulkbatch.storage import ParquetStream, is_remote, local_copies

__all__ = ["GroupRead", "group_read"]

_VIEW = "__bb_s3_parquet"


@dataclass(frozen=True)
class GroupRead:
    """How to read one group of input files.

    :param files: the files DuckDB reads (local copies of remote CSV/NDJSON objects)
    :param source: SQL for the ``source`` column
    :param reader: a view to read instead of ``read_parquet``/``read_json`` of ``files``
    :param names: the URL of each local copy in ``files`` (empty for local inputs)
    """

    files: list[str]
    source: str = quote_ident(SOURCE_COL)
    reader: str | None = None
    names: Mapping[str, str] = field(default_factory=dict)


def _as_read_parquet(t: pa.DataType) -> pa.DataType:
    """The Arrow type that DuckDB's ``read_parquet`` would give a column, where a scan of
    Arrow would differ: timestamps in s or ms without a zone become TIMESTAMP (microseconds,
    not TIMESTAMP_MS), durations their integer (not INTERVAL). Nested types alike."""
    if pa.types.is_timestamp(t) and t.tz is None and t.unit in ("s", "ms"):
        return pa.timestamp("us")
    if pa.types.is_duration(t):
        return pa.int64()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        make = pa.list_ if pa.types.is_list(t) else pa.large_list
        return make(t.value_field.with_type(_as_read_parquet(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_as_read_parquet(f.type)) for f in t])
    if pa.types.is_map(t):
        return pa.map_(t.key_field, t.item_field.with_type(_as_read_parquet(t.item_type)))
    return t


def _source(kind: str, names: Mapping[str, str]) -> str:
    """The URL of each row's copy: DuckDB's ``filename`` column names the local file."""
    if kind == "csv":
        return quote_literal(next(iter(names.values())))
    whens = " ".join(f"WHEN {quote_literal(k)} THEN {quote_literal(v)}" for k, v in names.items())
    return f"CASE {quote_ident(SOURCE_COL)} {whens} END"


def _renamed(text: str, names: Mapping[str, str]) -> str:
    for local, url in names.items():
        text = text.replace(local, url)
    return text


@contextlib.contextmanager
def group_read(
    con: duckdb.DuckDBPyConnection, kind: str, group: Sequence[str]
) -> Iterator[GroupRead]:
    """How DuckDB reads ``group`` (files of one ``kind``, all local or all ``s3://``), for the
    time of the ``with`` block. An :class:`InputError` raised inside names URLs, not copies.

    :raises InputError: an object is missing or cannot be read
    """
    if not is_remote(group[0]):
        yield GroupRead(list(group))
        return
    if kind == "parquet":
        stream = ParquetStream(group, SOURCE_COL, _as_read_parquet)
        con.register(_VIEW, stream)
        try:
            yield GroupRead(list(group), reader=quote_ident(_VIEW))
        except InputError:
            if stream.error is None:
                raise
            raise stream.error from None  # what failed in the stream, not DuckDB's wrapping
        finally:
            with contextlib.suppress(duckdb.Error):
                con.unregister(_VIEW)
        return
    with local_copies(group, _temp_dir(con)) as names:
        try:
            yield GroupRead(list(names), _source(kind, names), names=names)
        except InputError as exc:
            raise InputError(_renamed(str(exc), names)) from None
