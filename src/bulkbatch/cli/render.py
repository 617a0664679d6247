"""Rendering for people and machines: progress (a live display or log lines), the plan report,
the run summary. The library reports :class:`~bulkbatch.progress.ProgressEvent` values and
returns typed infos; everything shown comes from here.

The live display is laid out for 80 columns first: one line per stage with a label, a bar
(the only thing that shrinks), ``done/total`` (with thousands separators when they fit, else
``14.1k/1.98M``), the rate, the elapsed time and the ETA; a second, dim line carries what may be
dropped when space is short (jobs done, rate limit, retries, 429s). Jobs are summarised, never
listed. Retries and notices print above the live area, one each.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import click
from rich.console import Console, ConsoleOptions
from rich.text import Text

from bulkbatch.models import FINAL_JOB_STATUSES
from bulkbatch.progress import ProgressEvent

if TYPE_CHECKING:
    from rich.live import Live

    from bulkbatch.pipeline import Run

__all__ = ["Renderer", "emit_json", "plan_report", "renderer_for", "summary_text"]

Clock = Callable[[], float]

_LINE_EVERY = 5.0  # seconds between log lines of one stage (the last one always shows)
_RATE_WINDOW = 30.0  # seconds of samples the rate is measured over
_SAMPLE_EVERY = 0.25  # seconds between kept samples (events come per batch: thousands a second)
_BAR_MAX = 40
_BAR_MIN = 10  # below this, the numbers go compact before the bar shrinks further
_GAP = "  "
_DOT = " · "
_JOB_STAGES = ("wait", "page")
_UNSHOWN = ("start", "create", "run")  # no line of their own: jobs and the run id
_ALWAYS = ("retry", "notice")
_SHORT_UNIT = {"messages": "msgs"}


def _compact(n: float) -> str:
    """``950``, ``14.1k``, ``141k``, ``1.98M``: three significant digits at most."""
    if abs(n) < 1000:
        return f"{n:.0f}"
    for div, suffix in ((1e3, "k"), (1e6, "M"), (1e9, "B")):
        v = n / div
        shown = f"{v:.2f}" if v < 9.995 else f"{v:.1f}" if v < 99.95 else f"{v:.0f}"
        if float(shown) < 1000 or suffix == "B":
            return (shown.rstrip("0").rstrip(".") if "." in shown else shown) + suffix
    raise AssertionError  # pragma: no cover


def _duration(seconds: float) -> str:
    """``0:42``, ``12:03``, ``1:02:03``."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


