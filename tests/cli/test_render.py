"""The live display reads well at 80 columns (#18): no screenshots, a recording console.

A scripted run (load, plan, 20 jobs created one by one, ingest under a 50 req/s limit with
retries, per-job waits and pages) drives :class:`Renderer` with an injected clock into
``Console(width=..., record=True, force_terminal=True)``; the exported text must show the
counts, the rate, the elapsed time and the ETA of every stage, whole (no ``…``), in the width.
"""

from __future__ import annotations

import io
import re

import orjson
import pytest
from rich.console import Console

from bulkbatch.cli.render import Renderer, _compact
from bulkbatch.progress import ProgressEvent as E

USERS = 1_980_000
JOBS = 20
RETRY = "POST /bulk/1-65f1/run: attempt 1 of 5 failed (HTTP 429); retrying in 1.0 s"


class Clock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _console(width: int, *, terminal: bool = True) -> Console:
    return Console(width=width, height=40, record=True, force_terminal=terminal, file=io.StringIO())


def _planned(render: Renderer, clock: Clock) -> None:
    render(E("start", message="run r1", extra={"run_dir": "/tmp/r1", "run_id": "r1"}))
    render(E("load", message="loading inputs"))
    clock.now += 2
    render(E("load", USERS, USERS, "rows"))
    render(E("plan", message="planning"))
    clock.now += 3
    render(E("plan", USERS, USERS, "rows", message=f"{USERS:,} to send"))


def _ingest(render: Renderer, clock: Clock, users: int, *, step: float = 0.5) -> None:
    """Ingest ``users`` at ~14.1k users/s, creating a job every 99,000 users."""
    done, per_step = 0, 7_053
    while done < users:
        if done % 99_000 < per_step:
            render(E("create", message=f"job {done // 99_000}"))
        done = min(users, done + per_step)
        clock.now += step
        extra = {"elapsed": 1.0, "rate": 50.0, "retries": 3, "throttled": 2}
        render(E("ingest", done, USERS, "users", extra=extra))


def _frame(console: Console, render: Renderer) -> list[str]:
    """One whole frame of the live area, as plain lines."""
    console.export_text(clear=True)
    render.refresh()
    return [ln.rstrip() for ln in console.export_text(clear=True).splitlines() if ln.strip()]


def _line(frame: list[str], label: str) -> str:
    return next(ln for ln in frame if ln.startswith(label + " "))


def _assert_whole(frame: list[str], width: int) -> None:
    assert frame
    assert all(len(ln) <= width for ln in frame), "\n".join(frame)
    assert not any("…" in ln or "..." in ln for ln in frame), "\n".join(frame)


@pytest.mark.parametrize("width", [80, 120])
def test_ingest_line_shows_counts_rate_elapsed_and_eta(width: int) -> None:
    clock, console = Clock(), _console(width)
    with Renderer(console=console, clock=clock, auto_refresh=False) as render:
        assert render.live
        _planned(render, clock)
        _ingest(render, clock, 980_000)
        frame = _frame(console, render)
    _assert_whole(frame, width)
    ingest = _line(frame, "ingest")
    assert re.search(r"(980,000/1,980,000|980k/1\.98M) users", ingest), ingest
    assert re.search(r"(14,\d{3}|14\.\dk) users/s", ingest), ingest
    assert "1:10" in ingest  # elapsed: 139 half-second steps since the first job was created
    assert re.search(r"ETA 1:1\d", ingest), ingest  # ~1M users left at ~14.1k/s
    assert "━" in ingest  # the bar is still there
    detail = frame[frame.index(ingest) + 1]
    assert "limit 50 req/s" in detail and "retries 3" in detail and "429s 2" in detail
    assert "jobs 10 created" in detail
    for stage in ("load", "plan"):
        assert f"{USERS:,}/{USERS:,} rows" in _line(frame, stage) or "1.98M/1.98M" in _line(
            frame, stage
        )
        assert _line(frame, stage).endswith("done")


