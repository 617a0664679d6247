"""The "CPU per request and per person" section of ``bench/RESULTS.md`` (``bench/run.py``).

Program CPU is the whole process tree's user+system seconds (``wait4`` rusage), so it
includes reading, planning and writing results, not only HTTP. Requests are the program's
own count: bulkbatch's ``client.requests`` (retries included); the floor's ingest batches,
``POST /bulk`` and ``/run`` per job, polls and pages from its report.

The network phase's CPU is each program's own: bulkbatch's ``cpu_seconds`` for ``track``
(summary.json: from its first request to its last page, every thread), the floor's
``network_cpu_s`` (the same span; it reads and encodes the audience in it too). Divided by the
requests, it is the client's CPU per request (#19's goal ≤ 1.5 ms); the rest of the process
(imports, load, plan, results), divided by the input rows, its CPU per person.
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


def network_cpu_of(program: str, report: dict[str, Any]) -> float | None:
    """CPU seconds one run spent from its first request to its last page, from its report."""
    if program == "bulkbatch":
        cpu = report.get("cpu_seconds") or {}
        value = cpu.get("track", cpu.get("send"))
    elif program == "floor":
        value = report.get("network_cpu_s")
    else:
        value = None
    return float(value) if value is not None else None


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def cell_cpu(program: str, cell: dict[str, Any]) -> dict[str, float] | None:
    """A measured cell's CPU readings (medians over its runs): ``requests``, whole-process
    ``ms`` per request and ``us`` per person, and, when the runs report it, ``network_ms`` per
    request and ``rest_us`` (the rest of the process) per person."""
    recs = cell["records"]
    known = [c for c in (requests_of(program, r.report) for r in recs) if c]
    if not known or not cell["cpu"]:
        return None
    requests, rows = _median(known), int(cell["rows"])
    out = {
        "requests": float(requests),
        "ms": 1000 * cell["cpu"] / requests,
        "us": 1e6 * cell["cpu"] / rows,
    }
    network = [n for n in (network_cpu_of(program, r.report) for r in recs) if n is not None]
    if network:
        out["network_ms"] = 1000 * _median(network) / requests
        out["rest_us"] = 1e6 * max(0.0, cell["cpu"] - _median(network)) / rows
    return out


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
                c = cell_cpu(program, {**s, "rows": rows})
                if c is None:
                    continue
                net = (
                    f"{c['network_ms']:.2f} | {c['rest_us']:.1f}" if "network_ms" in c else "– | –"
                )
                rows_out.append(
                    f"| {rows:,} | {scen} | {program} | {c['requests']:,.0f} | {s['cpu']:,.1f} "
                    f"| {c['ms']:.2f} | {c['us']:.1f} | {net} | {s['wall']:,.1f} |"
                )
    if not rows_out:
        return []
    return [
        "## CPU per request and per person",
        "",
        (
            "Program CPU (median of runs, whole process: load, plan, HTTP, ledger, results) "
            "divided by the run's HTTP requests and by its input rows; then the same split "
            "the other way: the CPU of the network phase (first request to last page, the "
            "program's own reading) per request, and the rest of the process per person. "
            f"The client's goal is ≤ {CPU_TARGET_MS:g} ms per request. The paging loop alone "
            "is measured by `bench/bench_client.py`."
        ),
        "",
        (
            "| rows | scenario | program | requests | CPU s | CPU ms / request "
            "| CPU µs / person | network CPU ms / request | rest CPU µs / person | wall s |"
        ),
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows_out,
        "",
    ]
