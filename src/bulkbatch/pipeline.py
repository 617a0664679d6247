"""The orchestrator: one run directory, every stage in order, resumable at any point.

``send()`` creates a run directory, loads and plans the audience, then runs the network
stages; ``Run(path).resume()`` picks a stopped run up at its first unfinished step and
never repeats a side effect the ledger holds (dlt's "finish pending work first").

The CLI is a thin layer over these functions; notebooks call them directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import duckdb
import orjson

from bulkbatch._sync import run_sync
from bulkbatch.client.courier import CourierClient
from bulkbatch.config import DEFAULT_CONCURRENCY, Settings, auto_job_size
from bulkbatch.errors import StateError, UsageError
from bulkbatch.html_report import write_report
from bulkbatch.ledger import LedgerWriter
from bulkbatch.once import DEFAULT_LEDGER_NAME, exclude_sent, record_sent
from bulkbatch.progress import NullProgress, Progress, ProgressEvent
from bulkbatch.stages.load import (
    LoadInfo,
    LoadOptions,
    fingerprint_files,
    load_frame,
    load_inputs,
    resolve_sources,
)
from bulkbatch.stages.plan import PlanInfo, PlanOptions, build_plan, job_message
from bulkbatch.stages.results import ResultsInfo, write_results, write_summary
from bulkbatch.stages.send import ingest_job, ingest_progress, run_job, verify_job
from bulkbatch.stages.track import fetch_messages, page_users, wait_for_job
from bulkbatch.state import (
    MEMORY_LIMIT_ENV,
    JobState,
    RunState,
    ensure_ledger,
    memory_limit,
    open_run_db,
)

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

__all__ = [
    "Run",
    "RunOptions",
    "RunStatus",
    "asend",
    "plan",
    "results",
    "resume",
    "send",
    "split_options",
    "status",
]

T = TypeVar("T")

_LOAD_FIELDS = {f.name for f in dataclasses.fields(LoadOptions)} - {"sources"}
_PLAN_FIELDS = {f.name for f in dataclasses.fields(PlanOptions)}


@dataclass(frozen=True)
class RunOptions:
    """What a run does after sending.

    :param wait: wait for each job to finish and page its per-user results
    :param timeout: the most seconds to wait for a job; the run stays resumable after it
    :param messages: also fetch each message's delivery status from the Messages API
    :param include_profile: keep every input column in results.parquet, not only the keys
    """

    wait: bool = True
    timeout: float | None = None
    messages: bool = False
    include_profile: bool = False


def split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keyword options into :class:`LoadOptions` and :class:`PlanOptions` fields."""
    load: dict[str, Any] = {}
    plan_: dict[str, Any] = {}
    for name, value in options.items():
        if name in _PLAN_FIELDS:
            plan_[name] = value
        elif name in _LOAD_FIELDS:
            load[name] = value
        else:
            known = ", ".join(sorted(_LOAD_FIELDS | _PLAN_FIELDS))
            raise UsageError(f"Unknown option {name!r}. Known options: {known}.")
    return load, plan_


def _sql_str(path: Path) -> str:
    return str(path).replace("'", "''")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:40] or "run"


def _new_run_dir(runs_root: Path, plan_options: PlanOptions) -> Path:
    name = plan_options.event or plan_options.template or "content"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = runs_root / f"{_slug(name)}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _options_fingerprint(
    load: Mapping[str, Any], plan_options: PlanOptions, files_fingerprint: str
) -> str:
    """Everything that shapes what a run sends: the input files (path, size, mtime), the
    load options, the plan options and the job message."""
    payload = {
        "files": files_fingerprint,
        "load": {k: v for k, v in load.items() if v is not None},
        "plan": dataclasses.asdict(plan_options),
        "message": job_message(plan_options),
    }
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _is_frame(source: object) -> bool:
    return not isinstance(source, str | Path) and not (
        isinstance(source, Sequence) and all(isinstance(s, str | Path) for s in source)
    )


def _sources(source: object) -> tuple[str, ...]:
    if isinstance(source, str | Path):
        return (str(source),)
    assert isinstance(source, Sequence)
    return tuple(str(s) for s in source)


