"""The ``bulkbatch`` command line: each command is one call into the Python API.

Exit codes (for schedulers): 0 success; 1 failure (an error, an interrupted run, or rows
that failed without ``--allow-failures``); 2 bad usage (unknown option, bad value).
Progress goes to stderr (a live bar on a terminal, log lines otherwise), results to stdout.
Heavy libraries are imported inside the commands so ``bulkbatch --help`` stays fast.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

import click

from bulkbatch.config import DEFAULT_CONCURRENCY
from bulkbatch.errors import BulkBatchError
from bulkbatch.progress import ProgressEvent

if TYPE_CHECKING:
    from bulkbatch.pipeline import Run

F = TypeVar("F", bound=Callable[..., Any])

FINAL = ("COMPLETED", "ERROR")
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class BulkBatchClickError(click.ClickException):
    """A failure shown as one line; exit code 1."""

    exit_code = 1


class BulkBatchUsageError(BulkBatchClickError):
    """Bad usage shown as one line (no usage dump); exit code 2."""

    exit_code = 2


def click_error(message: str, exit_code: int = 1) -> BulkBatchClickError:
    """The click exception that prints ``message`` and exits with ``exit_code``."""
    return BulkBatchUsageError(message) if exit_code == 2 else BulkBatchClickError(message)


def handle_errors(fn: F) -> F:
    """Turn library errors into one-line messages; never show a traceback unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        debug = bool(ctx.find_root().params.get("debug"))
        try:
            return fn(*args, **kwargs)
        except BulkBatchError as exc:
            if debug:
                raise
            raise click_error(str(exc), exc.exit_code) from exc
        except KeyboardInterrupt:
            run_dir = ctx.meta.get("bulkbatch.run_dir")
            hint = f" Resume with: bulkbatch resume {run_dir}" if run_dir else ""
            click.echo(f"\nInterrupted. Every acknowledged batch is recorded.{hint}", err=True)
            ctx.exit(1)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if debug:
                raise
            raise click_error(
                f"Unexpected {type(exc).__name__}: {exc}. Rerun with --debug for a traceback, "
                "and please report it."
            ) from exc

    return wrapper  # type: ignore[return-value]


# -- progress rendering ---------------------------------------------------------------


