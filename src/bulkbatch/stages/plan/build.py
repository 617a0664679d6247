"""``build_plan``: run the plan's queries in order (rules: :mod:`bulkbatch.stages.plan`)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import duckdb
import orjson

from bulkbatch.db import (
    BUILD_SHARE,
    compressed_with,
    configure_connection,
    fetch_one,
    key_ranges,
    memory_share,
    quote_ident,
    quote_literal,
    scaled_to_cap,
    scratch_database,
    searched_too,
)
from bulkbatch.errors import InputError, PlanError, UsageError
from bulkbatch.options import option
from bulkbatch.stages.plan.columns import Cols
from bulkbatch.stages.plan.filters import audience_of, check_where, first_line
from bulkbatch.stages.plan.mapping import (
    path_columns,
    resolve_mapping,
    some_of,
    unused_columns,
    unused_note,
)
from bulkbatch.stages.plan.model import ADDRESS_TARGETS, PlanOptions
from bulkbatch.stages.plan.queries import Queries, build_queries, keys_sql, order_sql, users_sql
from bulkbatch.stages.plan.report import PlanInfo, make_report, write_files
from bulkbatch.stages.plan.shard import ShardInfo, apply_shard

__all__ = ["build_plan"]

_TEMP_TABLES = ("_bb_keys", "_bb_groups", "_bb_order", "_bb_large", "_bb_other")
SCRATCH_DB = "_bb_plan_scratch"
SCRATCH_FILE = ".plan-scratch.duckdb"


@contextlib.contextmanager
def _scratch(con: duckdb.DuckDBPyConnection, run_dir: Path | None) -> Iterator[str | None]:
    """Where the two 10M-row scratch tables (``_bb_keys``, ``_bb_order``) are created: a
    database file in the run directory (:func:`~bulkbatch.db.scratch_database`), searched by
    their bare names, or TEMP tables (None) without a run directory.

    As TEMP tables, DuckDB compressed their blocks again each time a later statement read them
    back and evicted them (the rejects, the dedupe, the job cut, the passes): ``bulkbatch plan``
    of 10M took 61.9-62.5 s against 63.2-63.5 (interleaved, round 24 of #19). In a file each
    table costs ~20 ms more at 200,000 rows, where a TEMP table never reaches the disk.
    """
    if run_dir is None:
        yield None
        return
    with (
        scratch_database(con, Path(run_dir) / SCRATCH_FILE, SCRATCH_DB) as db,
        searched_too(con, db),
    ):
        yield db


def _create(scratch: str | None, table: str) -> str:
    """``CREATE OR REPLACE`` a scratch ``table`` in ``scratch`` (see :func:`_scratch`)."""
    if scratch is None:
        return f"CREATE OR REPLACE TEMP TABLE {table}"
    return f"CREATE OR REPLACE TABLE {quote_ident(scratch)}.{table}"


def _fingerprint(options: PlanOptions) -> str:
    shape = {
        "data": dict(options.data),
        "locale": options.locale,
        "mapping": dict(sorted(options.mapping.items())),
        "where": options.where,
        "sql": options.sql,
        "dedupe": options.dedupe,
        "batch_size": options.batch_size,
        "max_job_size": options.max_job_size or None,
        "max_user_bytes": options.max_user_bytes,
        **({"shard": list(options.shard)} if options.shard else {}),
    }
    return hashlib.sha256(orjson.dumps(shape, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _sources(con: duckdb.DuckDBPyConnection) -> str:
    rows = con.execute("SELECT DISTINCT source FROM inputs ORDER BY 1 LIMIT 4").fetchall()
    names = [str(r[0]) for r in rows]
    if not names:
        return "the input"
    if len(names) > 3:
        return ", ".join(names[:3]) + " and more"
    return ", ".join(names)


@dataclasses.dataclass(frozen=True)
class _Audience:
    """The rows to plan: a FROM clause, its column types, and what the plan uses of it."""

    source: str
    types: dict[str, str]
    label: str
    columns: list[str]
    targets: dict[str, str]
    paths: dict[str, tuple[str, str]]


def _with_paths(
    con: duckdb.DuckDBPyConnection,
    source: str,
    types: dict[str, str],
    paths: Mapping[str, tuple[str, str]],
) -> tuple[str, dict[str, str]]:
    """The audience with each dotted ``--map`` path selected as a column named by it."""
    if not paths:
        return source, types
    extra = ", ".join(f"{expr} AS {quote_ident(name)}" for name, (_, expr) in paths.items())
    wrapped = f"(SELECT *, {extra} FROM {source}) AS p"
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {wrapped}").fetchall()
    except duckdb.Error as exc:
        flag = option("mapping").flag
        raise UsageError(
            f"Bad {flag} path ({', '.join(paths)}): {first_line(exc)}. Name a field the "
            "struct or JSON column has, e.g. traits.email."
        ) from None
    return wrapped, {str(r[0]): str(r[1]) for r in described}


def _audience(con: duckdb.DuckDBPyConnection, options: PlanOptions) -> _Audience:
    try:
        described = con.execute("DESCRIBE inputs").fetchall()
    except duckdb.Error:
        raise PlanError(
            "There is no inputs table in the run database: run the load stage first."
        ) from None
    input_types = {str(r[0]): str(r[1]) for r in described}
    source, types, label = audience_of(con, options.sql, input_types)
    columns = [c for c in types if c not in ("row_number", "source")]
    paths = path_columns(types, options.mapping)
    source, types = _with_paths(con, source, types, paths)
    targets = resolve_mapping([*columns, *paths], options.mapping)
    if not any(t in targets for t in ADDRESS_TARGETS):
        mp = option("mapping").flag
        raise InputError(
            f"No address column in {_sources(con)}: found {some_of(columns)}. "
            "Name a column user_id, email, phone_number or list_id, or map one with "
            f"{mp} to.user_id=COLUMN or {mp} profile.email=COLUMN."
        )
    return _Audience(source, types, label, columns, targets, paths)


def _mark_bad_rows(con: duckdb.DuckDBPyConnection) -> None:
    """Lines the CSV reader could not parse (table ``load_rejects``, written by load) are
    input rows with nothing in them; reject them as ``bad_row`` with the line and why."""
    exists = fetch_one(
        con,
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'load_rejects' AND NOT temporary",
    )
    if exists and exists[0]:
        con.execute(
            "UPDATE _bb_keys SET reason_code = 'bad_row', reason = lr.reason, recipient = NULL "
            "FROM load_rejects lr WHERE _bb_keys.row_number = lr.row_number"
        )


def _mark_too_large(
    con: duckdb.DuckDBPyConnection, q: Queries, options: PlanOptions, audience: str
) -> None:
    """Reject as ``too_large`` the valid rows whose user JSON is over ``max_user_bytes``.

    Only rows whose size bound (``_check``) is over the limit can be; their JSON is built and
    measured here. The update keeps ``_bb_keys`` in its physical order."""
    if not fetch_one(con, "SELECT count(*) FROM _bb_keys WHERE _check")[0]:
        return
    limit = int(options.max_user_bytes)
    users = users_sql(
        q, audience, "row_number IN (SELECT row_number FROM _bb_keys WHERE _check)", ()
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _bb_large AS SELECT row_number, strlen(user_json) AS n "
        f"FROM ({users}) WHERE strlen(user_json) > {limit}"
    )
    con.execute(
        "UPDATE _bb_keys SET reason_code = 'too_large', reason = 'user JSON is ' || l.n || "
        f"' bytes, over the {limit}-byte limit ({option('max_user_bytes').flag})' "
        "FROM _bb_large l WHERE _bb_keys.row_number = l.row_number"
    )
    con.execute("DROP TABLE IF EXISTS _bb_large")


def _write_rejects(con: duckdb.DuckDBPyConnection, options: PlanOptions, audience: str) -> None:
    filtered_sql = ""
    if options.sql:
        filtered_sql = (
            "UNION ALL SELECT row_number, 'filtered', "
            f"{quote_literal('excluded by ' + option('sql').flag)} FROM inputs "
            f"WHERE row_number NOT IN (SELECT row_number FROM {audience})"
        )
    con.execute(
        "CREATE TABLE rejects AS SELECT row_number::BIGINT AS row_number, "
        "reason_code::VARCHAR AS reason_code, reason::VARCHAR AS reason FROM ("
        "SELECT row_number, reason_code, reason FROM _bb_keys "
        f"WHERE reason_code IS NOT NULL {filtered_sql}) ORDER BY row_number"
    )


def _dedupe(con: duckdb.DuckDBPyConnection, options: PlanOptions) -> None:
    """Group the valid rows by recipient; write ``duplicates`` (or fail, with ``fail``)."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _bb_groups AS SELECT recipient, "
        "min(row_number) AS first_row, max(row_number) AS last_row, count(*) AS n "
        "FROM _bb_keys WHERE reason_code IS NULL GROUP BY recipient HAVING count(*) > 1"
    )
    groups = fetch_one(con, "SELECT count(*), coalesce(sum(n - 1), 0) FROM _bb_groups")
    if options.dedupe == "fail" and groups[0]:
        shown = 5  # row numbers named: a group can have millions
        recipient, n = con.execute(
            "SELECT recipient, n FROM _bb_groups ORDER BY first_row LIMIT 1"
        ).fetchall()[0]
        found = con.execute(
            "SELECT row_number FROM _bb_keys WHERE recipient = ? AND reason_code IS NULL "
            f"ORDER BY row_number LIMIT {shown}",
            [recipient],
        ).fetchall()
        rows = ", ".join(str(r[0]) for r in found)
        if n > shown:
            rows += f" and {n - shown} more"
        flag = option("dedupe").flag
        raise PlanError(
            f"{flag} fail: {groups[1]} duplicate row(s) in {groups[0]} recipient "
            f"group(s), e.g. {recipient!r} on rows {rows}. Remove them from the input, "
            f"or pass {flag} first or {flag} last to keep one row per recipient."
        )
    kept = "first_row" if options.dedupe in ("first", "fail") else "last_row"
    con.execute(
        "CREATE TABLE duplicates AS SELECT s.row_number::BIGINT AS row_number, "
        "s.recipient::VARCHAR AS recipient, "
        f"g.{kept}::BIGINT AS kept_row_number FROM _bb_keys s JOIN _bb_groups g "
        f"ON s.recipient = g.recipient WHERE s.reason_code IS NULL "
        f"AND s.row_number <> g.{kept} ORDER BY s.row_number"
    )


