"""Benchmark load + plan on synthetic Parquet audiences: wall time and peak RSS.

    .venv/bin/python bench/bench_plan.py            # 1M and 10M rows
    .venv/bin/python bench/bench_plan.py --quick    # 100k and 1M rows

Audiences are generated once into bench/data/ (gitignored) with ``bulkbatch.synth``
(2 % duplicates). Each measurement runs load + plan in a fresh subprocess on a fresh run
database; peak RSS is polled with psutil (the child and its children) every 20 ms.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bulkbatch.synth import generate

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"

CHILD = r"""
import sys, time, duckdb
from pathlib import Path
from bulkbatch.stages.load import LoadOptions, load_inputs
from bulkbatch.stages.plan import PlanOptions, build_plan
run = Path(sys.argv[2])
con = duckdb.connect(str(run / "run.duckdb"))
t0 = time.perf_counter()
load = load_inputs(con, LoadOptions((sys.argv[1],)))
t1 = time.perf_counter()
info = build_plan(con, PlanOptions(event="welcome", data={"promo": "SPRING"}), run)
t2 = time.perf_counter()
print(load.rows, info.to_send, info.duplicates, info.rejected, info.batches, t1 - t0, t2 - t1)
"""


def audience(rows: int) -> Path:
    path = DATA / f"audience_{rows}.parquet"
    if not path.exists():
        t = time.perf_counter()
        generate(path, rows, duplicate_rate=0.02, seed=0)
        print(f"generated {path.name} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    return path


def measure(path: Path) -> dict[str, float]:
    run = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    try:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(run)],
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100k and 1M rows only")
    args = parser.parse_args()
    sizes = [100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000]
    lines = [
        (
            f"load + plan, {platform.machine()}, {psutil.cpu_count()} CPUs, "
            f"Python {platform.python_version()}"
        ),
        "",
        (
            "| rows | to send | duplicates | rejected | batches | load s | plan s | wall s "
            "| rows/s | peak RSS MiB |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        r = measure(audience(n))
        lines.append(
            f"| {r['rows']:,} | {r['to_send']:,} | {r['duplicates']:,} | {r['rejected']:,} "
            f"| {r['batches']:,} | {r['load_s']:.1f} | {r['plan_s']:.1f} | {r['wall_s']:.1f} "
            f"| {r['rows'] / r['wall_s']:,.0f} | {r['peak_mib']:,.0f} |"
        )
        print(lines[-1], file=sys.stderr)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
