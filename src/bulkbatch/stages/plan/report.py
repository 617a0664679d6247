"""The plan report (:class:`PlanInfo`): counts, duplicate groups, pre-flight warnings and
notes, a sample of users as sent; and the plan files written into the run directory."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import duckdb
import orjson
import pyarrow.parquet as pq

from bulkbatch.db import (
    ARROW_PARQUET,
    MEMORY_LIMIT_ENV,
    PARQUET_OPTIONS,
    SCAN_SHARE,
    fetch_one,
    memory_limit,
    memory_share,
    prefetched_batches,
    quote_ident,
    quote_literal,
)
from bulkbatch.errors import AccountingError, PlanError
from bulkbatch.heap import give_back
from bulkbatch.identity import AudienceFold, audience_terms_sql
from bulkbatch.options import option
from bulkbatch.stages.plan.filters import first_line
from bulkbatch.stages.plan.model import ADDRESS_TARGETS, PlanOptions, content_variables

__all__ = [
    "PLAN_FILES",
    "PlanFiles",
    "PlanInfo",
    "ensure_plan_file",
    "make_report",
    "plan_file_meanwhile",
    "write_files",
]

SAMPLE_USERS = 3
DUP_GROUPS = 5
PLAN_FILES = ("plan.parquet", "rejects.parquet", "duplicates.parquet")
"""The files :func:`write_files` writes into the run directory."""


@dataclass(frozen=True)
class PlanInfo:
    """The plan report: counts, the first duplicate groups, rejects by reason, warnings and
    notes, a sample of users as sent, and the batch/job layout."""

    rows_read: int
    to_send: int
    duplicates: int
    rejected: int
    rejected_by_reason: dict[str, int]
    duplicate_groups: list[dict[str, Any]]
    warnings: list[str]
    sample_users: list[dict[str, Any]]
    batches: int
    jobs: int
    batch_size: int
    key_columns: tuple[str, ...]
    fingerprint: str
    seconds: float
    notes: list[str] = field(default_factory=list)
    """Information that needs no action (unused columns, phone numbers sent as given)."""
    unused_columns: tuple[str, ...] = ()
    """Input columns nothing sends, maps or filters on (see the note for how to map one)."""
    unreachable: int = 0
    """Users to send without the address the expected channel needs."""
    phones_as_given: int = 0
    """Users to send whose phone number could not be made E.164 and is sent as given."""
    duplicates_file: str | None = None
    """``duplicates.parquet`` in the run directory, when the plan wrote files."""
    shard: dict[str, Any] | None = None
    """A sharded plan: :meth:`bulkbatch.stages.plan.shard.ShardInfo.to_dict`."""
    audience: str | None = None
    """The audience fingerprint (:func:`bulkbatch.identity.audience_fingerprint`), when the
    plan wrote files: taken in the scan that writes ``plan.parquet``."""

    def requests(self) -> int:
        """Every request the run will make: per job a create, a check after creating, a
        verify, a run and about three polls; one ingest per batch; one results page per 100
        users (and one more per job)."""
        pages = -(-self.to_send // 100) + self.jobs
        return self.batches + self.jobs * 7 + pages

    def estimated_seconds(self, rate: float | None) -> float | None:
        """Seconds the whole run needs at ``rate`` requests/s (every request, not only the
        ingests: at 1M people the ~10,000 result pages outnumber the 1,000 ingests)."""
        if rate is None or rate <= 0:
            return None
        return self.requests() / rate

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["key_columns"] = list(self.key_columns)
        d["unused_columns"] = list(self.unused_columns)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlanInfo:
        values = dict(d)
        values["key_columns"] = tuple(values.get("key_columns", ()))
        values["unused_columns"] = tuple(values.get("unused_columns", ()))
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in names})

    def render(self, rate: float | None = None) -> str:
        """The report as plain text lines (the CLI may style it)."""
        lines = []
        if self.shard:
            sh = self.shard
            lines.append(
                f"shard         {sh['index']:>8} of {sh['count']}  ({self.rows_read:,} of "
                f"{sh['total_input_rows']:,} input rows)"
            )
        lines += [
            f"rows read     {self.rows_read:>12,}",
            f"to send       {self.to_send:>12,}",
            f"duplicates    {self.duplicates:>12,}",
            f"rejected      {self.rejected:>12,}",
        ]
        for code, n in sorted(self.rejected_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {code:<12}{n:>12,}")
        if self.duplicate_groups:
            lines.append("duplicate groups (first few):")
            for g in self.duplicate_groups:
                rows = ", ".join(str(r) for r in g["rows"])
                lines.append(f"  {g['recipient']}: rows {rows}; kept row {g['kept']}")
            if self.duplicates_file:
                lines.append(f"  all duplicates: {self.duplicates_file}")
        lines.append(
            f"batches       {self.batches:>12,}  (up to {self.batch_size} users each, "
            f"{self.jobs} job{'s' if self.jobs != 1 else ''})"
        )
        est = self.estimated_seconds(rate)
        if est is not None:
            lines.append(f"estimated     {est:>11,.1f}s  at {rate:g} requests/s")
        lines.extend(f"warning: {w}" for w in self.warnings)
        lines.extend(f"note: {n}" for n in self.notes)
        if self.sample_users:
            lines.append("sample users:")
            lines.extend(f"  {orjson.dumps(u).decode()}" for u in self.sample_users)
        return "\n".join(lines)


# ---------------------------------------------------------------------------- the report


def _counts(con: duckdb.DuckDBPyConnection) -> tuple[int, int, int, int, int, dict[str, int]]:
    """(rows read, to send, batches, jobs, duplicates, rejects by reason); checks they add up."""
    rows_read = int(fetch_one(con, "SELECT count(*) FROM inputs")[0])
    to_send, batches, jobs = (
        int(v)
        for v in fetch_one(
            con,
            "SELECT count(*), coalesce(max(batch_no) + 1, 0), coalesce(max(job_no) + 1, 0) "
            "FROM plan",
        )
    )
    dups = int(fetch_one(con, "SELECT count(*) FROM duplicates")[0])
    by_reason = {
        str(code): int(n)
        for code, n in con.execute(
            "SELECT reason_code, count(*) FROM rejects GROUP BY 1 ORDER BY 2 DESC, 1"
        ).fetchall()
    }
    rejected = sum(by_reason.values())
    if rows_read != to_send + dups + rejected:
        raise AccountingError(
            f"The plan does not add up: {rows_read} rows read, but {to_send} to send + {dups} "
            f"duplicates + {rejected} rejected. This is a bug in bulkbatch; please report it."
        )
    return rows_read, to_send, batches, jobs, dups, by_reason


def _duplicate_groups(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    rows = con.execute(
        "SELECT g.recipient, list(s.row_number ORDER BY s.row_number), any_value(d.kept) FROM "
        f"(SELECT * FROM _bb_groups ORDER BY first_row LIMIT {DUP_GROUPS}) g "
        "JOIN _bb_keys s ON s.recipient = g.recipient AND s.reason_code IS NULL "
        "JOIN (SELECT recipient, any_value(kept_row_number) AS kept FROM duplicates "
        "GROUP BY 1) d ON d.recipient = g.recipient "
        "GROUP BY g.recipient ORDER BY min(s.row_number)"
    ).fetchall()
    return [
        {"recipient": str(r), "rows": [int(x) for x in rs], "kept": int(k)} for r, rs, k in rows
    ]


def _sample(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The first users as sent. A user Python cannot decode (it never should: deep JSON is
    rejected) is left out rather than failing the plan."""
    out: list[dict[str, Any]] = []
    for (text,) in con.execute(
        f"SELECT user_json FROM plan ORDER BY batch_no, row_number LIMIT {SAMPLE_USERS}"
    ).fetchall():
        try:
            out.append(orjson.loads(str(text)))
        except orjson.JSONDecodeError:
            continue
    return out