def test_120_columns_keeps_thousands_separators_and_caps_the_bar() -> None:
    clock, console = Clock(), _console(120)
    with Renderer(console=console, clock=clock, auto_refresh=False) as render:
        _planned(render, clock)
        _ingest(render, clock, 980_000)
        frame = _frame(console, render)
    ingest = _line(frame, "ingest")
    assert "980,000/1,980,000 users" in ingest and re.search(r"14,\d{3} users/s", ingest)
    assert ingest.count("━") + ingest.count("─") + ingest.count("╸") <= 40


def test_long_runs_go_compact_at_80_columns_not_cut() -> None:
    """Hours of elapsed time and the wide ``messages`` label: numbers go compact, stay whole."""
    clock, console = Clock(), _console(80)
    with Renderer(console=console, clock=clock, auto_refresh=False) as render:
        _planned(render, clock)
        _ingest(render, clock, 1_500_000, step=30.0)  # ~1.7 h at ~235 users/s
        render(E("messages", 1_234, 1_980_000, "messages"))
        clock.now += 10
        render(E("messages", 5_000, 1_980_000, "messages"))
        frame = _frame(console, render)
    _assert_whole(frame, 80)
    ingest = _line(frame, "ingest")
    assert "1.5M/1.98M" in ingest or "1,500,000/1,980,000" in ingest
    assert re.search(r"\d:\d\d:\d\d", ingest)  # h:mm:ss elapsed
    assert "ETA " in ingest and "/s" in ingest
    messages = _line(frame, "messages")
    assert "5k/1.98M" in messages or "5,000/1,980,000" in messages
    assert "ETA " in messages and "/s" in messages


@pytest.mark.parametrize("width", [50, 60])
def test_narrow_terminals_drop_the_bar_and_details_never_the_numbers(width: int) -> None:
    clock, console = Clock(), _console(width)
    with Renderer(console=console, clock=clock, auto_refresh=False) as render:
        _planned(render, clock)
        _ingest(render, clock, 980_000)
        frame = _frame(console, render)
    _assert_whole(frame, width)
    ingest = _line(frame, "ingest")
    assert "980k/1.98M" in ingest and "/s" in ingest and "1:10" in ingest and "ETA" in ingest


def test_jobs_are_summarised_never_listed() -> None:
    clock, console = Clock(), _console(80)
    with Renderer(console=console, clock=clock, auto_refresh=False) as render:
        render(E("plan", USERS, USERS, "rows", extra={"jobs": 64}))
        render(E("ingest", USERS, USERS, "users", extra={"jobs": 64}))
        for job in range(64):
            status = "COMPLETED" if job < 12 else "PROCESSING"
            extra = {"job_no": job, "status": status, "received": 30_000, "enqueued": 100}
            clock.now += 0.1
            render(E("wait", 10_000 if job < 12 else 100, 30_000, "users", extra=extra))
        for job in range(3):
            clock.now += 0.1
            render(E("page", 30_000, 30_000, "users", extra={"job_no": job, "pages": 30}))
        frame = _frame(console, render)
    _assert_whole(frame, 80)
    assert len(frame) <= 8, "\n".join(frame)  # plan, ingest(+jobs), wait(+jobs), page(+jobs)
    assert not any(re.search(r"\bjob \d", ln) for ln in frame)
    assert any("jobs 12/64 done" in ln for ln in frame)
    assert any("jobs 3/64 paged" in ln and "90 pages" in ln for ln in frame)
    wait = _line(frame, "wait")
    assert "/1,980,000 users" in wait  # the run's users, not the jobs seen so far