_PLAN_COLUMNS = (
    "row_number::BIGINT AS row_number, recipient::VARCHAR AS recipient, "
    "__bb_job::INTEGER AS job_no, __bb_batch::INTEGER AS batch_no, "
    "user_json::VARCHAR AS user_json"
)


# Users per pass that writes ``plan`` (a range of input rows), under the default memory
# cap; scaled with the cap in force. At 10M, building every user's JSON into a temp table and
# then one sort of it on one thread (two ran out of the 320MB cap) took 34 + 51 s; passes of
# 1M users, 58 s; of 2.5M, 50 s (passes over batch ranges, each of which scanned the whole
# audience; since round 30 each pass reads only its range of input rows). Sized from
# the whole cap although the plan runs under BUILD_SHARE of it: under a 256MB cap, passes
# scaled down with it (7 instead of 5 at 10M) took 32.9 s against 31.4-31.7 s for 2M users.
PLAN_ROWS = 2_000_000


def _write_plan(con: duckdb.DuckDBPyConnection, q: Queries, audience: str, per_pass: int) -> None:
    """Create ``plan``, building each user's JSON once, only for the users to send: in
    ``batch_no, row_number`` order within each pass, and in one pass up to :data:`PLAN_ROWS`.

    One statement per range of input rows holding about :data:`PLAN_ROWS` users to send: a
    hash join of that range of the audience (contiguous in ``inputs``, stored in
    ``row_number`` order) with the same range of the narrow ``_bb_order`` (so the join builds
    on the range only), the range sorted on every thread, the JSON built in that order,
    appended. ``plan`` is then a few sorted runs, one per pass, and each of their row groups
    covers a narrow range of batches: a read of a batch range (the send's, which orders its
    rows itself) finds its rows through zone maps in each run. No sort of every user's JSON at
    once (gigabytes at 10M) and no temp copy of it.

    Passes over ranges of whole *batches* instead (the table in one order, until round 30 of
    #19) each picked its users out of every row of ``inputs``, since batches follow
    md5(recipient): at 10M the five took 24.7 s against 20.9, while the send's reads of 16
    batches at a time took 7.0 s from either table (``bench/RESULTS.md``).
    """
    with compressed_with(con, "zstd"):
        for i, (lo, hi) in enumerate(key_ranges(con, "_bb_order", "row_number", per_pass)):
            rows = f"row_number >= {lo} AND row_number < {hi}"
            source = (
                f"(SELECT * FROM {audience} "
                "JOIN (SELECT row_number AS __bb_row, job_no AS __bb_job, batch_no AS __bb_batch "
                f"FROM _bb_order WHERE {rows}) o "
                f"ON o.__bb_row = row_number WHERE {rows} ORDER BY __bb_batch, row_number)"
            )
            # Sorted before the JSON is built: the sort moves the input columns, not the
            # users' JSON (2.5 times wider); the projections over it keep its order (DuckDB's
            # order preservation: SELECT, WHERE and CTEs over an ordered subquery).
            users = users_sql(q, source, "true", ("__bb_job", "__bb_batch"))
            into = "CREATE TABLE plan AS" if i == 0 else "INSERT INTO plan"
            con.execute(f"{into} SELECT {_PLAN_COLUMNS} FROM ({users})")