# -- status ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStatus:
    """Where a run stands, read from ``state.json`` (works while another process sends)."""

    run_id: str
    run_dir: Path
    stage: str
    rows: int
    to_send: int
    users_acked: int
    jobs: tuple[dict[str, Any], ...]
    finished: bool

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d

    def __str__(self) -> str:
        lines = [
            f"run {self.run_id} ({self.run_dir}): {self.stage}",
            f"  rows {self.rows:,}, to send {self.to_send:,}, acknowledged {self.users_acked:,}",
        ]
        for j in self.jobs:
            lines.append(
                f"  job {j['job_id'] or '(not created)'}: {j['status'] or '-'}"
                f" received {j['received'] if j['received'] is not None else '-'}"
                f" enqueued {j['enqueued'] if j['enqueued'] is not None else '-'}"
                f" failures {j['failures'] if j['failures'] is not None else '-'}"
            )
        return "\n".join(lines)


STAGES = ("load", "plan", "send", "track", "results")


def _status_of(state: RunState) -> RunStatus:
    pending = [s for s in STAGES if not state.done(s)]
    stage = "finished" if not pending else f"next: {pending[0]}"
    return RunStatus(
        run_id=state.run_id,
        run_dir=state.run_dir,
        stage=stage,
        rows=int(state.plan.get("rows_read", 0)),
        to_send=int(state.plan.get("to_send", 0)),
        users_acked=int(state.progress.get("users_acked", 0)),
        jobs=tuple(
            {
                "job_no": j.job_no,
                "job_id": j.job_id,
                "users": j.users,
                "status": j.status,
                "received": j.received,
                "enqueued": j.enqueued,
                "failures": j.failures,
                "run": j.run,
            }
            for j in state.jobs
        ),
        finished=not pending,
    )


# -- the run --------------------------------------------------------------------------