@dataclass(frozen=True)
class _Flags:
    sent: int
    unreachable: int
    to_email_only: int
    phones_as_given: int


def _flags(con: duckdb.DuckDBPyConnection) -> _Flags:
    row = fetch_one(
        con,
        "SELECT count(*), count(*) FILTER (WHERE _no_channel_address), "
        "count(*) FILTER (WHERE _to_email_only), count(*) FILTER (WHERE _phone_as_given) "
        "FROM _bb_keys s WHERE s.reason_code IS NULL "
        "AND s.row_number NOT IN (SELECT row_number FROM duplicates)",
    )
    return _Flags(*(int(v) for v in row))


def _channel_warnings(options: PlanOptions, targets: Mapping[str, str], flags: _Flags) -> list[str]:
    mp, where = option("mapping").flag, option("where").flag
    n, total = flags.unreachable, flags.sent
    out: list[str] = []
    if options.channel == "email":
        if flags.to_email_only:
            out.append(
                f"{flags.to_email_only} user(s) have to.email but no profile.email: Courier "
                "does not route e-mail jobs by to.email, so they will get nothing. Map the "
                f"address to profile.email ({mp} profile.email={targets.get('to.email', 'COLUMN')})."
            )
        if n and n != flags.to_email_only:
            out.append(
                f"{n} user(s) to send have no profile.email, so this e-mail job cannot reach "
                "them (Courier reports them UNROUTABLE). Add an e-mail column, or use "
                f"{where} to leave them out."
            )
    elif options.channel == "sms" and n:
        out.append(
            f"{n:,} of {total:,} users have no phone number; Courier cannot text them (it "
            f"reports them UNROUTABLE). Map one with {mp} phone_number=COLUMN, or use {where} "
            "to leave them out."
        )
    elif options.channel in ("push", "inbox") and n:
        out.append(
            f"{n:,} of {total:,} users have no user_id; Courier cannot {options.channel} them "
            f"without one (it reports them UNROUTABLE). Map one with {mp} user_id=COLUMN, or "
            f"use {where} to leave them out."
        )
    return out


