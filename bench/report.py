"""The report ``bench/run.py`` writes: the tables, the targets, where the time goes, the
host's speed and the run log's line, all from the summarised cells (:mod:`records`)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import SPEED_TASKS, git_head, machine
from cpu_report import cpu_lines
from goals import goal_rows
from records import (
    BB_STAGES,
    SCENARIO_TEXT,
    SCENARIOS,
    Record,
    fmt_s,
    human,
    summarize,
)

MIB_TARGET = 600  # peak RSS from 1M rows up (the first speed issue's bound)
MIB_TARGET_10M = 450  # #19 tightened it at 10M
SPEEDUP_TARGET = 10.0
FLOOR_TARGET = 3.0


def _program_row(program: str, rows: int, s: dict[str, Any]) -> str:
    if s["n"] == 0:
        return f"| {program} | failed ({s['failed']} runs) | — | — | — | — | — | 0 |"
    if s["extrapolated"]:
        wall = (
            f"**≈ {fmt_s(s['wall'])} (extrapolated** from a {s['prefix_rows']:,}-row prefix "
            f"measured at {fmt_s(s['measured_wall'])} s)"
        )
        rss = f"— (prefix: {s['rss']:,.0f})"
        runs = "1 (prefix)"
    else:
        wall = f"{fmt_s(s['wall'])} ({fmt_s(s['min'])}–{fmt_s(s['max'])})"
        rss = f"{s['rss']:,.0f}"
        runs = str(s["n"])
    ups = rows / s["wall"] if s["wall"] > 0 else float("nan")
    share = f"{100 * s['emu_share']:.0f} %"
    cpu = f"{s['cpu']:,.1f}"
    if s["extrapolated"]:
        share += " (prefix)"
        cpu += " (prefix)"
    return (
        f"| {program} | {wall} | {ups:,.0f} | {rss} | {cpu} | {share} | {s['load']:.1f} | {runs} |"
    )


def _ratio_lines(rows: int, scen: str, summ: dict[tuple[int, str, str], Any]) -> list[str]:
    bb = summ.get((rows, scen, "bulkbatch"))
    nv = summ.get((rows, scen, "naive"))
    fl = summ.get((rows, scen, "floor"))
    lines = []
    if bb and bb["n"]:
        if nv and nv["n"]:
            sp = nv["wall"] / bb["wall"]
            tag = " (naive extrapolated)" if nv["extrapolated"] else ""
            lines.append(
                f"- bulkbatch / naive wall: {bb['wall'] / nv['wall']:.3f} — bulkbatch is "
                f"**{sp:.1f}×** faster than the naive SDK script{tag} (target ≥ {SPEEDUP_TARGET:g}×)"
            )
        if fl and fl["n"] and nv and nv["n"]:
            lines.append(
                f"- floor vs naive: the no-logic floor is {nv['wall'] / fl['wall']:.1f}× faster "
                "than the naive script — the most any client could gain in this scenario"
            )
        if fl and fl["n"]:
            lines.append(
                f"- bulkbatch / floor wall: **{bb['wall'] / fl['wall']:.2f}×** "
                f"(target ≤ {FLOOR_TARGET:g}×)"
            )
    return lines


def _stage_table(rows: int, scen: str, summ: dict[tuple[int, str, str], Any]) -> list[str]:
    out = []
    bb = summ.get((rows, scen, "bulkbatch"))
    if bb and bb["n"]:
        st = bb["stages"]
        known = sum(st.get(k, 0.0) for k in BB_STAGES)
        cells = " | ".join(fmt_s(st.get(k, float("nan"))) for k in BB_STAGES)
        recs = bb["records"]
        client = recs[len(recs) // 2].report.get("client", {})
        out += [
            (
                "bulkbatch per stage (median s; *track* is what tracking took after the last "
                "ingest, since jobs are paged while later jobs ingest; *other* = wall − stages: "
                "interpreter start, imports, run setup):"
            ),
            "",
            "| load | plan | send | track | results | other | wall | requests | retries | 429s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            (
                f"| {cells} | {fmt_s(bb['wall'] - known)} | {fmt_s(bb['wall'])} "
                f"| {client.get('requests', '—')} | {client.get('retries', '—')} "
                f"| {client.get('throttled', '—')} |"
            ),
            "",
        ]
    for prog in ("naive", "floor"):
        s = summ.get((rows, scen, prog))
        if s and s["n"] and s["stages"]:
            pre = f" (on the {s['prefix_rows']:,}-row prefix)" if s["extrapolated"] else ""
            parts = ", ".join(f"{k} {v:.1f}" for k, v in s["stages"].items())
            out.append(f"- {prog} stages{pre}, s: {parts}")
    if out and out[-1]:
        out.append("")
    return out


def _floor_jobs_text(records: list[Record]) -> str:
    """'16 at 1M, 10 at 100k': the jobs each measured floor run used, from its own report."""
    seen: dict[int, set[int]] = defaultdict(set)
    for r in records:
        if r.program == "floor" and r.report.get("jobs"):
            seen[r.rows].add(int(r.report["jobs"]))
    parts = [
        f"{'/'.join(str(j) for j in sorted(jobs))} at {human(rows)}"
        for rows, jobs in sorted(seen.items())
    ]
    return ", ".join(parts) or "none measured"


def render(
    args: argparse.Namespace,
    records: list[Record],
    micro: dict[str, str],
    profiles: dict[str, str],
    started: float,
    speed: dict[str, dict[str, float]] | None = None,
) -> str:
    info = machine()
    summ = summarize(records)
    cmdline = args.cmdline
    lines = [
        "# bulkbatch end-to-end benchmark",
        "",
        (
            f"Measured by `{cmdline}`; written {time.strftime('%Y-%m-%d %H:%M %Z')} "
            f"(git {args.measured_at}; "
            + (
                f"re-rendered at git {git_head()} from `{Path(args.render).name}` by "
                "`bench/run.py --render`, notes added after the measurements). "
                if args.render
                else f"the runner took {(time.time() - started) / 60:.1f} min). "
            )
            + "This section is rewritten by every run (between the markers, "
            "`bench/results_file.py`); the notes outside it are written by hand and kept."
        ),
        "",
        (
            f"**Machine:** {info['cores']} cores ({info['cpu']}), {info['memory']} RAM, {info['os']}. "
            f"Python {info['python']}, duckdb {info['duckdb']}, httpx {info['httpx']}, "
            f"pyarrow {info['pyarrow']}, trycourier {info['trycourier']}."
        ),
        "",
        *([_speed_text(speed), ""] if speed else []),
        (
            "**Method.** Audiences: `bulkbatch.synth.generate(rows, duplicate_rate=0.02, seed=0)` "
            "(Parquet, ~0.05 % rows without any address). Every measurement is a fresh subprocess "
            "against a fresh emulator process (`python -m bulkbatch emulator --port 0 "
            "--progression immediate`, plus `--faults latency_ms=N` in the latencyN scenarios). "
            "Wall time is the subprocess's; peak RSS is the sum over its process tree, polled "
            "with psutil every 50 ms; *emulator CPU* is the emulator's user+system CPU seconds "
            "during the run (psutil `cpu_times` before/after) divided by the wall time "
            "(100 % = one of the cores). *program CPU s* is the program's user+system CPU "
            "(`wait4` rusage, children included), which contention on the host does not inflate "
            "the way it inflates wall time; *host load* is the highest 1-minute load average seen "
            "at the start/end of the runs (the machine has "
            f"{info['cores']} cores; other work on it slows wall times). "
            "Wall cells: median (min–max) of *runs*. "
            "users/s = input rows / median wall."
        ),
        "",
        "Commands measured (`AUDIENCE`, `TMP` vary; `COURIER_BASE_URL` = the emulator):",
        "",
        (
            "- bulkbatch: `bulkbatch --quiet send AUDIENCE --event welcome --run-dir TMP/run "
            f"--json --poll-interval 0.2{' ' + ' '.join(args.bb_extra) if args.bb_extra else ''}`"
        ),
        (
            "- naive: `python bench/naive_sdk.py AUDIENCE TMP/naive.parquet` — trycourier SDK as "
            "documented: pandas read, dicts built in Python, `add_users` 1000 at a time "
            "sequentially, `run_job`, poll `retrieve_job`, page `list_users`, pyarrow Parquet."
        ),
        (
            "- floor: `python bench/floor.py AUDIENCE --out TMP/f.parquet --jobs JOBS` — DuckDB "
            "`to_json` per user streamed in 1000-row Arrow batches, bodies joined and POSTed with "
            "httpx (concurrency 8, `content=`) round-robin over JOBS bulk jobs, run, poll, page "
            "every job's `/users` side by side with raw httpx + orjson, write 3 columns to "
            "Parquet. No validation, dedupe, ledger, retries or rate limiting. "
            + (
                "JOBS is the number of jobs bulkbatch's default split makes "
                f"({_floor_jobs_text(records)}), so the floor prices bulkbatch's logic on the "
                "same request pattern."
                if args.floor_jobs == "auto"
                else f"JOBS = {args.floor_jobs}."
            )
        ),
        "",
    ]
    if any(s["extrapolated"] for s in summ.values()):
        lines += [
            (
                "**Extrapolated cells** (marked ≈, bold): the naive script at that size was too slow "
                "to run in full, so it ran once on the first N rows of the same audience and its "
                "size-dependent stages (read, build, ingest, page, write) were scaled linearly by "
                "rows/N; fixed costs (import, create, run+poll) were kept. These are estimates, not "
                "measurements."
            ),
            "",
        ]
    lines += ["## Results", ""]
    for rows in args.sizes:
        for scen in args.scenarios:
            if not any((rows, scen, p) in summ for p in args.programs):
                continue
            lines += [
                f"### {rows:,} rows — {scen}: {SCENARIO_TEXT[scen]}",
                "",
                (
                    "| program | wall s, median (min–max) | users/s | peak RSS MiB "
                    "| program CPU s | emulator CPU | host load | runs |"
                ),
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            lines += [
                _program_row(p, rows, summ[(rows, scen, p)])
                for p in args.programs
                if (rows, scen, p) in summ
            ]
            lines.append("")
            lines += _ratio_lines(rows, scen, summ)
            lines.append("")
            lines += _stage_table(rows, scen, summ)
    lines += _targets(args, summ)
    lines += cpu_lines(args.sizes, args.scenarios, summ)
    lines += _where_time_goes(args, summ)
    if profiles:
        lines += ["## Profiles (py-spy)", ""]
        for title, text in profiles.items():
            lines += [f"### {title}", "", text, ""]
    if micro:
        lines += ["## Micro-benchmarks", ""]
        for title, text in micro.items():
            lines += [f"### {title}", "", text.strip(), ""]
    failures = [r for r in records if r.error]
    if failures:
        lines += ["## Failed runs", ""]
        lines += [
            f"- {r.program} {r.rows:,} {r.scenario} rep {r.rep}: exit {r.returncode}: {r.error}"
            for r in failures
        ]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _measured(
    args: argparse.Namespace, summ: dict[tuple[int, str, str], Any]
) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Each cell (size, scenario) of the run in which bulkbatch was measured, with its summary."""
    for rows in args.sizes:
        for scen in args.scenarios:
            bb = summ.get((rows, scen, "bulkbatch"))
            if bb and bb["n"]:
                yield rows, scen, bb