class Run:
    """A run directory: what was planned, sent and learned, and how to continue it.

    Usage::

        run = bulkbatch.Run("runs/welcome-20261123-101500")
        run.status()          # where it stands
        run.resume()          # finish whatever is left
        df = run.results()    # one row per input row (polars)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.state = RunState.load(self.path)

    def __repr__(self) -> str:
        return f"<Run {self.state.run_id} {_status_of(self.state).stage} at {self.path}>"

    @property
    def run_id(self) -> str:
        return self.state.run_id

    @property
    def plan_info(self) -> PlanInfo:
        if not self.state.plan:
            raise StateError(f"Run {self.run_id} has not been planned yet.")
        return PlanInfo.from_dict(self.state.plan)

    @property
    def job_ids(self) -> list[str]:
        return [j.job_id for j in self.state.jobs if j.job_id]

    # -- reading ----------------------------------------------------------------------
    def status(self, *, refresh: bool = False, settings: Settings | None = None) -> RunStatus:
        """Where the run stands; with ``refresh`` ask Courier for each job's status first."""
        if refresh and self.job_ids:
            run_sync(self._arefresh, settings or self._settings(None))
        self.state = RunState.load(self.path)
        return _status_of(self.state)

    async def _arefresh(self, settings: Settings) -> None:
        async with self._client_context(settings) as client:
            for job in self.state.jobs:
                if job.job_id:
                    remote = await client.retrieve_job(job.job_id)
                    job.status, job.received = remote.status, remote.received
                    job.enqueued, job.failures = remote.enqueued, remote.failures
        self.state.save()

    def summary(self) -> dict[str, Any]:
        """The content of ``summary.json`` (counts, statuses, jobs, timings)."""
        path = self.path / "summary.json"
        if not path.exists():
            raise StateError(
                f"Run {self.run_id} has no summary yet. Finish it with "
                f"'bulkbatch resume {self.path}' or write results with "
                f"'bulkbatch results {self.path}'."
            )
        data: dict[str, Any] = orjson.loads(path.read_bytes())
        return data

    def _parquet(self, name: str) -> Path:
        path = self.path / name
        if not path.exists():
            raise StateError(
                f"Run {self.run_id} has no {name} yet. Run 'bulkbatch resume {self.path}' "
                "(or 'bulkbatch results' for results.parquet)."
            )
        return path

    def results(self) -> pl.DataFrame:
        """``results.parquet`` as a polars DataFrame (one row per input row)."""
        import polars as pl

        return pl.read_parquet(self._parquet("results.parquet"))

    def to_arrow(self) -> pa.Table:
        """``results.parquet`` as a pyarrow Table."""
        import pyarrow.parquet as pq

        return pq.read_table(self._parquet("results.parquet"))

    def rejects(self) -> pl.DataFrame:
        """Rows that will not be sent, with ``reason_code`` and ``reason``."""
        import polars as pl

        return pl.read_parquet(self._parquet("rejects.parquet"))

    def plan(self) -> pl.DataFrame:
        """The users to send, with their batch and the exact JSON sent."""
        import polars as pl

        return pl.read_parquet(self._parquet("plan.parquet"))

    def report(self, out: str | Path | None = None) -> Path:
        """Write the self-contained HTML report of this run; returns its path."""
        return write_report(self.path, out)

    # -- acting -----------------------------------------------------------------------
    def _settings(self, settings: Settings | None) -> Settings:
        s = settings or Settings.from_env(**self.state.options.get("settings", {}))
        if self.state.emulator:
            return s
        created = any(j.job_id for j in self.state.jobs)
        if not created:
            # Nothing exists at any Courier yet: the run binds to this base URL when its
            # first job is created.
            self.state.base_url = s.base_url
        elif s.base_url.rstrip("/") != self.state.base_url.rstrip("/"):
            raise StateError(
                f"Run {self.run_id} sent to {self.state.base_url} but COURIER_BASE_URL is "
                f"{s.base_url}; its jobs exist only at the first. Set "
                f"COURIER_BASE_URL={self.state.base_url} to continue it."
            )
        return s

    def _client_context(
        self, settings: Settings
    ) -> contextlib.AbstractAsyncContextManager[CourierClient]:
        return _client_context(self.state, settings)

    def resume(
        self,
        *,
        settings: Settings | None = None,
        progress: Progress = NullProgress,
        options: RunOptions | None = None,
    ) -> Run:
        """Finish every stage that has not finished, in order. Returns ``self``."""
        return run_sync(self.aresume, settings=settings, progress=progress, options=options)

    async def aresume(
        self,
        *,
        settings: Settings | None = None,
        progress: Progress = NullProgress,
        options: RunOptions | None = None,
    ) -> Run:
        """Async :meth:`resume` (for notebooks: ``await run.aresume()``)."""
        settings = self._settings(settings)
        options = options or RunOptions(**self.state.options.get("run", {}))
        _started(progress, self.state)
        await _execute(self.state, settings, progress, options)
        self.state = RunState.load(self.path)
        return self

    asend = aresume

    def write_results(
        self,
        out: str | Path | None = None,
        *,
        messages: bool = False,
        include_profile: bool | None = None,
        settings: Settings | None = None,
        progress: Progress = NullProgress,
    ) -> ResultsInfo:
        """(Re)write ``results.parquet``, optionally refreshing delivery statuses first."""
        return run_sync(
            self._awrite_results,
            Path(out) if out else None,
            messages,
            include_profile,
            settings,
            progress,
        )

    async def _awrite_results(
        self,
        out: Path | None,
        messages: bool,
        include_profile: bool | None,
        settings: Settings | None,
        progress: Progress,
    ) -> ResultsInfo:
        if not self.state.done("plan"):
            raise StateError(
                f"Run {self.run_id} was never planned; nothing to report. Run "
                f"'bulkbatch resume {self.path}'."
            )
        run_opts = RunOptions(**self.state.options.get("run", {}))
        if include_profile is None:
            include_profile = run_opts.include_profile
        con = open_run_db(self.path)
        try:
            ensure_ledger(con)
            if messages:
                s = self._settings(settings)
                async with self._client_context(s) as client:
                    await fetch_messages(con, client, concurrency=s.concurrency, progress=progress)
            info = await _in_thread(
                con,
                lambda: write_results(
                    con, self.state, out, include_profile=include_profile, messages=messages
                ),
                self.path,
            )
        finally:
            con.close()
        return info


@contextlib.asynccontextmanager
async def _client_context(state: RunState, settings: Settings) -> AsyncIterator[CourierClient]:
    """A client for the run's Courier: the real one, or the run's own emulator, restarted on
    the emulator database kept in the run directory (so even an --emulator run resumes)."""
    if state.emulator:
        from bulkbatch.emulator import Emulator

        with Emulator(
            db=state.run_dir / "emulator.sqlite",
            progression=state.options.get("emulator_progression", "polls:2"),
        ) as emu:
            local = dataclasses.replace(settings, base_url=emu.url, api_key=None)
            async with CourierClient(local) as client:
                yield client
    else:
        if not state.base_url:
            state.base_url = settings.base_url
        async with CourierClient(settings) as client:
            yield client