class Renderer:
    """Render :class:`ProgressEvent` values: a rich live display on a terminal, else lines."""

    def __init__(self, log_format: str = "text", quiet: bool = False) -> None:
        self.log_format = log_format
        self.quiet = quiet
        self.live = sys.stderr.isatty() and log_format == "text" and not quiet
        self._last_line: dict[str, float] = {}
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._jobs: dict[str, dict[Any, ProgressEvent]] = {}
        self._users_total: int | None = None

    def __enter__(self) -> Self:
        if self.live:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description:<9}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage == "start":
            ctx = click.get_current_context(silent=True)
            if ctx is not None:
                ctx.meta["bulkbatch.run_dir"] = event.extra.get("run_dir")
        if self.quiet:
            return
        if self._progress is not None:
            self._render_live(event)
        else:
            self._render_line(event)

    def _info(self, e: ProgressEvent) -> str:
        x = e.extra
        if e.stage == "ingest":
            elapsed = float(x.get("elapsed") or 0) or 1e-9
            rate = x.get("rate")
            text = f"{e.done / elapsed:,.0f} users/s"
            if rate:
                text += f"  limit {float(rate):,.0f} req/s"
            if x.get("retries"):
                text += f"  retries {x['retries']} (429: {x.get('throttled', 0)})"
            return text
        if e.stage == "wait":
            return (
                f"{x.get('status')}  received {x.get('received', 0):,} enqueued "
                f"{x.get('enqueued', 0):,} failures {x.get('failures', 0):,}"
            )
        if e.stage == "page":
            return f"{x.get('pages', 0):,} pages"
        return e.message

    def _aggregate(self, e: ProgressEvent) -> ProgressEvent:
        """Sum per-job reports (several jobs wait and page at once) into one bar."""
        if e.stage == "ingest" and e.total is not None:
            self._users_total = e.total
        job = e.extra.get("job_no")
        if e.stage not in ("wait", "page") or job is None:
            return e
        per_job = self._jobs.setdefault(e.stage, {})
        per_job[job] = e
        done = sum(x.done for x in per_job.values())
        total = max(self._users_total or 0, sum(x.total or 0 for x in per_job.values()))
        extra = dict(e.extra)
        if e.stage == "page":
            extra["pages"] = sum(int(x.extra.get("pages", 0)) for x in per_job.values())
        else:
            finished = sum(1 for x in per_job.values() if x.extra.get("status") in FINAL)
            extra["status"] = (
                f"{finished}/{len(per_job)} jobs done"
                if len(per_job) > 1
                else (e.extra.get("status"))
            )
            for k in ("received", "enqueued", "failures"):
                extra[k] = sum(int(x.extra.get(k, 0)) for x in per_job.values())
        return ProgressEvent(e.stage, done, total or None, e.unit, e.message, extra)

    def _render_live(self, e: ProgressEvent) -> None:
        e = self._aggregate(e)
        if e.total is None and e.stage not in self._tasks:
            return
        key = e.stage
        if key not in self._tasks:
            self._tasks[key] = self._progress.add_task(key, total=e.total, info="")
        self._progress.update(self._tasks[key], completed=e.done, total=e.total, info=self._info(e))

    def _render_line(self, e: ProgressEvent) -> None:
        e = self._aggregate(e)
        now = time.monotonic()
        final = e.total is not None and e.done >= e.total
        if not final and now - self._last_line.get(e.stage, 0.0) < 5.0 and e.stage != "start":
            return
        self._last_line[e.stage] = now
        if self.log_format == "json":
            import orjson

            payload = {
                "ts": time.time(),
                "stage": e.stage,
                "done": e.done,
                "total": e.total,
                "unit": e.unit,
                "message": e.message,
                **{k: v for k, v in e.extra.items() if isinstance(v, str | int | float | bool)},
            }
            click.echo(orjson.dumps(payload).decode(), err=True)
        else:
            total = f"/{e.total:,}" if e.total is not None else ""
            detail = self._info(e) or e.message
            click.echo(f"[{e.stage}] {e.done:,}{total} {e.unit} {detail}".rstrip(), err=True)


# -- shared options -------------------------------------------------------------------


