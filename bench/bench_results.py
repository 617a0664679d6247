"""Benchmark the results stage alone, statement by statement, on a synthetic run database.

    .venv/bin/python bench/bench_results.py                    # 10M rows
    .venv/bin/python bench/bench_results.py --rows 1000000

The run database is built directly in SQL by the builder of
``tests/stages/test_results_memory.py`` (inputs, plan, 2 % duplicates, one result page row per
planned user; no send), once per size under ``bench/data/results_<rows>/`` (gitignored), so
only ``write_results`` is timed. Every statement that takes over half a second is printed
with its time; peak RSS is the process's, read at the end (``ru_maxrss``). At 10M this
measured 55 s in round 4 of #19 before its changes (the real stage took 51-67 s).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the tests package, for its builder

from bulkbatch.stages import results
from bulkbatch.state import JobState, RunState, open_run_db
from tests.stages.test_results_memory import JOBS, _build


class _Timed:
    """A DuckDB connection whose slow statements are printed with their time."""

    def __init__(self, con: Any) -> None:
        self._con = con

    def execute(self, sql: str, *args: Any) -> Any:
        start = time.perf_counter()
        out = self._con.execute(sql, *args)
        took = time.perf_counter() - start
        if took > 0.5:
            print(f"  {took:6.1f} s  {' '.join(sql.split())[:100]}")
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--rebuild", action="store_true", help="build the run database again")
    parser.add_argument("--dir", type=Path, default=HERE / "data", help="where it is kept")
    args = parser.parse_args()
    run_dir = args.dir / f"results_{args.rows}"
    if args.rebuild or not (run_dir / "run.duckdb").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        start = time.perf_counter()
        _build(run_dir, rows=args.rows)
        print(f"built {args.rows:,} rows in {time.perf_counter() - start:.1f} s")
    state = RunState(run_dir=run_dir, run_id="scaled")
    state.plan = {"key_columns": ["user_id", "email"]}
    state.jobs = [
        JobState(job_no=n, job_id=f"1-job-{n}", run=True, paged=True) for n in range(JOBS)
    ]
    state.stages = dict.fromkeys(("load", "plan", "send", "track"), 0.0)  # a finished send
    con = open_run_db(run_dir)
    try:
        start = time.perf_counter()
        info = results.write_results(_Timed(con), state, strict=False)
        took = time.perf_counter() - start
    finally:
        con.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"write_results: {info.input_rows:,} rows in {took:.1f} s, peak RSS {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