@dataclass
class _Stage:
    """What one stage has reported so far, and the rate and ETA that follow."""

    name: str
    start: float
    unit: str = ""
    done: int = 0
    total: int | None = None
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    end: float | None = None
    first: tuple[float, int] | None = None
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    def update(self, e: ProgressEvent, now: float) -> None:
        self.unit = e.unit or self.unit
        self.total = e.total if e.total is not None else self.total
        self.done = e.done
        self.message = e.message or self.message
        self.extra = e.extra
        if self.first is None:
            self.first = (now, e.done)
        s = self.samples
        if len(s) > 1 and now - s[-2][0] < _SAMPLE_EVERY:
            s[-1] = (now, e.done)
        else:
            s.append((now, e.done))
        while len(s) > 2 and now - s[1][0] >= _RATE_WINDOW:
            s.popleft()
        self.end = now if self.finished else None

    def elapsed(self, now: float) -> float:
        return (self.end if self.end is not None else now) - self.start

    def rate(self, now: float) -> float | None:
        """Units a second: over the whole stage once finished, else over the last 30 s up to
        ``now`` (so a stall shows as a falling rate and a growing ETA)."""
        if self.end is not None and self.first is not None:
            (t0, d0), (t1, d1) = self.first, (self.end, self.done)
        elif len(self.samples) > 1:
            (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
            t1 = max(t1, now)
        else:
            return None
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def eta(self, now: float) -> float | None:
        rate = self.rate(now)
        if self.total is None or not rate or rate <= 0:
            return None
        return max(0, self.total - self.done) / rate


def _ended(e: ProgressEvent) -> bool:
    return e.total is not None and e.done >= e.total


@dataclass
class _Jobs:
    """Jobs summarised: how many exist, were created, run, finished, paged."""

    total: int | None = None
    created: int = 0
    ran: int = 0
    highest: int = -1
    status: dict[Any, str] = field(default_factory=dict)
    paged: set[Any] = field(default_factory=set)

    def note(self, e: ProgressEvent) -> None:
        x = e.extra
        if isinstance(x.get("jobs"), int):
            self.total = max(self.total or 0, x["jobs"])
        job = x.get("job_no")
        if isinstance(job, int):
            self.highest = max(self.highest, job)
            if e.stage in ("create", "ingest"):  # jobs are created in order
                self.created = max(self.created, job + 1)
        if e.stage == "create" and not isinstance(job, int):
            self.created += 1
        elif e.stage == "run":
            self.ran += 1
        elif e.stage == "wait" and job is not None:
            self.status[job] = str(x.get("status"))
        elif e.stage == "page" and job is not None and (x.get("paged") is True or _ended(e)):
            self.paged.add(job)

    @property
    def known(self) -> int:
        return max(self.total or 0, self.highest + 1, self.created, len(self.status))

    @property
    def final(self) -> int:
        return sum(1 for s in self.status.values() if s in FINAL_JOB_STATUSES)

    def of(self, n: int, what: str) -> str:
        """``jobs 12/64 done`` (or ``jobs 1 done of 4 seen`` while the count is unknown)."""
        if self.total:
            return f"jobs {n}/{self.total} {what}"
        return f"jobs {n} {what}" + (f" of {self.known} seen" if n < self.known else "")


def _details(s: _Stage, jobs: _Jobs) -> list[str]:
    """The dim second line, most useful first (what does not fit is dropped from the end)."""
    x = s.extra
    out: list[str] = []
    if s.name == "ingest":
        if jobs.created and jobs.known > 1:  # none on a resumed run: they were made before
            out.append(jobs.of(jobs.created, "created"))
        if jobs.ran and jobs.known > 1:
            out.append(f"{jobs.ran} run")
        if x.get("rate"):
            out.append(f"limit {float(x['rate']):,.{0 if float(x['rate']) >= 10 else 1}f} req/s")
        if x.get("retries"):
            out.append(f"retries {int(x['retries']):,}")
        if x.get("throttled"):
            out.append(f"429s {int(x['throttled']):,}")
    elif s.name == "wait":
        out.append(jobs.of(jobs.final, "done") if jobs.known > 1 else f"job {x.get('status')}")
        out += [f"{k} {int(x.get(k, 0)):,}" for k in ("received", "enqueued", "failures")]
    elif s.name == "page":
        if jobs.known > 1:
            out.append(jobs.of(len(jobs.paged), "paged"))
        pages = int(x.get("pages", 0))
        out.append(f"{pages:,} page{'' if pages == 1 else 's'}")
    return out


def _cells(s: _Stage, level: int, now: float) -> tuple[str, str, str, str]:
    """``done/total``, rate, elapsed, ETA at a level of compactness (0 full … 2 tightest)."""
    fmt: Callable[[int], str] = "{:,}".format if level == 0 else _compact
    counts = fmt(s.done) + (f"/{fmt(s.total)}" if s.total is not None else "")
    unit = _SHORT_UNIT.get(s.unit, s.unit)
    rate = s.rate(now)
    shown = "-" if rate is None else f"{rate:,.0f}" if level == 0 else _compact(rate)
    if level < 2 and s.unit:
        counts, shown = f"{counts} {s.unit}", f"{shown} {unit}/s"
    else:
        shown += "/s"
    eta = s.eta(now)
    when = "done" if s.finished else "ETA -:--" if eta is None else f"ETA {_duration(eta)}"
    return counts, shown, _duration(s.elapsed(now)), when


def _bar(width: int, frac: float, finished: bool) -> Text:
    halves = int(width * 2 * min(max(frac, 0.0), 1.0))
    full, half = divmod(halves, 2)
    style = "bar.finished" if finished else "bar.complete"
    text = Text("━" * full + "╸" * half, style=style)
    text.append("─" * (width - full - half), style="bar.back")
    return text


@dataclass
class _Board:
    """Everything reported so far; the live frame and the log lines are drawn from it."""

    clock: Clock
    lock: threading.Lock = field(default_factory=threading.Lock)
    stages: dict[str, _Stage] = field(default_factory=dict)
    jobs: _Jobs = field(default_factory=_Jobs)
    per_job: dict[str, dict[Any, ProgressEvent]] = field(default_factory=dict)
    users: int | None = None
    ingest_from: float | None = None

    def note(self, e: ProgressEvent) -> tuple[ProgressEvent, _Stage]:
        """Record ``e``; return it summed over jobs (``wait``, ``page``) and its stage."""
        now = self.clock()
        with self.lock:
            self.jobs.note(e)
            if e.stage == "create" and self.ingest_from is None:
                self.ingest_from = now  # ingesting starts with creating the first job
            if isinstance(e.extra.get("users"), int):
                self.users = e.extra["users"]
            elif e.stage == "ingest" and e.total is not None:
                self.users = e.total
            e = self._aggregate(e)
            stage = self.stages.get(e.stage)
            if stage is None:
                start = self.ingest_from if e.stage == "ingest" else None
                stage = self.stages[e.stage] = _Stage(e.stage, now if start is None else start)
            stage.update(e, now)
            return e, stage

    def _aggregate(self, e: ProgressEvent) -> ProgressEvent:
        """Sum per-job reports (several jobs wait and page at once) into one line."""
        job = e.extra.get("job_no")
        if e.stage not in _JOB_STAGES or job is None:
            return e
        per_job = self.per_job.setdefault(e.stage, {})
        per_job[job] = e
        done = sum(x.done for x in per_job.values())
        total = max(self.users or 0, sum(x.total or 0 for x in per_job.values()))
        extra = dict(e.extra)
        if self.jobs.total:
            extra["jobs"] = self.jobs.total
        if e.stage == "page":
            extra["pages"] = sum(int(x.extra.get("pages", 0)) for x in per_job.values())
            extra["jobs_paged"] = len(self.jobs.paged)
        else:
            if len(per_job) > 1:
                extra["status"] = f"{self.jobs.final}/{self.jobs.known} jobs done"
            extra["jobs_done"] = self.jobs.final
            for k in ("received", "enqueued", "failures"):
                extra[k] = sum(int(x.extra.get(k, 0)) for x in per_job.values())
        return ProgressEvent(e.stage, done, total or None, e.unit, e.message, extra)

    def details(self, stage: _Stage) -> list[str]:
        with self.lock:
            return _details(stage, self.jobs)

    def frame(self, width: int) -> list[Text]:
        """The live area at ``width`` columns: numbers never cut, the bar takes what is left."""
        now = self.clock()
        with self.lock:
            stages = [s for s in self.stages.values() if s.name not in _UNSHOWN]
            notes = [_details(s, self.jobs) for s in stages]
            levels = [[_cells(s, lvl, now) for s in stages] for lvl in range(3)]
        if not stages:
            return []
        label_w = max(len(s.name) for s in stages)
        for cells in levels:
            widths, bar_w = _fit(cells, stages, label_w, width)
            if bar_w >= _BAR_MIN:
                break
        bar_w = min(bar_w, _BAR_MAX) if bar_w >= 3 else 0
        lines: list[Text] = []
        for s, row, note in zip(stages, cells, notes, strict=True):
            if _has_bar(s):
                lines.append(_bar_line(s, row, widths, label_w, bar_w))
            else:
                lines.append(_status_line(s, row[2], label_w))
            if note:
                lines.append(_note_line(note, label_w + 1, width))
        return lines


def _has_bar(s: _Stage) -> bool:
    return s.total is not None or s.done > 0


def _fit(
    cells: list[tuple[str, str, str, str]], stages: list[_Stage], label_w: int, width: int
) -> tuple[list[int], int]:
    """Column widths over the bar lines, and the width left for the bar."""
    rows = [c for c, s in zip(cells, stages, strict=True) if _has_bar(s)]
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(4)]
    fixed = label_w + sum(widths) + 4 * len(_GAP) + 1  # +1: the space before the bar
    return widths, width - fixed