def _var_path(name: str) -> str:
    return "$.data" + "".join("." + orjson.dumps(p).decode() for p in name.split("."))


def _content_warnings(con: duckdb.DuckDBPyConnection, options: PlanOptions) -> list[str]:
    variables = content_variables(options.content) if options.content else []
    if not variables:
        return []
    missing = [f"NOT json_exists(user_json, {quote_literal(_var_path(v))})" for v in variables]
    checks = ", ".join(f"count(*) FILTER (WHERE {m})" for m in missing)
    row = fetch_one(
        con, f"SELECT count(*) FILTER (WHERE {' OR '.join(missing)}), {checks} FROM plan"
    )
    if not row[0]:
        return []
    detail = ", ".join(f"{{{{{v}}}}} ({n})" for v, n in zip(variables, row[1:], strict=True) if n)
    text = (
        f"{row[0]} user(s) lack data for the content's variables: {detail}. Add the values to "
        f"the input (data.NAME columns) or to {option('data').flag}, or they render empty."
    )
    return [text]


def _phone_note(flags: _Flags) -> list[str]:
    if not flags.phones_as_given:
        return []
    text = (
        f"{flags.phones_as_given:,} phone number(s) are not in international form (a + or 00, "
        "then 8 to 15 digits) and are sent as given; add the country code so Courier can "
        "text them."
    )
    return [text]


def make_report(
    con: duckdb.DuckDBPyConnection,
    options: PlanOptions,
    targets: Mapping[str, str],
    started: float,
    *,
    fingerprint: str,
    unused: Sequence[str] = (),
    unused_note: str | None = None,
) -> PlanInfo:
    """The :class:`PlanInfo` of the tables just written (``_bb_keys``/``_bb_groups`` live).

    :raises AccountingError: the rows do not add up
    """
    rows_read, to_send, batches, jobs, dups, by_reason = _counts(con)
    flags = _flags(con)
    warnings = _channel_warnings(options, targets, flags) + _content_warnings(con, options)
    notes = _phone_note(flags) + ([unused_note] if unused_note else [])
    return PlanInfo(
        rows_read=rows_read,
        to_send=to_send,
        duplicates=dups,
        rejected=sum(by_reason.values()),
        rejected_by_reason=by_reason,
        duplicate_groups=_duplicate_groups(con),
        warnings=warnings,
        sample_users=_sample(con),
        batches=batches,
        jobs=jobs,
        batch_size=options.batch_size,
        key_columns=tuple(dict.fromkeys(targets[t] for t in ADDRESS_TARGETS if t in targets)),
        fingerprint=fingerprint,
        seconds=time.perf_counter() - started,
        notes=notes,
        unused_columns=tuple(unused),
        unreachable=flags.unreachable,
        phones_as_given=flags.phones_as_given,
    )


