"""What one benchmark measurement holds, and how the runs of one cell are summarised.

``bench/run.py`` measures and saves :class:`Record` s, ``bench/report.py`` renders them; both
read the cells through :func:`summarize`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_s(x: float) -> str:
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


def save_records(path: Path, args: argparse.Namespace, records: list[Record], **extra: Any) -> None:
    data = {
        "argv": args.cmdline,
        "git": args.measured_at,
        "records": [asdict(r) for r in records],
        **extra,
    }
    path.write_text(json.dumps(data, indent=1, default=str))


def load_records(path: Path) -> tuple[list[Record], dict[str, Any]]:
    data = json.loads(path.read_text())
    if isinstance(data, list):  # first format: the records only
        data = {"records": data}
    return [Record(**r) for r in data["records"]], data