def _bar_line(
    s: _Stage, row: tuple[str, str, str, str], widths: list[int], label_w: int, bar_w: int
) -> Text:
    counts, rate, elapsed, when = row
    line = Text(s.name.ljust(label_w), style="bold")
    if bar_w:
        frac = s.done / s.total if s.total else 0.0
        line.append(" ")
        line.append_text(_bar(bar_w, frac, s.finished))
    line.append(_GAP + counts.rjust(widths[0]))
    line.append(_GAP + rate.rjust(widths[1]), style="cyan")
    line.append(_GAP + elapsed.rjust(widths[2]), style="yellow")
    line.append(_GAP + when.ljust(widths[3]), style="green" if s.finished else "")
    line.rstrip()
    return line


def _status_line(s: _Stage, elapsed: str, label_w: int) -> Text:
    line = Text(s.name.ljust(label_w), style="bold")
    if s.message:
        line.append(_GAP + s.message, style="dim")
    line.append(_GAP + elapsed, style="yellow")
    return line


def _note_line(items: list[str], indent: int, width: int) -> Text:
    """``items`` joined, as many as fit in ``width``; the rest dropped whole."""
    text = " " * indent + items[0]
    for item in items[1:]:
        if len(text) + len(_DOT) + len(item) > width:
            break
        text += _DOT + item
    return Text(text, style="dim")