def _targets(args: argparse.Namespace, summ: dict[tuple[int, str, str], Any]) -> list[str]:
    lines = ["## Targets", "", "| target | scenario | value | met? |", "|---|---|---:|:---:|"]
    any_row = False
    for rows, scen, bb in _measured(args, summ):
        nv = summ.get((rows, scen, "naive"))
        fl = summ.get((rows, scen, "floor"))
        where = f"{human(rows)}, {scen}"
        if nv and nv["n"] and rows >= 1_000_000:
            sp = nv["wall"] / bb["wall"]
            est = " (naive ≈ extrapolated)" if nv["extrapolated"] else ""
            ok = "yes" if sp >= SPEEDUP_TARGET else "**no**"
            lines.append(f"| ≥ 10× faster than naive SDK | {where} | {sp:.1f}×{est} | {ok} |")
            any_row = True
        if fl and fl["n"] and rows >= 1_000_000:
            r = bb["wall"] / fl["wall"]
            ok = "yes" if r <= FLOOR_TARGET else "**no**"
            lines.append(f"| within 3× of the floor | {where} | {r:.2f}× | {ok} |")
            any_row = True
        if rows >= 1_000_000:
            target = MIB_TARGET_10M if rows >= 10_000_000 else MIB_TARGET
            ok = "yes" if bb["rss"] <= target else "**no**"
            lines.append(f"| peak RSS ≤ {target} MiB | {where} | {bb['rss']:,.0f} MiB | {ok} |")
            any_row = True
        lines.append(
            f"| emulator not the bottleneck | {where} | {100 * bb['emu_share']:.0f} % "
            "of a core during bulkbatch | "
            f"{'yes' if bb['emu_share'] < 0.8 else '**no**'} |"
        )
        any_row = True
    goals = goal_rows(summ, getattr(args, "demo", None))
    lines += goals
    if not any_row and not goals:
        lines.append("| (no size ≥ 1M measured) | | | |")
    rss = {
        rows: summ[(rows, "none", "bulkbatch")]["rss"]
        for rows in args.sizes
        if (rows, "none", "bulkbatch") in summ and summ[(rows, "none", "bulkbatch")]["n"]
    }
    if len(rss) > 1:
        parts = ", ".join(f"{human(k)}: {v:,.0f} MiB" for k, v in sorted(rss.items()))
        lines += ["", f"bulkbatch peak RSS by input size (flat is the aim): {parts}."]
    return [*lines, ""]