def _json_value(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None or isinstance(value, dict):
        return value
    from bulkbatch.stages.plan import parse_data_option

    try:
        return parse_data_option(value)
    except BulkBatchError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


_PATH_KEYS = ("inputs", "run_dir", "once_per_ledger")


def _config_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Read a TOML run file into the command's defaults; flags given on the line still win.

    Keys are the option names (``event``, ``data``, ``rate``, ``once-per`` …) plus ``inputs``;
    ``data``/``content`` may be TOML tables and ``map`` a table of TARGET = "COLUMN".
    Relative paths are relative to the file, so a scheduler can run it from anywhere.
    """
    if value is None:
        return None
    import tomllib

    try:
        data = tomllib.loads(value.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise click.BadParameter(f"{value} not found.", ctx=ctx, param=param) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise click.BadParameter(
            f"{value} is not valid TOML: {exc}. Fix the file (see README, 'Scheduled runs').",
            ctx=ctx,
            param=param,
        ) from None
    import orjson

    assert ctx.command is not None
    known = {p.name for p in ctx.command.params if p.name} - {"config"}
    defaults: dict[str, Any] = {}
    for key, raw in data.items():
        name = key.replace("-", "_")
        val: Any = raw
        if name == "map":
            name = "maps"
            if isinstance(raw, dict):
                val = [f"{t}={c}" for t, c in raw.items()]
        elif name == "format":
            name = "fmt"
        elif name == "json":
            name = "as_json"
        if name in ("data", "content") and isinstance(raw, dict):
            val = orjson.dumps(raw).decode()
        if name == "inputs" and isinstance(raw, str):
            val = [raw]
        if name in _PATH_KEYS:
            base = value.parent
            if isinstance(val, list):
                val = [str(base / v) for v in val]
            elif isinstance(val, str):
                val = str(base / val)
        if name not in known:
            names = ", ".join(sorted(k.replace("_", "-") for k in known | {"map"} if k != "maps"))
            raise click.BadParameter(
                f"Unknown key {key!r} in {value}. Known keys: {names}.", ctx=ctx, param=param
            )
        defaults[name] = val
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def input_options(fn: F) -> F:
    """Options shared by ``plan`` and ``send``: what to read and how to shape the users."""
    decorators = [
        click.argument("inputs", nargs=-1, required=False, metavar="INPUT..."),
        click.option(
            "--config",
            type=click.Path(dir_okay=False, path_type=Path),
            is_eager=True,
            expose_value=False,
            callback=_config_file,
            help="A TOML run file with any of these options (flags given here win).",
        ),
        click.option("--event", help="Courier event or notification id to send."),
        click.option("--template", help="Courier template id (overrides the event's)."),
        click.option(
            "--content",
            callback=_json_value,
            metavar="JSON|@FILE",
            help='Inline content, e.g. \'{"title": "Hi", "body": "Hello {{first_name}}"}\'.',
        ),
        click.option("--brand", help="Courier brand id."),
        click.option("--locale", help="Job locale, e.g. en_US."),
        click.option(
            "--channel",
            type=click.Choice(["email", "sms", "push", "inbox", "none"]),
            default="email",
            show_default=True,
            help="Routing channel; 'email' turns on the profile.email pre-flight check.",
        ),
        click.option(
            "--data",
            callback=_json_value,
            metavar="JSON|@FILE",
            help="Global data merged under each user's data (per-user wins).",
        ),
        click.option(
            "--map",
            "maps",
            multiple=True,
            metavar="TARGET=COLUMN",
            help="Remap a column, e.g. --map to.user_id=customer_id --map data.first_name=fname.",
        ),
        click.option("--where", help="SQL filter over the input columns, e.g. \"country = 'DE'\"."),
        click.option("--sql", help="A query over table 'inputs' that selects the audience."),
        click.option(
            "--dedupe",
            type=click.Choice(["first", "last", "fail"]),
            default="first",
            show_default=True,
            help="Which row to keep when rows share a recipient.",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(1, 1000),
            default=1000,
            show_default=True,
            help="Users per ingest call.",
        ),
        click.option(
            "--max-job-size",
            type=click.IntRange(0),
            default=None,
            help=(
                "Users per bulk job; jobs are paged side by side. Default: about 4 jobs per "
                "--concurrency slot, of at least 10,000 users each. 0: one job for everyone."
            ),
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["auto", "csv", "parquet", "ndjson"]),
            default="auto",
            show_default=True,
            help="Input format (auto: by file extension).",
        ),
        click.option("--delimiter", help="CSV delimiter (default: sniffed)."),
        click.option("--quote", help="CSV quote character (default: sniffed)."),
        click.option("--encoding", help="CSV encoding, e.g. latin-1 (default: utf-8)."),
        click.option(
            "--run-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="Run directory (default: runs/<event>-<time>). An existing one is resumed.",
        ),
        click.option(
            "--rate",
            type=click.FloatRange(min=0, min_open=True),
            help="Most requests per second (default: unknown; adapt to 429s).",
        ),
        click.option(
            "--once-per",
            metavar="KEY",
            help="Campaign key: skip people an earlier run sent under KEY; record who is sent.",
        ),
        click.option(
            "--once-per-ledger",
            type=click.Path(dir_okay=False, path_type=Path),
            help="The --once-per ledger file (default: once-per.duckdb beside the run dirs).",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


def _collect(kw: dict[str, Any]) -> dict[str, Any]:
    """Turn CLI values into library options (only those given)."""
    from bulkbatch.stages.plan import parse_map_option

    options: dict[str, Any] = {
        "event": kw.get("event"),
        "template": kw.get("template"),
        "content": kw.get("content"),
        "brand": kw.get("brand"),
        "locale": kw.get("locale"),
        "channel": None if kw.get("channel") == "none" else kw.get("channel"),
        "data": kw.get("data") or {},
        "mapping": parse_map_option(kw.get("maps") or ()),
        "where": kw.get("where"),
        "sql": kw.get("sql"),
        "dedupe": kw.get("dedupe"),
        "batch_size": kw.get("batch_size"),
        "max_job_size": kw.get("max_job_size"),
        "format": kw.get("fmt"),
        "delimiter": kw.get("delimiter"),
        "quote": kw.get("quote"),
        "encoding": kw.get("encoding"),
    }
    return {k: v for k, v in options.items() if v is not None}


def _require_inputs(inputs: tuple[str, ...]) -> None:
    if not inputs:
        raise click.UsageError(
            "Give at least one INPUT: a Parquet, CSV or NDJSON file, a glob or a folder."
        )


def _emit_json(data: Any) -> None:
    import orjson

    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())


# -- the group ------------------------------------------------------------------------


class LazyGroup(click.Group):
    """A group whose heavier subcommands are imported only when used (or listed in help)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, Callable[[], click.Command]] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_commands])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            self.add_command(self.lazy_commands[cmd_name](), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="bulkbatch")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Progress on stderr: a live bar/text lines, or JSON lines for machines.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, log_format: str, quiet: bool) -> None:
    """Send one notification to a very large audience through Courier's Bulk API.

    A run goes load -> plan -> send -> track -> results and lives in a run directory
    (runs/<run-id>/) from which any stopped run can be resumed. Point it at Courier with
    COURIER_API_KEY (and COURIER_BASE_URL), or rehearse on the built-in emulator.

    Example:

        bulkbatch demo

        bulkbatch send data/recipients_sample.csv --event welcome --emulator
    """
    ctx.ensure_object(dict)
    ctx.obj["log_format"] = log_format
    ctx.obj["quiet"] = quiet