def test_retries_and_notices_print_above_the_live_area_one_line_each() -> None:
    clock, console = Clock(), _console(80)
    with Renderer(console=console, clock=clock, auto_refresh=False) as render:
        _planned(render, clock)
        _ingest(render, clock, 100_000)
        render(E("retry", message=RETRY))
        render(E("notice", message="campaign [bold]already[/bold] sent"))
    text = console.export_text()
    assert text.count("retry POST /bulk/1-65f1/run: attempt 1 of 5") == 1
    assert "notice campaign [bold]already[/bold] sent" in text  # shown as is, not as markup
    final = [ln for ln in text.splitlines() if ln.startswith("ingest ")][-1]
    assert "100,000/1,980,000 users" in final


def test_a_stall_lowers_the_rate_and_raises_the_eta() -> None:
    clock, console = Clock(), _console(80)
    with Renderer(console=console, clock=clock, auto_refresh=False) as render:
        _ingest(render, clock, 500_000)
        before = _line(_frame(console, render), "ingest")
        clock.now += 30  # a long 429 back-off: no acks
        after = _line(_frame(console, render), "ingest")

    def eta(line: str) -> int:
        m, s = re.search(r"ETA (\d+):(\d\d)", line).groups()  # type: ignore[union-attr]
        return int(m) * 60 + int(s)

    assert eta(after) > eta(before) * 1.5, (before, after)


def test_log_lines_every_5_seconds_per_stage_with_rate_elapsed_and_eta() -> None:
    clock, console = Clock(), _console(80, terminal=False)
    with Renderer(console=console, clock=clock) as render:
        assert not render.live
        _planned(render, clock)
        _ingest(render, clock, 200_000)  # ~14 s of acks
        render(E("retry", message=RETRY))
        _ingest_rest = E("ingest", USERS, USERS, "users", extra={"rate": 50.0})
        clock.now += 1
        render(_ingest_rest)
    lines = console.export_text().splitlines()
    ingest = [ln for ln in lines if ln.startswith("[ingest]")]
    assert len(ingest) == 4, ingest  # at 0.5 s, 5.5 s, 10.5 s, and the last one
    assert re.search(r"\d+,\d{3}/1,980,000 users  14,1\d\d users/s  0:\d\d elapsed  ETA", ingest[1])
    assert ingest[-1].startswith(f"[ingest] {USERS:,}/{USERS:,} users") and "done" in ingest[-1]
    assert f"[retry] {RETRY}" in lines
    assert "[load] loading inputs" in lines and "[start] run r1" in lines
    assert not any("\x1b" in ln for ln in lines)


def test_json_lines_are_throttled_and_carry_rate_and_eta() -> None:
    clock, console = Clock(), _console(80, terminal=False)
    with Renderer("json", console=console, clock=clock) as render:
        assert not render.live
        _planned(render, clock)
        _ingest(render, clock, 200_000)
        render(E("retry", message=RETRY))
    events = [orjson.loads(ln) for ln in console.export_text().splitlines()]
    assert all(isinstance(e["ts"], float) for e in events)
    ingest = [e for e in events if e["stage"] == "ingest"]
    assert len(ingest) == 3
    assert ingest[1]["total"] == USERS and 14_000 < ingest[1]["per_second"] < 14_200
    assert ingest[1]["eta_seconds"] > 100 and ingest[1]["rate"] == 50.0
    assert [e["message"] for e in events if e["stage"] == "retry"] == [RETRY]
    assert {"start", "load", "plan", "create", "ingest", "retry"} <= {e["stage"] for e in events}


def test_quiet_shows_nothing() -> None:
    clock, console = Clock(), _console(80)
    with Renderer(quiet=True, console=console, clock=clock) as render:
        assert not render.live
        _planned(render, clock)
        render(E("retry", message=RETRY))
    assert console.export_text() == ""


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (0, "0"),
        (999, "999"),
        (1_000, "1k"),
        (14_107, "14.1k"),
        (141_070, "141k"),
        (999_999, "1M"),
        (1_980_000, "1.98M"),
        (19_800_000, "19.8M"),
        (2_500_000_000, "2.5B"),
    ],
)
def test_compact_numbers(n: int, shown: str) -> None:
    assert _compact(n) == shown
