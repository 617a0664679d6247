"""The goals of issue #19 ("Fast at every size") as rows of the report's Targets table.

A row appears when the run measured the cells it needs, so ``make bench`` (1M and 10M, no
latency, and the latency cells) shows every goal it can judge, and a narrower run shows
the ones it covers. Until round 29 these were worked out by hand from three separate runs.

* 200k people at 20 ms: ≥ 10× faster than the naive SDK script (both measured; the extra
  cells run bulkbatch and the floor only, so this takes ``--sizes 200k --scenarios
  latency20 --latency-sizes 200k --programs bulkbatch,naive,floor
  --naive-max-rows-latency 200k``).
* 200k people at 20 ms: client CPU ≤ 1.5 ms per request, read as the CPU of the network
  phase (first request to last page: ``cpu_seconds`` of ``track`` in bulkbatch's summary)
  per request; the whole process's and the floor's are shown beside it
  (:mod:`cpu_report`).
* 1M people at 150 ms: ≤ 45 s (the ≤ 1.25× latency bound is in the analysis below the
  table: it needs each run's job layout).
* 10M people, no latency: ≤ 1.3× the floor; load + plan ≤ 60 s and ≤ 11× the 1M time
  (any 1M cell of the same run: load and plan do not wait on the network); results ≤ 20 s.
  Peak RSS ≤ 450 MiB has its own row.
* The 2,000-person demo in ≤ 5 s end to end (:mod:`demo_cell`: ``bulkbatch --quiet demo``,
  median of the runs, the install excluded).
"""

from __future__ import annotations

import statistics
from typing import Any

from cpu_report import CPU_TARGET_MS, cell_cpu

Summary = dict[tuple[int, str, str], dict[str, Any]]

NAIVE_SPEEDUP_200K = 10.0
WALL_1M_150 = 45.0
FLOOR_RATIO_10M = 1.3
LOAD_PLAN_10M = 60.0
LINEAR_10M = 11.0
RESULTS_10M = 20.0
DEMO_S = 5.0

_200K, _1M, _10M = 200_000, 1_000_000, 10_000_000


def _row(target: str, where: str, value: str, ok: bool) -> str:
    """One row of the Targets table (``| target | scenario | value | met? |``)."""
    return f"| #19: {target} | {where} | {value} | {'yes' if ok else '**no**'} |"


def _cell(summ: Summary, rows: int, scenario: str, program: str) -> dict[str, Any] | None:
    s = summ.get((rows, scenario, program))
    return s if s and s["n"] else None


def load_plan(cell: dict[str, Any]) -> list[float]:
    """Each measured run's load + plan seconds (bulkbatch's own stage timings)."""
    out = []
    for rec in cell.get("records", []):
        timings = rec.report.get("timings", {})
        if "load" in timings and "plan" in timings:
            out.append(float(timings["load"]) + float(timings["plan"]))
    return out


def _reference_1m(summ: Summary) -> list[float]:
    """Load + plan of the 1M runs: the no-latency cell's, else every 1M cell's."""
    none = _cell(summ, _1M, "none", "bulkbatch")
    if none and load_plan(none):
        return load_plan(none)
    return [
        t
        for key in sorted(summ)
        if key[0] == _1M and key[2] == "bulkbatch" and summ[key]["n"]
        for t in load_plan(summ[key])
    ]


def _naive_200k(summ: Summary) -> list[str]:
    bb = _cell(summ, _200K, "latency20", "bulkbatch")
    naive = _cell(summ, _200K, "latency20", "naive")
    if not bb or not naive:
        return []
    speedup = naive["wall"] / bb["wall"]
    est = " (naive ≈ extrapolated)" if naive.get("extrapolated") else ""
    target = f"≥ {NAIVE_SPEEDUP_200K:g}× faster than the naive SDK script"
    return [_row(target, "200k, latency20", f"{speedup:.1f}×{est}", speedup >= NAIVE_SPEEDUP_200K)]


def _cpu_200k(summ: Summary) -> list[str]:
    bb = _cell(summ, _200K, "latency20", "bulkbatch")
    c = cell_cpu("bulkbatch", {**bb, "rows": _200K}) if bb else None
    if c is None or "network_ms" not in c:
        return []
    beside = f"whole process {c['ms']:.2f}"
    floor = _cell(summ, _200K, "latency20", "floor")
    f = cell_cpu("floor", {**floor, "rows": _200K}) if floor else None
    if f is not None and "network_ms" in f:
        beside += f"; the floor {f['network_ms']:.2f} and {f['ms']:.2f}"
    value = f"{c['network_ms']:.2f} ms in the network phase ({beside})"
    target = f"client CPU ≤ {CPU_TARGET_MS:g} ms per request"
    return [_row(target, "200k, latency20", value, c["network_ms"] <= CPU_TARGET_MS)]


def _wall_1m_150(summ: Summary) -> list[str]:
    bb = _cell(summ, _1M, "latency150", "bulkbatch")
    if not bb:
        return []
    took = f"{bb['wall']:.1f} s ({bb['min']:.1f}–{bb['max']:.1f})"
    return [_row(f"≤ {WALL_1M_150:g} s", "1M, latency150", took, bb["wall"] <= WALL_1M_150)]


def _ten_million(summ: Summary) -> list[str]:
    bb = _cell(summ, _10M, "none", "bulkbatch")
    if not bb:
        return []
    out = []
    where = "10M, none"
    floor = _cell(summ, _10M, "none", "floor")
    if floor:
        ratio = bb["wall"] / floor["wall"]
        target = f"≤ {FLOOR_RATIO_10M:g}× the floor"
        out.append(_row(target, where, f"{ratio:.2f}×", ratio <= FLOOR_RATIO_10M))
    big = load_plan(bb)
    if big:
        took = statistics.median(big)
        target = f"load + plan ≤ {LOAD_PLAN_10M:g} s"
        out.append(_row(target, where, f"{took:.1f} s", took <= LOAD_PLAN_10M))
        small = _reference_1m(summ)
        if small:
            ratio = took / statistics.median(small)
            spread = f"{took / max(small):.2f}–{took / min(small):.2f}"
            value = f"{ratio:.2f}× ({spread}; 1M {min(small):.2f}–{max(small):.2f} s)"
            target = f"load + plan ≤ {LINEAR_10M:g}× the 1M time"
            out.append(_row(target, where, value, ratio <= LINEAR_10M))
    results = bb.get("stages", {}).get("results")
    if results is not None:
        target = f"results ≤ {RESULTS_10M:g} s"
        out.append(_row(target, where, f"{results:.1f} s", results <= RESULTS_10M))
    return out


def _demo(demo: dict[str, Any] | None) -> list[str]:
    if not demo:
        return []
    target = f"the demo ≤ {DEMO_S:g} s"
    where = "2,000 people, `bulkbatch --quiet demo`"
    walls = demo.get("walls") or []
    if demo.get("error"):
        return [_row(target, where, f"run {len(walls) + 1} failed: {demo['error']}", False)]
    if not walls:
        return []
    took = statistics.median(walls)
    runs = f"{len(walls)} run" + ("s" if len(walls) != 1 else "")
    value = f"{took:.2f} s ({min(walls):.2f}–{max(walls):.2f}, {runs})"
    return [_row(target, where, value, took <= DEMO_S)]


def goal_rows(summ: Summary, demo: dict[str, Any] | None = None) -> list[str]:
    """Table rows (``| target | scenario | value | met? |``) for the #19 goals measured."""
    return [
        *_naive_200k(summ),
        *_cpu_200k(summ),
        *_wall_1m_150(summ),
        *_ten_million(summ),
        *_demo(demo),
    ]