def _renderer(ctx: click.Context) -> Renderer:
    obj = ctx.find_root().obj or {}
    return Renderer(obj.get("log_format", "text"), obj.get("quiet", False))


@cli.command()
@input_options
@click.pass_context
@handle_errors
def plan(
    ctx: click.Context,
    /,
    inputs: tuple[str, ...],
    as_json: bool,
    rate: float | None,
    run_dir: Path | None,
    **kw: Any,
) -> None:
    """Load and plan an audience; send nothing. Prints who would get what.

    The report shows rows read, users to send, duplicates (first few groups), rejected rows
    by reason, a sample of the merged user objects, batches, and the estimated duration at
    --rate. plan.parquet and rejects.parquet are written to the run directory.

    Example:

        bulkbatch plan data/recipients_sample.csv --event welcome --data '{"company": "Acme"}'
    """
    import bulkbatch

    _require_inputs(inputs)
    with _renderer(ctx) as render:
        run = bulkbatch.plan(
            list(inputs),
            run_dir=run_dir,
            progress=render,
            once_per=kw.get("once_per"),
            once_per_ledger=kw.get("once_per_ledger"),
            **_collect(kw),
        )
    info = run.plan_info
    if as_json:
        _emit_json(
            {
                **info.to_dict(),
                "run_dir": str(run.path),
                "estimated_seconds": info.estimated_seconds(rate),
            }
        )
        return
    click.echo(_plan_report(run, rate))