class _Frame:
    """The live area, redrawn at the console's width on every refresh."""

    def __init__(self, board: _Board) -> None:
        self._board = board

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Text]:
        yield from self._board.frame(options.max_width)


class Renderer:
    """Render :class:`ProgressEvent` values: a rich live display on a terminal, else lines.

    :param log_format: ``text`` (a live display on a terminal, else a line per stage every
        5 s) or ``json`` (the same lines as JSON objects)
    :param quiet: show nothing (the run directory is still remembered for messages)
    :param console: where to draw (default: stderr); tests pass a recording console
    :param clock: monotonic seconds, for elapsed, rate, ETA and the 5 s log cadence
    :param live: force the live display on or off (default: when the console is a terminal)
    :param auto_refresh: redraw the live display 4 times a second from a thread; when false
        it is redrawn on every event instead (deterministic, for tests)
    """

    def __init__(
        self,
        log_format: str = "text",
        quiet: bool = False,
        *,
        console: Console | None = None,
        clock: Clock = time.monotonic,
        live: bool | None = None,
        auto_refresh: bool = True,
        plan_notices: bool = True,
    ) -> None:
        self.log_format = log_format
        self.quiet = quiet
        self.plan_notices = plan_notices
        self.console = console if console is not None else Console(stderr=True)
        if live is None:
            live = self.console.is_terminal if console is not None else sys.stderr.isatty()
        self.live = live and log_format == "text" and not quiet
        self._clock = clock
        self._board = _Board(clock)
        self._auto_refresh = auto_refresh
        self._display: Live | None = None
        self._last_line: dict[str, float] = {}

    def __enter__(self) -> Self:
        if self.live:
            from rich.live import Live

            self._display = Live(
                _Frame(self._board),
                console=self.console,
                auto_refresh=self._auto_refresh,
                refresh_per_second=4,
                redirect_stdout=False,  # stdout carries --json output; the library never prints
            )
            self._display.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._display is not None:
            self._display.stop()
            self._display = None

    def refresh(self) -> None:
        """Redraw the live display now (it also redraws itself; nothing happens without one)."""
        if self._display is not None:
            self._display.refresh()

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage == "start":
            ctx = click.get_current_context(silent=True)
            if ctx is not None:
                ctx.meta["bulkbatch.run_dir"] = event.extra.get("run_dir")
        if self.quiet or (not self.plan_notices and "plan" in event.extra):
            return
        if event.stage in _ALWAYS:
            self._notice(event)
            return
        e, stage = self._board.note(event)
        if self._display is None:
            self._line(e, stage)
        elif not self._auto_refresh:
            self._display.refresh()

    def _echo(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)

    def _notice(self, e: ProgressEvent) -> None:
        """Retries, throttles and notices: every one shown (a silent wait looks like a hang)."""
        if self.log_format == "json":
            self._json_line(e, None)
        elif self._display is not None:
            self.console.print(Text.assemble((e.stage, "yellow"), " ", e.message))
        else:
            self._echo(f"[{e.stage}] {e.message}")

    def _line(self, e: ProgressEvent, stage: _Stage) -> None:
        """A line per stage at most every 5 s; a stage's first and last always show."""
        now = self._clock()
        if not stage.finished and now - self._last_line.get(e.stage, -float("inf")) < _LINE_EVERY:
            return
        self._last_line[e.stage] = now
        if self.log_format == "json":
            self._json_line(e, stage)
            return
        parts = [e.message]
        if _has_bar(stage):
            counts, rate, elapsed, when = _cells(stage, 0, now)
            parts = [counts, rate, f"{elapsed} elapsed", when, *self._board.details(stage)]
        self._echo(f"[{e.stage}] {_GAP.join(parts)}".rstrip())

    def _json_line(self, e: ProgressEvent, stage: _Stage | None) -> None:
        import orjson

        payload: dict[str, Any] = {
            "ts": time.time(),
            "stage": e.stage,
            "done": e.done,
            "total": e.total,
            "unit": e.unit,
            "message": e.message,
            **{k: v for k, v in e.extra.items() if isinstance(v, str | int | float | bool)},
        }
        if stage is not None and _has_bar(stage):
            now = self._clock()
            rate, eta = stage.rate(now), stage.eta(now)
            payload.setdefault("elapsed", round(stage.elapsed(now), 3))
            if rate is not None:
                payload["per_second"] = round(rate, 1)
            if eta is not None and not stage.finished:
                payload["eta_seconds"] = round(eta, 1)
        self._echo(orjson.dumps(payload).decode())