# ------------------------------------------------------------------------------ the files


def _input_columns(con: duckdb.DuckDBPyConnection, taken: Sequence[str]) -> str:
    """``i.<col> AS <col>`` for every input column but row_number; a name already in
    ``taken`` gets an ``input_`` prefix."""
    cols = [str(r[0]) for r in con.execute("DESCRIBE inputs").fetchall() if r[0] != "row_number"]
    return ", ".join(
        f"i.{quote_ident(c)} AS {quote_ident('input_' + c if c in taken else c)}" for c in cols
    )


PLAN_FILE_SHARE = 1 / 4
"""DuckDB's share of its cap while ``plan.parquet`` is written. A scan needs little of it:
with half, the peak RSS at 10M was 366 MiB, against 508 MiB with all of it and 418 MiB for
DuckDB's own COPY. A quarter, with :data:`_QUEUED` batches ahead rather than 4, wrote the
file of a real 10M send in 7.2 s at 320 MiB, against 7.1 s at 422 MiB (bench/RESULTS.md,
round 19)."""
_QUEUED = 2
"""Arrow batches read ahead of the writer. Each holds ~9 MiB at 10M (the users' JSON); the
writer is the slower side, so more ahead only hold memory."""


def _write_plan_file(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    *,
    fold: bool = True,
    share: float = PLAN_FILE_SHARE,
    fixed: int = 0,
    stop: threading.Event | None = None,
) -> str | None:
    """``plan.parquet``, in the table's order, streamed through pyarrow's Parquet writer
    under ``share`` of the cap (:data:`PLAN_FILE_SHARE`): the user JSON is written without
    dictionary or statistics, which cannot help a reader. Returns the audience fingerprint,
    folded from the same scan (the writer is the slower side, so DuckDB's MD5s cost little
    wall time: at 10M, the file and the fingerprint took 8.8-9.2 s together, 9.4-10.3 s one
    after the other).

    ``fold=False``: the file alone (the run took the fingerprint already); ``share`` and
    ``fixed``: of the cap in force (:func:`~bulkbatch.db.memory_share`; a send's writer takes
    :data:`BESIDE_SHARE` of the network phase's); ``stop`` set ends it early. The file is
    written under a temporary name and renamed when complete, so a write that stops or fails
    half way leaves no partial ``plan.parquet``.
    """
    columns = "row_number, job_no, batch_no, recipient, user_json"
    schema = con.sql(f"SELECT {columns} FROM plan LIMIT 0").to_arrow_table().schema
    audience = AudienceFold() if fold else None
    query = audience_terms_sql(columns) if fold else f"SELECT {columns} FROM plan"
    partial = path.with_name(path.name + ".partial")
    try:
        with (
            memory_share(con, share, fixed),
            pq.ParquetWriter(
                partial,
                schema,
                use_dictionary=["job_no", "batch_no"],
                write_statistics=["row_number", "job_no", "batch_no", "recipient"],
                **ARROW_PARQUET,
            ) as writer,
        ):
            for batch in prefetched_batches(con, [query], _QUEUED):
                if stop is not None and stop.is_set():
                    break
                if audience is not None:
                    audience.add(batch.column("_bb_h1"), batch.column("_bb_h2"))
                writer.write_batch(batch.select(schema.names))
        if stop is not None and stop.is_set():
            raise _Stopped
        os.replace(partial, path)
    except BaseException as exc:
        if partial.is_file():
            partial.unlink()
        if isinstance(exc, _Stopped):
            return None
        raise
    return None if audience is None else audience.hexdigest()


