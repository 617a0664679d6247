"""Load + plan of wide CSV audiences: time and memory against the number of columns.

    .venv/bin/python bench/bench_wide.py                          # 250 ... 2,000 columns
    .venv/bin/python bench/bench_wide.py --widths 500 --rows 100000 --repeat 3

A warehouse export can have hundreds or thousands of columns. Most go unsent, but every
text column of a CSV is typed on load (``csvread.infer_types``), so width is a size of its
own. Half the extra columns hold text, half integers (which get typed BIGINT, the costly
case); every row has an e-mail. Audiences are written once into bench/data/ (gitignored);
each cell runs load + plan in a fresh subprocess (``bench_plan.measure``: the run database
as a real run opens it, peak RSS of the process tree).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import psutil

from bench_plan import DATA, measure  # the same child and the same RSS polling


def wide_audience(width: int, rows: int, folder: Path = DATA) -> Path:
    """``email`` plus ``width - 1`` columns, alternately text and integers."""
    path = folder / f"wide_{width}x{rows}.csv"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    partial = path.with_name(path.name + ".partial")
    extra = width - 1
    with partial.open("w", encoding="utf-8") as f:
        f.write(",".join(["email", *(f"c{i}" for i in range(extra))]) + "\n")
        for r in range(rows):
            text, number = f"t{r % 97}", str(r % 1000)
            cells = [text if i % 2 == 0 else number for i in range(extra)]
            f.write(f"p{r}@example.com," + ",".join(cells) + "\n")
    partial.replace(path)
    print(f"generated {path.name} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--widths", type=int, nargs="+", default=[250, 500, 1000, 2000], help="columns"
    )
    parser.add_argument("--rows", type=int, default=10_000, help="rows per audience")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; medians reported")
    parser.add_argument("--dir", type=Path, default=DATA, help="where the audiences go")
    args = parser.parse_args()
    lines = [
        (
            f"load + plan of wide CSVs, {args.rows:,} rows, {platform.machine()}, "
            f"{psutil.cpu_count()} CPUs, Python {platform.python_version()}, load average "
            f"{os.getloadavg()[0]:.2f}, median of {args.repeat} run(s)"
        ),
        "",
        "| columns | typed BIGINT | load s | plan s | wall s | peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for width in args.widths:
        path = wide_audience(width, args.rows, args.dir)
        try:
            runs = [measure(path, 0) for _ in range(args.repeat)]
        except SystemExit as failed:  # e.g. past DuckDB's memory cap: a row, not the end
            lines.append(f"| {width:,} | {(width - 1) // 2:,} | {failed} | | | |")
            print(lines[-1], file=sys.stderr)
            continue
        med = {k: statistics.median(r[k] for r in runs) for k in ("load_s", "plan_s", "wall_s")}
        peak = statistics.median(r["peak_mib"] for r in runs)
        lines.append(
            f"| {width:,} | {(width - 1) // 2:,} | {med['load_s']:.1f} | {med['plan_s']:.1f} "
            f"| {med['wall_s']:.1f} | {peak:,.0f} |"
        )
        print(lines[-1], file=sys.stderr)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