def _plan_report(run: Run, rate: float | None) -> str:
    import orjson

    info = run.plan_info
    lines = [
        f"Plan {run.run_id} ({run.path})",
        f"  rows read     {info.rows_read:>12,}",
        f"  to send       {info.to_send:>12,}  in {info.batches:,} batches of ≤{info.batch_size}"
        + (f" across {info.jobs} jobs" if info.jobs > 1 else ""),
        f"  duplicates    {info.duplicates:>12,}",
        f"  rejected      {info.rejected:>12,}",
    ]
    for code, n in sorted(info.rejected_by_reason.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {code:<20} {n:>8,}")
    if info.duplicate_groups:
        lines.append("  duplicate groups (first few):")
        for g in info.duplicate_groups[:5]:
            lines.append(f"    {g['recipient']}: rows {g['rows']} (kept {g['kept']})")
    for w in info.warnings:
        lines.append(f"  warning: {w}")
    if info.sample_users:
        lines.append("  sample user:")
        lines.append("    " + orjson.dumps(info.sample_users[0]).decode())
    est = info.estimated_seconds(rate)
    if est is not None:
        shown = f"{est:,.0f}s" if est >= 10 else f"{est:.1f}s"
        lines.append(f"  estimated send time at {rate:g} req/s: {shown}")
    lines.append(f"  files: {run.path / 'plan.parquet'}, {run.path / 'rejects.parquet'}")
    return "\n".join(lines)


def _settings(kw: dict[str, Any], rate: float | None) -> Any:
    from bulkbatch.config import Settings

    return Settings.from_env(
        base_url=kw.get("base_url"),
        api_key=kw.get("api_key"),
        rate=rate,
        concurrency=kw.get("concurrency"),
        batch_size=kw.get("batch_size"),
        poll_interval=kw.get("poll_interval"),
    )


def send_options(fn: F) -> F:
    decorators = [
        click.option(
            "--concurrency",
            type=click.IntRange(1, 64),
            default=DEFAULT_CONCURRENCY,
            show_default=True,
            help="Most requests in flight at once (also how many jobs are paged side by side).",
        ),
        click.option(
            "--emulator",
            is_flag=True,
            help="Start a local Courier emulator in-process and send to it (no account needed).",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0),
            default=None,
            help="Most seconds to wait for a job to finish; the run stays resumable.",
        ),
        click.option("--messages", is_flag=True, help="Also fetch delivery status per message."),
        click.option(
            "--include-profile",
            is_flag=True,
            help="Keep every input column in results.parquet (default: key columns only).",
        ),
        click.option("--no-wait", is_flag=True, help="Stop after the job is started."),
        click.option(
            "--allow-failures",
            is_flag=True,
            help="Exit 0 even when some rows were rejected or failed.",
        ),
        click.option(
            "--poll-interval",
            type=click.FloatRange(min=0),
            default=None,
            help="Seconds between job polls.",
        ),
        click.option(
            "--base-url",
            envvar="COURIER_BASE_URL",
            show_envvar=True,
            help="Courier API root (default https://api.courier.com).",
        ),
        click.option(
            "--api-key",
            envvar="COURIER_API_KEY",
            show_envvar=True,
            help="Courier API key. Prefer the environment variable; it is never printed.",
        ),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


def _finish(run: Run, as_json: bool, allow_failures: bool) -> None:
    summary = run.summary() if (run.path / "summary.json").exists() else None
    if as_json:
        _emit_json(summary or {"run_dir": str(run.path), "status": run.status().to_dict()})
    else:
        click.echo(_summary_text(run, summary))
    if summary is None:
        return
    c = summary["counts"]
    failed = c["rejected"] + summary["statuses"].get("ERROR", 0)
    if failed and not allow_failures:
        raise BulkBatchClickError(
            f"{failed:,} rows failed (rejected or ERROR); see {run.path / 'results.parquet'}. "
            "Pass --allow-failures to exit 0 when some rows fail."
        )


def _summary_text(run: Run, summary: dict[str, Any] | None) -> str:
    if summary is None:
        return str(run.status())
    c = summary["counts"]

    def row(label: str, n: int, note: str = "") -> str:
        return f"  {label:<24}{n:>10,}{note}"

    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["rejected_by_reason"].items()))
    verdict = "accounted for" if summary["accounting_ok"] else "ACCOUNTING FAILED"
    lines = [
        f"Run {summary['run_id']}: {verdict} in {summary['elapsed_seconds']:.1f}s",
        row("rows in", c["input_rows"]),
        row("ingested", c["ingested"]),
        row("duplicates", c["duplicates"]),
        row("rejected", c["rejected"], f"   ({reasons})" if reasons else ""),
    ]
    if c.get("skipped"):
        lines.append(row("skipped", c["skipped"], "   (sent earlier under --once-per)"))
    for status, n in sorted(summary["statuses"].items()):
        lines.append(row(f"status {status}", n))
    for status, n in sorted(summary.get("delivery", {}).items()):
        lines.append(row(f"delivery {status}", n))
    for j in summary["jobs"]:
        lines.append(f"  job {j['job_id']}: {j['status']}")
    lines += [
        f"  results   {summary['results']}",
        f"  rejects   {run.path / 'rejects.parquet'}",
        f"  summary   {run.path / 'summary.json'}",
    ]
    return "\n".join(lines)


