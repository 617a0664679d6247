"""The pipeline: one method per stage, each returning a typed ``*Info`` (dlt's model).

``load`` → ``plan`` → ``send`` → ``track`` → ``results``. Each reads what the previous one
stored in the run directory, so any of them can run again or be resumed; :meth:`Pipeline.run`
chains them and starts at the first unfinished one, never repeating a side effect the ledger
holds. The orchestrator runs no SQL: each stage owns its own.

``send`` and ``track`` overlap when run together: a job is verified, run and paged while the
next job ingests (in sequence they cost a few round trips per job, which at 64 jobs was 20 s of
a 1M-person run).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
import duckdb

from bulkbatch.client.courier import CourierClient
from bulkbatch.config import Settings, auto_job_size
from bulkbatch.db import DB_FILE, in_thread, open_run_db
from bulkbatch.errors import StateError
from bulkbatch.identity import audience_fingerprint, campaign_id, shard_family
from bulkbatch.ledger import LedgerWriter
from bulkbatch.pipeline.begin import (
    adopt_registered,
    check_inputs_unchanged,
    load_options,
    stored_load_info,
)
from bulkbatch.pipeline.connect import client_for, client_stats
from bulkbatch.pipeline.shared import SharedCampaign
from bulkbatch.progress import Progress, ProgressEvent
from bulkbatch.spec import RunSpec
from bulkbatch.stages import once
from bulkbatch.stages.cancel import CancelInfo, cancel_messages
from bulkbatch.stages.delivery import load_webhook_outcomes, stragglers
from bulkbatch.stages.load import LoadInfo, load_frame, load_inputs
from bulkbatch.stages.plan import PlanInfo, PlanOptions, build_plan
from bulkbatch.stages.plan.report import ensure_plan_file, plan_file_meanwhile
from bulkbatch.stages.plan.report import write_files as write_plan_files
from bulkbatch.stages.results import ResultsInfo, write_results, write_summary
from bulkbatch.stages.send import (
    SendInfo,
    acked_users,
    create_ahead,
    ingest_job,
    ingest_lanes,
    ingest_progress,
    plan_jobs,
    run_job,
    verify_job,
)
from bulkbatch.stages.track import (
    TrackInfo,
    fetch_messages,
    page_users,
    tracked_at_once,
    wait_for_job,
)
from bulkbatch.state import JobState, RunState, Started, ensure_ledger

__all__ = ["Adopted", "Pipeline"]


class Adopted(Exception):
    """Planning found this campaign already held by another run directory on this machine."""

    def __init__(self, state: RunState, planned: RunState) -> None:
        super().__init__(str(state.run_dir))
        self.state = state
        self.planned = planned
        """The run that planned it and found it held elsewhere (only a plan; discard it)."""


class Pipeline:
    """The stages of one run, over one open run database.

    Usage::

        async with Pipeline(state, settings, progress) as p:
            await p.run()
    """

    def __init__(
        self,
        state: RunState,
        settings: Settings,
        progress: Progress,
        *,
        frame: object | None = None,
    ) -> None:
        self.state = state
        self.settings = settings
        self.progress = progress
        self.frame = frame
        self.spec = RunSpec.from_json(state.spec)
        self._con: duckdb.DuckDBPyConnection | None = None

    async def __aenter__(self) -> Self:
        state = self.state
        if state.done("load") and not (state.run_dir / DB_FILE).exists():
            # Opening would make an empty database, and a later stage would fail on a table.
            raise StateError(
                f"{state.run_dir} has a state.json saying its inputs were loaded, but its run "
                f"database {DB_FILE} is missing. Move {state.run_dir} aside and run the same "
                "'bulkbatch send' command again: it rebuilds the run, and nobody is sent twice "
                "because every request's key derives from the campaign."
            )
        self._con = open_run_db(state.run_dir)
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
        with contextlib.suppress(OSError):
            self.state.privatize()

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise RuntimeError("Pipeline used outside 'async with'")
        return self._con

    def _event(self, stage: str, *args: object, **kw: object) -> None:
        self.progress(ProgressEvent(stage, *args, **kw))  # type: ignore[arg-type]

    async def _blocking(self, fn: object) -> object:
        return await in_thread(self.con, fn, self.state.run_dir)  # type: ignore[arg-type]

    # -- load ------------------------------------------------------------------------------
    async def load(self) -> LoadInfo:
        """Read the inputs into table ``inputs`` (once)."""
        state = self.state
        if state.done("load"):
            return stored_load_info(state)
        self._event("load", message="loading inputs")
        started = Started()
        if self.frame is not None:
            frame = self.frame
            info: LoadInfo = await in_thread(
                self.con, lambda: load_frame(self.con, frame), state.run_dir
            )
        elif self.spec.audience.sources:
            check_inputs_unchanged(state)
            opts = load_options(self.spec)
            info = await in_thread(self.con, lambda: load_inputs(self.con, opts), state.run_dir)
        else:
            raise StateError(
                f"Run {state.run_id} was started from an in-memory DataFrame and stopped before "
                "its rows were stored; start it again with bulkbatch.send(frame, ...)."
            )
        state.inputs.update(rows=info.rows, files=list(info.files), columns=list(info.columns))
        state.mark("load", started)
        self._event("load", info.rows, info.rows, "rows")
        return info

    # -- plan ------------------------------------------------------------------------------
    def _plan_options(self) -> PlanOptions:
        spec, state = self.spec, self.state
        max_job = spec.sending.max_job_size or None
        shard = spec.shard_of
        if state.auto_job_size:
            rows = int(state.inputs.get("rows", 0)) // (shard[1] if shard else 1)
            # Never from the run's tuning: the layout is part of the campaign id, so a
            # retry with other tuning (--concurrency, --rate) on a fresh worker must cut
            # the same jobs and send the same keys.
            max_job = auto_job_size(rows)
        c, a = spec.campaign, spec.audience
        return PlanOptions(
            content=c.content,
            locale=c.locale,
            channel=c.channel,
            data=c.data,
            mapping=a.mapping,
            where=a.where,
            sql=a.sql,
            dedupe=a.dedupe,
            batch_size=spec.sending.batch_size,
            max_job_size=max_job,
            max_user_bytes=a.max_user_bytes,
            shard=shard,
        )

    async def plan(self, *, defer_plan_file: bool = False) -> PlanInfo:
        """Map, validate, dedupe and cut the audience; fix the campaign id (once).
        ``defer_plan_file`` (a send): ``plan.parquet`` is written while it runs.

        :raises Adopted: another run directory on this machine already holds this campaign
        """
        state = self.state
        if state.done("plan"):
            return PlanInfo.from_dict(state.plan)
        await self.load()
        self._event("plan", message="planning")
        started = Started()
        options = self._plan_options()
        info = await in_thread(
            self.con,
            lambda: build_plan(self.con, options, state.run_dir, defer_plan_file=defer_plan_file),
            state.run_dir,
        )
        state.plan = info.to_dict()
        state.plan["max_job_size"] = options.max_job_size
        state.message = self.spec.campaign.message()
        fingerprint = info.audience  # taken as plan.parquet was written; None: left for later
        if fingerprint is None:
            fingerprint = await in_thread(
                self.con, lambda: audience_fingerprint(self.con), state.run_dir
            )
        state.campaign = campaign_id(
            state.message,
            fingerprint,
            layout={"batch_size": options.batch_size, "max_job_size": options.max_job_size},
            instance=self.spec.run_id,
            once_per=self.spec.once_per,
            shard=self.spec.shard,
        )
        if info.shard is not None:
            state.plan["shard"]["family"] = shard_family(
                state.message,
                self.spec.outcome_values(),
                input_hash=str(info.shard["input_hash"]),
                input_rows=int(info.shard["total_input_rows"]),
            )
        other = adopt_registered(state, self.settings.base_url)
        shared = SharedCampaign.for_run(self.spec.once_per_ledger, state, self.settings.base_url)
        if other is None and shared is not None:
            other = await anyio.to_thread.run_sync(shared.adopt)
        if other is not None:
            raise Adopted(other, state)
        await self._claim_once_per(options.batch_size, plan_file=info.audience is not None)
        jobs = await in_thread(self.con, lambda: plan_jobs(self.con), state.run_dir)
        state.jobs = [
            JobState(job_no=j, users=n, first_batch=lo, last_batch=hi) for j, n, lo, hi in jobs
        ]
        state.plan["jobs"] = len(state.jobs)
        state.plan["batches"] = sum(j.batches for j in state.jobs)
        state.mark("plan", started)
        self._event(
            "plan",
            info.rows_read,
            info.rows_read,
            "rows",
            message=f"{state.plan['to_send']:,} to send",
        )
        # What the plan found before anything is sent (users a channel cannot reach, columns
        # nothing sends, phones sent as given): told once, where every front door shows it.
        for kind, texts in (("warning", info.warnings), ("note", info.notes)):
            for text in texts:
                self._event("notice", message=text, extra={"plan": kind})
        return info

    async def _claim_once_per(self, batch_size: int, *, plan_file: bool) -> None:
        key = self.spec.once_per
        state = self.state
        if not key:
            return
        location = self.spec.once_per_ledger or str(once.default_ledger_path())
        ledger = once.open_ledger(location)
        state.once_per_ledger = ledger.location
        campaign, run_dir = state.campaign, str(state.run_dir)

        def claim() -> once.ClaimResult:
            result = once.claim_plan(self.con, ledger, key, campaign, run_dir, batch_size)
            if result.skipped:
                write_plan_files(self.con, state.run_dir, plan_file=plan_file)
            return result

        result = await in_thread(self.con, claim, state.run_dir)
        state.plan["skipped"] = result.skipped
        state.plan["to_send"] = int(state.plan["to_send"]) - result.skipped

    # -- send ------------------------------------------------------------------------------
    async def send(self) -> SendInfo:
        """Create, ingest, verify and run every job (once); tracking is left to :meth:`track`."""
        await self.plan(defer_plan_file=True)
        return await self._network(track=False)

    async def track(self) -> TrackInfo:
        """Wait for every run job to finish and page its per-user results (once)."""
        await self.plan(defer_plan_file=True)
        if not self.state.done("send"):
            await self._network(track=True)
        elif not self.state.done("track"):
            await self._track_only()
        return TrackInfo.of(self.state)

    async def _network(self, *, track: bool) -> SendInfo:
        state, con, settings = self.state, self.con, self.settings
        if not state.jobs:
            # Nothing to send: every row was rejected, filtered or a duplicate.
            for stage in ("send", "track"):
                if not state.done(stage):
                    state.mark(stage, Started())
            return SendInfo.of(state, 0.0)
        state.progress["users_acked"] = await anyio.to_thread.run_sync(acked_users, con)
        started = Started()
        await anyio.to_thread.run_sync(ensure_ledger, con)
        async with client_for(state, settings, self.progress) as client:
            async with (
                LedgerWriter(con) as ledger,
                plan_file_meanwhile(con, state.run_dir) as write_plan_file,
            ):
                on_ack = ingest_progress(state, self.progress, client)
                pagers = anyio.CapacityLimiter(tracked_at_once(client))

                lanes = ingest_lanes(settings.concurrency)
                slots = anyio.CapacityLimiter(lanes)
                creating = anyio.CapacityLimiter(lanes)  # jobs created ahead (send.create_ahead)
                writes = anyio.CapacityLimiter(settings.concurrency)  # every POST takes one
                pending = sum(1 for j in state.jobs if not j.ingested)

                async def send_job(job: JobState) -> None:
                    nonlocal pending
                    verify = False
                    if not job.ingested:
                        await create_ahead(client, state, job, creating, writes, self.progress)
                        if not job.ingested:  # a replayed job was run already: tracked only
                            async with slots:
                                await ingest_job(
                                    con,
                                    client,
                                    state,
                                    job,
                                    ledger,
                                    # Every slot: a lane between jobs (creating the
                                    # next, reading its bodies) leaves its share to
                                    # the others; `writes` bounds the run's POSTs.
                                    concurrency=settings.concurrency,
                                    on_ack=on_ack,
                                    slots=writes,
                                )
                                await ledger.flush()
                            verify = not job.ingested
                        pending -= 1
                        if pending == 0:  # every batch is in: the client has a core to spare
                            write_plan_file()
                            if not state.done("send"):
                                state.mark("send", started)
                    await self._finish_job(client, ledger, pagers, job, verify, track)

                async with anyio.create_task_group() as tg:
                    for job in state.jobs:
                        tg.start_soon(send_job, job)
                if not state.done("send"):
                    state.mark("send", started)
            state.progress["client"] = client_stats(client)
            if track:  # the ledger closed: every page is committed, and DuckDB has its cap
                await self._finish_tracking(client, started)
        state.save()
        return SendInfo.of(state, started.seconds())

    async def _finish_job(
        self,
        client: CourierClient,
        ledger: LedgerWriter,
        pagers: anyio.CapacityLimiter,
        job: JobState,
        verify: bool,
        track: bool,
    ) -> None:
        """After a job's last batch: verify it (when this run ingested it), run it once, then
        wait for it and page it (with ``track``)."""
        state = self.state
        if verify:
            await verify_job(self.con, client, state, job)
        if not job.run:
            await run_job(client, state, job)
            self._event(
                "run",
                message=f"job {job.job_id} started",
                extra={"job_no": job.job_no, "jobs": len(state.jobs)},
            )
        await self._record_once_per(job)
        if track and self.spec.tracking.wait and not job.paged:
            async with pagers:
                await self._track_job(client, job, ledger)

    async def _track_job(self, client: CourierClient, job: JobState, ledger: LedgerWriter) -> None:
        await wait_for_job(
            client,
            self.state,
            job,
            poll_interval=self.settings.poll_interval,
            max_wait=self.spec.tracking.timeout,
            progress=self.progress,
        )
        await page_users(self.con, client, self.state, job, ledger, progress=self.progress)

    async def _finish_tracking(self, client: CourierClient, started: Started) -> None:
        """The Messages API pass (``--messages``), once every job is paged. Called after the
        ledger is closed: it reads every message id, which needs DuckDB's whole cap (at 10M,
        a quarter of it ran out of memory)."""
        state = self.state
        if not (self.spec.tracking.wait and all(j.paged for j in state.jobs)):
            return
        if self.spec.tracking.messages:
            await fetch_messages(
                self.con, client, concurrency=self.settings.concurrency, progress=self.progress
            )
        state.mark("track", started)

    async def _track_only(self) -> None:
        state, con = self.state, self.con
        started = Started()
        await anyio.to_thread.run_sync(ensure_ledger, con)
        async with client_for(state, self.settings, self.progress) as client:
            async with (
                LedgerWriter(con) as ledger,
                plan_file_meanwhile(con, state.run_dir) as write_plan_file,
            ):
                write_plan_file()
                pagers = anyio.CapacityLimiter(tracked_at_once(client))

                async def one(job: JobState) -> None:
                    async with pagers:
                        await self._track_job(client, job, ledger)

                async with anyio.create_task_group() as tg:
                    for job in state.jobs:
                        if job.run and not job.paged:
                            tg.start_soon(one, job)
            await self._finish_tracking(client, started)
        state.save()

    async def _record_once_per(self, job: JobState) -> None:
        key, state = self.spec.once_per, self.state
        if not key or job.recorded or not state.once_per_ledger:
            return
        assert job.job_id is not None
        ledger, job_id = once.open_ledger(state.once_per_ledger), job.job_id
        await anyio.to_thread.run_sync(
            lambda: once.mark_sent(
                self.con,
                ledger,
                key,
                state.campaign,
                job.job_no,
                job_id,
                run_dir=str(state.run_dir),
            )
        )
        job.recorded = True
        state.save()

    # -- results ---------------------------------------------------------------------------
    async def results(
        self,
        out: Path | None = None,
        *,
        messages: bool | None = None,
        include_profile: bool | None = None,
        webhooks: Path | None = None,
        reconcile: bool = False,
    ) -> ResultsInfo:
        """Write ``results.parquet`` and ``summary.json``: one row per input row.

        :param messages: first fetch ``GET /messages/{id}`` for every message (default: as
            the run was started with ``--messages``)
        :param webhooks: join delivery outcomes from this webhook store
        :param reconcile: fetch ``GET /messages/{id}`` only for messages with no final
            delivery status from any source (a lost webhook leaves no hole)
        """
        state = self.state
        if not state.done("plan"):
            raise StateError(
                f"Run {state.run_id} was never planned; nothing to report. Run "
                f"'bulkbatch resume {state.run_dir}'."
            )
        tracking = self.spec.tracking
        profile = tracking.include_profile if include_profile is None else include_profile
        await anyio.to_thread.run_sync(ensure_ledger, self.con)
        # A send that stopped while it wrote plan.parquet (or could not write it) left none.
        await in_thread(self.con, lambda: ensure_plan_file(self.con, state.run_dir), state.run_dir)
        if webhooks is not None:
            store = webhooks
            known = await in_thread(
                self.con, lambda: load_webhook_outcomes(self.con, store), state.run_dir
            )
            self._event("webhooks", known, None, "messages", message=f"{known:,} from {store}")
        await self._refresh_messages(messages, reconcile)
        started = Started()
        self._event("results", message="writing results.parquet")
        info = await in_thread(
            self.con,
            lambda: write_results(self.con, state, out, include_profile=profile),
            state.run_dir,
        )
        if out is None:
            state.mark("results", started)
            write_summary(state, info)  # again, now with this stage's timing in it
        return info

    async def _refresh_messages(self, messages: bool | None, reconcile: bool) -> None:
        """GET /messages/{id} for every message (``messages``) or the stragglers only."""
        state, tracking = self.state, self.spec.tracking
        fetched_in_track = state.done("track") and tracking.messages and messages is None
        every = bool(tracking.messages if messages is None else messages)
        if not (every or reconcile) or (fetched_in_track and not reconcile):
            return
        ids = (
            None
            if every
            else await in_thread(self.con, lambda: stragglers(self.con), state.run_dir)
        )
        if ids == []:
            return
        async with client_for(state, self.settings, self.progress) as client:
            await fetch_messages(
                self.con,
                client,
                concurrency=self.settings.concurrency,
                progress=self.progress,
                ids=ids,
            )

    # -- cancel ----------------------------------------------------------------------------
    async def cancel(self) -> CancelInfo:
        """Stop the campaign: nothing more is ingested or run, and every message Courier has
        not sent yet is canceled (resumable: a second call continues)."""
        state = self.state
        started = time.monotonic()
        if state.canceled is None:
            state.canceled = time.time()
            state.save()
        never_run = [j for j in state.jobs if not j.run]
        if any(j.run for j in state.jobs):
            await anyio.to_thread.run_sync(ensure_ledger, self.con)
            async with client_for(state, self.settings, self.progress) as client:
                async with LedgerWriter(self.con) as ledger:
                    for job in state.jobs:
                        if job.run and not job.paged:
                            await self._track_job(client, job, ledger)
                counts = await cancel_messages(
                    self.con, client, concurrency=self.settings.concurrency, progress=self.progress
                )
            state.save()
        else:
            counts = {}
        if self.spec.once_per and state.once_per_ledger:
            # People never sent are free for another campaign under the same key.
            claims, key = once.open_ledger(state.once_per_ledger), self.spec.once_per
            await anyio.to_thread.run_sync(lambda: once.release(claims, key, state.campaign))
        await self.results()
        return CancelInfo(
            jobs_never_run=len(never_run),
            users_never_sent=sum(j.users for j in never_run),
            canceled=counts.get("canceled", 0),
            too_late=counts.get("too late", 0),
            not_found=counts.get("not found", 0),
            seconds=time.monotonic() - started,
        )

    # -- everything --------------------------------------------------------------------------
    async def run(self) -> ResultsInfo | None:
        """Every unfinished stage, in order. Returns the results (None with ``wait=False``)."""
        if self.state.canceled:
            raise StateError(
                f"Run {self.state.run_id} was canceled with 'bulkbatch cancel', so it is not "
                f"resumed. Its results are in {self.state.run_dir / 'results.parquet'}; to send "
                "the campaign after all, run the send again with a new --run-id."
            )
        await self.load()
        await self.plan(defer_plan_file=True)
        await anyio.to_thread.run_sync(ensure_ledger, self.con)
        shared = SharedCampaign.for_run(
            self.spec.once_per_ledger, self.state, self.settings.base_url
        )
        async with shared.holding() if shared else contextlib.nullcontext():
            return await self._rest()

    async def _rest(self) -> ResultsInfo | None:
        if not self.state.done("send") or not self.state.done("track"):
            if self.state.done("send"):
                await self._track_only()
            else:
                await self._network(track=True)
        if not self.spec.tracking.wait:
            return None
        if self.state.done("results") and (self.state.run_dir / "results.parquet").exists():
            return None
        return await self.results()
