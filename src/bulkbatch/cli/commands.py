"""The commands: each builds its arguments, makes one call into the Python API, renders.

Heavy libraries are imported inside the commands so ``bulkbatch --help`` stays fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from bulkbatch.cli.exits import CliError, handle_errors
from bulkbatch.cli.flags import config_option, option_flags, shared_output_options
from bulkbatch.cli.render import emit_json, plan_report, renderer_for, summary_text
from bulkbatch.options import OPTIONS

__all__ = ["COMMANDS"]

RUN_OPTIONS = [name for name in OPTIONS if name != "api_key"] + ["api_key"]
"""Every run option, in definition order (the key last)."""
PLAN_OPTIONS = [
    o.name for o in OPTIONS.values() if o.group in ("campaign", "audience") or o.name in (
        "batch_size", "max_job_size", "rate", "concurrency", "run_id", "shard", "run_dir",
        "once_per",
        "once_per_ledger",
    )
]  # fmt: skip


def _inputs_argument(fn: Any) -> Any:
    return click.argument("inputs", nargs=-1, required=False, metavar="INPUT...")(fn)


def _require_inputs(inputs: tuple[str, ...]) -> None:
    if not inputs:
        raise click.UsageError(
            "Give at least one INPUT: a Parquet, CSV or NDJSON file, a glob or a folder."
        )


def _run_dir_arg(fn: Any) -> Any:
    return click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))(fn)


def _remember_run(ctx: click.Context, run_dir: Path | str) -> None:
    ctx.meta["bulkbatch.run_dir"] = str(run_dir)


def _only_plans(run_dir: Path) -> bool:
    """Whether resuming ``run_dir`` only plans (a run 'bulkbatch plan' started): its report
    then prints the plan's warnings and notes, so its progress leaves them out."""
    from bulkbatch.errors import StateError
    from bulkbatch.state import RunState

    try:
        return RunState.load(run_dir).plan_only
    except StateError:
        return False  # resume itself says what is wrong with the directory


def _connection(base_url: str | None, api_key: str | None) -> Any:
    """Settings from the environment, with --base-url / --api-key when given."""
    from bulkbatch.config import Settings

    return Settings.from_env().with_(base_url=base_url, api_key=api_key)


def _finish(run: Any, as_json: bool) -> None:
    """Print the summary; exit 1 only when the user's reject policy says so."""
    summary = run.summary() if (run.path / "summary.json").exists() else None
    if as_json:
        emit_json(summary or {"run_dir": str(run.path), "status": run.status().to_dict()})
    else:
        click.echo(summary_text(run, summary))
    if summary is None:
        return
    why = run.rows_failed()
    if why:
        raise CliError(f"{why}; see {summary['results']}.")


@click.command()
@_inputs_argument
@config_option
@option_flags(PLAN_OPTIONS)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@shared_output_options
@click.pass_context
@handle_errors
def plan(ctx: click.Context, /, inputs: tuple[str, ...], as_json: bool, **kw: Any) -> None:
    """Load and plan an audience; send nothing. Prints who would get what.

    The report shows rows read, users to send, duplicates (first few groups), rejected rows
    by reason, what the plan warns about or notes (users the channel cannot reach, input
    columns nothing sends), a sample of the merged user objects, batches, and the estimated
    duration at --rate. plan.parquet and rejects.parquet are written to the run directory; the same
    options given to 'bulkbatch send' send this plan ('bulkbatch resume' of a planned run
    finishes the plan only, and sends nobody).

    Example:

        bulkbatch plan data/recipients_sample.csv --event welcome --data '{"company": "Acme"}'
    """
    import bulkbatch

    _require_inputs(inputs)
    with renderer_for(ctx, plan_notices=False) as render:  # the report prints them
        run = bulkbatch.plan(list(inputs), progress=render, **kw)
    _plan_out(run, as_json, kw.get("rate"))


def _plan_out(run: Any, as_json: bool, rate: float | None) -> None:
    """Print a planned run's report (``plan``, and ``resume`` of a run ``plan`` started)."""
    info = run.plan_info
    if as_json:
        emit_json(
            {
                **info.to_dict(),
                **{k: run.state.plan.get(k) for k in ("to_send", "skipped", "jobs", "batches")},
                "run_dir": str(run.path),
                "campaign": run.campaign,
                "estimated_seconds": info.estimated_seconds(rate),
            }
        )
        return
    click.echo(plan_report(run, rate))