def _run(
    con: duckdb.DuckDBPyConnection,
    options: PlanOptions,
    q: Queries,
    audience: str,
    per_pass: int,
    scratch: str | None,
) -> ShardInfo | None:
    """Create ``rejects``, ``duplicates`` and ``plan`` (and the scratch tables the report
    reads, ``_bb_keys`` and ``_bb_order`` in ``scratch``: see :func:`_scratch`). With a shard,
    first remove the other shards' rows (:mod:`.shard`)."""
    for table in ("plan", "rejects", "duplicates"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    with compressed_with(con, "uncompressed"):
        con.execute(f"{_create(scratch, '_bb_keys')} AS {keys_sql(q, options, audience)}")
    _mark_bad_rows(con)
    shard = None
    if options.shard is not None:
        selected = f"SELECT row_number FROM {audience}" if options.sql else None
        shard = apply_shard(con, options.shard, selected)
    _mark_too_large(con, q, options, audience)
    _write_rejects(con, options, audience)
    _dedupe(con, options)
    with compressed_with(con, "uncompressed"):
        con.execute(f"{_create(scratch, '_bb_order')} AS {order_sql(options)}")
    _write_plan(con, q, audience, per_pass)
    return shard


def build_plan(
    con: duckdb.DuckDBPyConnection,
    options: PlanOptions,
    run_dir: Path | None = None,
    *,
    defer_plan_file: bool = False,
) -> PlanInfo:
    """Plan the send from table ``inputs``; see :mod:`bulkbatch.stages.plan` for every rule.

    Creates ``plan``, ``rejects`` and ``duplicates``; writes ``plan.parquet``,
    ``rejects.parquet`` and ``duplicates.parquet`` into ``run_dir`` when given
    (``defer_plan_file``, a send's plan: not ``plan.parquet``, which the send writes while it
    runs, with :func:`~bulkbatch.stages.plan.report.plan_file_meanwhile`; ``PlanInfo.audience``
    is then None).

    How (for speed and flat memory): validation, deduplication and the batch/job numbering
    run on a narrow key table (``row_number``, ``recipient``, reason); the user JSON is built
    once, only for the users to send, in the pass that writes ``plan``. DuckDB works under
    :data:`~bulkbatch.db.BUILD_SHARE` of its cap, the files are written under less.

    :raises UsageError: an unknown ``--map`` column or path, bad ``--where``/``--sql``
    :raises InputError: the input has no address column at all
    :raises PlanError: ``--dedupe fail`` met duplicates, or DuckDB failed
    :raises StateError: the scratch database cannot be made in ``run_dir``
    """
    started = time.perf_counter()
    configure_connection(con)
    aud = _audience(con, options)
    where, referenced = None, frozenset[str]()
    if options.where:
        where, referenced = check_where(con, options.where, aud.source, aud.columns)
    q = build_queries(options, Cols(aud.types), aud.targets, where, aud.label)
    unused = unused_columns(aud.columns, aud.targets, aud.paths, referenced)
    per_pass = scaled_to_cap(con, PLAN_ROWS)  # from the whole cap: see PLAN_ROWS
    try:
        with _scratch(con, run_dir) as scratch, memory_share(con, BUILD_SHARE):
            shard = _run(con, options, q, aud.source, per_pass, scratch)
            info = make_report(
                con,
                options,
                aud.targets,
                started,
                fingerprint=_fingerprint(options),
                unused=unused,
                unused_note=unused_note(unused),
            )
    except duckdb.OutOfMemoryException:
        raise  # not a bad query: the pipeline reports the memory budget
    except duckdb.Error as exc:
        if options.where or options.sql:
            w, s = option("where").flag, option("sql").flag
            raise UsageError(
                f"The plan query failed: {first_line(exc)}. "
                f"Check {w} / {s} (the error may come from a value they meet)."
            ) from None
        raise PlanError(f"The plan query failed: {first_line(exc)}.") from None
    finally:
        with contextlib.suppress(duckdb.Error):
            for table in _TEMP_TABLES:
                con.execute(f"DROP TABLE IF EXISTS {table}")
    if shard is not None:
        info = dataclasses.replace(info, shard=shard.to_dict())
    if run_dir is None:
        return info
    files = write_files(con, Path(run_dir), plan_file=not defer_plan_file)
    return dataclasses.replace(
        info, duplicates_file=files.paths["duplicates.parquet"], audience=files.audience
    )