# -- the stages, in order -------------------------------------------------------------


async def _in_thread(con: duckdb.DuckDBPyConnection, fn: Callable[[], T], run_dir: Path) -> T:
    """Run blocking DuckDB work in a worker thread, interrupting it on cancellation.

    A thread cannot be cancelled, so on Ctrl-C (or any cancellation) the query running on
    ``con`` is interrupted and the thread is waited for before the cancellation goes on;
    that way the connection is free to close and the run stops within a moment, not after
    a ten-minute plan finishes.
    """
    finished = threading.Event()

    def work() -> T:
        try:
            return fn()
        finally:
            finished.set()

    try:
        return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
    except duckdb.OutOfMemoryException as exc:
        detail = str(exc).splitlines()[0].removeprefix("Out of Memory Error: ")
        raise StateError(
            f"DuckDB ran out of its {memory_limit()} memory budget ({detail}). Nothing is "
            f"lost and nobody was sent twice; give it more with {MEMORY_LIMIT_ENV}=2GB, then "
            f"run 'bulkbatch resume {run_dir}'. Please report the input size: bulkbatch aims "
            "to stay within the default budget."
        ) from None
    except anyio.get_cancelled_exc_class():
        con.interrupt()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(finished.wait)
        raise


def _started(progress: Progress, state: RunState) -> None:
    progress(
        ProgressEvent(
            "start",
            message=f"run {state.run_id}",
            extra={"run_dir": str(state.run_dir), "run_id": state.run_id},
        )
    )


def _prepare(
    state: RunState,
    con: duckdb.DuckDBPyConnection,
    frame: object | None,
    progress: Progress,
) -> None:
    """Load and plan if not done yet (blocking; called in a worker thread)."""
    load_dict = state.options.get("load") or {}
    load_opts = LoadOptions(**load_dict) if load_dict.get("sources") else None
    plan_opts = PlanOptions(**state.options.get("plan", {}))
    if not state.done("load"):
        progress(ProgressEvent("load", message="loading inputs"))
        started = time.monotonic()
        if frame is not None:
            info: LoadInfo = load_frame(con, frame)
        elif load_opts is not None:
            info = load_inputs(con, load_opts)
        else:
            raise StateError(
                f"Run {state.run_id} was started from an in-memory DataFrame and stopped before "
                "its rows were stored; start it again with bulkbatch.send(frame, ...)."
            )
        state.inputs = {"rows": info.rows, "files": list(info.files), "columns": list(info.columns)}
        state.mark("load", time.monotonic() - started)
        progress(ProgressEvent("load", info.rows, info.rows, "rows"))
    if not state.done("plan"):
        progress(ProgressEvent("plan", message="planning"))
        started = time.monotonic()
        if state.options.get("auto_job_size"):
            concurrency = int(
                state.options.get("settings", {}).get("concurrency") or DEFAULT_CONCURRENCY
            )
            size = auto_job_size(int(state.inputs.get("rows", 0)), concurrency)
            plan_opts = dataclasses.replace(plan_opts, max_job_size=size)
            state.options["plan"]["max_job_size"] = size
        pinfo = build_plan(con, plan_opts, state.run_dir)
        state.plan = pinfo.to_dict()
        state.message = job_message(plan_opts)
        once = state.options.get("once_per")
        if once:
            skipped = exclude_sent(con, Path(once["ledger"]), once["key"], plan_opts.batch_size)
            state.plan["skipped"] = skipped
            if skipped:
                state.plan["to_send"] = int(state.plan["to_send"]) - skipped
                con.execute(
                    "COPY (SELECT row_number, job_no, batch_no, recipient, user_json FROM plan) "
                    f"TO '{_sql_str(state.run_dir / 'plan.parquet')}' "
                    "(FORMAT parquet, COMPRESSION zstd)"
                )
        rows = (
            con.cursor()
            .execute(
                "SELECT job_no, count(*), min(batch_no), max(batch_no) FROM plan "
                "GROUP BY job_no ORDER BY job_no"
            )
            .fetchall()
        )
        state.jobs = [
            JobState(job_no=int(j), users=int(n), first_batch=int(lo), last_batch=int(hi))
            for j, n, lo, hi in rows
        ]
        state.plan["jobs"] = len(state.jobs)
        state.plan["batches"] = sum(j.batches for j in state.jobs)
        state.mark("plan", time.monotonic() - started)
        progress(
            ProgressEvent(
                "plan",
                pinfo.rows_read,
                pinfo.rows_read,
                "rows",
                message=f"{state.plan['to_send']:,} to send",
            )
        )


