"""End-to-end benchmark: bulkbatch vs the naive SDK script vs the floor, against the emulator.

    .venv/bin/python bench/run.py               # full: 1M (3 reps) and 10M (1 rep), both
                                                # scenarios, + micro-benchmarks and 4 shards
                                                # vs 1 process at 1M (~1.5 h)
    .venv/bin/python bench/run.py --quick       # 100k and 1M, 1 rep, latency at 100k, the
                                                # extra cells and 4 shards at 200k
    .venv/bin/python bench/run.py --goals       # the cells #19's goals are judged on, and
                                                # the demo (~16 min)
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

Runs alternate between sizes (``--order interleaved``: each program's 1M, 10M, 1M, 1M), so
the 10M/1M load + plan ratio compares neighbouring minutes on a host whose speed drifts.
After the cells, ``bulkbatch --quiet demo`` is timed (``--demo-reps``; ``bench/demo_cell.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import demo_cell
from common import (
    HERE,
    Emulator,
    audience,
    git_head,
    host_speed,
    log,
    measure,
    prefix_audience,
    temp_dir,
)
from profiling import profile_bulkbatch, run_micro
from records import (
    NAIVE_VARIABLE,
    PROGRAMS,
    SCENARIOS,
    Record,
    human,
    load_records,
    save_records,
)
from report import log_line, render
from results_file import write_report

CELL_PROGRAMS = ("bulkbatch", "floor")
"""Programs measured in the extra ``--cells`` (the naive script at 150 ms would take hours)."""
QUICK_CELLS = "200k:latency20,1M:latency150"
GOAL_CELLS: tuple[tuple[int, str, tuple[str, ...], int], ...] = (
    (200_000, "latency20", ("bulkbatch", "naive", "floor"), 3),
    (1_000_000, "latency150", ("bulkbatch",), 3),
    (1_000_000, "none", ("bulkbatch",), 3),
    (10_000_000, "none", ("bulkbatch", "floor"), 1),
)
"""``--goals``: (size, scenario, programs, reps) of exactly the cells issue #19's goals are
judged on (``bench/goals.py``); the naive script runs once, in full. About 16 minutes here."""
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "smoke": {"sizes": "5k", "reps": 1, "scenarios": "none", "latency_sizes": "5k",
              "latency_reps": 1, "naive": "0", "naive_lat": "0", "micro": False,
              "timeout": 300.0, "cells": "", "shards": "none", "demo": 1},
    # --goals: the runs are GOAL_CELLS; these only name the report's sizes and scenarios
    "goals": {"sizes": "200k,1M,10M", "reps": 1, "scenarios": "none,latency20,latency150",
              "latency_sizes": "all", "latency_reps": 1, "naive": "0", "naive_lat": "0",
              "micro": False, "timeout": None, "cells": "", "shards": "none", "demo": 3},
    "quick": {"sizes": "100k,1M", "reps": 1, "scenarios": "none,latency50",
              "latency_sizes": "100k", "latency_reps": 1, "naive": "100k",
              "naive_lat": "100k", "micro": False, "timeout": None,
              "shards": "200k", "demo": 3},
    # 3 repetitions at 1M, one at 10M (a 10M cell takes 5-15 minutes here).
    "full": {"sizes": "1M,10M", "reps": "1M:3,10M:1", "scenarios": "none,latency50",
             "latency_sizes": "all", "latency_reps": "200k:3,1M:3,10M:1", "naive": "1M",
             "naive_lat": "100k", "micro": True, "timeout": None,
             "naive_reps": 1, "shards": "1M", "demo": 3},
}  # fmt: skip
"""Each mode's defaults for the options not given on the command line."""
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


def bulkbatch_cmd() -> list[str]:
    script = Path(sys.executable).parent / "bulkbatch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bulkbatch"]