@click.command()
@_inputs_argument
@config_option
@option_flags(RUN_OPTIONS)
@click.option(
    "--emulator",
    is_flag=True,
    help="Start a local Courier emulator in-process and send to it (no account needed).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@shared_output_options
@click.pass_context
@handle_errors
def send(
    ctx: click.Context, /, inputs: tuple[str, ...], emulator: bool, as_json: bool, **kw: Any
) -> None:
    """Send one notification to everyone in INPUT: load, plan, send, track, results.

    Every batch is recorded only once Courier acknowledged it, and every request's
    Idempotency-Key derives from the campaign (what is sent, to whom, and --run-id), not from
    where it runs. So the same command again — a scheduler's retry, another working
    directory, another machine, a lost run directory — sends nobody twice: it finishes the
    campaign and exits 0. To send an identical campaign again on purpose, give a new
    --run-id. Rejected and filtered rows are reported, not failures (see --fail-on-rejects).

    Exit codes: 0 complete; 1 error or stopped (resume continues); 2 bad usage.

    Example:

        export COURIER_API_KEY=pk_prod_...

        bulkbatch send audience.parquet --event welcome --data '{"offer": "20%"}' --rate 20

        bulkbatch send data/recipients_sample.csv --event welcome --emulator
    """
    import bulkbatch

    _require_inputs(inputs)
    with renderer_for(ctx) as render:
        run = bulkbatch.send(list(inputs), emulator=emulator, progress=render, **kw)
    _finish(run, as_json)


@click.command()
@_run_dir_arg
@option_flags(
    ["timeout", "rate", "concurrency", "max_attempts", "max_backoff", "base_url", "api_key"]
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@shared_output_options
@click.pass_context
@handle_errors
def resume(
    ctx: click.Context,
    /,
    run_dir: Path,
    timeout: float | None,
    rate: float | None,
    concurrency: int | None,
    max_attempts: int | None,
    max_backoff: float | None,
    base_url: str | None,
    api_key: str | None,
    as_json: bool,
) -> None:
    """Continue a stopped run from where it stopped, with the options it was started with;
    nobody is sent twice.

    Finished stages are skipped, acknowledged batches are not resent, jobs are reused (never
    created again) and run at most once, and paging continues at the stored cursor. Only the
    pace (--rate, --concurrency), the retries (--max-attempts, --max-backoff) and the wait
    (--timeout) may change. A run 'bulkbatch plan' started finishes its plan and sends
    nobody; 'bulkbatch send' with the same input and options sends it.

    Example:

        bulkbatch resume runs/welcome-3f2a9c1d0e4b
    """
    import bulkbatch

    _remember_run(ctx, run_dir)
    settings = _connection(base_url, api_key)
    with renderer_for(ctx, plan_notices=not _only_plans(run_dir)) as render:
        run = bulkbatch.resume(
            run_dir,
            settings=settings,
            progress=render,
            timeout=timeout,
            rate=rate,
            concurrency=concurrency,
            max_attempts=max_attempts,
            max_backoff=max_backoff,
        )
    if run.state.plan_only:
        _plan_out(run, as_json, rate)
        if not as_json:
            click.echo(
                "Planned only: 'bulkbatch plan' started this run, so resuming it sends nobody. "
                "To send it, run 'bulkbatch send' with the same input and options."
            )
        return
    _finish(run, as_json)


@click.command()
@_run_dir_arg
@click.option("--refresh", is_flag=True, help="Ask Courier for each job's status first.")
@click.option("--watch", is_flag=True, help="Redraw every few seconds until the jobs finish.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@shared_output_options
@click.pass_context
@handle_errors
def status(
    ctx: click.Context, run_dir: Path, refresh: bool, watch: bool, interval: float, as_json: bool
) -> None:
    """Show where a run stands: its stage, users acknowledged, jobs by status, and what each
    finished stage took, in wall time and in CPU time (CPU far below the wall time: the
    stage waited on Courier or the network).

    Reads state.json, so it works while another process is sending. --refresh and --watch
    ask Courier (COURIER_API_KEY) for the jobs' current counts.

    Example:

        bulkbatch status runs/welcome-3f2a9c1d0e4b --watch
    """
    import bulkbatch

    if as_json or not watch:
        st = bulkbatch.status(run_dir, refresh=refresh)
        emit_json(st.to_dict()) if as_json else click.echo(st.render())
        return
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    with Live(console=Console(stderr=False), auto_refresh=False) as live:
        while True:
            st = bulkbatch.status(run_dir, refresh=True)
            live.update(Text(st.render()), refresh=True)
            if st.jobs_final or st.finished or st.canceled:
                return
            time.sleep(interval)


@click.command()
@_run_dir_arg
@click.option(
    "--out",
    metavar="PATH|s3://BUCKET/KEY",
    help="Where to write a Parquet file (default RUN_DIR/results.parquet); an s3:// URL "
    "uploads RUN_DIR/results.parquet there (AWS credentials and AWS_ENDPOINT_URL from the "
    "environment); an s3:// folder ending in / gets results.parquet and summary.json, what "
    "'bulkbatch merge' reads of a shard.",
)
@click.option(
    "--webhooks",
    "webhooks",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Join delivery outcomes (DELIVERED, UNDELIVERABLE, OPENED, CLICKED ...) from the store "
    "of 'bulkbatch webhooks serve': one DuckDB join, seconds for a million people.",
)
@click.option(
    "--reconcile",
    is_flag=True,
    help="Then ask GET /messages/{id} only for messages with no final delivery status yet "
    "(lost or late webhooks), concurrently and resumably.",
)
@click.option(
    "--messages",
    is_flag=True,
    help="Ask GET /messages/{id} for every message (one request per person: use webhooks for "
    "large audiences).",
)
@click.option("--include-profile", is_flag=True, default=None, help="Keep every input column.")
@option_flags(["base_url", "api_key"])
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@shared_output_options
@click.pass_context
@handle_errors
def results(
    ctx: click.Context,
    run_dir: Path,
    out: str | None,
    webhooks: Path | None,
    reconcile: bool,
    messages: bool,
    include_profile: bool | None,
    base_url: str | None,
    api_key: str | None,
    as_json: bool,
) -> None:
    """(Re)write results.parquet: one row per input row, with outcome, status and delivery.

    For a run that stopped while sending, rows whose batch Courier acknowledged are
    'ingested' and the others 'unsent': send those with --sql over the file's row_number.

    Delivery moves on after a job completes. With Courier's webhooks pointed at 'bulkbatch
    webhooks serve', --webhooks STORE fills delivery_status, delivered_at, opened_at,
    clicked_at and delivery_reason, and --reconcile asks the Messages API about the few
    messages whose webhooks have not arrived.

    Example:

        bulkbatch results runs/welcome-3f2a9c1d0e4b --webhooks webhooks.sqlite --reconcile

        bulkbatch results runs/welcome-3f2a9c1d0e4b --messages --out welcome.parquet

        bulkbatch results runs/welcome-3f2a9c1d0e4b --out s3://crm-exports/welcome.parquet
    """
    import bulkbatch
    from bulkbatch.storage import is_remote

    folder = out is not None and is_remote(out) and out.endswith("/")
    if out is not None and not folder and not out.lower().endswith((".parquet", ".pq")):
        raise CliError(
            f"--out {out} does not end in .parquet: results are written as Parquet. Name the "
            "file *.parquet (DuckDB or polars turn it into CSV in one line).",
            2,
        )
    _remember_run(ctx, run_dir)
    settings = _connection(base_url, api_key)
    with renderer_for(ctx) as render:
        info = bulkbatch.results(
            run_dir,
            out,
            messages=messages or None,
            include_profile=include_profile,
            webhooks=webhooks,
            reconcile=reconcile,
            settings=settings,
            progress=render,
        )
    run = bulkbatch.Run(run_dir)
    if as_json:
        emit_json(run.summary())
    else:
        click.echo(summary_text(run, run.summary()))
        if out is not None and is_remote(out):
            click.echo(f"  uploaded  {out}")
        elif info.path != run.path / "results.parquet":
            click.echo(f"  written   {info.path}")


@click.command()
@click.option(
    "--run-dir", type=click.Path(file_okay=False, path_type=Path), help="Where to put the demo run."
)
@shared_output_options
@click.pass_context
@handle_errors
def demo(ctx: click.Context, run_dir: Path | None) -> None:
    """Send the 2,000-person sample audience to a local emulator, end to end.

    Starts the Courier emulator in-process, sends data/recipients_sample.csv with a global
    data bag, waits for the job, fetches delivery statuses, writes results.parquet and
    prints the summary. Needs no account and no network.

    Example:

        bulkbatch demo
    """
    import bulkbatch

    with renderer_for(ctx) as render:
        run = bulkbatch.demo(run_dir=run_dir, progress=render)
    click.echo(summary_text(run, run.summary()))
    click.echo(f"\nRead it from Python:  bulkbatch.Run({str(run.path)!r}).read_results()")


@click.command()
@_run_dir_arg
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write (default RUN_DIR/report.html).",
)
@shared_output_options
@click.pass_context
@handle_errors
def report(ctx: click.Context, run_dir: Path, out: Path | None) -> None:
    """Write a self-contained HTML report of a run: what to open the morning after.

    Counts and the accounting, rejects by reason, duplicates, bulk statuses, the delivery
    funnel and throughput over time. Personal data is masked.

    Example:

        bulkbatch report runs/welcome-3f2a9c1d0e4b
    """
    import bulkbatch

    click.echo(str(bulkbatch.report(run_dir, out)))


@click.command()
@_run_dir_arg
@option_flags(["base_url", "api_key"])
@click.option("--json", "as_json", is_flag=True, help="Print what was canceled as JSON.")
@shared_output_options
@click.pass_context
@handle_errors
def cancel(
    ctx: click.Context, run_dir: Path, base_url: str | None, api_key: str | None, as_json: bool
) -> None:
    """Stop a campaign sent by mistake.

    Nothing more is ingested and no job that has not run is ever run; for jobs that already
    ran, every message Courier has not sent yet is canceled (POST /messages/{id}/cancel; a
    message already sent is reported as too late). Safe to repeat: a stopped cancel continues
    where it stopped. results.parquet then says, per person, whether the message was
    canceled. 'bulkbatch resume' refuses a canceled run. Stop a running send first (Ctrl-C).

    Example:

        bulkbatch cancel runs/welcome-3f2a9c1d0e4b
    """
    import dataclasses

    import bulkbatch

    _remember_run(ctx, run_dir)
    settings = _connection(base_url, api_key)
    with renderer_for(ctx) as render:
        info = bulkbatch.cancel(run_dir, settings=settings, progress=render)
    if as_json:
        emit_json(dataclasses.asdict(info))
        return
    click.echo(f"Canceled run {run_dir}:\n{info.render()}")
    click.echo(f"  results   {Path(run_dir) / 'results.parquet'}")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


@click.command()
@click.argument(
    "root", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"), required=False
)
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@shared_output_options
@handle_errors
def runs(root: Path, as_json: bool) -> None:
    """List the runs under ROOT (default: runs): campaign, state, counts and age.

    Example:

        bulkbatch runs

        bulkbatch runs /data/bulk-runs --json
    """
    import bulkbatch

    found = bulkbatch.runs(root)
    if as_json:
        emit_json([st.to_dict() for st in found])
        return
    if not found:
        click.echo(f"No runs under {root}.")
        return
    now = time.time()
    click.echo(f"{'age':>5}  {'campaign':<12} {'event':<16} {'state':<14} {'to send':>10} "
               f"{'acked':>10}  run directory")  # fmt: skip
    for st in found:
        click.echo(
            f"{_age(now - st.created_at):>5}  {st.campaign[:12] or '-':<12} "
            f"{st.event[:16]:<16} {st.stage[:14]:<14} {st.to_send:>10,} {st.users_acked:>10,}  "
            f"{st.run_dir}"
        )


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...")
@click.option(
    "--out",
    required=True,
    metavar="PATH",
    help="A .parquet file, or a folder for a Hive-partitioned dataset (shard=I/); either "
    "may be s3://BUCKET/KEY.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the merged counts as JSON.")
@shared_output_options
@click.pass_context
@handle_errors
def merge(ctx: click.Context, run_dirs: tuple[str, ...], out: str, as_json: bool) -> None:
    """Combine the shards of one campaign (send --shard I/N) into one results dataset.

    Every shard's run directory is needed, once; shards of another campaign (other inputs,
    options or shard count) are refused. The merged rows keep each row's outcome and
    statuses plus a shard column, and the accounting is checked across shards: every input
    row exactly once, input rows = ingested + duplicates + rejected + filtered + skipped.

    Four shards, then one dataset.

    Example:

    \b
        for i in 0 1 2 3; do
          bulkbatch send audience.parquet --event welcome --shard $i/4 --run-dir runs/w-$i
        done
        bulkbatch merge runs/w-0 runs/w-1 runs/w-2 runs/w-3 --out welcome-results/
    """
    import bulkbatch

    with renderer_for(ctx) as render:
        info = bulkbatch.merge(run_dirs, out, progress=render)
    if as_json:
        emit_json(info.to_dict())
        return
    c = info.counts
    click.echo(
        f"Merged {info.shards} shards into {info.out} "
        f"({'Hive-partitioned dataset' if info.dataset else 'one Parquet file'}):\n"
        f"  input rows  {info.input_rows:>12,}\n  ingested    {c['ingested']:>12,}\n"
        f"  duplicates  {c['duplicates']:>12,}\n  rejected    {c['rejected']:>12,}\n"
        f"  filtered    {c['filtered']:>12,}\n  skipped     {c['skipped']:>12,}\n"
        f"  canceled    {c['canceled']:>12,}\n  accounting  adds up across shards"
    )


COMMANDS: list[click.Command] = [
    plan, send, resume, status, results, cancel, runs, demo, report, merge,
]  # fmt: skip