async def _execute(
    state: RunState,
    settings: Settings,
    progress: Progress,
    options: RunOptions,
    frame: object | None = None,
) -> None:
    con = open_run_db(state.run_dir)
    try:
        await _in_thread(con, lambda: _prepare(state, con, frame, progress), state.run_dir)
        ensure_ledger(con)
        if not state.jobs:
            # Nothing to send: every row was rejected or a duplicate. Still write results.
            for stage in ("send", "track"):
                if not state.done(stage):
                    state.mark(stage, 0.0)
        else:
            await _network(state, con, settings, progress, options)
        if options.wait and not state.done("results"):
            started = time.monotonic()
            progress(ProgressEvent("results", message="writing results.parquet"))
            info = await _in_thread(
                con,
                lambda: write_results(
                    con,
                    state,
                    include_profile=options.include_profile,
                    messages=options.messages,
                ),
                state.run_dir,
            )
            state.mark("results", time.monotonic() - started)
            write_summary(state, info)  # again, now with this stage's timing in it
    finally:
        con.close()


async def _network(
    state: RunState,
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    progress: Progress,
    options: RunOptions,
) -> None:
    acked = con.cursor().execute("SELECT coalesce(sum(users), 0) FROM batches").fetchone()
    state.progress["users_acked"] = int(acked[0]) if acked else 0
    send_started = time.monotonic()
    track_started: float | None = None
    async with _client_context(state, settings) as client:
        on_ack = ingest_progress(state, progress, client)
        async with LedgerWriter(con) as ledger:
            pagers = anyio.CapacityLimiter(settings.concurrency)

            async def track(job: JobState) -> None:
                if not options.wait or job.paged:
                    return
                async with pagers:
                    await _track(job)

            async def _track(job: JobState) -> None:
                await wait_for_job(
                    client,
                    state,
                    job,
                    poll_interval=settings.poll_interval,
                    max_wait=options.timeout,
                    progress=progress,
                )
                await page_users(con, client, state, job, ledger, progress=progress)

            async def finish(job: JobState, verify: bool) -> None:
                """Verify, run and record ``job``, then track it: all of it off the ingest
                path, so the next job's ingest starts at once. In sequence they cost a
                few round trips per job (~0.3 s at 50 ms each), which at 64 jobs was 20 s
                of a 1M run."""
                if verify:
                    await verify_job(con, client, state, job)
                if not job.run:
                    await run_job(client, state, job)
                    progress(ProgressEvent("run", message=f"job {job.job_id} started"))
                once = state.options.get("once_per")
                if once and not job.recorded:
                    assert job.job_id is not None
                    await anyio.to_thread.run_sync(
                        record_sent,
                        con,
                        Path(once["ledger"]),
                        once["key"],
                        state.run_id,
                        job.job_no,
                        job.job_id,
                    )
                    job.recorded = True
                    state.save()
                await track(job)

            async with anyio.create_task_group() as tg:
                for job in state.jobs:
                    verify = False
                    if not job.ingested:
                        progress(ProgressEvent("create", message=f"job {job.job_no}"))
                        await ingest_job(
                            con,
                            client,
                            state,
                            job,
                            ledger,
                            concurrency=settings.concurrency,
                            on_ack=on_ack,
                        )
                        await ledger.flush()
                        verify = True
                    # Verifying, running and tracking one job overlap with ingesting the next.
                    tg.start_soon(finish, job, verify)
                if not state.done("send"):
                    state.mark("send", time.monotonic() - send_started)
                track_started = time.monotonic()
        state.progress["client"] = {
            "requests": client.stats.requests,
            "retries": client.stats.retries,
            "throttled": client.stats.throttled,
            "status_counts": {str(k): v for k, v in client.stats.status_counts.items()},
        }
        if options.wait and all(j.paged for j in state.jobs):
            if options.messages:
                await fetch_messages(
                    con, client, concurrency=settings.concurrency, progress=progress
                )
            state.mark("track", time.monotonic() - (track_started or time.monotonic()))
        state.save()


