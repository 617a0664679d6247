"""Where a send's memory goes: RSS over time, by stage, for one ``bulkbatch.send``.

    .venv/bin/python bench/rss_timeline.py --rows 10000000    # about 8 min
    .venv/bin/python bench/rss_timeline.py --rows 1000000 --json /tmp/rss.json

The send runs in this process (the Python API, as a notebook would) against a fresh emulator
*process* (``--progression immediate``), so the emulator's memory is not counted. A thread
reads this process's RSS every 0.2 s and labels each sample with the stage of the last
progress event. Stages overlap (jobs are paged while later jobs ingest), so a label says what
happened last, not alone. Printed: each stage's peak RSS and time span, and the overall peak.
Round 7 of #19 found with it that the send, not the plan, held the 10M peak (631 MiB).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bulkbatch
from bulkbatch.progress import ProgressEvent
from bulkbatch.testing.process import DEFAULT_API_KEY, EmulatorProcess
from common import audience

SAMPLE_S = 0.2


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def timeline(rows: int, work: Path) -> list[tuple[float, float, str]]:
    """``(seconds, RSS MiB, stage)`` samples of one send of ``rows`` synthetic people."""
    source = audience(rows)
    os.environ["BULKBATCH_DATA_DIR"] = str(work / "data")  # never the user's registry
    samples: list[tuple[float, float, str]] = []
    stage = ["start"]
    done = threading.Event()
    started = time.perf_counter()

    def sample() -> None:
        while not done.wait(SAMPLE_S):
            samples.append((time.perf_counter() - started, rss_mib(), stage[0]))

    def progress(event: ProgressEvent) -> None:
        stage[0] = event.stage

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with EmulatorProcess("--progression", "immediate", capture_stderr=False) as emu:
            settings = bulkbatch.Settings(
                base_url=emu.url, api_key=DEFAULT_API_KEY, poll_interval=0.2
            )
            bulkbatch.send(
                source,
                event="welcome",
                settings=settings,
                run_dir=work / "run",
                progress=progress,
            )
    finally:
        done.set()
        sampler.join()
    return samples


def report(samples: list[tuple[float, float, str]]) -> str:
    spans: dict[str, list[float]] = {}  # stage -> [peak, first seen, last seen]
    for t, rss, stage in samples:
        span = spans.setdefault(stage, [rss, t, t])
        span[0], span[2] = max(span[0], rss), t
    lines = ["| stage (last event) | peak RSS MiB | seen from s | to s |", "|---|---:|---:|---:|"]
    lines += [f"| {s} | {p:.0f} | {a:.1f} | {b:.1f} |" for s, (p, a, b) in spans.items()]
    t, rss, stage = max(samples, key=lambda x: x[1])
    lines.append(f"\npeak {rss:.0f} MiB at {t:.1f} s, during {stage}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="audience size")
    parser.add_argument("--json", type=Path, help="also write every sample here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bb-rss-") as tmp:
        samples = timeline(args.rows, Path(tmp))
    print(report(samples))
    if args.json:
        args.json.write_bytes(orjson.dumps(samples))


if __name__ == "__main__":
    main()