@cli.command()
@input_options
@send_options
@click.pass_context
@handle_errors
def send(
    ctx: click.Context,
    /,
    inputs: tuple[str, ...],
    as_json: bool,
    rate: float | None,
    run_dir: Path | None,
    emulator: bool,
    timeout: float | None,
    messages: bool,
    include_profile: bool,
    no_wait: bool,
    allow_failures: bool,
    **kw: Any,
) -> None:
    """Send one notification to everyone in INPUT: load, plan, send, track, results.

    Each batch is acknowledged before it is recorded, every POST carries an Idempotency-Key,
    and a stopped run (Ctrl-C, a crash, a kill) continues with 'bulkbatch resume RUN_DIR'
    without sending anyone twice. results.parquet has one row per input row.

    Example:

        export COURIER_API_KEY=pk_prod_...

        bulkbatch send audience.parquet --event welcome --data '{"offer": "20%"}' --rate 20

        bulkbatch send data/recipients_sample.csv --event welcome --emulator
    """
    import bulkbatch
    from bulkbatch.pipeline import RunOptions

    _require_inputs(inputs)
    settings = _settings(kw, rate)
    if not emulator and not settings.api_key:
        raise click_error(
            "No Courier API key: set COURIER_API_KEY (or pass --api-key), or add --emulator "
            "to rehearse on the local emulator.",
            2,
        )
    options = _collect(kw)
    run_options = RunOptions(
        wait=not no_wait, timeout=timeout, messages=messages, include_profile=include_profile
    )
    with _renderer(ctx) as render:
        run = bulkbatch.send(
            list(inputs),
            settings=settings,
            run_dir=run_dir,
            emulator=emulator,
            progress=render,
            run_options=run_options,
            once_per=kw.get("once_per"),
            once_per_ledger=kw.get("once_per_ledger"),
            **options,
        )
    _finish(run, as_json, allow_failures)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Most seconds to wait for the job.",
)
@click.option(
    "--rate", type=click.FloatRange(min=0, min_open=True), help="Most requests per second."
)
@click.option(
    "--concurrency", type=click.IntRange(1, 64), default=None, help="Most requests in flight."
)
@click.option("--allow-failures", is_flag=True, help="Exit 0 even when some rows failed.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--base-url", envvar="COURIER_BASE_URL", help="Courier API root.")
@click.option("--api-key", envvar="COURIER_API_KEY", help="Courier API key (never printed).")
@click.pass_context
@handle_errors
def resume(
    ctx: click.Context,
    /,
    run_dir: Path,
    timeout: float | None,
    rate: float | None,
    allow_failures: bool,
    as_json: bool,
    **kw: Any,
) -> None:
    """Continue a stopped run from where it stopped; nobody is sent twice.

    Finished stages are skipped, acknowledged batches are not resent, the job is reused
    (never created again) and run at most once, and paging continues at the stored cursor.

    Example:

        bulkbatch resume runs/welcome-20261123-101500
    """
    import bulkbatch
    from bulkbatch.config import Settings
    from bulkbatch.pipeline import Run

    ctx.meta["bulkbatch.run_dir"] = str(run_dir)
    run = Run(run_dir)
    stored = run.state.options.get("settings", {})
    settings = Settings.from_env(
        base_url=kw.get("base_url"),
        api_key=kw.get("api_key"),
        rate=rate if rate is not None else stored.get("rate"),
        concurrency=kw.get("concurrency") or stored.get("concurrency"),
        batch_size=stored.get("batch_size"),
        poll_interval=stored.get("poll_interval"),
    )
    with _renderer(ctx) as render:
        run = bulkbatch.resume(run_dir, settings=settings, progress=render, timeout=timeout)
    _finish(run, as_json, allow_failures)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--refresh", is_flag=True, help="Ask Courier for each job's status first.")
