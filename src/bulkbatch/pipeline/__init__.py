"""The front door: ``bulkbatch.send``, ``plan``, ``resume``, ``results``, ``status``, ``report``.

Every function builds a :class:`~bulkbatch.spec.RunSpec` from its keywords (the same names as
the CLI's flags, see :data:`bulkbatch.options.OPTIONS`), makes one call into the
:class:`~bulkbatch.pipeline.core.Pipeline` and returns a :class:`Run`. The CLI is a thin layer
over these; notebooks call them directly (inside Jupyter's running loop too).

Layout: ``begin`` (which run directory holds a campaign), ``connect`` (which Courier, the
in-process emulator), ``core`` (the stages in order), ``run`` (a run directory as an object).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from bulkbatch import storage
from bulkbatch._sync import run_sync
from bulkbatch.config import Settings
from bulkbatch.errors import BulkBatchError, UsageError
from bulkbatch.options import OPTIONS
from bulkbatch.pipeline.begin import discard, is_frame, open_run, sources_of
from bulkbatch.pipeline.core import Adopted, Pipeline
from bulkbatch.pipeline.run import Run, RunStatus, settings_for, started, status_of
from bulkbatch.progress import NullProgress, Progress, ProgressEvent
from bulkbatch.spec import RunSpec, parse_json_option, parse_map_option
from bulkbatch.stages.cancel import CancelInfo
from bulkbatch.stages.merge import MergeInfo, merge_shards
from bulkbatch.stages.results import ResultsInfo
from bulkbatch.state import RunState

__all__ = [
    "Pipeline",
    "Run",
    "RunStatus",
    "asend",
    "cancel",
    "merge",
    "plan",
    "report",
    "results",
    "resume",
    "runs",
    "send",
    "status",
]

JsonArg = Mapping[str, Any] | str
"""A JSON object, or its text, or ``@path/to/file.json``."""


def _json(name: str, value: JsonArg | None) -> Mapping[str, Any] | None:
    return parse_json_option(name, value) if isinstance(value, str) else value


def _mapping(value: Mapping[str, str] | Sequence[str] | None) -> Mapping[str, str] | None:
    if value is None:
        return None
    items = [f"{k}={v}" for k, v in value.items()] if isinstance(value, Mapping) else value
    return parse_map_option(items)


def _absolute(sources: tuple[str, ...]) -> tuple[str, ...]:
    """Inputs as absolute paths (``s3://`` URLs as given): a stored run resumes from any
    working directory."""
    return tuple(
        s if storage.is_remote(s) else os.path.abspath(os.path.expanduser(s)) for s in sources
    )


def build_spec(source: object, keywords: Mapping[str, Any]) -> RunSpec:
    """The spec of a front-door call: its option keywords (None = not given) and source."""
    values = {k: v for k, v in keywords.items() if k in OPTIONS}
    for name in ("data", "content", "override"):
        values[name] = _json(name, values.get(name))
    values["mapping"] = _mapping(values.get("mapping"))
    if not is_frame(source):
        values["sources"] = _absolute(sources_of(source))
    values.pop("api_key", None)
    values.pop("run_dir", None)
    return RunSpec.build(values)


def _keyless(settings: Settings) -> bool:
    """A local server (an emulator) may need no key: let it answer 401 if it does."""
    import httpx

    from bulkbatch.client.security import is_loopback_host

    try:
        return is_loopback_host(httpx.URL(settings.base_url).host)
    except httpx.InvalidURL:
        return False


def _settings(settings: Settings | None, keywords: Mapping[str, Any]) -> Settings:
    base = settings or Settings.from_env()
    return base.with_(
        base_url=keywords.get("base_url"),
        api_key=keywords.get("api_key"),
        rate=keywords.get("rate"),
        concurrency=keywords.get("concurrency"),
        timeout=keywords.get("http_timeout"),
        poll_interval=keywords.get("poll_interval"),
        max_attempts=keywords.get("max_attempts"),
        max_backoff=keywords.get("max_backoff"),
    )


async def _start(
    source: object,
    keywords: Mapping[str, Any],
    *,
    settings: Settings | None,
    runs_root: str | Path,
    emulator: bool | str,
    progress: Progress,
    plan_only: bool,
) -> Run:
    spec = build_spec(source, keywords)
    resolved = _settings(settings, keywords)
    if not emulator and not plan_only and not resolved.api_key and not _keyless(resolved):
        raise UsageError(
            f"No Courier API key: set {OPTIONS['api_key'].envvar} (or pass "
            f"{OPTIONS['api_key'].flag}), or add --emulator to rehearse on the local emulator."
        )
    progression = (emulator if isinstance(emulator, str) else "polls:2") if emulator else None
    run_dir = keywords.get("run_dir")
    state, existed = open_run(
        spec,
        source,
        settings=resolved,
        runs_root=Path(runs_root),
        run_dir=Path(run_dir) if run_dir else None,
        emulator=progression,
    )
    frame = source if is_frame(source) else None
    try:
        await _continue(state, resolved, progress, frame, plan_only=plan_only, existed=existed)
    except BulkBatchError as exc:
        if exc.exit_code == 2 and not existed:
            # Refused as bad usage (a bad --where, say) before anything was sent: leave no
            # directory behind that the corrected command would take for another campaign.
            discard(state)
        raise
    except Adopted as adopted:
        # The same campaign already lives in another run directory: continue that one.
        discard(adopted.planned)
        state = adopted.state
        progress(
            ProgressEvent(
                "notice",
                message=f"campaign {state.campaign} is already in {state.run_dir}: continuing "
                f"that run ({adopted.planned.run_dir} held only its plan and is removed)",
            )
        )
        await _continue(state, resolved, progress, None, plan_only=plan_only, existed=True)
    return Run(state.run_dir)


async def _continue(
    state: RunState,
    settings: Settings,
    progress: Progress,
    frame: object | None,
    *,
    plan_only: bool,
    existed: bool,
) -> None:
    """Run a campaign's unfinished stages; a campaign already complete is only counted as
    asked for again, and its results rewritten."""
    # A run bulkbatch plan started resumes as a plan (never sends) until a send takes it.
    wanted = plan_only and (not existed or state.plan_only)
    if wanted != state.plan_only:
        state.plan_only = wanted
        state.save()
    started(progress, state)
    complete = existed and state.next_stage() is None
    async with Pipeline(state, settings_for(state, settings), progress, frame=frame) as pipeline:
        if plan_only:
            await pipeline.plan()
        elif complete:
            state.repeats += 1
            state.save()
            await pipeline.results()
        else:
            await pipeline.run()


# The option keywords below are the names in bulkbatch.options.OPTIONS (a test keeps them in
# step); their meaning is the flag's help there.
async def asend(
    source: object,
    *,
    event: str | None = None,
    template: str | None = None,
    content: JsonArg | None = None,
    brand: str | None = None,
    locale: str | None = None,
    override: JsonArg | None = None,
    data: JsonArg | None = None,
    channel: Literal["email", "sms", "push", "inbox", "none"] | None = None,
    format: Literal["auto", "csv", "parquet", "ndjson"] | None = None,
    delimiter: str | None = None,
    quote: str | None = None,
    encoding: str | None = None,
    mapping: Mapping[str, str] | Sequence[str] | None = None,
    where: str | None = None,
    sql: str | None = None,
    dedupe: Literal["first", "last", "fail"] | None = None,
    max_user_bytes: int | None = None,
    batch_size: int | None = None,
    max_job_size: int | None = None,
    rate: float | None = None,
    concurrency: int | None = None,
    http_timeout: float | None = None,
    poll_interval: float | None = None,
    max_attempts: int | None = None,
    max_backoff: float | None = None,
    wait: bool | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - the jobs' wait, not this call's
    messages: bool | None = None,
    include_profile: bool | None = None,
    run_id: str | None = None,
    run_dir: str | Path | None = None,
    shard: str | None = None,
    once_per: str | None = None,
    once_per_ledger: str | None = None,
    fail_on_rejects: bool | None = None,
    max_reject_rate: float | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    settings: Settings | None = None,
    runs_root: str | Path = "runs",
    emulator: bool | str = False,
    progress: Progress = NullProgress,
) -> Run:
    """Async :func:`send` (for notebooks: ``run = await bulkbatch.asend(...)``)."""
    keywords = {k: v for k, v in locals().items() if k in OPTIONS}
    return await _start(
        source,
        keywords,
        settings=settings,
        runs_root=runs_root,
        emulator=emulator,
        progress=progress,
        plan_only=False,
    )


def send(
    source: object,
    *,
    event: str | None = None,
    template: str | None = None,
    content: JsonArg | None = None,
    brand: str | None = None,
    locale: str | None = None,
    override: JsonArg | None = None,
    data: JsonArg | None = None,
    channel: Literal["email", "sms", "push", "inbox", "none"] | None = None,
    format: Literal["auto", "csv", "parquet", "ndjson"] | None = None,
    delimiter: str | None = None,
    quote: str | None = None,
    encoding: str | None = None,
    mapping: Mapping[str, str] | Sequence[str] | None = None,
    where: str | None = None,
    sql: str | None = None,
    dedupe: Literal["first", "last", "fail"] | None = None,
    max_user_bytes: int | None = None,
    batch_size: int | None = None,
    max_job_size: int | None = None,
    rate: float | None = None,
    concurrency: int | None = None,
    http_timeout: float | None = None,
    poll_interval: float | None = None,
    max_attempts: int | None = None,
    max_backoff: float | None = None,
    wait: bool | None = None,
    timeout: float | None = None,
    messages: bool | None = None,
    include_profile: bool | None = None,
    run_id: str | None = None,
    run_dir: str | Path | None = None,
    shard: str | None = None,
    once_per: str | None = None,
    once_per_ledger: str | None = None,
    fail_on_rejects: bool | None = None,
    max_reject_rate: float | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    settings: Settings | None = None,
    runs_root: str | Path = "runs",
    emulator: bool | str = False,
    progress: Progress = NullProgress,
) -> Run:
    """Send one notification to everyone in ``source``: load, plan, send, track, results.

    The same call again — from any directory, after a crash, from a scheduler's retry — sends
    nobody twice: it finds the campaign (by what it sends, see :mod:`bulkbatch.identity`) and
    finishes it. To send an identical campaign again on purpose, pass a new ``run_id``.

    :param source: a path, glob or folder (or a list of them), or a polars/pandas DataFrame,
        a pyarrow Table or a DuckDB relation
    :param settings: transport tuning (start rate, attempts, backoff); the keywords win
    :param emulator: send to a local Courier emulator started in-process (a string is its
        progression, e.g. ``"immediate"``); its state lives in the run directory
    :param progress: called with every :class:`~bulkbatch.progress.ProgressEvent`

    Every other keyword is a run option: the flag of the same name in ``bulkbatch send
    --help`` (``mapping`` is ``--map``; ``wait=False`` is ``--no-wait``).

    Example::

        run = bulkbatch.send("data/recipients_sample.csv", event="welcome", emulator=True)
        run.read_results().group_by("outcome").len()
    """
    keywords = {k: v for k, v in locals().items() if k in OPTIONS}
    return run_sync(
        _start,
        source,
        keywords,
        settings=settings,
        runs_root=runs_root,
        emulator=emulator,
        progress=progress,
        plan_only=False,
    )


def plan(
    source: object,
    *,
    event: str | None = None,
    template: str | None = None,
    content: JsonArg | None = None,
    brand: str | None = None,
    locale: str | None = None,
    override: JsonArg | None = None,
    data: JsonArg | None = None,
    channel: Literal["email", "sms", "push", "inbox", "none"] | None = None,
    format: Literal["auto", "csv", "parquet", "ndjson"] | None = None,
    delimiter: str | None = None,
    quote: str | None = None,
    encoding: str | None = None,
    mapping: Mapping[str, str] | Sequence[str] | None = None,
    where: str | None = None,
    sql: str | None = None,
    dedupe: Literal["first", "last", "fail"] | None = None,
    max_user_bytes: int | None = None,
    batch_size: int | None = None,
    max_job_size: int | None = None,
    rate: float | None = None,
    concurrency: int | None = None,
    http_timeout: float | None = None,
    poll_interval: float | None = None,
    max_attempts: int | None = None,
    max_backoff: float | None = None,
    wait: bool | None = None,
    timeout: float | None = None,
    messages: bool | None = None,
    include_profile: bool | None = None,
    run_id: str | None = None,
    run_dir: str | Path | None = None,
    shard: str | None = None,
    once_per: str | None = None,
    once_per_ledger: str | None = None,
    fail_on_rejects: bool | None = None,
    max_reject_rate: float | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    settings: Settings | None = None,
    runs_root: str | Path = "runs",
    emulator: bool | str = False,
    progress: Progress = NullProgress,
) -> Run:
    """Load and plan an audience without sending anything; returns the :class:`Run`.

    Takes the same keywords as :func:`send`; ``bulkbatch.resume(run.path)`` (or the same
    ``send`` call) sends the planned run later.

    Example::

        run = bulkbatch.plan("data/recipients_sample.csv", event="welcome")
        run.plan_info.rejected_by_reason
    """
    keywords = {k: v for k, v in locals().items() if k in OPTIONS}
    return run_sync(
        _start,
        source,
        keywords,
        settings=settings,
        runs_root=runs_root,
        emulator=emulator,
        progress=progress,
        plan_only=True,
    )


def resume(
    run_dir: str | Path,
    *,
    settings: Settings | None = None,
    progress: Progress = NullProgress,
    timeout: float | None = None,
    rate: float | None = None,
    concurrency: int | None = None,
    max_attempts: int | None = None,
    max_backoff: float | None = None,
) -> Run:
    """Continue a stopped run at its first unfinished step, with the options it was started
    with (``bulkbatch resume``); ``timeout``, the pace (``rate``, ``concurrency``) and the
    retries (``max_attempts``, ``max_backoff``) may change."""
    return Run(run_dir).resume(
        settings=settings,
        progress=progress,
        timeout=timeout,
        rate=rate,
        concurrency=concurrency,
        max_attempts=max_attempts,
        max_backoff=max_backoff,
    )


def status(
    run_dir: str | Path, *, refresh: bool = False, settings: Settings | None = None
) -> RunStatus:
    """Where a run stands (``bulkbatch status``)."""
    return Run(run_dir).status(refresh=refresh, settings=settings)


def results(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    messages: bool | None = None,
    include_profile: bool | None = None,
    webhooks: str | Path | None = None,
    reconcile: bool = False,
    settings: Settings | None = None,
    progress: Progress = NullProgress,
) -> ResultsInfo:
    """(Re)write a run's ``results.parquet`` (``bulkbatch results``); see :meth:`Run.results`."""
    return Run(run_dir).results(
        out,
        messages=messages,
        include_profile=include_profile,
        webhooks=webhooks,
        reconcile=reconcile,
        settings=settings,
        progress=progress,
    )


def report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write a run's self-contained HTML report (``bulkbatch report``); returns its path."""
    return Run(run_dir).report(out)


def cancel(
    run_dir: str | Path, *, settings: Settings | None = None, progress: Progress = NullProgress
) -> CancelInfo:
    """Cancel a campaign sent by mistake (``bulkbatch cancel``): nothing more is ingested or
    run, and every message not sent yet is canceled. See :mod:`bulkbatch.stages.cancel`."""
    return Run(run_dir).cancel(settings=settings, progress=progress)


def merge(
    run_dirs: Sequence[str | Path], out: str | Path, *, progress: Progress = NullProgress
) -> MergeInfo:
    """Combine the shards of one campaign (``send(..., shard="I/N")``) into one results
    dataset (``bulkbatch merge``): ``out`` ending in ``.parquet`` is one file, any other path
    a Hive-partitioned folder (``shard=I/``); either may be an ``s3://`` URL, and so may a
    shard (a folder holding its ``summary.json`` and ``results.parquet``). Refuses shards of
    different campaigns, a shard given twice or missing, and checks that every input row is
    there exactly once.

    Example::

        runs = [bulkbatch.send("audience.parquet", event="welcome", shard=f"{i}/4")
                for i in range(4)]
        bulkbatch.merge([r.path for r in runs], "welcome-results/")
    """
    progress(ProgressEvent("merge", message=f"merging {len(run_dirs)} shard(s)"))
    info = merge_shards([str(d) for d in run_dirs], str(out))
    progress(
        ProgressEvent("merge", info.input_rows, info.input_rows, "rows", message=f"{info.out}")
    )
    return info


def runs(root: str | Path = "runs") -> list[RunStatus]:
    """Every run directory under ``root`` (newest first), as ``bulkbatch runs`` lists them."""
    base = Path(root)
    if not base.is_dir():
        raise UsageError(f"No run directories here: {base} is not a folder. Pass the runs root.")
    found: list[RunStatus] = []
    for state_file in base.glob("**/state.json"):
        try:
            found.append(status_of(RunState.load(state_file.parent)))
        except BulkBatchError:
            continue  # not a run of this version, or damaged: status names the problem
    return sorted(found, key=lambda st: st.created_at, reverse=True)
