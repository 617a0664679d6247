"""``bench/bench_http2.py`` must not rot: each program pages every job over the protocol it
names, against the emulator app served by hypercorn (no timing is asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NUM = r"[0-9][0-9,]*(?:\.[0-9]+)?"

pytestmark = pytest.mark.e2e


def test_each_program_pages_every_job_over_the_protocol_it_names() -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "bench_http2.py")]
    out = subprocess.run(
        [*cmd, "--jobs", "3", "--users", "250", "--latency-ms", "0", "--reps", "1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=180,
    ).stdout
    # 3 jobs x 3 pages of at most 100 users each, over HTTP/2 only where it says so
    for program, protocol in (
        ("aiohttp-h1", "HTTP/1.1"),
        ("httpx-h2", "HTTP/2"),
        ("httpx-h1", "HTTP/1.1"),
    ):
        row = rf"\| {program} \| {re.escape(protocol)} \| 9 \| {NUM} \| {NUM} \| {NUM} \({NUM}–{NUM}\) \| {NUM} \|"
        assert re.search(row, out), out


def test_an_unknown_program_is_refused_with_the_names_there_are() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_http2.py"), "--programs", "h3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown --programs h3; pick from aiohttp-h1, httpx-h2, httpx-h1" in done.stderr