@click.option("--watch", is_flag=True, help="Refresh every few seconds until the jobs finish.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
@handle_errors
def status(
    ctx: click.Context, run_dir: Path, refresh: bool, watch: bool, interval: float, as_json: bool
) -> None:
    """Show where a run stands: stages done, users acknowledged, each job's status.

    Reads state.json, so it works while another process is sending. --refresh and --watch
    ask Courier (COURIER_API_KEY) for the jobs' current counts.

    Example:

        bulkbatch status runs/welcome-20261123-101500 --watch
    """
    import bulkbatch

    while True:
        st = bulkbatch.status(run_dir, refresh=refresh or watch)
        if as_json:
            _emit_json(st.to_dict())
        else:
            click.echo(str(st))
        done = all(j["status"] in ("COMPLETED", "ERROR") for j in st.jobs) and bool(st.jobs)
        if not watch or done:
            return
        time.sleep(interval)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write (default RUN_DIR/results.parquet).",
)
@click.option(
    "--messages", is_flag=True, help="Refresh delivery status from the Messages API first."
)
@click.option("--include-profile", is_flag=True, default=None, help="Keep every input column.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_context
@handle_errors
def results(
    ctx: click.Context,
    run_dir: Path,
    out: Path | None,
    messages: bool,
    include_profile: bool | None,
    as_json: bool,
) -> None:
    """(Re)write results.parquet: one row per input row, with outcome and status.

    Delivery moves on after a job completes; run this later with --messages to pick up
    each message's delivery status and timestamps.

    Example:

        bulkbatch results runs/welcome-20261123-101500 --messages --out welcome.parquet
    """
    import bulkbatch
    from bulkbatch.pipeline import Run

    with _renderer(ctx) as render:
        info = bulkbatch.results(
            run_dir, out, messages=messages, include_profile=include_profile, progress=render
        )
    run = Run(run_dir)
    if as_json:
        _emit_json(run.summary())
    else:
        click.echo(_summary_text(run, run.summary()))
        if info.path != run.path / "results.parquet":
            click.echo(f"  written   {info.path}")


@cli.command()
@click.option(
    "--run-dir", type=click.Path(file_okay=False, path_type=Path), help="Where to put the demo run."
)
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

    with _renderer(ctx) as render:
        run = bulkbatch.demo(run_dir=run_dir, progress=render)
    click.echo(_summary_text(run, run.summary()))
    click.echo(f"\nRead it from Python:  bulkbatch.Run({str(run.path)!r}).results()")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write (default RUN_DIR/report.html).",
)
@click.pass_context
@handle_errors
def report(ctx: click.Context, run_dir: Path, out: Path | None) -> None:
    """Write a self-contained HTML report of a run: what to open the morning after.

    Counts and the accounting, rejects by reason, duplicates, bulk statuses, the delivery
    funnel and throughput over time. Personal data is masked.

    Example:

        bulkbatch report runs/welcome-20261123-101500 && open runs/welcome-20261123-101500/report.html
    """
    import bulkbatch

    click.echo(str(bulkbatch.report(run_dir, out)))


def _emulator_command() -> click.Command:
    # Imported on demand: starlette and uvicorn are only needed to serve.
    from bulkbatch.emulator.cli import emulator_command

    return emulator_command


cli.lazy_commands["emulator"] = _emulator_command


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="bulkbatch", auto_envvar_prefix="BULKBATCH")


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
