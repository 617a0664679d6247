"""Sharded sending: N processes (``send --shard i/N``) side by side vs one process.

    .venv/bin/python bench/bench_shards.py [--users 1000000] [--shards 4] [--latency-ms 50]

Both setups send the same audience to one fresh emulator process each
(``--progression immediate``, ``--faults latency_ms=N``): first ``bulkbatch send`` as one
process, then ``--shard i/N`` for i = 0..N-1 as N processes started together (each shard is its
own campaign instance with its own run directory), then ``bulkbatch merge`` of the N run
directories. For each setup: the wall time until the last process ends, the CPU of all its
processes (``wait4`` rusage, user + system), the peak RSS of each process tree (psutil, every
50 ms), the emulator's CPU, and from the emulator's own counters that everyone was accepted
exactly once. Prints a Markdown section (``bench/run.py`` puts it into the report).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import POLL_S, ROOT, Emulator, _tree_rss, audience, log, temp_dir


@dataclass
class Setup:
    """One setup measured: its processes' wall, CPU and peak RSS, the emulator's view."""

    name: str
    processes: int
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mib: list[float] = field(default_factory=list)
    emulator_cpu_s: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    returncodes: list[int] = field(default_factory=list)
    ingested: int = 0
    accepted: int = 0
    most_per_recipient: int = 0
    merge_s: float | None = None
    errors: list[str] = field(default_factory=list)


def _bulkbatch() -> list[str]:
    script = Path(sys.executable).parent / "bulkbatch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bulkbatch"]


def send_cmd(path: Path, run_dir: Path, shard: str | None) -> list[str]:
    cmd = [*_bulkbatch(), "--quiet", "send", str(path), "--event", "welcome"]
    cmd += ["--run-dir", str(run_dir), "--json", "--poll-interval", "0.2"]
    return [*cmd, "--shard", shard] if shard else cmd


def run_together(cmds: list[list[str]], env: dict[str, str], timeout: float | None) -> Setup:
    """Start ``cmds`` at once; wait for all, polling each process tree's RSS."""
    setup = Setup(name="", processes=len(cmds))
    load0 = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        errs = [Path(tmp) / f"err{i}" for i in range(len(cmds))]
        outs = [Path(tmp) / f"out{i}" for i in range(len(cmds))]
        procs = []
        for cmd, out, err in zip(cmds, outs, errs, strict=True):
            with out.open("wb") as o, err.open("wb") as e:
                procs.append(subprocess.Popen(cmd, stdout=o, stderr=e, env=env, cwd=ROOT))
        peaks = [0] * len(procs)
        handles = [psutil.Process(p.pid) for p in procs]
        live = set(range(len(procs)))
        codes = [0] * len(procs)
        while live:
            for i in sorted(live):
                pid, status, usage = os.wait4(procs[i].pid, os.WNOHANG)
                if pid:
                    codes[i] = os.waitstatus_to_exitcode(status)
                    procs[i].returncode = codes[i]
                    setup.cpu_s += usage.ru_utime + usage.ru_stime
                    live.discard(i)
                else:
                    peaks[i] = max(peaks[i], _tree_rss(handles[i]))
            if timeout is not None and time.perf_counter() - started > timeout:
                for i in live:
                    procs[i].kill()
            time.sleep(POLL_S)
        setup.wall_s = time.perf_counter() - started
        setup.load = (load0, os.getloadavg()[0])
        setup.peak_rss_mib = [p / 2**20 for p in peaks]
        setup.returncodes = codes
        for i, out in enumerate(outs):
            text = out.read_text()
            try:
                report = json.loads(text[text.find("{") :])
                setup.ingested += int(report["counts"]["ingested"])
            except (ValueError, KeyError, TypeError):
                tail = (errs[i].read_text().strip().splitlines() or ["no output"])[-1]
                setup.errors.append(f"process {i}: exit {codes[i]}: {tail[:200]}")
    return setup