def _where_time_goes(args: argparse.Namespace, summ: dict[tuple[int, str, str], Any]) -> list[str]:
    lines = ["## Where bulkbatch's time goes", ""]
    lines += [
        (
            "| rows | scenario | load | plan | send | track | results | other | wall "
            "| track s per 100-user page |"
        ),
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    found = False
    for rows, scen, bb in _measured(args, summ):
        found = True
        st = bb["stages"]
        known = sum(st.get(k, 0.0) for k in BB_STAGES)
        pages = max(1, rows // 100)
        cells = " | ".join(
            f"{fmt_s(st.get(k, float('nan')))} ({100 * st.get(k, 0) / bb['wall']:.0f} %)"
            for k in BB_STAGES
        )
        lines.append(
            f"| {rows:,} | {scen} | {cells} | {fmt_s(bb['wall'] - known)} "
            f"| {fmt_s(bb['wall'])} | {1000 * st.get('track', 0) / pages:.1f} ms |"
        )
        fl = summ.get((rows, scen, "floor"))
        if fl and fl["n"] and "page" in fl["stages"]:
            lines.append(
                f"| | floor, same scenario | read+ingest {fmt_s(fl['stages'].get('ingest', 0))}"
                f" | | | page {fmt_s(fl['stages']['page'])} | "
                f"write {fmt_s(fl['stages'].get('write', 0))} | | {fmt_s(fl['wall'])} "
                f"| {1000 * fl['stages']['page'] / pages:.1f} ms |"
            )
    if not found:
        return []
    lines.append("")
    lines += _analysis(args, summ)
    lines += ["", *args.notes, ""] if args.notes else [""]
    return lines


def latency_bound(report: dict[str, Any], latency: float) -> tuple[float, int, int]:
    """``(seconds, writes, reads)``: the least time bulkbatch's network stages (send +
    track) could take if every request took exactly ``latency``, at the concurrency it used
    (``--concurrency`` writes, ``READ_FACTOR`` × that reads): the first create and its
    check, every batch through the write slots, then the last job's verify, run, first poll
    and its pages one after another (a job's pages are sequential) — or, if longer, every
    page through the read slots."""
    from bulkbatch.client.concurrency import READ_FACTOR
    from bulkbatch.client.paging import PAGE_SIZE
    from bulkbatch.config import DEFAULT_CONCURRENCY, MAX_BATCH_SIZE

    users = [int(j.get("users", 0)) for j in report.get("jobs", [])] or [0]
    writes = DEFAULT_CONCURRENCY
    reads = READ_FACTOR * writes
    batches = sum(-(-u // MAX_BATCH_SIZE) for u in users)
    pages = sum(-(-u // PAGE_SIZE) for u in users)
    chain = 2 + -(-batches // writes) + 3 + -(-max(users) // PAGE_SIZE)
    capacity = 2 + -(-pages // reads)
    return latency * max(chain, capacity), writes, reads


def _bound_text(rec: Record, latency: float) -> str:
    bound, writes, reads = latency_bound(rec.report, latency)
    st = rec.report.get("timings", {})
    network = float(st.get("track", 0.0))
    if not bound or not network:
        return ""
    return (
        f"Network stages (send + track, timed together) {network:,.1f} s against a latency "
        f"bound of {bound:,.1f} s at the concurrency used ({writes} writes, up to {reads} "
        f"reads): **{network / bound:.2f}×** the bound (target ≤ 1.25×); the whole run "
        f"{rec.wall_s:,.1f} s against {bound + rec.wall_s - network:,.1f} s with the other "
        f"stages as measured: {rec.wall_s / (bound + rec.wall_s - network):.2f}×."
    )


def _scenario_latency(scen: str) -> float:
    """Seconds the scenario adds to every request (``latency_ms=N``), 0 for none."""
    faults = SCENARIOS.get(scen) or ""
    for part in faults.split(","):
        key, _, value = part.partition("=")
        if key == "latency_ms":
            return float(value) / 1000
    return 0.0


def _analysis(args: argparse.Namespace, summ: dict[tuple[int, str, str], Any]) -> list[str]:
    """Plain-language reading of the stage timings (generated from the numbers above)."""
    out = []
    for rows, scen, bb in _measured(args, summ):
        st, wall = bb["stages"], bb["wall"]
        pages = max(1, rows // 100)
        fl = summ.get((rows, scen, "floor"))
        top = max(BB_STAGES, key=lambda k: st.get(k, 0.0))
        recs = bb["records"]
        jobs = len(recs[len(recs) // 2].report.get("jobs", [])) or 1
        fl_jobs = 1
        if fl and fl["n"]:
            fl_jobs = int(fl["records"][0].report.get("jobs", 1) or 1)
        text = (
            f"- **{human(rows)}, {scen}:** the biggest stage is *{top}* "
            f"({fmt_s(st.get(top, 0.0))} s, {100 * st.get(top, 0.0) / wall:.0f} % of wall). "
            f"track = the paging left after the last ingest, of ~{pages:,} 100-user pages "
            f"over {jobs} job{'s' if jobs > 1 else ''} paged side by side "
            f"(~{pages // jobs:,} sequential pages per job): "
            f"{1000 * st.get('track', 0.0) / pages:.2f} ms of wall per page"
        )
        if fl and fl["n"] and "page" in fl["stages"]:
            text += (
                f" vs {1000 * fl['stages']['page'] / pages:.2f} ms for the floor's bare "
                f"httpx+orjson paging of {fl_jobs} job{'s' if fl_jobs > 1 else ''}"
            )
        latency = _scenario_latency(scen)
        if latency:
            text += (
                f" (the {1000 * latency:g} ms latency alone is "
                f"{latency * pages / jobs:,.0f} s of sequential paging per job)"
            )
        send = st.get("send", 0.0)
        if send > 0:
            text += f"; send ingests {rows / send:,.0f} rows/s"
            if fl and fl["n"] and fl["stages"].get("ingest"):
                text += f" (floor: {rows / fl['stages']['ingest']:,.0f} rows/s, read included)"
        lp = st.get("load", 0.0) + st.get("plan", 0.0)
        text += f"; load + plan {fmt_s(lp)} s."
        if latency:
            text += " " + _bound_text(recs[len(recs) // 2], latency)
        out.append(text)
    if out:
        out += [
            "",
            (
                "Paging `GET /bulk/{job}/users` is sequential by construction (each page's cursor "
                "comes from the previous page), so with per-request latency L one job cannot be "
                "paged faster than L × users/100. The only lever is several jobs paged "
                "concurrently (`--max-job-size`)."
            ),
        ]
    return out


def _speed_text(speed: dict[str, dict[str, float]]) -> str:
    """The report's line on how fast the host was (:func:`common.host_speed`)."""
    when = [
        f"{label} {', '.join(f'{name} {ms:,.0f} ms' for name, ms in speed[key].items())}"
        for key, label in (("start", "before the runs:"), ("end", "after them:"))
        if key in speed
    ]
    tasks = "; ".join(f"*{name}*: {text}" for name, text in SPEED_TASKS.items())
    return (
        f"**Host speed** (fixed single-thread tasks, best of 3 but *fresh memory*, lower is "
        f"faster; {tasks}): "
        + "; ".join(when)
        + ". The host's speed moves from hour to hour; compare runs of different hours "
        "through these, not through wall or CPU seconds alone."
    )


def log_line(
    args: argparse.Namespace,
    records: list[Record],
    speed: dict[str, dict[str, float]] | None = None,
) -> str:
    """One line for the report's run log: when, which commit, the command, each cell, and
    the host's speed before the runs."""
    summ = summarize(records)
    cells = []
    for (rows, scen, program), s in sorted(summ.items()):
        if s["n"]:
            est = " ≈" if s["extrapolated"] else ""
            cells.append(
                f"{human(rows)} {scen} {program}{est} {fmt_s(s['wall'])} s "
                f"(CPU {s['cpu']:,.1f} s, load {s['load']:.1f})"
            )
        else:
            cells.append(f"{human(rows)} {scen} {program} failed")
    demo = getattr(args, "demo", None) or {}
    if demo.get("walls") or demo.get("error"):
        walls = demo.get("walls") or []
        cells.append(f"demo failed: {demo['error']}" if demo.get("error") else
                     f"demo {statistics.median(walls):.2f} s")  # fmt: skip
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    line = f"{when}, git {args.measured_at}, `{args.cmdline}`: " + ("; ".join(cells) or "none")
    start = (speed or {}).get("start")
    if start:
        line += " (host speed: " + ", ".join(f"{k} {v:,.0f} ms" for k, v in start.items()) + ")"
    return line