BESIDE_SHARE = 1 / 2
"""What :func:`plan_file_meanwhile`'s writer leaves DuckDB of the share in force (the network
phase's, :data:`bulkbatch.ledger.NETWORK_SHARE`) while it runs: half, plus
:data:`BESIDE_FIXED`. The scan would otherwise keep the plan's blocks cached up to the whole
share, beside the network stages' own memory. In 10M sends (``bench/rss_timeline.py``, with
the heap given back) the writer's stretch peaked at 397-411 MiB under half, against 425-443
under all of it, and the send's peak was then the plan's or the results' (415-424 MiB); the
writer took 14.9 s against 14.4, and the pages' commits fit."""
BESIDE_FIXED = 8 * 2**20
"""Bytes added to :data:`BESIDE_SHARE` of the share in force (never more than that share), so
under a small cap the writer takes nothing away."""


class _Stopped(Exception):
    """The write of ``plan.parquet`` was asked to stop."""


def ensure_plan_file(con: duckdb.DuckDBPyConnection, run_dir: Path) -> None:
    """Write ``plan.parquet`` into ``run_dir`` if a send left none (it stopped, or could not
    write it, while :func:`plan_file_meanwhile` was writing it)."""
    path = run_dir / PLAN_FILES[0]
    if not path.exists():
        _write_plan_file(con, path, fold=False)


@contextlib.asynccontextmanager
async def plan_file_meanwhile(
    con: duckdb.DuckDBPyConnection, run_dir: Path
) -> AsyncIterator[Callable[[], None]]:
    """Write ``plan.parquet`` on a thread of its own during the body, if ``run_dir`` has none
    (a send plans without it); the body calls what this yields to start it when the run can
    spare a core (the send: once every batch is in), and leaving starts it if the body did
    not, then waits for it. A body that fails or is stopped ends it at its next batch.

    Why: the file is for people, and the send reads the ``plan`` table, so it need not stand
    between the plan and the first request. At 10M its writer (pyarrow, one thread) took 9.4-
    9.8 s of the plan with the fingerprint folded in, against 3.8-4.0 s for the fingerprint's
    own pass. Started with the send, it took CPU from an ingest that already shares the
    machine's two cores with the emulator (1M at 150 ms: 0.5 s off the plan, 0.26 s off the
    run, three pairs); once every batch is in, the client mostly waits on the network (0.6 s
    off the run).

    The writer first gives glibc's free heap back (:func:`~bulkbatch.heap.give_back`): the
    load, the plan and the ingest leave it fragmented, and the writer's Arrow buffers
    (``malloc``'d by DuckDB) would grow it further. In 10M sends (``bench/rss_timeline.py``)
    the writer beside the pages raised RSS from ~350 to 451-457 MiB without it, over the
    450 MiB bound, and to 395-443 MiB with it. It also lowers DuckDB's cap while it writes
    (:data:`BESIDE_SHARE`). 10M sends, alternating with the code that wrote the file first
    above 2M users: load + plan 54.5-55.7 s against 59.4-61.8, peak 416-425 MiB against
    435-455, wall 228.6-232.1 s against 223.9-231.6. The wall time there is the cost: the
    fingerprint's own pass is work the file's scan hid, and at no latency the send shares
    the two cores with the emulator; against a distant API the client mostly waits.

    :raises PlanError: the file could not be written (the send itself is unaffected; a resume
        writes it again)
    """
    path = run_dir / PLAN_FILES[0]
    if path.exists():
        yield lambda: None
        return
    stop = threading.Event()
    failed: list[BaseException] = []
    cur = con.cursor()  # the run's other threads use their own cursors meanwhile

    def work() -> None:
        try:
            give_back()
            _write_plan_file(
                cur, path, fold=False, share=BESIDE_SHARE, fixed=BESIDE_FIXED, stop=stop
            )
        except BaseException as exc:  # noqa: BLE001 - reported once the body is done
            failed.append(exc)

    thread = threading.Thread(target=work, name="bulkbatch-plan-file", daemon=True)

    def begin() -> None:
        if thread.ident is None:
            thread.start()

    try:
        yield begin
        begin()
    except BaseException:
        stop.set()
        raise
    finally:
        if thread.ident is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(thread.join)
        cur.close()
    if failed:
        raise _not_written(path, run_dir, failed[0]) from None