def floor_jobs(rows: int, setting: str) -> int:
    """Jobs the floor spreads ``rows`` over: ``auto`` = as many as bulkbatch's default split."""
    if setting != "auto":
        return max(1, int(setting))
    from bulkbatch.config import auto_job_size

    return -(-rows // auto_job_size(rows))


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


Run = tuple[int, str, str, int, int | None]


def plan_runs(args: argparse.Namespace) -> list[Run]:
    """(rows, scenario, program, rep, prefix_rows) for every measurement, in run order."""
    out: list[Run] = []
    if args.goals:
        for rows, scenario, programs, reps in GOAL_CELLS:
            for program in programs:
                n = 1 if program == "naive" else reps
                out.extend((rows, scenario, program, rep, None) for rep in range(n))
        return interleave(out) if args.order == "interleaved" else out
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
    return interleave(out) if args.order == "interleaved" else out


def interleave(runs: list[Run]) -> list[Run]:
    """The same runs, each program's runs of one scenario alternating between sizes.

    The 10M/1M load + plan goal divides two cells' times, and this host's speed drifts by
    ~10 % within minutes (round 30), so 1M runs measured a quarter of an hour before 10M
    skew the ratio. Alternating (1M, 10M, 1M, 1M for reps 1M:3,10M:1) puts the middle 1M
    run, the median, right after the 10M one.
    """
    groups: dict[tuple[str, str], dict[int, list[Run]]] = {}
    for run in runs:
        groups.setdefault((run[1], run[2]), {}).setdefault(run[0], []).append(run)
    out: list[Run] = []
    for by_size in groups.values():
        queues = [by_size[rows] for rows in sorted(by_size)]
        while any(queues):
            out.extend(q.pop(0) for q in queues if q)
    return out


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
    mode.add_argument(
        "--goals",
        action="store_true",
        help="only the cells issue #19's goals are judged on (200k at 20 ms with the naive "
        "script, 1M at 150 ms, 1M and 10M with no latency, the 10M floor, the demo; ~16 min)",
    )
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
    p.add_argument(
        "--order",
        choices=("interleaved", "size"),
        default="interleaved",
        help="run order: interleaved (default) alternates each program's runs between sizes "
        "(1M, 10M, 1M, 1M), so the 10M/1M ratio compares neighbouring minutes; size runs "
        "every size's cells before the next size's",
    )
    p.add_argument("--timeout", type=float, help="kill a measured program after N seconds")
    p.add_argument(
        "--shards",
        help=f"the sharding cell at this size: {SHARDS} processes (send --shard i/{SHARDS}) "
        f"vs one, one emulator at {SHARD_LATENCY_MS:g} ms ('none' to skip; default 1M, "
        "200k with --quick, none for --smoke or chosen cells)",
    )
    p.add_argument(
        "--demo-reps",
        type=int,
        help="runs of `bulkbatch --quiet demo` (2,000 people; #19: ≤ 5 s) after the cells "
        "(default 3, 1 for --smoke, 0 when cells, sizes, scenarios or programs are chosen)",
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
        "goals, smoke, or custom when cells, sizes, scenarios or programs are chosen); the "
        "rest of the file is kept",
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

    mode = next((m for m in ("smoke", "goals", "quick") if getattr(args, m)), "full")
    defaults = MODE_DEFAULTS[mode]
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
    if args.goals and custom:
        p.error(f"--goals runs a fixed set of cells; drop {', '.join(chosen)}")
    if args.section is None:
        args.section = "custom" if custom else mode
    if args.demo_reps is None:
        args.demo_reps = 0 if custom or args.render else defaults["demo"]
    if args.shards is None:
        args.shards = "none" if custom or args.render else defaults["shards"]
    args.shards = None if args.shards == "none" else parse_size(args.shards)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.measured_at = git_head()
    started = time.time()
    raw_dir = HERE / "out"
    raw_dir.mkdir(exist_ok=True)
    saved: dict[str, Any] = {}
    speed: dict[str, dict[str, float]] = {}
    if args.render:
        records, saved = load_records(Path(args.render))
        args.cmdline = saved.get("argv") or args.cmdline
        args.measured_at = saved.get("git") or "unknown"
        args.sizes = sorted({r.rows for r in records})
        args.scenarios = [s for s in SCENARIOS if any(r.scenario == s for r in records)]
        args.programs = [p for p in PROGRAMS if any(r.program == p for r in records)]
        started = time.time() - float(saved.get("minutes", 0)) * 60
        raw_path = Path(args.render)
        speed = dict(saved.get("speed", {}))
        args.demo = saved.get("demo")
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
            save_records(raw_path, args, records, speed=speed)
        speed["end"] = host_speed()
        log(f"host speed after the runs: {speed['end']} ms")
        args.demo = None
    if args.demo_reps:
        log(f"the demo, {args.demo_reps} run(s) ...")
        args.demo = demo_cell.measure(bulkbatch_cmd(), args.demo_reps, args.timeout)
        log(f"    demo: {args.demo}")
    profiles: dict[str, str] = dict(saved.get("profiles", {}))
    for spec in [s for s in (args.profile or "").split(",") if s]:
        size, _, scen = spec.partition(":")
        scen = scen or "none"
        log(f"profiling bulkbatch at {size} {scen} with py-spy ...")
        profiles[f"bulkbatch, {human(parse_size(size))} rows, {scen}"] = profile_bulkbatch(
            parse_size(size),
            scen,
            lambda path, work: program_cmd("bulkbatch", path, work, args.bb_extra),
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
    if not args.render or profiles or micro or args.demo_reps:
        save_records(
            raw_path,
            args,
            records,
            profiles=profiles,
            micro=micro,
            minutes=minutes,
            speed=speed,
            demo=args.demo,
        )
    text = render(args, records, micro, profiles, started, speed)
    write_report(
        Path(args.out),
        text,
        args.section,
        None if args.render else log_line(args, records, speed),
    )
    log(f"wrote {args.out} ({minutes:.1f} min); raw data in {raw_path}")
    failed = any(r.error for r in records) or bool((args.demo or {}).get("error"))
    return 1 if failed else 0


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the with-blocks: program and emulator stopped


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
