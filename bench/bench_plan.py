"""Benchmark load + plan on synthetic Parquet audiences: wall time and peak RSS.

    .venv/bin/python bench/bench_plan.py            # 1M and 10M rows
    .venv/bin/python bench/bench_plan.py --quick    # 100k and 1M rows
    .venv/bin/python bench/bench_plan.py --rows 1000000 --repeat 3 --jobs auto
    .venv/bin/python bench/bench_plan.py --rows 1000000 --jobs auto --format csv

Audiences are generated once into bench/data/ (gitignored) with ``bulkbatch.synth``
(2 % duplicates). Each measurement runs load + plan in a fresh subprocess on a fresh run
database opened like a real run (``bulkbatch.state.open_run_db``: 384MB memory limit, spill
directory in the run dir); peak RSS is polled with psutil (the child and its children) every
20 ms. ``--jobs`` picks one job, jobs of 100k users, or the pipeline's automatic job size
(``auto_job_size``: about 64 jobs); medians are reported over ``--repeat`` runs.
``--format csv`` benchmarks the same audience as CSV (text read, then column types inferred).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bulkbatch.config import auto_job_size
from bulkbatch.synth import generate

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"

CHILD = r"""
import sys, time
from pathlib import Path
from bulkbatch.stages.load import LoadOptions, load_inputs
from bulkbatch.stages.plan import PlanOptions, build_plan
from bulkbatch.state import open_run_db
run = Path(sys.argv[2])
mjs = int(sys.argv[3]) or None
con = open_run_db(run)
t0 = time.perf_counter()
load = load_inputs(con, LoadOptions((sys.argv[1],)))
t1 = time.perf_counter()
opts = PlanOptions(data={"promo": "SPRING"}, max_job_size=mjs)
info = build_plan(con, opts, run)
t2 = time.perf_counter()
print(load.rows, info.to_send, info.duplicates, info.rejected, info.batches, t1 - t0, t2 - t1)
"""


def audience(rows: int, fmt: str = "parquet") -> Path:
    path = DATA / f"audience_{rows}.{fmt}"
    if not path.exists():
        t = time.perf_counter()
        partial = path.with_name(path.name + ".partial")
        generate(
            partial, rows, fmt="csv" if fmt == "csv" else "parquet", duplicate_rate=0.02, seed=0
        )
        partial.replace(path)  # never leave a half-written audience behind
        print(f"generated {path.name} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    return path


def measure(path: Path, max_job_size: int) -> dict[str, float]:
    # Flush the earlier runs' gigabytes of writes first: without it the 10M load measured
    # 22-26 s here, against 12-14 s after a sync (the same code, minutes apart).
    os.sync()
    run = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    try:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(run), str(max_job_size)],
            stdout=subprocess.PIPE,
            text=True,
        )
        ps = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            try:
                rss = ps.memory_info().rss + sum(
                    c.memory_info().rss for c in ps.children(recursive=True)
                )
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.02)
        wall = time.perf_counter() - started
        out = proc.stdout.read() if proc.stdout else ""
        if proc.returncode != 0:
            raise SystemExit(f"child failed with exit code {proc.returncode}")
        rows, to_send, dups, rejected, batches, load_s, plan_s = (
            out.strip().splitlines()[-1].split()
        )
        return {
            "rows": int(rows),
            "to_send": int(to_send),
            "duplicates": int(dups),
            "rejected": int(rejected),
            "batches": int(batches),
            "load_s": float(load_s),
            "plan_s": float(plan_s),
            "wall_s": wall,
            "peak_mib": peak / 2**20,
        }
    finally:
        shutil.rmtree(run, ignore_errors=True)


JOBS = ("one", "100k", "auto")


def job_size(mode: str, rows: int) -> int:
    """``max_job_size`` for a mode (0: one job); ``auto`` is the pipeline's default."""
    if mode == "100k":
        return 100_000
    if mode == "auto":
        return auto_job_size(rows)
    return 0


def median_run(path: Path, max_job_size: int, repeat: int) -> dict[str, float]:
    runs = [measure(path, max_job_size) for _ in range(repeat)]
    out = dict(runs[0])
    for key in ("load_s", "plan_s", "wall_s", "peak_mib"):
        out[key] = statistics.median(r[key] for r in runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100k and 1M rows only")
    parser.add_argument("--rows", type=int, action="append", help="audience size (repeatable)")
    parser.add_argument(
        "--jobs",
        choices=[*JOBS, "all"],
        default="all",
        help="one job, jobs of 100k users, the pipeline's automatic job size "
        "(rows / concurrency, at least 10k), or all three (default)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; medians reported")
    parser.add_argument(
        "--format", choices=["parquet", "csv"], default="parquet", help="audience file format"
    )
    args = parser.parse_args()
    sizes = [100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000]
    if args.rows:
        sizes = args.rows
    modes = list(JOBS) if args.jobs == "all" else [args.jobs]
    lines = [
        (
            f"load + plan ({args.format}), {platform.machine()}, {psutil.cpu_count()} CPUs, "
            f"Python {platform.python_version()}"
        ),
        "",
        (f"load average {os.getloadavg()[0]:.2f}, median of {args.repeat} run(s)"),
        "",
        (
            "| rows | jobs | to send | duplicates | rejected | batches | load s | plan s | wall s "
            "| rows/s | peak RSS MiB |"
        ),
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        for mode in modes:
            r = median_run(audience(n, args.format), job_size(mode, n), args.repeat)
            lines.append(
                f"| {r['rows']:,} | {mode} | {r['to_send']:,} | {r['duplicates']:,} | {r['rejected']:,} "
                f"| {r['batches']:,} | {r['load_s']:.1f} | {r['plan_s']:.1f} | {r['wall_s']:.1f} "
                f"| {r['rows'] / r['wall_s']:,.0f} | {r['peak_mib']:,.0f} |"
            )
            print(lines[-1], file=sys.stderr)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
