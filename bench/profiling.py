"""The micro-benchmarks and the py-spy profile that ``bench/run.py`` adds to a full report."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from common import ROOT, Emulator, audience, log, measure, temp_dir
from records import SCENARIOS

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


def profile_bulkbatch(
    rows: int, scenario: str, command: Callable[[Path, Path], list[str]], top: int = 25
) -> str:
    """py-spy record of one bulkbatch run; top functions by inclusive and self samples.

    :param command: the bulkbatch command line for an audience file and a work directory
    """
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
            *command(path, work),
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
