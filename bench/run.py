"""End-to-end benchmark: bulkbatch vs the naive SDK script vs the floor, against the emulator.

    .venv/bin/python bench/run.py               # full: 1M (3 reps) and 10M (1 rep), both
                                                # scenarios, + micro-benchmarks and 4 shards
                                                # vs 1 process at 1M (~1.5 h)
    .venv/bin/python bench/run.py --quick       # 100k and 1M, 1 rep, latency at 100k, the
                                                # extra cells and 4 shards at 200k
    .venv/bin/python bench/run.py --smoke --out /tmp/R.md   # 5k rows, seconds (for the tests)
    .venv/bin/python bench/run.py --sizes 1M --scenarios none,latency50 --reps 3

Programs (each its own subprocess; wall time and peak RSS of its whole process tree, psutil
every 50 ms):

* ``bulkbatch`` — ``bulkbatch --quiet send AUDIENCE --event welcome --run-dir TMP
  --json --poll-interval 0.2`` (its ``--json`` report gives per-stage times);
* ``naive`` — ``bench/naive_sdk.py``: the official ``trycourier`` SDK used as the docs show;
* ``floor`` — ``bench/floor.py``: the same bytes through loopback HTTP with no tool logic.

Every measurement gets a fresh emulator process (``--progression immediate``; the
``latency50`` scenario adds ``--faults latency_ms=50``), whose CPU seconds are read with psutil
before and after. The naive script above ``--naive-max-rows`` rows (default 1M; 100k with
latency) is run once on a prefix of the audience and extrapolated per stage; the table says so.
The report goes to ``bench/RESULTS.md`` (``--out``) between its generated-section markers,
and the run log there gets one line per run; the hand-written sections around them are kept
(``bench/results_file.py``). Raw measurements go to ``bench/out/`` as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    HERE,
    ROOT,
    SPEED_TASKS,
    Emulator,
    audience,
    git_head,
    host_speed,
    log,
    machine,
    measure,
    prefix_audience,
    temp_dir,
)
from cpu_report import cpu_lines
from goals import goal_rows
from results_file import write_report

PROGRAMS = ("bulkbatch", "naive", "floor")
SCENARIOS: dict[str, str | None] = {
    "none": None,
    "latency20": "latency_ms=20",
    "latency50": "latency_ms=50",
    "latency150": "latency_ms=150",
}
SCENARIO_TEXT = {
    "none": "emulator answers at once",
    "latency20": "emulator adds 20 ms to every request (a nearby region)",
    "latency50": "emulator adds 50 ms to every request (what a user over the internet sees)",
    "latency150": "emulator adds 150 ms to every request (another continent)",
}
# Stages whose cost grows with the number of users (the rest is fixed per run).
NAIVE_VARIABLE = ("read", "build", "ingest", "page", "write")
BB_STAGES = ("load", "plan", "send", "track", "results")
MIB_TARGET = 600  # peak RSS from 1M rows up (the first speed issue's bound)
MIB_TARGET_10M = 450  # #19 tightened it at 10M
SPEEDUP_TARGET = 10.0
FLOOR_TARGET = 3.0
CELL_PROGRAMS = ("bulkbatch", "floor")
"""Programs measured in the extra ``--cells`` (the naive script at 150 ms would take hours)."""
QUICK_CELLS = "200k:latency20,1M:latency150"
SHARDS = 4
"""Processes in the sharding cell (``bench/bench_shards.py``)."""
SHARD_LATENCY_MS = 50.0


def parse_size(text: str) -> int:
    t = text.strip().lower().replace("_", "").replace(",", "")
    mult = 1
    if t.endswith("k"):
        mult, t = 1_000, t[:-1]
    elif t.endswith("m"):
        mult, t = 1_000_000, t[:-1]
    return int(float(t) * mult)


def parse_reps(text: str | int) -> dict[int, int]:
    """``3`` (every size) or ``1M:3,10M:1`` (per size; 0 = the default for sizes not named)."""
    text = str(text)
    if ":" not in text:
        return {0: int(text)}
    out = {}
    for part in text.split(","):
        size, _, n = part.partition(":")
        out[parse_size(size)] = int(n)
    return out


def reps_for(reps: dict[int, int], rows: int) -> int:
    return reps.get(rows, reps.get(0, 1))


def human(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return f"{n:,}"


@dataclass
class Record:
    program: str
    rows: int
    scenario: str
    rep: int
    wall_s: float
    peak_rss_mib: float
    returncode: int
    emulator_cpu_s: float
    emulator_share: float
    cpu_s: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)
    prefix_rows: int | None = None  # measured on a prefix, wall extrapolated
    measured_wall_s: float | None = None
    command: str = ""
    error: str = ""

    @property
    def extrapolated(self) -> bool:
        return self.prefix_rows is not None


def bulkbatch_cmd() -> list[str]:
    script = Path(sys.executable).parent / "bulkbatch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bulkbatch"]


def floor_jobs(rows: int, setting: str) -> int:
    """Jobs the floor spreads ``rows`` over: ``auto`` = as many as bulkbatch's default split."""
    if setting != "auto":
        return max(1, int(setting))
    from bulkbatch.config import DEFAULT_CONCURRENCY, auto_job_size

    return -(-rows // auto_job_size(rows, DEFAULT_CONCURRENCY))


def program_cmd(
    program: str, path: Path, work: Path, extra: list[str], *, jobs: int = 1
) -> list[str]:
    if program == "bulkbatch":
        return [
            *bulkbatch_cmd(),
            "--quiet",
            "send",
            str(path),
            "--event",
            "welcome",
            "--run-dir",
            str(work / "run"),
            "--json",
            "--poll-interval",
            "0.2",
            *extra,
        ]
    if program == "naive":
        return [sys.executable, str(HERE / "naive_sdk.py"), str(path), str(work / "naive.parquet")]
    if program == "floor":
        return [
            sys.executable,
            str(HERE / "floor.py"),
            str(path),
            "--out",
            str(work / "f.parquet"),
            "--jobs",
            str(jobs),
        ]
    raise ValueError(program)


def failure_line(stderr: str) -> str:
    """Why a program failed: the last line of its stderr that is not a warning (a 10M floor
    run's only recorded line was asyncio's "Enable tracemalloc" RuntimeWarning)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    telling = [line for line in lines if "Warning" not in line and "tracemalloc" not in line]
    return (telling or lines or ["no output"])[-1][:300]


def _parse_report(program: str, stdout: str) -> dict[str, Any]:
    text = stdout.strip()
    if not text:
        return {}
    try:
        if program == "bulkbatch":
            return dict(json.loads(text))
        return dict(json.loads(text.splitlines()[-1]))
    except ValueError:
        return {}


def run_one(
    program: str,
    rows: int,
    scenario: str,
    rep: int,
    *,
    prefix_rows: int | None,
    bb_extra: list[str],
    timeout: float | None,
    floor_jobs_setting: str = "auto",
) -> Record:
    path = audience(rows)
    if prefix_rows is not None:
        path = prefix_audience(path, prefix_rows)
    with temp_dir("bench-run-") as work, Emulator(faults=SCENARIOS[scenario]) as emu:
        jobs = floor_jobs(rows, floor_jobs_setting)
        cmd = program_cmd(program, path, work, bb_extra, jobs=jobs)
        env = {"COURIER_BASE_URL": emu.url, "COURIER_API_KEY": "bench"}
        m = measure(cmd, env=env, emulator=emu, timeout=timeout)
    report = _parse_report(program, m.stdout)
    rec = Record(
        program=program,
        rows=rows,
        scenario=scenario,
        rep=rep,
        wall_s=m.wall_s,
        peak_rss_mib=m.peak_rss_mib,
        returncode=m.returncode,
        emulator_cpu_s=m.emulator_cpu_s,
        emulator_share=m.emulator_share,
        cpu_s=m.cpu_s,
        load_before=m.load_before,
        load_after=m.load_after,
        report=report,
        command=shlex.join(cmd),
    )
    rec.report["emulator_stats"] = m.emulator_stats
    if m.returncode != 0 or not report:
        rec.error = failure_line(m.stderr)
        rec.report["stderr_tail"] = m.stderr[-4000:]  # the whole story, in the raw JSON
        log(f"  {program} FAILED (exit {m.returncode}): {rec.error}")
    if prefix_rows is not None:
        rec.prefix_rows = prefix_rows
        rec.measured_wall_s = m.wall_s
        stages = report.get("stages", {})
        variable = sum(float(stages.get(k, 0.0)) for k in NAIVE_VARIABLE)
        rec.wall_s = m.wall_s + variable * (rows / prefix_rows - 1)
    return rec


def plan_runs(args: argparse.Namespace) -> list[tuple[int, str, str, int, int | None]]:
    """(rows, scenario, program, rep, prefix_rows) for every measurement, in run order."""
    out = []
    for rows in args.sizes:
        for scenario in args.scenarios:
            if (rows, scenario) in args.cells:
                reps = reps_for(args.latency_reps, rows)
                progs = [p for p in args.programs if p in CELL_PROGRAMS]
                out.extend((rows, scenario, p, rep, None) for p in progs for rep in range(reps))
                continue
            if scenario != "none" and rows not in args.latency_sizes:
                continue
            if scenario not in args.grid_scenarios or rows not in args.grid_sizes:
                continue
            reps = reps_for(args.reps if scenario == "none" else args.latency_reps, rows)
            for program in args.programs:
                cap = args.naive_max_rows if scenario == "none" else args.naive_max_rows_latency
                prefix = cap if program == "naive" and cap and rows > cap else None
                n = 1 if prefix is not None else reps
                if program == "naive" and args.naive_reps:
                    n = min(n, args.naive_reps)
                out.extend((rows, scenario, program, rep, prefix) for rep in range(n))
    return out


# ----------------------------------------------------------------------------- report


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _fmt_s(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:,.1f}"


def stage_times(r: Record) -> dict[str, float]:
    """A run's stage seconds. bulkbatch's *track* is timed from the start of sending (a job
    is paged while later jobs ingest), so when the stages add up to more than the wall it
    is cut to the part after the last ingest, and the stages add up again."""
    src = "timings" if r.program == "bulkbatch" else "stages"
    st = {k: float(v) for k, v in r.report.get(src, {}).items()}
    if r.program == "bulkbatch" and sum(st.get(k, 0.0) for k in BB_STAGES) > r.wall_s:
        st["track"] = max(0.0, st.get("track", 0.0) - st.get("send", 0.0))
    return st


def summarize(records: list[Record]) -> dict[tuple[int, str, str], dict[str, Any]]:
    groups: dict[tuple[int, str, str], list[Record]] = defaultdict(list)
    for r in records:
        groups[(r.rows, r.scenario, r.program)].append(r)
    out = {}
    for key, recs in groups.items():
        ok = [r for r in recs if not r.error]
        walls = [r.wall_s for r in ok]
        stages: dict[str, float] = {}
        src = "timings" if key[2] == "bulkbatch" else "stages"
        names: list[str] = []
        for r in ok:
            for k in r.report.get(src, {}):
                if k not in names:
                    names.append(k)
        timings = [stage_times(r) for r in ok]
        for k in names:
            stages[k] = _med([float(t[k]) for t in timings if k in t])
        out[key] = {
            "n": len(ok),
            "failed": len(recs) - len(ok),
            "wall": _med(walls),
            "min": min(walls) if walls else float("nan"),
            "max": max(walls) if walls else float("nan"),
            "rss": max((r.peak_rss_mib for r in ok), default=float("nan")),
            "emu_share": _med([r.emulator_share for r in ok]),
            "emu_cpu": _med([r.emulator_cpu_s for r in ok]),
            "cpu": _med([r.cpu_s for r in ok]),
            "load": max((max(r.load_before, r.load_after) for r in ok), default=float("nan")),
            "extrapolated": any(r.extrapolated for r in ok),
            "prefix_rows": next((r.prefix_rows for r in ok if r.extrapolated), None),
            "measured_wall": _med([r.measured_wall_s or 0.0 for r in ok if r.extrapolated]),
            "stages": stages,
            "records": ok,
        }
    return out


def _program_row(program: str, rows: int, s: dict[str, Any]) -> str:
    if s["n"] == 0:
        return f"| {program} | failed ({s['failed']} runs) | — | — | — | — | — | 0 |"
    if s["extrapolated"]:
        wall = (
            f"**≈ {_fmt_s(s['wall'])} (extrapolated** from a {s['prefix_rows']:,}-row prefix "
            f"measured at {_fmt_s(s['measured_wall'])} s)"
        )
        rss = f"— (prefix: {s['rss']:,.0f})"
        runs = "1 (prefix)"
    else:
        wall = f"{_fmt_s(s['wall'])} ({_fmt_s(s['min'])}–{_fmt_s(s['max'])})"
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
        cells = " | ".join(_fmt_s(st.get(k, float("nan"))) for k in BB_STAGES)
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
                f"| {cells} | {_fmt_s(bb['wall'] - known)} | {_fmt_s(bb['wall'])} "
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


def _targets(args: argparse.Namespace, summ: dict[tuple[int, str, str], Any]) -> list[str]:
    lines = ["## Targets", "", "| target | scenario | value | met? |", "|---|---|---:|:---:|"]
    any_row = False
    for rows in args.sizes:
        for scen in args.scenarios:
            bb = summ.get((rows, scen, "bulkbatch"))
            if not bb or not bb["n"]:
                continue
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
    goals = goal_rows(summ)
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
    for rows in args.sizes:
        for scen in args.scenarios:
            bb = summ.get((rows, scen, "bulkbatch"))
            if not bb or not bb["n"]:
                continue
            found = True
            st = bb["stages"]
            known = sum(st.get(k, 0.0) for k in BB_STAGES)
            pages = max(1, rows // 100)
            cells = " | ".join(
                f"{_fmt_s(st.get(k, float('nan')))} ({100 * st.get(k, 0) / bb['wall']:.0f} %)"
                for k in BB_STAGES
            )
            lines.append(
                f"| {rows:,} | {scen} | {cells} | {_fmt_s(bb['wall'] - known)} "
                f"| {_fmt_s(bb['wall'])} | {1000 * st.get('track', 0) / pages:.1f} ms |"
            )
            fl = summ.get((rows, scen, "floor"))
            if fl and fl["n"] and "page" in fl["stages"]:
                lines.append(
                    f"| | floor, same scenario | read+ingest {_fmt_s(fl['stages'].get('ingest', 0))}"
                    f" | | | page {_fmt_s(fl['stages']['page'])} | "
                    f"write {_fmt_s(fl['stages'].get('write', 0))} | | {_fmt_s(fl['wall'])} "
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
    for rows in args.sizes:
        for scen in args.scenarios:
            bb = summ.get((rows, scen, "bulkbatch"))
            if not bb or not bb["n"]:
                continue
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
                f"({_fmt_s(st.get(top, 0.0))} s, {100 * st.get(top, 0.0) / wall:.0f} % of wall). "
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
            text += f"; load + plan {_fmt_s(lp)} s."
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


# ----------------------------------------------------------------------------- micro + profile


MICRO = {
    "bench_plan.py (load + plan only)": ["bench/bench_plan.py", "--jobs", "auto"],
    "bench_emulator.py (emulator ingest throughput)": ["bench/bench_emulator.py"],
    "chaos.py (kills, faults and an emulator restart; nothing lost or twice)": [
        "bench/chaos.py",
        "--faults",
        "rate_limit=200,error_rate=0.05,drop_rate=0.03,latency_ms=5,seed=13",
        "--users",
        "1000000",
    ],
    "bench_ratelimit.py (rate limiter vs server limit)": [
        "bench/bench_ratelimit.py",
        "--rates",
        "50,200",
        "--duration",
        "15",
    ],
}


def run_micro(quick: bool) -> dict[str, str]:
    out = {}
    for title, argv in MICRO.items():
        script = ROOT / argv[0]
        if not script.exists():
            continue
        cmd = [sys.executable, str(script), *argv[1:]]
        if quick and argv[0].endswith("bench_plan.py"):
            cmd.append("--quick")
        if quick and argv[0].endswith("chaos.py"):
            cmd[-1] = "100000"
        log(f"micro-benchmark: {shlex.join(cmd[1:])}")
        try:
            p = subprocess.run(
                cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=1800
            )
            body = p.stdout.strip() or "(no output)"
            if p.returncode != 0:
                body += f"\n\n(exit {p.returncode}: {(p.stderr.strip().splitlines() or [''])[-1]})"
        except subprocess.TimeoutExpired:
            body = "(timed out after 30 min)"
        out[title] = f"`{shlex.join(['python', *argv])}`\n\n{body}"
    return out


def profile_bulkbatch(rows: int, scenario: str, bb_extra: list[str], top: int = 25) -> str:
    """py-spy record of one bulkbatch run; top functions by inclusive and self samples."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        return "py-spy is not installed (`.venv/bin/pip install py-spy`); no profile taken."
    path = audience(rows)
    with temp_dir("bench-prof-") as work, Emulator(faults=SCENARIOS[scenario]) as emu:
        raw = work / "profile.txt"
        cmd = [
            pyspy,
            "record",
            "--rate",
            "50",
            "--format",
            "raw",
            "--subprocesses",
            "--output",
            str(raw),
            "--",
            *program_cmd("bulkbatch", path, work, bb_extra),
        ]
        env = {"COURIER_BASE_URL": emu.url, "COURIER_API_KEY": "bench"}
        m = measure(cmd, env=env, emulator=emu)
        if not raw.exists():
            return f"py-spy failed (exit {m.returncode}): {m.stderr.strip()[-300:]}"
        text = raw.read_text()
    incl: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [f.split(" (")[0] + _loc(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ")]
        total += n
        for f in set(frames):
            incl[f] += n
        if frames:
            self_[frames[-1]] += n
    if total == 0:
        return "py-spy recorded no samples."
    start = m.stdout.find("{")
    try:
        report = json.loads(m.stdout[start:]) if start >= 0 else {}
    except ValueError:
        report = {}
    timings = report.get("timings", {})
    stages = f"; stages {timings}" if timings else ""
    out = [
        (
            f"`py-spy record --rate 50 --subprocesses` of bulkbatch at {rows:,} rows, {scenario} "
            f"(wall {m.wall_s:.1f} s under the profiler{stages}). Samples are CPU "
            f"samples of all threads (idle threads not counted): {total:,} samples."
        ),
        "",
        (
            "bulkbatch functions by inclusive share (time in DuckDB/C code called from a "
            "function counts as that function's self time):"
        ),
        "",
        "| function | inclusive | self |",
        "|---|---:|---:|",
    ]
    skip = ("<module>", "run (", "_run_module_as_main", "_run_code", "main (")
    shown = 0
    for fn, n in incl.most_common():
        if "(bulkbatch/" not in fn or any(fn.startswith(s) for s in skip) or n / total > 0.97:
            continue
        out.append(f"| `{fn}` | {100 * n / total:.1f} % | {100 * self_[fn] / total:.1f} % |")
        shown += 1
        if shown >= top:
            break
    out += ["", "All functions by self share:", "", "| function | self |", "|---|---:|"]
    for fn, n in self_.most_common(15):
        out.append(f"| `{fn}` | {100 * n / total:.1f} % |")
    return "\n".join(out)


def _loc(frame: str) -> str:
    """'fn (path/to/file.py:12)' -> ' (file.py)'; keeps module context without line noise."""
    if " (" not in frame:
        return ""
    loc = frame.rsplit(" (", 1)[1].rstrip(")")
    file = loc.split(":")[0]
    parts = Path(file).parts
    file = "/".join(parts[parts.index("bulkbatch") :]) if "bulkbatch" in parts else Path(file).name
    return f" ({file})"


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help="100k + 1M, 1 rep, latency50 at 100k, plus 200k at 20 ms and 1M at 150 ms",
    )
    mode.add_argument("--smoke", action="store_true", help="5k rows, 1 rep, no micro (tests)")
    p.add_argument("--sizes", help="comma list, e.g. 100k,1M,10M")
    p.add_argument(
        "--reps", help="repetitions per measurement (median): 3, or per size: 1M:3,10M:1"
    )
    p.add_argument("--scenarios", help="comma list of: " + ", ".join(SCENARIOS))
    p.add_argument("--latency-sizes", help="sizes that get the latency scenario")
    p.add_argument(
        "--cells",
        help="extra SIZE:SCENARIO cells, bulkbatch and floor only (comma list; 'none' for "
        f"none); default {QUICK_CELLS}",
    )
    p.add_argument("--latency-reps", help="repetitions in the latency scenario (as --reps)")
    p.add_argument("--programs", default=",".join(PROGRAMS), help="comma list of programs")
    p.add_argument(
        "--naive-max-rows",
        help="above this the naive script runs on a prefix and is extrapolated (no latency)",
    )
    p.add_argument("--naive-max-rows-latency", help="the same, in the latency scenario")
    p.add_argument(
        "--naive-reps", type=int, help="at most this many runs of the naive script per cell"
    )
    p.add_argument(
        "--bulkbatch-arg",
        dest="bb_extra",
        action="append",
        default=[],
        help="extra argument for bulkbatch send (repeat), e.g. --bulkbatch-arg=--rate=50",
    )
    p.add_argument(
        "--floor-jobs",
        default="auto",
        help="bulk jobs the floor spreads users over: auto (default) = as many as bulkbatch's "
        "default split, so both use the same request pattern; 1 = one job paged sequentially",
    )
    p.add_argument("--timeout", type=float, help="kill a measured program after N seconds")
    p.add_argument(
        "--shards",
        help=f"the sharding cell at this size: {SHARDS} processes (send --shard i/{SHARDS}) "
        f"vs one, one emulator at {SHARD_LATENCY_MS:g} ms ('none' to skip; default 1M, "
        "200k with --quick, none for --smoke or chosen cells)",
    )
    micro = p.add_mutually_exclusive_group()
    micro.add_argument("--micro", action="store_true", default=None, help="run bench_*.py too")
    micro.add_argument("--no-micro", dest="micro", action="store_false")
    p.add_argument(
        "--profile",
        help="py-spy profile of bulkbatch at SIZE:SCENARIO (comma list), e.g. 1M:none",
    )
    p.add_argument("--note", dest="notes", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(HERE / "RESULTS.md"), help="report path")
    p.add_argument(
        "--section",
        help="the generated section of the report this run rewrites (default: full, quick, "
        "smoke, or custom when cells, sizes, scenarios or programs are chosen); the rest of "
        "the file is kept",
    )
    p.add_argument(
        "--render",
        metavar="RAW_JSON",
        help="no measurements: rewrite the report from bench/out/run-*.json (a new --profile "
        "or --micro is added to it)",
    )
    p.add_argument("--measured-by", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.cmdline = args.measured_by or shlex.join(
        [".venv/bin/python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)]
    )

    if args.smoke:
        defaults = {"sizes": "5k", "reps": 1, "scenarios": "none", "latency_sizes": "5k",
                    "latency_reps": 1, "naive": "0", "naive_lat": "0", "micro": False,
                    "timeout": 300.0, "cells": "", "shards": "none"}  # fmt: skip
    elif args.quick:
        defaults = {"sizes": "100k,1M", "reps": 1, "scenarios": "none,latency50",
                    "latency_sizes": "100k", "latency_reps": 1, "naive": "100k",
                    "naive_lat": "100k", "micro": False, "timeout": None,
                    "shards": "200k"}  # fmt: skip
    else:
        # 3 repetitions at 1M, one at 10M (a 10M cell takes 5-15 minutes here).
        defaults = {"sizes": "1M,10M", "reps": "1M:3,10M:1", "scenarios": "none,latency50",
                    "latency_sizes": "all", "latency_reps": "200k:3,1M:3,10M:1", "naive": "1M",
                    "naive_lat": "100k", "micro": True, "timeout": None,
                    "naive_reps": 1, "shards": "1M"}  # fmt: skip
    cells_text = args.cells if args.cells is not None else defaults.get("cells", QUICK_CELLS)
    args.cells = [
        (parse_size(size), scen)
        for size, _, scen in (c.partition(":") for c in cells_text.split(","))
        if size and size != "none"
    ]
    for _, scen in args.cells:
        if scen not in SCENARIOS:
            p.error(f"unknown scenario {scen!r} in --cells; choose from {', '.join(SCENARIOS)}")
    args.sizes = [parse_size(s) for s in (args.sizes or defaults["sizes"]).split(",") if s]
    args.reps = parse_reps(args.reps or defaults["reps"])
    args.scenarios = [s for s in (args.scenarios or defaults["scenarios"]).split(",") if s]
    for s in args.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    args.programs = [s for s in args.programs.split(",") if s]
    for s in args.programs:
        if s not in PROGRAMS:
            p.error(f"unknown program {s!r}; choose from {', '.join(PROGRAMS)}")
    lat = args.latency_sizes or defaults["latency_sizes"]
    args.latency_sizes = (
        args.sizes if lat == "all" else [parse_size(s) for s in lat.split(",") if s]
    )
    args.latency_reps = parse_reps(args.latency_reps or defaults["latency_reps"])
    # The grid (sizes x scenarios) plus the extra cells, sizes and scenarios in order.
    args.grid_scenarios = list(args.scenarios)
    args.grid_sizes = list(args.sizes)
    args.sizes = sorted({*args.sizes, *(rows for rows, _ in args.cells)})
    args.scenarios = [
        s for s in SCENARIOS if s in args.scenarios or any(c[1] == s for c in args.cells)
    ]
    args.naive_max_rows = parse_size(args.naive_max_rows or defaults["naive"]) or None
    args.naive_max_rows_latency = (
        parse_size(args.naive_max_rows_latency or defaults["naive_lat"]) or None
    )
    if args.naive_reps is None:
        args.naive_reps = defaults.get("naive_reps")
    if args.micro is None:
        args.micro = False if args.render else defaults["micro"]
    if args.timeout is None:
        args.timeout = defaults["timeout"]
    given = (sys.argv[1:] if argv is None else argv) if not args.render else []
    chosen = ("--sizes", "--scenarios", "--cells", "--programs", "--latency-sizes")
    custom = any(a.split("=")[0] in chosen for a in given)
    if args.section is None:
        args.section = (
            "custom" if custom else "smoke" if args.smoke else "quick" if args.quick else "full"
        )
    if args.shards is None:
        args.shards = "none" if custom or args.render else defaults["shards"]
    args.shards = None if args.shards == "none" else parse_size(args.shards)
    return args


def _speed_text(speed: dict[str, dict[str, float]]) -> str:
    """The report's line on how fast the host was (:func:`common.host_speed`)."""
    when = [
        f"{label} {', '.join(f'{name} {ms:,.0f} ms' for name, ms in speed[key].items())}"
        for key, label in (("start", "before the runs:"), ("end", "after them:"))
        if key in speed
    ]
    tasks = "; ".join(f"*{name}*: {text}" for name, text in SPEED_TASKS.items())
    return (
        f"**Host speed** (fixed single-thread tasks, best of 3, lower is faster; {tasks}): "
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
                f"{human(rows)} {scen} {program}{est} {_fmt_s(s['wall'])} s "
                f"(CPU {s['cpu']:,.1f} s, load {s['load']:.1f})"
            )
        else:
            cells.append(f"{human(rows)} {scen} {program} failed")
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    line = f"{when}, git {args.measured_at}, `{args.cmdline}`: " + ("; ".join(cells) or "none")
    start = (speed or {}).get("start")
    if start:
        line += " (host speed: " + ", ".join(f"{k} {v:,.0f} ms" for k, v in start.items()) + ")"
    return line


def _save(path: Path, args: argparse.Namespace, records: list[Record], **extra: Any) -> None:
    data = {
        "argv": args.cmdline,
        "git": args.measured_at,
        "records": [asdict(r) for r in records],
        **extra,
    }
    path.write_text(json.dumps(data, indent=1, default=str))


def _load(path: Path) -> tuple[list[Record], dict[str, Any]]:
    data = json.loads(path.read_text())
    if isinstance(data, list):  # first format: the records only
        data = {"records": data}
    return [Record(**r) for r in data["records"]], data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.measured_at = git_head()
    started = time.time()
    raw_dir = HERE / "out"
    raw_dir.mkdir(exist_ok=True)
    saved: dict[str, Any] = {}
    speed: dict[str, dict[str, float]] = {}
    if args.render:
        records, saved = _load(Path(args.render))
        args.cmdline = saved.get("argv") or args.cmdline
        args.measured_at = saved.get("git") or "unknown"
        args.sizes = sorted({r.rows for r in records})
        args.scenarios = [s for s in SCENARIOS if any(r.scenario == s for r in records)]
        args.programs = [p for p in PROGRAMS if any(r.program == p for r in records)]
        started = time.time() - float(saved.get("minutes", 0)) * 60
        raw_path = Path(args.render)
        speed = dict(saved.get("speed", {}))
    else:
        runs = plan_runs(args)
        log(f"{len(runs)} measurements planned; report -> {args.out}")
        speed["start"] = host_speed()
        log(f"host speed before the runs: {speed['start']} ms")
        records = []
        raw_path = raw_dir / f"run-{time.strftime('%Y%m%d-%H%M%S')}.json"
        for i, (rows, scenario, program, rep, prefix) in enumerate(runs, 1):
            what = f"{program} {human(rows)} {scenario} rep {rep + 1}"
            if prefix:
                what += f" (prefix {human(prefix)})"
            log(f"[{i}/{len(runs)}] {what} ...")
            rec = run_one(
                program,
                rows,
                scenario,
                rep,
                prefix_rows=prefix,
                bb_extra=args.bb_extra,
                timeout=args.timeout,
                floor_jobs_setting=args.floor_jobs,
            )
            extra = ""
            if program == "bulkbatch":
                extra = f" stages {rec.report.get('timings')}"
            log(
                f"    wall {rec.wall_s:.1f}s{' (extrapolated)' if prefix else ''}, "
                f"cpu {rec.cpu_s:.1f}s, peak {rec.peak_rss_mib:.0f} MiB, "
                f"emulator {100 * rec.emulator_share:.0f} %{extra}"
            )
            records.append(rec)
            _save(raw_path, args, records, speed=speed)
        speed["end"] = host_speed()
        log(f"host speed after the runs: {speed['end']} ms")
    profiles: dict[str, str] = dict(saved.get("profiles", {}))
    for spec in [s for s in (args.profile or "").split(",") if s]:
        size, _, scen = spec.partition(":")
        scen = scen or "none"
        log(f"profiling bulkbatch at {size} {scen} with py-spy ...")
        profiles[f"bulkbatch, {human(parse_size(size))} rows, {scen}"] = profile_bulkbatch(
            parse_size(size), scen, args.bb_extra
        )
    micro: dict[str, str] = dict(saved.get("micro", {}))
    if args.micro:
        micro.update(run_micro(args.quick))
    if args.shards:
        import bench_shards

        title = (
            f"bench_shards.py ({SHARDS} shards as {SHARDS} processes vs one process, "
            f"{human(args.shards)} people, one emulator at {SHARD_LATENCY_MS:g} ms)"
        )
        log(f"sharding cell: {title} ...")
        cmd = f"python bench/bench_shards.py --users {human(args.shards)} --shards {SHARDS}"
        body = bench_shards.run(args.shards, SHARDS, SHARD_LATENCY_MS, args.timeout)
        micro[title] = f"`{cmd} --latency-ms {SHARD_LATENCY_MS:g}`\n\n{body}"
    minutes = (time.time() - started) / 60
    if not args.render or profiles or micro:
        _save(raw_path, args, records, profiles=profiles, micro=micro, minutes=minutes, speed=speed)
    text = render(args, records, micro, profiles, started, speed)
    write_report(
        Path(args.out),
        text,
        args.section,
        None if args.render else log_line(args, records, speed),
    )
    log(f"wrote {args.out} ({minutes:.1f} min); raw data in {raw_path}")
    return 1 if any(r.error for r in records) else 0


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the with-blocks: program and emulator stopped


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
