"""A run directory as an object: what was planned, sent and learned, and how to continue it.

Method names match the front door: ``run.resume()`` is ``bulkbatch.resume(run_dir)``,
``run.results()`` is ``bulkbatch.results(run_dir)`` (both (re)write results.parquet),
``run.status()``, ``run.report()`` and ``run.cancel()`` likewise. Reading the files a run wrote
is ``run.read_results()``, ``read_plan()``, ``read_rejects()``, ``read_duplicates()``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from bulkbatch import storage
from bulkbatch._sync import run_sync
from bulkbatch.client.security import clean_api_key
from bulkbatch.config import Settings
from bulkbatch.errors import StateError
from bulkbatch.models import FINAL_JOB_STATUSES, STAGES
from bulkbatch.pipeline.connect import bind_base_url, client_for
from bulkbatch.pipeline.core import Pipeline
from bulkbatch.progress import NullProgress, Progress, ProgressEvent
from bulkbatch.spec import RunSpec
from bulkbatch.stages.accounting import rows_failed
from bulkbatch.stages.cancel import CancelInfo
from bulkbatch.stages.plan import PlanInfo
from bulkbatch.stages.results import ResultsInfo
from bulkbatch.state import RunState

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

__all__ = ["Run", "RunStatus", "settings_for"]


@dataclass(frozen=True)
class RunStatus:
    """Where a run stands, read from ``state.json`` (works while another process sends).

    ``stage``: ``next: <stage>`` (stopped before it), ``planned`` (a ``bulkbatch plan`` run:
    resuming it plans only, ``bulkbatch send`` sends it), ``sending``, ``finished`` or
    ``canceled``. ``timings`` and ``cpu_seconds``: each finished stage's wall seconds and
    this process's CPU seconds in it (``send`` and ``track`` both count from the first
    request)."""

    run_id: str
    run_dir: Path
    campaign: str
    stage: str
    rows: int
    to_send: int
    users_acked: int
    jobs: tuple[dict[str, Any], ...]
    finished: bool
    canceled: bool = False
    event: str = ""
    created_at: float = 0.0
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    cpu_seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d

    @property
    def jobs_final(self) -> bool:
        """Every job exists and has stopped changing."""
        return bool(self.jobs) and all(j["status"] in FINAL_JOB_STATUSES for j in self.jobs)

    def render(self) -> str:
        """A few lines for people: the stage, the counts, and jobs summarised by status."""
        hint = ""
        if self.stage == "planned":
            hint = "; 'bulkbatch send' with the same input and options sends it"
        lines = [
            f"run {self.run_id} ({self.run_dir}): {self.stage}{hint}",
            f"  rows {self.rows:,}, to send {self.to_send:,}, "
            + f"acknowledged {self.users_acked:,}",
        ]
        created = [j for j in self.jobs if j["job_id"]]
        by_status: dict[str, int] = {}
        for j in created:
            by_status[str(j["status"] or "CREATED")] = (
                by_status.get(str(j["status"] or "CREATED"), 0) + 1
            )
        if self.jobs:
            parts = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
            waiting = len(self.jobs) - len(created)
            tail = f", {waiting} not created yet" if waiting else ""
            received = sum(int(j["received"] or 0) for j in created)
            enqueued = sum(int(j["enqueued"] or 0) for j in created)
            lines.append(
                f"  jobs {len(self.jobs)}: {parts or 'none created'}{tail}; received "
                f"{received:,}, enqueued {enqueued:,}"
            )
        if self.timings:
            lines.append("  stages: " + ", ".join(self._took(s) for s in self.timings))
        return "\n".join(lines)

    def _took(self, stage: str) -> str:
        cpu = self.cpu_seconds.get(stage)
        return f"{stage} {self.timings[stage]:.1f} s" + (
            f" (CPU {cpu:.1f} s)" if cpu is not None else ""
        )

    __str__ = render


def status_of(state: RunState) -> RunStatus:
    """The :class:`RunStatus` of a loaded state."""
    pending = state.next_stage()
    if state.canceled:
        stage = "canceled"
    elif pending is None:
        stage = "finished"
    elif pending == "send" and state.plan_only:
        stage = "planned"  # resuming it plans only; 'bulkbatch send' sends it
    elif pending == "send" and state.progress.get("users_acked"):
        stage = "sending"
    else:
        stage = f"next: {pending}"
    return RunStatus(
        run_id=state.run_id,
        run_dir=state.run_dir,
        campaign=state.campaign,
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
        finished=pending is None,
        canceled=state.canceled is not None,
        event=str(state.message.get("event") or state.spec.get("event") or ""),
        created_at=state.created_at,
        timings={s: state.timings[s] for s in STAGES if s in state.timings},
        cpu_seconds={s: state.cpu[s] for s in STAGES if s in state.cpu},
    )


def settings_for(state: RunState, settings: Settings | None, **overrides: float | None) -> Settings:
    """Client settings for a run: the environment's (or ``settings``), with the run's stored
    pace (and any ``overrides`` given) applied."""
    spec = RunSpec.from_json(state.spec)
    base = settings or Settings.from_env()
    # A key with a trailing newline (a CRLF .env file) is cleaned, and a key with other
    # control characters refused, before anything is loaded: never echoed, never retried.
    base = dataclasses.replace(base, api_key=clean_api_key(base.api_key))
    s = spec.sending
    pace = {
        "rate": s.rate,
        "concurrency": s.concurrency,
        "timeout": s.http_timeout,
        "poll_interval": s.poll_interval,
        "max_attempts": s.max_attempts,
        "max_backoff": s.max_backoff,
    }
    pace.update({k: v for k, v in overrides.items() if v is not None})
    return base.with_(**pace)


class Run:
    """A run directory.

    Usage::

        run = bulkbatch.Run("runs/welcome-3f2a9c1d0e4b")
        run.status()             # where it stands
        run.resume()             # finish whatever is left
        df = run.read_results()  # one row per input row (polars)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.state = RunState.load(self.path)

    def __repr__(self) -> str:
        return f"<Run {self.state.run_id} {status_of(self.state).stage} at {self.path}>"

    @property
    def run_id(self) -> str:
        return self.state.run_id

    @property
    def campaign(self) -> str:
        """The campaign id (empty until planned)."""
        return self.state.campaign

    @property
    def spec(self) -> RunSpec:
        """Every option the run was started with."""
        return RunSpec.from_json(self.state.spec)

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
            run_sync(self._arefresh, settings_for(self.state, settings))
        self.state = RunState.load(self.path)
        return status_of(self.state)

    async def _arefresh(self, settings: Settings) -> None:
        bind_base_url(self.state, settings)
        async with client_for(self.state, settings, NullProgress) as client:
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
                self._planned_only("summary")
                or f"Run {self.run_id} has no summary yet. Finish it with "
                f"'bulkbatch resume {self.path}' or write results with "
                f"'bulkbatch results {self.path}'."
            )
        data: dict[str, Any] = orjson.loads(path.read_bytes())
        return data

    def rows_failed(self) -> str | None:
        """Why this finished run fails for its rows under its ``fail_on_rejects`` /
        ``max_reject_rate`` (the CLI's exit code 1), or None (also before it finished)."""
        if not (self.path / "summary.json").exists():
            return None
        spec = self.spec
        return rows_failed(
            self.summary(),
            fail_on_rejects=spec.fail_on_rejects,
            max_reject_rate=spec.max_reject_rate,
        )

    def _file(self, name: str) -> Path:
        path = self.path / name
        if not path.exists():
            raise StateError(
                self._planned_only(name)
                or f"Run {self.run_id} has no {name} yet. Run 'bulkbatch resume {self.path}' "
                "(or 'bulkbatch results' for results.parquet)."
            )
        return path

    def _planned_only(self, what: str) -> str | None:
        """Why a run ``bulkbatch plan`` started has no ``what``: resuming it only plans."""
        if not self.state.plan_only:
            return None
        return (
            f"Run {self.run_id} has no {what}: it was only planned. To send it, send it with "
            "'bulkbatch send' and the same input and options."
        )

    def read_results(self) -> pl.DataFrame:
        """``results.parquet`` as a polars DataFrame (one row per input row)."""
        import polars as pl

        return pl.read_parquet(self._file("results.parquet"))

    def to_arrow(self) -> pa.Table:
        """``results.parquet`` as a pyarrow Table."""
        import pyarrow.parquet as pq

        return pq.read_table(self._file("results.parquet"))

    def read_rejects(self) -> pl.DataFrame:
        """Rows that will not be sent, with ``reason_code`` and ``reason``."""
        import polars as pl

        return pl.read_parquet(self._file("rejects.parquet"))

    def read_plan(self) -> pl.DataFrame:
        """The users to send, with their batch and the exact JSON sent."""
        import polars as pl

        return pl.read_parquet(self._file("plan.parquet"))

    def read_duplicates(self) -> pl.DataFrame:
        """Rows dropped as duplicates, with the row each duplicates."""
        import polars as pl

        return pl.read_parquet(self._file("duplicates.parquet"))

    def report(self, out: str | Path | None = None) -> Path:
        """Write the self-contained HTML report of this run; returns its path."""
        from bulkbatch.html_report import write_report

        return write_report(self.path, out)

    # -- acting -----------------------------------------------------------------------
    def resume(
        self,
        *,
        settings: Settings | None = None,
        progress: Progress = NullProgress,
        timeout: float | None = None,
        rate: float | None = None,
        concurrency: int | None = None,
        max_attempts: int | None = None,
        max_backoff: float | None = None,
    ) -> Run:
        """Finish every stage that has not finished, in order. Returns ``self``. The pace
        and retry keywords apply to this call only; ``timeout`` is kept for later ones.
        A run ``bulkbatch plan`` started (``state.plan_only``) finishes its plan only:
        sending it takes ``send`` with the same input and options."""
        return run_sync(
            self.aresume,
            settings=settings,
            progress=progress,
            timeout=timeout,
            rate=rate,
            concurrency=concurrency,
            max_attempts=max_attempts,
            max_backoff=max_backoff,
        )

    async def aresume(
        self,
        *,
        settings: Settings | None = None,
        progress: Progress = NullProgress,
        timeout: float | None = None,  # noqa: ASYNC109 - the jobs' wait, not this call's
        rate: float | None = None,
        concurrency: int | None = None,
        max_attempts: int | None = None,
        max_backoff: float | None = None,
    ) -> Run:
        """Async :meth:`resume` (for notebooks: ``await run.aresume()``)."""
        # Resuming means finishing: a --no-wait run is tracked to the end now (#15), and a
        # new --timeout applies from here on; every other option stays as started.
        spec = RunSpec.from_json(self.state.spec)
        changed = spec.replace(
            wait=True, timeout=timeout if timeout is not None else spec.tracking.timeout
        )
        if changed != spec:
            self.state.spec = changed.to_json()
            self.state.save()
        resolved = settings_for(
            self.state,
            settings,
            rate=rate,
            concurrency=concurrency,
            max_attempts=max_attempts,
            max_backoff=max_backoff,
        )
        bind_base_url(self.state, resolved)
        started(progress, self.state)
        async with Pipeline(self.state, resolved, progress) as pipeline:
            if self.state.plan_only:  # bulkbatch plan never sends, nor does its resume
                await pipeline.plan()
            else:
                await pipeline.run()
        self.state = RunState.load(self.path)
        return self

    def cancel(
        self, *, settings: Settings | None = None, progress: Progress = NullProgress
    ) -> CancelInfo:
        """Cancel the campaign (``bulkbatch cancel``): see :mod:`bulkbatch.stages.cancel`."""
        return run_sync(self.acancel, settings=settings, progress=progress)

    async def acancel(
        self, *, settings: Settings | None = None, progress: Progress = NullProgress
    ) -> CancelInfo:
        """Async :meth:`cancel`."""
        resolved = settings_for(self.state, settings)
        bind_base_url(self.state, resolved)
        started(progress, self.state)
        async with Pipeline(self.state, resolved, progress) as pipeline:
            info = await pipeline.cancel()
        self.state = RunState.load(self.path)
        return info

    def results(
        self,
        out: str | Path | None = None,
        *,
        messages: bool | None = None,
        include_profile: bool | None = None,
        webhooks: str | Path | None = None,
        reconcile: bool = False,
        settings: Settings | None = None,
        progress: Progress = NullProgress,
    ) -> ResultsInfo:
        """(Re)write ``results.parquet`` (or ``out``) with each message's delivery outcome.

        ``out`` may be an ``s3://bucket/key.parquet`` URL: ``results.parquet`` is written in
        the run directory as usual, then uploaded there (:func:`bulkbatch.storage.upload`).
        An ``s3://bucket/prefix/`` folder (ending in ``/``) gets ``results.parquet`` and then
        ``summary.json``: a shard published for ``bulkbatch merge`` on another machine.

        :param messages: fetch ``GET /messages/{id}`` for every message first
        :param webhooks: join delivery outcomes from a ``bulkbatch webhooks serve`` store
        :param reconcile: fetch ``GET /messages/{id}`` only for messages with no final
            delivery status yet (after ``webhooks``: the ones whose webhooks were lost)
        """
        return run_sync(
            self.aresults,
            out,
            messages=messages,
            include_profile=include_profile,
            webhooks=webhooks,
            reconcile=reconcile,
            settings=settings,
            progress=progress,
        )

    async def aresults(
        self,
        out: str | Path | None = None,
        *,
        messages: bool | None = None,
        include_profile: bool | None = None,
        webhooks: str | Path | None = None,
        reconcile: bool = False,
        settings: Settings | None = None,
        progress: Progress = NullProgress,
    ) -> ResultsInfo:
        """Async :meth:`results`."""
        resolved = settings_for(self.state, settings)
        # A bad URL fails before any work; the upload follows the local write.
        folder = (
            str(out).rstrip("/")
            if out and storage.is_remote(out) and str(out).endswith("/")
            else None
        )
        if folder is not None:
            storage.destination(f"{folder}/results.parquet")
        remote = storage.destination(out) if out and storage.is_remote(out) and not folder else None
        async with Pipeline(self.state, resolved, progress) as pipeline:
            info = await pipeline.results(
                Path(out) if out and not remote and not folder else None,
                messages=messages,
                include_profile=include_profile,
                webhooks=Path(webhooks) if webhooks else None,
                reconcile=reconcile,
            )
        if remote is not None:
            await anyio.to_thread.run_sync(storage.upload, info.path, remote.url)
            progress(ProgressEvent("results", message=f"uploaded to {remote.url}"))
        if folder is not None:  # the summary last: a reader that sees it sees both
            for name, local in (
                ("results.parquet", info.path),
                ("summary.json", info.summary_path),
            ):
                await anyio.to_thread.run_sync(storage.upload, local, f"{folder}/{name}")
            progress(ProgressEvent("results", message=f"uploaded to {folder}/"))
        self.state = RunState.load(self.path)
        return info


def started(progress: Progress, state: RunState) -> None:
    """Report the start of work on a run (the CLI remembers the run dir for its messages)."""
    progress(
        ProgressEvent(
            "start",
            message=f"run {state.run_id}",
            extra={"run_dir": str(state.run_dir), "run_id": state.run_id},
        )
    )
