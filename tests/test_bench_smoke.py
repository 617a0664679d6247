"""The end-to-end benchmark runner must not rot: ``bench/run.py --smoke`` on 5k rows.

It starts an emulator process per measurement, runs bulkbatch, the naive SDK script and the
floor once each, and writes a report. Only the shape of the report is checked: no timing is
asserted (this is a test, not a benchmark).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ("bulkbatch", "naive", "floor")
NUM = r"[0-9][0-9,]*(?:\.[0-9]+)?"

pytestmark = pytest.mark.e2e


def _table_rows(text: str) -> dict[str, list[str]]:
    start = text.index("### 5,000 rows — none")
    section = text[start:].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in PROGRAMS:
            rows[cells[0]] = cells
    return rows


@pytest.mark.timeout(240)
def test_smoke_run_writes_a_table_with_the_three_programs(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(out)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "**Machine:**" in text
    assert "bench/run.py --smoke" in text
    rows = _table_rows(text)
    assert set(rows) == set(PROGRAMS), text
    for program, cells in rows.items():
        # program | wall (min–max) | users/s | peak RSS | CPU s | emulator CPU | load | runs
        assert len(cells) == 8, (program, cells)
        assert re.fullmatch(rf"{NUM} \({NUM}–{NUM}\)", cells[1]), (program, cells)
        assert re.fullmatch(NUM, cells[2]), (program, cells)
        assert re.fullmatch(NUM, cells[3]) and float(cells[3].replace(",", "")) > 0
        assert re.fullmatch(NUM, cells[4]), (program, cells)
        assert re.fullmatch(rf"{NUM} %", cells[5]), (program, cells)
        assert re.fullmatch(NUM, cells[6]), (program, cells)
        assert cells[7] == "1"
    assert "bulkbatch / naive wall:" in text
    assert "bulkbatch / floor wall:" in text
    assert "## Where bulkbatch's time goes" in text
    assert "## Failed runs" not in text


def test_help_lists_the_flags() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for flag in ("--quick", "--smoke", "--sizes", "--reps", "--scenarios", "--out"):
        assert flag in proc.stdout