# -- module-level front door ----------------------------------------------------------


def _begin(
    source: object,
    options: Mapping[str, Any],
    *,
    run_dir: str | Path | None,
    runs_root: str | Path,
    settings: Settings,
    emulator: bool | str,
    run_options: RunOptions,
    once_per: str | None = None,
    once_per_ledger: str | Path | None = None,
) -> tuple[RunState, object | None]:
    load_kw, plan_kw = split_options(options)
    # Jobs page side by side. Not given: "auto", sized from the rows once they are loaded;
    # 0 (or None given explicitly) means one job.
    auto_jobs = "max_job_size" not in plan_kw
    plan_kw["max_job_size"] = plan_kw.get("max_job_size") or None
    plan_opts = PlanOptions(**plan_kw)
    job_message(plan_opts)  # fails early, with the fix, when there is nothing to send
    frame = source if _is_frame(source) else None
    load_dict: dict[str, Any] = (
        {} if frame is not None else {"sources": _sources(source), **load_kw}
    )
    # Resolving the files first gives "Input not found" before any run directory exists.
    files = (
        "frame" if frame is not None else fingerprint_files(resolve_sources(load_dict["sources"]))
    )
    path = Path(run_dir) if run_dir else _new_run_dir(Path(runs_root), plan_opts)
    once: dict[str, str] | None = None
    if once_per:
        ledger = Path(once_per_ledger) if once_per_ledger else path.parent / DEFAULT_LEDGER_NAME
        once = {"key": once_per, "ledger": str(ledger.resolve())}
    fingerprint = _options_fingerprint(load_dict, plan_opts, files + repr(once))
    if RunState.exists(path):
        state = RunState.load(path)
        if state.options.get("fingerprint") != fingerprint:
            raise StateError(
                f"Run directory {path} was started with other inputs or options, so it cannot "
                f"continue with these. Run 'bulkbatch resume {path}' to finish it as it was, or "
                "pass a new --run-dir to start a separate run."
            )
        return state, frame
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(
            f"Cannot create the run directory {path}: {exc.strerror or exc}. Choose a writable "
            "place with --run-dir."
        ) from None
    state = RunState(
        run_dir=path,
        run_id=path.name,
        base_url="" if emulator else settings.base_url,
        emulator=bool(emulator),
        options={
            "fingerprint": fingerprint,
            "auto_job_size": auto_jobs,
            "once_per": once,
            "emulator_progression": emulator if isinstance(emulator, str) else "polls:2",
            "load": load_dict,
            "plan": dataclasses.asdict(plan_opts),
            "run": dataclasses.asdict(run_options),
            "settings": {
                "rate": settings.rate,
                "concurrency": settings.concurrency,
                "batch_size": settings.batch_size,
                "poll_interval": settings.poll_interval,
            },
        },
    )
    state.save()
    return state, frame


def plan(
    source: object,
    *,
    run_dir: str | Path | None = None,
    runs_root: str | Path = "runs",
    progress: Progress = NullProgress,
    once_per: str | None = None,
    once_per_ledger: str | Path | None = None,
    **options: Any,
) -> Run:
    """Load and plan an audience without sending anything; returns the :class:`Run`.

    :param source: a path, glob or folder (or a list of them), or a polars/pandas
        DataFrame, a pyarrow Table or a DuckDB relation
    :param options: :class:`~bulkbatch.stages.load.LoadOptions` and
        :class:`~bulkbatch.stages.plan.PlanOptions` fields, e.g. ``event="welcome"``,
        ``data={"company": "Acme"}``, ``mapping={"to.user_id": "customer_id"}``

    Example::

        run = bulkbatch.plan("data/recipients_sample.csv", event="welcome")
        run.plan_info.rejected_by_reason
    """
    settings = Settings.from_env()
    state, frame = _begin(
        source,
        options,
        run_dir=run_dir,
        runs_root=runs_root,
        settings=settings,
        emulator=False,
        run_options=RunOptions(),
        once_per=once_per,
        once_per_ledger=once_per_ledger,
    )

    con = open_run_db(state.run_dir)
    try:
        _prepare(state, con, frame, progress)
    finally:
        con.close()
    return Run(state.run_dir)