def _not_written(path: Path, run_dir: Path, exc: BaseException) -> PlanError:
    """The one error of a ``plan.parquet`` the writer could not write: DuckDB out of its
    memory (the writer runs under :data:`BESIDE_SHARE`) or anything else (the disk)."""
    after = f"then 'bulkbatch resume {run_dir}' writes the file and the results."
    if isinstance(exc, duckdb.OutOfMemoryException):
        return PlanError(
            f"DuckDB ran out of its {memory_limit()} memory budget writing {path} "
            f"({first_line(exc)}). "
            f"The send is not affected; give it more with {MEMORY_LIMIT_ENV}=2GB, {after}"
        )
    return PlanError(
        f"Cannot write {path}: {first_line(exc)}. The send is not affected; check the disk, "
        + after
    )


_REVIEWED = "_bb_reviewed"


def _write_reviews(con: duckdb.DuckDBPyConnection, paths: Mapping[str, str]) -> None:
    """``rejects.parquet`` and ``duplicates.parquet``: small tables with their rows' input
    columns, under :data:`~bulkbatch.db.SCAN_SHARE` of the cap (the scan of ``inputs`` would
    otherwise stay cached up to all of it).

    The input columns of both tables' rows are taken in one scan of ``inputs``, into a TEMP
    table each file joins; a join of each table with ``inputs`` scanned every column of every
    row twice (10M rows, 195,000 duplicates and 4,915 rejects: 1.26-1.41 s against 1.84-1.86,
    the same files; bench/RESULTS.md, round 28 of #19). The TEMP table holds only those rows,
    a few per cent of most audiences; DuckDB spills it to its temporary directory when it
    does not fit."""
    with memory_share(con, SCAN_SHARE):
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {_REVIEWED} AS SELECT * FROM inputs WHERE row_number "
            "IN (SELECT row_number FROM rejects UNION ALL SELECT row_number FROM duplicates)"
        )
        try:
            for table, name, keys in (
                ("rejects", "rejects.parquet", ("reason_code", "reason")),
                ("duplicates", "duplicates.parquet", ("recipient", "kept_row_number")),
            ):
                picked = _input_columns(con, keys)
                chosen = ", ".join(f"t.{k}" for k in keys)
                con.execute(
                    f"COPY (SELECT t.row_number, {chosen}, {picked} FROM {table} t "
                    f"JOIN {_REVIEWED} i USING (row_number) ORDER BY t.row_number) "
                    f"TO {quote_literal(paths[name])} ({PARQUET_OPTIONS})"
                )
        finally:
            with contextlib.suppress(duckdb.Error):
                con.execute(f"DROP TABLE IF EXISTS {_REVIEWED}")


class PlanFiles(NamedTuple):
    """What :func:`write_files` wrote: the files' paths by name, and the audience fingerprint
    taken on the way (None when ``plan.parquet`` was left for later)."""

    paths: dict[str, str]
    audience: str | None


def write_files(
    con: duckdb.DuckDBPyConnection, run_dir: Path, *, plan_file: bool = True
) -> PlanFiles:
    """Write ``plan.parquet``, ``rejects.parquet`` and ``duplicates.parquet`` (each with the
    input columns, for fixing or reviewing them) into ``run_dir``. ``plan_file=False`` leaves
    ``plan.parquet`` (and the fingerprint taken with it) to :func:`plan_file_meanwhile`.

    :raises PlanError: the directory is not writable
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: str(run_dir / name) for name in PLAN_FILES}
    try:
        audience = _write_plan_file(con, Path(paths["plan.parquet"])) if plan_file else None
        if not plan_file:  # an older one would not be this plan's
            Path(paths["plan.parquet"]).unlink(missing_ok=True)
        _write_reviews(con, paths)
    except duckdb.OutOfMemoryException:
        raise  # not an unwritable directory: the pipeline reports the memory budget
    except (duckdb.Error, OSError) as exc:  # pyarrow's I/O errors are OSErrors
        raise PlanError(
            f"Cannot write the plan files to {run_dir}: {first_line(exc)}. "
            "Check that the run directory is writable and the disk has space."
        ) from None
    return PlanFiles(paths, audience)