def measure_setup(
    name: str, path: Path, shards: int, latency_ms: float, timeout: float | None
) -> Setup:
    with temp_dir("bench-shards-") as work, Emulator(faults=f"latency_ms={latency_ms:g}") as emu:
        env = dict(os.environ)
        env.update(
            COURIER_BASE_URL=emu.url,
            COURIER_API_KEY="bench",
            BULKBATCH_DATA_DIR=str(work / "data"),
        )
        if shards <= 1:
            cmds = [send_cmd(path, work / "run", None)]
        else:
            cmds = [send_cmd(path, work / f"run-{i}", f"{i}/{shards}") for i in range(shards)]
        cpu0 = emu.cpu_seconds()
        setup = run_together(cmds, env, timeout)
        setup.name = name
        setup.emulator_cpu_s = emu.cpu_seconds() - cpu0
        stats = emu.stats()
        setup.accepted = int(stats.get("users_accepted", 0))
        setup.most_per_recipient = int(stats.get("max_accepted_per_recipient", 0))
        if shards > 1 and not setup.errors:
            t = time.perf_counter()
            dirs = [str(work / f"run-{i}") for i in range(shards)]
            merge = [*_bulkbatch(), "--quiet", "merge", *dirs, "--out", str(work / "merged")]
            p = subprocess.run(
                merge, check=False, env=env, cwd=ROOT, capture_output=True, text=True
            )
            setup.merge_s = time.perf_counter() - t
            if p.returncode != 0:
                setup.errors.append(f"merge: exit {p.returncode}: {p.stderr.strip()[-200:]}")
    return setup


def render(rows: int, shards: int, latency_ms: float, setups: list[Setup]) -> str:
    lines = [
        (
            f"{rows:,} people, one emulator process with {latency_ms:g} ms per request; "
            f"each setup on a fresh emulator. `bulkbatch send AUDIENCE --event welcome` as one "
            f"process vs `--shard i/{shards}` for i = 0..{shards - 1} as {shards} processes "
            "started together (each its own campaign and run directory), then `bulkbatch "
            "merge` of their run directories."
        ),
        "",
        (
            "| setup | processes | wall s | users/s | CPU s, all processes | peak RSS MiB per "
            "process | emulator CPU s | host load (start → end) | accepted once each |"
        ),
        "|---|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for s in setups:
        rss = ", ".join(f"{r:,.0f}" for r in s.peak_rss_mib)
        once = (
            f"yes ({s.accepted:,} accepted, {s.ingested:,} ingested)"
            if s.most_per_recipient == 1 and s.accepted == s.ingested
            else f"**no** (most per recipient {s.most_per_recipient}, accepted {s.accepted:,}, "
            f"ingested {s.ingested:,})"
        )
        lines.append(
            f"| {s.name} | {s.processes} | {s.wall_s:,.1f} | {rows / s.wall_s:,.0f} "
            f"| {s.cpu_s:,.1f} | {rss} | {s.emulator_cpu_s:,.1f} "
            f"| {s.load[0]:.1f} → {s.load[1]:.1f} | {once} |"
        )
    lines.append("")
    for s in setups:
        if s.merge_s is not None:
            lines.append(f"- `bulkbatch merge` of the {s.processes} shards took {s.merge_s:.1f} s.")
        lines += [f"- {s.name} FAILED: {e}" for e in s.errors]
    if len(setups) == 2 and setups[0].wall_s > 0 and setups[1].wall_s > 0:
        one, many = setups
        lines.append(
            f"- {many.processes} shards / 1 process: wall {many.wall_s / one.wall_s:.2f}×, "
            f"CPU {many.cpu_s / max(one.cpu_s, 1e-9):.2f}×."
        )
    return "\n".join(lines).rstrip() + "\n"


def run(rows: int, shards: int, latency_ms: float, timeout: float | None = None) -> str:
    path = audience(rows)
    setups = []
    for name, n in (("one process", 1), (f"{shards} shards", shards)):
        log(f"shards: {name}, {rows:,} people, {latency_ms:g} ms ...")
        s = measure_setup(name, path, n, latency_ms, timeout)
        log(f"    wall {s.wall_s:.1f}s, CPU {s.cpu_s:.1f}s, peak RSS {s.peak_rss_mib}")
        setups.append(s)
    return render(rows, shards, latency_ms, setups)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", default="1000000", help="audience size (e.g. 200k, 1M)")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--timeout", type=float, help="kill a process after N seconds")
    args = p.parse_args(argv)
    from run import parse_size

    text = run(parse_size(args.users), args.shards, args.latency_ms, args.timeout)
    print(text)
    return 1 if "FAILED" in text or "**no**" in text else 0


if __name__ == "__main__":
    sys.exit(main())