async def asend(
    source: object,
    *,
    settings: Settings | None = None,
    run_dir: str | Path | None = None,
    runs_root: str | Path = "runs",
    emulator: bool | str = False,
    progress: Progress = NullProgress,
    run_options: RunOptions | None = None,
    once_per: str | None = None,
    once_per_ledger: str | Path | None = None,
    **options: Any,
) -> Run:
    """Async :func:`send`."""
    settings = settings or Settings.from_env()
    run_options = run_options or RunOptions()
    if "batch_size" not in options and settings.batch_size:
        options = {**options, "batch_size": settings.batch_size}
    state, frame = _begin(
        source,
        options,
        run_dir=run_dir,
        runs_root=runs_root,
        settings=settings,
        emulator=emulator,
        run_options=run_options,
        once_per=once_per,
        once_per_ledger=once_per_ledger,
    )
    run = Run(state.run_dir)
    settings = settings if emulator else run._settings(settings)
    _started(progress, state)
    await _execute(state, settings, progress, run_options, frame)
    return Run(state.run_dir)


def send(
    source: object,
    *,
    settings: Settings | None = None,
    run_dir: str | Path | None = None,
    runs_root: str | Path = "runs",
    emulator: bool | str = False,
    progress: Progress = NullProgress,
    run_options: RunOptions | None = None,
    once_per: str | None = None,
    once_per_ledger: str | Path | None = None,
    **options: Any,
) -> Run:
    """Send one notification to everyone in ``source``: load, plan, send, track, results.

    Pointed at an existing ``run_dir`` made with the same inputs and options, it continues
    that run instead (and refuses, naming the fix, when they differ).

    :param source: a path, glob or folder (or a list of them), or a DataFrame/Arrow table
    :param settings: where Courier is and how fast to go (default: from the environment)
    :param emulator: start a local Courier emulator in-process and send to it (a string
        is its progression, e.g. ``"immediate"``); its state lives in the run directory
    :param run_options: wait/timeout/messages/include_profile
    :param once_per: a campaign key: skip everyone an earlier run already sent under it,
        and record who this run sends (the ledger is ``once-per.duckdb`` beside the run
        directory unless ``once_per_ledger`` names another file)
    :param options: load and plan options, as for :func:`plan`

    Example::

        run = bulkbatch.send("data/recipients_sample.csv", event="welcome", emulator=True)
        run.results().group_by("outcome").len()
    """
    return run_sync(
        asend,
        source,
        settings=settings,
        run_dir=run_dir,
        runs_root=runs_root,
        emulator=emulator,
        progress=progress,
        run_options=run_options,
        once_per=once_per,
        once_per_ledger=once_per_ledger,
        **options,
    )


def resume(
    run_dir: str | Path,
    *,
    settings: Settings | None = None,
    progress: Progress = NullProgress,
    timeout: float | None = None,
) -> Run:
    """Continue a stopped run at its first unfinished step (``bulkbatch resume``)."""
    run = Run(run_dir)
    opts = RunOptions(**run.state.options.get("run", {}))
    if timeout is not None:
        opts = dataclasses.replace(opts, timeout=timeout)
    return run.resume(settings=settings, progress=progress, options=opts)


def status(
    run_dir: str | Path, *, refresh: bool = False, settings: Settings | None = None
) -> RunStatus:
    """Where a run stands (``bulkbatch status``)."""
    return Run(run_dir).status(refresh=refresh, settings=settings)


def results(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    messages: bool = False,
    include_profile: bool | None = None,
    settings: Settings | None = None,
    progress: Progress = NullProgress,
) -> ResultsInfo:
    """(Re)write a run's ``results.parquet`` (``bulkbatch results``)."""
    return Run(run_dir).write_results(
        out,
        messages=messages,
        include_profile=include_profile,
        settings=settings,
        progress=progress,
    )


def report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write a run's self-contained HTML report (``bulkbatch report``); returns its path."""
    return write_report(run_dir, out)
