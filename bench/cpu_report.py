"""The "CPU per request and per person" section of ``bench/RESULTS.md`` (``bench/run.py``).

Program CPU is the whole process tree's user+system seconds (``wait4`` rusage), so it
includes reading, planning and writing results, not only HTTP. Requests are the program's
own count: bulkbatch's ``client.requests`` (retries included); the floor's ingest batches,
``POST /bulk`` and ``/run`` per job, polls and pages from its report.
"""

from __future__ import annotations

import math
from typing import Any

CPU_TARGET_MS = 1.5
"""Client CPU per request the paging loop should stay under (``bench/bench_client.py``)."""


def requests_of(program: str, report: dict[str, Any]) -> int | None:
    """How many HTTP requests one measured run made, from its own report."""
    if program == "bulkbatch":
        n = report.get("client", {}).get("requests")
        return int(n) if n else None
    if program == "floor" and report.get("pages"):
        jobs = int(report.get("jobs", 1) or 1)
        batches = math.ceil(int(report.get("rows", 0)) / 1000)
        return batches + 2 * jobs + int(report.get("polls", 0)) + int(report["pages"])
    return None


def cpu_lines(
    sizes: list[int], scenarios: list[str], summ: dict[tuple[int, str, str], Any]
) -> list[str]:
    rows_out = []
    for rows in sizes:
        for scen in scenarios:
            for program in ("bulkbatch", "floor"):
                s = summ.get((rows, scen, program))
                if not s or not s["n"] or s["extrapolated"]:
                    continue
                recs = s["records"]
                counts = [requests_of(program, r.report) for r in recs]
                known = [c for c in counts if c]
                if not known:
                    continue
                requests = sorted(known)[len(known) // 2]
                ms = 1000 * s["cpu"] / requests
                us = 1e6 * s["cpu"] / rows
                rows_out.append(
                    f"| {rows:,} | {scen} | {program} | {requests:,} | {s['cpu']:,.1f} "
                    f"| {ms:.2f} | {us:.1f} | {s['wall']:,.1f} |"
                )
    if not rows_out:
        return []
    return [
        "## CPU per request and per person",
        "",
        (
            "Program CPU (median of runs, whole process: load, plan, HTTP, ledger, results) "
            "divided by the run's HTTP requests and by its input rows. The client's own cost "
            "per request, without load/plan/results, is measured by `bench/bench_client.py` "
            f"(target ≤ {CPU_TARGET_MS:g} ms)."
        ),
        "",
        (
            "| rows | scenario | program | requests | CPU s | CPU ms / request "
            "| CPU µs / person | wall s |"
        ),
        "|---:|---|---|---:|---:|---:|---:|---:|",
        *rows_out,
        "",
    ]