def renderer_for(ctx: click.Context, *, plan_notices: bool = True) -> Renderer:
    """The renderer the root options (or the same options after the command) ask for;
    without ``plan_notices`` when the command prints the plan's warnings and notes itself."""
    obj = ctx.find_root().obj or {}
    return Renderer(
        obj.get("log_format") or "text", bool(obj.get("quiet")), plan_notices=plan_notices
    )


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    import orjson

    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())


def plan_report(run: Run, rate: float | None) -> str:
    """The plan as ``bulkbatch plan`` prints it."""
    import orjson

    info = run.plan_info
    state = run.state
    lines = [
        f"Plan {run.run_id} ({run.path})",
        f"  rows read     {info.rows_read:>12,}",
        f"  to send       {int(state.plan.get('to_send', info.to_send)):>12,}  in "
        f"{int(state.plan.get('batches', info.batches)):,} batches of ≤{info.batch_size}"
        + (f" across {len(state.jobs)} jobs" if len(state.jobs) > 1 else ""),
        f"  duplicates    {info.duplicates:>12,}",
        f"  rejected      {info.rejected:>12,}",
    ]
    skipped = int(state.plan.get("skipped", 0))
    if skipped:
        lines.append(f"  skipped       {skipped:>12,}  (sent or claimed under --once-per)")
    for code, n in sorted(info.rejected_by_reason.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {code:<20} {n:>8,}")
    if info.duplicate_groups:
        lines.append("  duplicate groups (first few):")
        for g in info.duplicate_groups[:5]:
            lines.append(f"    {g['recipient']}: rows {g['rows']} (kept {g['kept']})")
    lines += [f"  warning: {w}" for w in info.warnings]
    lines += [f"  note: {n}" for n in info.notes]
    if info.sample_users:
        lines.append("  sample user:")
        lines.append("    " + orjson.dumps(info.sample_users[0]).decode())
    est = info.estimated_seconds(rate)
    if est is not None:
        shown = f"{est:,.0f}s" if est >= 10 else f"{est:.1f}s"
        lines.append(f"  estimated send time at {rate:g} req/s: {shown}")
    lines.append(f"  campaign {run.campaign}")
    lines.append(f"  files: {run.path / 'plan.parquet'}, {run.path / 'rejects.parquet'}")
    return "\n".join(lines)


def _job_lines(jobs: list[dict[str, Any]]) -> list[str]:
    """Jobs summarised by status (a 1M-person run has 64 of them)."""
    by_status: dict[str, int] = {}
    for j in jobs:
        key = str(j.get("status") or "not created")
        by_status[key] = by_status.get(key, 0) + 1
    if len(jobs) <= 3:
        return [f"  job {j['job_id']}: {j['status']}" for j in jobs]
    parts = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
    return [f"  jobs      {len(jobs)}: {parts}"]


def summary_text(run: Run, summary: dict[str, Any] | None) -> str:
    """The end-of-run summary as ``send``/``resume``/``results`` print it."""
    if summary is None:
        return str(run.status())
    c = summary["counts"]

    def row(label: str, n: int, note: str = "") -> str:
        return f"  {label:<24}{n:>10,}{note}"

    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["rejected_by_reason"].items()))
    verdict = "accounted for" if summary["accounting_ok"] else "ACCOUNTING FAILED"
    lines = [f"Run {summary['run_id']}: {verdict} in {summary['elapsed_seconds']:.1f}s"]
    if summary.get("already_sent"):
        lines.append("  campaign already sent: nobody was sent again (results rewritten)")
    lines += [
        row("rows in", c["input_rows"]),
        row("ingested", c["ingested"]),
        row("duplicates", c["duplicates"]),
        row("rejected", c["rejected"], f"   ({reasons})" if reasons else ""),
    ]
    if c.get("filtered"):
        lines.append(row("filtered", c["filtered"], "   (left out by --where/--sql)"))
    if c.get("skipped"):
        lines.append(row("skipped", c["skipped"], "   (sent earlier under --once-per)"))
    for status, n in sorted(summary["statuses"].items()):
        lines.append(row(f"status {status}", n))
    for status, n in sorted(summary.get("delivery", {}).items()):
        lines.append(row(f"delivery {status}", n))
    lines += _job_lines(summary["jobs"])
    lines += [
        f"  results   {summary['results']}",
        f"  rejects   {Path(summary['run_dir']) / 'rejects.parquet'}",
        f"  summary   {Path(summary['run_dir']) / 'summary.json'}",
    ]
    return "\n".join(lines)
